//! Deployment controller: one ReplicaSet per pod template, rolled from old to new by the
//! deployment's strategy, with the revision history `kubectl rollout` reads.
//!
//! ```text
//!  Deployment ─┐                           ┌─▶ create <name>-<pod-template-hash> (revision max+1)
//!  ReplicaSets ┴─▶ reconcile (pure) ──▶ Steps ─▶ scale new up / old down (RollingUpdate, Recreate)
//!  (fresh list)    on working copies        ├─▶ proportional scaling, cleanup past revisionHistoryLimit
//!                                           └─▶ status: counts, Available, Progressing
//! ```
//!
//! The pure function follows Kubernetes' deployment controller step by step and edits
//! working copies of the ReplicaSets as it goes, so the status it computes reflects the
//! scaling it just decided (as Kubernetes computes status from the objects its updates
//! returned). Like Kubernetes, one pass scales in one direction and then waits for the
//! ReplicaSets' status to move; each ReplicaSet change wakes the next pass.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use super::replicaset::{controller_of, controller_ref, label_map, owner_patch, selector};
use crate::events::{self, EventType};

pub const COMPONENT: &str = "deployment-controller";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations that describe the deployment itself, not a revision, so they are
/// not copied onto its ReplicaSets.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("deployment has no {0}")]
    Missing(&'static str),
    #[error("invalid selector: {0}")]
    Selector(#[from] kith_api::selectors::SelectorError),
    #[error("invalid value for IntOrString: {0}")]
    IntOrPercent(String),
    #[error("replicaset error: {0}")]
    ReplicaSet(#[from] super::replicaset::Error),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// One thing the loop does, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    AdoptReplicaSet(String),
    ReleaseReplicaSet(String),
    CreateReplicaSet(Box<ReplicaSet>),
    /// Set replicas, add annotations, and (for the new ReplicaSet) minReadySeconds.
    UpdateReplicaSet {
        name: String,
        replicas: i32,
        annotations: BTreeMap<String, String>,
        min_ready_seconds: Option<i32>,
    },
    DeleteReplicaSet(String),
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// Set the deployment's `deployment.kubernetes.io/revision` annotation.
    DeploymentRevision(String),
    Status(Box<DeploymentStatus>),
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub requeue_after: Option<Duration>,
}

impl Plan {
    fn event(&mut self, reason: &'static str, message: String) {
        self.steps.push(Step::Event {
            warning: false,
            reason,
            message,
        });
    }

    /// The ReplicaSet scale changes, as (name, replicas), for tests and logs.
    pub fn scales(&self) -> Vec<(String, i32)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreateReplicaSet(rs) => Some((
                    rs.name_any(),
                    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                )),
                Step::UpdateReplicaSet { name, replicas, .. } => Some((name.clone(), *replicas)),
                _ => None,
            })
            .collect()
    }

    pub fn status(&self) -> Option<&DeploymentStatus> {
        self.steps.iter().rev().find_map(|s| match s {
            Step::Status(st) => Some(st.as_ref()),
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------------------

/// An int, or a percentage of `total` rounded up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, Error> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::IntOrPercent(format!("{s:?} is not a percentage")))?;
            let x = pct * i64::from(total);
            let v = if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            };
            i32::try_from(v).map_err(|_| Error::IntOrPercent(s.clone()))
        }
    }
}

/// (maxSurge, maxUnavailable) of a rolling update for `replicas`: surge rounds up,
/// unavailable rounds down, and when both come to 0 one pod may be unavailable, or the
/// rollout could never move.
pub fn fenceposts(
    surge: &IntOrString,
    unavailable: &IntOrString,
    replicas: i32,
) -> Result<(i32, i32), Error> {
    let s = scaled_value(surge, replicas, true)?;
    let u = scaled_value(unavailable, replicas, false)?;
    Ok(if s == 0 && u == 0 { (0, 1) } else { (s, u) })
}

/// Replicas a deployment wants.
fn want(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rolling(d: &Deployment) -> Option<(IntOrString, IntOrString)> {
    let strategy = d.spec.as_ref()?.strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return None;
    }
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let pct = || IntOrString::String("25%".into());
    Some((
        ru.and_then(|r| r.max_surge.clone()).unwrap_or_else(pct),
        ru.and_then(|r| r.max_unavailable.clone())
            .unwrap_or_else(pct),
    ))
}

fn max_surge(d: &Deployment) -> Result<i32, Error> {
    match rolling(d) {
        Some((s, u)) => Ok(fenceposts(&s, &u, want(d))?.0),
        None => Ok(0),
    }
}

fn max_unavailable(d: &Deployment) -> Result<i32, Error> {
    match rolling(d) {
        Some((s, u)) if want(d) > 0 => Ok(fenceposts(&s, &u, want(d))?.1.min(want(d))),
        _ => Ok(0),
    }
}

/// How big the new ReplicaSet may be now: Recreate jumps to `replicas`; a rolling update
/// grows it while all pods together stay within `replicas + maxSurge`.
pub fn new_rs_replicas(replicas: i32, surge: Option<i32>, all_pods: i32, new_rs: i32) -> i32 {
    let Some(surge) = surge else {
        return replicas;
    };
    let max_total = replicas + surge;
    if all_pods >= max_total {
        return new_rs;
    }
    new_rs + (max_total - all_pods).min(replicas - new_rs)
}

// ---------------------------------------------------------------------------------------
// ReplicaSet helpers
// ---------------------------------------------------------------------------------------

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> Option<jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Oldest first; names break ties so the order is stable.
fn by_age(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(a)
        .cmp(&created(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// Drops empty and null values, so two templates compare as Kubernetes' semantic equality
/// does (an empty list equals a missing one) whichever client wrote them.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => {
            a.iter_mut().for_each(|x| {
                prune(x);
            });
            a.is_empty()
        }
        Value::Object(m) => {
            m.retain(|_, x| !prune(x));
            m.is_empty()
        }
        _ => false,
    }
}

fn template_value(t: &PodTemplateSpec) -> Value {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    let mut v = serde_json::to_value(&t).unwrap_or(Value::Null);
    prune(&mut v);
    v
}

/// Whether two pod templates are the same apart from the `pod-template-hash` label.
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    template_value(a) == template_value(b)
}

/// The `pod-template-hash` of a template: FNV-1a (32 bit) over its JSON and the collision
/// count, written in the consonant-and-digit alphabet Kubernetes uses so that names never
/// spell words.
pub fn pod_template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = Fnv32a::default();
    h.write(template_value(t).to_string().as_bytes());
    if let Some(c) = collision_count {
        h.write(&c.to_le_bytes());
    }
    (h.finish() as u32)
        .to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

struct Fnv32a(u32);

impl Default for Fnv32a {
    fn default() -> Self {
        Fnv32a(0x811c_9dc5)
    }
}

