//! `tf-fake-gpu-load`: keep a simulated device busy with back-to-back `tf_busy` kernels and print
//! what this process got, as one JSON object.
//!
//! Usage: tf-fake-gpu-load SPEC_JSON, where SPEC_JSON is a `tf_fake_gpu::load::LoadSpec`.
//! The device profile comes from `TF_FAKE_GPU_CONFIG` like every user of the simulated GPU.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(spec) = std::env::args().nth(1) else {
        eprintln!("usage: tf-fake-gpu-load SPEC_JSON   (see tf_fake_gpu::load::LoadSpec)");
        return ExitCode::from(2);
    };
    let spec: tf_fake_gpu::load::LoadSpec = match serde_json::from_str(&spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tf-fake-gpu-load: bad spec: {e}");
            return ExitCode::from(2);
        }
    };
    let result = tf_fake_gpu::FakeGpu::global().and_then(|gpu| tf_fake_gpu::load::run(&gpu, &spec));
    match result {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).expect("report serializes"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tf-fake-gpu-load: {e}");
            ExitCode::FAILURE
        }
    }
}
