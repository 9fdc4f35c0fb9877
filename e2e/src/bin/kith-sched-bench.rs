//! `kith-sched-bench`: how many pending pods per second the scheduler decides, one
//! `BENCH {json}` line.
//!
//! ```text
//!  synthetic nodes (5,000) ──▶ Snapshot::new ──┐
//!  synthetic pending pods (10,000) ─┬──────────┴─▶ place(pod, &snapshot) ─Ok(node)─▶ assume
//!                                   │                                    └Err────▶ counted
//!                                   └─ oldest first, as the scheduler's pass takes them
//! ```
//!
//! This is the decision half of the scheduler's binding loop (`scheduler::pass`): the
//! snapshot is built once, then every pod is placed and, when it fits, assumed onto its node
//! so later pods see it. The `pods/binding` POST, events and PodScheduled writes are not
//! included; the figure is the ceiling the API writes then share.
//!
//! The cluster is generated from a fixed seed, so runs compare: 20 zones in 4 regions,
//! nodes of 2–16 CPUs and 4–64 GiB with 110 pod slots, about 10% tainted (`dedicated=batch`
//! and GPU nodes with `NoSchedule`), a few `PreferNoSchedule` spot nodes and cordoned ones.
//! Pods come in groups of 50 replicas (one app each, as a ReplicaSet creates them), with
//! varied requests; some apps use a nodeSelector, preferred node affinity, tolerations,
//! topology spread over zone (hard or soft) or hostname, or GPUs; every 97th app asks for
//! more CPU than any node has, so the unschedulable path is measured too.
//!
//! The figure comes from one clean pass. A second pass replays the same decisions on a
//! fresh snapshot and takes every tenth pod apart (`Candidate::new`, each filter, each
//! score, the rest of `place`, `assume`) into the line's `breakdown`, to show where the time
//! goes; it is not part of the figure.
//!
//! Usage: `kith-sched-bench [--nodes N] [--pods N] [--seed N]`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kith_control::scheduler::place::{Candidate, FILTERS, SCORES};
use kith_control::scheduler::snapshot::NodeInfo;
use kith_control::scheduler::{place, Snapshot};
use serde_json::{json, Map, Value};

const ZONES: usize = 20;
const REGIONS: usize = 4;
const REPLICAS_PER_APP: usize = 50;
const NAMESPACES: usize = 10;
/// Issue 4's target on the bench machine.
const TARGET_PODS_PER_SEC: f64 = 5_000.0;
/// In the diagnostic pass, every this many pods is taken apart phase by phase.
const BREAKDOWN_EVERY: usize = 10;

struct Args {
    nodes: usize,
    pods: usize,
    seed: u64,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            nodes: 5_000,
            pods: 10_000,
            seed: 4,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                v.parse()
                    .with_context(|| format!("{name} {v}: not a number"))
            };
            match a.as_str() {
                "--nodes" => args.nodes = value("--nodes")? as usize,
                "--pods" => args.pods = value("--pods")? as usize,
                "--seed" => args.seed = value("--seed")?,
                "-h" | "--help" => {
                    println!("usage: kith-sched-bench [--nodes N] [--pods N] [--seed N]");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        if args.nodes == 0 || args.pods == 0 {
            bail!("--nodes and --pods must be positive");
        }
        Ok(args)
    }
}

/// SplitMix64: a small, fixed generator, so the synthetic cluster is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn zone(i: usize) -> String {
    format!("zone-{i:02}")
}

fn region_of(zone: usize) -> String {
    format!("region-{}", zone * REGIONS / ZONES)
}

fn synthetic_node(i: usize, rng: &mut Rng) -> Result<Node> {
    let name = format!("node-{i:05}");
    let z = rng.below(ZONES);
    let cpu = *rng.pick(&[2u32, 4, 8, 16]);
    let mem_gi = (cpu * *rng.pick(&[2u32, 4])).clamp(4, 64);
    let arch = if rng.chance(20) { "arm64" } else { "amd64" };
    let disk = if rng.chance(50) { "ssd" } else { "hdd" };
    let mut allocatable = json!({
        "cpu": cpu.to_string(),
        "memory": format!("{mem_gi}Gi"),
        "ephemeral-storage": "100Gi",
        "pods": "110",
    });
    let mut taints = Vec::new();
    match rng.below(100) {
        // About 10% tainted NoSchedule: half dedicated to batch work, half GPU nodes.
        0..=4 => taints.push(json!({"key": "dedicated", "value": "batch", "effect": "NoSchedule"})),
        5..=9 => {
            taints
                .push(json!({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}));
            allocatable["nvidia.com/gpu"] = json!("4");
        }
        // Spot capacity: schedulable, but scored lower.
        10..=14 => {
            taints.push(json!({"key": "spot", "value": "true", "effect": "PreferNoSchedule"}))
        }
        _ => {}
    }
    let cordoned = rng.chance(1);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "topology.kubernetes.io/zone": zone(z),
                "topology.kubernetes.io/region": region_of(z),
                "node.kubernetes.io/instance-type": format!("c{cpu}m{mem_gi}"),
                "disktype": disk,
            },
        },
        "spec": {"taints": taints, "unschedulable": cordoned},
        "status": {
            "capacity": allocatable.clone(),
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .context("synthetic node")
}

