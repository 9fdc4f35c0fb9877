//! Resource use on this box: what each container and the box itself consume, for
//! `kubectl top` (metrics.k8s.io), for Prometheus (cadvisor and node-exporter names), and
//! for metering (per namespace totals that survive restarts, `kith usage`).
//!
//! ```text
//!  every INTERVAL: sample::take(runtime) ─► Stats::record ─┬─ usage(previous, current) ─► kubectl top
//!                                                          ├─ latest sample ─► /metrics (collector)
//!                                                          └─ Meter::observe ─► metering.json
//!  pods on this node (watch) ─► pod_start::start_duration ─► kith_pod_start_duration_seconds
//! ```
//! [`cgroup`] and [`procfs`] parse what the kernel says, [`sample`] reads a whole box and
//! computes rates, [`metering`] accumulates and persists, [`pod_start`] measures start
//! latency; this module holds the latest state and serves it.

pub mod cgroup;
pub mod metering;
pub mod pod_start;
pub mod procfs;
pub mod sample;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_api::node_metrics::{self, NodeStatsSource, NodeUsage, PodUsage, StatsFuture};
use kith_api::process_metrics::encode_value;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::runtime::ContainerRuntime;
use metering::Meter;
use sample::{Sample, SamplerConfig, Usage};

/// How often the box is sampled; also the `window` kubectl top is told.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How often the meter is written to disk.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The kubelet's buckets for pod start latency, up to ten minutes.
const START_BUCKETS: [f64; 16] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Default)]
struct State {
    latest: Option<Sample>,
    usage: Option<Usage>,
    meter: Meter,
}

/// The latest readings of this box, shared by the sampler, the API and /metrics.
pub struct Stats {
    node: String,
    sampler: SamplerConfig,
    metering_path: PathBuf,
    state: Mutex<State>,
    /// The sampler and a final save at shutdown may write at once; one at a time.
    saving: Mutex<()>,
    pod_start: Histogram,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Stats for node `node` whose agent keeps its data in `data_dir`; picks up the meter
    /// an earlier agent saved there. An unreadable meter file is reported and replaced.
    pub fn new(node: &str, data_dir: &Path, cgroup_root: &str) -> Arc<Stats> {
        let metering_path = data_dir.join(metering::FILE);
        let meter = match Meter::load(&metering_path) {
            Ok(Some(m)) => Meter {
                node: node.to_string(),
                ..m
            },
            Ok(None) => Meter::new(node),
            Err(e) => {
                tracing::warn!(error = %e, "starting a new meter");
                Meter::new(node)
            }
        };
        Arc::new(Stats {
            node: node.to_string(),
            sampler: SamplerConfig {
                cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
                cgroup_root: cgroup_root.to_string(),
                data_dir: data_dir.to_path_buf(),
            },
            metering_path,
            state: Mutex::new(State {
                meter,
                ..State::default()
            }),
            saving: Mutex::new(()),
            pod_start: Histogram::new(START_BUCKETS),
        })
    }

    /// Adds this box's series to `registry` (the one the API server's /metrics serves).
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "kith_pod_start_duration_seconds",
            "Time from a pod's creation until all its containers run, as seen by the agent",
            self.pod_start.clone(),
        );
        registry.register_collector(Box::new(StatsCollector(Arc::clone(self))));
    }

    /// The agent's own `/metrics` (served on the node port, and through the API server's
    /// `nodes/{name}/proxy/metrics`): this box's series and the agent process's.
    pub fn agent_registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        self.register(&mut registry);
        kith_api::process_metrics::register(&mut registry);
        registry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in a new sample: rates against the previous one, and metering.
    pub fn record(&self, sample: Sample) {
        let mut st = self.lock();
        if let Some(prev) = &st.latest {
            if let Some(u) = sample::usage(prev, &sample) {
                st.usage = Some(u);
            }
        }
        st.meter.observe(&sample);
        st.latest = Some(sample);
    }

    pub fn observe_pod_start(&self, seconds: f64) {
        self.pod_start.observe(seconds);
    }

    /// The rates of the last window, once two samples exist.
    pub fn usage(&self) -> Option<Usage> {
        self.lock().usage.clone()
    }

    /// A copy of the meter (totals so far).
    pub fn meter(&self) -> Meter {
        self.lock().meter.clone()
    }

    /// Writes the meter to the data directory.
    pub fn save(&self) -> Result<(), metering::MeteringError> {
        let _one = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let meter = self.meter();
        meter.save(&self.metering_path)
    }

    /// Samples `runtime`'s containers and the box every [`INTERVAL`] until `shutdown`,
    /// saving the meter every [`SAVE_EVERY`] and once more at the end.
    pub async fn run<R: ContainerRuntime>(
        self: Arc<Self>,
        runtime: &R,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut saved = tokio::time::Instant::now();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => break,
            }
            let s = sample::take(runtime, &self.sampler).await;
            self.record(s);
            if saved.elapsed() >= SAVE_EVERY {
                saved = tokio::time::Instant::now();
                let me = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || me.save()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "saving the meter"),
                    Err(e) => tracing::warn!(error = %e, "saving the meter"),
                }
            }
        }
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "saving the meter");
        }
    }
}

