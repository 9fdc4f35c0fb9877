//! The agent's Node: what the box is (capacity, system info, addresses) and how it is
//! doing (conditions), and the heartbeat that tells the control plane it is alive.
//!
//! ```text
//!  read_node(data_dir) ──▶ NodeReadings ──┬─▶ node_object(readings, cfg) ──▶ register()
//!   /proc, statvfs, /etc                  └─▶ conditions(readings, thresholds, previous, now)
//!                                                  │
//!  heartbeat_loop: every lease_renew_interval ─────┼─▶ Lease kube-node-lease/<node>
//!                  on change or every status_update_interval ─▶ nodes/<node>/status
//! ```
//!
//! Both object builders are pure and tested by tables; [`readings`] reads the host and
//! [`heartbeat`] talks to the API.

pub mod heartbeat;
pub mod readings;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

pub use heartbeat::{heartbeat_loop, register};
pub use readings::read_node;

/// The version the agent reports as `kubeletVersion`: the Kubernetes API it follows.
pub const KUBELET_VERSION: &str = "v1.33.0-kith";
/// Pods a node takes unless configured otherwise, as the kubelet's `--max-pods`.
pub const DEFAULT_MAX_PODS: u32 = 110;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parse {path}: {why}")]
    Parse { path: String, why: String },
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the agent measured about its box.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReadings {
    pub hostname: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Of the filesystem holding the agent's data directory.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    /// The kernel's `pid_max` and the processes that exist now.
    pub pids_max: u64,
    pub pids_used: u64,
    pub load_1m: f64,
    pub kernel_version: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os_image: String,
    /// The CPU architecture as Rust names it (`x86_64`, `aarch64`, ...).
    pub arch: String,
    pub machine_id: String,
    pub boot_id: String,
    /// Why pods can't run here (runtime or network not ready); `None` when they can.
    /// [`read_node`] leaves it `None`; the agent sets it from its own components.
    pub not_ready: Option<String>,
}

/// What the agent keeps back from capacity for the system and itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

impl Default for Reservation {
    fn default() -> Self {
        Reservation {
            cpu_millis: 100,
            memory_bytes: 256 << 20,
            ephemeral_storage_bytes: 1 << 30,
        }
    }
}

/// When a pressure condition turns True; the kubelet's default hard eviction thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// MemoryPressure below this much available memory (`memory.available<100Mi`).
    pub memory_available_bytes: u64,
    /// DiskPressure below this fraction of the data filesystem free (`nodefs.available<10%`).
    pub disk_available_fraction: f64,
    /// PIDPressure below this fraction of `pid_max` free.
    pub pid_available_fraction: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory_available_bytes: 100 << 20,
            disk_available_fraction: 0.10,
            pid_available_fraction: 0.10,
        }
    }
}

/// How the agent presents its Node and keeps it fresh.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The Node's name; the hostname by default.
    pub name: String,
    /// The address other boxes reach this one at (`InternalIP`).
    pub internal_ip: Option<IpAddr>,
    /// The agent server's port (`daemonEndpoints.kubeletEndpoint.Port`).
    pub server_port: u16,
    pub max_pods: u32,
    pub reserved: Reservation,
    pub thresholds: Thresholds,
    /// Extra labels the Node carries, next to the well-known ones.
    pub labels: BTreeMap<String, String>,
    pub lease_renew_interval: Duration,
    pub lease_duration_seconds: i32,
    /// Conditions are posted at least this often, and at once when they change.
    pub status_update_interval: Duration,
}

impl NodeConfig {
    /// The defaults for a node called `name`.
    pub fn new(name: impl Into<String>) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            internal_ip: None,
            server_port: 10250,
            max_pods: DEFAULT_MAX_PODS,
            reserved: Reservation::default(),
            thresholds: Thresholds::default(),
            labels: BTreeMap::new(),
            lease_renew_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            status_update_interval: Duration::from_secs(60),
        }
    }
}

/// The architecture as Kubernetes (Go) names it.
pub fn kube_arch(rust_arch: &str) -> String {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" | "armv7" | "armv7l" => "arm",
        "x86" | "i686" | "i386" => "386",
        "powerpc64" | "powerpc64le" | "ppc64le" => "ppc64le",
        "riscv64" | "riscv64gc" => "riscv64",
        other => other,
    }
    .to_string()
}

fn kib(bytes: u64) -> Quantity {
    Quantity(format!("{}Ki", bytes / 1024))
}

