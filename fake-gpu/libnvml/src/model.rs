//! What NVML reports about a model that the simulated GPU's profile does not say: board power,
//! clocks, PCI ids, PCIe link, memory bus, NVLink, brand. Figures follow NVIDIA's product briefs
//! and datasheets for the named parts, and what `nvidia-smi -q` shows on them; a model not in the
//! table gets generic figures derived from its compute capability.

use tf_cuda_abi::nvml::{NVML_BRAND_GEFORCE, NVML_BRAND_NVIDIA, NVML_BRAND_TESLA};
use tf_fake_gpu::DeviceProfile;

use tf_cuda_abi::nvml_types::*;

/// NVIDIA's PCI vendor id.
pub const NVIDIA_VENDOR_ID: u32 = 0x10de;

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
    pub brand: u32,
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
    brand: NVML_BRAND_NVIDIA,
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
            brand: NVML_BRAND_TESLA,
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
            brand: NVML_BRAND_TESLA,
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
            brand: NVML_BRAND_GEFORCE,
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

/// `NVML_DEVICE_ARCH_*` from the compute capability.
pub fn architecture(cc: (u32, u32)) -> u32 {
    match cc {
        (3, _) => NVML_DEVICE_ARCH_KEPLER,
        (5, _) => NVML_DEVICE_ARCH_MAXWELL,
        (6, _) => NVML_DEVICE_ARCH_PASCAL,
        (7, 0) | (7, 2) => NVML_DEVICE_ARCH_VOLTA,
        (7, _) => NVML_DEVICE_ARCH_TURING,
        (8, 9) => NVML_DEVICE_ARCH_ADA,
        (8, _) => NVML_DEVICE_ARCH_AMPERE,
        (9, _) => NVML_DEVICE_ARCH_HOPPER,
        (10, _) | (12, _) => NVML_DEVICE_ARCH_BLACKWELL,
        _ => NVML_DEVICE_ARCH_UNKNOWN,
    }
}

/// CUDA cores (FP32 lanes) per SM (CUDA C Programming Guide, arithmetic instructions table).
pub fn cores_per_sm(cc: (u32, u32)) -> u32 {
    match cc {
        (3, _) => 192,
        (5, _) => 128,
        (6, 0) => 64,
        (6, _) => 128,
        (7, _) => 64,
        (8, 0) => 64,
        (8, _) => 128,
        _ => 128,
    }
}

/// A PCI bus id `domain:bus:device.function` (domain optional, hex, any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub function: u32,
}

impl PciAddress {
    /// Parse `00000000:18:00.0`, `0000:18:00.0` or `18:00.0`.
    pub fn parse(s: &str) -> Option<PciAddress> {
        let s = s.trim();
        let (rest, function) = s.rsplit_once('.')?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, dev] => (*d, *b, *dev),
            [b, dev] => ("0", *b, *dev),
            _ => return None,
        };
        let hex = |x: &str, max: u64| {
            u64::from_str_radix(x, 16)
                .ok()
                .filter(|&v| v <= max && !x.is_empty())
                .map(|v| v as u32)
        };
        Some(PciAddress {
            domain: hex(domain, u32::MAX as u64)?,
            bus: hex(bus, 0xff)?,
            device: hex(device, 0x1f)?,
            function: hex(function, 7)?,
        })
    }

    /// `00000000:18:00.0` (the form of `nvmlPciInfo_t::busId`).
    pub fn bus_id(&self) -> String {
        format!(
            "{:08X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }

    /// `0000:18:00.0` (the form of `busIdLegacy`).
    pub fn bus_id_legacy(&self) -> String {
        format!(
            "{:04X}:{:02X}:{:02X}.{:X}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_parse_in_every_form() {
        let want = PciAddress {
            domain: 0,
            bus: 0x18,
            device: 0,
            function: 0,
        };
        for s in [
            "00000000:18:00.0",
            "0000:18:00.0",
            "18:00.0",
            "0000:18:00.0 ",
        ] {
            assert_eq!(PciAddress::parse(s), Some(want), "{s}");
        }
        assert_eq!(want.bus_id(), "00000000:18:00.0");
        assert_eq!(want.bus_id_legacy(), "0000:18:00.0");
        for bad in [
            "",
            "18",
            "zz:00.0",
            "0000:100:00.0",
            "0000:18:00.9",
            "a:b:c:d.0",
        ] {
            assert_eq!(PciAddress::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn models_are_told_apart() {
        let mut p = DeviceProfile::h100_sxm(0);
        assert_eq!(spec(&p).tdp_w, 700);
        assert_eq!(architecture(p.compute_capability), NVML_DEVICE_ARCH_HOPPER);
        assert_eq!(cores_per_sm(p.compute_capability) * p.sms, 16896);
        p.model = "NVIDIA A100-SXM4-80GB".into();
        assert_eq!(spec(&p).pci_device_id, 0x20b2);
        p.model = "NVIDIA A10".into();
        assert_eq!(spec(&p).tdp_w, 150);
        p.model = "NVIDIA L40S".into();
        assert_eq!(spec(&p).tdp_w, 350);
        p.model = "NVIDIA L4".into();
        assert_eq!(spec(&p).tdp_w, 72);
        p.model = "Something New".into();
        let s = spec(&p);
        assert!(s.idle_w < s.tdp_w && s.min_limit_w <= s.tdp_w);
    }
}