/// What an app's pods ask of the scheduler beyond resources; the name labels the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Plain,
    BestEffort,
    NodeSelector,
    PreferredAffinity,
    SpreadZoneHard,
    SpreadZoneSoft,
    SpreadHostname,
    Batch,
    Gpu,
    TooBig,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::BestEffort => "best_effort",
            Kind::NodeSelector => "node_selector",
            Kind::PreferredAffinity => "preferred_node_affinity",
            Kind::SpreadZoneHard => "spread_zone_hard",
            Kind::SpreadZoneSoft => "spread_zone_soft",
            Kind::SpreadHostname => "spread_hostname_soft",
            Kind::Batch => "tolerates_batch",
            Kind::Gpu => "gpu",
            Kind::TooBig => "too_big",
        }
    }

    /// The kind of app number `app`: apps 13, 110, 207, ... ask for more CPU than any node has.
    fn of(app: usize, rng: &mut Rng) -> Kind {
        if app % 97 == 13 {
            return Kind::TooBig;
        }
        match rng.below(100) {
            0..=29 => Kind::Plain,
            30..=34 => Kind::BestEffort,
            35..=49 => Kind::NodeSelector,
            50..=54 => Kind::PreferredAffinity,
            55..=67 => Kind::SpreadZoneHard,
            68..=77 => Kind::SpreadZoneSoft,
            78..=84 => Kind::SpreadHostname,
            85..=94 => Kind::Batch,
            _ => Kind::Gpu,
        }
    }
}

/// One app: its kind and the pod template its replicas share.
struct App {
    kind: Kind,
    namespace: String,
    name: String,
    spec: Value,
}

fn synthetic_app(app: usize, rng: &mut Rng) -> App {
    let kind = Kind::of(app, rng);
    let name = format!("app-{app:04}");
    let cpu = *rng.pick(&["100m", "250m", "500m", "1", "2"]);
    let mem = *rng.pick(&["128Mi", "256Mi", "512Mi", "1Gi", "2Gi", "4Gi"]);
    let mut resources = json!({
        "requests": {"cpu": cpu, "memory": mem},
        "limits": {"memory": mem},
    });
    let mut spec = Map::new();
    let selector = json!({"matchLabels": {"app": name}});
    match kind {
        Kind::Plain => {}
        Kind::BestEffort => resources = json!({}),
        Kind::NodeSelector => {
            let (k, v) = *rng.pick(&[
                ("disktype", "ssd"),
                ("kubernetes.io/arch", "arm64"),
                ("topology.kubernetes.io/region", "region-1"),
            ]);
            spec.insert("nodeSelector".into(), json!({ k: v }));
        }
        Kind::PreferredAffinity => {
            let z = zone(rng.below(ZONES));
            spec.insert(
                "affinity".into(),
                json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "preference": {"matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [z]}
                    ]}},
                    {"weight": 10, "preference": {"matchExpressions": [
                        {"key": "disktype", "operator": "In", "values": ["ssd"]}
                    ]}},
                ]}}),
            );
        }
        Kind::SpreadZoneHard | Kind::SpreadZoneSoft => {
            let when = if kind == Kind::SpreadZoneHard {
                "DoNotSchedule"
            } else {
                "ScheduleAnyway"
            };
            spec.insert(
                "topologySpreadConstraints".into(),
                json!([{
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": when,
                    "labelSelector": selector,
                }]),
            );
        }
        Kind::SpreadHostname => {
            spec.insert(
                "topologySpreadConstraints".into(),
                json!([
                    {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                     "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector},
                    {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone",
                     "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector},
                ]),
            );
        }
        Kind::Batch => {
            spec.insert(
                "tolerations".into(),
                json!([{"key": "dedicated", "operator": "Equal", "value": "batch",
                        "effect": "NoSchedule"}]),
            );
        }
        Kind::Gpu => {
            resources["requests"]["nvidia.com/gpu"] = json!("1");
            resources["limits"]["nvidia.com/gpu"] = json!("1");
            spec.insert(
                "tolerations".into(),
                json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
            );
        }
        Kind::TooBig => resources["requests"]["cpu"] = json!("24"),
    }
    spec.insert(
        "containers".into(),
        json!([{"name": "main", "image": format!("registry.local/{name}:1"),
                "resources": resources}]),
    );
    App {
        kind,
        namespace: format!("team-{}", app % NAMESPACES),
        name,
        spec: Value::Object(spec),
    }
}

