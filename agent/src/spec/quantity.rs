//! Kubernetes resource quantities ("500m", "1.5", "64Mi", "1e3") as the integers the
//! kernel wants: milli-CPU and bytes. Only what the spec builder needs; the API server
//! has already validated the syntax, so anything odd here is reported, not guessed.

use super::SpecError;

/// A quantity as a fraction `num / 10^scale` so "0.1" and "100m" compare exactly.
fn parse(q: &str) -> Option<(u128, u32, u128)> {
    // Returns (mantissa, decimal places, multiplier).
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.is_empty() {
        return None;
    }
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac.len() > 18 || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mantissa: u128 = format!("{int}{frac}").parse().ok()?;
    let places = frac.len() as u32;
    let (mult, extra_places): (u128, u32) = match suffix {
        "" => (1, 0),
        "n" => (1, 9),
        "u" => (1, 6),
        "m" => (1, 3),
        "k" => (1_000, 0),
        "M" => (1_000_000, 0),
        "G" => (1_000_000_000, 0),
        "T" => (1_000_000_000_000, 0),
        "P" => (1_000_000_000_000_000, 0),
        "E" => (1_000_000_000_000_000_000, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().ok()?;
            (10u128.checked_pow(exp)?, 0)
        }
        _ => return None,
    };
    Some((mantissa, places + extra_places, mult))
}

/// `q` multiplied by `unit` (1000 for milli-units, 1 for whole units), rounded up as the
/// kubelet does (a request of 0.5m CPU is 1m).
fn scaled_ceil(q: &str, unit: u128) -> Option<i64> {
    let (mantissa, places, mult) = parse(q)?;
    let num = mantissa.checked_mul(mult)?.checked_mul(unit)?;
    let den = 10u128.checked_pow(places)?;
    i64::try_from(num.div_ceil(den)).ok()
}

/// CPU quantity in millicores, rounded up.
pub fn milli_cpu(q: &str) -> Result<i64, SpecError> {
    scaled_ceil(q, 1000).ok_or_else(|| SpecError::Quantity(q.to_string()))
}

/// Memory (or any whole-unit) quantity in bytes, rounded up.
pub fn bytes(q: &str) -> Result<i64, SpecError> {
    scaled_ceil(q, 1).ok_or_else(|| SpecError::Quantity(q.to_string()))
}

/// `ceil(value / divisor)` for downward-API resourceFieldRef, both as quantities scaled
/// by `unit` (1000 for CPU so "250m" / "1m" works).
pub fn divide_ceil(value: i64, divisor: &str, unit: u128) -> Result<i64, SpecError> {
    let d = scaled_ceil(divisor, unit).ok_or_else(|| SpecError::Quantity(divisor.to_string()))?;
    if d <= 0 {
        return Err(SpecError::Quantity(divisor.to_string()));
    }
    Ok((value + d - 1)
        .div_euclid(d)
        .max(if value > 0 { 1 } else { 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cpu = [
            ("1", 1000),
            ("500m", 500),
            ("0.5", 500),
            ("1.25", 1250),
            ("100u", 1),
            ("2k", 2_000_000),
            ("1e3", 1_000_000),
        ];
        for (q, want) in cpu {
            assert_eq!(milli_cpu(q).unwrap(), want, "cpu {q}");
        }
        let mem = [
            ("64Mi", 64 << 20),
            ("1G", 1_000_000_000),
            ("1.5Gi", 3 << 29),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("123Ki", 125_952),
        ];
        for (q, want) in mem {
            assert_eq!(bytes(q).unwrap(), want, "mem {q}");
        }
        for bad in ["", "abc", "1x", "--1", "1.2.3"] {
            assert!(bytes(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn divisors() {
        assert_eq!(divide_ceil(1250, "1", 1000).unwrap(), 2);
        assert_eq!(divide_ceil(250, "1m", 1000).unwrap(), 250);
        assert_eq!(divide_ceil(64 << 20, "1Mi", 1).unwrap(), 64);
        assert_eq!(divide_ceil(1, "1Mi", 1).unwrap(), 1);
        assert!(divide_ceil(1, "0", 1).is_err());
    }
}
