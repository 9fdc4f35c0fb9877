//! Job controller: run pods from a Job's template until `completions` of them succeed, or
//! give up after `backoffLimit` failures or `activeDeadlineSeconds`, as the Kubernetes Job
//! controller does for NonIndexed jobs.
//!
//! ```text
//!  Job ──┐                          ┌─▶ create pods (generateName <job>-, labels, controller ref)
//!  Pods ─┴─▶ reconcile(now) (pure) ─▶ Plan ─▶ delete pods (surplus, or the job is finishing)
//!  (fresh list, by controller-uid)   ├─▶ status (active/ready/terminating/succeeded/failed,
//!                                    │          startTime, conditions, completionTime)
//!                                    ├─▶ events (Completed, BackoffLimitExceeded, ...)
//!                                    └─▶ delete the Job itself once its TTL has passed
//! ```
//!
//! Finishing happens in two steps, as in Kubernetes 1.33: an interim condition
//! (`SuccessCriteriaMet` or `FailureTarget`) first, active pods are deleted, and the terminal
//! condition (`Complete` or `Failed`) is written once no pod of the job is still running or
//! terminating.
//!
//! Differences from Kubernetes worth knowing: kith's API does not add the controller-uid
//! selector and labels to a Job, so this controller labels the pods it creates itself and
//! recognises its pods by their controller ownerReference (no adoption of orphans). Pods
//! carry no `batch.kubernetes.io/job-tracking` finalizer; instead the succeeded and failed
//! counts never go below what the Job's status already says, so a finished pod that is
//! deleted is not forgotten. Indexed completion mode and pod failure policies are not
//! implemented; such jobs run as NonIndexed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};

