//! The box and the pods' network from /proc and statvfs: per-interface byte counters of
//! a network namespace (`/proc/<pid>/net/dev` of any process inside it), CPU time per
//! mode (`/proc/stat`), memory, load and the data filesystem.

use std::path::Path;

use crate::node::readings::parse_meminfo;

/// Bytes through one interface since it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceBytes {
    pub interface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `/proc/<pid>/net/dev`: two header lines, then `name: rx_bytes packets errs drop fifo
/// frame compressed multicast tx_bytes ...`. Loopback is left out: traffic a pod sends
/// itself is not network use.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceBytes> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.is_empty() || name.contains('|') {
                return None;
            }
            let fields: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            Some(InterfaceBytes {
                interface: name.to_string(),
                rx_bytes: *fields.first()?,
                tx_bytes: *fields.get(8)?,
            })
        })
        .collect()
}

/// CPU time of one CPU (`cpu0`, ...) by mode, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTimes {
    /// `"0"`, `"1"`, ... as node-exporter labels them.
    pub cpu: String,
    /// (mode, seconds) in node-exporter's mode names.
    pub modes: Vec<(&'static str, f64)>,
}

impl CpuTimes {
    /// Seconds not idle and not waiting for I/O.
    pub fn busy_seconds(&self) -> f64 {
        self.modes
            .iter()
            .filter(|(m, _)| !matches!(*m, "idle" | "iowait"))
            .map(|(_, s)| s)
            .sum()
    }
}

/// The field order of a `cpuN` line in /proc/stat (guest time is already inside user).
const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// The per-CPU lines of /proc/stat; `ticks_per_second` is USER_HZ (100 on Linux).
pub fn parse_proc_stat(text: &str, ticks_per_second: f64) -> Vec<CpuTimes> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let cpu = it.next()?.strip_prefix("cpu")?;
            if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let values: Vec<u64> = it.map(|f| f.parse().ok()).collect::<Option<_>>()?;
            let modes = MODES
                .iter()
                .zip(values.iter().chain(std::iter::repeat(&0)))
                .map(|(m, v)| (*m, *v as f64 / ticks_per_second))
                .collect();
            Some(CpuTimes {
                cpu: cpu.to_string(),
                modes,
            })
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages of /proc/loadavg.
pub fn parse_loadavg3(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// One reading of the box.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeReading {
    pub cpus: Vec<CpuTimes>,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub load: [f64; 3],
    /// The filesystem of the agent's data directory (images, container layers, logs).
    pub filesystem: Option<Filesystem>,
}

impl NodeReading {
    pub fn busy_seconds(&self) -> f64 {
        self.cpus.iter().map(CpuTimes::busy_seconds).sum()
    }

    /// What metrics-server reports as a node's memory: in use, not reclaimable.
    pub fn memory_working_set_bytes(&self) -> u64 {
        self.memory_total_bytes
            .saturating_sub(self.memory_available_bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    pub mountpoint: String,
    pub size_bytes: u64,
    pub avail_bytes: u64,
    pub free_bytes: u64,
}

/// USER_HZ: fixed at 100 on every Linux architecture the kernel exports to user space.
const USER_HZ: f64 = 100.0;

/// Reads the box; parts that cannot be read are left at their defaults, so one
/// unreadable file never hides the rest.
pub fn read_node(data_dir: &Path) -> NodeReading {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (memory_total_bytes, memory_available_bytes) =
        parse_meminfo(&read("/proc/meminfo")).unwrap_or((0, 0));
    let filesystem = nix::sys::statvfs::statvfs(data_dir).ok().map(|fs| {
        let block = fs.fragment_size();
        Filesystem {
            mountpoint: data_dir.display().to_string(),
            size_bytes: fs.blocks() * block,
            avail_bytes: fs.blocks_available() * block,
            free_bytes: fs.blocks_free() * block,
        }
    });
    NodeReading {
        cpus: parse_proc_stat(&read("/proc/stat"), USER_HZ),
        memory_total_bytes,
        memory_available_bytes,
        load: parse_loadavg3(&read("/proc/loadavg")).unwrap_or_default(),
        filesystem,
    }
}

/// The network counters of the namespace process `pid` lives in.
pub fn read_net_dev(pid: i32) -> Option<Vec<InterfaceBytes>> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .ok()
        .map(|t| parse_net_dev(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0: 9876543    2000    0    0    0     0          0         0   543210    1500    0    0    0     0       0          0
";

    /// (interface, rx, tx)
    type Counters<'a> = Vec<(&'a str, u64, u64)>;

    #[test]
    fn net_dev_table() {
        let cases: Vec<(&str, Counters)> = vec![
            (NET_DEV, vec![("eth0", 9876543, 543210)]),
            ("", vec![]),
            // only loopback: a pod without network (hostNetwork is not read this way)
            ("h\nh\n lo: 1 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n", vec![]),
            // a truncated line is skipped, not misread
            (
                "h\nh\n eth0: 1 2 3\n veth1: 5 0 0 0 0 0 0 0 6 0 0 0 0 0 0 0\n",
                vec![("veth1", 5, 6)],
            ),
        ];
        for (text, want) in cases {
            let got: Vec<(String, u64, u64)> = parse_net_dev(text)
                .into_iter()
                .map(|i| (i.interface, i.rx_bytes, i.tx_bytes))
                .collect();
            let want: Vec<(String, u64, u64)> = want
                .into_iter()
                .map(|(n, r, t)| (n.to_string(), r, t))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn proc_stat_table() {
        let text = "cpu  300 0 100 1000 50 0 0 0 0 0\n\
                    cpu0 200 0 50 500 25 0 10 0 0 0\n\
                    cpu1 100 0 50 500 25 0 0\n\
                    intr 12345\nctxt 99\n";
        let cpus = parse_proc_stat(text, 100.0);
        assert_eq!(cpus.len(), 2, "the aggregate line is not a cpu");
        assert_eq!(cpus[0].cpu, "0");
        assert_eq!(cpus[0].modes[0], ("user", 2.0));
        assert_eq!(cpus[0].modes[6], ("softirq", 0.1));
        // user + system + softirq; idle and iowait do not count as busy
        assert!((cpus[0].busy_seconds() - 2.6).abs() < 1e-9);
        // an older kernel's shorter line: missing modes are zero
        assert_eq!(cpus[1].modes[7], ("steal", 0.0));
        assert!((cpus[1].busy_seconds() - 1.5).abs() < 1e-9);
        assert!(parse_proc_stat("", 100.0).is_empty());
        assert!(parse_proc_stat("cpu0 a b c\n", 100.0).is_empty());
    }

    #[test]
    fn loadavg_table() {
        assert_eq!(
            parse_loadavg3("0.52 0.58 0.59 1/467 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg3("0.5 0.6\n"), None);
        assert_eq!(parse_loadavg3(""), None);
    }

    #[test]
    fn reads_this_box() {
        let dir = tempfile::tempdir().unwrap();
        let n = read_node(dir.path());
        assert!(!n.cpus.is_empty());
        assert!(n.busy_seconds() > 0.0);
        assert!(n.memory_total_bytes > 0 && n.memory_working_set_bytes() > 0);
        let fs = n.filesystem.expect("statvfs of a temp dir");
        assert!(fs.size_bytes >= fs.free_bytes && fs.free_bytes >= fs.avail_bytes);
        let own = read_net_dev(std::process::id() as i32).expect("our own net/dev");
        assert!(own.iter().all(|i| i.interface != "lo"));
    }
}
