//! One sample of everything running on the box, and the rates between two samples.
//!
//! ```text
//!  runtime.list() ─► running containers ─► cgroup (cpu ns, working set, pids)
//!                                       └► /proc/<pid>/net/dev (one per pod: shared netns)
//!  /proc/stat, /proc/meminfo, /proc/loadavg, statvfs(data dir) ─► node
//!  usage(previous, current) ─► cpu nanocores per container and for the node
//! ```
//! The pod's namespace and name come from the container's log path (the kubelet layout
//! `<root>/logs/<namespace>_<name>_<uid>/...`), so sampling needs no API connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::cgroup::{read_cgroup, CgroupReading};
use super::procfs::{read_net_dev, read_node, InterfaceBytes, NodeReading};
use crate::runtime::{ContainerKey, ContainerRuntime, ContainerState, ContainerStatus};

/// Which pod a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// `<root>/logs/<namespace>_<name>_<uid>/<container>/<attempt>.log` → the pod. Namespace
/// and pod names are DNS labels/subdomains, which never hold `_`.
pub fn pod_of_log_path(log_path: &Path) -> Option<PodRef> {
    let dir = log_path.parent()?.parent()?.file_name()?.to_str()?;
    let mut parts = dir.splitn(3, '_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if namespace.is_empty() || name.is_empty() || uid.is_empty() {
        return None;
    }
    Some(PodRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    pub key: ContainerKey,
    pub pod: PodRef,
    pub reading: CgroupReading,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodNetSample {
    pub pod: PodRef,
    pub interfaces: Vec<InterfaceBytes>,
}

impl PodNetSample {
    pub fn rx_bytes(&self) -> u64 {
        self.interfaces.iter().map(|i| i.rx_bytes).sum()
    }
    pub fn tx_bytes(&self) -> u64 {
        self.interfaces.iter().map(|i| i.tx_bytes).sum()
    }
}

/// Everything read at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub containers: Vec<ContainerSample>,
    pub pods: Vec<PodNetSample>,
    pub node: NodeReading,
}

/// Where the sampler looks.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Where cgroup hierarchies are mounted: `/sys/fs/cgroup`.
    pub cgroup_mount: PathBuf,
    /// The agent's parent cgroup (`/kith`); containers sit at `<root>/<uid>/<name>-<attempt>`.
    pub cgroup_root: String,
    /// The agent's data directory: its filesystem is the node's.
    pub data_dir: PathBuf,
}

impl SamplerConfig {
    /// The cgroup the sync loop gives a container (see `sync::Agent`'s container input).
    pub fn cgroup_of(&self, key: &ContainerKey) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}/{}-{}",
            self.cgroup_root, key.pod_uid, key.container, key.attempt
        ))
    }
}

/// Reads every running container of `runtime` and the box.
pub async fn take<R: ContainerRuntime>(runtime: &R, cfg: &SamplerConfig) -> Sample {
    let list = match runtime.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing containers for stats");
            Vec::new()
        }
    };
    let cfg = cfg.clone();
    let read = move || read_all(&list, &cfg);
    // Many small file reads: keep them off the async workers.
    match tokio::task::spawn_blocking(read).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "stats sampling task");
            Sample {
                at: Timestamp::now(),
                containers: Vec::new(),
                pods: Vec::new(),
                node: NodeReading::default(),
            }
        }
    }
}

fn read_all(list: &[ContainerStatus], cfg: &SamplerConfig) -> Sample {
    let mut containers = Vec::new();
    let mut pods: BTreeMap<String, PodNetSample> = BTreeMap::new();
    for c in list {
        let ContainerState::Running { pid, .. } = c.state else {
            continue;
        };
        let Some(pod) = pod_of_log_path(&c.log_path) else {
            continue;
        };
        if let Some(reading) = read_cgroup(&cfg.cgroup_mount, &cfg.cgroup_of(&c.key)) {
            containers.push(ContainerSample {
                key: c.key.clone(),
                pod: pod.clone(),
                reading,
            });
        }
        if !pods.contains_key(&pod.uid) {
            if let Some(interfaces) = read_net_dev(pid) {
                pods.insert(pod.uid.clone(), PodNetSample { pod, interfaces });
            }
        }
    }
    Sample {
        at: Timestamp::now(),
        containers,
        pods: pods.into_values().collect(),
        node: read_node(&cfg.data_dir),
    }
}

