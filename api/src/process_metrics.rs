//! The standard `process_*` series every Prometheus client library exports (Go's and
//! Python's process collectors): CPU seconds, resident and virtual memory, open and
//! allowed file descriptors, start time and threads — read from `/proc/self` at scrape
//! time, so dashboards and alerts written for any exporter see kith's own cost.
//!
//! ```text
//!  scrape ─▶ ProcessCollector::encode ─▶ read /proc/self/{stat,status,limits,fd}, /proc/stat
//!                                     └▶ parse_* (pure, tested by tables) ─▶ process_* families
//! ```
//! A value that can not be read (a missing file in a sandbox) leaves its family out
//! rather than failing the whole scrape.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What `/proc/self/stat` says, in its own units.
#[derive(Debug, PartialEq)]
pub struct ProcStat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Since boot, in clock ticks.
    pub start_ticks: u64,
    pub threads: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let after = &line[line.rfind(')')? + 1..];
    // Fields from 3 (state) on; index 0 here is field 3.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: num(14)? + num(15)?,
        threads: num(20)?,
        start_ticks: num(22)?,
        virtual_bytes: num(23)?,
        resident_pages: num(24)?,
    })
}

/// `btime` of `/proc/stat`: boot time, in seconds since the epoch.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from `/proc/self/limits` (`None` when unlimited).
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Adds the `process_*` families to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
struct ProcessCollector;

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counter: bool,
    value: f64,
) -> Result<(), fmt::Error> {
    let ty = if counter {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    encode_value(
        encoder.encode_descriptor(name, help, None, ty)?,
        counter,
        value,
    )
}

/// One sample read at scrape time, as a counter or a gauge.
pub fn encode_value(e: MetricEncoder<'_>, counter: bool, v: f64) -> Result<(), fmt::Error> {
    if counter {
        ConstCounter::new(v).encode(e)
    } else {
        ConstGauge::new(v).encode(e)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as f64;
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s));
        if let Some(s) = &stat {
            family(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                true,
                s.cpu_ticks as f64 / ticks,
            )?;
            family(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                false,
                s.resident_pages as f64 * page,
            )?;
            family(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                false,
                s.virtual_bytes as f64,
            )?;
            family(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process.",
                false,
                s.threads as f64,
            )?;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|p| parse_boot_time(&p));
            if let Some(boot) = boot {
                family(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    false,
                    boot as f64 + s.start_ticks as f64 / ticks,
                )?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            family(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                false,
                dir.count() as f64,
            )?;
        }
        let max = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| parse_max_fds(&l));
        if let Some(max) = max {
            family(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                false,
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        // Real /proc/<pid>/stat shapes: a plain name, and one with spaces and parentheses.
        let plain = "4242 (kith) S 1 4242 4242 0 -1 4194560 5817 0 3 0 150 37 0 0 20 0 9 0 \
                     123456 1048576000 15360 18446744073709551615 1 1 0 0 0 0 0 4096 17987 0 0 \
                     0 17 1 0 0 0 0 0";
        let odd = plain.replace("(kith)", "(a) b (c))");
        let want = ProcStat {
            cpu_ticks: 187,
            start_ticks: 123456,
            threads: 9,
            virtual_bytes: 1_048_576_000,
            resident_pages: 15360,
        };
        for (line, expect) in [
            (plain, Some(&want)),
            (odd.as_str(), Some(&want)),
            ("4242 (kith) S 1", None),
            ("no parenthesis at all", None),
            ("", None),
        ] {
            assert_eq!(parse_stat(line).as_ref(), expect, "{line:?}");
        }
    }

    #[test]
    fn boot_time_and_fd_limit() {
        let stat = "cpu  1 2 3 4\nintr 0\nbtime 1763700000\nprocesses 9\n";
        assert_eq!(parse_boot_time(stat), Some(1_763_700_000));
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             94000                94000                processes \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
    }

    #[test]
    fn this_process_is_exported() {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
            "process_threads ",
        ] {
            assert!(out.contains(name), "{name} missing from:\n{out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rss > 1_000_000.0,
            "a test binary has more than 1 MB resident: {rss}"
        );
    }
}
