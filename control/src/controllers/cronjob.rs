//! CronJob controller: create a Job from `spec.jobTemplate` at each time the cron
//! `spec.schedule` names (in `spec.timeZone`), as the Kubernetes CronJob controller does.
//!
//! ```text
//!  CronJob ─┐                           ┌─▶ create Job <cronjob>-<minutes since epoch>
//!  Jobs ────┴─▶ reconcile(now) (pure) ──▶ Plan ─▶ delete Jobs (Replace policy, history limits)
//!  (fresh list, by controller ref)       ├─▶ status (active, lastScheduleTime,
//!                                        │          lastSuccessfulTime)
//!                                        └─▶ events; look again at the next scheduled time
//! ```
//!
//! Missed times: of the schedule times since the last run (or since creation, or since
//! `now - startingDeadlineSeconds` when that is later), only the most recent one is run,
//! so a time older than `startingDeadlineSeconds` is never started; more than 100 missed
//! times are reported with a `TooManyMissedTimes` warning, as in Kubernetes.
//!
//! A CronJob without `spec.timeZone` follows UTC: Kubernetes uses the controller
//! manager's local zone, which in practice is UTC, and an edge box's local zone would make
//! the same manifest run at different times on different boxes.

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};

use super::job::status_patch;
use super::replicaset::{controller_of, controller_ref};
use crate::events::{self, EventType};

/// The name events from this controller carry as their source.
pub const COMPONENT: &str = "cronjob-controller";
/// Annotation on each Job with the schedule time it was created for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed start times than this earn a warning.
const TOO_MANY_MISSED: usize = 100;
/// A schedule with no time in this many years never fires (e.g. `0 0 30 2 *`).
const SEARCH_YEARS: i16 = 5;
/// A pass with nothing scheduled still runs this often, in case a watch missed something.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cronjob has no {0}")]
    Missing(&'static str),
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why a schedule string is not a cron schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("expected exactly 5 fields, found {0}: {1}")]
    FieldCount(usize, String),
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("TZ and CRON_TZ are not supported in the schedule, use spec.timeZone")]
    TimeZoneInSchedule,
    #[error("failed to parse {field} field {text:?}: {why}")]
    Field {
        field: &'static str,
        text: String,
        why: String,
    },
}

/// One field's range of values and, for months and weekdays, their names.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
// 7 is accepted as Sunday, as in Vixie cron, and folded onto 0.
const DOW: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// A parsed standard 5-field cron schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Whether day-of-month / day-of-week were `*` or `?`: then a day must match both,
    /// otherwise either (the classic cron rule).
    dom_any: bool,
    dow_any: bool,
}

impl FieldSpec {
    fn value(&self, s: &str) -> Result<u32, String> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            let i = u32::try_from(i).map_err(|e| e.to_string())?;
            return Ok(i + self.min);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a number or name"))?;
        if v < self.min || v > self.max {
            return Err(format!("{v} is out of range [{}, {}]", self.min, self.max));
        }
        Ok(v)
    }

    /// Parse a comma list of `*`, `?`, `n`, `n-m`, each with an optional `/step`.
    /// Returns the bits and whether the field was an unrestricted `*` or `?`.
    fn parse(&self, text: &str) -> Result<(u64, bool), ScheduleError> {
        let err = |why: String| ScheduleError::Field {
            field: self.name,
            text: text.to_string(),
            why,
        };
        let mut bits = 0u64;
        let mut any = false;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().map_err(|_| err(format!("bad step {s:?}")))?;
                    if step == 0 {
                        return Err(err("step must be positive".into()));
                    }
                    (r, Some(step))
                }
                None => (item, None),
            };
            let (lo, hi, star) = if range == "*" || range == "?" {
                (self.min, self.max, true)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a).map_err(&err)?, self.value(b).map_err(&err)?);
                if a > b {
                    return Err(err(format!("beginning of range ({a}) beyond end ({b})")));
                }
                (a, b, false)
            } else {
                let a = self.value(range).map_err(&err)?;
                // `n/step` means from n to the end of the range.
                (a, if step.is_some() { self.max } else { a }, false)
            };
            let step = step.unwrap_or(1);
            any |= star && step == 1;
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, any))
    }
}

