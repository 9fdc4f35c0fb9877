//! What the bench binaries (`kith-bench`, `kith-agent-bench`) share: the `BENCH {json}` line
//! printer and small readings of `/proc` (a process's resident memory, the `kith up` pid).
//!
//! A figure line is `BENCH {"name", "value", "unit", ["baseline", "baseline_value", "ratio"],
//! extra fields…}`; `ratio` > 1 means kith does better than the baseline, whichever
//! direction ([`Better`]) is better for that figure.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};

/// Two decimals: enough for every figure, short lines.
pub fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Which direction is better, for the ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One `BENCH` line; build it with [`figure`], set the public fields, then [`Figure::print`].
pub struct Figure<'a> {
    pub name: &'a str,
    pub value: f64,
    pub unit: &'a str,
    /// The baseline's name and its value in the same unit.
    pub baseline: Option<(&'a str, f64)>,
    pub better: Better,
    /// Printed after the standard keys, in insertion order of the map.
    pub extra: Map<String, Value>,
}

impl Figure<'_> {
    /// The JSON object of the line.
    pub fn to_json(&self) -> Value {
        let mut line = Map::new();
        line.insert("name".into(), json!(self.name));
        line.insert("value".into(), json!(round(self.value)));
        line.insert("unit".into(), json!(self.unit));
        if let Some((name, base)) = self.baseline {
            line.insert("baseline".into(), json!(name));
            line.insert("baseline_value".into(), json!(round(base)));
            line.insert(
                "ratio".into(),
                json!(ratio(self.value, base, self.better).map(|r| (r * 1000.0).round() / 1000.0)),
            );
        }
        line.extend(self.extra.clone());
        Value::Object(line)
    }

    /// Prints `BENCH {json}` on stdout.
    pub fn print(self) {
        println!("BENCH {}", self.to_json());
    }
}

/// `value` against `base`, oriented so that > 1 means `value` is better; `None` when the
/// divisor is not positive.
pub fn ratio(value: f64, base: f64, better: Better) -> Option<f64> {
    match better {
        Better::Higher if base > 0.0 => Some(value / base),
        Better::Lower if value > 0.0 => Some(base / value),
        _ => None,
    }
}

/// A figure with no baseline where higher is better; set the fields to change that.
pub fn figure<'a>(name: &'a str, value: f64, unit: &'a str) -> Figure<'a> {
    Figure {
        name,
        value,
        unit,
        baseline: None,
        better: Better::Higher,
        extra: Map::new(),
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The `p`-quantile (0 < p ≤ 1) of `sorted` by nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}

/// The pid of the `kith up` serving `data_dir` (the harness keeps its child private).
pub fn kith_pid(data_dir: &Path) -> Result<u32> {
    let want = data_dir.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"up"[..]) && args.contains(&want) {
            return Ok(pid);
        }
    }
    bail!(
        "no `kith up --data-dir {}` process found",
        data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_oriented_so_above_one_means_kith_wins() {
        // (value, base, better, expected)
        let table = [
            (200.0, 100.0, Better::Higher, Some(2.0)),
            (50.0, 100.0, Better::Higher, Some(0.5)),
            (50.0, 100.0, Better::Lower, Some(2.0)),
            (200.0, 100.0, Better::Lower, Some(0.5)),
            (1.0, 0.0, Better::Higher, None),
            (0.0, 1.0, Better::Lower, None),
        ];
        for (value, base, better, want) in table {
            assert_eq!(ratio(value, base, better), want, "{value} vs {base}");
        }
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let sorted: Vec<f64> = (1..=50).map(f64::from).collect();
        // (p, expected)
        let table = [
            (0.5, 25.0),
            (0.99, 50.0),
            (1.0, 50.0),
            (0.01, 1.0),
            (0.0, 1.0),
        ];
        for (p, want) in table {
            assert_eq!(percentile(&sorted, p), want, "p{p}");
        }
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn line_keeps_key_order_and_rounds() {
        let mut f = figure("x_ms", 12.3456, "ms");
        f.better = Better::Lower;
        f.baseline = Some(("runc", 6.0));
        f.extra.insert("pods".into(), json!(50));
        assert_eq!(
            f.to_json().to_string(),
            r#"{"name":"x_ms","value":12.35,"unit":"ms","baseline":"runc","baseline_value":6.0,"ratio":0.486,"pods":50}"#
        );
    }
}
