//! `tf-fake-gpu-load`: keep a simulated device busy with back-to-back `tf_busy` kernels and print
//! what this process got, as one JSON object.
//!
//! Usage: tf-fake-gpu-load SPEC_JSON, where SPEC_JSON is a `tf_fake_gpu::load::LoadSpec`.
//! The device profile comes from `TF_FAKE_GPU_CONFIG` like every user of the simulated GPU.
#![allow(unused_crate_dependencies)] // a binary target sees every dependency of its library

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(spec) = std::env::args().nth(1) else {
        eprintln!("usage: tf-fake-gpu-load SPEC_JSON   (see tf_fake_gpu::load::LoadSpec)");
        return ExitCode::from(2);
    };
    match tf_fake_gpu::load::run_json(&spec) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tf-fake-gpu-load: {e}");
            ExitCode::FAILURE
        }
    }
}
