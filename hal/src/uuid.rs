//! Device UUIDs: one parser, one spelling, one comparison.
//!
//! NVIDIA spells a GPU's UUID `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (NVML, `nvidia-smi`,
//! `CUDA_VISIBLE_DEVICES`) and a MIG instance's `MIG-…` with the same layout, while the driver API
//! hands out the 16 raw bytes (`cuDeviceGetUuid`). Two spellings name the same device when their
//! 128-bit values are equal: the `GPU-`/`MIG-` prefix and the letter case are presentation.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};

/// A device UUID: 16 bytes, and whether it is spelled as a MIG instance's.
#[derive(Clone, Copy, Eq)]
pub struct DeviceUuid {
    bytes: [u8; 16],
    mig: bool,
}

impl DeviceUuid {
    /// A GPU's UUID from the driver's 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> DeviceUuid {
        DeviceUuid { bytes, mig: false }
    }

    /// A MIG instance's UUID from the driver's 16 bytes.
    pub const fn mig_from_bytes(bytes: [u8; 16]) -> DeviceUuid {
        DeviceUuid { bytes, mig: true }
    }

    /// Parse `GPU-…`, `MIG-…`, or 32 hex digits (dashes anywhere, any case).
    pub fn parse(text: &str) -> Result<DeviceUuid> {
        let t = text.trim();
        let (mig, rest) = match (t.get(..4), t.get(4..)) {
            (Some(p), Some(rest)) if p.eq_ignore_ascii_case("GPU-") => (false, rest),
            (Some(p), Some(rest)) if p.eq_ignore_ascii_case("MIG-") => (true, rest),
            _ => (false, t),
        };
        let bad = || {
            Error::new(
                ErrorKind::InvalidValue,
                format!(
                    "{text:?} is not a device UUID (expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, 32 hex digits)"
                ),
            )
        };
        let mut bytes = [0u8; 16];
        let mut n = 0usize;
        for c in rest.chars() {
            if c == '-' {
                continue;
            }
            let d = c.to_digit(16).ok_or_else(bad)? as u8;
            if n >= 32 {
                return Err(bad());
            }
            bytes[n / 2] |= if n.is_multiple_of(2) { d << 4 } else { d };
            n += 1;
        }
        if n != 32 {
            return Err(bad());
        }
        Ok(DeviceUuid { bytes, mig })
    }

    /// The driver's 16 bytes.
    pub const fn bytes(&self) -> [u8; 16] {
        self.bytes
    }

    /// Whether it is spelled as a MIG instance's (`MIG-…`).
    pub const fn is_mig(&self) -> bool {
        self.mig
    }

    /// Whether `text` spells this UUID (any prefix or case); `false` for text that is no UUID.
    pub fn matches(&self, text: &str) -> bool {
        DeviceUuid::parse(text).is_ok_and(|other| other == *self)
    }

    /// Whether `prefix` begins this UUID's spelling (`CUDA_VISIBLE_DEVICES` names devices by
    /// unique prefixes such as `GPU-7f0c`); case-insensitive, and a `GPU-` prefix also selects a
    /// MIG instance's UUID of the same value, as the driver does.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        let p = prefix.trim().to_ascii_lowercase();
        let plain = self.to_string().to_ascii_lowercase();
        let digits = &plain[4..];
        let p_digits = p
            .strip_prefix("gpu-")
            .or_else(|| p.strip_prefix("mig-"))
            .unwrap_or(&p);
        !p.is_empty() && digits.starts_with(p_digits)
    }
}

/// Equal when the 128-bit values are: `GPU-` and `MIG-` spellings of one value name one device.
impl PartialEq for DeviceUuid {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl std::hash::Hash for DeviceUuid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Display for DeviceUuid {
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (or `MIG-…`), lower case, as NVML spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.mig { "MIG-" } else { "GPU-" })?;
        for (i, b) in self.bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for DeviceUuid {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceUuid> {
        DeviceUuid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: [u8; 16] = [
        0x00, 0x35, 0xd5, 0x80, 0x93, 0xc6, 0xdd, 0x7d, 0x14, 0xd6, 0xdf, 0x43, 0x09, 0x0a, 0xcb,
        0x4f,
    ];

    #[test]
    fn one_spelling_and_gpu_and_mig_spellings_of_one_value_match() {
        let u = DeviceUuid::from_bytes(BYTES);
        assert_eq!(u.to_string(), "GPU-0035d580-93c6-dd7d-14d6-df43090acb4f");
        assert!(u.matches("MIG-0035D580-93C6-DD7D-14D6-DF43090ACB4F"));
        assert!(u.matches("0035d58093c6dd7d14d6df43090acb4f"));
        assert!(!u.matches("GPU-0035d580-93c6-dd7d-14d6-df43090acb40"));
        assert!(!u.matches("not-a-uuid"));
        let m = DeviceUuid::parse("MIG-0035d580-93c6-dd7d-14d6-df43090acb4f").unwrap();
        assert!(m.is_mig());
        assert_eq!(m, u);
        assert_eq!(m.to_string(), "MIG-0035d580-93c6-dd7d-14d6-df43090acb4f");
        assert_eq!(DeviceUuid::mig_from_bytes(BYTES), m);
        assert_eq!(m.bytes(), BYTES);
    }

    #[test]
    fn malformed_uuids_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "not-a-uuid",
            "GPU-",
            "GPU-0035d580-93c6-dd7d-14d6-df43090acb4",
            "GPU-0035d580-93c6-dd7d-14d6-df43090acb4f0",
            "GPU-0035d580-93c6-dd7d-14d6-df43090acb4g",
            "XYZ-0035d580-93c6-dd7d-14d6-df43090acb4f",
        ] {
            let e = DeviceUuid::parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidValue, "{bad}");
            assert!(e.message.contains("GPU-xxxxxxxx"), "{e}");
        }
    }

    #[test]
    fn prefixes_select_like_cuda_visible_devices() {
        let u = DeviceUuid::from_bytes(BYTES);
        assert!(u.has_prefix("GPU-0035"));
        assert!(u.has_prefix("gpu-0035D5"));
        assert!(u.has_prefix("MIG-0035"));
        assert!(!u.has_prefix("GPU-0036"));
        assert!(!u.has_prefix(""));
    }
}
