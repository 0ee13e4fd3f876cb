//! The Vulkan backend and the Vulkan layer end to end, on the machine's Vulkan driver (Mesa's
//! lavapipe in CI: a conformant Vulkan device on the CPU): `devices --backend vulkan`,
//! `demo --backend vulkan`, and `run --backend vulkan` with an unmodified third-party program
//! (`vulkaninfo`) and with `vkprobe` (`backends/vulkan/examples/vkprobe.rs`, a compute program
//! on the system's loader that knows nothing of vGPUs).
//!
//! Needs the Debian packages `libvulkan1 mesa-vulkan-drivers vulkan-tools` (`.ci/run` installs
//! them); without them each test fails saying what to install.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::path::PathBuf;
use std::process::{Command, Output};
use tf_test_support::show;

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");
const PACKAGES: &str = "libvulkan1 mesa-vulkan-drivers vulkan-tools";

/// `tensor-fusion` with a private region folder, and no backend chosen by the environment.
fn tf(regions: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("TF_VGPU_DIR", regions)
        .env("TF_CONFIG", "/nonexistent/tensor-fusion-test-config.toml")
        .env_remove("TF_BACKEND")
        .env_remove("VK_INSTANCE_LAYERS")
        .env_remove("VK_ADD_LAYER_PATH")
        .env_remove("LD_PRELOAD");
    c
}

fn regions() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The Vulkan device list, or a failure that names the packages to install.
fn require_vulkan() {
    let dir = regions();
    let o = tf(dir.path())
        .args(["devices", "--backend", "vulkan", "--json"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "no Vulkan device on this machine: install {PACKAGES} (Debian/Ubuntu; .ci/run does)\n{}",
        show(&o)
    );
}

fn vkprobe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/vkprobe");
    assert!(
        p.exists(),
        "{} is not built (cargo test --workspace builds it, or cargo build -p tf-backend-vulkan --examples)",
        p.display()
    );
    p
}

/// The one JSON line a probe printed.
fn json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line\n{}", show(o)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{}", show(o)))
}

