//! `Client::from_env`, which reads process-global environment variables: each case runs in a
//! child process (this test binary again, running only `probe_from_env_in_a_child`) with its own
//! environment, and reports what the client did on one line of its output.
//!
//! The contract: the region named by `TF_VGPU_REGION` is the only way limits reach a process.
//! Variables that once carried limits beside it (`TF_VGPU_VRAM`, `TF_VGPU_COMPUTE`,
//! `TF_VGPU_DEVICE_UUID`) are ignored.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use tf_vgpu_limiter::Client;
use tf_vgpu_limiter::client::{POLICY_ENV, REGION_ENV};

/// Variables that once carried limits beside the region; nothing reads them any more.
const VRAM_ENV: &str = "TF_VGPU_VRAM";
const COMPUTE_ENV: &str = "TF_VGPU_COMPUTE";
const DEVICE_UUID_ENV: &str = "TF_VGPU_DEVICE_UUID";

/// Set in the child: the probe runs only then.
const PROBE_ENV: &str = "TF_LIMITER_TEST_PROBE";
/// Comma-separated sizes the probe charges, in order.
const CHARGES_ENV: &str = "TF_LIMITER_TEST_CHARGES";
const PROBE: &str = "probe_from_env_in_a_child";

/// Not a test on its own: the body of every child (a no-op in a normal run).
#[test]
fn probe_from_env_in_a_child() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let Some(c) = Client::from_env() else {
        println!("PROBE none");
        return;
    };
    let charges: Vec<String> = std::env::var(CHARGES_ENV)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|b| c.charge(b.parse().unwrap()).to_string())
        .collect();
    println!(
        "PROBE uuid={} quota={:?} share={:?} charges={} used={}",
        c.device_uuid(),
        c.vram_quota(),
        c.region().compute_share(),
        charges.join(","),
        c.vram_used()
    );
}

/// Run the probe with exactly `env` among the `TF_VGPU_*` variables; returns its report.
fn probe(env: &[(&str, &str)], charges: &str) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", PROBE, "--nocapture", "--test-threads=1"]);
    for var in [
        REGION_ENV,
        DEVICE_UUID_ENV,
        VRAM_ENV,
        COMPUTE_ENV,
        POLICY_ENV,
    ] {
        cmd.env_remove(var);
    }
    cmd.env(PROBE_ENV, "1").env(CHARGES_ENV, charges);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("PROBE ").map(|(_, report)| report))
        .unwrap_or_else(|| panic!("no report from the probe:\n{stdout}"))
        .to_string()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn no_vgpu_without_any_variable() {
    assert_eq!(probe(&[], ""), "none");
    assert_eq!(probe(&[(DEVICE_UUID_ENV, "GPU-x")], ""), "none");
    // Unparsable or zero limits are no limits.
    assert_eq!(probe(&[(VRAM_ENV, "0"), (COMPUTE_ENV, "0")], ""), "none");
    assert_eq!(
        probe(&[(VRAM_ENV, "lots"), (COMPUTE_ENV, "-1")], ""),
        "none"
    );
    assert_eq!(probe(&[(REGION_ENV, "")], ""), "none");
}

#[test]
fn limits_in_the_environment_without_a_region_are_ignored() {
    assert_eq!(
        probe(
            &[
                (VRAM_ENV, "1000"),
                (DEVICE_UUID_ENV, "GPU-env"),
                (COMPUTE_ENV, "0.25")
            ],
            "600,400,1"
        ),
        "none"
    );
    assert_eq!(probe(&[(COMPUTE_ENV, "0.5")], "1000000"), "none");
}

#[test]
fn the_region_wins_over_the_environment() {
    let f = region_file("GPU-region", &limits(Some(5000), Some(0.4)));
    let report = probe(
        &[
            (REGION_ENV, path_str(&f.path)),
            (VRAM_ENV, "1000"),
            (DEVICE_UUID_ENV, "GPU-env"),
        ],
        "3000,2000,1",
    );
    assert_eq!(
        report,
        "uuid=GPU-region quota=Some(5000) share=Some(0.4) charges=true,true,false used=5000"
    );
    // The child charged the shared region; it has exited, so its usage is reclaimed.
    assert_eq!(f.region.vram_used(), 5000);
    assert_eq!(f.region.stats().oom_events, 1);
    assert_eq!(f.region.reclaim_dead(), 5000);
    assert_eq!(f.region.vram_used(), 0);
}

/// A process that never saw its region knows no limits to keep: it refuses new allocations
/// rather than running unlimited (it does not fail open).
#[test]
fn a_missing_region_with_keep_refuses_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for policy in [None, Some("keep"), Some("KEEP"), Some("nonsense")] {
        let mut env = vec![(REGION_ENV, path_str(&missing)), (VRAM_ENV, "1000")];
        if let Some(p) = policy {
            env.push((POLICY_ENV, p));
        }
        assert_eq!(
            probe(&env, "1000,1"),
            "uuid= quota=None share=None charges=false,false used=0",
            "policy {policy:?}"
        );
    }
}

#[test]
fn a_corrupt_region_with_keep_refuses_allocations() {
    let f = region_file("GPU-region", &limits(Some(5000), None));
    corrupt_magic(&f.path);
    assert_eq!(
        probe(
            &[
                (REGION_ENV, path_str(&f.path)),
                (VRAM_ENV, "1000"),
                (DEVICE_UUID_ENV, "GPU-env")
            ],
            "1000,1"
        ),
        "uuid= quota=None share=None charges=false,false used=0"
    );
    assert_eq!(f.region.vram_used(), 0, "the corrupt region is left alone");
}

/// `closed` refuses every allocation; `open` means limits are not enforced (README, client.rs
/// docs).
#[test]
fn a_missing_region_with_closed_refuses_and_with_open_does_not_enforce() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for (policy, charges, report) in [
        (
            "closed",
            "1,0",
            "uuid= quota=None share=None charges=false,false used=0",
        ),
        (
            "open",
            "1000,1",
            "uuid= quota=None share=None charges=true,true used=1001",
        ),
    ] {
        let env = [
            (REGION_ENV, path_str(&missing)),
            (VRAM_ENV, "1000"),
            (POLICY_ENV, policy),
        ];
        assert_eq!(probe(&env, charges), report, "policy {policy}");
    }
}