/// The rates of `u` in the metrics API's terms, pods grouped from their containers.
pub fn pod_usages(u: &Usage) -> Vec<PodUsage> {
    let mut out: Vec<PodUsage> = Vec::new();
    for c in &u.containers {
        let entry = node_metrics::ContainerUsage {
            name: c.container.clone(),
            cpu_nanocores: c.cpu_nanocores,
            memory_bytes: c.memory_bytes,
        };
        match out
            .iter_mut()
            .find(|p| p.namespace == c.pod.namespace && p.name == c.pod.name)
        {
            Some(p) => p.containers.push(entry),
            None => out.push(PodUsage {
                namespace: c.pod.namespace.clone(),
                name: c.pod.name.clone(),
                timestamp: u.at,
                window: u.window,
                containers: vec![entry],
            }),
        }
    }
    out
}

impl NodeStatsSource for Stats {
    fn nodes(&self) -> StatsFuture<'_, Vec<NodeUsage>> {
        let out = self
            .usage()
            .map(|u| NodeUsage {
                name: self.node.clone(),
                timestamp: u.at,
                window: u.window,
                cpu_nanocores: u.node_cpu_nanocores,
                memory_bytes: u.node_memory_bytes,
            })
            .into_iter()
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn pods(&self) -> StatsFuture<'_, Vec<PodUsage>> {
        let out = self.usage().map(|u| pod_usages(&u)).unwrap_or_default();
        Box::pin(async move { Ok(out) })
    }
}

/// Renders the latest sample and the meter at scrape time.
struct StatsCollector(Arc<Stats>);

impl fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsCollector").finish_non_exhaustive()
    }
}

/// One family with its samples, ready to encode.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, counter: bool) -> Family {
        Family {
            name,
            help,
            counter,
            samples: Vec::new(),
        }
    }
    fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }
}

