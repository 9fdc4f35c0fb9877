//! The control plane's metrics: Raft and its log, the store's object counts, the
//! scheduler and the controllers, and kube-state-metrics-compatible object state. All of
//! it goes into the API server's registry and is served at `/metrics`.
//!
//! ```text
//!  log writer ──append/fsync histograms──┐
//!  snapshot builder ──size, build time───┤
//!  scheduler, controllers ──control()────┼─▶ Registry ─▶ GET /metrics
//!  leader watch task ──leader changes────┤
//!  StoreCollector (at scrape time) ──────┘
//!     raft gauges (openraft metrics) · apiserver_storage_objects · kube_* (objects.rs)
//! ```
//!
//! Counters bumped from many places (scheduler, controllers) live in one process-wide
//! [`ControlMetrics`]: controllers are started by name in many modules, and a handle
//! threaded through each would change every signature for one increment.

pub mod objects;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use kith_api::metrics::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use self::objects::{object_samples, Sample, FAMILIES};
use crate::store::{NodeId, RaftStore};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    result: String,
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

/// client-go's work queue label: the queue's (the controller's) name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkqueueLabels {
    name: String,
}

/// How one scheduling attempt ended, as kube-scheduler labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleResult {
    Scheduled,
    Unschedulable,
    Error,
}

impl ScheduleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleResult::Scheduled => "scheduled",
            ScheduleResult::Unschedulable => "unschedulable",
            ScheduleResult::Error => "error",
        }
    }
}

/// Counters the scheduler, the controllers and the leader watch bump.
#[derive(Debug)]
pub struct ControlMetrics {
    schedule_attempts: Family<ScheduleLabels, Counter>,
    schedule_seconds: Family<ScheduleLabels, Histogram, fn() -> Histogram>,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    pending_pods: Family<QueueLabels, Gauge>,
    queue_depth: Family<WorkqueueLabels, Gauge>,
    queue_adds: Family<WorkqueueLabels, Counter>,
    leader_changes: Counter,
}

/// kube-scheduler's attempt-duration buckets: 1 ms doubling to ~16 s.
fn schedule_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

static CONTROL: LazyLock<ControlMetrics> = LazyLock::new(|| ControlMetrics {
    schedule_attempts: Family::default(),
    schedule_seconds: Family::new_with_constructor(schedule_histogram as fn() -> Histogram),
    reconciles: Family::default(),
    reconcile_errors: Family::default(),
    pending_pods: Family::default(),
    queue_depth: Family::default(),
    queue_adds: Family::default(),
    leader_changes: Counter::default(),
});

/// The process's control-plane counters.
pub fn control() -> &'static ControlMetrics {
    &CONTROL
}

impl ControlMetrics {
    /// One scheduling attempt of one pod (placement and, if placed, the binding).
    pub fn schedule_attempt(&self, result: ScheduleResult, took: Duration) {
        let labels = ScheduleLabels {
            result: result.as_str().to_string(),
            profile: crate::scheduler::SCHEDULER_NAME.to_string(),
        };
        self.schedule_attempts.get_or_create(&labels).inc();
        self.schedule_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The scheduler's queue after a pass, as kube-scheduler's `scheduler_pending_pods`:
    /// `active` pods about to be tried, `backoff` ones waiting after a failed binding,
    /// `unschedulable` ones waiting for the cluster to change.
    pub fn pending_pods(&self, active: usize, backoff: usize, unschedulable: usize) {
        for (queue, n) in [
            ("active", active),
            ("backoff", backoff),
            ("unschedulable", unschedulable),
        ] {
            let labels = QueueLabels {
                queue: queue.to_string(),
            };
            self.pending_pods.get_or_create(&labels).set(n as i64);
        }
    }

    /// One pass of `controller`'s reconcile; `ok` is whether it succeeded.
    pub fn reconciled(&self, controller: &str, ok: bool) {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        if !ok {
            self.reconcile_errors.get_or_create(&labels).inc();
        }
    }

    /// `controller`'s work queue series (`workqueue_depth`, `workqueue_adds_total`),
    /// looked up once: the queue updates them on every trigger.
    pub fn workqueue(&self, controller: &str) -> (Gauge, Counter) {
        let labels = WorkqueueLabels {
            name: controller.to_string(),
        };
        (
            self.queue_depth.get_or_create(&labels).clone(),
            self.queue_adds.get_or_create(&labels).clone(),
        )
    }

    /// Passes of `controller` so far, and how many failed.
    pub fn reconcile_counts(&self, controller: &str) -> (u64, u64) {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        (
            self.reconciles.get(&labels).map(|c| c.get()).unwrap_or(0),
            self.reconcile_errors
                .get(&labels)
                .map(|c| c.get())
                .unwrap_or(0),
        )
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result",
            self.schedule_attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            self.schedule_seconds.clone(),
        );
        registry.register(
            "kith_controller_reconcile",
            "Reconcile passes of each controller",
            self.reconciles.clone(),
        );
        registry.register(
            "kith_controller_reconcile_errors",
            "Reconcile passes of each controller that failed",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            self.queue_depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            self.queue_adds.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type",
            self.pending_pods.clone(),
        );
        registry.register(
            "kith_raft_leader_changes",
            "Times this node saw a new Raft leader (a new term with a leader)",
            self.leader_changes.clone(),
        );
    }
}