impl Hasher for Fnv32a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u32::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
    fn finish(&self) -> u64 {
        u64::from(self.0)
    }
}

// ---------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------

fn condition<'a>(s: &'a DeploymentStatus, ty: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_deref()?.iter().find(|c| c.type_ == ty)
}

fn new_condition(
    ty: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Set a condition; an unchanged status and reason leaves the old one alone, an unchanged
/// status keeps its transition time.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let conds = s.conditions.get_or_insert_with(Vec::new);
    if let Some(i) = conds.iter().position(|x| x.type_ == c.type_) {
        if conds[i].status == c.status && conds[i].reason == c.reason {
            return;
        }
        if conds[i].status == c.status {
            c.last_transition_time = conds[i].last_transition_time.clone();
        }
        conds.remove(i);
    }
    conds.push(c);
}

fn has_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// Done: every replica updated, available, and the spec observed.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let w = want(d);
    s.updated_replicas.unwrap_or(0) == w
        && s.replicas.unwrap_or(0) == w
        && s.available_replicas.unwrap_or(0) == w
        && s.observed_generation >= d.metadata.generation
}

/// Something moved since the last status: more updated, fewer old, more ready or available.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let z = |v: Option<i32>| v.unwrap_or(0);
    let old_old = z(old.replicas) - z(old.updated_replicas);
    let new_old = z(new.replicas) - z(new.updated_replicas);
    z(new.updated_replicas) > z(old.updated_replicas)
        || new_old < old_old
        || z(new.ready_replicas) > z(old.ready_replicas)
        || z(new.available_replicas) > z(old.available_replicas)
}

// ---------------------------------------------------------------------------------------
// The pass
// ---------------------------------------------------------------------------------------

/// What the loop knows besides the deployment and its ReplicaSets.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Every ReplicaSet in the deployment's namespace.
    pub replica_sets: Vec<ReplicaSet>,
    /// Pods not yet finished, by the uid of the ReplicaSet controlling them (Recreate waits
    /// for the old ones to be gone).
    pub pods_by_rs: BTreeMap<String, usize>,
}

struct Pass<'a> {
    d: &'a Deployment,
    now: jiff::Timestamp,
    plan: Plan,
    /// Working copies of the ReplicaSets this deployment controls.
    rss: Vec<ReplicaSet>,
    new: Option<usize>,
    status: DeploymentStatus,
}

/// Decide what to do for `d`. Pure: `now` is the only clock.
pub fn reconcile(d: &Deployment, world: &World, now: jiff::Timestamp) -> Result<Plan, Error> {
    let uid = d.metadata.uid.clone().ok_or(Error::Missing("uid"))?;
    let spec = d.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let sel = selector(&spec.selector)?;
    let mut pass = Pass {
        d,
        now,
        plan: Plan::default(),
        rss: Vec::new(),
        new: None,
        status: d.status.clone().unwrap_or_default(),
    };
    if sel.is_everything() {
        pass.plan.steps.push(Step::Event {
            warning: true,
            reason: "SelectingAll",
            message: "This deployment is selecting all pods. A non-empty selector is required."
                .into(),
        });
        if pass.status.observed_generation < d.metadata.generation {
            pass.status.observed_generation = d.metadata.generation;
            pass.plan.steps.push(Step::Status(Box::new(pass.status)));
        }
        return Ok(pass.plan);
    }
    let deleting = d.metadata.deletion_timestamp.is_some();
    for rs in &world.replica_sets {
        let matches = sel.matches(&label_map(rs.metadata.labels.as_ref()));
        match controller_of(rs) {
            Some(r) if r.uid == uid => {
                if matches {
                    pass.rss.push(rs.clone());
                } else if rs.metadata.deletion_timestamp.is_none() {
                    pass.plan.steps.push(Step::ReleaseReplicaSet(rs.name_any()));
                }
            }
            Some(_) => {}
            None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                pass.plan.steps.push(Step::AdoptReplicaSet(rs.name_any()));
                pass.rss.push(rs.clone());
            }
            None => {}
        }
    }
    pass.rss.sort_by(by_age);
    let template = spec.template.clone();
    pass.new = pass.rss.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| same_template(t, &template))
    });

    if deleting {
        pass.finish(false)?;
        return Ok(pass.plan);
    }
    pass.paused_condition();
    if spec.paused == Some(true) || pass.scaling_event()? {
        pass.sync_revision(false)?;
        pass.scale()?;
        if spec.paused == Some(true) {
            pass.cleanup();
        }
        pass.finish(false)?;
        return Ok(pass.plan);
    }
    match rolling(d) {
        None => pass.recreate(world)?,
        Some(_) => pass.rolling()?,
    }
    Ok(pass.plan)
}

