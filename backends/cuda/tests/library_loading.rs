//! Opening the backend when the driver library is missing, named explicitly, or found by the
//! loader. Each case runs in a child process (this test binary, re-executed) because the dynamic
//! loader reads `LD_LIBRARY_PATH` only at process start and the backend checks the library once
//! per process.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::path::Path;
use std::process::Command;

use tf_backend_cuda::{CUDA_LIBRARY_ENV, CudaBackend, NVML_LIBRARY_ENV};
use tf_hal::{Backend, ErrorKind};

const PROBE_ENV: &str = "TF_CUDA_TEST_PROBE";

/// In a child: open the backend and print the outcome as one JSON line.
#[test]
fn probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let line = match CudaBackend::new() {
        Ok(b) => serde_json::json!({
            "ok": true,
            "devices": b.devices().unwrap().len(),
            "nvml": b.has_nvml(),
        }),
        Err(e) => serde_json::json!({
            "ok": false,
            "kind": e.kind,
            "message": e.message,
        }),
    };
    println!("PROBE {line}");
}

/// Run `probe` in a child with this environment (and an empty `LD_LIBRARY_PATH` unless given).
fn run_probe(env: &[(&str, &Path)]) -> serde_json::Value {
    let exe = std::env::current_exe().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "probe", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, "1")
        .env("LD_LIBRARY_PATH", empty.path())
        .env_remove(CUDA_LIBRARY_ENV)
        .env_remove(NVML_LIBRARY_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROBE ").map(|(_, json)| json))
        .unwrap_or_else(|| {
            panic!(
                "the probe printed no result: {}\nstdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

/// Whether the loader finds a CUDA driver without help (a machine with the NVIDIA driver).
fn system_has_libcuda() -> bool {
    // SAFETY: probing for a library by name; dropped at once.
    ["libcuda.so.1", "libcuda.so"]
        .iter()
        .any(|n| unsafe { libloading::Library::new(*n) }.is_ok())
}

#[test]
fn a_missing_driver_library_is_library_not_found_with_a_hint() {
    if system_has_libcuda() {
        eprintln!("skipped: this machine has a CUDA driver, so libcuda.so.1 is never missing");
        return;
    }
    let r = run_probe(&[]);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        r["kind"],
        serde_json::json!(ErrorKind::LibraryNotFound),
        "{r}"
    );
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains("libcuda.so.1 not found"), "{msg}");
    assert!(msg.contains("is the NVIDIA driver installed?"), "{msg}");
    assert!(msg.contains("tensor-fusion fake-gpu install DIR"), "{msg}");
    assert!(msg.contains("LD_LIBRARY_PATH"), "{msg}");
}

#[test]
fn a_missing_named_driver_library_is_library_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libcuda.so.1");
    let r = run_probe(&[(CUDA_LIBRARY_ENV, &missing)]);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        r["kind"],
        serde_json::json!(ErrorKind::LibraryNotFound),
        "{r}"
    );
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains(CUDA_LIBRARY_ENV), "{msg}");
}

#[test]
fn a_library_that_is_not_a_cuda_driver_is_library_not_found() {
    // Any shared library without the driver's entry points, under the driver's name.
    let dir = tempfile::tempdir().unwrap();
    let libc = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists());
    let Some(libm) = libc else {
        eprintln!("skipped: no libm.so.6 at a known path");
        return;
    };
    if system_has_libcuda() {
        eprintln!("skipped: this machine has a CUDA driver the loader would prefer");
        return;
    }
    for name in ["libcuda.so", "libcuda.so.1"] {
        std::fs::copy(libm, dir.path().join(name)).unwrap();
    }
    let r = run_probe(&[("LD_LIBRARY_PATH", dir.path())]);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        r["kind"],
        serde_json::json!(ErrorKind::LibraryNotFound),
        "{r}"
    );
    let msg = r["message"].as_str().unwrap();
    assert!(msg.contains("lacks cuInit"), "{msg}");
}

#[test]
fn the_simulated_driver_named_by_tf_cuda_library_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let built = tf_fake_gpu::install::find_built("libcuda.so").expect("the fake libcuda is built");
    let lib = dir.path().join("libcuda.so.1");
    std::fs::copy(built, &lib).unwrap();
    let config = dir.path().join("gpu.toml");
    let machine = tf_fake_gpu::testing::isolated_config("cudaload", 3);
    std::fs::write(&config, tf_fake_gpu::testing::to_toml(&machine)).unwrap();
    let r = run_probe(&[(CUDA_LIBRARY_ENV, &lib), ("TF_FAKE_GPU_CONFIG", &config)]);
    if system_has_libcuda() {
        // The loader resolves the driver's names to the system's library first: either the
        // named one is still the one found (same soname), or a configuration error says so.
        assert!(
            r["ok"] == true || r["kind"] == serde_json::json!(ErrorKind::Config),
            "{r}"
        );
        return;
    }
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["devices"], 3, "{r}");
}
