//! Isolated simulated machines for tests and tools: each gets device UUIDs of its own and a
//! private shared-memory directory, so concurrent tests never see each other's processes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use crate::profile::{DeviceProfile, FakeGpuConfig};

/// Directory for the segments of isolated machines. Segment files older than a day are removed
/// when a new machine is made, so crashed test runs do not accumulate.
pub fn isolated_shm_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("tf-fake-gpu-isolated");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let day = Duration::from_secs(24 * 3600);
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > day);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    dir
}

/// A machine of `devices` default (H100) devices whose UUIDs no other machine uses.
pub fn isolated_config(tag: &str, devices: u32) -> FakeGpuConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) as u64;
    let pid = std::process::id() as u64;
    let nanos = crate::sys::now_ns();
    // UUIDs in NVIDIA's format (hex), unique to this machine: the CUDA driver API reports them
    // as 16 bytes, so they must round-trip through hex.
    let seed = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let devices = (0..devices)
        .map(|i| {
            let mut p = DeviceProfile::h100_sxm(i);
            p.uuid = format!(
                "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                (seed >> 32) as u32,
                pid & 0xffff,
                i,
                n & 0xffff,
                (nanos & 0xffff_ffff) << 16 | (pid >> 16) & 0xffff
            );
            p
        })
        .collect();
    FakeGpuConfig {
        devices,
        shm_dir: isolated_shm_dir(),
        source: None,
    }
}

/// The TOML text of a configuration, to hand to another process via `TF_FAKE_GPU_CONFIG`.
pub fn to_toml(config: &FakeGpuConfig) -> String {
    let mut s = format!("shm_dir = {:?}\n", config.shm_dir.display().to_string());
    for d in &config.devices {
        s += &format!(
            "\n[[device]]\nmodel = {:?}\nuuid = {:?}\nvendor = \"{}\"\nmemory = {}\nsms = {}\nfp16_tflops = {}\npci_bus_id = {:?}\nnuma_node = {}\ncompute_capability = \"{}.{}\"\nmemory_bandwidth_gbps = {}\nlaunch_overhead_ns = {}\nwave_ns = {}\nnvlink = {}\n",
            d.model,
            d.uuid,
            d.vendor,
            d.memory_bytes,
            d.sms,
            d.fp16_tflops,
            d.pci_bus_id,
            d.numa_node,
            d.compute_capability.0,
            d.compute_capability.1,
            d.memory_bandwidth_gbps,
            d.launch_overhead_ns,
            d.wave_ns,
            d.nvlink
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trips() {
        let c = isolated_config("rt", 2);
        let back = FakeGpuConfig::parse(&to_toml(&c), std::path::Path::new("x")).unwrap();
        assert_eq!(back.devices, c.devices);
        assert_eq!(back.shm_dir, c.shm_dir);
    }
}