/// The families of one sample and a meter (counters named without `_total`, which the
/// encoder adds).
fn families(sample: Option<&Sample>, meter: &Meter) -> Vec<Family> {
    let mut cpu = Family::new(
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed in seconds",
        true,
    );
    let mut mem = Family::new(
        "container_memory_working_set_bytes",
        "Current working set in bytes",
        false,
    );
    let mut rx = Family::new(
        "container_network_receive_bytes",
        "Cumulative count of bytes received",
        true,
    );
    let mut tx = Family::new(
        "container_network_transmit_bytes",
        "Cumulative count of bytes transmitted",
        true,
    );
    let mut node_cpu = Family::new(
        "node_cpu_seconds",
        "Seconds the CPUs spent in each mode",
        true,
    );
    let mut mem_total = Family::new(
        "node_memory_MemTotal_bytes",
        "Memory information field MemTotal_bytes",
        false,
    );
    let mut mem_avail = Family::new(
        "node_memory_MemAvailable_bytes",
        "Memory information field MemAvailable_bytes",
        false,
    );
    let mut load: Vec<Family> = [
        ("node_load1", "1m load average"),
        ("node_load5", "5m load average"),
        ("node_load15", "15m load average"),
    ]
    .into_iter()
    .map(|(n, h)| Family::new(n, h, false))
    .collect();
    let mut fs_size = Family::new(
        "node_filesystem_size_bytes",
        "Filesystem size in bytes",
        false,
    );
    let mut fs_avail = Family::new(
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes",
        false,
    );
    let mut fs_free = Family::new(
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes",
        false,
    );
    if let Some(s) = sample {
        for c in &s.containers {
            let labels = vec![
                ("namespace", c.pod.namespace.clone()),
                ("pod", c.pod.name.clone()),
                ("container", c.key.container.clone()),
            ];
            cpu.push(labels.clone(), c.reading.cpu_usage_ns as f64 / 1e9);
            mem.push(labels, c.reading.memory_working_set_bytes as f64);
        }
        for p in &s.pods {
            for i in &p.interfaces {
                let labels = vec![
                    ("namespace", p.pod.namespace.clone()),
                    ("pod", p.pod.name.clone()),
                    ("interface", i.interface.clone()),
                ];
                rx.push(labels.clone(), i.rx_bytes as f64);
                tx.push(labels, i.tx_bytes as f64);
            }
        }
        for c in &s.node.cpus {
            for (mode, secs) in &c.modes {
                node_cpu.push(
                    vec![("cpu", c.cpu.clone()), ("mode", mode.to_string())],
                    *secs,
                );
            }
        }
        mem_total.push(vec![], s.node.memory_total_bytes as f64);
        mem_avail.push(vec![], s.node.memory_available_bytes as f64);
        for (f, v) in load.iter_mut().zip(s.node.load) {
            f.push(vec![], v);
        }
        if let Some(fs) = &s.node.filesystem {
            let labels = vec![("mountpoint", fs.mountpoint.clone())];
            fs_size.push(labels.clone(), fs.size_bytes as f64);
            fs_avail.push(labels.clone(), fs.avail_bytes as f64);
            fs_free.push(labels, fs.free_bytes as f64);
        }
    }
    let mut u_cpu = Family::new(
        "kith_usage_cpu_seconds",
        "CPU seconds used by the pods of a namespace on a node, since metering began",
        true,
    );
    let mut u_mem = Family::new(
        "kith_usage_memory_byte_seconds",
        "Memory working set integrated over time, per namespace and node",
        true,
    );
    let mut u_net = Family::new(
        "kith_usage_network_bytes",
        "Bytes through the pods' network interfaces, per namespace, node and direction",
        true,
    );
    for ((ns, node), t) in meter.by_namespace(None) {
        let labels = vec![("namespace", ns), ("node", node)];
        u_cpu.push(labels.clone(), t.cpu_seconds);
        u_mem.push(labels.clone(), t.memory_byte_seconds);
        let mut with = |dir: &str, v: u64| {
            let mut l = labels.clone();
            l.push(("direction", dir.to_string()));
            u_net.push(l, v as f64);
        };
        with("receive", t.network_rx_bytes);
        with("transmit", t.network_tx_bytes);
    }
    let mut out = vec![
        cpu, mem, rx, tx, node_cpu, mem_total, mem_avail, fs_size, fs_avail, fs_free,
    ];
    out.extend(load);
    out.extend([u_cpu, u_mem, u_net]);
    out
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let fams = {
            let st = self.0.lock();
            families(st.latest.as_ref(), &st.meter)
        };
        for f in fams {
            let ty = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut enc = encoder.encode_descriptor(f.name, f.help, None, ty)?;
            match f.samples.as_slice() {
                // A family without labels is written as `name value`, not `name{} value`.
                [(labels, v)] if labels.is_empty() => encode_value(enc, f.counter, *v)?,
                samples => {
                    for (labels, v) in samples {
                        encode_value(enc.encode_family(labels)?, f.counter, *v)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sample::tests::{at, container, node, pod};

    #[test]
    fn kubectl_top_sees_rates_after_two_samples() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Stats::new("box-1", dir.path(), "/kith");
        let p = pod("default", "burn", "u1");
        let s = |secs, cpu| Sample {
            at: at(secs),
            containers: vec![container(&p, "app", 0, cpu, 8192)],
            pods: vec![],
            node: node(secs as f64),
        };
        stats.record(s(0, 0));
        assert!(stats.usage().is_none(), "one sample has no rate");
        stats.record(s(5, 1_000_000_000));
        let u = stats.usage().unwrap();
        let pods = pod_usages(&u);
        assert_eq!(pods.len(), 1);
        assert_eq!(
            (pods[0].namespace.as_str(), pods[0].name.as_str()),
            ("default", "burn")
        );
        assert_eq!(pods[0].containers[0].cpu_nanocores, 200_000_000);
        assert_eq!(pods[0].containers[0].memory_bytes, 8192);
        assert_eq!(u.node_cpu_nanocores, 1_000_000_000);
        assert_eq!(stats.meter().by_node(None)["box-1"].cpu_seconds, 1.0);

        // the meter survives a new Stats on the same data dir
        stats.save().unwrap();
        let again = Stats::new("box-1", dir.path(), "/kith");
        assert_eq!(again.meter(), stats.meter());
    }

    #[test]
    fn metrics_exposition_has_cadvisor_node_and_usage_series() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Stats::new("box-1", dir.path(), "/kith");
        let p = pod("team", "web", "u1");
        stats.record(Sample {
            at: at(0),
            containers: vec![container(&p, "app", 0, 1_500_000_000, 4096)],
            pods: vec![],
            node: node(3.0),
        });
        stats.observe_pod_start(1.25);
        let mut registry = Registry::default();
        stats.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            r#"container_cpu_usage_seconds_total{namespace="team",pod="web",container="app"} 1.5"#,
            r#"container_memory_working_set_bytes{namespace="team",pod="web",container="app"} 4096.0"#,
            r#"node_cpu_seconds_total{cpu="0",mode="user"} 3.0"#,
            "node_memory_MemAvailable_bytes 400.0",
            r#"kith_usage_cpu_seconds_total{namespace="team",node="box-1"} 1.5"#,
            r#"kith_usage_network_bytes_total{namespace="team",node="box-1",direction="receive"} 0.0"#,
            "kith_pod_start_duration_seconds_count 1",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
