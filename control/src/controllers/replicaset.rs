//! ReplicaSet controller: keep `spec.replicas` pods that match the selector, controlled by
//! the ReplicaSet, and report how many of them exist, are ready and are available.
//!
//! ```text
//!  ReplicaSet ─┐                        ┌─▶ adopt orphans / release pods that stopped matching
//!  Pods ───────┴─▶ reconcile (pure) ──▶ Plan ─▶ create from template (generateName <rs>-)
//!  (fresh list)                          ├─▶ delete surplus (ranked: least useful first)
//!                                        └─▶ status (replicas, ready, available, generation)
//! ```
//!
//! The loop lists pods from the API on every pass instead of trusting a cache, so a pass
//! always sees the pods the previous pass created; that replaces Kubernetes' "expectations"
//! bookkeeping, at the price of one in-process list per pass.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as MetaSelector, OwnerReference,
};
use kith_api::selectors::LabelSelector;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Map, Value};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "replicaset-controller";
/// At most this many pods are created or deleted in one pass (Kubernetes' burstReplicas).
pub const BURST: usize = 500;
/// A pass with nothing pending still runs this often, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("replicaset has no {0}")]
    Missing(&'static str),
    #[error("invalid selector: {0}")]
    Selector(#[from] kith_api::selectors::SelectorError),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// What one pass should do to bring the pods in line with a ReplicaSet.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods (no controller) that match the selector: become ours.
    pub adopt: Vec<String>,
    /// Pods we control that no longer match the selector: drop our ownerReference.
    pub release: Vec<String>,
    /// How many pods to create from the template.
    pub create: usize,
    /// Pods to delete, least useful first.
    pub delete: Vec<String>,
    /// The status the ReplicaSet should report, computed from the pods seen this pass.
    pub status: ReplicaSetStatus,
    /// When a ready pod becomes available (minReadySeconds), look again then.
    pub requeue_after: Option<Duration>,
}

/// Labels as the JSON map the selector code matches against.
pub(crate) fn label_map(labels: Option<&BTreeMap<String, String>>) -> Map<String, Value> {
    labels
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// A `metav1.LabelSelector` in the form that can match labels.
pub(crate) fn selector(sel: &MetaSelector) -> Result<LabelSelector, Error> {
    Ok(LabelSelector::from_json(&serde_json::to_value(sel)?)?)
}

/// The ownerReference with `controller: true`, if any.
pub(crate) fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_deref()
        .into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The controller ownerReference that makes `owner` the controller of a child.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone()?,
        uid: owner.meta().uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn deleting<K: Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// Kubernetes counts a pod as active until it is being deleted or has finished.
fn active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !deleting(pod) && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// When the pod's Ready condition turned True, if it is True.
fn ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// How long until a pod counts as available: `Some(ZERO)` means it is available now,
/// `None` that it is not ready at all.
fn available_in(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> Option<Duration> {
    let since = ready_since(pod)?;
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    // A Ready condition without a transition time has been ready as long as we can tell.
    let Some(since) = since else {
        return Some(Duration::ZERO);
    };
    let at = since
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        )))
        .unwrap_or(since);
    let left = now.duration_until(at);
    Some(if left.is_positive() {
        Duration::try_from(left).unwrap_or(Duration::ZERO)
    } else {
        Duration::ZERO
    })
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum()
}

