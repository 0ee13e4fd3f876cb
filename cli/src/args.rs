//! Value parsers shared by the subcommands: each refuses a bad value with a message that names
//! the range or the units (and clap reaches them even for `-1`, which the arguments that use
//! them accept as a value rather than as a flag).

/// A device index: 0 or more.
pub fn device_index(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(v) if v < 0 => Err(format!(
            "{v} is not a device index: indexes start at 0 (see `tensor-fusion devices`)"
        )),
        Ok(v) => u32::try_from(v).map_err(|_| format!("{v} is not a device index")),
        Err(_) => Err(format!(
            "{s:?} is not a device index: expected 0, 1, ... (see `tensor-fusion devices`)"
        )),
    }
}

/// A memory quota with a unit, at least 1 MiB.
pub fn quota(s: &str) -> Result<u64, String> {
    tf_hal::units::parse_quota(s).map_err(|e| e.message)
}

/// A percentage in (0, 100].
pub fn percent(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        Ok(p) => Err(format!("{p} is out of range: a percentage is in (0, 100]")),
        Err(_) => Err(format!(
            "{s:?} is not a number: expected a percentage in (0, 100]"
        )),
    }
}

/// A positive number.
pub fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is out of range: expected a number above 0")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_the_range() {
        assert_eq!(device_index("1"), Ok(1));
        assert!(device_index("-1").unwrap_err().contains("start at 0"));
        assert!(
            device_index("x")
                .unwrap_err()
                .contains("not a device index")
        );
        assert_eq!(percent("30"), Ok(30.0));
        for bad in ["-1", "0", "100.5", "nan"] {
            assert!(percent(bad).unwrap_err().contains("(0, 100]"), "{bad}");
        }
        assert!(quota("4").unwrap_err().contains("no unit"));
        assert!(quota("-1").unwrap_err().contains("negative"));
        assert_eq!(quota("1GiB"), Ok(1 << 30));
        assert!(positive("-2").unwrap_err().contains("above 0"));
    }
}
