//! Node lifecycle: notices nodes that stopped reporting, marks them as Kubernetes'
//! node-lifecycle controller does, and evicts pods that do not tolerate that.
//!
//! ```text
//!  watch nodes ─────────────────────┐
//!  watch leases (kube-node-lease) ──┼─▶ assess(node, lease, now, grace)
//!  watch pods ──────────────────────┘    │  (also every few seconds: silence makes no event)
//!                                        ├─▶ nodes/status: agent conditions Unknown
//!                                        ├─▶ spec.taints: unreachable | not-ready, NoSchedule+NoExecute
//!                                        └─▶ Event NodeNotReady
//!  pods bound to the node ─▶ eviction(pod, taints, now)
//!                              ├─ Now ──▶ DisruptionTarget, graceful delete, Event TaintManagerEviction
//!                              └─ At(t) ▶ look again at t
//! ```
//!
//! Both decisions are pure ([`assess`], [`eviction`]); the loop only feeds them the watched
//! objects and the wall clock (leases carry wall-clock times) and writes what they return.
//!
//! Silence is judged from the control plane's side only: a node it cannot hear is
//! unreachable. Telling a partitioned node (its peers still hear it, nothing should be
//! evicted) from a dead one is left to [`assess`]'s inputs growing a peer view.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;

use crate::events::{record, reference, EventType};
use crate::scheduler::selectors::tolerates;

/// Taint of a node the control plane has not heard from within the grace period.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node whose agent reports Ready=False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Where agents keep their heartbeat Leases, one per node, named after it.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The events' source for node changes, as Kubernetes names it.
const NODE_COMPONENT: &str = "node-controller";
/// The events' source for evictions, as Kubernetes (1.29+) names it.
const EVICTION_COMPONENT: &str = "taint-eviction-controller";
/// Conditions the agent owns: when it falls silent, none of them can be trusted.
const AGENT_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const NO_SCHEDULE: &str = "NoSchedule";
const NO_EXECUTE: &str = "NoExecute";

/// How the controller judges silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a node may go without renewing its Lease (or posting status) before it
    /// counts as unreachable; Kubernetes' `--node-monitor-grace-period`.
    pub grace: Duration,
    /// How often every node is looked at even without a watch event, since silence
    /// produces none.
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace: Duration::from_secs(40),
            resync: Duration::from_secs(5),
        }
    }
}

/// What the control plane believes about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// New, has never posted a Ready condition, and its grace has not run out: left alone.
    Unreported,
    /// Heard from recently, says Ready=True.
    Ready,
    /// Heard from recently, says Ready=False.
    NotReady,
    /// Not heard from within the grace period (or still marked Unknown from then).
    Unknown,
}

/// The decision for one node: its health and what to write so the node says so.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub health: Health,
    /// New `status.conditions`, when they have to change.
    pub conditions: Option<Vec<NodeCondition>>,
    /// New `spec.taints`, when they have to change.
    pub taints: Option<Vec<Taint>>,
    /// When the node's silence would run past the grace period, if it has not already.
    pub expires: Option<Timestamp>,
}

/// What to do with one pod bound to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Keep,
    Now,
    /// Its tolerations run out then.
    At(Timestamp),
}

/// Why the controller could not carry a step out.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{verb} {what}: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn conditions(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    conditions(node).iter().find(|c| c.type_ == "Ready")
}

/// The health the node's stored Ready condition states, before any judgement of silence.
pub fn reported(node: &Node) -> Health {
    match ready_condition(node).map(|c| c.status.as_str()) {
        None => Health::Unreported,
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        Some(_) => Health::Unknown,
    }
}

/// The last time the node's agent gave a sign of life: its Lease renewal or its own
/// status heartbeat, whichever is later.
fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let lease_time = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0);
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    lease_time.max(heartbeat)
}

/// The conditions of a node gone silent: every agent-owned condition Unknown, as
/// Kubernetes words it. `None` when they say so already.
fn silenced_conditions(node: &Node, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let mut conds = conditions(node).to_vec();
    let mut changed = false;
    for ty in AGENT_CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == ty) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                // The heartbeat stays: it is the agent's last word, not ours.
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                conds.push(NodeCondition {
                    type_: ty.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conds)
}