impl Schedule {
    /// Parse a standard cron schedule (`min hour dom month dow`) or one of the
    /// descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
    /// `@hourly`.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let text = text.trim();
        if text.starts_with("TZ=") || text.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZoneInSchedule);
        }
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            d if d.starts_with('@') => return Err(ScheduleError::Descriptor(d.into())),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(ScheduleError::FieldCount(fields.len(), text.into()));
        };
        let (minute, _) = MINUTE.parse(m)?;
        let (hour, _) = HOUR.parse(h)?;
        let (dom, dom_any) = DOM.parse(dom)?;
        let (month, _) = MONTH.parse(mon)?;
        let (mut dow, dow_any) = DOW.parse(dow)?;
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_any,
            dow_any,
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = bit(self.dom, dt.day());
        let dow = bit(self.dow, dt.weekday().to_sunday_zero_offset());
        if self.dom_any || self.dow_any {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first schedule time strictly after `after`, reading the schedule as wall-clock
    /// time in `tz`. A wall-clock time skipped by a daylight-saving jump runs at the
    /// matching time after the jump; one that occurs twice runs once, the first time.
    /// `None` if no time matches within five years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let limit = start.year().saturating_add(SEARCH_YEARS);
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        while dt.year() <= limit {
            if !bit(self.month, dt.month()) {
                dt = dt
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .at(0, 0, 0, 0);
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.date().tomorrow().ok()?.at(0, 0, 0, 0);
                continue;
            }
            if !bit(self.hour, dt.hour()) {
                dt = dt
                    .date()
                    .at(dt.hour(), 0, 0, 0)
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !bit(self.minute, dt.minute()) {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            let at = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            // A repeated wall-clock hour maps back before `after`: keep looking.
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }
}

fn bit(bits: u64, v: i8) -> bool {
    u32::try_from(v).is_ok_and(|v| v < 64 && bits & (1 << v) != 0)
}

/// The schedule time a run is due for at `now`, if any, and how many were missed before
/// it (so a count above 100 can be reported).
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    pub at: Timestamp,
    pub missed: usize,
}

/// The most recent schedule time in `(earliest, now]`, if any.
pub fn most_recent(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> Option<Due> {
    let mut t = schedule.next_after(earliest, tz).filter(|t| *t <= now)?;
    let mut missed = 0;
    while let Some(n) = schedule.next_after(t, tz).filter(|n| *n <= now) {
        t = n;
        missed += 1;
        if missed > TOO_MANY_MISSED {
            // Long outage: do not walk every missed minute; find the last time ≤ now from
            // a window just before now, widening it until it holds one.
            let windows = [3600, 86_400, 32 * 86_400, 367 * 86_400, 5 * 367 * 86_400];
            for w in windows {
                let from = now
                    .checked_sub(SignedDuration::from_secs(w))
                    .unwrap_or(earliest)
                    .max(t);
                let Some(mut last) = schedule.next_after(from, tz).filter(|n| *n <= now) else {
                    continue;
                };
                while let Some(n) = schedule.next_after(last, tz).filter(|n| *n <= now) {
                    last = n;
                }
                return Some(Due { at: last, missed });
            }
            return Some(Due { at: t, missed });
        }
    }
    Some(Due { at: t, missed })
}

/// An Event the loop should record about the CronJob.
#[derive(Debug, Clone, PartialEq)]
pub struct CronEvent {
    pub ty: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// What one pass should do for a CronJob.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// A Job to create now (its name is `<cronjob>-<minutes since epoch>`).
    pub create: Option<Job>,
    /// Jobs to delete (Replace policy or history limits), with the event to record.
    pub delete: Vec<String>,
    /// The status to write; after a successful create the loop adds the new Job to
    /// `active`.
    pub status: CronJobStatus,
    pub events: Vec<CronEvent>,
    /// Look again then (the next schedule time).
    pub requeue_after: Option<Duration>,
}

fn job_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == ty && c.status == "True")
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        // No resourceVersion: it would change the CronJob's status at every Job update.
        ..Default::default()
    }
}

/// The time zone a CronJob's schedule is read in.
pub fn time_zone(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| e.to_string()),
    }
}

/// The name of the Job for schedule time `at`: minutes since the epoch, as Kubernetes
/// names them, so a time is never run twice.
pub fn job_name(cronjob: &str, at: Timestamp) -> String {
    format!("{cronjob}-{}", at.as_second().div_euclid(60))
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO)
}

