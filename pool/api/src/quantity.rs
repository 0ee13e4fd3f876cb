//! Kubernetes quantities, parsed exactly: `"12.5"` TFLOPS is 12,500 milli-TFLOPS, `"16Gi"` is
//! 17,179,869,184 bytes. Suffixes: decimal `n u m k M G T P E`, binary `Ki Mi Gi Ti Pi Ei`,
//! and decimal exponents (`1e3`). Negative values are refused.

use thiserror::Error;

/// Why a quantity was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not a quantity ({1}); write e.g. \"10\", \"12.5\", \"16Gi\" or \"512Mi\"")]
pub struct QuantityError(pub String, pub &'static str);

/// `value × 10^scale` as an exact rational with an integer numerator.
fn parse(s: &str) -> Result<(u128, i32, u128), QuantityError> {
    let err = |why| QuantityError(s.to_string(), why);
    let t = s.trim();
    if t.is_empty() {
        return Err(err("empty"));
    }
    if t.starts_with('-') {
        return Err(err("negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err("no number"));
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.len() + frac.len() > 30 {
        return Err(err("too many digits"));
    }
    let digits: u128 = format!("{int}{frac}")
        .parse()
        .map_err(|_| err("no number"))?;
    let mut scale = -(frac.len() as i32);
    let mut binary: u128 = 1;
    match suffix {
        "" => {}
        "n" => scale -= 9,
        "u" => scale -= 6,
        "m" => scale -= 3,
        "k" => scale += 3,
        "M" => scale += 6,
        "G" => scale += 9,
        "T" => scale += 12,
        "P" => scale += 15,
        "E" => scale += 18,
        "Ki" => binary = 1 << 10,
        "Mi" => binary = 1 << 20,
        "Gi" => binary = 1 << 30,
        "Ti" => binary = 1 << 40,
        "Pi" => binary = 1 << 50,
        "Ei" => binary = 1 << 60,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&exp) {
                return Err(err("exponent out of range"));
            }
            scale += exp;
        }
        _ => return Err(err("unknown suffix")),
    }
    Ok((digits, scale, binary))
}

fn scaled(s: &str, extra: i32, round_up: bool) -> Result<u64, QuantityError> {
    let (digits, scale, binary) = parse(s)?;
    let big = || QuantityError(s.to_string(), "too large");
    let mut v = digits.checked_mul(binary).ok_or_else(big)?;
    let scale = scale + extra;
    if scale >= 0 {
        for _ in 0..scale {
            v = v.checked_mul(10).ok_or_else(big)?;
        }
    } else {
        let div = 10u128.checked_pow((-scale) as u32).unwrap_or(u128::MAX);
        let q = v / div;
        v = if round_up && v % div != 0 { q + 1 } else { q };
    }
    u64::try_from(v).map_err(|_| big())
}

/// A quantity in thousandths (`"12.5"` → 12 500); finer fractions round up.
pub fn parse_milli(s: &str) -> Result<u64, QuantityError> {
    scaled(s, 3, true)
}

/// A quantity of bytes (`"16Gi"`, `"512M"`); fractions of a byte round up.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    scaled(s, 0, true)
}

/// Milli-units as a quantity (`12500` → `"12.5"`).
pub fn format_milli(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        let s = format!("{}.{:03}", milli / 1000, milli % 1000);
        s.trim_end_matches('0').to_string()
    }
}

/// Bytes as a quantity, in the largest binary unit that divides them (`"80Gi"`).
pub fn format_bytes(bytes: u64) -> String {
    for (shift, unit) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_milli("12.5").unwrap(), 12_500);
        assert_eq!(parse_milli("100").unwrap(), 100_000);
        assert_eq!(parse_milli("500m").unwrap(), 500);
        assert_eq!(parse_milli("1e3").unwrap(), 1_000_000);
        assert_eq!(parse_bytes("16Gi").unwrap(), 16 << 30);
        assert_eq!(parse_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("512M").unwrap(), 512_000_000);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        for bad in [
            "",
            "-1",
            "abc",
            "1.2.3",
            "10Qi",
            "Gi",
            "1e99",
            "99999999999999999999Ei",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(format_milli(12_500), "12.5");
        assert_eq!(format_milli(3_000), "3");
        assert_eq!(format_bytes(80 << 30), "80Gi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(parse_bytes(&format_bytes(3 << 29)).unwrap(), 3 << 29);
    }
}
