//! Resource quantities (`100m`, `1.5`, `512Mi`, `1e3`) as integers the scheduler can add up:
//! CPU in millicores, everything else in whole units, both rounded up as Kubernetes does.

/// A quantity in thousandths of a unit, rounded up; `None` when it does not parse.
pub fn parse_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole
        .chars()
        .chain(frac.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // mantissa / 10^scale is the number as written.
    let digits = format!("{whole}{frac}");
    let mantissa: i128 = digits.trim_start_matches('0').parse().unwrap_or(0);
    let scale = frac.len() as u32;
    // value = mantissa * num / den (in units), then * 1000 for milli.
    let (mut num, mut den): (i128, i128) = (1000, 10i128.checked_pow(scale)?);
    match suffix {
        "" => {}
        "n" => den = den.checked_mul(1_000_000_000)?,
        "u" => den = den.checked_mul(1_000_000)?,
        "m" => den = den.checked_mul(1_000)?,
        "k" => num *= 1_000,
        "M" => num *= 1_000_000,
        "G" => num *= 1_000_000_000,
        "T" => num *= 1_000_000_000_000,
        "P" => num *= 1_000_000_000_000_000,
        "E" => num *= 1_000_000_000_000_000_000,
        "Ki" => num <<= 10,
        "Mi" => num <<= 20,
        "Gi" => num <<= 30,
        "Ti" => num <<= 40,
        "Pi" => num <<= 50,
        "Ei" => num <<= 60,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if e >= 0 {
                num = num.checked_mul(10i128.checked_pow(e as u32)?)?;
            } else {
                den = den.checked_mul(10i128.checked_pow(e.unsigned_abs())?)?;
            }
        }
        _ => return None,
    }
    let product = mantissa.checked_mul(num)?;
    // Round up: a request of 0.1m CPU still needs 1m.
    let milli = (product + den - 1) / den;
    Some(if negative { -milli } else { milli })
}

/// CPU in millicores.
pub fn cpu_milli(q: &str) -> i64 {
    parse_milli(q).map(clamp).unwrap_or(0)
}

/// Any other resource in whole units (bytes, pods, devices), rounded up.
pub fn units(q: &str) -> i64 {
    parse_milli(q)
        .map(|m| clamp((m + 999).div_euclid(1000)))
        .unwrap_or(0)
}

fn clamp(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        let cases: &[(&str, i64, i64)] = &[
            // text, cpu millicores, whole units
            ("1", 1000, 1),
            ("100m", 100, 1),
            ("0.5", 500, 1),
            ("1.5", 1500, 2),
            ("2500m", 2500, 3),
            ("1Ki", 1_024_000, 1024),
            ("512Mi", 536_870_912_000, 536_870_912),
            ("1Gi", 1_073_741_824_000, 1_073_741_824),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("1k", 1_000_000, 1000),
            ("1e3", 1_000_000, 1000),
            ("1E-3", 1, 1),
            ("0.1m", 1, 1),
            ("250u", 1, 1),
            ("0", 0, 0),
            ("bogus", 0, 0),
            ("1Zi", 0, 0),
        ];
        for (text, cpu, whole) in cases {
            assert_eq!(cpu_milli(text), *cpu, "cpu of {text}");
            assert_eq!(units(text), *whole, "units of {text}");
        }
    }
}
