//! Real programs on the simulated GPU's libcuda.so.1: a C program built against NVIDIA's own
//! cuda.h and linked with -lcuda.

mod common;

use common::*;

#[test]
fn c_vector_add_built_against_the_real_header_runs_and_checks_every_element() {
    let lib = FakeDriverDir::new();
    let exe = lib.compile_c("vector_add.c", &[]);
    let out = lib.run(&exe, &[ptx_path().to_str().unwrap(), "1000003"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK 1000003 elements checked"), "{stdout}");
    assert!(
        stdout.contains("NVIDIA H100 80GB HBM3, 81559 MiB, 132 SMs"),
        "{stdout}"
    );
}

#[test]
fn the_c_program_reports_driver_errors() {
    let lib = FakeDriverDir::new();
    let exe = lib.compile_c("vector_add.c", &[]);
    let bad = lib.dir().join("empty.ptx");
    std::fs::write(&bad, ".version 7.0\n.target sm_70\n.address_size 64\n").unwrap();
    let out = lib.run(&exe, &[bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cuModuleLoadData") && stderr.contains("CUDA_ERROR_INVALID_IMAGE"),
        "{stderr}"
    );
}