fn synthetic_pod(app: &App, replica: usize, seq: usize) -> Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": app.namespace,
            "name": format!("{}-{replica:03}", app.name),
            "uid": format!("00000000-0000-4000-8000-{seq:012}"),
            "labels": {"app": app.name, "pod-template-hash": "5d8f7c9b6"},
        },
        "spec": app.spec,
    }))
    .context("synthetic pod")
}

/// FNV-1a over every decision (the node, or the FailedScheduling message) in order: equal
/// fingerprints mean two builds of the scheduler decided every pod alike.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for b in bytes.iter().chain(b"\n") {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Where the time of one `place` goes, summed over the sampled pods.
#[derive(Default)]
struct Breakdown {
    pods: usize,
    candidate: Duration,
    filters: Vec<Duration>,
    scores: Vec<Duration>,
    place: Duration,
    assume: Duration,
    rejected_nodes: usize,
}

impl Breakdown {
    /// Run `place`'s phases one by one with the same calls it makes (each filter over the
    /// nodes the earlier ones let through, each score over the feasible nodes), then `place`
    /// itself; what `place` takes beyond the phases is its bookkeeping: recording every
    /// rejected node, normalizing, and the vectors in between.
    fn sample(&mut self, pod: &Pod, snapshot: &Snapshot) {
        self.filters.resize(FILTERS.len(), Duration::ZERO);
        self.scores.resize(SCORES.len(), Duration::ZERO);
        self.pods += 1;
        let t = Instant::now();
        let c = Candidate::new(pod, snapshot);
        self.candidate += t.elapsed();
        let mut left: Vec<&NodeInfo> = snapshot.nodes.iter().collect();
        for (f, spent) in FILTERS.iter().zip(&mut self.filters) {
            let t = Instant::now();
            left.retain(|n| (f.check)(&c, n).is_ok());
            *spent += t.elapsed();
        }
        self.rejected_nodes += snapshot.nodes.len() - left.len();
        if left.len() > 1 {
            for (s, spent) in SCORES.iter().zip(&mut self.scores) {
                // `place` does not ask a score node by node when the pod makes it uniform.
                if (s.uniform)(&c).is_some() {
                    continue;
                }
                let t = Instant::now();
                let raw: Vec<Option<i64>> = left.iter().map(|n| (s.raw)(&c, n)).collect();
                *spent += t.elapsed();
                std::hint::black_box(raw);
            }
        }
        let t = Instant::now();
        let _ = std::hint::black_box(place(pod, snapshot));
        self.place += t.elapsed();
    }

