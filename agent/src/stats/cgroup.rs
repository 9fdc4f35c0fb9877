//! A container's resource counters from its cgroup: cumulative CPU time, the memory
//! working set (what the kubelet and metrics-server report: usage minus inactive file
//! cache, which the kernel can drop at will) and the number of tasks.
//!
//! ```text
//!  cgroup v1 (hybrid hosts)              cgroup v2 (unified hosts)
//!  cpuacct/<P>/cpuacct.usage      ns     <P>/cpu.stat usage_usec       µs
//!  memory/<P>/memory.usage_in_bytes      <P>/memory.current
//!  memory/<P>/memory.stat total_inactive_file   <P>/memory.stat inactive_file
//!  pids/<P>/pids.current                 <P>/pids.current
//! ```
//! The v1 hierarchy is tried first: on a hybrid host libcontainer puts the controllers
//! there, and the v2 mount at `unified/` holds no controllers.

use std::path::Path;

/// One reading of one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupReading {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_usage_ns: u64,
    pub memory_working_set_bytes: u64,
    /// Tasks in the cgroup, when the pids controller is there.
    pub pids: Option<u64>,
}

/// `cpuacct.usage`: one number of nanoseconds.
pub fn parse_v1_cpuacct_usage(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `usage_usec` of a v2 `cpu.stat`, in nanoseconds.
pub fn parse_v2_cpu_stat(text: &str) -> Option<u64> {
    flat_key(text, "usage_usec").map(|us| us.saturating_mul(1000))
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
pub fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Working set = usage − inactive file pages, never below zero (the kubelet's formula).
/// `inactive_key` is `total_inactive_file` on v1 (it includes children) and
/// `inactive_file` on v2.
pub fn working_set(usage_text: &str, memory_stat: &str, inactive_key: &str) -> Option<u64> {
    let usage: u64 = usage_text.trim().parse().ok()?;
    let inactive = flat_key(memory_stat, inactive_key).unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// `pids.current`.
pub fn parse_pids_current(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads the cgroup at absolute path `cgroup` (e.g. `/kith/<uid>/app-0`) under the cgroup
/// mount `root` (`/sys/fs/cgroup` on a real host; a directory laid out the same way in
/// tests). `None` when neither a v1 nor a v2 cgroup of that path can be read, e.g. the
/// container is gone.
pub fn read_cgroup(root: &Path, cgroup: &Path) -> Option<CgroupReading> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    read_v1(root, rel).or_else(|| read_v2(root, rel))
}

fn read_v1(root: &Path, rel: &Path) -> Option<CgroupReading> {
    let cpu = read(&root.join("cpuacct").join(rel).join("cpuacct.usage"))
        .as_deref()
        .and_then(parse_v1_cpuacct_usage)?;
    let mem = root.join("memory").join(rel);
    let ws = working_set(
        &read(&mem.join("memory.usage_in_bytes"))?,
        &read(&mem.join("memory.stat")).unwrap_or_default(),
        "total_inactive_file",
    )?;
    let pids = read(&root.join("pids").join(rel).join("pids.current"))
        .as_deref()
        .and_then(parse_pids_current);
    Some(CgroupReading {
        cpu_usage_ns: cpu,
        memory_working_set_bytes: ws,
        pids,
    })
}

fn read_v2(root: &Path, rel: &Path) -> Option<CgroupReading> {
    let dir = root.join(rel);
    let cpu = read(&dir.join("cpu.stat"))
        .as_deref()
        .and_then(parse_v2_cpu_stat)?;
    let ws = working_set(
        &read(&dir.join("memory.current"))?,
        &read(&dir.join("memory.stat")).unwrap_or_default(),
        "inactive_file",
    )?;
    let pids = read(&dir.join("pids.current"))
        .as_deref()
        .and_then(parse_pids_current);
    Some(CgroupReading {
        cpu_usage_ns: cpu,
        memory_working_set_bytes: ws,
        pids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_table() {
        let cases = [
            (parse_v1_cpuacct_usage("123456789\n"), Some(123456789)),
            (parse_v1_cpuacct_usage(""), None),
            (parse_v1_cpuacct_usage("x"), None),
            (
                parse_v2_cpu_stat("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"),
                Some(1_500_000),
            ),
            (parse_v2_cpu_stat("user_usec 1000\n"), None),
            (parse_v2_cpu_stat(""), None),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn working_set_table() {
        let v1_stat = "cache 4096\ninactive_file 100\ntotal_inactive_file 8192\nrss 1\n";
        let v2_stat = "anon 1000\nfile 9000\ninactive_file 4000\nactive_file 5000\n";
        let cases = [
            // v1 uses the hierarchical total, not the cgroup's own inactive_file
            (
                "20480\n",
                v1_stat,
                "total_inactive_file",
                Some(20480 - 8192),
            ),
            ("10000\n", v2_stat, "inactive_file", Some(6000)),
            // more inactive than usage (racy reads) never wraps around
            ("100\n", v2_stat, "inactive_file", Some(0)),
            // no memory.stat: the whole usage counts
            ("5000\n", "", "inactive_file", Some(5000)),
            ("", v2_stat, "inactive_file", None),
            ("max\n", v2_stat, "inactive_file", None),
        ];
        for (usage, stat, key, want) in cases {
            assert_eq!(working_set(usage, stat, key), want, "{usage:?} {key}");
        }
    }

    #[test]
    fn flat_key_table() {
        let text = "inactive_file 5\ntotal_inactive_file 7\nfoo bar\n";
        assert_eq!(flat_key(text, "inactive_file"), Some(5));
        assert_eq!(flat_key(text, "total_inactive_file"), Some(7));
        assert_eq!(flat_key(text, "foo"), None);
        assert_eq!(flat_key(text, "inactive"), None);
        assert_eq!(parse_pids_current("3\n"), Some(3));
        assert_eq!(parse_pids_current("max\n"), None);
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_v1_then_v2_layouts() {
        let cg = Path::new("/kith/u1/app-0");
        let v1 = tempfile::tempdir().unwrap();
        let r = v1.path();
        write(
            &r.join("cpuacct/kith/u1/app-0/cpuacct.usage"),
            "2000000000\n",
        );
        write(
            &r.join("memory/kith/u1/app-0/memory.usage_in_bytes"),
            "1000\n",
        );
        write(
            &r.join("memory/kith/u1/app-0/memory.stat"),
            "total_inactive_file 400\n",
        );
        write(&r.join("pids/kith/u1/app-0/pids.current"), "2\n");
        assert_eq!(
            read_cgroup(r, cg),
            Some(CgroupReading {
                cpu_usage_ns: 2_000_000_000,
                memory_working_set_bytes: 600,
                pids: Some(2),
            })
        );

        let v2 = tempfile::tempdir().unwrap();
        let r = v2.path();
        write(&r.join("kith/u1/app-0/cpu.stat"), "usage_usec 7\n");
        write(&r.join("kith/u1/app-0/memory.current"), "300\n");
        assert_eq!(
            read_cgroup(r, cg),
            Some(CgroupReading {
                cpu_usage_ns: 7000,
                memory_working_set_bytes: 300,
                pids: None,
            })
        );
        assert_eq!(read_cgroup(r, Path::new("/kith/gone")), None);
    }
}
