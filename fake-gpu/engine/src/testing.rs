//! Isolated simulated machines for tests and tools: each gets device UUIDs of its own and a
//! private shared-memory folder, so concurrent tests never see each other's processes, and the
//! folders of finished processes are removed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::profile::{DeviceProfile, FakeGpuConfig};

/// A fresh, private segment folder for one isolated machine:
/// `$TMPDIR/tf-fake-gpu-isolated/<pid>-<start time>-<n>`. Folders of processes that are gone
/// are removed when a new one is made, so finished and crashed runs leave nothing behind.
pub fn isolated_shm_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let root = std::env::temp_dir().join("tf-fake-gpu-isolated");
    let _ = std::fs::create_dir_all(&root);
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('-');
            let owner = parts.next().and_then(|p| p.parse::<u32>().ok());
            let start = parts.next().and_then(|s| s.parse::<u64>().ok());
            let gone = match (owner, start) {
                (Some(pid), Some(start)) => crate::sys::process_start_time(pid) != Some(start),
                _ => true, // not ours (older layouts): nobody can be using it by name
            };
            if gone {
                let path = e.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }
    let pid = std::process::id();
    let start = crate::sys::process_start_time(pid).unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{pid}-{start}-{n}"));
    let _ = std::fs::create_dir_all(&dir);
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
        shm_dir_is_default: false,
        source: None,
    }
}

/// A machine of Ascend NPUs (profile constructors such as `DeviceProfile::ascend_910b3`, one
/// per device) whose UUIDs no other machine uses.
pub fn isolated_ascend_config(tag: &str, devices: &[fn(u32) -> DeviceProfile]) -> FakeGpuConfig {
    let mut c = isolated_config(tag, devices.len() as u32);
    for (i, (d, make)) in c.devices.iter_mut().zip(devices).enumerate() {
        let uuid = std::mem::take(&mut d.uuid);
        *d = make(i as u32);
        d.uuid = uuid;
    }
    c
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
