//! Real programs on the simulated GPU's libcuda.so.1: a C program built against NVIDIA's own
//! cuda.h and linked with -lcuda.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

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

#[test]
fn a_program_that_only_uses_cu_get_proc_address_runs() {
    let lib = FakeDriverDir::new();
    let exe = lib.compile_c("procaddr_vector_add.c", &[]);
    let out = lib.run(&exe, &[ptx_path().to_str().unwrap(), "300000"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("OK 300000 elements checked through cuGetProcAddress"),
        "{}",
        show(&out)
    );
}

#[test]
fn every_function_of_cuda_h_is_exported_and_unimplemented_ones_say_not_supported() {
    // The dynamic symbol table of the built library against the header-derived list.
    let built = tf_test_support::cdylib("libcuda.so").unwrap();
    let nm = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&built)
        .output()
        .unwrap();
    assert!(nm.status.success());
    let syms: std::collections::HashSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    macro_rules! names {
        ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => { [$(stringify!($name)),*] };
    }
    let all = tf_cuda_abi::cuda_driver_functions!(names);
    let missing: Vec<_> = all.iter().filter(|n| !syms.contains(**n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert!(all.len() > 600);

    let lib = FakeDriverDir::new();
    let exe = lib.compile_c("unsupported.c", &[]);
    let out = lib.run(&exe, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("cuGraphicsMapResources is not supported")
            .count(),
        1,
        "logged once: {err}"
    );
}

#[test]
fn cuda_visible_devices_remaps_ordinals_like_the_real_driver() {
    let lib = FakeDriverDir::new();
    let exe = lib.compile_c("vector_add.c", &[]);
    let config = tf_fake_gpu::FakeGpuConfig::load(lib.config()).unwrap();
    let second = &config.devices[1].uuid;
    for (spec, want) in [
        ("1", 1),
        (second.as_str(), 1),
        (&second[..22], 1),
        ("1,0", 2),
        ("", 0),
        ("0,7,1", 1),
    ] {
        let out = lib
            .command(&exe)
            .env("CUDA_VISIBLE_DEVICES", spec)
            .arg(ptx_path())
            .arg("1000")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if want == 0 {
            assert!(!out.status.success(), "no device visible: {}", show(&out));
        } else {
            assert!(out.status.success(), "{spec:?}: {}", show(&out));
            assert!(
                stdout.contains(&format!("devices {want},")),
                "{spec:?}: {stdout}"
            );
        }
    }
}

/// A tenant calling the driver and NVML with bad arguments on purpose (null, freed, foreign and
/// overflowing pointers and sizes, stale handles, impossible launches): every call is refused
/// with an error code, none crashes, and the device then serves the next process normally.
#[test]
fn malformed_driver_and_nvml_calls_are_refused_and_the_device_keeps_serving() {
    let lib = FakeDriverDir::new();
    let exe = lib.compile_c("malformed.c", &[]);
    let out = lib.run(&exe, &[ptx_path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("refused "))
        .unwrap_or_else(|| panic!("no summary: {}", show(&out)));
    let nums: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert_eq!(nums[0], nums[1], "{line}");
    assert!(nums[1] >= 60, "at least 60 malformed calls: {line}");
    eprintln!("{line}");
    // The next process is served normally.
    let add = lib.compile_c("vector_add.c", &[]);
    let out = lib.run(&add, &[ptx_path().to_str().unwrap(), "100000"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK 100000 elements checked"));
}