/// The taint key the controller wants for a health, with both effects.
fn wanted_key(health: Health) -> Option<&'static str> {
    match health {
        Health::Ready | Health::Unreported => None,
        Health::NotReady => Some(NOT_READY),
        Health::Unknown => Some(UNREACHABLE),
    }
}

fn owned(t: &Taint) -> bool {
    (t.key == UNREACHABLE || t.key == NOT_READY)
        && (t.effect == NO_SCHEDULE || t.effect == NO_EXECUTE)
}

/// `existing` with the controller's taints made to match `health`; other taints are
/// untouched, kept ones keep their timeAdded (evictions count from it). `None`: no change.
fn reconcile_taints(existing: &[Taint], health: Health, now: Timestamp) -> Option<Vec<Taint>> {
    let key = wanted_key(health);
    let mut taints: Vec<Taint> = existing
        .iter()
        .filter(|t| !owned(t) || Some(t.key.as_str()) == key)
        .cloned()
        .collect();
    if let Some(key) = key {
        for effect in [NO_SCHEDULE, NO_EXECUTE] {
            if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                taints.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: Some(Time(now)),
                });
            }
        }
    }
    (taints != existing).then_some(taints)
}

/// Judge one node from its stored state, its Lease in `kube-node-lease` (if any), the wall
/// clock and the grace period. A node counts as gone when neither its Lease nor its status
/// heartbeat is newer than `max(grace, leaseDurationSeconds)`: an agent that promised a
/// longer lease is not given up on before its promise lapses. A node that never gave any
/// sign of life is timed from its creation.
pub fn assess(node: &Node, lease: Option<&Lease>, now: Timestamp, grace: Duration) -> Assessment {
    let lease_duration = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.lease_duration_seconds)
        .map_or(Duration::ZERO, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    let window = SignedDuration::try_from(grace.max(lease_duration)).unwrap_or(SignedDuration::MAX);
    let since = last_heard(node, lease)
        .or_else(|| node.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let deadline = since.checked_add(window).unwrap_or(Timestamp::MAX);
    let (health, conditions, expires) = if now > deadline {
        (Health::Unknown, silenced_conditions(node, now), None)
    } else {
        (reported(node), None, Some(deadline))
    };
    let existing = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    // A new node gets its startup grace untouched, as in Kubernetes.
    let taints = match health {
        Health::Unreported => None,
        h => reconcile_taints(existing, h, now),
    };
    Assessment {
        health,
        conditions,
        taints,
        expires,
    }
}

/// The event the controller records when a node's health goes from `before` to `after`:
/// only the fall from Ready (the agent announces its own recovery).
pub fn node_event(before: Health, after: Health) -> Option<&'static str> {
    match (before, after) {
        (Health::Ready, Health::NotReady | Health::Unknown) => Some("NodeNotReady"),
        _ => None,
    }
}

/// Whether the pod is already being deleted (by us or anyone): nothing left to do.
fn settled(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// When a pod bound to a node with `taints` has to go. Every NoExecute taint must be
/// tolerated, or it goes now; a toleration with `tolerationSeconds` lets it stay that long
/// after the taint was added (a taint without timeAdded counts from `now`), one without
/// lets it stay for good. The earliest deadline of all matching tolerations wins, as in
/// Kubernetes' taint manager.
pub fn eviction(pod: &Pod, taints: &[Taint], now: Timestamp) -> Eviction {
    if settled(pod) {
        return Eviction::Keep;
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut earliest: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let mut tolerated = false;
        for t in tolerations.iter().filter(|t| tolerates(t, taint)) {
            tolerated = true;
            if let Some(secs) = t.toleration_seconds {
                let at = added
                    .checked_add(SignedDuration::from_secs(secs.max(0)))
                    .unwrap_or(Timestamp::MAX);
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        if !tolerated {
            return Eviction::Now;
        }
    }
    match earliest {
        None => Eviction::Keep,
        Some(at) if at <= now => Eviction::Now,
        Some(at) => Eviction::At(at),
    }
}

fn node_ref(node: &Node) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: node.metadata.name.clone(),
        uid: node.metadata.uid.clone(),
        ..Default::default()
    }
}

fn api_err(verb: &'static str, what: String) -> impl FnOnce(kube::Error) -> LifecycleError {
    move |source| LifecycleError::Api { verb, what, source }
}

/// Write the node's conditions, only over the version that was judged.
async fn write_conditions(
    api: &Api<Node>,
    node: &Node,
    conds: &[NodeCondition],
) -> Result<Node, LifecycleError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "status": {"conditions": conds},
    });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("update conditions of node", name))
}