    fn json(&self) -> Value {
        let per_pod = |d: Duration| micros(d / self.pods.max(1) as u32);
        let mut m = Map::new();
        m.insert("sampled_pods".into(), json!(self.pods));
        m.insert(
            "rejected_nodes_per_pod".into(),
            json!(self.rejected_nodes / self.pods.max(1)),
        );
        m.insert("place_us".into(), json!(per_pod(self.place)));
        m.insert("candidate_new_us".into(), json!(per_pod(self.candidate)));
        let mut phases = self.candidate;
        for (f, d) in FILTERS.iter().zip(&self.filters) {
            m.insert(format!("filter_{}_us", f.name), json!(per_pod(*d)));
            phases += *d;
        }
        for (s, d) in SCORES.iter().zip(&self.scores) {
            m.insert(format!("score_{}_us", s.name), json!(per_pod(*d)));
            phases += *d;
        }
        m.insert(
            "place_bookkeeping_us".into(),
            json!(per_pod(self.place.saturating_sub(phases))),
        );
        m.insert("assume_us".into(), json!(per_pod(self.assume)));
        Value::Object(m)
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    let mut rng = Rng(args.seed);
    let nodes: Vec<Node> = (0..args.nodes)
        .map(|i| synthetic_node(i, &mut rng))
        .collect::<Result<_>>()?;
    let mut pods: Vec<(Kind, Pod)> = Vec::with_capacity(args.pods);
    for app in 0.. {
        if pods.len() >= args.pods {
            break;
        }
        let a = synthetic_app(app, &mut rng);
        for r in 0..REPLICAS_PER_APP.min(args.pods - pods.len()) {
            let seq = pods.len();
            pods.push((a.kind, synthetic_pod(&a, r, seq)?));
        }
    }
    eprintln!(
        "kith-sched-bench: {} nodes, {} pending pods; placing each and assuming it",
        nodes.len(),
        pods.len()
    );

    let started = Instant::now();
    let mut snapshot = Snapshot::new(nodes.iter(), std::iter::empty::<&Pod>());
    let snapshot_built = started.elapsed();

    let mut placed = 0usize;
    let mut unschedulable = 0usize;
    let mut each: Vec<Duration> = Vec::with_capacity(pods.len());
    let mut by_kind: BTreeMap<Kind, (usize, Duration)> = BTreeMap::new();
    let mut decisions = Fnv::default();
    let decide = Instant::now();
    for (kind, pod) in &pods {
        let t = Instant::now();
        let decision = place(pod, &snapshot);
        if let Ok(node) = &decision {
            snapshot.assume(pod, node);
        }
        let d = t.elapsed();
        match &decision {
            Ok(node) => {
                placed += 1;
                decisions.add(node.as_bytes());
            }
            Err(why) => {
                unschedulable += 1;
                decisions.add(why.to_string().as_bytes());
            }
        }
        each.push(d);
        let e = by_kind.entry(*kind).or_default();
        e.0 += 1;
        e.1 += d;
    }
    let wall = decide.elapsed();

    // The busiest node and the zone spread show the decisions were real ones.
    let busiest = snapshot
        .nodes
        .iter()
        .map(|n| n.pod_count)
        .max()
        .unwrap_or(0);
    let used_nodes = snapshot.nodes.iter().filter(|n| n.pod_count > 0).count();

    // A second, diagnostic pass over a fresh snapshot (the same decisions, place being
    // pure): every BREAKDOWN_EVERY-th pod taken apart phase by phase.
    let mut breakdown = Breakdown::default();
    let mut replay = Snapshot::new(nodes.iter(), std::iter::empty::<&Pod>());
    for (i, (_, pod)) in pods.iter().enumerate() {
        if i % BREAKDOWN_EVERY == 0 {
            breakdown.sample(pod, &replay);
        }
        if let Ok(node) = place(pod, &replay) {
            let t = Instant::now();
            replay.assume(pod, &node);
            if i % BREAKDOWN_EVERY == 0 {
                breakdown.assume += t.elapsed();
            }
        }
    }

    each.sort_unstable();
    let per_sec = pods.len() as f64 / wall.as_secs_f64();
    let mut kinds = Map::new();
    for (kind, (n, total)) in &by_kind {
        kinds.insert(
            kind.name().into(),
            json!({"pods": n, "mean_us": micros(*total / *n as u32)}),
        );
    }
    let line = json!({
        "name": "scheduler_place_throughput",
        "value": (per_sec * 10.0).round() / 10.0,
        "unit": "pods/s",
        "target": TARGET_PODS_PER_SEC,
        "meets_target": per_sec >= TARGET_PODS_PER_SEC,
        "includes": "place+assume, no API write",
        "nodes": nodes.len(),
        "pods": pods.len(),
        "placed": placed,
        "unschedulable": unschedulable,
        "secs": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        "snapshot_build_ms": (snapshot_built.as_secs_f64() * 1e4).round() / 10.0,
        "p50_us": micros(percentile(&each, 0.50)),
        "p99_us": micros(percentile(&each, 0.99)),
        "max_us": micros(each.last().copied().unwrap_or_default()),
        "nodes_used": used_nodes,
        "max_pods_on_a_node": busiest,
        "decisions_fnv": format!("{:016x}", decisions.0),
        "by_kind": kinds,
        "breakdown": breakdown.json(),
        "seed": args.seed,
    });
    println!("BENCH {line}");
    Ok(())
}
