//! `tensor-fusion devices --backend cuda --json`, run against the simulated GPU's driver
//! libraries, lists the same devices as `--backend fake` on the same simulated machine.
//!
//! The binary is not a dependency cargo can build for this test: `cargo test --workspace` builds
//! it; alone, run `cargo build -p tensor-fusion` first.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tf_fake_gpu::profile::DeviceProfile;

/// target/<profile>/tensor-fusion, beside this test's deps/ directory.
fn tensor_fusion() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("tensor-fusion");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p tensor-fusion` (or `cargo test --workspace`) first",
        bin.display()
    );
    bin
}

fn show(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A simulated machine of its own: an H100 and an A100, with UUIDs unique to this run.
fn machine(dir: &Path) -> PathBuf {
    let mut config = tf_fake_gpu::testing::isolated_config("clicuda", 2);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let a100 = DeviceProfile {
        model: "NVIDIA A100-SXM4-80GB".to_string(),
        memory_bytes: 81920 << 20,
        sms: 108,
        fp16_tflops: 312.0,
        compute_capability: (8, 0),
        ..config.devices[1].clone()
    };
    config.devices[1] = a100;
    for (i, d) in config.devices.iter_mut().enumerate() {
        // Real GPUs have hex UUIDs, which the driver API reports as 16 bytes.
        d.uuid = format!(
            "GPU-{:08x}-{:04x}-4{:03x}-8000-{:012x}",
            std::process::id(),
            i,
            i,
            stamp & 0xffff_ffff_ffff
        );
    }
    let path = dir.join("gpu.toml");
    std::fs::write(&path, tf_fake_gpu::testing::to_toml(&config)).unwrap();
    path
}

fn devices(bin: &Path, backend: &str, lib_dir: &Path, config: &Path) -> Vec<Value> {
    let out = Command::new(bin)
        .args(["devices", "--backend", backend, "--json"])
        .env("LD_LIBRARY_PATH", lib_dir)
        .env("TF_FAKE_GPU_CONFIG", config)
        .env_remove("TF_BACKEND")
        .env_remove(tf_backend_cuda::CUDA_LIBRARY_ENV)
        .env_remove(tf_backend_cuda::NVML_LIBRARY_ENV)
        .output()
        .expect("run tensor-fusion");
    assert!(
        out.status.success(),
        "tensor-fusion devices --backend {backend}: {}",
        show(&out)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output is not a JSON array ({e}): {}", show(&out)))
}

#[test]
fn the_cuda_backend_lists_the_simulated_devices() {
    let bin = tensor_fusion();
    let dir = tempfile::tempdir().unwrap();
    // The libraries as `tensor-fusion fake-gpu install DIR` lays them out (libcuda alone while
    // the simulated NVML is not built).
    {
        use tf_fake_gpu::install::{DRIVER_LIBS, InstallMode, NVIDIA_LIBS, install_libs};
        if let Err(e) = install_libs(dir.path(), InstallMode::Link, NVIDIA_LIBS) {
            eprintln!("note: {e}: installing libcuda only");
            install_libs(dir.path(), InstallMode::Link, &DRIVER_LIBS[..1]).unwrap();
        }
    }
    let config = machine(dir.path());

    let fake = devices(&bin, "fake", dir.path(), &config);
    let cuda = devices(&bin, "cuda", dir.path(), &config);
    assert_eq!(fake.len(), 2, "{fake:#?}");
    assert_eq!(cuda.len(), fake.len(), "cuda: {cuda:#?}\nfake: {fake:#?}");
    for (c, f) in cuda.iter().zip(&fake) {
        for key in [
            "index",
            "uuid",
            "model",
            "total_memory_bytes",
            "compute_units",
            "fp16_tflops",
            "vendor",
            "pci_bus_id",
        ] {
            assert_eq!(c[key], f[key], "{key}: cuda {c:#} vs fake {f:#}");
        }
        assert_eq!(c["backend"], "cuda");
        assert_eq!(c["capabilities"]["soft_limit"], true);
    }
    assert_eq!(cuda[1]["model"], "NVIDIA A100-SXM4-80GB");
    assert_eq!(cuda[1]["fp16_tflops"], 312.0);
}