#[test]
fn devices_lists_the_vulkan_device() {
    require_vulkan();
    let dir = regions();
    let o = tf(dir.path())
        .args(["devices", "--backend", "vulkan", "--json"])
        .output()
        .unwrap();
    let devices: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &devices[0];
    assert_eq!(d["backend"], "vulkan", "{d}");
    assert!(d["total_memory_bytes"].as_u64().unwrap() > 0, "{d}");
    assert!(d["uuid"].as_str().unwrap().starts_with("GPU-"), "{d}");
    let o = tf(dir.path())
        .args(["devices", "--backend", "vulkan"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains(d["model"].as_str().unwrap()) && table.contains("vulkan"),
        "{table}"
    );
}

#[test]
fn a_missing_loader_says_what_to_install() {
    let dir = regions();
    let o = tf(dir.path())
        .env("TF_VULKAN_LIBRARY", "/nonexistent/libvulkan.so.1")
        .args(["devices", "--backend", "vulkan"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("driver library not found") && err.contains("apt-get install libvulkan1"),
        "{err}"
    );
}

#[test]
fn a_loader_without_a_driver_is_no_device() {
    require_vulkan();
    let dir = regions();
    let o = tf(dir.path())
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .args(["devices", "--backend", "vulkan"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no device") && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
}

#[test]
fn demo_runs_the_vector_add_on_vulkan() {
    require_vulkan();
    let dir = regions();
    let o = tf(dir.path())
        .args(["demo", "--backend", "vulkan", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let j = json(&o);
    assert_eq!(
        j["vector_add"]["checked"], j["vector_add"]["elements"],
        "{j}"
    );
    assert_eq!(j["devices"][0]["backend"], "vulkan", "{j}");
}

#[test]
fn compute_is_correct_with_and_without_the_layer() {
    require_vulkan();
    let alone = Command::new(vkprobe())
        .args(["vector-add", "100003"])
        .env_remove("VK_INSTANCE_LAYERS")
        .output()
        .unwrap();
    assert!(alone.status.success(), "{}", show(&alone));
    assert_eq!(json(&alone)["wrong"], 0);
    let dir = regions();
    let o = tf(dir.path())
        .args(["run", "--backend", "vulkan", "--vram", "256MiB", "--"])
        .arg(vkprobe())
        .args(["vector-add", "100003"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(json(&o)["wrong"], 0, "{}", show(&o));
}

#[test]
fn vulkaninfo_sees_the_quota_as_the_device_local_heap() {
    require_vulkan();
    let dir = regions();
    let o = tf(dir.path())
        .args([
            "run",
            "--backend",
            "vulkan",
            "--vram",
            "256MiB",
            "--",
            "vulkaninfo",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vulkaninfo under the layer (install vulkan-tools if it is missing)\n{}",
        show(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("VK_LAYER_TENSOR_FUSION_vgpu"),
        "the layer is not listed"
    );
    // memoryHeaps[0] (lavapipe has one, device-local): size and budget are the quota.
    let heaps = out
        .split("VkPhysicalDeviceMemoryProperties:")
        .nth(1)
        .unwrap_or_else(|| panic!("no memory properties in\n{out}"));
    let heap0: Vec<&str> = heaps.lines().take(12).collect();
    let heap0 = heap0.join("\n");
    assert!(
        heap0.contains("size   = 268435456 (0x10000000) (256.00 MiB)"),
        "{heap0}"
    );
    assert!(
        heap0.contains("budget = 268435456 (0x10000000) (256.00 MiB)"),
        "{heap0}"
    );
}

#[test]
fn allocations_stop_at_the_quota_and_come_back() {
    require_vulkan();
    let dir = regions();
    // Two processes one after the other on one vGPU, each allocating 16 MiB blocks until one
    // fails, freeing them all and doing it again: every round gets the quota (less what the
    // backend keeps for itself, 64 KiB), never more; frees give the memory back.
    let o = tf(dir.path())
        .args([
            "run",
            "--backend",
            "vulkan",
            "--vram",
            "256MiB",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "{p} alloc-blocks 16 && {p} alloc-blocks 16",
            p = vkprobe().display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for j in &lines {
        let total = j["total_bytes"].as_u64().unwrap();
        assert!(total <= 256 << 20, "{j}");
        assert!(total >= 240 << 20, "{j}");
        assert_eq!(j["vendor_code"], "VK_ERROR_OUT_OF_DEVICE_MEMORY", "{j}");
        assert_eq!(j["again_total_bytes"], j["total_bytes"], "{j}");
    }
}

#[test]
fn a_destroyed_device_gives_its_memory_back() {
    require_vulkan();
    let dir = regions();
    let o = tf(dir.path())
        .args(["run", "--backend", "vulkan", "--vram", "256MiB", "--"])
        .arg(vkprobe())
        .args(["device-leak", "128"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let j = json(&o);
    assert_eq!(j["then_total_bytes"], 256u64 << 20, "{j}");
    assert_eq!(j["error"], "ERROR_OUT_OF_DEVICE_MEMORY", "{j}");
}

#[test]
fn a_killed_process_gives_its_memory_back() {
    require_vulkan();
    let dir = regions();
    let flag = dir.path().join("holding");
    // The first process holds 200 MiB of the 256 MiB quota and is killed with SIGKILL; the
    // next one gets the whole quota again.
    let script = format!(
        "{p} hold 200 60 > {f} & pid=$!; \
         for i in $(seq 1 300); do grep -q holding {f} && break; sleep 0.05; done; \
         grep -q holding {f} || exit 3; \
         {p} alloc-blocks 16; \
         kill -9 $pid; wait $pid; \
         {p} alloc-blocks 16",
        p = vkprobe().display(),
        f = flag.display()
    );
    let o = tf(dir.path())
        .args([
            "run",
            "--backend",
            "vulkan",
            "--vram",
            "256MiB",
            "--",
            "sh",
            "-c",
        ])
        .arg(script)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 2, "{}", show(&o));
    let (during, after) = (
        lines[0]["total_bytes"].as_u64().unwrap(),
        lines[1]["total_bytes"].as_u64().unwrap(),
    );
    assert!(during <= 56 << 20, "while 200 MiB were held: {during}");
    assert!(after >= 240 << 20, "after the holder was killed: {after}");
}

/// A loose check that pacing works at all (the figure itself is measured by hand on an idle
/// machine; lavapipe runs on the CPU, so this machine's load moves it).
#[test]
fn a_compute_share_slows_busy_dispatches() {
    require_vulkan();
    let dir = regions();
    let rate = |limits: &[&str]| {
        let mut c = tf(dir.path());
        c.args(["run", "--backend", "vulkan"]).args(limits);
        let o = c
            .arg("--")
            .arg(vkprobe())
            .args(["busy", "10", "4"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        json(&o)["rate_per_s"].as_f64().unwrap()
    };
    let alone = rate(&[]);
    let limited = rate(&["--compute-percent", "30"]);
    let share = limited / alone * 100.0;
    assert!(
        (12.0..=50.0).contains(&share),
        "30 % share: {limited:.1}/s vs {alone:.1}/s alone = {share:.1} %"
    );
}