/// Which of two pods to delete first, after Kubernetes' `ActivePods` ordering, simplified:
/// unscheduled before scheduled; Pending before Unknown before Running; not ready before
/// ready; ready more recently before ready longer; more restarts before fewer; newer before
/// older. Kubernetes also spreads deletions over nodes and buckets times logarithmically;
/// kith leaves both out. Names break the remaining ties so the choice is stable.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(
            || match (ready_since(a).flatten(), ready_since(b).flatten()) {
                // Ready more recently (later time) goes first.
                (Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            },
        )
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| match (created(a), created(b)) {
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (x, y) => y.cmp(&x),
        })
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// Decide what to do for `rs`, given every pod in its namespace. Pure.
pub fn reconcile(rs: &ReplicaSet, pods: &[Pod], now: jiff::Timestamp) -> Result<Plan, Error> {
    let uid = rs.metadata.uid.as_deref().ok_or(Error::Missing("uid"))?;
    let spec = rs.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let sel = selector(&spec.selector)?;
    let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let mut plan = Plan::default();
    let mut ours: Vec<&Pod> = Vec::new();
    for pod in pods {
        let matches = !sel.is_everything() && sel.matches(&label_map(pod.metadata.labels.as_ref()));
        match controller_of(pod) {
            Some(r) if r.uid == uid => {
                if matches {
                    ours.push(pod);
                } else if !deleting(pod) {
                    plan.release.push(pod.name_any());
                }
            }
            Some(_) => {}
            // A ReplicaSet being deleted adopts nothing: its pods are about to go too.
            None if matches && !deleting(pod) && !deleting(rs) => {
                plan.adopt.push(pod.name_any());
                ours.push(pod);
            }
            None => {}
        }
    }
    let mut live: Vec<&Pod> = ours.into_iter().filter(|p| active(p)).collect();

    // A ReplicaSet being deleted stops managing pods; the garbage collector takes them.
    if !deleting(rs) {
        match live.len().cmp(&want) {
            Ordering::Less => plan.create = (want - live.len()).min(BURST),
            Ordering::Greater => {
                live.sort_by(|a, b| deletion_order(a, b));
                let surplus = (live.len() - want).min(BURST);
                plan.delete = live[..surplus].iter().map(|p| p.name_any()).collect();
            }
            Ordering::Equal => {}
        }
    }

    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut status = ReplicaSetStatus {
        replicas: count(live.len()),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let mut fully = 0;
    let mut ready = 0;
    let mut available = 0;
    for pod in &live {
        let labels = label_map(pod.metadata.labels.as_ref());
        if template_labels
            .into_iter()
            .flatten()
            .all(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v))
        {
            fully += 1;
        }
        if is_ready(pod) {
            ready += 1;
        }
        match available_in(pod, min_ready, now) {
            Some(Duration::ZERO) => available += 1,
            Some(left) => {
                plan.requeue_after = Some(plan.requeue_after.map_or(left, |d| d.min(left)));
            }
            None => {}
        }
    }
    // Zero counts are left out, as Kubernetes' omitempty leaves them out.
    let nz = |v: i32| (v != 0).then_some(v);
    status.fully_labeled_replicas = nz(fully);
    status.ready_replicas = nz(ready);
    status.available_replicas = nz(available);
    plan.status = status;
    Ok(plan)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The pod a ReplicaSet creates: its template, named `<rs>-<random>`, controlled by it.
pub fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, Error> {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .ok_or(Error::Missing("template"))?;
    let owner = controller_ref(rs).ok_or(Error::Missing("name or uid"))?;
    let tm = template.metadata.unwrap_or_default();
    let mut pod = Pod {
        spec: template.spec,
        ..Default::default()
    };
    pod.metadata.generate_name = Some(format!("{}-", rs.name_any()));
    pod.metadata.namespace = rs.metadata.namespace.clone();
    pod.metadata.labels = tm.labels;
    pod.metadata.annotations = tm.annotations;
    pod.metadata.finalizers = tm.finalizers;
    pod.metadata.owner_references = Some(vec![owner]);
    Ok(pod)
}

/// Whether `status` says something `old` does not; the loop writes only then.
fn status_changed(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let z = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || z(old.fully_labeled_replicas) != z(new.fully_labeled_replicas)
        || z(old.ready_replicas) != z(new.ready_replicas)
        || z(old.available_replicas) != z(new.available_replicas)
        || old.observed_generation != new.observed_generation
}

/// A merge patch setting `status`; counts that went to zero must be sent as null, or the
/// merge would keep their old values.
fn status_patch(status: &ReplicaSetStatus) -> Result<Value, Error> {
    Ok(super::status_merge_patch(
        status,
        &["fullyLabeledReplicas", "readyReplicas", "availableReplicas"],
    )?)
}

struct Ctx {
    client: Client,
}

/// Run the ReplicaSet controller until the task is dropped.
pub async fn run(client: Client) {
    let rss: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let queue = super::queue::Queue::new("replicaset", rss);
    let store = queue.store();
    queue
        .watches(pods, move |pod| owners_of(&store, &pod))
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

/// The ReplicaSets a pod change concerns: its controller, or for an orphan every
/// ReplicaSet of its namespace whose selector matches it (one may adopt it).
fn owners_of(store: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(r) = controller_of(pod) {
        if r.kind == "ReplicaSet" {
            return vec![ObjectRef::new(&r.name).within(&ns)];
        }
        return Vec::new();
    }
    let labels = label_map(pod.metadata.labels.as_ref());
    store
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| selector(&s.selector).ok())
                .is_some_and(|s| !s.is_everything() && s.matches(&labels))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(replicaset = %rs.name_any(), error = %err, "replicaset pass failed");
    Action::requeue(Duration::from_secs(2))
}

/// The metadata patch that sets a pod's ownerReferences, guarded by its resourceVersion so
/// two controllers cannot both take the same orphan.
pub(crate) fn owner_patch(meta: &kube::api::ObjectMeta, refs: Vec<OwnerReference>) -> Value {
    json!({"metadata": {"resourceVersion": meta.resource_version, "ownerReferences": refs}})
}

async fn reconcile_one(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached copy may predate our own last status write; read the current one.
    let Some(rs) = rss.get_opt(&rs.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = pods.list(&ListParams::default()).await?.items;
    let plan = reconcile(&rs, &all, jiff::Timestamp::now())?;
    let by_name: BTreeMap<String, &Pod> = all.iter().map(|p| (p.name_any(), p)).collect();
    let me = controller_ref(&rs).ok_or(Error::Missing("name or uid"))?;
    let pp = PatchParams::default();

    for name in &plan.adopt {
        let Some(pod) = by_name.get(name) else {
            continue;
        };
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        refs.push(me.clone());
        pods.patch(name, &pp, &Patch::Merge(owner_patch(&pod.metadata, refs)))
            .await?;
    }
    for name in &plan.release {
        let Some(pod) = by_name.get(name) else {
            continue;
        };
        let refs: Vec<OwnerReference> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != me.uid)
            .cloned()
            .collect();
        match pods
            .patch(name, &pp, &Patch::Merge(owner_patch(&pod.metadata, refs)))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let reference = rs.object_ref(&());
    if plan.create > 0 {
        let pod = pod_from_template(&rs)?;
        for _ in 0..plan.create {
            super::pods::create_pod(&ctx.client, &pods, &pod, &reference, COMPONENT).await?;
        }
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
    if status_changed(rs.status.as_ref(), &plan.status) {
        let body = status_patch(&plan.status)?;
        match rss
            .patch_status(&rs.name_any(), &pp, &Patch::Merge(body))
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
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    const T0: &str = "2026-01-01T00:00:00Z";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]
        .into();
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("ns".into()),
                uid: Some("rs-uid".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: Some(min_ready),
                selector: MetaSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        annotations: Some([("a".to_string(), "b".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
            }),
            status: None,
        }
    }

    /// A pod described by a short spec: owner ("rs", "other", "-" for none), labels
    /// ("full", "partial", "none"), and flags: s=scheduled, r=running, R=ready since T0,
    /// d=being deleted, f=failed; created `age` seconds before T0+1h.
    fn pod(name: &str, owner: &str, labels: &str, flags: &str, age: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.labels = Some(match labels {
            "full" => [("app", "web"), ("tier", "fe")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "partial" => [("app".to_string(), "web".to_string())].into(),
            _ => [("app".to_string(), "db".to_string())].into(),
        });
        let uid = match owner {
            "rs" => Some("rs-uid"),
            "other" => Some("other-uid"),
            _ => None,
        };
        p.metadata.owner_references = uid.map(|u| {
            vec![OwnerReference {
                uid: u.into(),
                controller: Some(true),
                kind: "ReplicaSet".into(),
                name: "x".into(),
                api_version: "apps/v1".into(),
                ..Default::default()
            }]
        });
        let created = ts("2026-01-01T01:00:00Z") - jiff::SignedDuration::from_secs(age);
        p.metadata.creation_timestamp = Some(Time(created));
        if flags.contains('d') {
            p.metadata.deletion_timestamp = Some(Time(ts(T0)));
        }
        let mut spec = PodSpec::default();
        if flags.contains('s') {
            spec.node_name = Some("box1".into());
        }
        p.spec = Some(spec);
        let phase = if flags.contains('f') {
            "Failed"
        } else if flags.contains('r') {
            "Running"
        } else {
            "Pending"
        };
        let mut status = PodStatus {
            phase: Some(phase.into()),
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

    struct Case {
        name: &'static str,
        replicas: i32,
        min_ready: i32,
        now: &'static str,
        pods: Vec<Pod>,
        adopt: &'static [&'static str],
        release: &'static [&'static str],
        create: usize,
        delete: &'static [&'static str],
        // replicas, fullyLabeled, ready, available
        status: (i32, i32, i32, i32),
        requeue: Option<u64>,
    }

    #[test]
    fn reconcile_table() {
        let later = "2026-01-01T00:00:10Z";
        let cases = vec![
            Case {
                name: "no pods: create all",
                replicas: 3,
                min_ready: 0,
                now: later,
                pods: vec![],
                adopt: &[],
                release: &[],
                create: 3,
                delete: &[],
                status: (0, 0, 0, 0),
                requeue: None,
            },
            Case {
                name: "enough pods: nothing to do, ready ones counted",
                replicas: 2,
                min_ready: 0,
                now: later,
                pods: vec![
                    pod("a", "rs", "full", "srR", 10),
                    pod("b", "rs", "partial", "", 5),
                ],
                adopt: &[],
                release: &[],
                create: 0,
                delete: &[],
                status: (2, 1, 1, 1),
                requeue: None,
            },
            Case {
                name: "deleted and failed pods do not count: replace them",
                replicas: 3,
                min_ready: 0,
                now: later,
                pods: vec![
                    pod("a", "rs", "full", "d", 10),
                    pod("b", "rs", "full", "f", 5),
                    pod("c", "rs", "full", "", 1),
                ],
                adopt: &[],
                release: &[],
                create: 2,
                delete: &[],
                status: (1, 1, 0, 0),
                requeue: None,
            },
            Case {
                name: "orphan matching selector adopted and counted; other owner's pod ignored",
                replicas: 2,
                min_ready: 0,
                now: later,
                pods: vec![
                    pod("o", "-", "full", "", 1),
                    pod("x", "other", "full", "", 1),
                    pod("n", "-", "none", "", 1),
                ],
                adopt: &["o"],
                release: &[],
                create: 1,
                delete: &[],
                status: (1, 1, 0, 0),
                requeue: None,
            },
            Case {
                name: "our pod relabelled out of the selector is released and replaced",
                replicas: 1,
                min_ready: 0,
                now: later,
                pods: vec![pod("gone", "rs", "none", "", 1)],
                adopt: &[],
                release: &["gone"],
                create: 1,
                delete: &[],
                status: (0, 0, 0, 0),
                requeue: None,
            },
            Case {
                name: "surplus: unscheduled, then not ready, then newest go first",
                replicas: 2,
                min_ready: 0,
                now: later,
                pods: vec![
                    pod("ready-old", "rs", "full", "srR", 100),
                    pod("running-new", "rs", "full", "sr", 1),
                    pod("pending-sched", "rs", "full", "s", 50),
                    pod("unsched-old", "rs", "full", "", 200),
                    pod("unsched-new", "rs", "full", "", 2),
                ],
                adopt: &[],
                release: &[],
                create: 0,
                delete: &["unsched-new", "unsched-old", "pending-sched"],
                status: (5, 5, 1, 1),
                requeue: None,
            },
            Case {
                name: "minReadySeconds: ready but not yet available, look again when it is",
                replicas: 1,
                min_ready: 30,
                now: later,
                pods: vec![pod("a", "rs", "full", "srR", 10)],
                adopt: &[],
                release: &[],
                create: 0,
                delete: &[],
                status: (1, 1, 1, 0),
                requeue: Some(20),
            },
            Case {
                name: "minReadySeconds passed: available",
                replicas: 1,
                min_ready: 5,
                now: later,
                pods: vec![pod("a", "rs", "full", "srR", 10)],
                adopt: &[],
                release: &[],
                create: 0,
                delete: &[],
                status: (1, 1, 1, 1),
                requeue: None,
            },
            Case {
                name: "scale to zero deletes everything",
                replicas: 0,
                min_ready: 0,
                now: later,
                pods: vec![
                    pod("a", "rs", "full", "srR", 10),
                    pod("b", "rs", "full", "", 1),
                ],
                adopt: &[],
                release: &[],
                create: 0,
                delete: &["b", "a"],
                status: (2, 2, 1, 1),
                requeue: None,
            },
        ];
        for c in cases {
            let plan = reconcile(&rs(c.replicas, c.min_ready), &c.pods, ts(c.now)).expect(c.name);
            assert_eq!(plan.adopt, c.adopt, "{}: adopt", c.name);
            assert_eq!(plan.release, c.release, "{}: release", c.name);
            assert_eq!(plan.create, c.create, "{}: create", c.name);
            assert_eq!(plan.delete, c.delete, "{}: delete", c.name);
            let s = &plan.status;
            assert_eq!(
                (
                    s.replicas,
                    s.fully_labeled_replicas.unwrap_or(0),
                    s.ready_replicas.unwrap_or(0),
                    s.available_replicas.unwrap_or(0)
                ),
                c.status,
                "{}: status",
                c.name
            );
            assert_eq!(s.observed_generation, Some(4), "{}", c.name);
            assert_eq!(
                plan.requeue_after,
                c.requeue.map(Duration::from_secs),
                "{}: requeue",
                c.name
            );
        }
    }

    #[test]
    fn deleting_replicaset_neither_adopts_nor_scales() {
        let mut r = rs(3, 0);
        r.metadata.deletion_timestamp = Some(Time(ts(T0)));
        let plan = reconcile(
            &r,
            &[pod("o", "-", "full", "", 1), pod("a", "rs", "full", "", 1)],
            ts(T0),
        )
        .expect("plan");
        assert!(
            plan.adopt.is_empty() && plan.create == 0 && plan.delete.is_empty(),
            "{plan:?}"
        );
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let mut r = rs(1, 0);
        if let Some(s) = r.spec.as_mut() {
            s.selector = MetaSelector::default();
        }
        let plan = reconcile(&r, &[pod("o", "-", "full", "", 1)], ts(T0)).expect("plan");
        assert!(plan.adopt.is_empty());
        assert_eq!(plan.create, 1);
    }

    #[test]
    fn pod_comes_from_the_template_with_a_controller_reference() {
        let p = pod_from_template(&rs(1, 0)).expect("pod");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(p.labels().get("tier").map(String::as_str), Some("fe"));
        assert_eq!(p.annotations().get("a").map(String::as_str), Some("b"));
        let owners = p.metadata.owner_references.expect("owners");
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].api_version.as_str(),
                owners[0].uid.as_str()
            ),
            ("ReplicaSet", "apps/v1", "rs-uid")
        );
        assert_eq!(
            (owners[0].controller, owners[0].block_owner_deletion),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn status_written_only_on_change() {
        let plan = reconcile(&rs(1, 0), &[pod("a", "rs", "full", "srR", 1)], ts(T0)).expect("plan");
        assert!(status_changed(None, &plan.status));
        assert!(!status_changed(Some(&plan.status), &plan.status));
        // Zeros are omitted from the status but cleared by the patch.
        let idle = reconcile(&rs(1, 0), &[pod("a", "rs", "full", "", 1)], ts(T0)).expect("plan");
        assert_eq!(idle.status.ready_replicas, None);
        let patch = status_patch(&idle.status).expect("patch");
        assert_eq!(patch["status"]["readyReplicas"], Value::Null);
        assert!(patch["status"].get("readyReplicas").is_some());
        assert_eq!(patch["status"]["replicas"], 1);
        let mut older = plan.status.clone();
        older.observed_generation = Some(3);
        assert!(status_changed(Some(&older), &plan.status));
    }
}
