//! What a simulated device's model has that its profile does not say: board power, clocks, PCI
//! ids, PCIe link, memory bus, NVLink, brand, temperatures. Figures follow NVIDIA's product
//! briefs and datasheets for the named parts, and what `nvidia-smi -q` shows on them; a model not
//! in the table gets generic figures derived from its throughput. The simulated NVML reports
//! them, and the engine's sensor model ([`crate::FakeDevice::sensors`]) uses the power and
//! temperature figures.

use crate::DeviceProfile;

/// The product line a model is sold under (NVML's brand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// Data-centre parts sold as "NVIDIA" (A100, H100, L4, L40, ...).
    Nvidia,
    /// Tesla (T4, V100).
    Tesla,
    /// GeForce (RTX 4090).
    GeForce,
}

/// Per-model figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    /// Board power limit (default and maximum), watts.
    pub tdp_w: u32,
    /// Lowest settable power limit, watts.
    pub min_limit_w: u32,
    /// Board power with nothing running, watts.
    pub idle_w: u32,
    /// Maximum graphics/SM clock, MHz.
    pub max_graphics_mhz: u32,
    /// Graphics/SM clock when idle, MHz.
    pub idle_graphics_mhz: u32,
    /// Memory clock, MHz.
    pub mem_mhz: u32,
    /// Maximum video clock, MHz.
    pub max_video_mhz: u32,
    /// PCI device id (the vendor id is NVIDIA's).
    pub pci_device_id: u16,
    /// PCI subsystem id (device << 16 | vendor).
    pub pci_subsystem_id: u32,
    pub pcie_gen: u32,
    pub pcie_width: u32,
    pub memory_bus_width: u32,
    /// NVLink links and version when the profile says the device has NVLink.
    pub nvlink_links: u32,
    pub nvlink_version: u32,
    pub brand: Brand,
    /// GPU temperature at idle and at full load, °C.
    pub idle_temp_c: u32,
    pub full_temp_c: u32,
    /// `NVML_TEMPERATURE_THRESHOLD_SHUTDOWN`, `_SLOWDOWN`, `_MEM_MAX`, `_GPU_MAX`.
    pub thresholds_c: [u32; 4],
}

const H100_SXM: ModelSpec = ModelSpec {
    tdp_w: 700,
    min_limit_w: 200,
    idle_w: 70,
    max_graphics_mhz: 1980,
    idle_graphics_mhz: 345,
    mem_mhz: 2619,
    max_video_mhz: 1755,
    pci_device_id: 0x2330,
    pci_subsystem_id: 0x16c1_10de,
    pcie_gen: 5,
    pcie_width: 16,
    memory_bus_width: 5120,
    nvlink_links: 18,
    nvlink_version: 4,
    brand: Brand::Nvidia,
    idle_temp_c: 32,
    full_temp_c: 68,
    thresholds_c: [92, 89, 95, 87],
};

/// The figures for a profile, by model name.
pub fn spec(profile: &DeviceProfile) -> ModelSpec {
    let m = profile.model.to_ascii_uppercase();
    let has = |s: &str| m.contains(s);
    if has("H200") {
        ModelSpec {
            pci_device_id: 0x2335,
            pci_subsystem_id: 0x18be_10de,
            mem_mhz: 3201,
            memory_bus_width: 6144,
            ..H100_SXM
        }
    } else if has("H100") && (has("PCIE") || has("NVL")) {
        ModelSpec {
            tdp_w: 350,
            idle_w: 50,
            max_graphics_mhz: 1755,
            mem_mhz: 1593,
            pci_device_id: 0x2331,
            pci_subsystem_id: 0x1626_10de,
            ..H100_SXM
        }
    } else if has("H100") || has("H800") {
        H100_SXM
    } else if has("A100") || has("A800") {
        ModelSpec {
            tdp_w: 400,
            min_limit_w: 100,
            idle_w: 55,
            max_graphics_mhz: 1410,
            idle_graphics_mhz: 210,
            mem_mhz: 1593,
            max_video_mhz: 1290,
            pci_device_id: if profile.memory_bytes > (48 << 30) {
                0x20b2
            } else {
                0x20b0
            },
            pci_subsystem_id: 0x1463_10de,
            pcie_gen: 4,
            memory_bus_width: 5120,
            nvlink_links: 12,
            nvlink_version: 3,
            ..H100_SXM
        }
    } else if has("L40") {
        ModelSpec {
            tdp_w: 350,
            min_limit_w: 100,
            idle_w: 35,
            max_graphics_mhz: 2520,
            idle_graphics_mhz: 210,
            mem_mhz: 9001,
            max_video_mhz: 1965,
            pci_device_id: 0x26b9,
            pci_subsystem_id: 0x1851_10de,
            pcie_gen: 4,
            memory_bus_width: 384,
            nvlink_links: 0,
            ..H100_SXM
        }
    } else if has("L4") {
        ModelSpec {
            tdp_w: 72,
            min_limit_w: 40,
            idle_w: 16,
            max_graphics_mhz: 2040,
            idle_graphics_mhz: 210,
            mem_mhz: 6251,
            max_video_mhz: 1770,
            pci_device_id: 0x27b8,
            pci_subsystem_id: 0x16ca_10de,
            pcie_gen: 4,
            memory_bus_width: 192,
            nvlink_links: 0,
            ..H100_SXM
        }
    } else if has("T4") {
        ModelSpec {
            tdp_w: 70,
            min_limit_w: 60,
            idle_w: 10,
            max_graphics_mhz: 1590,
            idle_graphics_mhz: 300,
            mem_mhz: 5001,
            max_video_mhz: 1470,
            pci_device_id: 0x1eb8,
            pci_subsystem_id: 0x12a2_10de,
            pcie_gen: 3,
            memory_bus_width: 256,
            nvlink_links: 0,
            brand: Brand::Tesla,
            ..H100_SXM
        }
    } else if has("V100") {
        ModelSpec {
            tdp_w: 300,
            min_limit_w: 150,
            idle_w: 40,
            max_graphics_mhz: 1530,
            idle_graphics_mhz: 135,
            mem_mhz: 877,
            max_video_mhz: 1372,
            pci_device_id: 0x1db1,
            pci_subsystem_id: 0x1212_10de,
            pcie_gen: 3,
            memory_bus_width: 4096,
            nvlink_links: 6,
            nvlink_version: 2,
            brand: Brand::Tesla,
            ..H100_SXM
        }
    } else if has("A10") {
        ModelSpec {
            tdp_w: 150,
            min_limit_w: 100,
            idle_w: 20,
            max_graphics_mhz: 1695,
            idle_graphics_mhz: 210,
            mem_mhz: 6251,
            max_video_mhz: 1500,
            pci_device_id: 0x2236,
            pci_subsystem_id: 0x1482_10de,
            pcie_gen: 4,
            memory_bus_width: 384,
            nvlink_links: 0,
            ..H100_SXM
        }
    } else if has("4090") {
        ModelSpec {
            tdp_w: 450,
            min_limit_w: 150,
            idle_w: 25,
            max_graphics_mhz: 2520,
            idle_graphics_mhz: 210,
            mem_mhz: 10501,
            max_video_mhz: 1965,
            pci_device_id: 0x2684,
            pci_subsystem_id: 0x167c_10de,
            pcie_gen: 4,
            memory_bus_width: 384,
            nvlink_links: 0,
            brand: Brand::GeForce,
            thresholds_c: [97, 94, 95, 90],
            ..H100_SXM
        }
    } else {
        // Unknown model: generic figures; the power scales with the profile's throughput.
        let tdp = (profile.fp16_tflops * 0.7).clamp(70.0, 1000.0) as u32;
        ModelSpec {
            tdp_w: tdp,
            min_limit_w: tdp / 3,
            idle_w: tdp / 10,
            pci_device_id: 0,
            pci_subsystem_id: 0,
            pcie_gen: if profile.compute_capability.0 >= 9 {
                5
            } else {
                4
            },
            ..H100_SXM
        }
    }
}