/// Decide what to do for `cj`, given the Jobs of its namespace, at time `now`. Pure.
pub fn reconcile(cj: &CronJob, jobs: &[Job], now: Timestamp) -> Result<Plan, Error> {
    let uid = cj.metadata.uid.as_deref().ok_or(Error::Missing("uid"))?;
    let spec = cj.spec.as_ref().ok_or(Error::Missing("spec"))?;
    let old = cj.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let ours: Vec<&Job> = jobs
        .iter()
        .filter(|j| controller_of(*j).is_some_and(|r| r.uid == uid))
        .collect();
    let finished = |j: &Job| job_condition(j, "Complete") || job_condition(j, "Failed");

    let mut status = CronJobStatus {
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: old.last_successful_time.clone(),
        active: None,
    };
    let was_active = |j: &Job| {
        old.active
            .iter()
            .flatten()
            .any(|r| r.uid.is_some() && r.uid == j.metadata.uid)
    };
    let mut active: Vec<&Job> = Vec::new();
    for job in &ours {
        if !finished(job) {
            active.push(job);
            continue;
        }
        if was_active(job) {
            let cond = if job_condition(job, "Complete") {
                "Complete"
            } else {
                "Failed"
            };
            plan.events.push(CronEvent {
                ty: EventType::Normal,
                reason: "SawCompletedJob",
                message: format!("Saw completed job: {}, condition: {cond}", job.name_any()),
            });
        }
        if let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
            if job_condition(job, "Complete")
                && status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|t| t.0 < done.0)
            {
                status.last_successful_time = Some(done.clone());
            }
        }
    }

    // History: keep the newest finished Jobs of each outcome, delete the rest.
    let started = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(j.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
    };
    for (ty, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let mut done: Vec<&Job> = ours
            .iter()
            .copied()
            .filter(|j| job_condition(j, ty) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| (started(j), j.name_any()));
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        plan.delete
            .extend(done[..extra].iter().map(|j| j.name_any()));
    }

    let set_active = |status: &mut CronJobStatus, active: &[&Job]| {
        let refs: Vec<ObjectReference> = active.iter().map(|j| job_ref(j)).collect();
        status.active = (!refs.is_empty()).then_some(refs);
    };
    set_active(&mut status, &active);
    plan.status = status.clone();

    if cj.metadata.deletion_timestamp.is_some() || spec.suspend.unwrap_or(false) {
        return Ok(plan);
    }
    let tz = match time_zone(cj) {
        Ok(tz) => tz,
        Err(why) => {
            plan.events.push(CronEvent {
                ty: EventType::Warning,
                reason: "UnknownTimeZone",
                message: format!(
                    "invalid timeZone: {:?}: {why}",
                    spec.time_zone.as_deref().unwrap_or_default()
                ),
            });
            return Ok(plan);
        }
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            plan.events.push(CronEvent {
                ty: EventType::Warning,
                reason: "UnparseableSchedule",
                message: format!("unparseable schedule: {:?} : {e}", spec.schedule),
            });
            return Ok(plan);
        }
    };
    // Wake up for the next time whatever happens below.
    plan.requeue_after = schedule
        .next_after(now, &tz)
        .map(|t| until(now, t) + Duration::from_millis(100));

    let mut earliest = old
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    let deadline = spec.starting_deadline_seconds;
    if let Some(d) = deadline {
        if let Ok(cut) = now.checked_sub(secs(d)) {
            earliest = earliest.max(cut);
        }
    }
    let Some(due) = most_recent(&schedule, &tz, earliest, now) else {
        return Ok(plan);
    };
    if due.missed > TOO_MANY_MISSED {
        plan.events.push(CronEvent {
            ty: EventType::Warning,
            reason: "TooManyMissedTimes",
            message: "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        });
    }
    let name = job_name(&cj.name_any(), due.at);
    if ours.iter().any(|j| j.name_any() == name) {
        // Already run (an earlier pass may have lost its status write after creating it).
        if old.last_schedule_time.as_ref().is_none_or(|t| t.0 < due.at) {
            plan.status.last_schedule_time = Some(Time(due.at));
        }
        return Ok(plan);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push(CronEvent {
                ty: EventType::Normal,
                reason: "JobAlreadyActive",
                message: "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            });
            return Ok(plan);
        }
        Some("Replace") => {
            plan.delete.extend(active.iter().map(|j| j.name_any()));
            active.clear();
            set_active(&mut status, &active);
        }
        _ => {}
    }
    plan.create = Some(job_from_template(cj, due.at, &tz)?);
    status.last_schedule_time = Some(Time(due.at));
    plan.status = status;
    Ok(plan)
}

/// The Job a CronJob creates for schedule time `at`.
pub fn job_from_template(cj: &CronJob, at: Timestamp, tz: &TimeZone) -> Result<Job, Error> {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .ok_or(Error::Missing("spec"))?;
    let owner = controller_ref(cj).ok_or(Error::Missing("name or uid"))?;
    let tm = template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        at.to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    let mut job = Job {
        spec: template.spec,
        ..Default::default()
    };
    job.metadata.name = Some(job_name(&cj.name_any(), at));
    job.metadata.namespace = cj.metadata.namespace.clone();
    job.metadata.labels = tm.labels;
    job.metadata.annotations = Some(annotations);
    job.metadata.owner_references = Some(vec![owner]);
    Ok(job)
}

struct Ctx {
    client: Client,
}

/// Run the CronJob controller until the task is dropped.
pub async fn run(client: Client) {
    let cjs: Api<CronJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    super::queue::Queue::new("cronjob", cjs)
        .watches(jobs, |job| {
            let ns = job.namespace().unwrap_or_default();
            controller_of(&job)
                .filter(|r| r.kind == "CronJob")
                .map(|r| ObjectRef::<CronJob>::new(&r.name).within(&ns))
        })
        .run(reconcile_one, error_policy, Arc::new(Ctx { client }))
        .await;
}

fn error_policy(cj: Arc<CronJob>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(cronjob = %cj.name_any(), error = %err, "cronjob pass failed");
    Action::requeue(Duration::from_secs(2))
}

async fn record(ctx: &Ctx, reference: &ObjectReference, ty: EventType, reason: &str, msg: &str) {
    events::record(&ctx.client, reference, ty, reason, msg, COMPONENT).await;
}

async fn reconcile_one(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = cj.namespace().unwrap_or_default();
    let cjs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    // The cached copy may predate our own last status write; read the current one.
    let Some(cj) = cjs.get_opt(&cj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = jobs.list(&ListParams::default()).await?.items;
    let mut plan = reconcile(&cj, &listed, Timestamp::now())?;
    let reference = cj.object_ref(&());

    for ev in &plan.events {
        record(&ctx, &reference, ev.ty, ev.reason, &ev.message).await;
    }
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in &plan.delete {
        match jobs.delete(name, &background).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        let msg = format!("Deleted job {name}");
        record(
            &ctx,
            &reference,
            EventType::Normal,
            "SuccessfulDelete",
            &msg,
        )
        .await;
    }
    if let Some(job) = &plan.create {
        match jobs.create(&PostParams::default(), job).await {
            Ok(created) => {
                let msg = format!("Created job {}", created.name_any());
                record(
                    &ctx,
                    &reference,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &msg,
                )
                .await;
                plan.status
                    .active
                    .get_or_insert_with(Vec::new)
                    .push(job_ref(&created));
            }
            // Created by an earlier pass whose status write was lost: the time has run.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                let msg = format!("Error creating job: {e}");
                record(&ctx, &reference, EventType::Warning, "FailedCreate", &msg).await;
                return Err(e.into());
            }
        }
    }
    let old = cj.status.as_ref().map(serde_json::to_value).transpose()?;
    let new = serde_json::to_value(&plan.status)?;
    if let Some(body) = status_patch(old.as_ref(), &new) {
        match cjs
            .patch_status(&cj.name_any(), &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(
        plan.requeue_after.unwrap_or(RESYNC).min(RESYNC),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{
        CronJobSpec, JobCondition, JobSpec, JobStatus, JobTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn values(bits: u64) -> Vec<u32> {
        (0..64).filter(|v| bits & (1 << v) != 0).collect()
    }

    #[test]
    fn parse_table() {
        // schedule, minutes, hours, days of month, months, days of week, dom_any, dow_any
        type Row = (
            &'static str,
            &'static [u32],
            &'static [u32],
            &'static [u32],
            &'static [u32],
            &'static [u32],
            bool,
            bool,
        );
        let all_h: Vec<u32> = (0..24).collect();
        let all_dom: Vec<u32> = (1..32).collect();
        let all_mon: Vec<u32> = (1..13).collect();
        let all_dow: Vec<u32> = (0..7).collect();
        let rows: &[Row] = &[
            (
                "0 0 1 1 *",
                &[0],
                &[0],
                &[1],
                &[1],
                &[0, 1, 2, 3, 4, 5, 6],
                false,
                true,
            ),
            (
                "*/15 9-17/4 1,15 jan-mar MON-fri",
                &[0, 15, 30, 45],
                &[9, 13, 17],
                &[1, 15],
                &[1, 2, 3],
                &[1, 2, 3, 4, 5],
                false,
                false,
            ),
            (
                "5/20 * ? * sun,7",
                &[5, 25, 45],
                &[],
                &[],
                &[],
                &[0],
                true,
                false,
            ),
            ("@hourly", &[0], &[], &[], &[], &[], true, true),
            ("@weekly", &[0], &[0], &[], &[], &[0], true, false),
            (
                "  1-3,58  23 31 dec 5-7 ",
                &[1, 2, 3, 58],
                &[23],
                &[31],
                &[12],
                &[0, 5, 6],
                false,
                false,
            ),
        ];
        for (text, m, h, dom, mon, dow, dom_any, dow_any) in rows {
            let s = Schedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let or_all = |want: &[u32], all: &[u32]| {
                if want.is_empty() {
                    all.to_vec()
                } else {
                    want.to_vec()
                }
            };
            assert_eq!(values(s.minute), m.to_vec(), "{text}: minutes");
            assert_eq!(values(s.hour), or_all(h, &all_h), "{text}: hours");
            assert_eq!(values(s.dom), or_all(dom, &all_dom), "{text}: dom");
            assert_eq!(values(s.month), or_all(mon, &all_mon), "{text}: months");
            assert_eq!(values(s.dow), or_all(dow, &all_dow), "{text}: dow");
            assert_eq!((s.dom_any, s.dow_any), (*dom_any, *dow_any), "{text}: any");
        }
    }

    #[test]
    fn parse_errors_table() {
        let rows = [
            ("* * * *", "expected exactly 5 fields, found 4"),
            ("* * * * * *", "expected exactly 5 fields, found 6"),
            ("@every 5m", "unrecognized descriptor"),
            ("TZ=UTC 0 * * * *", "use spec.timeZone"),
            (
                "60 * * * *",
                "minute field \"60\": 60 is out of range [0, 59]",
            ),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("5-1 * * * *", "beginning of range (5) beyond end (1)"),
            ("*/0 * * * *", "step must be positive"),
            ("*/x * * * *", "bad step"),
            ("* * * foo *", "is not a number or name"),
        ];
        for (text, want) in rows {
            let err = Schedule::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn next_after_table() {
        let new_york = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").expect("posix tz");
        let rows = [
            (
                "*/1 * * * *",
                TimeZone::UTC,
                "2026-01-01T10:00:30Z",
                "2026-01-01T10:01:00Z",
            ),
            (
                "*/1 * * * *",
                TimeZone::UTC,
                "2026-01-01T10:01:00Z",
                "2026-01-01T10:02:00Z",
            ),
            (
                "30 2 * * *",
                TimeZone::UTC,
                "2026-01-31T03:00:00Z",
                "2026-02-01T02:30:00Z",
            ),
            (
                "0 0 29 2 *",
                TimeZone::UTC,
                "2026-03-01T00:00:00Z",
                "2028-02-29T00:00:00Z",
            ),
            (
                "@yearly",
                TimeZone::UTC,
                "2026-06-15T12:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // 2026-01-01 is a Thursday: day-of-month 13 OR Friday.
            (
                "0 9 13 * 5",
                TimeZone::UTC,
                "2026-01-01T00:00:00Z",
                "2026-01-02T09:00:00Z",
            ),
            // Day-of-week restricted, day-of-month `*`: Fridays only.
            (
                "0 9 * * fri",
                TimeZone::UTC,
                "2026-01-02T09:00:00Z",
                "2026-01-09T09:00:00Z",
            ),
            // Day-of-month restricted, day-of-week `*`: the 13th only.
            (
                "0 9 13 * *",
                TimeZone::UTC,
                "2026-01-02T09:00:00Z",
                "2026-01-13T09:00:00Z",
            ),
            // 09:00 in New York in winter is 14:00 UTC, in summer 13:00 UTC.
            (
                "0 9 * * *",
                new_york.clone(),
                "2026-01-01T00:00:00Z",
                "2026-01-01T14:00:00Z",
            ),
            (
                "0 9 * * *",
                new_york.clone(),
                "2026-07-01T00:00:00Z",
                "2026-07-01T13:00:00Z",
            ),
            // 2026-03-08 02:30 does not exist in New York: it runs at 03:30 EDT.
            (
                "30 2 * * *",
                new_york.clone(),
                "2026-03-08T05:00:00Z",
                "2026-03-08T07:30:00Z",
            ),
            // 2026-11-01 01:30 happens twice: it runs once, the first time (EDT).
            (
                "30 1 * * *",
                new_york.clone(),
                "2026-11-01T04:00:00Z",
                "2026-11-01T05:30:00Z",
            ),
            (
                "30 1 * * *",
                new_york,
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
            ),
        ];
        for (text, tz, after, want) in rows {
            let s = Schedule::parse(text).expect(text);
            assert_eq!(
                s.next_after(ts(after), &tz),
                Some(ts(want)),
                "{text} after {after}"
            );
        }
        let never = Schedule::parse("0 0 30 2 *").expect("feb 30");
        assert_eq!(
            never.next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn most_recent_table() {
        let every = Schedule::parse("*/1 * * * *").expect("schedule");
        let hourly = Schedule::parse("@hourly").expect("schedule");
        let rows = [
            (&every, "2026-01-01T10:00:30Z", "2026-01-01T10:00:59Z", None),
            (
                &every,
                "2026-01-01T10:00:30Z",
                "2026-01-01T10:01:00Z",
                Some(("2026-01-01T10:01:00Z", 0)),
            ),
            (
                &every,
                "2026-01-01T10:00:00Z",
                "2026-01-01T10:05:10Z",
                Some(("2026-01-01T10:05:00Z", 4)),
            ),
            (
                &hourly,
                "2026-01-01T10:00:00Z",
                "2026-01-01T10:59:00Z",
                None,
            ),
            // A week of minutes missed: the last one, with more than 100 counted.
            (
                &every,
                "2026-01-01T00:00:00Z",
                "2026-01-08T00:00:30Z",
                Some(("2026-01-08T00:00:00Z", 101)),
            ),
        ];
        for (s, earliest, now, want) in rows {
            let got = most_recent(s, &TimeZone::UTC, ts(earliest), ts(now));
            let want = want.map(|(at, missed)| Due { at: ts(at), missed });
            assert_eq!(got, want, "{earliest} .. {now}");
        }
    }

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        assert_eq!(
            job_name("hello", ts("2026-01-01T00:01:00Z")),
            "hello-29453761"
        );
        assert_eq!(job_name("hello", ts("1970-01-01T00:59:59Z")), "hello-59");
    }

    const CREATED: &str = "2026-01-01T10:00:30Z";

    #[derive(Clone, Copy, Default)]
    struct Knobs {
        policy: Option<&'static str>,
        deadline: Option<i64>,
        suspend: bool,
        time_zone: Option<&'static str>,
        schedule: Option<&'static str>,
        last: Option<&'static str>,
    }

    fn cronjob(k: Knobs, active: &[&str]) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("ns".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(ts(CREATED))),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: k.schedule.unwrap_or("*/1 * * * *").into(),
                time_zone: k.time_zone.map(Into::into),
                concurrency_policy: Some(k.policy.unwrap_or("Allow").into()),
                starting_deadline_seconds: k.deadline,
                suspend: Some(k.suspend),
                successful_jobs_history_limit: Some(2),
                failed_jobs_history_limit: Some(1),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "tick".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(JobSpec::default()),
                },
            }),
            status: Some(CronJobStatus {
                last_schedule_time: k.last.map(|t| Time(ts(t))),
                active: (!active.is_empty()).then(|| {
                    active
                        .iter()
                        .map(|n| ObjectReference {
                            name: Some((*n).into()),
                            uid: Some(format!("{n}-uid")),
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            }),
        }
    }

    /// A Job of the CronJob: `state` is "run", "ok" (Complete) or "fail"; started at `start`
    /// (seconds after the CronJob was created).
    fn job(name: &str, state: &str, start: i64) -> Job {
        let at = ts(CREATED) + secs(start);
        let conds = match state {
            "ok" => vec!["SuccessCriteriaMet", "Complete"],
            "fail" => vec!["FailureTarget", "Failed"],
            _ => vec![],
        };
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("{name}-uid")),
                creation_timestamp: Some(Time(at)),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: "tick".into(),
                    uid: "cj-uid".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(JobSpec::default()),
            status: Some(JobStatus {
                start_time: Some(Time(at)),
                completion_time: (state == "ok").then(|| Time(at + secs(5))),
                conditions: Some(
                    conds
                        .into_iter()
                        .map(|t| JobCondition {
                            type_: t.into(),
                            status: "True".into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    struct Case {
        name: &'static str,
        knobs: Knobs,
        active: &'static [&'static str],
        jobs: Vec<Job>,
        now: &'static str,
        create: Option<&'static str>,
        delete: &'static [&'static str],
        /// names in status.active (before the loop adds the created Job)
        status_active: &'static [&'static str],
        last_schedule: Option<&'static str>,
        events: &'static [&'static str],
        requeue_ms: Option<u64>,
    }

    fn case(name: &'static str, knobs: Knobs, jobs: Vec<Job>, now: &'static str) -> Case {
        Case {
            name,
            knobs,
            active: &[],
            jobs,
            now,
            create: None,
            delete: &[],
            status_active: &[],
            last_schedule: None,
            events: &[],
            requeue_ms: None,
        }
    }

    #[test]
    fn reconcile_table() {
        let k = Knobs::default();
        let cases = vec![
            Case {
                requeue_ms: Some(30_100),
                ..case(
                    "before the first time: wait for it",
                    k,
                    vec![],
                    "2026-01-01T10:00:30Z",
                )
            },
            Case {
                create: Some("tick-29454361"),
                last_schedule: Some("2026-01-01T10:01:00Z"),
                requeue_ms: Some(59_100),
                ..case(
                    "first time reached: create",
                    k,
                    vec![],
                    "2026-01-01T10:01:01Z",
                )
            },
            Case {
                create: Some("tick-29454364"),
                last_schedule: Some("2026-01-01T10:04:00Z"),
                requeue_ms: Some(50_100),
                ..case(
                    "several missed: only the most recent runs",
                    Knobs {
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![],
                    "2026-01-01T10:04:10Z",
                )
            },
            Case {
                last_schedule: Some("2026-01-01T10:01:00Z"),
                requeue_ms: Some(30_100),
                ..case(
                    "times older than startingDeadlineSeconds are not even looked at",
                    Knobs {
                        deadline: Some(10),
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![],
                    "2026-01-01T10:04:30Z",
                )
            },
            Case {
                create: Some("tick-29454364"),
                last_schedule: Some("2026-01-01T10:04:00Z"),
                requeue_ms: Some(55_100),
                ..case(
                    "within startingDeadlineSeconds: runs late",
                    Knobs {
                        deadline: Some(10),
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![],
                    "2026-01-01T10:04:05Z",
                )
            },
            Case {
                active: &["tick-29454361"],
                status_active: &["tick-29454361"],
                last_schedule: Some("2026-01-01T10:01:00Z"),
                requeue_ms: Some(50_100),
                ..case(
                    "this time's job already exists: nothing to create",
                    Knobs {
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![job("tick-29454361", "run", 30)],
                    "2026-01-01T10:01:10Z",
                )
            },
            Case {
                active: &["tick-29454361"],
                status_active: &["tick-29454361"],
                last_schedule: Some("2026-01-01T10:01:00Z"),
                events: &["JobAlreadyActive"],
                requeue_ms: Some(59_100),
                ..case(
                    "Forbid with a job running: skip",
                    Knobs {
                        policy: Some("Forbid"),
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![job("tick-29454361", "run", 30)],
                    "2026-01-01T10:02:01Z",
                )
            },
            Case {
                active: &["tick-29454361"],
                create: Some("tick-29454362"),
                delete: &["tick-29454361"],
                last_schedule: Some("2026-01-01T10:02:00Z"),
                requeue_ms: Some(59_100),
                ..case(
                    "Replace with a job running: delete it, create the new one",
                    Knobs {
                        policy: Some("Replace"),
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![job("tick-29454361", "run", 30)],
                    "2026-01-01T10:02:01Z",
                )
            },
            Case {
                active: &["tick-29454361"],
                create: Some("tick-29454362"),
                status_active: &["tick-29454361"],
                last_schedule: Some("2026-01-01T10:02:00Z"),
                requeue_ms: Some(59_100),
                ..case(
                    "Allow with a job running: both run",
                    Knobs {
                        last: Some("2026-01-01T10:01:00Z"),
                        ..k
                    },
                    vec![job("tick-29454361", "run", 30)],
                    "2026-01-01T10:02:01Z",
                )
            },
            Case {
                active: &["a"],
                status_active: &["e"],
                delete: &["b", "c"],
                last_schedule: Some("2026-01-01T10:05:00Z"),
                events: &["SawCompletedJob"],
                requeue_ms: Some(59_100),
                ..case(
                    "history: keep 2 successful and 1 failed, newest first",
                    Knobs {
                        last: Some("2026-01-01T10:05:00Z"),
                        ..k
                    },
                    vec![
                        job("a", "ok", 200),
                        job("b", "ok", 10),
                        job("c", "fail", 20),
                        job("d", "fail", 150),
                        job("f", "ok", 100),
                        job("e", "run", 250),
                    ],
                    "2026-01-01T10:05:01Z",
                )
            },
            Case {
                ..case(
                    "suspended: nothing",
                    Knobs { suspend: true, ..k },
                    vec![],
                    "2026-01-01T10:09:00Z",
                )
            },
            Case {
                events: &["UnknownTimeZone"],
                ..case(
                    "unknown time zone: warn",
                    Knobs {
                        time_zone: Some("Mars/Olympus_Mons"),
                        ..k
                    },
                    vec![],
                    "2026-01-01T10:09:00Z",
                )
            },
            Case {
                events: &["UnparseableSchedule"],
                ..case(
                    "unparseable schedule: warn",
                    Knobs {
                        schedule: Some("every minute"),
                        ..k
                    },
                    vec![],
                    "2026-01-01T10:09:00Z",
                )
            },
            Case {
                create: Some("tick-29464440"),
                last_schedule: Some("2026-01-08T10:00:00Z"),
                events: &["TooManyMissedTimes"],
                requeue_ms: Some(59_100),
                ..case(
                    "a week down: one run, and a warning",
                    k,
                    vec![],
                    "2026-01-08T10:00:01Z",
                )
            },
        ];
        for c in cases {
            let cj = cronjob(c.knobs, c.active);
            let plan = reconcile(&cj, &c.jobs, ts(c.now)).expect(c.name);
            assert_eq!(
                plan.create
                    .as_ref()
                    .and_then(|j| j.metadata.name.as_deref()),
                c.create,
                "{}: create",
                c.name
            );
            assert_eq!(plan.delete, c.delete, "{}: delete", c.name);
            let active: Vec<&str> = plan
                .status
                .active
                .iter()
                .flatten()
                .filter_map(|r| r.name.as_deref())
                .collect();
            assert_eq!(active, c.status_active, "{}: active", c.name);
            assert_eq!(
                plan.status.last_schedule_time.map(|t| t.0),
                c.last_schedule.map(ts),
                "{}: lastScheduleTime",
                c.name
            );
            let events: Vec<&str> = plan.events.iter().map(|e| e.reason).collect();
            assert_eq!(events, c.events, "{}: events", c.name);
            assert_eq!(
                plan.requeue_after,
                c.requeue_ms.map(Duration::from_millis),
                "{}: requeue",
                c.name
            );
        }
    }

    #[test]
    fn last_successful_time_follows_the_newest_completion() {
        let cj = cronjob(Knobs::default(), &["a"]);
        let plan = reconcile(
            &cj,
            &[job("a", "ok", 100), job("b", "ok", 10)],
            ts("2026-01-01T10:02:30Z"),
        )
        .expect("plan");
        assert_eq!(
            plan.status.last_successful_time.map(|t| t.0),
            Some(ts(CREATED) + secs(105))
        );
    }

    #[test]
    fn created_job_comes_from_the_template() {
        let tz = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").expect("posix tz");
        let j = job_from_template(
            &cronjob(Knobs::default(), &[]),
            ts("2026-01-01T15:00:00Z"),
            &tz,
        )
        .expect("job");
        assert_eq!(j.metadata.name.as_deref(), Some("tick-29454660"));
        assert_eq!(j.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(j.labels().get("app").map(String::as_str), Some("tick"));
        assert_eq!(
            j.annotations().get(SCHEDULED_TIMESTAMP).map(String::as_str),
            Some("2026-01-01T10:00:00-05:00")
        );
        let owner = controller_of(&j).expect("controller");
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.api_version.as_str(),
                owner.uid.as_str()
            ),
            ("CronJob", "batch/v1", "cj-uid")
        );
    }
}
