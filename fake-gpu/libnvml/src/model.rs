//! NVML's view of a simulated device that is NVML's own: the architecture and core counts by
//! compute capability, PCI bus ids, NVIDIA's vendor id. The per-model figures (power, clocks,
//! PCI ids, temperatures) are the engine's (`tf_fake_gpu::model`).

use tf_cuda_abi::nvml_types::*;

/// NVIDIA's PCI vendor id.
pub const NVIDIA_VENDOR_ID: u32 = 0x10de;

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
    fn architectures_and_cores_follow_the_compute_capability() {
        let p = tf_fake_gpu::DeviceProfile::h100_sxm(0);
        assert_eq!(architecture(p.compute_capability), NVML_DEVICE_ARCH_HOPPER);
        assert_eq!(cores_per_sm(p.compute_capability) * p.sms, 16896);
    }
}