/// Add every control-plane metric of `store` to `metrics`.
pub fn register(metrics: &mut Metrics, store: Arc<RaftStore>) {
    let registry = metrics.registry_mut();
    control().register(registry);
    let log = store.log_stats_handle();
    registry.register(
        "kith_raft_log_append_duration_seconds",
        "Latency of one Raft log write batch: entries written and made durable",
        log.append_histogram().clone(),
    );
    registry.register(
        "kith_raft_log_fsync_duration_seconds",
        "Latency of the durable commit (fsync) of one Raft log write batch",
        log.fsync_histogram().clone(),
    );
    registry.register(
        "kith_raft_snapshot_build_duration_seconds",
        "Time to build and persist one Raft snapshot",
        store.snapshot_stats().build_seconds.clone(),
    );
    registry.register_collector(Box::new(StoreCollector { store }));
}

/// Count leader changes as openraft reports them, until the store shuts down.
pub fn spawn_leader_watch(store: &RaftStore) -> JoinHandle<()> {
    let mut rx = store.raft().metrics();
    tokio::spawn(async move {
        let mut last: Option<(u64, NodeId)> = None;
        loop {
            let seen = {
                let m = rx.borrow_and_update();
                m.current_leader.map(|l| (m.current_term, l))
            };
            if leader_changed(last, seen) {
                control().leader_changes.inc();
                last = seen;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

/// A new leader is one in a term (or a node) other than the last leader seen. No leader
/// (an election) is not a change by itself: the leader it elects is.
pub fn leader_changed(last: Option<(u64, NodeId)>, now: Option<(u64, NodeId)>) -> bool {
    match now {
        None => false,
        Some(now) => last != Some(now),
    }
}

/// What the Raft gauges are computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub committed: u64,
    pub applied: u64,
    pub last_log: u64,
    pub snapshot: u64,
    pub members: u64,
    pub snapshot_bytes: u64,
}

/// The Raft gauges: (name, help, value).
pub fn raft_gauges(v: &RaftView) -> Vec<(&'static str, &'static str, f64)> {
    // A follower may learn of a commit before its own log has the entry; the committed
    // index it can apply is bounded by what it holds.
    let committed = v.committed.max(v.applied);
    vec![
        ("kith_raft_term", "Current Raft term", v.term as f64),
        (
            "kith_raft_is_leader",
            "1 if this node is the Raft leader",
            if v.leader == Some(v.id) { 1.0 } else { 0.0 },
        ),
        (
            "kith_raft_has_leader",
            "1 if this node knows a Raft leader",
            if v.leader.is_some() { 1.0 } else { 0.0 },
        ),
        (
            "kith_raft_commit_index",
            "Highest Raft log index known committed",
            committed as f64,
        ),
        (
            "kith_raft_applied_index",
            "Highest Raft log index applied to the object store",
            v.applied as f64,
        ),
        (
            "kith_raft_apply_lag",
            "Committed entries not yet applied (commit index - applied index)",
            (committed - v.applied) as f64,
        ),
        (
            "kith_raft_last_log_index",
            "Highest index in this node's Raft log",
            v.last_log as f64,
        ),
        (
            "kith_raft_snapshot_index",
            "Raft log index of the last snapshot",
            v.snapshot as f64,
        ),
        (
            "kith_raft_members",
            "Members (voters and learners) of the Raft group",
            v.members as f64,
        ),
        (
            "kith_raft_snapshot_size_bytes",
            "Size of the last snapshot this node built",
            v.snapshot_bytes as f64,
        ),
    ]
}

/// kube-apiserver's resource label: `pods`, `deployments.apps`.
pub fn storage_resource(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Reads the store at scrape time: Raft gauges, object counts and object-state metrics.
struct StoreCollector {
    store: Arc<RaftStore>,
}

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCollector").finish_non_exhaustive()
    }
}

/// The kinds `objects` turns into samples.
fn has_object_metrics(group: &str, plural: &str) -> bool {
    matches!(
        (group, plural),
        (
            "",
            "pods" | "nodes" | "namespaces" | "services" | "endpoints"
        ) | (
            "apps",
            "deployments" | "replicasets" | "daemonsets" | "statefulsets"
        ) | ("batch", "jobs")
    )
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let m = self.store.metrics();
        let view = RaftView {
            id: m.id,
            term: m.current_term,
            leader: m.current_leader,
            committed: self.store.log_stats_handle().committed_index(),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log: m.last_log_index.unwrap_or(0),
            snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
            members: m.membership_config.membership().nodes().count() as u64,
            snapshot_bytes: self
                .store
                .snapshot_stats()
                .last_bytes
                .load(Ordering::Relaxed),
        };
        for (name, help, value) in raft_gauges(&view) {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(e)?;
        }

        // Copy pointers under the lock; parse after it is released.
        let (counts, docs) = self.store.with_state(|state| {
            let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
            let mut docs: Vec<(String, String, Bytes)> = Vec::new();
            for (key, json) in state.iter() {
                let r = &key.resource;
                *counts
                    .entry((r.group.clone(), r.plural.clone()))
                    .or_default() += 1;
                if has_object_metrics(&r.group, &r.plural) {
                    docs.push((r.group.clone(), r.plural.clone(), json.clone()));
                }
            }
            (counts, docs)
        });
        {
            let mut fam = encoder.encode_descriptor(
                "apiserver_storage_objects",
                "Number of stored objects at the time of last check split by kind",
                None,
                MetricType::Gauge,
            )?;
            for ((group, plural), n) in &counts {
                let labels = [("resource", storage_resource(group, plural))];
                let e = fam.encode_family(&labels)?;
                ConstGauge::new(*n as i64).encode(e)?;
            }
        }
        let mut samples = Vec::with_capacity(docs.len() * 8);
        for (group, plural, json) in &docs {
            object_samples(group, plural, json, &mut samples);
        }
        encode_samples(&mut encoder, &samples)
    }
}

/// Write `samples` grouped under their families, in [`FAMILIES`] order.
pub fn encode_samples(
    encoder: &mut DescriptorEncoder,
    samples: &[Sample],
) -> Result<(), fmt::Error> {
    let mut by_family: Vec<Vec<&Sample>> = vec![Vec::new(); FAMILIES.len()];
    for s in samples {
        if let Some(i) = FAMILIES.iter().position(|f| f.name == s.family) {
            by_family[i].push(s);
        }
    }
    for (desc, samples) in FAMILIES.iter().zip(by_family) {
        let ty = if desc.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut fam = encoder.encode_descriptor(desc.name, desc.help, None, ty)?;
        for s in samples {
            let e = fam.encode_family(&s.labels)?;
            if desc.counter {
                ConstCounter::new(s.value).encode(e)?;
            } else {
                ConstGauge::new(s.value).encode(e)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_change_table() {
        let cases = [
            (None, None, false),
            (None, Some((1, 1)), true),
            (Some((1, 1)), Some((1, 1)), false),
            (Some((1, 1)), None, false),
            (Some((1, 1)), Some((2, 1)), true),
            (Some((2, 1)), Some((2, 3)), true),
        ];
        for (last, now, want) in cases {
            assert_eq!(leader_changed(last, now), want, "{last:?} -> {now:?}");
        }
    }

    fn gauge(v: &RaftView, name: &str) -> f64 {
        raft_gauges(v)
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, x)| x)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn raft_gauges_table() {
        let leader = RaftView {
            id: 1,
            term: 3,
            leader: Some(1),
            committed: 120,
            applied: 117,
            last_log: 121,
            snapshot: 100,
            members: 3,
            snapshot_bytes: 4096,
        };
        let follower = RaftView {
            leader: Some(2),
            committed: 10,
            applied: 12,
            ..leader
        };
        let orphan = RaftView {
            leader: None,
            ..leader
        };
        let cases = [
            (&leader, "kith_raft_is_leader", 1.0),
            (&leader, "kith_raft_apply_lag", 3.0),
            (&leader, "kith_raft_commit_index", 120.0),
            (&leader, "kith_raft_term", 3.0),
            (&leader, "kith_raft_members", 3.0),
            (&leader, "kith_raft_snapshot_size_bytes", 4096.0),
            (&follower, "kith_raft_is_leader", 0.0),
            (&follower, "kith_raft_has_leader", 1.0),
            // a saved commit pointer behind what is applied never makes a negative lag
            (&follower, "kith_raft_apply_lag", 0.0),
            (&follower, "kith_raft_commit_index", 12.0),
            (&orphan, "kith_raft_has_leader", 0.0),
        ];
        for (v, name, want) in cases {
            assert_eq!(gauge(v, name), want, "{name} of {v:?}");
        }
    }

    #[test]
    fn storage_resource_names() {
        assert_eq!(storage_resource("", "pods"), "pods");
        assert_eq!(storage_resource("apps", "deployments"), "deployments.apps");
    }

    #[test]
    fn counters_count() {
        let c = control();
        let before = c.reconcile_counts("test-only");
        c.reconciled("test-only", true);
        c.reconciled("test-only", false);
        let after = c.reconcile_counts("test-only");
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 1));
    }
}
