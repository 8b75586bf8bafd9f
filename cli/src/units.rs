//! Sizes and rates as people type and read them.

/// Parse `123`, `10K`, `10KB`, `10KiB`, `1.5M`, `2G`... (K/M/G/T are powers of 1024; a
/// trailing `B`/`iB` is accepted; case does not matter).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let stripped = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match stripped.chars().last() {
        Some('k') => (&stripped[..stripped.len() - 1], 1u64 << 10),
        Some('m') => (&stripped[..stripped.len() - 1], 1 << 20),
        Some('g') => (&stripped[..stripped.len() - 1], 1 << 30),
        Some('t') => (&stripped[..stripped.len() - 1], 1 << 40),
        _ => (stripped, 1),
    };
    let num = num.trim();
    let not_a_size = || format!("{s:?} is not a size (examples: 4096, 64K, 1.5M, 2GiB)");
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| too_large(s));
    }
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Digits only (no exponent, sign, "inf" or "nan"), or a whole number too large for
        // u64 that the parse above refused.
        return Err(not_a_size());
    }
    let f: f64 = num.parse().map_err(|_| not_a_size())?;
    if num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(too_large(s));
    }
    let bytes = f * mult as f64;
    // u64::MAX as f64 is 2^64, the first value that does not fit.
    if bytes >= u64::MAX as f64 {
        return Err(too_large(s));
    }
    if mult == 1 && bytes.fract() != 0.0 {
        return Err(format!(
            "{s:?} is a fraction of a byte: give a whole number of bytes, or a unit (e.g. 0.5K)"
        ));
    }
    let rounded = bytes.round();
    if rounded == 0.0 && bytes > 0.0 {
        return Err(format!("{s:?} is less than one byte"));
    }
    Ok(rounded as u64)
}

fn too_large(s: &str) -> String {
    format!("{s:?} is too large (at most 16777215T, 2^64 - 1 bytes)")
}

/// `1.5 MiB` style.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `12.3 MiB/s` style.
pub fn human_rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec.max(0.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1.5m").unwrap(), 1572864);
        assert_eq!(parse_size("2GB").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn sizes_that_overflow_or_split_a_byte_are_refused_not_clamped_or_rounded() {
        for too_large in ["1e300", "18446744073709551616", "16777216.5T", "16777216T"] {
            let error = parse_size(too_large).unwrap_err();
            assert!(
                error.contains("too large") || error.contains("not a size"),
                "{too_large}: {error}"
            );
        }
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("16777216.5T").unwrap_err().contains("too large"));
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
        assert!(parse_size("0.4")
            .unwrap_err()
            .contains("fraction of a byte"));
        assert!(parse_size("10.5")
            .unwrap_err()
            .contains("fraction of a byte"));
        assert!(parse_size("0.0000001K")
            .unwrap_err()
            .contains("less than one byte"));
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("0.0").unwrap(), 0);
        assert_eq!(parse_size("3.0").unwrap(), 3);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        for junk in ["inf", "NaN", "1e3", "", "K", "1.2.3"] {
            assert!(parse_size(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