fn cpu(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

fn resources(cpu_millis: u64, memory: u64, storage: u64, pods: u32) -> BTreeMap<String, Quantity> {
    [
        ("cpu", cpu(cpu_millis)),
        ("memory", kib(memory)),
        ("ephemeral-storage", kib(storage)),
        ("pods", Quantity(pods.to_string())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The Node the agent registers: metadata and the status it owns, but no conditions
/// (those come from [`conditions`]) and no spec (podCIDR and taints belong to others).
pub fn node_object(readings: &NodeReadings, cfg: &NodeConfig) -> Node {
    let arch = kube_arch(&readings.arch);
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), arch.clone());

    let cpu_millis = u64::from(readings.cpus) * 1000;
    let r = &cfg.reserved;
    let capacity = resources(
        cpu_millis,
        readings.memory_total_bytes,
        readings.disk_total_bytes,
        cfg.max_pods,
    );
    let allocatable = resources(
        cpu_millis.saturating_sub(r.cpu_millis),
        readings.memory_total_bytes.saturating_sub(r.memory_bytes),
        readings
            .disk_total_bytes
            .saturating_sub(r.ephemeral_storage_bytes),
        cfg.max_pods,
    );

    let mut addresses = Vec::new();
    if let Some(ip) = cfg.internal_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: readings.hostname.clone(),
    });

    Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            addresses: Some(addresses),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(cfg.server_port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: arch,
                boot_id: readings.boot_id.clone(),
                container_runtime_version: format!("kith://{}", env!("CARGO_PKG_VERSION")),
                kernel_version: readings.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: KUBELET_VERSION.into(),
                machine_id: readings.machine_id.clone(),
                operating_system: "linux".into(),
                os_image: readings.os_image.clone(),
                swap: None,
                system_uuid: String::new(),
            }),
            ..NodeStatus::default()
        }),
    }
}

/// (type, status, reason, message) of one condition, as the kubelet words it.
type Verdict = (&'static str, bool, &'static str, String);

