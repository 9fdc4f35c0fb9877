//! StatefulSet controller: pods with stable names `<set>-<ordinal>`, each with its own
//! PersistentVolumeClaims, created, removed and updated in ordinal order.
//!
//! ```text
//!  StatefulSet ─┐                          ┌─▶ create claims <template>-<set>-<i> (before the pod)
//!  Pods ────────┼─▶ reconcile (pure) ──▶ Plan ─▶ create pods <set>-<i>
//!  Claims ──────┘   (fresh lists)          ├─▶ delete pods (condemned, failed, outdated)
//!                                          └─▶ status (counts, revisions, generation)
//! ```
//!
//! `OrderedReady` (the default) creates ordinal i only once 0..i-1 are Running and Ready,
//! and removes surplus pods from the highest ordinal down, one at a time; `Parallel` does
//! both all at once. `RollingUpdate` replaces pods at ordinals >= partition from the highest
//! down, one at a time, each only after the one above is Ready again; `OnDelete` leaves
//! replacing to whoever deletes the pods.
//!
//! A revision is the set name and a hash of the pod template, carried on every pod as the
//! `controller-revision-hash` label and recorded as a ControllerRevision of that name (see
//! [`super::history`]), so `kubectl rollout history|undo statefulset/x` work; revisions
//! beyond `revisionHistoryLimit` go unless pods or `status.currentRevision` name them.
//! Every pod is still created from the current template, including one recreated below
//! the partition (Kubernetes would use the current revision's template there). Claims are stored as
//! objects only; binding them to a local volume is the agent's job, later.
//!
//! Like the ReplicaSet controller, each pass lists pods and claims from the API instead of
//! trusting a cache, so it always sees what the previous pass created.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;

use super::deployment::pod_template_hash;
use super::replicaset::{controller_of, controller_ref, is_ready};
use crate::events::{self, EventType};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "statefulset-controller";
/// The label naming the revision a pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The label carrying the pod's own name, so a Service can select exactly one pod.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// A pass with nothing pending still runs this often, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("statefulset has no {0}")]
    Missing(&'static str),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// What one pass should do to bring the pods and claims in line with a StatefulSet.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Claims to create, each before the pod that mounts it, with that pod's name.
    pub claims: Vec<(String, PersistentVolumeClaim)>,
    /// Pods to create, in ordinal order.
    pub create: Vec<Pod>,
    /// Pods to delete, in the order to delete them.
    pub delete: Vec<String>,
    /// The status the StatefulSet should report, computed from the pods seen this pass.
    pub status: StatefulSetStatus,
    /// When a ready pod becomes available (minReadySeconds), look again then.
    pub requeue_after: Option<Duration>,
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded") | Some("Failed"))
}

/// The condition OrderedReady waits for before touching the next ordinal.
fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && is_ready(pod) && !deleting(pod)
}