use super::replicaset::{controller_of, controller_ref, deletion_order, is_ready};
use crate::events::{self, EventType};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "job-controller";
/// Label with the uid of the Job that created a pod.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// Label with the name of the Job that created a pod.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The pre-1.27 spellings, still set because older tools select pods by them.
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";
/// At most this many pods are created in one pass, as Kubernetes' burst limit.
const BURST: usize = 500;
/// First delay before recreating a pod after a failure; it doubles with each failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest delay between recreations, as documented for Kubernetes Jobs.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 60);
/// A pass with nothing pending still runs this often, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job has no {0}")]
    Missing(&'static str),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// An Event the loop should record about the Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub ty: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// What one pass should do for a Job.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// How many pods to create from the template.
    pub create: usize,
    /// Pods to delete: surplus over parallelism, or every active pod of a finishing job.
    pub delete: Vec<String>,
    /// The status the Job should report.
    pub status: JobStatus,
    /// Events about the Job (pod creations and deletions are recorded by the loop).
    pub events: Vec<JobEvent>,
    /// `ttlSecondsAfterFinished` has passed: delete the Job.
    pub delete_job: bool,
    /// Look again after this long (deadline, back-off or TTL), if sooner than a resync.
    pub requeue_after: Option<Duration>,
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn deleting(meta: &kube::api::ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// When a finished pod finished: the latest container exit, else when it stopped being
/// ready, else when it was deleted, else when it was created (the best we can tell).
fn finish_time(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref();
    let exits = status
        .and_then(|s| s.container_statuses.as_deref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    exits
        .or_else(|| {
            status
                .and_then(|s| s.conditions.as_deref())
                .into_iter()
                .flatten()
                .find(|c| c.type_ == "Ready" && c.status == "False")
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The delay before another pod may be created after `failures` failures in a row:
/// 10 s, 20 s, 40 s, ... capped at six minutes; none without a failure.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    BACKOFF_BASE
        .checked_mul(1u32 << doublings)
        .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX))
}

/// When the next pod may be created, given the job's finished pods: failures since the
/// last success set the delay, counted from the latest failure. `None`: no waiting.
pub fn next_creation_allowed(finished: &[&Pod]) -> Option<jiff::Timestamp> {
    let last_success = finished
        .iter()
        .filter(|p| phase(p) == Some("Succeeded"))
        .filter_map(|p| finish_time(p))
        .max();
    let failures: Vec<jiff::Timestamp> = finished
        .iter()
        .filter(|p| phase(p) == Some("Failed"))
        .filter_map(|p| finish_time(p))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let last = failures.iter().max()?;
    let n = u32::try_from(failures.len()).unwrap_or(u32::MAX);
    let delay = jiff::SignedDuration::try_from(backoff_delay(n)).ok()?;
    last.checked_add(delay).ok()
}

fn condition(status: &JobStatus, ty: &str) -> Option<JobCondition> {
    status
        .conditions
        .as_deref()
        .into_iter()
        .flatten()
        .find(|c| c.type_ == ty && c.status == "True")
        .cloned()
}

/// Set condition `ty` to `status`, keeping the transition time when the status is unchanged.
fn set_condition(
    conds: &mut Vec<JobCondition>,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) {
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == ty) {
        if c.status != status {
            c.last_transition_time = Some(Time(now));
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(Time(now));
        return;
    }
    conds.push(JobCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

/// Whether the Job has a terminal condition (`Complete` or `Failed`).
pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| condition(s, "Complete").is_some() || condition(s, "Failed").is_some())
}

/// When a finished Job finished: its completionTime, else when it failed.
fn finished_at(status: &JobStatus) -> Option<jiff::Timestamp> {
    status.completion_time.as_ref().map(|t| t.0).or_else(|| {
        condition(status, "Failed")
            .or_else(|| condition(status, "Complete"))
            .and_then(|c| c.last_transition_time)
            .map(|t| t.0)
    })
}

fn until(now: jiff::Timestamp, at: jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO)
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn nonzero(n: i32) -> Option<i32> {
    (n > 0).then_some(n)
}

/// Decide what to do for `job`, given the pods of its namespace, at time `now`. Pure.
pub fn reconcile(job: &Job, pods: &[Pod], now: jiff::Timestamp) -> Result<Plan, Error> {
    let uid = job.metadata.uid.as_deref().ok_or(Error::Missing("uid"))?;
    let spec = job.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let old = job.status.clone().unwrap_or_default();
    let mut plan = Plan::default();

    let ours: Vec<&Pod> = pods
        .iter()
        .filter(|p| controller_of(*p).is_some_and(|r| r.uid == uid))
        .collect();
    let mut active: Vec<&Pod> = ours
        .iter()
        .copied()
        .filter(|p| !terminal(p) && !deleting(&p.metadata))
        .collect();
    let mut terminating = ours
        .iter()
        .filter(|p| !terminal(p) && deleting(&p.metadata))
        .count();
    let finished: Vec<&Pod> = ours.iter().copied().filter(|p| terminal(p)).collect();
    let seen_succeeded = count(
        finished
            .iter()
            .filter(|p| phase(p) == Some("Succeeded"))
            .count(),
    );
    let seen_failed = count(finished.len()) - seen_succeeded;
    // Finished pods may be deleted by anyone; what the status already counted stays counted.
    let succeeded = seen_succeeded.max(old.succeeded.unwrap_or(0));
    let failed = seen_failed.max(old.failed.unwrap_or(0));

    let mut status = JobStatus {
        succeeded: nonzero(succeeded),
        failed: nonzero(failed),
        start_time: old.start_time.clone(),
        completion_time: old.completion_time.clone(),
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    let mut conds = old.conditions.clone().unwrap_or_default();

    // A finished job keeps its outcome; only its TTL is left to watch.
    if is_finished(job) {
        status.active = nonzero(count(active.len()));
        status.ready = Some(count(active.iter().filter(|p| is_ready(p)).count()));
        status.terminating = Some(count(terminating));
        if let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, finished_at(&old)) {
            let expiry = at
                .checked_add(jiff::SignedDuration::from_secs(i64::from(ttl.max(0))))
                .unwrap_or(at);
            if now >= expiry {
                plan.delete_job = !deleting(&job.metadata);
            } else {
                plan.requeue_after = Some(until(now, expiry));
            }
        }
        plan.status = status;
        return Ok(plan);
    }
    // A job being deleted starts nothing; the garbage collector removes its pods.
    if deleting(&job.metadata) {
        plan.status = old;
        return Ok(plan);
    }

    let suspended = spec.suspend.unwrap_or(false);
    if suspended {
        if condition(&old, "Suspended").is_none() {
            set_condition(
                &mut conds,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            );
            plan.events.push(JobEvent {
                ty: EventType::Normal,
                reason: "Suspended",
                message: "Job suspended".into(),
            });
        }
        plan.delete = active.iter().map(|p| p.name_any()).collect();
        terminating += active.len();
        active.clear();
    } else {
        if condition(&old, "Suspended").is_some() {
            set_condition(
                &mut conds,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            );
            plan.events.push(JobEvent {
                ty: EventType::Normal,
                reason: "Resumed",
                message: "Job resumed".into(),
            });
            // The deadline counts from the resume, as in Kubernetes.
            status.start_time = Some(Time(now));
        }
        if status.start_time.is_none() {
            status.start_time = Some(Time(now));
        }
    }
    let start = status.start_time.as_ref().map(|t| t.0);

    // The interim condition says the outcome is decided; it is carried until the
    // terminal one can be written.
    let decided = condition(&old, "FailureTarget")
        .map(|c| (false, c))
        .or_else(|| condition(&old, "SuccessCriteriaMet").map(|c| (true, c)));
    let decided = match decided {
        Some((ok, c)) => Some((
            ok,
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default(),
        )),
        None if !suspended => decide(spec, &active, failed, succeeded, start, now)
            .inspect(|(ok, reason, message)| {
                let ty = if *ok {
                    "SuccessCriteriaMet"
                } else {
                    "FailureTarget"
                };
                set_condition(&mut conds, ty, "True", reason, message, now);
            })
            .or_else(|| {
                // Not decided yet: wake up when the deadline passes.
                let ads = spec.active_deadline_seconds?;
                let at = start?
                    .checked_add(jiff::SignedDuration::from_secs(ads))
                    .ok()?;
                plan.requeue_after = earliest(plan.requeue_after, until(now, at));
                None
            }),
        None => None,
    };

    if let Some((ok, reason, message)) = decided {
        // The outcome is known: no pod of this job should keep running.
        plan.delete.extend(active.iter().map(|p| p.name_any()));
        terminating += active.len();
        active.clear();
        if terminating == 0 {
            if ok {
                set_condition(&mut conds, "Complete", "True", &reason, &message, now);
                status.completion_time = Some(Time(now));
                plan.events.push(JobEvent {
                    ty: EventType::Normal,
                    reason: "Completed",
                    message: "Job completed".into(),
                });
            } else {
                set_condition(&mut conds, "Failed", "True", &reason, &message, now);
                plan.events.push(JobEvent {
                    ty: EventType::Warning,
                    reason: match reason.as_str() {
                        "DeadlineExceeded" => "DeadlineExceeded",
                        _ => "BackoffLimitExceeded",
                    },
                    message,
                });
            }
        }
    } else if !suspended {
        let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
        let want = match spec.completions {
            Some(c) => parallelism.min(usize::try_from((c - succeeded).max(0)).unwrap_or(0)),
            // A work queue: once one pod succeeded, no new pod is needed.
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        if active.len() < want {
            match next_creation_allowed(&finished) {
                Some(at) if at > now => {
                    plan.requeue_after = earliest(plan.requeue_after, until(now, at));
                }
                _ => plan.create = (want - active.len()).min(BURST),
            }
        } else if active.len() > want {
            active.sort_by(|a, b| deletion_order(a, b));
            let surplus = active.len() - want;
            plan.delete
                .extend(active.drain(..surplus).map(|p| p.name_any()));
            terminating += surplus;
        }
    }

    status.active = nonzero(count(active.len()) + count(plan.create));
    status.ready = Some(count(active.iter().filter(|p| is_ready(p)).count()));
    status.terminating = Some(count(terminating));
    status.conditions = (!conds.is_empty()).then_some(conds);
    plan.status = status;
    Ok(plan)
}

/// Whether the job's outcome is decided: `(succeeded?, reason, message)`.
fn decide(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    active: &[&Pod],
    failed: i32,
    succeeded: i32,
    start: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<(bool, String, String)> {
    if exceeds_backoff_limit(spec, active, failed) {
        return Some((
            false,
            "BackoffLimitExceeded".into(),
            "Job has reached the specified backoff limit".into(),
        ));
    }
    if let (Some(ads), Some(start)) = (spec.active_deadline_seconds, start) {
        if now.duration_since(start) >= jiff::SignedDuration::from_secs(ads) {
            return Some((
                false,
                "DeadlineExceeded".into(),
                "Job was active longer than specified deadline".into(),
            ));
        }
    }
    let complete = match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    complete.then(|| {
        (
            true,
            "CompletionsReached".into(),
            "Reached expected number of succeeded pods".into(),
        )
    })
}

/// Failed pods, plus container restarts of running pods when the template restarts them
/// in place (`OnFailure`), past `backoffLimit`.
fn exceeds_backoff_limit(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    active: &[&Pod],
    failed: i32,
) -> bool {
    let limit = spec.backoff_limit.unwrap_or(6);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let mut failures = i64::from(failed);
    if on_failure {
        for pod in active {
            let status = pod.status.as_ref();
            let restarts = status
                .and_then(|s| s.container_statuses.as_deref())
                .into_iter()
                .flatten()
                .chain(
                    status
                        .and_then(|s| s.init_container_statuses.as_deref())
                        .into_iter()
                        .flatten(),
                )
                .map(|c| i64::from(c.restart_count));
            failures += restarts.sum::<i64>();
        }
    }
    failures > i64::from(limit)
}

/// The pod a Job creates: its template, named `<job>-<random>`, labelled with the job's
/// uid and name, controlled by the job.
pub fn pod_from_template(job: &Job) -> Result<Pod, Error> {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or(Error::Missing("spec"))?;
    let owner = controller_ref(job).ok_or(Error::Missing("name or uid"))?;
    let uid = owner.uid.clone();
    let name = job.name_any();
    let tm = template.metadata.unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    for (k, v) in [
        (CONTROLLER_UID, &uid),
        (LEGACY_CONTROLLER_UID, &uid),
        (JOB_NAME, &name),
        (LEGACY_JOB_NAME, &name),
    ] {
        labels.insert(k.into(), v.clone());
    }
    let mut pod = Pod {
        spec: template.spec,
        ..Default::default()
    };
    pod.metadata.generate_name = Some(format!("{name}-"));
    pod.metadata.namespace = job.metadata.namespace.clone();
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = tm.annotations;
    pod.metadata.finalizers = tm.finalizers;
    pod.metadata.owner_references = Some(vec![owner]);
    Ok(pod)
}

/// A merge patch that turns `old` into `new`: keys `new` drops become nulls, since a merge
/// patch would otherwise leave them as they were. `None` when nothing changes.
pub(crate) fn status_patch(old: Option<&Value>, new: &Value) -> Option<Value> {
    let empty = serde_json::Map::new();
    let old_map = old.and_then(Value::as_object).unwrap_or(&empty);
    let mut body = new.as_object().cloned().unwrap_or_default();
    if old_map == &body {
        return None;
    }
    for k in old_map.keys() {
        if !body.contains_key(k) {
            body.insert(k.clone(), Value::Null);
        }
    }
    Some(json!({ "status": body }))
}

struct Ctx {
    client: Client,
}

/// Run the Job controller until the task is dropped.
pub async fn run(client: Client) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    super::queue::Queue::new("job", jobs)
        .watches(pods, |pod| {
            let ns = pod.namespace().unwrap_or_default();
            controller_of(&pod)
                .filter(|r| r.kind == "Job")
                .map(|r| ObjectRef::<Job>::new(&r.name).within(&ns))
        })
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

fn error_policy(job: Arc<Job>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(job = %job.name_any(), error = %err, "job pass failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile_one(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached copy may predate our own last status write; read the current one.
    let Some(job) = jobs.get_opt(&job.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let uid = job.metadata.uid.clone().ok_or(Error::Missing("uid"))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{CONTROLLER_UID}={uid}")))
        .await?
        .items;
    let plan = reconcile(&job, &listed, jiff::Timestamp::now())?;
    let reference = job.object_ref(&());

    if plan.create > 0 {
        let pod = pod_from_template(&job)?;
        for _ in 0..plan.create {
            super::pods::create_pod(&ctx.client, &pods, &pod, &reference, COMPONENT).await?;
        }
    }
    for name in &plan.delete {
        super::pods::delete_pod(
            &ctx.client,
            &pods,
            name,
            &DeleteParams::background(),
            &reference,
            COMPONENT,
        )
        .await?;
    }
    let old = job.status.as_ref().map(serde_json::to_value).transpose()?;
    let new = serde_json::to_value(&plan.status)?;
    if let Some(body) = status_patch(old.as_ref(), &new) {
        match jobs
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(body),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
        // Events about the outcome follow the status write, so a failed write that is
        // retried does not announce the outcome twice.
        for ev in &plan.events {
            events::record(
                &ctx.client,
                &reference,
                ev.ty,
                ev.reason,
                &ev.message,
                COMPONENT,
            )
            .await;
        }
    }
    if plan.delete_job {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match jobs.delete(&job.name_any(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(plan.requeue_after.unwrap_or(RESYNC)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
        PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    const T0: &str = "2026-01-01T00:00:00Z";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn at(secs: i64) -> jiff::Timestamp {
        ts(T0) + jiff::SignedDuration::from_secs(secs)
    }

    /// Job knobs for a table row; `None` leaves Kubernetes' default.
    #[derive(Clone, Copy, Default)]
    struct Knobs {
        parallelism: Option<i32>,
        completions: Option<i32>,
        backoff: Option<i32>,
        deadline: Option<i64>,
        ttl: Option<i32>,
        suspend: bool,
        on_failure: bool,
        /// Seconds after T0 the job started (status.startTime); None: not started yet.
        started: Option<i64>,
    }

    fn job(k: Knobs, conditions: &[(&str, &str)]) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("ns".into()),
                uid: Some("job-uid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                parallelism: Some(k.parallelism.unwrap_or(1)),
                completions: k.completions.or(Some(1)).filter(|c| *c >= 0),
                backoff_limit: Some(k.backoff.unwrap_or(6)),
                active_deadline_seconds: k.deadline,
                ttl_seconds_after_finished: k.ttl,
                suspend: Some(k.suspend),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "pi".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some(
                            if k.on_failure { "OnFailure" } else { "Never" }.into(),
                        ),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: Some(JobStatus {
                start_time: k.started.map(|s| Time(at(s))),
                conditions: (!conditions.is_empty()).then(|| {
                    conditions
                        .iter()
                        .map(|(ty, reason)| JobCondition {
                            type_: (*ty).into(),
                            status: "True".into(),
                            reason: Some((*reason).into()),
                            message: Some("m".into()),
                            last_transition_time: Some(Time(at(0))),
                            ..Default::default()
                        })
                        .collect()
                }),
                completion_time: conditions
                    .iter()
                    .any(|(ty, _)| *ty == "Complete")
                    .then(|| Time(at(0))),
                ..Default::default()
            }),
        }
    }

    /// A pod by a short description: `r` running, `R` running with 2 restarts, `s`
    /// succeeded, `f` failed, `d` being deleted (still running), `o` owned by another job;
    /// finished pods finished `fin` seconds after T0.
    fn pod(name: &str, flags: &str, fin: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(at(fin - 1)));
        let uid = if flags.contains('o') {
            "other-uid"
        } else {
            "job-uid"
        };
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "pi".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }]);
        if flags.contains('d') {
            p.metadata.deletion_timestamp = Some(Time(at(fin)));
        }
        let (phase, restarts, terminated) = if flags.contains('s') {
            ("Succeeded", 0, true)
        } else if flags.contains('f') {
            ("Failed", 0, true)
        } else if flags.contains('R') {
            ("Running", 2, false)
        } else {
            ("Running", 0, false)
        };
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "c".into(),
                restart_count: restarts,
                state: terminated.then(|| ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: i32::from(phase == "Failed"),
                        finished_at: Some(Time(at(fin))),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    struct Case {
        name: &'static str,
        knobs: Knobs,
        conditions: &'static [(&'static str, &'static str)],
        pods: Vec<Pod>,
        now: i64,
        create: usize,
        delete: &'static [&'static str],
        /// active, succeeded, failed, terminating
        counts: (i32, i32, i32, i32),
        /// condition types that are True afterwards
        conds: &'static [&'static str],
        events: &'static [&'static str],
        requeue: Option<u64>,
        delete_job: bool,
    }

    fn case(name: &'static str, knobs: Knobs, pods: Vec<Pod>, now: i64) -> Case {
        Case {
            name,
            knobs,
            conditions: &[],
            pods,
            now,
            create: 0,
            delete: &[],
            counts: (0, 0, 0, 0),
            conds: &[],
            events: &[],
            requeue: None,
            delete_job: false,
        }
    }

    #[test]
    fn reconcile_table() {
        let k = Knobs::default();
        let cases = vec![
            Case {
                create: 1,
                counts: (1, 0, 0, 0),
                ..case("new job: one pod", k, vec![], 0)
            },
            Case {
                create: 2,
                counts: (3, 0, 0, 0),
                ..case(
                    "parallelism 3 of 5: fill up to 3",
                    Knobs {
                        parallelism: Some(3),
                        completions: Some(5),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "r", 0), pod("x", "ro", 0)],
                    5,
                )
            },
            Case {
                create: 1,
                counts: (2, 4, 0, 0),
                ..case(
                    "parallelism capped by the completions left",
                    Knobs {
                        parallelism: Some(3),
                        completions: Some(6),
                        started: Some(0),
                        ..k
                    },
                    vec![
                        pod("a", "s", 1),
                        pod("b", "s", 2),
                        pod("c", "s", 3),
                        pod("d", "s", 4),
                        pod("e", "r", 4),
                    ],
                    5,
                )
            },
            Case {
                counts: (0, 1, 0, 0),
                conds: &["SuccessCriteriaMet", "Complete"],
                events: &["Completed"],
                ..case(
                    "the pod succeeded: complete",
                    Knobs {
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "s", 3)],
                    5,
                )
            },
            Case {
                delete: &["b"],
                counts: (0, 1, 0, 1),
                conds: &["SuccessCriteriaMet"],
                ..case(
                    "completions reached with a pod still running: delete it, complete later",
                    Knobs {
                        parallelism: Some(2),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "s", 3), pod("b", "r", 3)],
                    5,
                )
            },
            Case {
                conditions: &[("SuccessCriteriaMet", "CompletionsReached")],
                counts: (0, 1, 0, 0),
                conds: &["SuccessCriteriaMet", "Complete"],
                events: &["Completed"],
                ..case(
                    "last pod gone after success criteria met: complete",
                    Knobs {
                        parallelism: Some(2),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "s", 3)],
                    9,
                )
            },
            Case {
                requeue: Some(7),
                counts: (0, 0, 1, 0),
                ..case(
                    "one failure: wait 10 s after it before the next pod",
                    Knobs {
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 3)],
                    6,
                )
            },
            Case {
                create: 1,
                counts: (1, 0, 1, 0),
                ..case(
                    "one failure, 10 s passed: next pod",
                    Knobs {
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 3)],
                    13,
                )
            },
            Case {
                requeue: Some(20),
                counts: (0, 0, 3, 0),
                ..case(
                    "three failures in a row: 40 s after the last",
                    Knobs {
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 1), pod("b", "f", 20), pod("c", "f", 50)],
                    70,
                )
            },
            Case {
                create: 1,
                counts: (1, 1, 1, 0),
                ..case(
                    "a success after the failures resets the back-off",
                    Knobs {
                        completions: Some(2),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 1), pod("b", "s", 20)],
                    21,
                )
            },
            Case {
                counts: (0, 0, 2, 0),
                conds: &["FailureTarget", "Failed"],
                events: &["BackoffLimitExceeded"],
                ..case(
                    "backoffLimit 1, two failures: failed",
                    Knobs {
                        backoff: Some(1),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 1), pod("b", "f", 20)],
                    21,
                )
            },
            Case {
                counts: (1, 0, 1, 0),
                ..case(
                    "backoffLimit 1, one failure and one running: keep going",
                    Knobs {
                        backoff: Some(1),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 1), pod("b", "r", 20)],
                    21,
                )
            },
            Case {
                delete: &["a"],
                counts: (0, 0, 0, 1),
                conds: &["FailureTarget"],
                ..case(
                    "OnFailure: container restarts count against backoffLimit",
                    Knobs {
                        backoff: Some(1),
                        on_failure: true,
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "R", 1)],
                    21,
                )
            },
            Case {
                delete: &["a"],
                counts: (0, 0, 0, 1),
                conds: &["FailureTarget"],
                ..case(
                    "activeDeadlineSeconds passed: stop the pods",
                    Knobs {
                        deadline: Some(30),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "r", 1)],
                    30,
                )
            },
            Case {
                counts: (1, 0, 0, 0),
                requeue: Some(20),
                ..case(
                    "activeDeadlineSeconds ahead: look again then",
                    Knobs {
                        deadline: Some(30),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "r", 1)],
                    10,
                )
            },
            Case {
                conditions: &[("FailureTarget", "DeadlineExceeded")],
                counts: (0, 0, 0, 0),
                conds: &["FailureTarget", "Failed"],
                events: &["DeadlineExceeded"],
                ..case(
                    "deadline: once the pods are gone, failed",
                    Knobs {
                        deadline: Some(30),
                        started: Some(0),
                        ..k
                    },
                    vec![],
                    32,
                )
            },
            Case {
                conditions: &[("FailureTarget", "DeadlineExceeded")],
                counts: (0, 0, 0, 1),
                conds: &["FailureTarget"],
                ..case(
                    "deadline: a pod still terminating holds the Failed condition back",
                    Knobs {
                        deadline: Some(30),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "d", 31)],
                    32,
                )
            },
            Case {
                delete: &["a"],
                counts: (0, 0, 0, 1),
                conds: &["Suspended"],
                events: &["Suspended"],
                ..case(
                    "suspended: delete the running pod, create none",
                    Knobs {
                        suspend: true,
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "r", 1)],
                    5,
                )
            },
            Case {
                delete: &["b"],
                counts: (1, 0, 0, 1),
                ..case(
                    "more pods than parallelism: delete the surplus",
                    Knobs {
                        parallelism: Some(1),
                        completions: Some(4),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "r", 1), pod("b", "r", 2)],
                    5,
                )
            },
            Case {
                conditions: &[
                    ("SuccessCriteriaMet", "CompletionsReached"),
                    ("Complete", ""),
                ],
                counts: (0, 1, 0, 0),
                conds: &["SuccessCriteriaMet", "Complete"],
                requeue: Some(50),
                ..case(
                    "finished, ttl 60 s not yet over",
                    Knobs {
                        ttl: Some(60),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "s", 0)],
                    10,
                )
            },
            Case {
                conditions: &[("FailureTarget", "BackoffLimitExceeded"), ("Failed", "")],
                counts: (0, 0, 1, 0),
                conds: &["FailureTarget", "Failed"],
                delete_job: true,
                ..case(
                    "finished, ttl over: delete the job",
                    Knobs {
                        ttl: Some(60),
                        started: Some(0),
                        ..k
                    },
                    vec![pod("a", "f", 0)],
                    60,
                )
            },
        ];
        for c in cases {
            let j = job(c.knobs, c.conditions);
            let plan = reconcile(&j, &c.pods, at(c.now)).expect(c.name);
            assert_eq!(plan.create, c.create, "{}: create", c.name);
            assert_eq!(plan.delete, c.delete, "{}: delete", c.name);
            let s = &plan.status;
            assert_eq!(
                (
                    s.active.unwrap_or(0),
                    s.succeeded.unwrap_or(0),
                    s.failed.unwrap_or(0),
                    s.terminating.unwrap_or(0)
                ),
                c.counts,
                "{}: counts",
                c.name
            );
            let conds: Vec<&str> = s
                .conditions
                .iter()
                .flatten()
                .filter(|c| c.status == "True")
                .map(|c| c.type_.as_str())
                .collect();
            assert_eq!(conds, c.conds, "{}: conditions", c.name);
            let events: Vec<&str> = plan.events.iter().map(|e| e.reason).collect();
            assert_eq!(events, c.events, "{}: events", c.name);
            assert_eq!(
                plan.requeue_after,
                c.requeue.map(Duration::from_secs),
                "{}: requeue",
                c.name
            );
            assert_eq!(plan.delete_job, c.delete_job, "{}: delete job", c.name);
            assert!(s.start_time.is_some(), "{}: startTime", c.name);
        }
    }

    #[test]
    fn outcome_conditions_carry_reason_and_times() {
        let k = Knobs {
            backoff: Some(0),
            started: Some(0),
            ..Default::default()
        };
        let plan = reconcile(&job(k, &[]), &[pod("a", "f", 1)], at(5)).expect("plan");
        let failed = condition(&plan.status, "Failed").expect("Failed");
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(
            failed.message.as_deref(),
            Some("Job has reached the specified backoff limit")
        );
        assert_eq!(failed.last_transition_time, Some(Time(at(5))));
        assert_eq!(plan.events[0].ty, EventType::Warning);
        assert!(plan.status.completion_time.is_none());

        let ok = reconcile(&job(Knobs::default(), &[]), &[pod("a", "s", 1)], at(7)).expect("plan");
        assert_eq!(ok.status.completion_time, Some(Time(at(7))));
        assert_eq!(ok.status.start_time, Some(Time(at(7))));
        let complete = condition(&ok.status, "Complete").expect("Complete");
        assert_eq!(complete.reason.as_deref(), Some("CompletionsReached"));
    }

    #[test]
    fn counts_never_drop_below_the_status() {
        let mut j = job(
            Knobs {
                completions: Some(3),
                started: Some(0),
                ..Default::default()
            },
            &[],
        );
        if let Some(s) = j.status.as_mut() {
            s.succeeded = Some(2);
            s.failed = Some(1);
        }
        // The two succeeded pods were deleted; one new one finished.
        let plan = reconcile(&j, &[pod("c", "s", 4)], at(5)).expect("plan");
        assert_eq!(plan.status.succeeded, Some(2));
        assert_eq!(plan.status.failed, Some(1));
        assert_eq!(plan.create, 1);
    }

    #[test]
    fn backoff_delay_doubles_up_to_six_minutes() {
        let table = [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 320),
            (7, 360),
            (40, 360),
        ];
        for (failures, secs) in table {
            assert_eq!(
                backoff_delay(failures),
                Duration::from_secs(secs),
                "{failures} failures"
            );
        }
    }

    #[test]
    fn deleting_job_does_nothing() {
        let mut j = job(Knobs::default(), &[]);
        j.metadata.deletion_timestamp = Some(Time(at(0)));
        let plan = reconcile(&j, &[], at(1)).expect("plan");
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
    }

    #[test]
    fn pod_carries_job_labels_and_controller_reference() {
        let p = pod_from_template(&job(Knobs::default(), &[])).expect("pod");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        let labels = p.labels();
        for (k, v) in [
            ("app", "pi"),
            (CONTROLLER_UID, "job-uid"),
            ("controller-uid", "job-uid"),
            (JOB_NAME, "pi"),
            ("job-name", "pi"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
        }
        let owner = controller_of(&p).expect("controller");
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.api_version.as_str(),
                owner.uid.as_str()
            ),
            ("Job", "batch/v1", "job-uid")
        );
        assert_eq!(owner.block_owner_deletion, Some(true));
    }

    #[test]
    fn status_patch_nulls_dropped_keys_and_skips_no_change() {
        let old = json!({"active": 1, "ready": 0});
        assert_eq!(status_patch(Some(&old), &old), None);
        assert_eq!(
            status_patch(Some(&old), &json!({"ready": 0, "succeeded": 1})),
            Some(json!({"status": {"ready": 0, "succeeded": 1, "active": null}}))
        );
        assert_eq!(
            status_patch(None, &json!({"ready": 0})),
            Some(json!({"status": {"ready": 0}}))
        );
    }
}
