//! Reads the box: memory, CPUs, the data filesystem, load, processes and identity, from
//! /proc, statvfs and /etc. The parsing is split out into pure functions.

use std::fs;
use std::path::Path;

use super::{Error, NodeReadings, Result};

fn read(path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_string(),
        source,
    })
}

/// Identity files some systems (containers, minimal images) lack: empty then.
fn read_optional(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn parse_err(path: &str, why: impl Into<String>) -> Error {
    Error::Parse {
        path: path.to_string(),
        why: why.into(),
    }
}

/// `MemTotal` and `MemAvailable` of /proc/meminfo, in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// `PRETTY_NAME` of os-release, unquoted; `Linux` when absent, as the kubelet does.
pub fn parse_os_release(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "Linux".to_string())
}

/// The one-minute load average of /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn count_pids() -> Result<u64> {
    let entries = fs::read_dir("/proc").map_err(|source| Error::Read {
        path: "/proc".into(),
        source,
    })?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64)
}

/// Measures the box; `data_dir` is where the agent keeps images and pods, whose
/// filesystem is the node's ephemeral storage.
pub fn read_node(data_dir: &Path) -> Result<NodeReadings> {
    let (memory_total_bytes, memory_available_bytes) = parse_meminfo(&read("/proc/meminfo")?)
        .ok_or_else(|| parse_err("/proc/meminfo", "no MemTotal or MemAvailable"))?;
    let fs = nix::sys::statvfs::statvfs(data_dir).map_err(|e| Error::Read {
        path: data_dir.display().to_string(),
        source: e.into(),
    })?;
    let block = fs.fragment_size() as u64;
    let load_1m = parse_loadavg(&read("/proc/loadavg")?)
        .ok_or_else(|| parse_err("/proc/loadavg", "no load average"))?;
    let pid_max_path = "/proc/sys/kernel/pid_max";
    let pids_max: u64 = read(pid_max_path)?
        .trim()
        .parse()
        .map_err(|_| parse_err(pid_max_path, "not a number"))?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    Ok(NodeReadings {
        hostname: read("/proc/sys/kernel/hostname")?.trim().to_string(),
        cpus,
        memory_total_bytes,
        memory_available_bytes,
        disk_total_bytes: fs.blocks() as u64 * block,
        disk_available_bytes: fs.blocks_available() as u64 * block,
        pids_max,
        pids_used: count_pids()?,
        load_1m,
        kernel_version: read("/proc/sys/kernel/osrelease")?.trim().to_string(),
        os_image: parse_os_release(&read_optional("/etc/os-release")),
        arch: std::env::consts::ARCH.to_string(),
        machine_id: read_optional("/etc/machine-id"),
        boot_id: read_optional("/proc/sys/kernel/random/boot_id"),
        not_ready: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_table() {
        let cases = [
            (
                "MemTotal:       16318092 kB\nMemFree:  100 kB\nMemAvailable:   8000000 kB\n",
                Some((16318092 * 1024, 8000000 * 1024)),
            ),
            ("MemTotal: 10 kB\n", None),
            ("", None),
            ("MemTotal: x kB\nMemAvailable: 1 kB\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_meminfo(text), want, "{text:?}");
        }
    }

    #[test]
    fn os_release_table() {
        let cases = [
            (
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
                "Debian GNU/Linux 12 (bookworm)",
            ),
            ("PRETTY_NAME=Alpine\n", "Alpine"),
            ("PRETTY_NAME='OpenWrt 23.05'\n", "OpenWrt 23.05"),
            ("NAME=x\n", "Linux"),
            ("", "Linux"),
        ];
        for (text, want) in cases {
            assert_eq!(parse_os_release(text), want, "{text:?}");
        }
    }

    #[test]
    fn loadavg_table() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn reads_this_box() {
        let dir = tempfile::tempdir().unwrap();
        let r = read_node(dir.path()).unwrap();
        assert!(r.cpus >= 1);
        assert!(r.memory_total_bytes >= r.memory_available_bytes && r.memory_total_bytes > 0);
        assert!(r.disk_total_bytes >= r.disk_available_bytes && r.disk_total_bytes > 0);
        assert!(r.pids_used >= 1 && r.pids_max >= r.pids_used);
        assert!(!r.kernel_version.is_empty() && !r.hostname.is_empty());
        assert_eq!(r.arch, std::env::consts::ARCH);
    }
}