/// One second, in ns: NVML's sample period for utilization and power.
const SECOND_NS: u64 = 1_000_000_000;

/// The sensor model: what a real board's sensors would read under the device's load, from its
/// model's figures and the shared busy-time history (the same for every process, with no
/// waiting).
///
/// - Temperature rises linearly from the model's idle to its full-load temperature with the
///   utilization over the last 10 s (a slower signal, like a heat sink).
/// - Power is the model's idle power plus (limit − idle) × the utilization over the last second;
///   energy integrates the same model over the machine's uptime.
impl crate::FakeDevice {
    /// The model's figures.
    pub fn model_spec(&self) -> ModelSpec {
        spec(self.profile())
    }

    fn utilization_ratio(&self, window_ns: u64) -> f64 {
        self.segment().utilization(window_ns).clamp(0.0, 100.0) / 100.0
    }

    /// GPU temperature, °C.
    pub fn temperature_c(&self) -> u32 {
        let s = self.model_spec();
        let u = self.utilization_ratio(10 * SECOND_NS);
        s.idle_temp_c + ((s.full_temp_c - s.idle_temp_c) as f64 * u).round() as u32
    }

    /// Board power draw, milliwatts.
    pub fn power_mw(&self) -> u32 {
        let s = self.model_spec();
        let u = self.utilization_ratio(SECOND_NS);
        ((s.idle_w as f64 + (s.tdp_w - s.idle_w) as f64 * u) * 1000.0).round() as u32
    }

    /// Energy used since boot (the idle power over the uptime plus the extra power of every busy
    /// nanosecond), millijoules.
    pub fn energy_mj(&self) -> u64 {
        let (now_ns, busy_ns) = self.segment().busy_now();
        let s = self.model_spec();
        let idle = s.idle_w as u128 * now_ns as u128;
        let extra = (s.tdp_w - s.idle_w) as u128 * busy_ns as u128;
        ((idle + extra) / 1_000_000) as u64
    }

    /// The HAL's view of the sensors.
    pub fn sensors(&self) -> tf_hal::Sensors {
        tf_hal::Sensors {
            temperature_c: Some(self.temperature_c() as f64),
            power_w: Some(self.power_mw() as f64 / 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_told_apart() {
        let mut p = DeviceProfile::h100_sxm(0);
        assert_eq!(spec(&p).tdp_w, 700);
        assert_eq!(spec(&p).brand, Brand::Nvidia);
        p.model = "NVIDIA A100-SXM4-80GB".into();
        assert_eq!(spec(&p).pci_device_id, 0x20b2);
        p.model = "NVIDIA A10".into();
        assert_eq!(spec(&p).tdp_w, 150);
        p.model = "NVIDIA L40S".into();
        assert_eq!(spec(&p).tdp_w, 350);
        p.model = "NVIDIA L4".into();
        assert_eq!(spec(&p).tdp_w, 72);
        p.model = "Tesla T4".into();
        assert_eq!(spec(&p).brand, Brand::Tesla);
        p.model = "Something New".into();
        let s = spec(&p);
        assert!(s.idle_w < s.tdp_w && s.min_limit_w <= s.tdp_w);
    }
}
