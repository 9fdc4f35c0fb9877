//! DaemonSet controller: one pod per eligible node, rolled to a new template node by node.
//!
//! ```text
//!  DaemonSet ─┐                         ┌─▶ create a pod for each eligible node without one
//!  Nodes ─────┼─▶ reconcile (pure) ──▶ Plan ─▶ delete pods on nodes no longer eligible,
//!  Pods ──────┘   (fresh lists)         │      failed pods, duplicates
//!                                       ├─▶ rolling update: old-hash pods by maxUnavailable
//!                                       │   (delete first) or maxSurge (create first)
//!                                       └─▶ status (desired, current, misscheduled, ready,
//!                                           updated, available, unavailable, generation)
//! ```
//!
//! As in Kubernetes 1.33 the controller does not bind pods itself: it creates each pod with
//! a required node affinity `matchFields metadata.name In [<node>]` (replacing the
//! template's required terms, which the node already satisfies) and the scheduler binds it,
//! so resources and ports are checked in one place. Pods carry the tolerations Kubernetes
//! adds to daemon pods (not-ready/unreachable NoExecute, pressure and unschedulable
//! NoSchedule, network-unavailable for hostNetwork); eligibility is judged with them, and
//! node taints come from `spec.taints` only, as the DaemonSet controller reads them.
//!
//! A pod's revision is its `controller-revision-hash` label: the deployment controller's
//! template hash of the DaemonSet's template and collision count. Each template is also
//! recorded as a ControllerRevision `<ds>-<hash>` (see [`super::history`]) before pods are
//! made from it, so `kubectl rollout history|undo daemonset/x` work; old ones are pruned
//! beyond `revisionHistoryLimit` unless pods still run them. Differences from Kubernetes,
//! kept small on purpose: a name taken by another owner's revision is not resolved by a
//! collision count (the pass fails and retries), no `pod-template-generation` label, no adoption of orphan pods, failed pods are
//! deleted without the per-node back-off (there is no agent to fight with), and creations
//! are not batched by slow start.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;

use super::deployment::{pod_template_hash, scaled_value};
use super::replicaset::{controller_of, controller_ref, is_ready};
use crate::scheduler::selectors::{node_selector_terms_match, tolerated};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "daemonset-controller";
/// The label naming the template revision a pod was made from.
pub const HASH_LABEL: &str = super::history::HASH_LABEL;
/// A pass with nothing pending still runs this often, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("daemonset has no {0}")]
    Missing(&'static str),
    #[error("daemonset rolling update: {0}")]
    Rolling(#[from] super::deployment::Error),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// What one pass should do for a DaemonSet.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes that get a new pod, in name order.
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
    /// The status the DaemonSet should report, from the nodes and pods seen this pass.
    pub status: DaemonSetStatus,
    /// When a ready pod becomes available (minReadySeconds), look again then.
    pub requeue_after: Option<Duration>,
}

/// The tolerations Kubernetes adds to every daemon pod, so that node trouble neither keeps
/// a daemon off a node nor evicts it (`hostNetwork` pods also ignore a missing network).
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut add = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        add.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in add {
        // Kubernetes replaces a same key+effect toleration rather than adding a second one.
        out.retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)));
        out.push(Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        });
    }
    out
}

/// Whether a daemon pod should be started on `node`, and whether one already there may stay.
/// Node name, nodeSelector and required node affinity decide both; an untolerated
/// NoSchedule taint keeps new pods off but lets running ones stay, NoExecute removes them.
pub fn should_run(spec: &PodSpec, tolerations: &[Toleration], node: &Node) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return (false, false);
        }
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = terms {
        if !node_selector_terms_match(&required.node_selector_terms, name, &labels) {
            return (false, false);
        }
    }
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let blocks = |effects: &[&str]| {
        taints
            .iter()
            .any(|t| effects.contains(&t.effect.as_str()) && !tolerated(tolerations, t))
    };
    if blocks(&["NoSchedule", "NoExecute"]) {
        return (false, !blocks(&["NoExecute"]));
    }
    (true, true)
}

/// The node a daemon pod is for: where it is bound, or else the single node its
/// `matchFields metadata.name In [..]` affinity names.
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let [field] = term.match_fields.as_deref()? else {
        return None;
    };
    match (
        field.key.as_str(),
        field.operator.as_str(),
        field.values.as_deref(),
    ) {
        ("metadata.name", "In", Some([node])) => Some(node.as_str()),
        _ => None,
    }
}