/// Write the node's taints, only over the version that was judged.
async fn write_taints(
    api: &Api<Node>,
    node: &Node,
    taints: &[Taint],
) -> Result<Node, LifecycleError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let taints = if taints.is_empty() {
        serde_json::Value::Null
    } else {
        json!(taints)
    };
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": taints},
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("update taints of node", name))
}

/// Mark the pod as Kubernetes' taint manager does, then delete it gracefully: the agent,
/// once it hears, stops the containers and finishes the deletion.
async fn evict(client: &Client, pod: &Pod) -> Result<(), LifecycleError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut conds = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !conds.iter().any(|c| c.type_ == "DisruptionTarget") {
        conds.push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            last_transition_time: Some(Time(Timestamp::now())),
            ..Default::default()
        });
        let patch = json!({"status": {"conditions": conds}});
        // The condition only explains the deletion; failing to write it must not stop it.
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "could not set DisruptionTarget");
        }
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    api.delete(&name, &params)
        .await
        .map(|_| ())
        .map_err(api_err("delete pod", format!("{ns}/{name}")))?;
    record(
        client,
        &reference(pod),
        EventType::Normal,
        "TaintManagerEviction",
        &format!("Marking for deletion Pod {ns}/{name}"),
        EVICTION_COMPONENT,
    )
    .await;
    Ok(())
}

/// What the loop remembers between passes.
#[derive(Default)]
struct Memory {
    /// Pods (by uid) already evicted, while the watch has not shown their deletion yet.
    evicted: HashSet<String>,
    /// When taints without timeAdded (set by someone else) were first seen, so their
    /// tolerationSeconds run from a fixed point rather than from every pass.
    first_seen: HashMap<(String, String, String), Timestamp>,
}

impl Memory {
    /// The node's taints, each with a timeAdded.
    fn dated_taints(&mut self, node: &str, taints: &[Taint], now: Timestamp) -> Vec<Taint> {
        taints
            .iter()
            .map(|t| {
                let mut t = t.clone();
                if t.time_added.is_none() && t.effect == NO_EXECUTE {
                    let key = (node.to_string(), t.key.clone(), t.effect.clone());
                    t.time_added = Some(Time(*self.first_seen.entry(key).or_insert(now)));
                }
                t
            })
            .collect()
    }
}

