//! Ascend NPUs end to end, on the simulated driver: `devices --backend ascend` lists the NPUs
//! with their AI cores and memory, and a C program using the ACL subset runs under
//! `tensor-fusion run --backend ascend` with the ACL interposer: `--vram 1GiB` gives it at most
//! 1 GiB, and `aclrtGetMemInfo` reports the quota.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tf_fake_gpu::profile::DeviceProfile;
use tf_fake_gpu::testing::{isolated_ascend_config, to_toml};
use tf_test_support::show;

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");

/// The simulated driver laid out by `tensor-fusion fake-gpu install`, an isolated machine (a
/// 910B3 and a 310P3) and the ACL C program, made once per test binary.
struct Setup {
    driver: PathBuf,
    config: PathBuf,
    program: PathBuf,
    regions: PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tf_test_support::scratch_dir("ascend-cli");
        let driver = dir.join("driver");
        let out = Command::new(BIN)
            .args(["fake-gpu", "install"])
            .arg(&driver)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        for lib in ["libascendcl.so", "libdcmi.so"] {
            assert!(driver.join(lib).exists(), "fake-gpu install writes {lib}");
        }
        let config = dir.join("npu.toml");
        let machine = isolated_ascend_config(
            "ascend-cli",
            &[DeviceProfile::ascend_910b3, DeviceProfile::ascend_310p3],
        );
        std::fs::write(&config, to_toml(&machine)).unwrap();
        let root = tf_test_support::workspace_root();
        let program = dir.join("acl_vector_add");
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&program)
            .arg(root.join("fake-gpu/libascendcl/tests/c/acl_vector_add.c"))
            .arg("-I")
            .arg(root.join("bindings/ascend-sys/include"))
            .arg("-L")
            .arg(&driver)
            .arg("-lascendcl")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let regions = dir.join("regions");
        Setup {
            driver,
            config,
            program,
            regions,
        }
    })
}

fn tf(args: &[&str]) -> Output {
    let s = setup();
    Command::new(BIN)
        .args(args)
        .env("LD_LIBRARY_PATH", &s.driver)
        .env("TF_FAKE_GPU_CONFIG", &s.config)
        .env("TF_VGPU_DIR", &s.regions)
        .env_remove("TF_BACKEND")
        .output()
        .unwrap()
}

fn line<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

#[test]
fn devices_lists_the_simulated_npus_with_ai_cores_and_memory() {
    let out = tf(&["devices", "--backend", "ascend"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().contains("AICORE"), "{text}");
    let npu = |model: &str| {
        text.lines()
            .find(|l| l.contains(model))
            .unwrap_or_else(|| panic!("{model} not listed:\n{text}"))
            .to_string()
    };
    let b3 = npu("Ascend910B3");
    assert!(b3.starts_with("0 ") && b3.contains(" 64 GiB "), "{b3}");
    assert!(b3.contains(" 20 "), "20 AI cores: {b3}");
    let p3 = npu("Ascend310P3");
    assert!(
        p3.contains(" 24 GiB ") && p3.contains(" 8 "),
        "8 AI cores: {p3}"
    );
    let json = tf(&["devices", "--backend", "ascend", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["compute_units"], 20);
    assert_eq!(v[1]["total_memory_bytes"], 24u64 << 30);
    assert_eq!(v[0]["backend"], "ascend");
}

#[test]
fn an_acl_program_runs_on_the_simulated_npu_and_under_the_npu_limiter() {
    let s = setup();
    let kernels = tf_test_support::workspace_root().join("hal/kernels/tf_kernels.ptx");
    let p = s.program.to_str().unwrap();
    let k = kernels.to_str().unwrap();
    // Unlimited first, then on a vNPU of 1 GiB: the vector add still checks out.
    for args in [
        vec!["run", "--backend", "ascend", "--", p, k, "100000"],
        vec![
            "run",
            "--backend",
            "ascend",
            "--vram",
            "1GiB",
            "--",
            p,
            k,
            "100000",
        ],
    ] {
        let out = tf(&args);
        assert!(out.status.success(), "{args:?}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("OK 100000 elements checked"),
            "{}",
            show(&out)
        );
    }
    // Allocating 256 MiB at a time until refused: exactly 1 GiB, the runtime's OOM code, and
    // aclrtGetMemInfo reports the quota.
    let out = tf(&[
        "run",
        "--backend",
        "ascend",
        "--vram",
        "1GiB",
        "--",
        p,
        "--probe",
        "256",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(line(&text, "ALLOCATED"), Some("1073741824"), "{text}");
    assert_eq!(line(&text, "REFUSED"), Some("207001"), "{text}");
    assert_eq!(line(&text, "MEMINFO_TOTAL"), Some("1073741824"), "{text}");
    assert!(
        text.contains("1 NPUs; device 0: Ascend910B3"),
        "only its NPU: {text}"
    );
    // On the second NPU.
    let out = tf(&[
        "run",
        "--backend",
        "ascend",
        "--device",
        "1",
        "--vram",
        "2GiB",
        "--",
        p,
        "--probe",
        "512",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("device 0: Ascend310P3"), "{}", show(&out));
    assert_eq!(line(&text, "ALLOCATED"), Some("2147483648"), "{text}");
    // Without a vNPU the same program gets the whole device.
    let mut whole = Command::new(p);
    let out = whole
        .args(["--probe", "8192"])
        .env("LD_LIBRARY_PATH", &s.driver)
        .env("TF_FAKE_GPU_CONFIG", &s.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // (Other tests of this file may hold a few bytes of the same NPU meanwhile.)
    let got: u64 = line(&text, "ALLOCATED").unwrap().parse().unwrap();
    assert!(got >= 56 << 30, "{text}");
    assert!(Path::new(&s.regions).exists());
}

#[test]
fn launches_are_paced_to_the_compute_share() {
    let s = setup();
    let kernels = tf_test_support::workspace_root().join("hal/kernels/tf_kernels.ptx");
    let (p, k) = (s.program.to_str().unwrap(), kernels.to_str().unwrap());
    let wall = |extra: &[&str]| {
        let report = s
            .regions
            .with_extension(format!("report-{}.json", extra.len()));
        let mut args = vec![
            "run",
            "--backend",
            "ascend",
            "--report",
            report.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", p, k, "--busy", "100", "10"]);
        let out = tf(&args);
        assert!(out.status.success(), "{}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ms: f64 = line(&text, "BUSY_WALL_MS").unwrap().parse().unwrap();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        (ms, r)
    };
    // 100 kernels of 10 ms, one after the other: 1 s of device time. At 50 % they take about
    // twice as long.
    let (alone, _) = wall(&[]);
    let (half, report) = wall(&["--compute-percent", "50"]);
    assert!(
        half > alone * 1.5,
        "at 50 %: {half:.0} ms, alone: {alone:.0} ms; report {report}"
    );
    assert!(
        report["throttled_launches"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["samples"].as_u64().unwrap() > 0,
        "launches were timed: {report}"
    );
}
