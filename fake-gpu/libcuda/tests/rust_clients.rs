//! Rust programs that use the CUDA driver through dlopen (cudarc) run on the simulated GPU.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use common::*;

fn example(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is not built (cargo test builds examples)",
        p.display()
    );
    p
}

#[test]
fn a_cudarc_program_runs_and_checks_its_results() {
    let lib = FakeDriverDir::new();
    let out = lib.run(&example("cudarc_vector_add"), &["200000"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device"], "NVIDIA H100 80GB HBM3");
    assert_eq!(v["checked"], 200_000);
    assert_eq!(v["total"], 81559u64 << 20);
}