fn earlier(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One look at every node and the pods bound to it. Returns when to look again at the
/// latest: the earliest lease expiry or toleration deadline.
async fn pass(
    client: &Client,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    pods: &Store<Pod>,
    config: &Config,
    memory: &mut Memory,
) -> Option<Timestamp> {
    let now = Timestamp::now();
    let node_api: Api<Node> = Api::all(client.clone());
    let all_pods = pods.state();
    let mut by_node: HashMap<&str, Vec<&Arc<Pod>>> = HashMap::new();
    for pod in &all_pods {
        if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            by_node.entry(n).or_default().push(pod);
        }
    }
    let mut next = None;
    let mut names = HashSet::new();
    for node in nodes.state() {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        names.insert(name.clone());
        let lease = leases.get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
        let verdict = assess(&node, lease.as_deref(), now, config.grace);
        next = earlier(next, verdict.expires);
        let mut current = Node::clone(&node);
        if let Some(conds) = &verdict.conditions {
            match write_conditions(&node_api, &current, conds).await {
                Ok(n) => current = n,
                Err(e) => {
                    // Most likely a newer version arrived meanwhile: judge that one next.
                    tracing::debug!(error = %e, "node lifecycle");
                    continue;
                }
            }
        }
        // Against what the node said before this pass, as Kubernetes does: an agent that
        // posts Ready=True and goes silent again is told about again.
        if let Some(reason) = node_event(reported(&node), verdict.health) {
            tracing::info!(node = %name, health = ?verdict.health, "node is not ready");
            record(
                client,
                &node_ref(&current),
                EventType::Normal,
                reason,
                &format!("Node {name} status is now: {reason}"),
                NODE_COMPONENT,
            )
            .await;
        }
        if let Some(taints) = &verdict.taints {
            match write_taints(&node_api, &current, taints).await {
                Ok(n) => current = n,
                Err(e) => tracing::debug!(error = %e, "node lifecycle"),
            }
        }
        let taints = current
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        let taints = memory.dated_taints(&name, taints, now);
        for pod in by_node.get(name.as_str()).into_iter().flatten() {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match eviction(pod, &taints, now) {
                Eviction::Keep => {}
                Eviction::At(at) => next = earlier(next, Some(at)),
                Eviction::Now if memory.evicted.contains(&uid) => {}
                Eviction::Now => match evict(client, pod).await {
                    Ok(()) => {
                        tracing::info!(pod = ?pod.metadata.name, node = %name, "evicted");
                        memory.evicted.insert(uid);
                    }
                    Err(e) => tracing::debug!(error = %e, "node lifecycle"),
                },
            }
        }
    }
    memory.first_seen.retain(|(n, _, _), _| names.contains(n));
    let live: HashSet<&str> = all_pods
        .iter()
        .filter(|p| !settled(p))
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    memory.evicted.retain(|u| live.contains(u.as_str()));
    next
}

/// Run the controller with the default grace period until the task is dropped.
pub async fn run(client: Client) {
    run_with(client, Config::default()).await;
}