fn verdicts(readings: &NodeReadings, t: &Thresholds) -> [Verdict; 4] {
    let ready = match &readings.not_ready {
        None => (
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Some(why) => ("Ready", false, "KubeletNotReady", why.clone()),
    };
    let memory = if readings.memory_available_bytes < t.memory_available_bytes {
        (
            "MemoryPressure",
            true,
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available".to_string(),
        )
    } else {
        (
            "MemoryPressure",
            false,
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available".to_string(),
        )
    };
    let disk_low = readings.disk_total_bytes > 0
        && (readings.disk_available_bytes as f64)
            < t.disk_available_fraction * readings.disk_total_bytes as f64;
    let disk = if disk_low {
        (
            "DiskPressure",
            true,
            "KubeletHasDiskPressure",
            "kubelet has disk pressure".to_string(),
        )
    } else {
        (
            "DiskPressure",
            false,
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure".to_string(),
        )
    };
    let pids_free = readings.pids_max.saturating_sub(readings.pids_used);
    let pids_low = readings.pids_max > 0
        && (pids_free as f64) < t.pid_available_fraction * readings.pids_max as f64;
    let pid = if pids_low {
        (
            "PIDPressure",
            true,
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available".to_string(),
        )
    } else {
        (
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available".to_string(),
        )
    };
    [memory, disk, pid, ready]
}

/// The conditions the agent posts, in the kubelet's order. `previous` are the Node's
/// current conditions: a condition whose status did not change keeps its
/// lastTransitionTime; every one gets `now` as its heartbeat.
pub fn conditions(
    readings: &NodeReadings,
    thresholds: &Thresholds,
    previous: &[NodeCondition],
    now: Timestamp,
) -> Vec<NodeCondition> {
    verdicts(readings, thresholds)
        .into_iter()
        .map(|(type_, on, reason, message)| {
            let status = if on { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            NodeCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(since),
            }
        })
        .collect()
}

/// Whether two condition lists say something different (times aside).
pub fn conditions_changed(a: &[NodeCondition], b: &[NodeCondition]) -> bool {
    let key = |c: &NodeCondition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        )
    };
    a.len() != b.len() || a.iter().zip(b).any(|(x, y)| key(x) != key(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> NodeReadings {
        NodeReadings {
            hostname: "box-1".into(),
            cpus: 4,
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 6 << 30,
            disk_total_bytes: 100 << 30,
            disk_available_bytes: 50 << 30,
            pids_max: 4_194_304,
            pids_used: 300,
            load_1m: 0.5,
            kernel_version: "6.1.0-18-amd64".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "x86_64".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            boot_id: "5f0c7e4e-7d2e-4f55-9a47-1c39a3c1a001".into(),
            not_ready: None,
        }
    }

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn node_object_table() {
        let mut reserved_none = NodeConfig::new("box-1");
        reserved_none.reserved = Reservation {
            cpu_millis: 0,
            memory_bytes: 0,
            ephemeral_storage_bytes: 0,
        };
        let mut with_ip = NodeConfig::new("edge-a");
        with_ip.internal_ip = Some("192.168.1.20".parse().unwrap());
        with_ip.server_port = 10443;
        with_ip
            .labels
            .insert("topology.kubernetes.io/zone".into(), "attic".into());
        let mut arm = readings();
        arm.arch = "aarch64".into();

        struct Case {
            name: &'static str,
            readings: NodeReadings,
            cfg: NodeConfig,
            capacity: [(&'static str, &'static str); 4],
            allocatable: [(&'static str, &'static str); 4],
            addresses: Vec<(&'static str, &'static str)>,
            arch: &'static str,
            port: i32,
        }
        let cases = [
            Case {
                name: "defaults reserve a little of everything",
                readings: readings(),
                cfg: NodeConfig::new("box-1"),
                capacity: [
                    ("cpu", "4"),
                    ("ephemeral-storage", "104857600Ki"),
                    ("memory", "8388608Ki"),
                    ("pods", "110"),
                ],
                allocatable: [
                    ("cpu", "3900m"),
                    ("ephemeral-storage", "103809024Ki"),
                    ("memory", "8126464Ki"),
                    ("pods", "110"),
                ],
                addresses: vec![("Hostname", "box-1")],
                arch: "amd64",
                port: 10250,
            },
            Case {
                name: "no reservation: allocatable is capacity",
                readings: readings(),
                cfg: reserved_none,
                capacity: [
                    ("cpu", "4"),
                    ("ephemeral-storage", "104857600Ki"),
                    ("memory", "8388608Ki"),
                    ("pods", "110"),
                ],
                allocatable: [
                    ("cpu", "4"),
                    ("ephemeral-storage", "104857600Ki"),
                    ("memory", "8388608Ki"),
                    ("pods", "110"),
                ],
                addresses: vec![("Hostname", "box-1")],
                arch: "amd64",
                port: 10250,
            },
            Case {
                name: "arm box with an internal ip, own port and labels",
                readings: arm,
                cfg: with_ip,
                capacity: [
                    ("cpu", "4"),
                    ("ephemeral-storage", "104857600Ki"),
                    ("memory", "8388608Ki"),
                    ("pods", "110"),
                ],
                allocatable: [
                    ("cpu", "3900m"),
                    ("ephemeral-storage", "103809024Ki"),
                    ("memory", "8126464Ki"),
                    ("pods", "110"),
                ],
                addresses: vec![("InternalIP", "192.168.1.20"), ("Hostname", "box-1")],
                arch: "arm64",
                port: 10443,
            },
        ];
        for c in cases {
            let node = node_object(&c.readings, &c.cfg);
            let status = node.status.as_ref().unwrap();
            let want = |list: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
                list.iter().map(|(k, v)| (k.to_string(), q(v))).collect()
            };
            assert_eq!(
                status.capacity.as_ref(),
                Some(&want(&c.capacity)),
                "{}",
                c.name
            );
            assert_eq!(
                status.allocatable.as_ref(),
                Some(&want(&c.allocatable)),
                "{}",
                c.name
            );
            let addrs: Vec<(&str, &str)> = status
                .addresses
                .as_ref()
                .unwrap()
                .iter()
                .map(|a| (a.type_.as_str(), a.address.as_str()))
                .collect();
            assert_eq!(addrs, c.addresses, "{}", c.name);
            let info = status.node_info.as_ref().unwrap();
            assert_eq!(info.architecture, c.arch, "{}", c.name);
            assert_eq!(info.operating_system, "linux");
            assert_eq!(info.kubelet_version, "v1.33.0-kith");
            assert_eq!(
                info.container_runtime_version,
                format!("kith://{}", env!("CARGO_PKG_VERSION"))
            );
            assert_eq!(info.os_image, "Debian GNU/Linux 12 (bookworm)");
            assert_eq!(info.kernel_version, "6.1.0-18-amd64");
            assert_eq!(info.machine_id, c.readings.machine_id);
            assert_eq!(info.boot_id, c.readings.boot_id);
            let port = status
                .daemon_endpoints
                .as_ref()
                .and_then(|d| d.kubelet_endpoint.as_ref())
                .map(|e| e.port);
            assert_eq!(port, Some(c.port), "{}", c.name);
            let labels = node.metadata.labels.as_ref().unwrap();
            assert_eq!(labels["kubernetes.io/hostname"], c.cfg.name, "{}", c.name);
            assert_eq!(labels["kubernetes.io/os"], "linux");
            assert_eq!(labels["kubernetes.io/arch"], c.arch);
            for (k, v) in &c.cfg.labels {
                assert_eq!(&labels[k], v, "{}", c.name);
            }
            assert!(node.spec.is_none(), "the spec belongs to others");
            assert!(status.conditions.is_none());
        }
    }

    #[test]
    fn arch_table() {
        for (rust, kube) in [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("armv7l", "arm"),
            ("riscv64", "riscv64"),
            ("s390x", "s390x"),
        ] {
            assert_eq!(kube_arch(rust), kube, "{rust}");
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn summary(conds: &[NodeCondition]) -> Vec<(String, String, String)> {
        conds
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn conditions_table() {
        let t = Thresholds::default();
        let mut low_mem = readings();
        low_mem.memory_available_bytes = 50 << 20;
        let mut low_disk = readings();
        low_disk.disk_available_bytes = 5 << 30;
        let mut low_pids = readings();
        low_pids.pids_max = 1000;
        low_pids.pids_used = 950;
        let mut broken = readings();
        broken.not_ready = Some("container runtime is down".into());
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        let healthy = [
            s("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            s("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            s("PIDPressure", "False", "KubeletHasSufficientPID"),
            s("Ready", "True", "KubeletReady"),
        ];
        let with = |i: usize, v: (String, String, String)| {
            let mut h = healthy.clone();
            h[i] = v;
            h.to_vec()
        };
        let cases = [
            ("healthy", readings(), healthy.to_vec()),
            (
                "memory below 100Mi",
                low_mem,
                with(
                    0,
                    s("MemoryPressure", "True", "KubeletHasInsufficientMemory"),
                ),
            ),
            (
                "disk below 10%",
                low_disk,
                with(1, s("DiskPressure", "True", "KubeletHasDiskPressure")),
            ),
            (
                "pids below 10% free",
                low_pids,
                with(2, s("PIDPressure", "True", "KubeletHasInsufficientPID")),
            ),
            (
                "runtime not ready",
                broken,
                with(3, s("Ready", "False", "KubeletNotReady")),
            ),
        ];
        for (name, r, want) in cases {
            assert_eq!(summary(&conditions(&r, &t, &[], at(100))), want, "{name}");
        }
        let ready = conditions(&readings(), &t, &[], at(100));
        assert_eq!(
            ready[3].message.as_deref(),
            Some("kubelet is posting ready status")
        );
        assert_eq!(
            ready[0].message.as_deref(),
            Some("kubelet has sufficient memory available")
        );
    }

    #[test]
    fn transition_times_table() {
        let t = Thresholds::default();
        let first = conditions(&readings(), &t, &[], at(100));
        let mut low_mem = readings();
        low_mem.memory_available_bytes = 1 << 20;
        // (name, readings, previous, type → expected lastTransitionTime)
        let cases = [
            (
                "nothing changed: keep",
                readings(),
                first.clone(),
                [100, 100, 100, 100],
            ),
            (
                "memory flips: only it moves",
                low_mem,
                first.clone(),
                [200, 100, 100, 100],
            ),
            ("no previous: now", readings(), vec![], [200, 200, 200, 200]),
        ];
        for (name, r, prev, want) in cases {
            let got = conditions(&r, &t, &prev, at(200));
            let times: Vec<i64> = got
                .iter()
                .map(|c| c.last_transition_time.as_ref().unwrap().0.as_second())
                .collect();
            assert_eq!(times, want, "{name}");
            assert!(
                got.iter()
                    .all(|c| c.last_heartbeat_time.as_ref().unwrap().0 == at(200)),
                "{name}"
            );
        }
        // The node controller's Unknown counts as a change: Ready moves on recovery.
        let mut unknown = first.clone();
        unknown[3].status = "Unknown".into();
        unknown[3].last_transition_time = Some(Time(at(150)));
        let got = conditions(&readings(), &t, &unknown, at(200));
        assert_eq!(got[3].last_transition_time, Some(Time(at(200))));
        assert!(conditions_changed(&got, &unknown));
        assert!(!conditions_changed(&got, &first));
    }
}