/// A container's use over the last window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub pod: PodRef,
    pub container: String,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// What `kubectl top` shows: rates over `window` ending at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub at: Timestamp,
    pub window: Duration,
    pub containers: Vec<ContainerUsage>,
    pub node_cpu_nanocores: u64,
    pub node_memory_bytes: u64,
}

/// Rates between two samples. Containers only in `current` (just started) are left out
/// until they have two readings, as metrics-server does; a counter that went backwards
/// (a different cgroup under the same key) gives no rate either.
pub fn usage(previous: &Sample, current: &Sample) -> Option<Usage> {
    let window = current.at.duration_since(previous.at);
    let secs = window.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let before: BTreeMap<&ContainerKey, u64> = previous
        .containers
        .iter()
        .map(|c| (&c.key, c.reading.cpu_usage_ns))
        .collect();
    let containers = current
        .containers
        .iter()
        .filter_map(|c| {
            let prev = *before.get(&c.key)?;
            let delta = c.reading.cpu_usage_ns.checked_sub(prev)?;
            Some(ContainerUsage {
                pod: c.pod.clone(),
                container: c.key.container.clone(),
                cpu_nanocores: (delta as f64 / secs).round() as u64,
                memory_bytes: c.reading.memory_working_set_bytes,
            })
        })
        .collect();
    let busy = (current.node.busy_seconds() - previous.node.busy_seconds()).max(0.0);
    Some(Usage {
        at: current.at,
        window: window.unsigned_abs(),
        containers,
        node_cpu_nanocores: (busy / secs * 1e9).round() as u64,
        node_memory_bytes: current.node.memory_working_set_bytes(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::procfs::CpuTimes;

    pub(crate) fn pod(ns: &str, name: &str, uid: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    pub(crate) fn container(
        p: &PodRef,
        name: &str,
        attempt: u32,
        cpu_ns: u64,
        ws: u64,
    ) -> ContainerSample {
        ContainerSample {
            key: ContainerKey {
                pod_uid: p.uid.clone(),
                container: name.into(),
                attempt,
            },
            pod: p.clone(),
            reading: CgroupReading {
                cpu_usage_ns: cpu_ns,
                memory_working_set_bytes: ws,
                pids: Some(1),
            },
        }
    }

    pub(crate) fn node(busy_seconds: f64) -> NodeReading {
        NodeReading {
            cpus: vec![CpuTimes {
                cpu: "0".into(),
                modes: vec![("user", busy_seconds), ("idle", 1000.0)],
            }],
            memory_total_bytes: 1000,
            memory_available_bytes: 400,
            load: [0.0; 3],
            filesystem: None,
        }
    }

    pub(crate) fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    #[test]
    fn pod_of_log_path_table() {
        let cases = [
            (
                "/var/lib/kith/agent/logs/default_web-1_0a1b-2c/app/0.log",
                Some(pod("default", "web-1", "0a1b-2c")),
            ),
            ("/x/logs/ns_name/app/0.log", None),
            ("/x/logs/_name_uid/app/0.log", None),
            ("0.log", None),
        ];
        for (path, want) in cases {
            assert_eq!(pod_of_log_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn usage_table() {
        let p = pod("ns", "p", "u");
        let prev = Sample {
            at: at(0),
            containers: vec![
                container(&p, "a", 0, 1_000_000_000, 10),
                container(&p, "b", 0, 5_000_000_000, 10),
            ],
            pods: vec![],
            node: node(100.0),
        };
        let cur = Sample {
            at: at(10),
            containers: vec![
                // half a core over 10 s
                container(&p, "a", 0, 6_000_000_000, 4096),
                // restarted: a new attempt has no earlier reading
                container(&p, "b", 1, 1_000_000, 20),
            ],
            pods: vec![],
            node: node(115.0),
        };
        let u = usage(&prev, &cur).unwrap();
        assert_eq!(u.window, Duration::from_secs(10));
        assert_eq!(
            u.containers,
            vec![ContainerUsage {
                pod: p.clone(),
                container: "a".into(),
                cpu_nanocores: 500_000_000,
                memory_bytes: 4096,
            }]
        );
        assert_eq!(u.node_cpu_nanocores, 1_500_000_000);
        assert_eq!(u.node_memory_bytes, 600);
        // same instant: no rate at all
        assert_eq!(usage(&cur, &cur), None);
        // a counter going backwards under the same key gives no rate for it
        let mut back = cur.clone();
        back.at = at(20);
        back.containers = vec![container(&p, "a", 0, 1, 1)];
        assert!(usage(&cur, &back).unwrap().containers.is_empty());
    }
}
