//! Real programs on the simulated ACL runtime: a C program using the ACL subset (allocate, copy,
//! launch, copy back, check), linked with -lascendcl; the export list; memory of a killed
//! process coming back.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tf_fake_gpu::profile::DeviceProfile;
use tf_fake_gpu::testing::{isolated_ascend_config, to_toml};
use tf_fake_gpu::{FakeGpu, FakeGpuConfig};
use tf_test_support::show;

/// The built libascendcl.so in a fresh folder, an isolated machine of two NPUs, the C program.
struct Npu {
    dir: tempfile::TempDir,
    config: PathBuf,
    exe: PathBuf,
}

impl Npu {
    fn new(devices: &[fn(u32) -> DeviceProfile]) -> Npu {
        let dir = tempfile::tempdir().unwrap();
        let built = tf_test_support::cdylib("libascendcl.so").expect("libascendcl.so is built");
        std::fs::copy(&built, dir.path().join("libascendcl.so")).unwrap();
        let config = dir.path().join("npu.toml");
        std::fs::write(&config, to_toml(&isolated_ascend_config("acl", devices))).unwrap();
        let exe = dir.path().join("acl_vector_add");
        let root = tf_test_support::workspace_root();
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&exe)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/acl_vector_add.c"))
            .arg("-I")
            .arg(root.join("bindings/ascend-sys/include"))
            .arg("-L")
            .arg(dir.path())
            .arg("-lascendcl")
            .output()
            .expect("run the C compiler");
        assert!(out.status.success(), "compiling: {}", show(&out));
        Npu { dir, config, exe }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("LD_LIBRARY_PATH", self.dir.path())
            .env("TF_FAKE_GPU_CONFIG", &self.config);
        c
    }
}

fn kernels() -> String {
    tf_test_support::workspace_root()
        .join("hal/kernels/tf_kernels.ptx")
        .display()
        .to_string()
}

#[test]
fn a_c_program_allocates_copies_launches_and_checks_every_element() {
    let npu = Npu::new(&[DeviceProfile::ascend_910b3, DeviceProfile::ascend_310p3]);
    let out = npu
        .command()
        .args([&kernels(), "1000003"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 NPUs; device 0: Ascend910B3, 65536 MiB"),
        "{stdout}"
    );
    assert!(stdout.contains("OK 1000003 elements checked"), "{stdout}");

    // The second device, alone.
    let out = npu
        .command()
        .env("ASCEND_RT_VISIBLE_DEVICES", "1")
        .args([&kernels(), "1000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 NPUs; device 0: Ascend310P3, 24576 MiB"),
        "{stdout}"
    );
}

#[test]
fn runtime_errors_are_reported_with_their_codes() {
    let npu = Npu::new(&[DeviceProfile::ascend_910b3]);
    let bad = npu.dir.path().join("empty.ptx");
    std::fs::write(&bad, ".version 7.0\n.target sm_70\n.address_size 64\n").unwrap();
    let out = npu
        .command()
        .args([bad.to_str().unwrap(), "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("aclrtBinaryLoadFromFile") && stderr.contains("100003"),
        "{stderr}"
    );
    // Past the device's memory: the runtime's allocation error, and the memory it reports.
    let out = npu.command().args(["--probe", "8192"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REFUSED 207001"), "{stdout}");
    assert!(
        stdout.contains(&format!("ALLOCATED {}", 64u64 << 30)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("MEMINFO_TOTAL {}", 64u64 << 30)),
        "{stdout}"
    );
}

#[test]
fn a_killed_process_gives_its_npu_memory_back() {
    let npu = Npu::new(&[DeviceProfile::ascend_910b3]);
    let mut child = npu
        .command()
        .args(["--hold", "1024"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("HELD"))
        .map(|l| line = l)
        .expect("the program holds its memory");
    let gpu = FakeGpu::new(FakeGpuConfig::load(&npu.config).unwrap()).unwrap();
    let dev = &gpu.devices()[0];
    assert_eq!(dev.memory().used_bytes, 1 << 30, "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        dev.memory().used_bytes,
        0,
        "the killed process's memory is back"
    );
}

#[test]
fn every_function_of_the_subset_is_exported() {
    let built = tf_test_support::cdylib("libascendcl.so").unwrap();
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&built)
        .output()
        .unwrap();
    assert!(nm.status.success());
    let syms = String::from_utf8_lossy(&nm.stdout);
    macro_rules! names {
        ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => { [$(stringify!($name)),*] };
    }
    let missing: Vec<_> = ascend_sys::acl_functions!(names)
        .into_iter()
        .filter(|n| !syms.lines().any(|l| l.ends_with(&format!(" {n}"))))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}