/// `affinity` with its required node terms replaced by "exactly `node`", as Kubernetes
/// pins a daemon pod; preferred terms and pod (anti-)affinity are kept.
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let selector = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
            ..Default::default()
        }],
    };
    let mut a = affinity.unwrap_or_default();
    let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(selector);
    a
}

/// The revision hash of a DaemonSet's current template.
pub fn revision_hash(ds: &DaemonSet) -> Result<String, Error> {
    let spec = ds.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    Ok(pod_template_hash(&spec.template, collisions))
}

/// What to change in the DaemonSet's ControllerRevisions, given those of its namespace and
/// its pods (whose revisions are kept). Pure.
pub fn history(
    ds: &DaemonSet,
    revisions: &[ControllerRevision],
    pods: &[Pod],
) -> Result<super::history::HistoryPlan, Error> {
    let spec = ds.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let owner = controller_ref(ds).ok_or(Error::Missing("name or uid"))?;
    let uid = owner.uid.clone();
    let hash = revision_hash(ds)?;
    let current = super::history::revision_for(owner, &ds.metadata, &spec.template, &hash)?;
    // A DaemonSet's pods carry the hash; its revisions are named `<ds>-<hash>`.
    let live = pods
        .iter()
        .filter(|p| controller_of(*p).is_some_and(|o| o.uid == uid))
        .filter_map(|p| p.labels().get(HASH_LABEL))
        .map(|h| format!("{}-{h}", ds.name_any()))
        .collect();
    Ok(super::history::plan(
        current,
        revisions,
        spec.revision_history_limit,
        &live,
    ))
}