/// How long until a running and ready pod counts as available; `None` if it is not ready.
fn available_in(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> Option<Duration> {
    if !running_and_ready(pod) {
        return None;
    }
    if min_ready_seconds <= 0 {
        return Some(Duration::ZERO);
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
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

/// The ordinal in a pod name `<set>-<ordinal>`; `None` for any other name (including
/// leading zeros, which would give two names for one ordinal).
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    let n: i32 = digits.parse().ok()?;
    (n >= 0 && n.to_string() == digits).then_some(n)
}

/// The name of the claim from template `template` for the pod at `ordinal`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn template_hash(sts: &StatefulSet) -> Result<String, Error> {
    let spec = sts.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let collisions = sts.status.as_ref().and_then(|s| s.collision_count);
    Ok(pod_template_hash(&spec.template, collisions))
}

/// The revision of the set's current template: `<set>-<hash>`, as Kubernetes names it.
pub fn update_revision(sts: &StatefulSet) -> Result<String, Error> {
    Ok(format!("{}-{}", sts.name_any(), template_hash(sts)?))
}

/// What to change in the set's ControllerRevisions, given those of its namespace and its
/// pods: the current template's revision is named [`update_revision`], and revisions that
/// the set's pods or `status.currentRevision` name are kept. Pure.
pub fn history(
    sts: &StatefulSet,
    revisions: &[ControllerRevision],
    pods: &[Pod],
) -> Result<super::history::HistoryPlan, Error> {
    let spec = sts.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let owner = controller_ref(sts).ok_or(Error::Missing("name or uid"))?;
    let uid = owner.uid.clone();
    let hash = template_hash(sts)?;
    let current = super::history::revision_for(owner, &sts.metadata, &spec.template, &hash)?;
    let mut live: BTreeSet<String> = pods
        .iter()
        .filter(|p| controller_of(*p).is_some_and(|o| o.uid == uid))
        .filter_map(revision_of)
        .map(str::to_string)
        .collect();
    live.extend(sts.status.as_ref().and_then(|s| s.current_revision.clone()));
    Ok(super::history::plan(
        current,
        revisions,
        spec.revision_history_limit,
        &live,
    ))
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn template_names(sts: &StatefulSet) -> Vec<String> {
    sts.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .into_iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .collect()
}

/// The pod for `ordinal`: the template, named `<set>-<ordinal>`, labelled with its name,
/// index and revision, addressable as `<pod>.<serviceName>`, mounting its own claims.
pub fn pod_for(sts: &StatefulSet, ordinal: i32, revision: &str) -> Result<Pod, Error> {
    let spec = sts.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let owner = controller_ref(sts).ok_or(Error::Missing("name or uid"))?;
    let set = sts.name_any();
    let name = format!("{set}-{ordinal}");
    let tm = spec.template.metadata.clone().unwrap_or_default();
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    // A template volume of the same name as a claim template gives way to the claim.
    let templates = template_names(sts);
    let mut volumes: Vec<Volume> = pod_spec
        .volumes
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !templates.contains(&v.name))
        .collect();
    for t in &templates {
        volumes.push(Volume {
            name: t.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(t, &set, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    pod_spec.volumes = (!volumes.is_empty()).then_some(volumes);
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.into());
    let mut pod = Pod {
        spec: Some(pod_spec),
        ..Default::default()
    };
    pod.metadata.name = Some(name);
    pod.metadata.namespace = sts.metadata.namespace.clone();
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = tm.annotations;
    pod.metadata.finalizers = tm.finalizers;
    pod.metadata.owner_references = Some(vec![owner]);
    Ok(pod)
}

/// The claims the pod at `ordinal` mounts: each template, named `<template>-<set>-<i>`,
/// labelled with the set's matchLabels. Kubernetes' default retention keeps claims when
/// the set goes; with `whenDeleted: Delete` the set owns them and the garbage collector
/// takes them with it.
pub fn claims_for(sts: &StatefulSet, ordinal: i32) -> Result<Vec<PersistentVolumeClaim>, Error> {
    let spec = sts.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let set = sts.name_any();
    let owned = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    let owner = if owned {
        Some(controller_ref(sts).ok_or(Error::Missing("name or uid"))?)
    } else {
        None
    };
    let mut out = Vec::new();
    for t in spec.volume_claim_templates.iter().flatten() {
        let Some(tname) = t.metadata.name.as_deref() else {
            continue;
        };
        let mut labels = t.metadata.labels.clone().unwrap_or_default();
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            labels.insert(k.clone(), v.clone());
        }
        let mut claim = PersistentVolumeClaim {
            spec: t.spec.clone(),
            ..Default::default()
        };
        claim.metadata.name = Some(claim_name(tname, &set, ordinal));
        claim.metadata.namespace = sts.metadata.namespace.clone();
        claim.metadata.labels = Some(labels);
        claim.metadata.annotations = t.metadata.annotations.clone();
        claim.metadata.owner_references = owner.clone().map(|o| vec![o]);
        out.push(claim);
    }
    Ok(out)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Decide what to do for `sts`, given every pod and the names of every claim in its
/// namespace. Pure.
pub fn reconcile(
    sts: &StatefulSet,
    pods: &[Pod],
    claims: &BTreeSet<String>,
    now: jiff::Timestamp,
) -> Result<Plan, Error> {
    let uid = sts.metadata.uid.as_deref().ok_or(Error::Missing("uid"))?;
    let spec = sts.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let set = sts.name_any();
    let want = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let end = start.saturating_add(want);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let update = update_revision(sts)?;
    let old = sts.status.clone().unwrap_or_default();
    let current = old
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update.clone());

    // Our pods by ordinal: those in range are kept, the rest are condemned.
    let mut slots: BTreeMap<i32, &Pod> = BTreeMap::new();
    // (ordinal, pod); a name that is no ordinal sorts first so it goes first.
    let mut condemned: Vec<(Option<i32>, &Pod)> = Vec::new();
    let mut ours: Vec<&Pod> = Vec::new();
    for pod in pods {
        if controller_of(pod).map(|r| r.uid.as_str()) != Some(uid) {
            continue;
        }
        ours.push(pod);
        match ordinal(&set, &pod.name_any()) {
            Some(i) if (start..end).contains(&i) => {
                slots.insert(i, pod);
            }
            other => condemned.push((other, pod)),
        }
    }
    condemned.sort_by(|a, b| match (a.0, b.0) {
        (None, None) => a.1.name_any().cmp(&b.1.name_any()),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(&x),
    });

    let mut plan = Plan::default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let (mut ready, mut available, mut at_current, mut at_update) = (0, 0, 0, 0);
    for pod in &ours {
        if running_and_ready(pod) {
            ready += 1;
        }
        match available_in(pod, min_ready, now) {
            Some(Duration::ZERO) => available += 1,
            Some(left) => {
                plan.requeue_after = Some(plan.requeue_after.map_or(left, |d| d.min(left)));
            }
            None => {}
        }
        if !deleting(pod) {
            let rev = revision_of(pod);
            if rev == Some(current.as_str()) {
                at_current += 1;
            }
            if rev == Some(update.as_str()) {
                at_update += 1;
            }
        }
    }
    let replicas = count(ours.len());
    let mut status = StatefulSetStatus {
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(at_current),
        updated_replicas: Some(at_update),
        current_revision: Some(current),
        update_revision: Some(update.clone()),
        observed_generation: sts.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    // A rollout is complete once every wanted pod runs the update revision and is ready:
    // the update revision becomes the current one (what `kubectl rollout status` waits for).
    if at_update == want && ready == want && replicas == want {
        status.current_revision = Some(update.clone());
        status.current_replicas = Some(at_update);
    }
    // Zero counts are left out, as Kubernetes' omitempty leaves them out.
    for v in [
        &mut status.ready_replicas,
        &mut status.current_replicas,
        &mut status.updated_replicas,
    ] {
        *v = v.filter(|n| *n != 0);
    }
    plan.status = status;

    // A StatefulSet being deleted stops managing pods; the garbage collector takes them.
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(plan);
    }

    // Fill the ordinals in order; OrderedReady stops at the first pod not Running and Ready.
    let mut blocked = false;
    for i in start..end {
        match slots.get(&i) {
            None => {
                for c in claims_for(sts, i)? {
                    if !claims.contains(&c.name_any()) {
                        plan.claims.push((format!("{set}-{i}"), c));
                    }
                }
                plan.create.push(pod_for(sts, i, &update)?);
                blocked = !parallel;
            }
            // A finished pod never runs again: replace it under the same name.
            Some(pod) if finished(pod) && !deleting(pod) => {
                plan.delete.push(pod.name_any());
                blocked = !parallel;
            }
            Some(pod) => {
                // A claim removed under a live pod is recreated so it can start again.
                for c in claims_for(sts, i)? {
                    if !claims.contains(&c.name_any()) {
                        plan.claims.push((format!("{set}-{i}"), c));
                    }
                }
                blocked = !parallel && !running_and_ready(pod);
            }
        }
        if blocked {
            break;
        }
    }
    if blocked {
        return Ok(plan);
    }

    // Remove surplus pods, highest ordinal first; OrderedReady one at a time, waiting
    // until the previous one is gone.
    if parallel {
        plan.delete.extend(
            condemned
                .iter()
                .filter(|(_, p)| !deleting(p))
                .map(|(_, p)| p.name_any()),
        );
    } else if let Some((_, first)) = condemned.first() {
        if !deleting(first) {
            plan.delete.push(first.name_any());
        }
        return Ok(plan);
    }

    // Replace outdated pods from the highest ordinal down to the partition, one at a time;
    // a pod missing, terminating or not yet ready again holds the rollout.
    if rolling {
        let floor = start.saturating_add(partition);
        for i in (floor..end).rev() {
            let Some(pod) = slots.get(&i) else {
                break;
            };
            if deleting(pod) {
                break;
            }
            if revision_of(pod) != Some(update.as_str()) {
                plan.delete.push(pod.name_any());
                break;
            }
            if !running_and_ready(pod) {
                break;
            }
        }
    }
    Ok(plan)
}

/// Whether `status` says something `old` does not; the loop writes only then.
fn status_changed(old: Option<&StatefulSetStatus>, new: &StatefulSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let z = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || z(old.ready_replicas) != z(new.ready_replicas)
        || z(old.available_replicas) != z(new.available_replicas)
        || z(old.current_replicas) != z(new.current_replicas)
        || z(old.updated_replicas) != z(new.updated_replicas)
        || old.current_revision != new.current_revision
        || old.update_revision != new.update_revision
        || old.observed_generation != new.observed_generation
}

/// A merge patch setting `status`; counts that went to zero must be sent as null, or the
/// merge would keep their old values.
fn status_patch(status: &StatefulSetStatus) -> Result<Value, Error> {
    Ok(super::status_merge_patch(
        status,
        &["readyReplicas", "currentReplicas", "updatedReplicas"],
    )?)
}

struct Ctx {
    client: Client,
}

/// Run the StatefulSet controller until the task is dropped.
pub async fn run(client: Client) {
    let sets: Api<StatefulSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let revisions: Api<ControllerRevision> = Api::all(client.clone());
    super::queue::Queue::new("statefulset", sets)
        .watches(pods, |pod| owner_of(&pod))
        .owns(revisions)
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

/// The StatefulSet a pod change concerns: its controller, if that is a StatefulSet.
fn owner_of(pod: &Pod) -> Option<ObjectRef<StatefulSet>> {
    let r = controller_of(pod)?;
    (r.kind == "StatefulSet")
        .then(|| ObjectRef::new(&r.name).within(&pod.namespace().unwrap_or_default()))
}

fn error_policy(sts: Arc<StatefulSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(statefulset = %sts.name_any(), error = %err, "statefulset pass failed");
    Action::requeue(Duration::from_secs(2))
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

async fn reconcile_one(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = sts.namespace().unwrap_or_default();
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached copy may predate our own last status write; read the current one.
    let Some(sts) = sets.get_opt(&sts.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let all = pods.list(&ListParams::default()).await?.items;
    let claims: BTreeSet<String> = pvcs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = revisions.list(&ListParams::default()).await?.items;
    super::history::record(&revisions, &history(&sts, &existing, &all)?).await?;
    let plan = reconcile(&sts, &all, &claims, jiff::Timestamp::now())?;
    let set = sts.name_any();
    let reference = sts.object_ref(&());
    let pp = PostParams::default();
    let note = |reason: &'static str, msg: String| {
        let client = ctx.client.clone();
        let reference = reference.clone();
        async move {
            events::record(
                &client,
                &reference,
                EventType::Normal,
                reason,
                &msg,
                COMPONENT,
            )
            .await;
        }
    };

    for (pod, claim) in &plan.claims {
        let cname = claim.name_any();
        match pvcs.create(&pp, claim).await {
            Ok(_) => {
                note(
                    "SuccessfulCreate",
                    format!("create Claim {cname} Pod {pod} in StatefulSet {set} success"),
                )
                .await;
            }
            // Created by an earlier pass whose list we raced; it is the claim we want.
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pod in &plan.create {
        let pname = pod.name_any();
        match pods.create(&pp, pod).await {
            Ok(_) => {
                note(
                    "SuccessfulCreate",
                    format!("create Pod {pname} in StatefulSet {set} successful"),
                )
                .await;
            }
            Err(e) if status_code(&e) == Some(409) => {
                // A pod of that name that is not ours (we do not adopt) blocks the
                // ordinal; say so instead of retrying in a tight loop.
                tracing::warn!(statefulset = %set, pod = %pname, "pod name already taken");
            }
            Err(e) => return Err(e.into()),
        }
    }
    for name in &plan.delete {
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                note(
                    "SuccessfulDelete",
                    format!("delete Pod {name} in StatefulSet {set} successful"),
                )
                .await;
            }
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if status_changed(sts.status.as_ref(), &plan.status) {
        let body = status_patch(&plan.status)?;
        match sets
            .patch_status(&set, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Our own creates and deletes come back as pod events, which bring the next pass.
    Ok(Action::requeue(plan.requeue_after.unwrap_or(RESYNC)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetPersistentVolumeClaimRetentionPolicy,
        StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{
        Container, EmptyDirVolumeSource, PersistentVolumeClaimSpec, PodCondition, PodSpec,
        PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector as MetaSelector, ObjectMeta, OwnerReference, Time,
    };

    const T0: &str = "2026-01-01T00:00:00Z";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The set `web` of `replicas` pods with one claim template `www`; `policy` is the
    /// podManagementPolicy, `strategy` the update strategy type, `current` the revision
    /// its status reports as current.
    fn sts(
        replicas: i32,
        policy: &str,
        strategy: &str,
        partition: i32,
        current: Option<&str>,
    ) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("sts-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                pod_management_policy: Some(policy.into()),
                service_name: Some("nginx".into()),
                selector: MetaSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some(strategy.into()),
                    rolling_update: (strategy == "RollingUpdate").then_some(
                        RollingUpdateStatefulSetStrategy {
                            partition: Some(partition),
                            ..Default::default()
                        },
                    ),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "web")])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "nginx".into(),
                            image: Some("nginx:1.27".into()),
                            ..Default::default()
                        }],
                        volumes: Some(vec![
                            Volume {
                                name: "www".into(),
                                empty_dir: Some(EmptyDirVolumeSource::default()),
                                ..Default::default()
                            },
                            Volume {
                                name: "tmp".into(),
                                empty_dir: Some(EmptyDirVolumeSource::default()),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }),
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("www".into()),
                        labels: Some(labels(&[("tier", "data")])),
                        ..Default::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: current.map(|c| StatefulSetStatus {
                current_revision: Some(c.into()),
                ..Default::default()
            }),
        }
    }

    /// A pod of set `s` described by flags: r=running, R=ready, d=being deleted, f=failed,
    /// o=old revision (`web-old`), x=controlled by someone else.
    fn pod(s: &StatefulSet, name: &str, flags: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        let rev = if flags.contains('o') {
            "web-old".to_string()
        } else {
            update_revision(s).expect("revision")
        };
        p.metadata.labels = Some(labels(&[("app", "web"), (REVISION_LABEL, &rev)]));
        p.metadata.owner_references = Some(vec![OwnerReference {
            uid: if flags.contains('x') {
                "other"
            } else {
                "sts-uid"
            }
            .into(),
            controller: Some(true),
            kind: "StatefulSet".into(),
            name: "web".into(),
            api_version: "apps/v1".into(),
            ..Default::default()
        }]);
        if flags.contains('d') {
            p.metadata.deletion_timestamp = Some(Time(ts(T0)));
        }
        let phase = if flags.contains('f') {
            "Failed"
        } else if flags.contains('r') {
            "Running"
        } else {
            "Pending"
        };
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: flags.contains('R').then(|| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(ts(T0))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    struct Case {
        name: &'static str,
        set: StatefulSet,
        pods: &'static [(&'static str, &'static str)],
        claims: &'static [&'static str],
        want_claims: &'static [&'static str],
        create: &'static [&'static str],
        delete: &'static [&'static str],
        // replicas, ready, current, updated
        status: (i32, i32, i32, i32),
        // whether status.currentRevision is the update revision
        current_is_update: bool,
    }

    const ALL_CLAIMS: &[&str] = &["www-web-0", "www-web-1", "www-web-2"];

    #[test]
    fn reconcile_table() {
        let ordered = |n| sts(n, "OrderedReady", "RollingUpdate", 0, None);
        let parallel = |n| sts(n, "Parallel", "RollingUpdate", 0, None);
        let rolling = |p| sts(3, "OrderedReady", "RollingUpdate", p, Some("web-old"));
        let cases = vec![
            Case {
                name: "ordered: only ordinal 0 first, its claim before it",
                set: ordered(3),
                pods: &[],
                claims: &[],
                want_claims: &["www-web-0"],
                create: &["web-0"],
                delete: &[],
                status: (0, 0, 0, 0),
                current_is_update: true,
            },
            Case {
                name: "ordered: ordinal 0 pending holds ordinal 1",
                set: ordered(3),
                pods: &[("web-0", "")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (1, 0, 1, 1),
                current_is_update: true,
            },
            Case {
                name: "ordered: running but not ready still holds",
                set: ordered(3),
                pods: &[("web-0", "rR"), ("web-1", "r")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (2, 1, 2, 2),
                current_is_update: true,
            },
            Case {
                name: "ordered: ordinal 0 running and ready lets ordinal 1 come",
                set: ordered(3),
                pods: &[("web-0", "rR")],
                claims: &["www-web-0"],
                want_claims: &["www-web-1"],
                create: &["web-1"],
                delete: &[],
                status: (1, 1, 1, 1),
                current_is_update: true,
            },
            Case {
                name: "ordered: then ordinal 2",
                set: ordered(3),
                pods: &[("web-0", "rR"), ("web-1", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &["web-2"],
                delete: &[],
                status: (2, 2, 2, 2),
                current_is_update: true,
            },
            Case {
                name: "parallel: every ordinal at once",
                set: parallel(3),
                pods: &[],
                claims: &["www-web-1"],
                want_claims: &["www-web-0", "www-web-2"],
                create: &["web-0", "web-1", "web-2"],
                delete: &[],
                status: (0, 0, 0, 0),
                current_is_update: true,
            },
            Case {
                name: "ordered scale down: highest ordinal first",
                set: ordered(1),
                pods: &[("web-0", "rR"), ("web-1", "rR"), ("web-2", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &["web-2"],
                status: (3, 3, 3, 3),
                current_is_update: true,
            },
            Case {
                name: "ordered scale down: one at a time, wait for the terminating one",
                set: ordered(1),
                pods: &[("web-0", "rR"), ("web-1", "rR"), ("web-2", "rRd")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (3, 2, 2, 2),
                current_is_update: true,
            },
            Case {
                name: "parallel scale down: all surplus at once, highest first",
                set: parallel(1),
                pods: &[("web-0", "rR"), ("web-1", ""), ("web-2", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &["web-2", "web-1"],
                status: (3, 2, 3, 3),
                current_is_update: true,
            },
            Case {
                name: "failed pod is replaced under its name; claims kept",
                set: ordered(3),
                pods: &[("web-0", "rR"), ("web-1", "f"), ("web-2", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &["web-1"],
                status: (3, 2, 3, 3),
                current_is_update: true,
            },
            Case {
                name: "claim removed under a live pod is recreated",
                set: ordered(1),
                pods: &[("web-0", "rR")],
                claims: &[],
                want_claims: &["www-web-0"],
                create: &[],
                delete: &[],
                status: (1, 1, 1, 1),
                current_is_update: true,
            },
            Case {
                name: "other controller's pod ignored; a name that is no ordinal goes",
                set: ordered(1),
                pods: &[("web-0", "rR"), ("web-1", "x"), ("web-01", "")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &["web-01"],
                status: (2, 1, 2, 2),
                current_is_update: true,
            },
            Case {
                name: "rolling update: highest ordinal replaced first",
                set: rolling(0),
                pods: &[("web-0", "rRo"), ("web-1", "rRo"), ("web-2", "rRo")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &["web-2"],
                status: (3, 3, 3, 0),
                current_is_update: false,
            },
            Case {
                name: "rolling update: deleted pod comes back at the update revision",
                set: rolling(0),
                pods: &[("web-0", "rRo"), ("web-1", "rRo")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &["web-2"],
                delete: &[],
                status: (2, 2, 2, 0),
                current_is_update: false,
            },
            Case {
                name: "rolling update: waits for the new pod to be ready",
                set: rolling(0),
                pods: &[("web-0", "rRo"), ("web-1", "rRo"), ("web-2", "r")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (3, 2, 2, 1),
                current_is_update: false,
            },
            Case {
                name: "rolling update: then the next one down",
                set: rolling(0),
                pods: &[("web-0", "rRo"), ("web-1", "rRo"), ("web-2", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &["web-1"],
                status: (3, 3, 2, 1),
                current_is_update: false,
            },
            Case {
                name: "rolling update: ordinals below the partition stay",
                set: rolling(2),
                pods: &[("web-0", "rRo"), ("web-1", "rRo"), ("web-2", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (3, 3, 2, 1),
                current_is_update: false,
            },
            Case {
                name: "rolling update done: the update revision becomes current",
                set: rolling(0),
                pods: &[("web-0", "rR"), ("web-1", "rR"), ("web-2", "rR")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (3, 3, 3, 3),
                current_is_update: true,
            },
            Case {
                name: "OnDelete: outdated pods are left alone",
                set: sts(3, "OrderedReady", "OnDelete", 0, Some("web-old")),
                pods: &[("web-0", "rRo"), ("web-1", "rRo"), ("web-2", "rRo")],
                claims: ALL_CLAIMS,
                want_claims: &[],
                create: &[],
                delete: &[],
                status: (3, 3, 3, 0),
                current_is_update: false,
            },
        ];
        for c in cases {
            let pods: Vec<Pod> = c.pods.iter().map(|(n, f)| pod(&c.set, n, f)).collect();
            let claims: BTreeSet<String> = c.claims.iter().map(|s| s.to_string()).collect();
            let plan = reconcile(&c.set, &pods, &claims, ts(T0)).expect(c.name);
            let claims: Vec<String> = plan.claims.iter().map(|(_, c)| c.name_any()).collect();
            assert_eq!(claims, c.want_claims, "{}: claims", c.name);
            for (pod, claim) in &plan.claims {
                assert_eq!(
                    claim.name_any(),
                    format!("www-{pod}"),
                    "{}: claim's pod",
                    c.name
                );
            }
            let create: Vec<String> = plan.create.iter().map(|p| p.name_any()).collect();
            assert_eq!(create, c.create, "{}: create", c.name);
            assert_eq!(plan.delete, c.delete, "{}: delete", c.name);
            let s = &plan.status;
            assert_eq!(
                (
                    s.replicas,
                    s.ready_replicas.unwrap_or(0),
                    s.current_replicas.unwrap_or(0),
                    s.updated_replicas.unwrap_or(0)
                ),
                c.status,
                "{}: status",
                c.name
            );
            let update = update_revision(&c.set).expect("revision");
            assert_eq!(
                s.update_revision.as_deref(),
                Some(update.as_str()),
                "{}",
                c.name
            );
            assert_eq!(
                s.current_revision.as_deref() == Some(update.as_str()),
                c.current_is_update,
                "{}: current revision {:?}",
                c.name,
                s.current_revision
            );
            assert_eq!(s.observed_generation, Some(2), "{}", c.name);
        }
    }

    #[test]
    fn ordinals_parse_only_canonical_names() {
        let cases: &[(&str, Option<i32>)] = &[
            ("web-0", Some(0)),
            ("web-12", Some(12)),
            ("web-01", None),
            ("web--1", None),
            ("web-", None),
            ("web-a", None),
            ("webx-1", None),
            ("web-1-2", None),
        ];
        for (name, want) in cases {
            assert_eq!(ordinal("web", name), *want, "{name}");
        }
    }

    #[test]
    fn pod_has_stable_identity_and_its_claims() {
        let s = sts(3, "OrderedReady", "RollingUpdate", 0, None);
        let p = pod_for(&s, 1, "web-abc").expect("pod");
        assert_eq!(p.name_any(), "web-1");
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        let l = p.labels();
        assert_eq!(l.get(POD_NAME_LABEL).map(String::as_str), Some("web-1"));
        assert_eq!(l.get(POD_INDEX_LABEL).map(String::as_str), Some("1"));
        assert_eq!(l.get(REVISION_LABEL).map(String::as_str), Some("web-abc"));
        assert_eq!(l.get("app").map(String::as_str), Some("web"));
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        // The template's own `www` volume gives way to the claim; `tmp` stays.
        let vols: Vec<(String, Option<String>)> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| {
                (
                    v.name.clone(),
                    v.persistent_volume_claim
                        .as_ref()
                        .map(|c| c.claim_name.clone()),
                )
            })
            .collect();
        assert_eq!(
            vols,
            vec![
                ("tmp".to_string(), None),
                ("www".to_string(), Some("www-web-1".to_string()))
            ]
        );
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("StatefulSet", "sts-uid", Some(true))
        );
    }

    #[test]
    fn claims_follow_templates_and_retention_policy() {
        let mut s = sts(3, "OrderedReady", "RollingUpdate", 0, None);
        let kept = claims_for(&s, 2).expect("claims");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name_any(), "www-web-2");
        assert_eq!(
            kept[0].labels(),
            &labels(&[("app", "web"), ("tier", "data")])
        );
        assert_eq!(kept[0].metadata.owner_references, None);
        if let Some(spec) = s.spec.as_mut() {
            spec.persistent_volume_claim_retention_policy =
                Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                });
        }
        let owned = claims_for(&s, 2).expect("claims");
        let refs = owned[0].metadata.owner_references.as_ref().expect("owner");
        assert_eq!(refs[0].uid, "sts-uid");
    }

    #[test]
    fn history_names_revisions_as_pods_do_and_keeps_those_in_use() {
        let mut s = sts(3, "OrderedReady", "RollingUpdate", 0, Some("web-cur"));
        let created = history(&s, &[], &[]).expect("plan").create.expect("create");
        assert_eq!(
            created.metadata.name,
            Some(update_revision(&s).expect("revision"))
        );
        assert_eq!(created.revision, 1);
        assert_eq!(
            created
                .data
                .as_ref()
                .map(|d| &d.0["spec"]["template"]["$patch"]),
            Some(&serde_json::json!("replace"))
        );
        // Older templates: with no history kept, only the one that neither a pod nor
        // status.currentRevision names goes.
        let old = |name: &str, n: i64| {
            let mut r = created.clone();
            r.metadata.name = Some(name.into());
            r.metadata.labels = Some(labels(&[(REVISION_LABEL, name)]));
            r.data = Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
                serde_json::json!({"template": n}),
            ));
            r.revision = n;
            r
        };
        let existing = [old("web-old", 1), old("web-cur", 2), old("web-gone", 3)];
        if let Some(spec) = s.spec.as_mut() {
            spec.revision_history_limit = Some(0);
        }
        let plan = history(&s, &existing, &[pod(&s, "web-0", "o")]).expect("plan");
        assert_eq!(plan.create.map(|r| r.revision), Some(4));
        assert_eq!(plan.delete, ["web-gone"]);
        // Another owner's pod does not keep a revision.
        let plan = history(&s, &existing, &[pod(&s, "web-0", "ox")]).expect("plan");
        assert_eq!(plan.delete, ["web-old", "web-gone"]);
    }

    #[test]
    fn template_change_is_a_new_revision() {
        let a = sts(3, "OrderedReady", "RollingUpdate", 0, None);
        let mut b = a.clone();
        if let Some(spec) = b.spec.as_mut() {
            if let Some(ps) = spec.template.spec.as_mut() {
                ps.containers[0].image = Some("nginx:1.28".into());
            }
        }
        let (ra, rb) = (
            update_revision(&a).expect("a"),
            update_revision(&b).expect("b"),
        );
        assert!(ra.starts_with("web-"), "{ra}");
        assert_ne!(ra, rb);
        // Scaling is no template change.
        let mut c = a.clone();
        if let Some(spec) = c.spec.as_mut() {
            spec.replicas = Some(7);
        }
        assert_eq!(update_revision(&c).expect("c"), ra);
    }

    #[test]
    fn deleting_set_only_reports() {
        let mut s = sts(3, "OrderedReady", "RollingUpdate", 0, None);
        s.metadata.deletion_timestamp = Some(Time(ts(T0)));
        let p = pod(&s, "web-0", "rR");
        let plan = reconcile(&s, &[p], &BTreeSet::new(), ts(T0)).expect("plan");
        assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.claims.is_empty());
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn status_written_only_on_change_and_zeros_cleared() {
        let s = sts(1, "OrderedReady", "RollingUpdate", 0, None);
        let plan = reconcile(&s, &[pod(&s, "web-0", "r")], &BTreeSet::new(), ts(T0)).expect("plan");
        assert!(status_changed(None, &plan.status));
        assert!(!status_changed(Some(&plan.status), &plan.status));
        assert_eq!(plan.status.ready_replicas, None);
        let patch = status_patch(&plan.status).expect("patch");
        assert!(patch["status"].get("readyReplicas").is_some());
        assert_eq!(patch["status"]["readyReplicas"], Value::Null);
        assert_eq!(patch["status"]["replicas"], 1);
        assert_eq!(patch["status"]["availableReplicas"], 0);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut s = sts(1, "OrderedReady", "RollingUpdate", 0, None);
        if let Some(spec) = s.spec.as_mut() {
            spec.min_ready_seconds = Some(30);
        }
        let p = pod(&s, "web-0", "rR");
        let claims: BTreeSet<String> = ["www-web-0".to_string()].into();
        let early = reconcile(
            &s,
            std::slice::from_ref(&p),
            &claims,
            ts("2026-01-01T00:00:10Z"),
        )
        .expect("plan");
        assert_eq!(early.status.available_replicas, Some(0));
        assert_eq!(early.requeue_after, Some(Duration::from_secs(20)));
        let late = reconcile(&s, &[p], &claims, ts("2026-01-01T00:00:31Z")).expect("plan");
        assert_eq!(late.status.available_replicas, Some(1));
        assert_eq!(late.requeue_after, None);
    }
}