/// Run the controller until the task is dropped.
pub async fn run_with(client: Client, config: Config) {
    let wake = Arc::new(Notify::new());
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (leases, leases_w) = reflector::store::<Lease>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let mirrors = futures::future::join3(
        crate::mirror::mirror(
            Api::<Node>::all(client.clone()),
            nodes_w,
            wake.clone(),
            "node lifecycle",
        ),
        crate::mirror::mirror(
            Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
            leases_w,
            wake.clone(),
            "node lifecycle",
        ),
        crate::mirror::mirror(
            Api::<Pod>::all(client.clone()),
            pods_w,
            wake.clone(),
            "node lifecycle",
        ),
    );
    let control = async {
        for ready in [
            nodes.wait_until_ready().await,
            leases.wait_until_ready().await,
            pods.wait_until_ready().await,
        ] {
            if ready.is_err() {
                return;
            }
        }
        let mut memory = Memory::default();
        loop {
            let next = pass(&client, &nodes, &leases, &pods, &config, &mut memory).await;
            // Deadlines are wall-clock (leases are); a little slack lands past them.
            let until_next = next
                .and_then(|at| Duration::try_from(at.duration_since(Timestamp::now())).ok())
                .map(|d| d + Duration::from_millis(100));
            let sleep = until_next.map_or(config.resync, |d| d.min(config.resync));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    };
    tokio::select! {
        _ = mirrors => tracing::warn!("node lifecycle watches ended"),
        _ = control => tracing::warn!("node lifecycle controller stopped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    const GRACE: Duration = Duration::from_secs(40);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn node(ready: Option<(&str, Option<i64>)>, taints: &[Taint]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("edge".into()),
                creation_timestamp: Some(Time(at(0))),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!taints.is_empty()).then(|| taints.to_vec()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: ready.map(|(status, heartbeat)| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: status.into(),
                        reason: Some("KubeletReady".into()),
                        last_heartbeat_time: heartbeat.map(|s| Time(at(s))),
                        last_transition_time: Some(Time(at(0))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    /// A node this controller already marked Unknown: every agent condition says so.
    fn silenced(taints: &[Taint]) -> Node {
        let mut n = node(Some(("True", Some(0))), taints);
        let conds = silenced_conditions(&n, at(50));
        if let Some(s) = n.status.as_mut() {
            s.conditions = conds;
        }
        n
    }

    fn lease(renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
        }
    }

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: added.map(|s| Time(at(s))),
        }
    }

    fn keys(taints: &[Taint]) -> Vec<String> {
        taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect()
    }

    #[test]
    fn health_and_taints() {
        let dedicated = taint("dedicated", NO_SCHEDULE, None);
        let unreachable = [
            taint(UNREACHABLE, NO_SCHEDULE, Some(50)),
            taint(UNREACHABLE, NO_EXECUTE, Some(50)),
        ];
        let not_ready = [
            taint(NOT_READY, NO_SCHEDULE, Some(50)),
            taint(NOT_READY, NO_EXECUTE, Some(50)),
        ];
        let u = |e: &str| format!("{UNREACHABLE}:{e}");
        let nr = |e: &str| format!("{NOT_READY}:{e}");
        type Row = (
            &'static str,
            Node,
            Option<Lease>,
            i64,
            Health,
            bool,
            Option<Vec<String>>,
            Option<i64>,
        );
        // (case, node, lease, now, health, conditions rewritten, new taints, expires)
        let rows: Vec<Row> = vec![
            (
                "fresh lease, Ready",
                node(Some(("True", None)), &[]),
                Some(lease(90, 40)),
                100,
                Health::Ready,
                false,
                None,
                Some(130),
            ),
            (
                "lease exactly at the grace edge",
                node(Some(("True", None)), &[]),
                Some(lease(60, 40)),
                100,
                Health::Ready,
                false,
                None,
                Some(100),
            ),
            (
                "lease just past grace",
                node(Some(("True", None)), &[]),
                Some(lease(59, 40)),
                100,
                Health::Unknown,
                true,
                Some(vec![u(NO_SCHEDULE), u(NO_EXECUTE)]),
                None,
            ),
            (
                "longer lease duration is honoured",
                node(Some(("True", None)), &[]),
                Some(lease(0, 300)),
                100,
                Health::Ready,
                false,
                None,
                Some(300),
            ),
            (
                "status heartbeat newer than lease",
                node(Some(("True", Some(95))), &[]),
                Some(lease(0, 40)),
                100,
                Health::Ready,
                false,
                None,
                Some(135),
            ),
            (
                "no lease, old heartbeat",
                node(Some(("True", Some(10))), &[]),
                None,
                100,
                Health::Unknown,
                true,
                Some(vec![u(NO_SCHEDULE), u(NO_EXECUTE)]),
                None,
            ),
            (
                "no lease, no heartbeat: timed from creation",
                node(Some(("True", None)), &[]),
                None,
                30,
                Health::Ready,
                false,
                None,
                Some(40),
            ),
            (
                "never reported, within grace: untouched",
                node(None, &[]),
                None,
                30,
                Health::Unreported,
                false,
                None,
                Some(40),
            ),
            (
                "never reported, past grace",
                node(None, &[]),
                None,
                41,
                Health::Unknown,
                true,
                Some(vec![u(NO_SCHEDULE), u(NO_EXECUTE)]),
                None,
            ),
            (
                "Ready=False tainted not-ready",
                node(Some(("False", None)), std::slice::from_ref(&dedicated)),
                Some(lease(90, 40)),
                100,
                Health::NotReady,
                false,
                Some(vec![
                    "dedicated:NoSchedule".into(),
                    nr(NO_SCHEDULE),
                    nr(NO_EXECUTE),
                ]),
                Some(130),
            ),
            (
                "not-ready swapped for unreachable",
                node(Some(("False", None)), &not_ready),
                Some(lease(0, 40)),
                100,
                Health::Unknown,
                true,
                Some(vec![u(NO_SCHEDULE), u(NO_EXECUTE)]),
                None,
            ),
            (
                "already unknown and tainted: nothing to write",
                silenced(&unreachable),
                Some(lease(0, 40)),
                100,
                Health::Unknown,
                false,
                None,
                None,
            ),
            (
                "lease renewed, condition still Unknown: waits for the agent",
                node(Some(("Unknown", None)), &unreachable),
                Some(lease(99, 40)),
                100,
                Health::Unknown,
                false,
                None,
                Some(139),
            ),
            (
                "Ready again: taints removed, others kept",
                node(
                    Some(("True", Some(99))),
                    &[
                        unreachable[0].clone(),
                        dedicated.clone(),
                        unreachable[1].clone(),
                    ],
                ),
                Some(lease(99, 40)),
                100,
                Health::Ready,
                false,
                Some(vec!["dedicated:NoSchedule".into()]),
                Some(139),
            ),
        ];
        for (case, node, lease, now, health, rewritten, taints, expires) in rows {
            let a = assess(&node, lease.as_ref(), at(now), GRACE);
            assert_eq!(a.health, health, "{case}");
            assert_eq!(a.conditions.is_some(), rewritten, "{case}");
            assert_eq!(a.taints.as_deref().map(keys), taints, "{case}");
            assert_eq!(a.expires, expires.map(at), "{case}");
            for t in a.taints.iter().flatten().filter(|t| owned(t)) {
                assert!(t.time_added.is_some(), "{case}: {} has no timeAdded", t.key);
            }
        }
    }

    #[test]
    fn new_taints_are_dated_now_and_kept_ones_keep_their_date() {
        let n = node(
            Some(("True", None)),
            &[taint(UNREACHABLE, NO_EXECUTE, Some(50))],
        );
        let a = assess(&n, Some(&lease(0, 40)), at(100), GRACE);
        let taints = a.taints.unwrap();
        let added = |effect: &str| {
            taints
                .iter()
                .find(|t| t.effect == effect)
                .and_then(|t| t.time_added.as_ref())
                .map(|t| t.0)
        };
        assert_eq!(added(NO_EXECUTE), Some(at(50)));
        assert_eq!(added(NO_SCHEDULE), Some(at(100)));
    }

    #[test]
    fn silenced_conditions_read_as_kubernetes_writes_them() {
        let n = node(Some(("True", Some(10))), &[]);
        let a = assess(&n, None, at(100), GRACE);
        let conds = a.conditions.unwrap();
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(ready.last_heartbeat_time, Some(Time(at(10))));
        assert_eq!(ready.last_transition_time, Some(Time(at(100))));
        let memory = conds.iter().find(|c| c.type_ == "MemoryPressure").unwrap();
        assert_eq!(memory.status, "Unknown");
        assert_eq!(memory.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert_eq!(memory.last_heartbeat_time, Some(Time(at(0))));
        let types: Vec<&str> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, AGENT_CONDITIONS);
    }

    #[test]
    fn node_events() {
        use Health::*;
        let rows = [
            (Ready, Unknown, Some("NodeNotReady")),
            (Ready, NotReady, Some("NodeNotReady")),
            (Ready, Ready, None),
            (Unknown, Unknown, None),
            (NotReady, Unknown, None),
            (Unknown, Ready, None),
            (Unreported, Unknown, None),
            (Unreported, Ready, None),
        ];
        for (before, after, want) in rows {
            assert_eq!(node_event(before, after), want, "{before:?} -> {after:?}");
        }
    }

    fn toleration(
        key: Option<&str>,
        op: &str,
        effect: Option<&str>,
        secs: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(str::to_string),
            operator: Some(op.into()),
            effect: effect.map(str::to_string),
            toleration_seconds: secs,
            value: None,
        }
    }

    fn pod(tolerations: Vec<Toleration>, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                deletion_timestamp: deleting.then(|| Time(at(0))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                node_name: Some("edge".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn eviction_timing() {
        let unreachable = vec![
            taint(UNREACHABLE, NO_SCHEDULE, Some(100)),
            taint(UNREACHABLE, NO_EXECUTE, Some(100)),
        ];
        let both = vec![
            taint(UNREACHABLE, NO_EXECUTE, Some(100)),
            taint("maintenance", NO_EXECUTE, Some(200)),
        ];
        let undated = vec![taint(UNREACHABLE, NO_EXECUTE, None)];
        let default_300 = toleration(Some(UNREACHABLE), "Exists", Some(NO_EXECUTE), Some(300));
        let forever = toleration(Some(UNREACHABLE), "Exists", Some(NO_EXECUTE), None);
        let everything = toleration(None, "Exists", None, None);
        let maintenance_60 = toleration(Some("maintenance"), "Exists", None, Some(60));
        let rows: Vec<(&str, Pod, Vec<Taint>, i64, Eviction)> = vec![
            ("no taints", pod(vec![], false), vec![], 100, Eviction::Keep),
            (
                "NoSchedule only",
                pod(vec![], false),
                vec![taint(UNREACHABLE, NO_SCHEDULE, Some(100))],
                100,
                Eviction::Keep,
            ),
            (
                "untolerated NoExecute",
                pod(vec![], false),
                unreachable.clone(),
                100,
                Eviction::Now,
            ),
            (
                "toleration for NoSchedule only",
                pod(
                    vec![toleration(
                        Some(UNREACHABLE),
                        "Exists",
                        Some(NO_SCHEDULE),
                        None,
                    )],
                    false,
                ),
                unreachable.clone(),
                100,
                Eviction::Now,
            ),
            (
                "default 300 s, early",
                pod(vec![default_300.clone()], false),
                unreachable.clone(),
                150,
                Eviction::At(at(400)),
            ),
            (
                "default 300 s, run out",
                pod(vec![default_300.clone()], false),
                unreachable.clone(),
                400,
                Eviction::Now,
            ),
            (
                "3600 s",
                pod(
                    vec![toleration(
                        Some(UNREACHABLE),
                        "Exists",
                        Some(NO_EXECUTE),
                        Some(3600),
                    )],
                    false,
                ),
                unreachable.clone(),
                200,
                Eviction::At(at(3700)),
            ),
            (
                "forever",
                pod(vec![forever.clone()], false),
                unreachable.clone(),
                100_000,
                Eviction::Keep,
            ),
            (
                "empty key Exists tolerates all",
                pod(vec![everything.clone()], false),
                both.clone(),
                100_000,
                Eviction::Keep,
            ),
            (
                "the shortest matching toleration wins",
                pod(vec![forever.clone(), default_300.clone()], false),
                unreachable.clone(),
                150,
                Eviction::At(at(400)),
            ),
            (
                "one of two taints untolerated",
                pod(vec![forever.clone()], false),
                both.clone(),
                150,
                Eviction::Now,
            ),
            (
                "each taint from its own timeAdded",
                pod(vec![default_300.clone(), maintenance_60.clone()], false),
                both.clone(),
                150,
                Eviction::At(at(260)),
            ),
            (
                "negative seconds mean now",
                pod(
                    vec![toleration(Some(UNREACHABLE), "Exists", None, Some(-5))],
                    false,
                ),
                unreachable.clone(),
                100,
                Eviction::Now,
            ),
            (
                "undated taint counts from now",
                pod(vec![default_300.clone()], false),
                undated,
                1000,
                Eviction::At(at(1300)),
            ),
            (
                "already being deleted",
                pod(vec![], true),
                unreachable.clone(),
                100,
                Eviction::Keep,
            ),
        ];
        for (case, pod, taints, now, want) in rows {
            assert_eq!(eviction(&pod, &taints, at(now)), want, "{case}");
        }
    }

    #[test]
    fn undated_taints_are_dated_once() {
        let mut memory = Memory::default();
        let undated = [taint(UNREACHABLE, NO_EXECUTE, None)];
        let first = memory.dated_taints("edge", &undated, at(10));
        let later = memory.dated_taints("edge", &undated, at(20));
        assert_eq!(first[0].time_added, Some(Time(at(10))));
        assert_eq!(later[0].time_added, Some(Time(at(10))));
    }
}
