//! Human-friendly byte sizes: `80GiB`, `512MiB`, `1.5GB`, `4096`.

use crate::error::{Error, ErrorKind, Result};

/// Parse a byte size. Binary suffixes (KiB, MiB, GiB, TiB, also K/M/G/T) are powers of 1024;
/// decimal suffixes (KB, MB, GB, TB) are powers of 1000; a bare number is bytes.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num = num.replace('_', "");
    let bad = || {
        Error::new(
            ErrorKind::InvalidValue,
            format!(
                "invalid size {text:?}: expected a number with an optional unit such as 512MiB, 80GiB or 1GB"
            ),
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

/// The smallest memory quota tensor-fusion accepts.
pub const MIN_QUOTA: u64 = 1 << 20;

/// Parse a memory quota given by a person (`--vram`, a vGPU's size): like [`parse_bytes`], but
/// the unit is required and the size must be at least 1 MiB, so that `--vram 4` (4 bytes, never
/// what anyone meant) is refused with a message naming the units.
pub fn parse_quota(text: &str) -> Result<u64> {
    let t = text.trim();
    let units = "units: KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)";
    if t.starts_with('-') {
        return Err(Error::new(
            ErrorKind::InvalidValue,
            format!("{text:?} is negative: a size is at least 1MiB, e.g. 512MiB or 4GiB ({units})"),
        ));
    }
    if t.chars()
        .last()
        .is_some_and(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(Error::new(
            ErrorKind::InvalidValue,
            format!("{text:?} has no unit: write e.g. {t}GiB or {t}MiB ({units})"),
        ));
    }
    let v = parse_bytes(t).map_err(|e| Error::new(e.kind, format!("{} ({units})", e.message)))?;
    if v < MIN_QUOTA {
        return Err(Error::new(
            ErrorKind::InvalidValue,
            format!("{text:?} is less than 1MiB, the smallest quota ({units})"),
        ));
    }
    Ok(v)
}

/// Format bytes with the largest binary unit that keeps the number readable.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else if (v - v.round()).abs() < 0.005 {
        format!("{} {}", v.round() as u64, UNITS[i])
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_need_a_unit_and_at_least_one_mib() {
        assert_eq!(parse_quota("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_quota("1MiB").unwrap(), 1 << 20);
        for (bad, says) in [
            ("4", "no unit"),
            ("4096", "no unit"),
            ("1.5", "no unit"),
            ("-1", "negative"),
            ("-1GiB", "negative"),
            ("512KiB", "less than 1MiB"),
            ("4B", "less than 1MiB"),
            ("lots", "invalid size"),
        ] {
            let e = parse_quota(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {e}");
            assert!(e.message.contains("MiB, GiB"), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("81559MiB").unwrap(), 81559 << 20);
        for bad in ["", "GiB", "1XB", "-1", "1.2.3G", "99999999999999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_bytes(1 << 30), "1 GiB");
        assert_eq!(format_bytes(1536 << 20), "1.50 GiB");
        assert_eq!(format_bytes(12), "12 B");
    }
}
