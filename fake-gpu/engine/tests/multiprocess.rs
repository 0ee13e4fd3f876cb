//! Several real processes on one simulated device: they contend like on a GPU, utilization means
//! what NVML means, and a killed process gives its memory back.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tf_fake_gpu::load::{LoadReport, LoadSpec};
use tf_fake_gpu::testing::{isolated_config, to_toml};
use tf_fake_gpu::{FakeBackend, sys};
use tf_hal::Backend;

const LOAD: &str = env!("CARGO_BIN_EXE_tf-fake-gpu-load");

fn spawn_load(config_path: &std::path::Path, spec: &LoadSpec) -> std::process::Child {
    Command::new(LOAD)
        .arg(serde_json::to_string(spec).unwrap())
        .env("TF_FAKE_GPU_CONFIG", config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tf-fake-gpu-load")
}

#[test]
fn two_processes_share_a_device_and_utilization_matches_busy_time() {
    let config = isolated_config("share", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, to_toml(&config)).unwrap();
    let backend = FakeBackend::with_config(config).unwrap();
    let dev = backend.device(0).unwrap();

    let now = sys::now_ns();
    let window_start = now + 700_000_000; // let both processes get going
    let window_end = window_start + 2_000_000_000;
    let spec = LoadSpec {
        device: 0,
        kernel_ns: 1_000_000,
        until_ns: window_end + 200_000_000,
        window_start_ns: window_start,
        window_end_ns: window_end,
        alloc_bytes: 0,
        depth: 2,
    };
    let children: Vec<_> = (0..2).map(|_| spawn_load(&path, &spec)).collect();
    sys::sleep_until(window_end);
    let util = dev.utilization(Duration::from_secs(2)).unwrap();
    let reports: Vec<LoadReport> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "load process failed");
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    let arbitrated: f64 = reports.iter().map(|r| r.share_pct).sum();
    eprintln!(
        "utilization {util:.2}%, arbitrated {arbitrated:.2}%, shares {:?}",
        reports.iter().map(|r| r.share_pct).collect::<Vec<_>>()
    );
    for r in &reports {
        assert!(
            (r.share_pct - 50.0).abs() <= 5.0,
            "each process should get about half the device: {reports:?}"
        );
    }
    assert!(
        (util - arbitrated).abs() <= 2.0,
        "reported utilization {util:.2}% vs arbitrated busy time {arbitrated:.2}% ({reports:?})"
    );
    assert!(
        util > 90.0,
        "two back-to-back loads should keep the device busy: {util:.2}%"
    );
}

#[test]
fn a_killed_process_returns_its_memory_within_a_second() {
    let config = isolated_config("kill", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, to_toml(&config)).unwrap();
    let backend = FakeBackend::with_config(config).unwrap();
    let dev = backend.device(0).unwrap();
    let gib = 1u64 << 30;
    let spec = LoadSpec {
        device: 0,
        kernel_ns: 1_000_000,
        until_ns: sys::now_ns() + 60_000_000_000,
        window_start_ns: 0,
        window_end_ns: 0,
        alloc_bytes: 3 * gib,
        depth: 1,
    };
    let mut child = spawn_load(&path, &spec);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.memory().unwrap().used_bytes != 3 * gib {
        assert!(
            Instant::now() < deadline,
            "the child never allocated its memory"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dev.processes().unwrap().len(), 1);
    // SAFETY: sending SIGKILL to our own child, whose pid is valid until we reap it.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    // Do not reap yet: a zombie must already count as dead.
    loop {
        if dev.memory().unwrap().used_bytes == 0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "memory of a killed process was not returned within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(dev.processes().unwrap().is_empty());
    child.wait().unwrap();
}

/// A process that dies holding the device far ahead (a long kernel queued or running) gives it
/// back: the next process's kernel starts at once, not when the dead one's would have ended.
#[test]
fn a_killed_process_does_not_hold_the_device_for_the_living() {
    let config = isolated_config("deadtail", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(&path, to_toml(&config)).unwrap();
    let backend = FakeBackend::with_config(config.clone()).unwrap();
    let gpu = tf_fake_gpu::FakeGpu::new(config).unwrap();
    let dev = gpu.device(0).unwrap();
    let now = sys::now_ns();
    // Back-to-back 8 s kernels (under the simulated GPU's 10 s limit).
    let spec = LoadSpec {
        device: 0,
        kernel_ns: 8_000_000_000,
        until_ns: now + 60_000_000_000,
        window_start_ns: now,
        window_end_ns: now + 1,
        alloc_bytes: 0,
        depth: 1,
    };
    let mut child = spawn_load(&path, &spec);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.segment().processes().iter().all(|p| p.kernels == 0) {
        assert!(
            Instant::now() < deadline,
            "the load never reserved the device"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let asked = sys::now_ns();
    let (start, _) = dev.reserve(1_000_000).unwrap();
    assert!(
        start.saturating_sub(asked) < 100_000_000,
        "waited {} ms behind a dead process",
        start.saturating_sub(asked) / 1_000_000
    );
    drop(backend);
}

/// Per-process busy time over a caller's window (what NVML's `lastSeenTimeStamp` asks for) is
/// the same however often it is read: a process at 30 % reads 30 % in every window, never 0 %.
#[test]
fn per_process_busy_time_is_measured_over_the_callers_window() {
    let config = isolated_config("window", 1);
    let gpu = tf_fake_gpu::FakeGpu::new(config).unwrap();
    let dev = gpu.device(0).unwrap();
    let me = std::process::id();
    // 3 ms kernels every 10 ms for 1.2 s: 30 % of the device.
    let t0 = sys::now_ns();
    let mut next = t0;
    for _ in 0..120 {
        sys::sleep_until(next);
        dev.reserve(3_000_000).unwrap();
        next += 10_000_000;
    }
    sys::sleep_until(next);
    let now = sys::now_ns();
    for window_ms in [100u64, 250, 1000] {
        let from = now - window_ms * 1_000_000;
        let busy = dev.segment().busy_by_process(from, now);
        let mine = busy.iter().find(|(p, _)| *p == me).map_or(0, |b| b.1);
        let pct = mine as f64 * 100.0 / (window_ms * 1_000_000) as f64;
        assert!(
            (pct - 30.0).abs() <= 4.0,
            "{window_ms} ms window: {pct:.1}%"
        );
    }
    assert!(dev.segment().busy_by_process(now, now + 1).is_empty());
}