/// The pod a DaemonSet runs on `node`: its template with the daemon tolerations, the
/// revision label and the node pin, named `<ds>-<random>`, controlled by it.
pub fn pod_for_node(ds: &DaemonSet, hash: &str, node: &str) -> Result<Pod, Error> {
    let spec = ds.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let owner = controller_ref(ds).ok_or(Error::Missing("name or uid"))?;
    let tm = spec.template.metadata.clone().unwrap_or_default();
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.tolerations = Some(daemon_tolerations(&pod_spec));
    pod_spec.affinity = Some(pin_to_node(pod_spec.affinity.take(), node));
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut pod = Pod {
        spec: Some(pod_spec),
        ..Default::default()
    };
    pod.metadata.generate_name = Some(format!("{}-", ds.name_any()));
    pod.metadata.namespace = ds.metadata.namespace.clone();
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = tm.annotations;
    pod.metadata.finalizers = tm.finalizers;
    pod.metadata.owner_references = Some(vec![owner]);
    Ok(pod)
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn updated(pod: &Pod, hash: &str) -> bool {
    pod.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

/// How long until a pod counts as available: `Some(ZERO)` now, `None` not ready at all.
fn available_in(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> Option<Duration> {
    if !is_ready(pod) {
        return None;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    // A Ready condition without a transition time has been ready as long as we can tell.
    let (Some(since), true) = (since, min_ready_seconds > 0) else {
        return Some(Duration::ZERO);
    };
    let at = since
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        )))
        .unwrap_or(since);
    let left = now.duration_until(at);
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

/// Bound pods first, then oldest, then by name: the order in which Kubernetes picks the
/// pod of a node that counts (and the one that stays when there are several).
fn age_order(a: &Pod, b: &Pod) -> Ordering {
    let bound = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    bound(b)
        .cmp(&bound(a))
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// (maxSurge, maxUnavailable) for `desired` nodes; percentages round up. When both come to
/// zero one node may be unavailable, or the rollout could never move.
pub fn rollout_limits(ds: &DaemonSet, desired: i32) -> Result<(i32, i32), Error> {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = ru
        .and_then(|r| r.max_surge.clone())
        .unwrap_or(IntOrString::Int(0));
    let unavailable = ru
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    let s = scaled_value(&surge, desired, true)?.max(0);
    let u = scaled_value(&unavailable, desired, true)?.max(0);
    Ok(if desired > 0 && s == 0 && u == 0 {
        (0, 1)
    } else {
        (s, u)
    })
}

fn rolling_update(ds: &DaemonSet) -> bool {
    let ty = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.type_.as_deref());
    matches!(ty, None | Some("RollingUpdate"))
}

/// The one new-hash and one old-hash pod of a node, ignoring pods being deleted; `None`
/// when there are two of either (the duplicate clean-up comes first).
fn new_and_old<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().copied().filter(|p| !deleting(p)) {
        let slot = if updated(p, hash) { &mut new } else { &mut old };
        if slot.replace(p).is_some() {
            return None;
        }
    }
    Some((new, old))
}

/// Decide what to do for `ds`, given every node and every pod of its namespace. Pure.
pub fn reconcile(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    now: jiff::Timestamp,
) -> Result<Plan, Error> {
    let uid = ds.metadata.uid.as_deref().ok_or(Error::Missing("uid"))?;
    let spec = ds.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let template = spec.template.spec.clone().unwrap_or_default();
    let tolerations = daemon_tolerations(&template);
    let hash = revision_hash(ds)?;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    // Our pods by the node they are for. Finished pods already being deleted are done
    // with; pods naming no node cannot be placed in this picture and are left alone.
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if controller_of(pod).is_none_or(|r| r.uid != uid) {
            continue;
        }
        if deleting(pod) && matches!(phase(pod), Some("Succeeded" | "Failed")) {
            continue;
        }
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    for list in by_node.values_mut() {
        list.sort_by(|a, b| age_order(a, b));
    }
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let eligibility: Vec<(&str, bool, bool)> = nodes
        .iter()
        .map(|n| {
            let (run, stay) = should_run(&template, &tolerations, n);
            (n.metadata.name.as_deref().unwrap_or_default(), run, stay)
        })
        .collect();
    let desired = eligibility.iter().filter(|(_, run, _)| *run).count();
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    let (max_surge, max_unavailable) = rollout_limits(ds, desired)?;
    let surging = rolling_update(ds) && max_surge > 0;

    let mut plan = Plan::default();
    let live = |list: &[&Pod]| -> Vec<String> {
        list.iter()
            .filter(|p| !deleting(p))
            .map(|p| p.name_any())
            .collect()
    };
    // A DaemonSet being deleted stops managing pods; the garbage collector takes them.
    if ds.metadata.deletion_timestamp.is_none() {
        // Pods for nodes that are gone.
        for (node, list) in &by_node {
            if !eligibility.iter().any(|(n, _, _)| n == node) {
                plan.delete.extend(live(list));
            }
        }
        for (node, run, stay) in &eligibility {
            let list = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
            if *run && list.is_empty() {
                plan.create.push(node.to_string());
            } else if *stay {
                manage_node(list, &hash, surging, min_ready, now, &mut plan);
            } else {
                plan.delete.extend(live(list));
            }
        }
        // As in Kubernetes, the rollout moves only once the node set is in order.
        if plan.create.is_empty() && plan.delete.is_empty() && rolling_update(ds) {
            let (create, delete) =
                roll(&by_node, &hash, max_surge, max_unavailable, min_ready, now);
            plan.create = create;
            plan.delete = delete;
        }
    }

    let mut status = DaemonSetStatus {
        desired_number_scheduled: desired,
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut available, mut updated_count) = (0, 0);
    for (node, run, _) in &eligibility {
        let list = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        let Some(first) = list.first() else {
            continue;
        };
        if !run {
            status.number_misscheduled += 1;
            continue;
        }
        status.current_number_scheduled += 1;
        if is_ready(first) {
            status.number_ready += 1;
        }
        match available_in(first, min_ready, now) {
            Some(Duration::ZERO) => available += 1,
            Some(left) => {
                plan.requeue_after = Some(plan.requeue_after.map_or(left, |d| d.min(left)));
            }
            None => {}
        }
        if updated(first, &hash) {
            updated_count += 1;
        }
    }
    // Zero counts of the optional fields are left out, as Kubernetes' omitempty does.
    let nz = |v: i32| (v != 0).then_some(v);
    status.updated_number_scheduled = nz(updated_count);
    status.number_available = nz(available);
    status.number_unavailable = nz(desired - available);
    plan.status = status;
    Ok(plan)
}

/// A node that keeps its daemon: drop failed pods and surplus ones. Without surge the
/// oldest pod stays; with surge an old and a new pod may overlap until the new one is
/// available (or the old one is not ready anyway).
fn manage_node(
    list: &[&Pod],
    hash: &str,
    surging: bool,
    min_ready: i32,
    now: jiff::Timestamp,
    plan: &mut Plan,
) {
    let mut running: Vec<&Pod> = Vec::new();
    for p in list.iter().copied().filter(|p| !deleting(p)) {
        if phase(p) == Some("Failed") {
            plan.delete.push(p.name_any());
        } else {
            running.push(p);
        }
    }
    if !surging {
        plan.delete
            .extend(running.iter().skip(1).map(|p| p.name_any()));
        return;
    }
    let (mut oldest_new, mut oldest_old) = (None, None);
    for p in running {
        let slot = if updated(p, hash) {
            &mut oldest_new
        } else {
            &mut oldest_old
        };
        if slot.is_none() {
            *slot = Some(p);
        } else {
            plan.delete.push(p.name_any());
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
        if !is_ready(old) || available_in(new, min_ready, now) == Some(Duration::ZERO) {
            plan.delete.push(old.name_any());
        }
    }
}

/// One rollout step over the nodes' pods: (nodes to create a new pod on, pods to delete).
/// Without surge, old pods are deleted while fewer than maxUnavailable nodes are
/// unavailable (old pods that are unavailable anyway go at once) and the node clean-up
/// recreates them; with surge, new pods start beside old ones up to maxSurge at a time and
/// an old pod goes once its node's new pod is available.
fn roll(
    by_node: &BTreeMap<&str, Vec<&Pod>>,
    hash: &str,
    max_surge: i32,
    max_unavailable: i32,
    min_ready: i32,
    now: jiff::Timestamp,
) -> (Vec<String>, Vec<String>) {
    let available = |p: &Pod| available_in(p, min_ready, now) == Some(Duration::ZERO);
    let mut busy = 0;
    let mut forced = Vec::new();
    let mut candidates = Vec::new();
    if max_surge == 0 {
        for list in by_node.values() {
            match new_and_old(list, hash) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => busy += 1,
                Some((Some(new), None)) => {
                    if !available(new) {
                        busy += 1;
                    }
                }
                Some((None, Some(old))) if !available(old) => forced.push(old.name_any()),
                Some((None, Some(old))) => candidates.push(old.name_any()),
            }
        }
        let room = usize::try_from(max_unavailable - busy).unwrap_or(0);
        forced.extend(candidates.into_iter().take(room));
        return (Vec::new(), forced);
    }
    let mut delete = Vec::new();
    for (node, list) in by_node {
        match new_and_old(list, hash) {
            None => busy += 1,
            Some((_, None)) => {}
            Some((None, Some(old))) if !available(old) => forced.push(node.to_string()),
            Some((None, Some(_))) => candidates.push(node.to_string()),
            Some((Some(new), Some(old))) => {
                if available(new) {
                    delete.push(old.name_any());
                } else {
                    busy += 1;
                }
            }
        }
    }
    let room = usize::try_from(max_surge - busy).unwrap_or(0);
    forced.extend(candidates.into_iter().take(room));
    (forced, delete)
}

/// Whether `status` says something `old` does not; the loop writes only then.
fn status_changed(old: Option<&DaemonSetStatus>, new: &DaemonSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let z = |v: Option<i32>| v.unwrap_or(0);
    old.desired_number_scheduled != new.desired_number_scheduled
        || old.current_number_scheduled != new.current_number_scheduled
        || old.number_misscheduled != new.number_misscheduled
        || old.number_ready != new.number_ready
        || z(old.updated_number_scheduled) != z(new.updated_number_scheduled)
        || z(old.number_available) != z(new.number_available)
        || z(old.number_unavailable) != z(new.number_unavailable)
        || old.observed_generation != new.observed_generation
}

/// A merge patch setting `status`; optional counts that went to zero must be sent as
/// null, or the merge would keep their old values.
fn status_patch(status: &DaemonSetStatus) -> Result<Value, Error> {
    Ok(super::status_merge_patch(
        status,
        &[
            "updatedNumberScheduled",
            "numberAvailable",
            "numberUnavailable",
        ],
    )?)
}

struct Ctx {
    client: Client,
}

/// Run the DaemonSet controller until the task is dropped.
pub async fn run(client: Client) {
    let dss: Api<DaemonSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let revisions: Api<ControllerRevision> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let queue = super::queue::Queue::new("daemonset", dss);
    let store = queue.store();
    queue
        .owns(pods)
        .owns(revisions)
        // Any node change may change which nodes a DaemonSet wants: look at all of them.
        .watches(nodes, move |_node| {
            store
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(daemonset = %ds.name_any(), error = %err, "daemonset pass failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile_one(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached copy may predate our own last status write; read the current one.
    let Some(ds) = dss.get_opt(&ds.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = pods.list(&ListParams::default()).await?.items;
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = revisions.list(&ListParams::default()).await?.items;
    super::history::record(&revisions, &history(&ds, &existing, &all)?).await?;
    let plan = reconcile(&ds, &nodes, &all, jiff::Timestamp::now())?;
    let reference = ds.object_ref(&());
    let hash = revision_hash(&ds)?;
    for node in &plan.create {
        let pod = pod_for_node(&ds, &hash, node)?;
        super::pods::create_pod(&ctx.client, &pods, &pod, &reference, COMPONENT).await?;
    }
    for name in &plan.delete {
        super::pods::delete_pod(
            &ctx.client,
            &pods,
            name,
            &DeleteParams::default(),
            &reference,
            COMPONENT,
        )
        .await?;
    }
    if status_changed(ds.status.as_ref(), &plan.status) {
        let body = status_patch(&plan.status)?;
        match dss
            .patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(plan.requeue_after.unwrap_or(RESYNC)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
    };
    use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector as MetaSelector, ObjectMeta, OwnerReference, Time,
    };
    use serde_json::json;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("json")
    }

    /// A node: name, labels as "k=v,..", taints as "key:Effect,..".
    fn node(name: &str, labels: &str, taints: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(
                taints
                    .split(',')
                    .filter_map(|t| t.split_once(':'))
                    .map(|(k, e)| Taint {
                        key: k.into(),
                        effect: e.into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    fn ds(image: &str, surge: i32, unavailable: &str) -> DaemonSet {
        let labels: BTreeMap<String, String> = [("app".to_string(), "agent".to_string())].into();
        let unavailable = match unavailable.parse::<i32>() {
            Ok(n) => IntOrString::Int(n),
            Err(_) => IntOrString::String(unavailable.into()),
        };
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("ns".into()),
                uid: Some("ds-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: MetaSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(from_json(json!({
                        "containers": [{"name": "c", "image": image}],
                        "nodeSelector": {"role": "edge"}
                    }))),
                },
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A pod of `ds` for `node`: rev "new" (current hash), "old", flags: b=bound, R=ready
    /// since T0, d=being deleted, f=failed, o=not ours; created `age` seconds before T0.
    fn pod(name: &str, node: &str, rev: &str, flags: &str, age: i64) -> Pod {
        let hash = match rev {
            "new" => revision_hash(&ds("v2", 0, "1")).expect("hash"),
            _ => "oldhash".into(),
        };
        let mut p = pod_for_node(&ds("v2", 0, "1"), &hash, node).expect("pod");
        p.metadata.name = Some(name.into());
        if flags.contains('o') {
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: "other".into(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        p.metadata.creation_timestamp = Some(Time(ts(T0) - jiff::SignedDuration::from_secs(age)));
        if flags.contains('d') {
            p.metadata.deletion_timestamp = Some(Time(ts(T0)));
        }
        if flags.contains('b') {
            if let Some(s) = p.spec.as_mut() {
                s.node_name = Some(node.into());
            }
        }
        let mut status = PodStatus {
            phase: Some(
                if flags.contains('f') {
                    "Failed"
                } else {
                    "Running"
                }
                .into(),
            ),
            ..Default::default()
        };
        if flags.contains('R') {
            status.conditions = Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(ts(T0))),
                ..Default::default()
            }]);
        }
        p.status = Some(status);
        p
    }

    #[test]
    fn history_records_the_template_and_keeps_what_pods_run() {
        let v1 = ds("v1", 0, "1");
        let v2 = ds("v2", 0, "1");
        // The v1 revision as an earlier pass recorded it, then ten more templates.
        let first = history(&v1, &[], &[])
            .expect("plan")
            .create
            .expect("create");
        assert_eq!(first.revision, 1);
        let h1 = revision_hash(&v1).expect("hash");
        assert_eq!(first.metadata.name, Some(format!("agent-{h1}")));
        assert_eq!(
            first
                .data
                .as_ref()
                .map(|d| &d.0["spec"]["template"]["spec"]["containers"][0]["image"]),
            Some(&json!("v1"))
        );
        let mut existing = vec![first];
        for i in 0..10 {
            let mut r = history(&ds(&format!("x{i}"), 0, "1"), &existing, &[])
                .expect("plan")
                .create
                .expect("create");
            r.revision = i + 2;
            existing.push(r);
        }
        // Going to v2 with 11 old revisions: the oldest (v1) goes, unless a pod runs it.
        let v1_pod = |flags: &str| {
            let mut p = pod("p", "n1", "old", flags, 0);
            p.labels_mut().insert(HASH_LABEL.into(), h1.clone());
            p
        };
        let plan = history(&v2, &existing, &[]).expect("plan");
        assert_eq!(plan.create.map(|r| r.revision), Some(12));
        assert_eq!(plan.delete, [format!("agent-{h1}")]);
        let plan = history(&v2, &existing, &[v1_pod("")]).expect("plan");
        assert_ne!(plan.delete, [format!("agent-{h1}")]);
        assert_eq!(plan.delete.len(), 1);
        // Another owner's pod on that revision does not keep it.
        let plan = history(&v2, &existing, &[v1_pod("o")]).expect("plan");
        assert_eq!(plan.delete, [format!("agent-{h1}")]);
    }

    #[test]
    fn eligibility_table() {
        let spec: PodSpec = from_json(json!({
            "nodeSelector": {"role": "edge"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions":
                    [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}]}}}
        }));
        let tol = daemon_tolerations(&spec);
        // (case, node, (should run, may stay))
        let cases = [
            ("plain eligible node", node("n", "role=edge", ""), (true, true)),
            ("nodeSelector mismatch", node("n", "role=core", ""), (false, false)),
            ("required affinity mismatch", node("n", "role=edge,zone=b", ""), (false, false)),
            ("tolerated custom taint", node("n", "role=edge", "gpu:NoSchedule"), (true, true)),
            (
                "untolerated NoSchedule: no new pod, a running one stays",
                node("n", "role=edge", "dedicated:NoSchedule"),
                (false, true),
            ),
            (
                "untolerated NoExecute: the pod goes",
                node("n", "role=edge", "dedicated:NoExecute"),
                (false, false),
            ),
            ("PreferNoSchedule is ignored", node("n", "role=edge", "x:PreferNoSchedule"), (true, true)),
            (
                "default tolerations: unschedulable, unreachable, not-ready NoExecute",
                node(
                    "n",
                    "role=edge",
                    "node.kubernetes.io/unschedulable:NoSchedule,node.kubernetes.io/unreachable:NoExecute,node.kubernetes.io/not-ready:NoExecute",
                ),
                (true, true),
            ),
            (
                "not-ready NoSchedule is not tolerated by default",
                node("n", "role=edge", "node.kubernetes.io/not-ready:NoSchedule"),
                (false, true),
            ),
            (
                "network-unavailable only tolerated with hostNetwork",
                node("n", "role=edge", "node.kubernetes.io/network-unavailable:NoSchedule"),
                (false, true),
            ),
        ];
        for (name, n, want) in cases {
            assert_eq!(should_run(&spec, &tol, &n), want, "{name}");
        }
        let mut host = spec.clone();
        host.host_network = Some(true);
        let n = node(
            "n",
            "role=edge",
            "node.kubernetes.io/network-unavailable:NoSchedule",
        );
        assert_eq!(
            should_run(&host, &daemon_tolerations(&host), &n),
            (true, true)
        );
        let mut named = spec;
        named.node_name = Some("other".into());
        assert_eq!(
            should_run(&named, &tol, &node("n", "role=edge", "")),
            (false, false)
        );
    }

    #[test]
    fn default_tolerations_replace_same_key_and_effect() {
        let spec: PodSpec = from_json(json!({"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
            {"key": "custom", "operator": "Exists"}
        ]}));
        let tol = daemon_tolerations(&spec);
        assert_eq!(tol.len(), 7, "{tol:?}");
        let unreachable: Vec<_> = tol
            .iter()
            .filter(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
            .collect();
        assert_eq!(unreachable.len(), 1);
        assert_eq!(unreachable[0].toleration_seconds, None);
    }

    #[test]
    fn target_node_table() {
        let cases = [
            (json!({"nodeName": "a"}), Some("a")),
            (
                json!({"nodeName": "a", "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
                Some("a"),
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
                Some("b"),
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b", "c"]}]}]}}}}),
                None,
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["b"]}]}]}}}}),
                None,
            ),
            (json!({}), None),
        ];
        for (spec, want) in cases {
            let p = Pod {
                spec: Some(from_json(spec.clone())),
                ..Default::default()
            };
            assert_eq!(target_node(&p), want, "{spec}");
        }
    }

    #[test]
    fn created_pod_is_pinned_tolerant_labelled_and_owned() {
        let mut d = ds("v1", 0, "1");
        if let Some(t) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            t.affinity = Some(from_json(json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}]
            }})));
        }
        let p = pod_for_node(&d, "h1", "edge-a").expect("pod");
        assert_eq!(target_node(&p), Some("edge-a"));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(p.labels().get(HASH_LABEL).map(String::as_str), Some("h1"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("agent"));
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name, None, "the scheduler binds it");
        let na = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .expect("affinity");
        let terms = &na
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .expect("required")
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert!(terms[0].match_expressions.is_none());
        assert_eq!(
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(6));
        let owner = controller_of(&p).expect("owner");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("DaemonSet", "ds-uid")
        );
    }

    #[test]
    fn rollout_limits_table() {
        // (maxSurge, maxUnavailable, desired, want)
        let cases = [
            (0, "1", 5, (0, 1)),
            (0, "0", 5, (0, 1)),
            (0, "0", 0, (0, 0)),
            (0, "25%", 5, (0, 2)),
            (0, "10%", 3, (0, 1)),
            (2, "0", 5, (2, 0)),
        ];
        for (surge, unavailable, desired, want) in cases {
            let got = rollout_limits(&ds("v", surge, unavailable), desired).expect("limits");
            assert_eq!(got, want, "{surge} {unavailable} {desired}");
        }
        assert!(rollout_limits(&ds("v", 0, "x%"), 3).is_err());
    }

    struct Case {
        name: &'static str,
        surge: i32,
        unavailable: &'static str,
        nodes: Vec<Node>,
        pods: Vec<Pod>,
        create: &'static [&'static str],
        delete: &'static [&'static str],
        // desired, current, misscheduled, ready, updated, available, unavailable
        status: (i32, i32, i32, i32, i32, i32, i32),
    }

    #[test]
    fn reconcile_table() {
        let edge = |n: &str| node(n, "role=edge", "");
        let cases = vec![
            Case {
                name: "a pod for each eligible node, none for the tainted or unselected one",
                surge: 0,
                unavailable: "1",
                nodes: vec![
                    edge("a"),
                    edge("b"),
                    node("c", "role=edge", "dedicated:NoSchedule"),
                    node("d", "role=core", ""),
                ],
                pods: vec![],
                create: &["a", "b"],
                delete: &[],
                status: (2, 0, 0, 0, 0, 0, 2),
            },
            Case {
                name: "steady: counts from each node's pod; other owners' pods ignored",
                surge: 0,
                unavailable: "1",
                nodes: vec![edge("a"), edge("b")],
                pods: vec![
                    pod("pa", "a", "new", "bR", 10),
                    pod("pb", "b", "new", "b", 10),
                    pod("x", "a", "new", "bo", 10),
                ],
                create: &[],
                delete: &[],
                status: (2, 2, 0, 1, 2, 1, 1),
            },
            Case {
                name: "node no longer eligible, gone node, failed pod, duplicate: cleaned up",
                surge: 0,
                unavailable: "1",
                nodes: vec![
                    edge("a"),
                    node("b", "role=core", ""),
                    edge("c"),
                    node("e", "role=edge", "dedicated:NoExecute"),
                ],
                pods: vec![
                    pod("a-old", "a", "new", "bR", 20),
                    pod("a-dup", "a", "new", "b", 5),
                    pod("pb", "b", "new", "bR", 10),
                    pod("pc", "c", "new", "bf", 10),
                    pod("pe", "e", "new", "bR", 10),
                    pod("gone", "z", "new", "bR", 10),
                ],
                create: &[],
                delete: &["gone", "a-dup", "pb", "pc", "pe"],
                status: (2, 2, 2, 1, 2, 1, 1),
            },
            Case {
                name: "pod being deleted blocks its replacement",
                surge: 0,
                unavailable: "1",
                nodes: vec![edge("a")],
                pods: vec![pod("pa", "a", "old", "bRd", 10)],
                create: &[],
                delete: &[],
                status: (1, 1, 0, 1, 0, 1, 0),
            },
            Case {
                name: "rolling: old pods deleted up to maxUnavailable, in node order",
                surge: 0,
                unavailable: "2",
                nodes: vec![edge("a"), edge("b"), edge("c")],
                pods: vec![
                    pod("pa", "a", "old", "bR", 10),
                    pod("pb", "b", "old", "bR", 10),
                    pod("pc", "c", "old", "bR", 10),
                ],
                create: &[],
                delete: &["pa", "pb"],
                status: (3, 3, 0, 3, 0, 3, 0),
            },
            Case {
                name: "rolling: an unready new pod and a terminating one use up the budget, unready old goes anyway",
                surge: 0,
                unavailable: "2",
                nodes: vec![edge("a"), edge("b"), edge("c"), edge("d")],
                pods: vec![
                    pod("pa", "a", "new", "b", 1),
                    pod("pb", "b", "old", "bRd", 10),
                    pod("pc", "c", "old", "bR", 10),
                    pod("pd", "d", "old", "b", 10),
                ],
                create: &[],
                delete: &["pd"],
                status: (4, 4, 0, 2, 1, 2, 2),
            },
            Case {
                name: "surge: new pods beside old ones up to maxSurge",
                surge: 1,
                unavailable: "0",
                nodes: vec![edge("a"), edge("b")],
                pods: vec![
                    pod("pa", "a", "old", "bR", 10),
                    pod("pb", "b", "old", "bR", 10),
                ],
                create: &["a"],
                delete: &[],
                status: (2, 2, 0, 2, 0, 2, 0),
            },
            Case {
                name: "surge: old pod goes once the new one is available; unready new waits",
                surge: 1,
                unavailable: "0",
                nodes: vec![edge("a"), edge("b")],
                pods: vec![
                    pod("pa-old", "a", "old", "bR", 10),
                    pod("pa-new", "a", "new", "bR", 1),
                    pod("pb-old", "b", "old", "bR", 10),
                    pod("pb-new", "b", "new", "b", 1),
                ],
                create: &[],
                delete: &["pa-old"],
                status: (2, 2, 0, 2, 0, 2, 0),
            },
        ];
        for c in cases {
            let d = ds("v2", c.surge, c.unavailable);
            let plan = reconcile(&d, &c.nodes, &c.pods, ts(T0)).expect(c.name);
            assert_eq!(plan.create, c.create, "{}: create", c.name);
            assert_eq!(plan.delete, c.delete, "{}: delete", c.name);
            let s = &plan.status;
            assert_eq!(
                (
                    s.desired_number_scheduled,
                    s.current_number_scheduled,
                    s.number_misscheduled,
                    s.number_ready,
                    s.updated_number_scheduled.unwrap_or(0),
                    s.number_available.unwrap_or(0),
                    s.number_unavailable.unwrap_or(0),
                ),
                c.status,
                "{}: status",
                c.name
            );
            assert_eq!(s.observed_generation, Some(2), "{}", c.name);
        }
    }

    #[test]
    fn on_delete_strategy_does_not_roll() {
        let mut d = ds("v2", 0, "1");
        if let Some(s) = d.spec.as_mut() {
            s.update_strategy = Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            });
        }
        let plan = reconcile(
            &d,
            &[node("a", "role=edge", "")],
            &[pod("pa", "a", "old", "bR", 1)],
            ts(T0),
        )
        .expect("plan");
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "{plan:?}");
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut d = ds("v2", 0, "1");
        if let Some(s) = d.spec.as_mut() {
            s.min_ready_seconds = Some(30);
        }
        let later = ts(T0) + jiff::SignedDuration::from_secs(10);
        let plan = reconcile(
            &d,
            &[node("a", "role=edge", "")],
            &[pod("pa", "a", "new", "bR", 1)],
            later,
        )
        .expect("plan");
        assert_eq!(plan.status.number_ready, 1);
        assert_eq!(plan.status.number_available, None);
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(20)));
    }

    #[test]
    fn status_written_only_on_change_and_zeros_cleared() {
        let nodes = [node("a", "role=edge", "")];
        let d = ds("v2", 0, "1");
        let plan = reconcile(&d, &nodes, &[pod("pa", "a", "new", "bR", 1)], ts(T0)).expect("plan");
        assert!(status_changed(None, &plan.status));
        assert!(!status_changed(Some(&plan.status), &plan.status));
        let idle = reconcile(&d, &nodes, &[pod("pa", "a", "old", "b", 1)], ts(T0)).expect("plan");
        assert!(status_changed(Some(&plan.status), &idle.status));
        let patch = status_patch(&idle.status).expect("patch");
        assert_eq!(patch["status"]["numberAvailable"], Value::Null);
        assert!(patch["status"].get("updatedNumberScheduled").is_some());
        assert_eq!(patch["status"]["numberUnavailable"], 1);
        assert_eq!(patch["status"]["desiredNumberScheduled"], 1);
    }
}
