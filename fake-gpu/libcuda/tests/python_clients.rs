//! NVIDIA's own CUDA Python bindings (a third-party client) on the simulated GPU's libcuda.so.1.
//! They reach every function through cuGetProcAddress_v2.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use common::*;

/// Pinned so the test is repeatable; fetched once into target/tf-test-deps by pip.
const CUDA_BINDINGS: &str = "cuda-bindings==12.9.4";

#[test]
fn nvidia_cuda_python_bindings_run_a_kernel() {
    let site =
        tf_test_support::python_packages(&[CUDA_BINDINGS]).expect("pip install cuda-bindings");
    let lib = FakeDriverDir::new();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/cuda_python_client.py");
    let out = std::process::Command::new(tf_test_support::python())
        .arg(&script)
        .arg(ptx_path())
        .env("PYTHONPATH", &site)
        .env("LD_LIBRARY_PATH", lib.dir())
        .env("TF_FAKE_GPU_CONFIG", lib.config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["devices"], 2);
    assert_eq!(v["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(v["sms"], 132);
    assert_eq!(v["total"], 81559u64 << 20);
    assert_eq!(v["bad"], 0);
    assert_eq!(v["elements"], 50_000);
}