impl Pass<'_> {
    fn olds(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rss.len()).filter(move |i| Some(*i) != self.new)
    }

    fn all_replicas(&self) -> i32 {
        self.rss.iter().map(rs_replicas).sum()
    }

    /// Paused and resumed show in the Progressing condition, so `kubectl rollout status`
    /// can say so.
    fn paused_condition(&mut self) {
        if has_deadline(self.d).is_none() {
            return;
        }
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let reason = condition(&self.status, "Progressing").and_then(|c| c.reason.clone());
        let now = self.now;
        if paused && reason.as_deref() != Some("DeploymentPaused") {
            let c = new_condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                now,
            );
            set_condition(&mut self.status, c);
        } else if !paused && reason.as_deref() == Some("DeploymentPaused") {
            let c = new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                now,
            );
            set_condition(&mut self.status, c);
        }
    }

    /// A change of `spec.replicas` since the active ReplicaSets were last sized.
    fn scaling_event(&self) -> Result<bool, Error> {
        let w = want(self.d);
        Ok(self
            .rss
            .iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .filter_map(|rs| rs.annotations().get(DESIRED_REPLICAS)?.parse::<i32>().ok())
            .any(|desired| desired != w))
    }

    /// Find or (when `create`) make the ReplicaSet of the current template and give it the
    /// next revision; an old ReplicaSet brought back (rollout undo) moves to the top.
    fn sync_revision(&mut self, create: bool) -> Result<(), Error> {
        let max_old = self
            .olds()
            .map(|i| revision(&self.rss[i]))
            .max()
            .unwrap_or(0);
        let next = max_old + 1;
        let copied: BTreeMap<String, String> = self
            .d
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(i) = self.new {
            let rs = &mut self.rss[i];
            let mut annotations = rs.annotations().clone();
            for (k, v) in &copied {
                annotations.insert(k.clone(), v.clone());
            }
            if revision(rs) < next {
                annotations.insert(REVISION.into(), next.to_string());
            }
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if &annotations != rs.annotations()
                || rs_min_ready.unwrap_or(0) != min_ready.unwrap_or(0)
            {
                rs.metadata.annotations = Some(annotations.clone());
                if let Some(s) = rs.spec.as_mut() {
                    s.min_ready_seconds = min_ready;
                }
                self.plan.steps.push(Step::UpdateReplicaSet {
                    name: rs.name_any(),
                    replicas: rs_replicas(rs),
                    annotations,
                    min_ready_seconds: min_ready,
                });
            }
            let rev = revision(&self.rss[i]).to_string();
            if self.d.annotations().get(REVISION) != Some(&rev) {
                self.plan.steps.push(Step::DeploymentRevision(rev));
            }
            if has_deadline(self.d).is_some() && condition(&self.status, "Progressing").is_none() {
                let msg = format!("Found new replica set {:?}", self.rss[i].name_any());
                let c = new_condition("Progressing", "True", "FoundNewReplicaSet", msg, self.now);
                set_condition(&mut self.status, c);
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        let spec = self.d.spec.as_ref().ok_or(Error::Missing("spec"))?;
        let hash = pod_template_hash(&spec.template, self.status.collision_count);
        let name = format!("{}-{hash}", self.d.name_any());
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut sel: MetaSelector = spec.selector.clone();
        sel.match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash);
        let surge = rolling(self.d).map(|_| max_surge(self.d)).transpose()?;
        let replicas = new_rs_replicas(want(self.d), surge, self.all_replicas(), 0);
        let mut annotations = copied;
        annotations.insert(REVISION.into(), next.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), want(self.d).to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (want(self.d) + max_surge(self.d)?).to_string(),
        );
        let mut rs = ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: min_ready,
                selector: sel,
                template: Some(template.clone()),
            }),
            ..Default::default()
        };
        rs.metadata.name = Some(name.clone());
        rs.metadata.namespace = self.d.metadata.namespace.clone();
        rs.metadata.labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
        rs.metadata.annotations = Some(annotations);
        rs.metadata.owner_references = Some(vec![
            controller_ref(self.d).ok_or(Error::Missing("name or uid"))?
        ]);
        rs.metadata.creation_timestamp = Some(Time(self.now));
        self.plan
            .steps
            .push(Step::CreateReplicaSet(Box::new(rs.clone())));
        if replicas > 0 {
            self.plan.event(
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} to {replicas}"),
            );
        }
        if has_deadline(self.d).is_some() {
            let msg = format!("Created new replica set {name:?}");
            let c = new_condition("Progressing", "True", "NewReplicaSetCreated", msg, self.now);
            set_condition(&mut self.status, c);
        }
        self.plan
            .steps
            .push(Step::DeploymentRevision(next.to_string()));
        self.rss.push(rs);
        self.new = Some(self.rss.len() - 1);
        Ok(())
    }

    /// Size a ReplicaSet (and record the deployment's size on it); true if the size changed.
    fn set_scale(&mut self, i: usize, to: i32, op: Option<&str>) -> Result<bool, Error> {
        let w = want(self.d);
        let max = w + max_surge(self.d)?;
        let rs = &mut self.rss[i];
        let from = rs_replicas(rs);
        let mut annotations = rs.annotations().clone();
        annotations.insert(DESIRED_REPLICAS.into(), w.to_string());
        annotations.insert(MAX_REPLICAS.into(), max.to_string());
        if from == to && &annotations == rs.annotations() {
            return Ok(false);
        }
        rs.metadata.annotations = Some(annotations.clone());
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(to);
        }
        let name = rs.name_any();
        self.plan.steps.push(Step::UpdateReplicaSet {
            name: name.clone(),
            replicas: to,
            annotations,
            min_ready_seconds: rs.spec.as_ref().and_then(|s| s.min_ready_seconds),
        });
        if from != to {
            let op = op.unwrap_or(if to > from { "up" } else { "down" });
            self.plan.event(
                "ScalingReplicaSet",
                format!("Scaled {op} replica set {name} to {to} from {from}"),
            );
        }
        Ok(from != to)
    }

    /// Resize when only the size changed: whole if one ReplicaSet is active, otherwise
    /// spread over the active ones in proportion to their size (rolling update).
    fn scale(&mut self) -> Result<(), Error> {
        let w = want(self.d);
        let active: Vec<usize> = (0..self.rss.len())
            .filter(|i| rs_replicas(&self.rss[*i]) > 0)
            .collect();
        let single = match active.len() {
            0 => self.new.or_else(|| {
                self.olds()
                    .max_by(|a, b| by_age(&self.rss[*a], &self.rss[*b]))
            }),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = single {
            if rs_replicas(&self.rss[i]) != w {
                self.set_scale(i, w, None)?;
            }
            return Ok(());
        }
        let saturated = self.new.is_some_and(|i| {
            let rs = &self.rss[i];
            rs_replicas(rs) == w
                && rs.annotations().get(DESIRED_REPLICAS) == Some(&w.to_string())
                && rs_status(rs).2 == w
        });
        if saturated {
            let new = self.new;
            for i in active.into_iter().filter(|i| Some(*i) != new) {
                self.set_scale(i, 0, None)?;
            }
            return Ok(());
        }
        if rolling(self.d).is_none() {
            return Ok(());
        }
        let surge = max_surge(self.d)?;
        let allowed = if w > 0 { w + surge } else { 0 };
        let current: i32 = active.iter().map(|i| rs_replicas(&self.rss[*i])).sum();
        let to_add = allowed - current;
        let mut order = active;
        // Grow the biggest (then newest) first; shrink the biggest (then oldest) first.
        order.sort_by(|a, b| {
            let (ra, rb) = (&self.rss[*a], &self.rss[*b]);
            rs_replicas(rb).cmp(&rs_replicas(ra)).then_with(|| {
                if to_add > 0 {
                    by_age(rb, ra)
                } else {
                    by_age(ra, rb)
                }
            })
        });
        let op = match to_add.cmp(&0) {
            Ordering::Greater => Some("up"),
            Ordering::Less => Some("down"),
            Ordering::Equal => None,
        };
        let mut added = 0;
        let mut sizes = Vec::new();
        for &i in &order {
            let rs = &self.rss[i];
            let size = rs_replicas(rs);
            let p = if to_add == 0 || size == 0 || added == to_add {
                0
            } else {
                let fraction = self.fraction(rs, surge);
                let left = to_add - added;
                if to_add > 0 {
                    fraction.min(left)
                } else {
                    fraction.max(left)
                }
            };
            added += p;
            sizes.push(size + p);
        }
        // What rounding left over goes to the biggest.
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
        for (i, size) in order.into_iter().zip(sizes) {
            self.set_scale(i, size, op)?;
        }
        Ok(())
    }

    /// This ReplicaSet's share of a resize: its size scaled by new total / old total, where
    /// the old total is what it was last sized for (max-replicas annotation).
    fn fraction(&self, rs: &ReplicaSet, surge: i32) -> i32 {
        let w = want(self.d);
        let size = rs_replicas(rs);
        if w == 0 {
            return -size;
        }
        let target = w + surge;
        let before = rs
            .annotations()
            .get(MAX_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or_else(|| self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
        if before == 0 {
            return 0;
        }
        let scaled = (f64::from(size) * f64::from(target) / f64::from(before)).round();
        scaled as i32 - size
    }

    fn rolling(&mut self) -> Result<(), Error> {
        self.sync_revision(true)?;
        let Some(new) = self.new else {
            return self.finish(true);
        };
        let w = want(self.d);
        // Grow (or trim) the new ReplicaSet.
        let size = rs_replicas(&self.rss[new]);
        let target = if size > w {
            w
        } else {
            new_rs_replicas(w, Some(max_surge(self.d)?), self.all_replicas(), size)
        };
        if size != target && self.set_scale(new, target, None)? {
            return self.finish(true);
        }
        if self.scale_down_old()? {
            return self.finish(true);
        }
        if complete(self.d, &self.status) {
            self.cleanup();
        }
        self.finish(true)
    }

    /// Shrink old ReplicaSets as far as availability allows: first pods that are not
    /// available anyway (they serve nobody), then available ones down to the minimum.
    fn scale_down_old(&mut self) -> Result<bool, Error> {
        let Some(new) = self.new else {
            return Ok(false);
        };
        let mut olds: Vec<usize> = self
            .olds()
            .filter(|i| rs_replicas(&self.rss[*i]) > 0)
            .collect();
        if olds.is_empty() {
            return Ok(false);
        }
        olds.sort_by(|a, b| by_age(&self.rss[*a], &self.rss[*b]));
        let min_available = want(self.d) - max_unavailable(self.d)?;
        let new_unavailable = rs_replicas(&self.rss[new]) - rs_status(&self.rss[new]).2;
        let max_down = self.all_replicas() - min_available - new_unavailable;
        if max_down <= 0 {
            return Ok(false);
        }
        let mut done = 0;
        for &i in &olds {
            if done >= max_down {
                break;
            }
            let size = rs_replicas(&self.rss[i]);
            let unhealthy = size - rs_status(&self.rss[i]).2;
            if size == 0 || unhealthy <= 0 {
                continue;
            }
            let n = unhealthy.min(max_down - done);
            self.set_scale(i, size - n, None)?;
            done += n;
        }
        // Available pods: the statuses were read before this pass changed anything.
        let available: i32 = self.rss.iter().map(|rs| rs_status(rs).2).sum();
        let mut healthy_done = 0;
        if available > min_available {
            let allowed = available - min_available;
            for &i in &olds {
                if healthy_done >= allowed {
                    break;
                }
                let size = rs_replicas(&self.rss[i]);
                if size == 0 {
                    continue;
                }
                let n = size.min(allowed - healthy_done);
                self.set_scale(i, size - n, None)?;
                healthy_done += n;
            }
        }
        Ok(done + healthy_done > 0)
    }

    fn recreate(&mut self, world: &World) -> Result<(), Error> {
        self.sync_revision(false)?;
        let olds: Vec<usize> = self
            .olds()
            .filter(|i| rs_replicas(&self.rss[*i]) > 0)
            .collect();
        let mut scaled = false;
        for i in olds {
            scaled |= self.set_scale(i, 0, None)?;
        }
        if scaled {
            return self.finish(true);
        }
        let old_uids: Vec<&str> = self
            .olds()
            .filter_map(|i| self.rss[i].metadata.uid.as_deref())
            .collect();
        let old_running = self.olds().any(|i| rs_status(&self.rss[i]).0 > 0)
            || old_uids
                .iter()
                .any(|u| world.pods_by_rs.get(*u).is_some_and(|n| *n > 0));
        if old_running {
            return self.finish(true);
        }
        if self.new.is_none() {
            self.sync_revision(true)?;
        }
        if let Some(new) = self.new {
            let w = want(self.d);
            if rs_replicas(&self.rss[new]) != w {
                self.set_scale(new, w, None)?;
            }
        }
        if complete(self.d, &self.status) {
            self.cleanup();
        }
        self.finish(true)
    }

    /// Delete the oldest revisions beyond `revisionHistoryLimit`, if they are empty.
    fn cleanup(&mut self) {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return;
        };
        let mut olds: Vec<usize> = self
            .olds()
            .filter(|i| self.rss[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let extra = olds
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        if extra == 0 {
            return;
        }
        olds.sort_by(|a, b| {
            let (x, y) = (&self.rss[*a], &self.rss[*b]);
            revision(x).cmp(&revision(y)).then_with(|| by_age(x, y))
        });
        for &i in &olds[..extra] {
            let rs = &self.rss[i];
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation);
            if rs_replicas(rs) != 0 || rs_status(rs).0 != 0 || observed < rs.metadata.generation {
                continue;
            }
            self.plan.steps.push(Step::DeleteReplicaSet(rs.name_any()));
        }
    }

    /// Compute the status from the (updated) working copies; with `rollout`, also move
    /// the Progressing condition.
    fn finish(&mut self, rollout: bool) -> Result<(), Error> {
        let d = self.d;
        let w = want(d);
        let nz = |v: i32| (v != 0).then_some(v);
        let all = self.all_replicas();
        let actual: i32 = self.rss.iter().map(|rs| rs_status(rs).0).sum();
        let ready: i32 = self.rss.iter().map(|rs| rs_status(rs).1).sum();
        let available: i32 = self.rss.iter().map(|rs| rs_status(rs).2).sum();
        let updated = self.new.map_or(0, |i| rs_status(&self.rss[i]).0);
        let old = d.status.clone().unwrap_or_default();
        let mut s = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: nz(actual),
            updated_replicas: nz(updated),
            ready_replicas: nz(ready),
            available_replicas: nz(available),
            unavailable_replicas: nz((all - available).max(0)),
            collision_count: self.status.collision_count,
            conditions: self.status.conditions.clone(),
            ..Default::default()
        };
        let now = self.now;
        let c = if available >= w - max_unavailable(d)? {
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            )
        } else {
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            )
        };
        set_condition(&mut s, c);
        if rollout {
            self.progress(&old, &mut s);
        }
        if Some(&s) != d.status.as_ref() {
            self.plan.steps.push(Step::Status(Box::new(s)));
        }
        Ok(())
    }

    fn progress(&mut self, old: &DeploymentStatus, s: &mut DeploymentStatus) {
        let d = self.d;
        let Some(deadline) = has_deadline(d) else {
            if let Some(c) = s.conditions.as_mut() {
                c.retain(|c| c.type_ != "Progressing");
            }
            return;
        };
        let name = self.new.map(|i| self.rss[i].name_any());
        let current = condition(s, "Progressing").cloned();
        let done = s.replicas == s.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        if done {
            return;
        }
        let now = self.now;
        if complete(d, s) {
            let msg = match &name {
                Some(n) => format!("ReplicaSet {n:?} has successfully progressed."),
                None => "Deployment has successfully progressed.".into(),
            };
            set_condition(
                s,
                new_condition("Progressing", "True", "NewReplicaSetAvailable", msg, now),
            );
        } else if progressing(old, s) {
            let msg = match &name {
                Some(n) => format!("ReplicaSet {n:?} is progressing."),
                None => "Deployment is progressing.".into(),
            };
            let mut c = new_condition("Progressing", "True", "ReplicaSetUpdated", msg, now);
            if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
                c.last_transition_time = cur.last_transition_time.clone();
            }
            if let Some(conds) = s.conditions.as_mut() {
                conds.retain(|c| c.type_ != "Progressing");
            }
            set_condition(s, c);
        } else if let Some(cur) = current.as_ref() {
            let reason = cur.reason.as_deref();
            if reason == Some("ProgressDeadlineExceeded")
                || reason == Some("NewReplicaSetAvailable")
            {
                return;
            }
            let from = cur.last_update_time.as_ref().map_or(now, |t| t.0);
            let at = from
                .checked_add(jiff::SignedDuration::from_secs(i64::from(deadline)))
                .unwrap_or(from);
            if at < now {
                let msg = match &name {
                    Some(n) => format!("ReplicaSet {n:?} has timed out progressing."),
                    None => format!("Deployment {:?} has timed out progressing.", d.name_any()),
                };
                set_condition(
                    s,
                    new_condition("Progressing", "False", "ProgressDeadlineExceeded", msg, now),
                );
            } else {
                // Look again when the deadline passes, in case nothing else happens first.
                let left = Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO);
                self.plan.requeue_after = Some(left + Duration::from_secs(1));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------

struct Ctx {
    client: Client,
}

/// Run the Deployment controller until the task is dropped.
pub async fn run(client: Client) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let rss: Api<ReplicaSet> = Api::all(client.clone());
    let queue = super::queue::Queue::new("deployment", deployments);
    let store = queue.store();
    queue
        .watches(rss, move |rs| owners_of(&store, &rs))
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

/// The deployments a ReplicaSet change concerns: its controller, or for an orphan those
/// whose selector matches it.
fn owners_of(store: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    if let Some(r) = controller_of(rs) {
        if r.kind == "Deployment" {
            return vec![ObjectRef::new(&r.name).within(&ns)];
        }
        return Vec::new();
    }
    let labels = label_map(rs.metadata.labels.as_ref());
    store
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| {
            d.spec
                .as_ref()
                .and_then(|s| selector(&s.selector).ok())
                .is_some_and(|s| !s.is_everything() && s.matches(&labels))
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

fn error_policy(d: Arc<Deployment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(deployment = %d.name_any(), error = %err, "deployment pass failed");
    Action::requeue(Duration::from_secs(2))
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A status merge patch that also clears the counts that went to zero (omitted, as
/// Kubernetes omits them, but a merge patch must say null to remove them).
fn status_patch(s: &DeploymentStatus) -> Result<Value, Error> {
    Ok(super::status_merge_patch(
        s,
        &[
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ],
    )?)
}

async fn reconcile_one(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(d) = deployments.get_opt(&d.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut world = World {
        replica_sets: rss.list(&ListParams::default()).await?.items,
        ..Default::default()
    };
    if rolling(&d).is_none() {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for p in pods.list(&ListParams::default()).await?.items {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded") | Some("Failed")) {
                continue;
            }
            if let Some(r) = controller_of(&p) {
                *world.pods_by_rs.entry(r.uid.clone()).or_default() += 1;
            }
        }
    }
    let plan = reconcile(&d, &world, jiff::Timestamp::now())?;
    let by_name: BTreeMap<String, &ReplicaSet> = world
        .replica_sets
        .iter()
        .map(|r| (r.name_any(), r))
        .collect();
    let me = controller_ref(&d).ok_or(Error::Missing("name or uid"))?;
    let reference = d.object_ref(&());
    let pp = PatchParams::default();
    for step in plan.steps {
        match step {
            Step::AdoptReplicaSet(name) => {
                let Some(rs) = by_name.get(&name) else {
                    continue;
                };
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(me.clone());
                rss.patch(&name, &pp, &Patch::Merge(owner_patch(&rs.metadata, refs)))
                    .await?;
            }
            Step::ReleaseReplicaSet(name) => {
                let Some(rs) = by_name.get(&name) else {
                    continue;
                };
                let refs: Vec<_> = rs
                    .owner_references()
                    .iter()
                    .filter(|r| r.uid != me.uid)
                    .cloned()
                    .collect();
                match rss
                    .patch(&name, &pp, &Patch::Merge(owner_patch(&rs.metadata, refs)))
                    .await
                {
                    Err(e) if !not_found(&e) => return Err(e.into()),
                    _ => {}
                }
            }
            Step::CreateReplicaSet(rs) => {
                let mut body = *rs;
                body.metadata.creation_timestamp = None;
                match rss.create(&PostParams::default(), &body).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        return collision(&rss, &deployments, &d, &body).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Step::UpdateReplicaSet {
                name,
                replicas,
                annotations,
                min_ready_seconds,
            } => {
                let body = json!({
                    "metadata": {"annotations": annotations},
                    "spec": {"replicas": replicas, "minReadySeconds": min_ready_seconds},
                });
                rss.patch(&name, &pp, &Patch::Merge(body)).await?;
            }
            Step::DeleteReplicaSet(name) => match rss.delete(&name, &DeleteParams::default()).await
            {
                Err(e) if !not_found(&e) => return Err(e.into()),
                _ => {}
            },
            Step::Event {
                warning,
                reason,
                message,
            } => {
                let ty = if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                events::record(&ctx.client, &reference, ty, reason, &message, COMPONENT).await;
            }
            Step::DeploymentRevision(rev) => {
                let body = json!({"metadata": {"annotations": {REVISION: rev}}});
                deployments
                    .patch(&d.name_any(), &pp, &Patch::Merge(body))
                    .await?;
            }
            Step::Status(s) => {
                match deployments
                    .patch_status(&d.name_any(), &pp, &Patch::Merge(status_patch(&s)?))
                    .await
                {
                    Err(e) if !not_found(&e) => return Err(e.into()),
                    _ => {}
                }
            }
        }
    }
    Ok(Action::requeue(plan.requeue_after.unwrap_or(RESYNC)))
}

/// The new ReplicaSet's name is taken. If it is ours with this template, the next pass
/// finds it; otherwise bump `status.collisionCount` so the next pass picks another hash.
async fn collision(
    rss: &Api<ReplicaSet>,
    deployments: &Api<Deployment>,
    d: &Deployment,
    wanted: &ReplicaSet,
) -> Result<Action, Error> {
    let existing = rss.get_opt(&wanted.name_any()).await?;
    let ours = existing.as_ref().is_some_and(|rs| {
        controller_of(rs).map(|r| r.uid.as_str()) == d.metadata.uid.as_deref()
            && match (
                rs.spec.as_ref().and_then(|s| s.template.as_ref()),
                wanted.spec.as_ref().and_then(|s| s.template.as_ref()),
            ) {
                (Some(a), Some(b)) => same_template(a, b),
                _ => false,
            }
    });
    if !ours {
        let count = d
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0)
            + 1;
        let body = json!({"status": {"collisionCount": count}});
        deployments
            .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(body))
            .await?;
    }
    Ok(Action::requeue(Duration::from_millis(200)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const NOW: &str = "2026-01-01T01:00:00Z";

    /// ReplicaSet sizes by name, as a table expects them.
    type Scales = Vec<(&'static str, i32)>;

    fn now() -> jiff::Timestamp {
        NOW.parse().expect("timestamp")
    }

    fn ios(s: &str) -> IntOrString {
        match s.parse::<i32>() {
            Ok(n) => IntOrString::Int(n),
            Err(_) => IntOrString::String(s.into()),
        }
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// A deployment of `image`; strategy "recreate" or "<surge>/<unavailable>".
    fn deploy(replicas: i32, strategy: &str, image: &str) -> Deployment {
        let strategy = match strategy.split_once('/') {
            Some((s, u)) => DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(ios(s)),
                    max_unavailable: Some(ios(u)),
                }),
            },
            None => DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            },
        };
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("d-uid".into()),
                generation: Some(2),
                annotations: Some(
                    [("kubernetes.io/change-cause".to_string(), "v".to_string())].into(),
                ),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: MetaSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: template(image),
                strategy: Some(strategy),
                revision_history_limit: Some(10),
                progress_deadline_seconds: Some(600),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                ..Default::default()
            }),
        }
    }

    /// A ReplicaSet of `d` running `image`: (revision, spec replicas, available, age in s).
    fn rs(
        d: &Deployment,
        image: &str,
        rev: i64,
        replicas: i32,
        available: i32,
        age: i64,
    ) -> ReplicaSet {
        let t = template(image);
        let hash = pod_template_hash(&t, None);
        let mut tl = t.clone();
        if let Some(m) = tl.metadata.as_mut() {
            m.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
        }
        let w = want(d);
        let max = w + max_surge(d).expect("surge");
        let mut r = ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(tl.clone()),
                selector: MetaSelector {
                    match_labels: Some(
                        [
                            ("app".to_string(), "web".to_string()),
                            (HASH_LABEL.to_string(), hash.clone()),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(available),
                available_replicas: Some(available),
                observed_generation: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        r.metadata.name = Some(format!("web-{image}"));
        r.metadata.namespace = Some("ns".into());
        r.metadata.uid = Some(format!("uid-{image}"));
        r.metadata.generation = Some(1);
        r.metadata.labels = tl.metadata.and_then(|m| m.labels);
        r.metadata.creation_timestamp = Some(Time(now() - jiff::SignedDuration::from_secs(age)));
        r.metadata.annotations = Some(
            [
                (REVISION.to_string(), rev.to_string()),
                (DESIRED_REPLICAS.to_string(), w.to_string()),
                (MAX_REPLICAS.to_string(), max.to_string()),
                ("kubernetes.io/change-cause".to_string(), "v".to_string()),
            ]
            .into(),
        );
        r.metadata.owner_references = controller_ref(d).map(|o| vec![o]);
        r
    }

    fn world(rss: Vec<ReplicaSet>) -> World {
        World {
            replica_sets: rss,
            ..Default::default()
        }
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let table = [
            ("25%", "25%", 3, (1, 0)),
            ("25%", "25%", 4, (1, 1)),
            ("25%", "25%", 5, (2, 1)),
            ("25%", "25%", 10, (3, 2)),
            ("1", "0", 3, (1, 0)),
            ("0", "0", 3, (0, 1)),
            ("0%", "0%", 3, (0, 1)),
            ("50%", "50%", 5, (3, 2)),
            ("2", "10%", 5, (2, 0)),
            ("33%", "33%", 1, (1, 0)),
            ("100%", "0", 0, (0, 1)),
        ];
        for (s, u, n, want) in table {
            assert_eq!(
                fenceposts(&ios(s), &ios(u), n).expect("valid"),
                want,
                "{s} {u} of {n}"
            );
        }
        assert!(scaled_value(&ios("abc"), 3, true).is_err());
    }

    #[test]
    fn new_replica_set_growth() {
        // (replicas, surge (None = Recreate), pods in all ReplicaSets, new now) -> new size
        let table = [
            (3, Some(1), 0, 0, 3),
            (3, Some(1), 3, 0, 1),
            (3, Some(1), 4, 1, 1),
            (3, Some(1), 3, 1, 2),
            (3, Some(0), 3, 0, 0),
            (5, Some(2), 5, 0, 2),
            (10, Some(3), 8, 4, 9),
            (3, None, 3, 0, 3),
        ];
        for (replicas, surge, all, new, want) in table {
            assert_eq!(
                new_rs_replicas(replicas, surge, all, new),
                want,
                "{replicas} {surge:?} {all} {new}"
            );
        }
    }

    #[test]
    fn first_replica_set_is_named_by_template_hash_and_gets_revision_1() {
        let d = deploy(3, "25%/25%", "v1");
        let plan = reconcile(&d, &world(vec![]), now()).expect("plan");
        let hash = pod_template_hash(&template("v1"), None);
        assert_eq!(plan.scales(), vec![(format!("web-{hash}"), 3)]);
        let Some(Step::CreateReplicaSet(rs)) = plan.steps.first() else {
            panic!("first step creates: {plan:?}");
        };
        assert_eq!(
            rs.annotations().get(REVISION).map(String::as_str),
            Some("1")
        );
        assert_eq!(
            rs.annotations()
                .get("kubernetes.io/change-cause")
                .map(String::as_str),
            Some("v")
        );
        assert_eq!(rs.labels().get(HASH_LABEL), Some(&hash));
        let spec = rs.spec.as_ref().expect("spec");
        assert_eq!(
            spec.selector
                .match_labels
                .as_ref()
                .and_then(|m| m.get(HASH_LABEL)),
            Some(&hash)
        );
        let tl = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        assert_eq!(tl.and_then(|l| l.get(HASH_LABEL)), Some(&hash));
        assert!(plan.steps.contains(&Step::DeploymentRevision("1".into())));
        assert!(plan.steps.iter().any(|s| matches!(s, Step::Event { reason: "ScalingReplicaSet", message, .. } if message == &format!("Scaled up replica set web-{hash} to 3"))));
        let status = plan.status().expect("status");
        let prog = condition(status, "Progressing").expect("progressing");
        assert_eq!(prog.reason.as_deref(), Some("NewReplicaSetCreated"));
        // Hashes differ by template and by collision count.
        assert_ne!(hash, pod_template_hash(&template("v2"), None));
        assert_ne!(hash, pod_template_hash(&template("v1"), Some(1)));
        assert!(hash
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }

    #[test]
    fn rolling_update_steps() {
        // (case, replicas, strategy, [(image, revision, replicas, available, age)], scales)
        // The deployment's template is always "new"; "old" is the previous one.
        type Rs = (&'static str, i64, i32, i32, i64);
        let table: Vec<(&str, i32, &str, Vec<Rs>, Scales)> = vec![
            (
                "surge 1: new starts at 1, old kept for availability",
                3,
                "1/0",
                vec![("old", 1, 3, 3, 100)],
                vec![("web-new-created", 1)],
            ),
            (
                "new at max total waits; one available to spare: old down by 1",
                3,
                "1/0",
                vec![("old", 1, 3, 3, 100), ("new", 2, 1, 1, 10)],
                vec![("web-old", 2)],
            ),
            (
                "old shrank: new grows",
                3,
                "1/0",
                vec![("old", 1, 2, 2, 100), ("new", 2, 1, 1, 10)],
                vec![("web-new", 2)],
            ),
            (
                "nothing available: no pod may go (what e2e sees without an agent)",
                3,
                "25%/25%",
                vec![("old", 1, 3, 0, 100), ("new", 2, 1, 0, 10)],
                vec![],
            ),
            (
                "unavailable old pods go first, within maxUnavailable",
                3,
                "1/1",
                vec![("old", 1, 3, 1, 100), ("new", 2, 1, 0, 10)],
                vec![("web-old", 2)],
            ),
            (
                "25% of 5: surge 2 up, unavailable 1 down in one pass",
                5,
                "25%/25%",
                vec![("old", 1, 5, 5, 100)],
                vec![("web-new-created", 2), ("web-old", 4)],
            ),
            (
                "done: nothing to do",
                3,
                "1/0",
                vec![("old", 1, 0, 0, 100), ("new", 2, 3, 3, 10)],
                vec![],
            ),
            (
                "new too big after a template flip-flop: trimmed",
                2,
                "1/0",
                vec![("new", 2, 3, 3, 10)],
                vec![("web-new", 2)],
            ),
            (
                "recreate: old scaled to zero first",
                3,
                "recreate",
                vec![("old", 1, 3, 3, 100)],
                vec![("web-old", 0)],
            ),
            (
                "recreate: old pods still there, wait",
                3,
                "recreate",
                vec![("old", 1, 0, 0, 100)],
                vec![],
            ),
            (
                "recreate: old gone, new at full size",
                3,
                "recreate",
                vec![],
                vec![("web-new-created", 3)],
            ),
        ];
        for (case, replicas, strategy, rss, want) in table {
            let d = deploy(replicas, strategy, "new");
            let mut items: Vec<ReplicaSet> = rss
                .iter()
                .map(|(image, rev, n, avail, age)| rs(&d, image, *rev, *n, *avail, *age))
                .collect();
            if case.contains("old pods still there") {
                // Scaled to zero, but a pod is still terminating.
                if let Some(s) = items[0].status.as_mut() {
                    s.replicas = 1;
                }
            }
            let plan = reconcile(&d, &world(items), now()).expect(case);
            let created = format!("web-{}", pod_template_hash(&template("new"), None));
            let got: Vec<(String, i32)> = plan
                .scales()
                .into_iter()
                .map(|(n, r)| {
                    (
                        if n == created {
                            "web-new-created".into()
                        } else {
                            n
                        },
                        r,
                    )
                })
                .collect();
            let want: Vec<(String, i32)> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn recreate_waits_for_old_pods_even_when_counts_say_zero() {
        let d = deploy(3, "recreate", "new");
        let old = rs(&d, "old", 1, 0, 0, 100);
        let mut w = world(vec![old]);
        w.pods_by_rs.insert("uid-old".into(), 1);
        assert_eq!(reconcile(&d, &w, now()).expect("plan").scales(), vec![]);
        w.pods_by_rs.clear();
        assert_eq!(reconcile(&d, &w, now()).expect("plan").scales().len(), 1);
    }

    #[test]
    fn scaling_during_rollout_is_proportional() {
        // (replicas now, [(image, replicas)] sized for 3 with surge 1 (max 4)) -> scales
        let table: Vec<(i32, Scales, Scales)> = vec![
            // 3 -> 6: allowed 7, 3 to add: old 3*7/4=5.25 -> 5, new 1*7/4=1.75 -> 2.
            (
                6,
                vec![("old", 3), ("new", 1)],
                vec![("web-old", 5), ("web-new", 2)],
            ),
            // 3 -> 1: allowed 2, 2 to remove: old 3*2/4=1.5 -> 2 (-1), new 0.5 -> 1 (0),
            // the leftover -1 goes to the biggest.
            (
                1,
                vec![("old", 3), ("new", 1)],
                vec![("web-old", 1), ("web-new", 1)],
            ),
            // only one active ReplicaSet: it takes the whole new size.
            (5, vec![("old", 0), ("new", 3)], vec![("web-new", 5)]),
        ];
        for (replicas, rss, want) in table {
            let sized = deploy(3, "1/0", "new");
            let d = deploy(replicas, "1/0", "new");
            let items: Vec<ReplicaSet> = rss
                .iter()
                .enumerate()
                .map(|(i, (image, n))| rs(&sized, image, i as i64 + 1, *n, 0, 100 - i as i64))
                .collect();
            let plan = reconcile(&d, &world(items), now()).expect("plan");
            let want: Vec<(String, i32)> = want.iter().map(|(n, r)| (n.to_string(), *r)).collect();
            assert_eq!(plan.scales(), want, "to {replicas}");
            // Every resized ReplicaSet now records the new size.
            for s in &plan.steps {
                if let Step::UpdateReplicaSet { annotations, .. } = s {
                    assert_eq!(
                        annotations.get(DESIRED_REPLICAS),
                        Some(&replicas.to_string())
                    );
                }
            }
        }
    }

    #[test]
    fn paused_deployment_does_not_roll() {
        let mut d = deploy(3, "1/0", "new");
        if let Some(s) = d.spec.as_mut() {
            s.paused = Some(true);
        }
        let plan = reconcile(&d, &world(vec![rs(&d, "old", 1, 3, 3, 100)]), now()).expect("plan");
        assert_eq!(plan.scales(), vec![]);
        let status = plan.status().expect("status");
        let prog = condition(status, "Progressing").expect("progressing");
        assert_eq!(
            (prog.status.as_str(), prog.reason.as_deref()),
            ("Unknown", Some("DeploymentPaused"))
        );
        // ... but it still scales.
        let d5 = {
            let mut d5 = d.clone();
            if let Some(s) = d5.spec.as_mut() {
                s.replicas = Some(5);
            }
            d5
        };
        let plan = reconcile(&d5, &world(vec![rs(&d, "old", 1, 3, 3, 100)]), now()).expect("plan");
        assert_eq!(plan.scales(), vec![("web-old".to_string(), 5)]);
    }

    #[test]
    fn undo_reuses_the_old_replica_set_with_the_next_revision() {
        // The template went back to "v1": its ReplicaSet (revision 1) becomes revision 3.
        let d = deploy(3, "25%/25%", "v1");
        let rss = vec![rs(&d, "v1", 1, 0, 0, 100), rs(&d, "v2", 2, 3, 0, 50)];
        let plan = reconcile(&d, &world(rss), now()).expect("plan");
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::CreateReplicaSet(_))),
            "{plan:?}"
        );
        let rev = plan.steps.iter().find_map(|s| match s {
            Step::UpdateReplicaSet {
                name, annotations, ..
            } if name == "web-v1" => annotations.get(REVISION).cloned(),
            _ => None,
        });
        assert_eq!(rev.as_deref(), Some("3"));
        assert!(plan.steps.contains(&Step::DeploymentRevision("3".into())));
        // And it starts growing back within the surge: 3 + 1 allowed, 3 present.
        assert_eq!(plan.scales().last(), Some(&("web-v1".to_string(), 1)));
    }

    #[test]
    fn status_and_conditions() {
        // (case, ReplicaSets, Progressing before (reason, seconds since update)) ->
        // (replicas, updated, available, unavailable, Available, Progressing reason)
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, i64, i32, i32)>,
            Option<(&'a str, i64)>,
            (i32, i32, i32, i32, &'a str, &'a str),
        );
        let table: Vec<Case> = vec![
            (
                "rolling, nothing available",
                vec![("old", 1, 3, 0), ("new", 2, 1, 0)],
                Some(("ReplicaSetUpdated", 10)),
                (
                    4,
                    1,
                    0,
                    4,
                    "MinimumReplicasUnavailable",
                    "ReplicaSetUpdated",
                ),
            ),
            (
                "complete",
                vec![("old", 1, 0, 0), ("new", 2, 3, 3)],
                Some(("ReplicaSetUpdated", 10)),
                (
                    3,
                    3,
                    3,
                    0,
                    "MinimumReplicasAvailable",
                    "NewReplicaSetAvailable",
                ),
            ),
            (
                "stuck past the deadline",
                vec![("old", 1, 3, 0), ("new", 2, 1, 0)],
                Some(("ReplicaSetUpdated", 700)),
                (
                    4,
                    1,
                    0,
                    4,
                    "MinimumReplicasUnavailable",
                    "ProgressDeadlineExceeded",
                ),
            ),
            (
                "no condition yet: found the new ReplicaSet",
                vec![("new", 1, 3, 0)],
                None,
                (
                    3,
                    3,
                    0,
                    3,
                    "MinimumReplicasUnavailable",
                    "FoundNewReplicaSet",
                ),
            ),
        ];
        for (case, rss, before, want) in table {
            let mut d = deploy(3, "1/0", "new");
            let items: Vec<ReplicaSet> = rss
                .iter()
                .map(|(i, rev, n, a)| rs(&d, i, *rev, *n, *a, 100 - rev))
                .collect();
            // Status as the previous pass left it, so only the deadline can move.
            let mut prev = DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(items.iter().map(|r| rs_status(r).0).sum()),
                updated_replicas: Some(items.last().map_or(0, |r| rs_status(r).0)),
                available_replicas: Some(items.iter().map(|r| rs_status(r).2).sum()),
                ..Default::default()
            };
            if let Some((reason, ago)) = before {
                let at = now() - jiff::SignedDuration::from_secs(ago);
                set_condition(
                    &mut prev,
                    new_condition("Progressing", "True", reason, String::new(), at),
                );
            }
            d.status = Some(prev);
            let plan = reconcile(&d, &world(items), now()).expect(case);
            let s = plan.status().expect(case);
            let z = |v: Option<i32>| v.unwrap_or(0);
            let got = (
                z(s.replicas),
                z(s.updated_replicas),
                z(s.available_replicas),
                z(s.unavailable_replicas),
                condition(s, "Available")
                    .and_then(|c| c.reason.as_deref())
                    .unwrap_or(""),
                condition(s, "Progressing")
                    .and_then(|c| c.reason.as_deref())
                    .unwrap_or(""),
            );
            assert_eq!(got, want, "{case}");
            assert_eq!(s.observed_generation, Some(2));
        }
    }

    #[test]
    fn history_beyond_the_limit_is_cleaned_when_empty() {
        let mut d = deploy(3, "1/0", "new");
        if let Some(s) = d.spec.as_mut() {
            s.revision_history_limit = Some(1);
        }
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            updated_replicas: Some(3),
            available_replicas: Some(3),
            ..Default::default()
        });
        let rss = vec![
            rs(&d, "a", 1, 0, 0, 400),
            rs(&d, "b", 2, 0, 0, 300),
            rs(&d, "c", 3, 0, 0, 200),
            rs(&d, "new", 4, 3, 3, 100),
        ];
        let plan = reconcile(&d, &world(rss), now()).expect("plan");
        let deleted: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::DeleteReplicaSet(_)))
            .collect();
        assert_eq!(
            deleted,
            vec![
                &Step::DeleteReplicaSet("web-a".into()),
                &Step::DeleteReplicaSet("web-b".into())
            ]
        );
    }

    #[test]
    fn orphans_are_adopted_and_strays_released() {
        let d = deploy(3, "1/0", "new");
        let mut orphan = rs(&d, "new", 1, 3, 3, 100);
        orphan.metadata.owner_references = None;
        let mut stray = rs(&d, "old", 1, 0, 0, 200);
        stray.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
        let plan = reconcile(&d, &world(vec![orphan, stray]), now()).expect("plan");
        assert!(plan
            .steps
            .contains(&Step::AdoptReplicaSet("web-new".into())));
        assert!(plan
            .steps
            .contains(&Step::ReleaseReplicaSet("web-old".into())));
        assert!(!plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::CreateReplicaSet(_))));
    }

    #[test]
    fn templates_equal_ignoring_hash_and_empty_values() {
        let a = template("v1");
        let mut b = a.clone();
        if let Some(m) = b.metadata.as_mut() {
            m.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), "x".into());
            m.annotations = Some(BTreeMap::new());
        }
        assert!(same_template(&a, &b));
        assert!(!same_template(&a, &template("v2")));
    }
}
