//! `plan`: what the agent does next for one pod, decided from the Pod the API wants and
//! what the box shows (pod network, every attempt of every container). No I/O: the
//! executor in [`super`] carries the actions out and asks again.
//!
//! ```text
//!  Pod (spec, deletionTimestamp) ─┐
//!  Seen (network, attempts)       ├─► plan() ─► Plan { actions, requeue_after }
//!  Health (liveness, now)        ─┘
//! ```
//!
//! The rules are the kubelet's: init containers one at a time and in order, then every
//! app container; restartPolicy Always / OnFailure / Never; a crash waits for an
//! exponential back-off (10 s doubling to 5 min, reset after 10 min of running) before the
//! next attempt; a container that failed its liveness probe is killed and treated as
//! exited; a deleted pod has its containers stopped within its grace period, then its
//! network torn down, then its API object removed.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

/// First back-off after a container exits and must be restarted.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The back-off never grows beyond this (kubelet's MaxContainerBackOff).
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts its back-off from scratch.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Grace period when the pod spec gives none (Kubernetes' default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Exited attempts kept per container: the newest one backs `kubectl logs --previous`.
pub const KEEP_EXITED: usize = 1;

/// One attempt of one container, as the runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub container: String,
    pub attempt: u32,
    pub state: AttemptState,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttemptState {
    /// Created but not (yet) running.
    Created,
    Running {
        started_at: Timestamp,
    },
    Exited {
        exit_code: i32,
        /// Completed, Error, OOMKilled, ... as containerStatuses show it.
        reason: String,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

impl AttemptState {
    fn running(&self) -> bool {
        matches!(self, AttemptState::Running { .. } | AttemptState::Created)
    }
}

/// What the box shows for one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    /// The pod's network namespace exists.
    pub network: bool,
    /// Every attempt the runtime still has, any container, any state.
    pub attempts: Vec<Attempt>,
}

/// Probe results and the clock.
#[derive(Clone, Debug)]
pub struct Health {
    pub now: Timestamp,
    /// Running containers (name, attempt) whose liveness probe failed its threshold.
    pub liveness_failed: BTreeSet<(String, u32)>,
}

/// Why a container is being stopped (it becomes the Killing event's message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// The pod is being deleted.
    PodDeleted,
    /// Its liveness probe failed; it will be restarted if the policy says so.
    Unhealthy,
    /// Not (or no longer) in the pod spec.
    NotInSpec,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the pod's network namespace (before any container).
    SetupNetwork,
    /// Pull the image if needed and start this attempt of the container.
    Start {
        container: String,
        attempt: u32,
        init: bool,
    },
    /// SIGTERM, then SIGKILL after `grace`.
    Kill {
        container: String,
        attempt: u32,
        grace: Duration,
        reason: KillReason,
    },
    /// Forget an exited attempt (its rootfs, state and log).
    Remove { container: String, attempt: u32 },
    /// Every container is gone: remove the network namespace.
    TeardownNetwork,
    /// Nothing is left on the box: delete the API object for good (grace period 0).
    FinishDeletion,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Ask again after this long even if nothing changes (a back-off ends).
    pub requeue_after: Option<Duration>,
    /// Containers waiting out a crash back-off (name → when the next attempt may start).
    pub backing_off: Vec<(String, Timestamp)>,
}

/// The kubelet's back-off before the next attempt, given how many times the container
/// already restarted.
pub fn backoff(restarts: u32) -> Duration {
    let shift = restarts.saturating_sub(1).min(16);
    BACKOFF_INITIAL
        .saturating_mul(1u32 << shift)
        .min(BACKOFF_MAX)
}

/// The pod's restart policy as one of the three Kubernetes values (default Always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Pod) -> RestartPolicy {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `code` is started again.
    pub fn restarts(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// The newest attempt of `container`.
pub fn latest<'a>(seen: &'a Seen, container: &str) -> Option<&'a Attempt> {
    seen.attempts
        .iter()
        .filter(|a| a.container == container)
        .max_by_key(|a| a.attempt)
}

fn grace_of(pod: &Pod) -> Duration {
    let from_meta = pod.metadata.deletion_grace_period_seconds;
    let from_spec = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds);
    from_meta
        .or(from_spec)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(DEFAULT_GRACE)
}

/// Decide the next actions for `pod` (`None` when the API no longer has it).
pub fn plan(pod: Option<&Pod>, seen: &Seen, health: &Health) -> Plan {
    let mut out = Plan {
        actions: Vec::new(),
        requeue_after: None,
        backing_off: Vec::new(),
    };
    let deleting = pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    if deleting {
        wind_down(pod, seen, &mut out);
        return out;
    }
    let pod = pod.expect("present when not deleting");
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = RestartPolicy::of(pod);
    let grace = grace_of(pod);

    // Attempts of containers the spec no longer names: stop them, then forget them.
    let names: BTreeSet<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    for a in &seen.attempts {
        if names.contains(a.container.as_str()) {
            continue;
        }
        out.actions.push(if a.state.running() {
            Action::Kill {
                container: a.container.clone(),
                attempt: a.attempt,
                grace,
                reason: KillReason::NotInSpec,
            }
        } else {
            Action::Remove {
                container: a.container.clone(),
                attempt: a.attempt,
            }
        });
    }

    // Liveness failures: kill now; the exit is handled like any other next time round.
    for a in &seen.attempts {
        if a.state.running()
            && health
                .liveness_failed
                .contains(&(a.container.clone(), a.attempt))
        {
            out.actions.push(Action::Kill {
                container: a.container.clone(),
                attempt: a.attempt,
                grace,
                reason: KillReason::Unhealthy,
            });
        }
    }

    gc_old_attempts(seen, &mut out);

    if pod_finished(pod, seen, policy) {
        // Succeeded or Failed for good: nothing more runs; the network goes.
        if seen.network && !seen.attempts.iter().any(|a| a.state.running()) {
            out.actions.push(Action::TeardownNetwork);
        }
        return out;
    }

    if !seen.network {
        out.actions.push(Action::SetupNetwork);
    }

    // Init containers: one at a time, in order, each to a zero exit.
    for c in spec.init_containers.iter().flatten() {
        match latest(seen, &c.name) {
            None => {
                out.actions.push(Action::Start {
                    container: c.name.clone(),
                    attempt: 0,
                    init: true,
                });
                return out;
            }
            Some(a) => match &a.state {
                AttemptState::Exited { exit_code: 0, .. } => continue,
                AttemptState::Exited { finished_at, .. } => {
                    // Init containers restart on failure unless the policy is Never, in
                    // which case the pod has already failed (pod_finished above).
                    restart_after_backoff(c.name.as_str(), a, *finished_at, true, health, &mut out);
                    return out;
                }
                AttemptState::Running { .. } | AttemptState::Created => return out,
            },
        }
    }

    for c in &spec.containers {
        match latest(seen, &c.name) {
            None => out.actions.push(Action::Start {
                container: c.name.clone(),
                attempt: 0,
                init: false,
            }),
            Some(a) => {
                if let AttemptState::Exited {
                    exit_code,
                    finished_at,
                    ..
                } = &a.state
                {
                    if policy.restarts(*exit_code) {
                        restart_after_backoff(&c.name, a, *finished_at, false, health, &mut out);
                    }
                }
            }
        }
    }
    out
}

/// Start the next attempt of `name` once its back-off is over, or say when it will be.
fn restart_after_backoff(
    name: &str,
    last: &Attempt,
    finished_at: Timestamp,
    init: bool,
    health: &Health,
    out: &mut Plan,
) {
    let ran = match &last.state {
        AttemptState::Exited {
            started_at: Some(s),
            ..
        } => finished_at.duration_since(*s).unsigned_abs(),
        _ => Duration::ZERO,
    };
    let delay = if ran >= BACKOFF_RESET {
        Duration::ZERO
    } else {
        backoff(last.attempt + 1)
    };
    let elapsed = health.now.duration_since(finished_at);
    let elapsed = if elapsed.is_negative() {
        Duration::ZERO
    } else {
        elapsed.unsigned_abs()
    };
    if elapsed >= delay {
        out.actions.push(Action::Start {
            container: name.to_string(),
            attempt: last.attempt + 1,
            init,
        });
    } else {
        let wait = delay - elapsed;
        let at = finished_at
            .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
            .unwrap_or(finished_at);
        out.backing_off.push((name.to_string(), at));
        out.requeue_after = Some(out.requeue_after.map_or(wait, |w| w.min(wait)));
    }
}

/// Whether the pod reached Succeeded or Failed and will run nothing again.
pub fn pod_finished(pod: &Pod, seen: &Seen, policy: RestartPolicy) -> bool {
    let spec = match &pod.spec {
        Some(s) => s,
        None => return false,
    };
    // A failed init container under restartPolicy Never fails the whole pod.
    if policy == RestartPolicy::Never {
        for c in spec.init_containers.iter().flatten() {
            if let Some(Attempt {
                state: AttemptState::Exited { exit_code, .. },
                ..
            }) = latest(seen, &c.name)
            {
                if *exit_code != 0 {
                    return true;
                }
            }
        }
    }
    if policy == RestartPolicy::Always || spec.containers.is_empty() {
        return false;
    }
    spec.containers.iter().all(|c| match latest(seen, &c.name) {
        Some(Attempt {
            state: AttemptState::Exited { exit_code, .. },
            ..
        }) => !policy.restarts(*exit_code),
        _ => false,
    })
}

/// Exited attempts beyond the newest [`KEEP_EXITED`] per container are removed.
fn gc_old_attempts(seen: &Seen, out: &mut Plan) {
    let names: BTreeSet<&str> = seen.attempts.iter().map(|a| a.container.as_str()).collect();
    for name in names {
        let mut exited: Vec<&Attempt> = seen
            .attempts
            .iter()
            .filter(|a| a.container == name && !a.state.running())
            .collect();
        exited.sort_by_key(|a| std::cmp::Reverse(a.attempt));
        for a in exited.into_iter().skip(KEEP_EXITED) {
            out.actions.push(Action::Remove {
                container: a.container.clone(),
                attempt: a.attempt,
            });
        }
    }
}

/// A pod being deleted (or gone from the API): stop, clean up, then let the API forget it.
fn wind_down(pod: Option<&Pod>, seen: &Seen, out: &mut Plan) {
    let grace = pod.map(grace_of).unwrap_or(Duration::ZERO);
    let running: Vec<&Attempt> = seen.attempts.iter().filter(|a| a.state.running()).collect();
    if !running.is_empty() {
        for a in running {
            out.actions.push(Action::Kill {
                container: a.container.clone(),
                attempt: a.attempt,
                grace,
                reason: KillReason::PodDeleted,
            });
        }
        return;
    }
    for a in &seen.attempts {
        out.actions.push(Action::Remove {
            container: a.container.clone(),
            attempt: a.attempt,
        });
    }
    if seen.network {
        out.actions.push(Action::TeardownNetwork);
    }
    if pod.is_some() {
        out.actions.push(Action::FinishDeletion);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pod(inits: &[&str], apps: &[&str], policy: &str) -> Pod {
        let c = |n: &&str| Container {
            name: n.to_string(),
            image: Some("busybox".into()),
            ..Default::default()
        };
        Pod {
            spec: Some(PodSpec {
                init_containers: (!inits.is_empty()).then(|| inits.iter().map(c).collect()),
                containers: apps.iter().map(c).collect(),
                restart_policy: Some(policy.into()),
                termination_grace_period_seconds: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn deleted(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(t(0)));
        p.metadata.deletion_grace_period_seconds = Some(3);
        p
    }

    fn running(name: &str, attempt: u32) -> Attempt {
        Attempt {
            container: name.into(),
            attempt,
            state: AttemptState::Running { started_at: t(0) },
        }
    }

    fn exited(name: &str, attempt: u32, code: i32, started: i64, finished: i64) -> Attempt {
        Attempt {
            container: name.into(),
            attempt,
            state: AttemptState::Exited {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                started_at: Some(t(started)),
                finished_at: t(finished),
            },
        }
    }

    fn seen(network: bool, attempts: Vec<Attempt>) -> Seen {
        Seen { network, attempts }
    }

    fn health(now: i64) -> Health {
        Health {
            now: t(now),
            liveness_failed: BTreeSet::new(),
        }
    }

    fn start(name: &str, attempt: u32, init: bool) -> Action {
        Action::Start {
            container: name.into(),
            attempt,
            init,
        }
    }

    fn kill(name: &str, attempt: u32, grace: u64, reason: KillReason) -> Action {
        Action::Kill {
            container: name.into(),
            attempt,
            grace: Duration::from_secs(grace),
            reason,
        }
    }

    fn remove(name: &str, attempt: u32) -> Action {
        Action::Remove {
            container: name.into(),
            attempt,
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let table = [
            (0, 10),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (5, 160),
            (6, 300),
            (40, 300),
        ];
        for (restarts, secs) in table {
            assert_eq!(
                backoff(restarts),
                Duration::from_secs(secs),
                "restarts {restarts}"
            );
        }
    }

    #[test]
    fn restart_policy_table() {
        let table = [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 1, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 137, true),
            (RestartPolicy::Never, 0, false),
            (RestartPolicy::Never, 1, false),
        ];
        for (policy, code, restarts) in table {
            assert_eq!(policy.restarts(code), restarts, "{policy:?} exit {code}");
        }
        let mut p = pod(&[], &["a"], "Always");
        p.spec.as_mut().unwrap().restart_policy = None;
        assert_eq!(RestartPolicy::of(&p), RestartPolicy::Always);
    }

    #[test]
    fn plan_table() {
        struct Case {
            name: &'static str,
            pod: Option<Pod>,
            seen: Seen,
            now: i64,
            want: Vec<Action>,
            requeue: Option<u64>,
        }
        let cases = vec![
            Case {
                name: "new pod: network first, then every app container",
                pod: Some(pod(&[], &["a", "b"], "Always")),
                seen: seen(false, vec![]),
                now: 0,
                want: vec![
                    Action::SetupNetwork,
                    start("a", 0, false),
                    start("b", 0, false),
                ],
                requeue: None,
            },
            Case {
                name: "init containers run one at a time, before the apps",
                pod: Some(pod(&["i1", "i2"], &["a"], "Always")),
                seen: seen(true, vec![]),
                now: 0,
                want: vec![start("i1", 0, true)],
                requeue: None,
            },
            Case {
                name: "a running init container blocks the next",
                pod: Some(pod(&["i1", "i2"], &["a"], "Always")),
                seen: seen(true, vec![running("i1", 0)]),
                now: 0,
                want: vec![],
                requeue: None,
            },
            Case {
                name: "after the inits succeed the apps start",
                pod: Some(pod(&["i1", "i2"], &["a"], "Always")),
                seen: seen(
                    true,
                    vec![exited("i1", 0, 0, 0, 1), exited("i2", 0, 0, 1, 2)],
                ),
                now: 3,
                want: vec![start("a", 0, false)],
                requeue: None,
            },
            Case {
                name: "a failed init container is retried after its back-off",
                pod: Some(pod(&["i1"], &["a"], "Always")),
                seen: seen(true, vec![exited("i1", 0, 1, 0, 1)]),
                now: 11,
                want: vec![start("i1", 1, true)],
                requeue: None,
            },
            Case {
                name: "a failed init container under Never fails the pod; the network goes",
                pod: Some(pod(&["i1"], &["a"], "Never")),
                seen: seen(true, vec![exited("i1", 0, 1, 0, 1)]),
                now: 100,
                want: vec![Action::TeardownNetwork],
                requeue: None,
            },
            Case {
                name: "steady state: nothing to do",
                pod: Some(pod(&[], &["a"], "Always")),
                seen: seen(true, vec![running("a", 0)]),
                now: 100,
                want: vec![],
                requeue: None,
            },
            Case {
                name: "crash under Always waits out the back-off",
                pod: Some(pod(&[], &["a"], "Always")),
                seen: seen(true, vec![exited("a", 0, 1, 0, 5)]),
                now: 9,
                want: vec![],
                requeue: Some(6),
            },
            Case {
                name: "crash under Always restarts when the back-off ends",
                pod: Some(pod(&[], &["a"], "Always")),
                seen: seen(true, vec![exited("a", 0, 1, 0, 5)]),
                now: 15,
                want: vec![start("a", 1, false)],
                requeue: None,
            },
            Case {
                name: "the third crash waits 40 s; older exits beyond the newest are removed",
                pod: Some(pod(&[], &["a"], "Always")),
                seen: seen(
                    true,
                    vec![
                        exited("a", 0, 1, 0, 1),
                        exited("a", 1, 1, 20, 21),
                        exited("a", 2, 1, 50, 51),
                    ],
                ),
                now: 60,
                want: vec![remove("a", 1), remove("a", 0)],
                requeue: Some(31),
            },
            Case {
                name: "a container that ran 10 minutes restarts at once",
                pod: Some(pod(&[], &["a"], "Always")),
                seen: seen(true, vec![exited("a", 4, 1, 0, 700)]),
                now: 700,
                want: vec![start("a", 5, false)],
                requeue: None,
            },
            Case {
                name: "clean exit under OnFailure completes the pod",
                pod: Some(pod(&[], &["a"], "OnFailure")),
                seen: seen(true, vec![exited("a", 0, 0, 0, 5)]),
                now: 100,
                want: vec![Action::TeardownNetwork],
                requeue: None,
            },
            Case {
                name: "failure under OnFailure restarts",
                pod: Some(pod(&[], &["a"], "OnFailure")),
                seen: seen(true, vec![exited("a", 0, 2, 0, 5)]),
                now: 100,
                want: vec![start("a", 1, false)],
                requeue: None,
            },
            Case {
                name: "Never: one still running keeps the pod (and network) up",
                pod: Some(pod(&[], &["a", "b"], "Never")),
                seen: seen(true, vec![exited("a", 0, 1, 0, 5), running("b", 0)]),
                now: 100,
                want: vec![],
                requeue: None,
            },
            Case {
                name: "deletion: running containers get the deletion grace period",
                pod: Some(deleted(pod(&[], &["a", "b"], "Always"))),
                seen: seen(true, vec![running("a", 0), exited("b", 0, 0, 0, 1)]),
                now: 100,
                want: vec![kill("a", 0, 3, KillReason::PodDeleted)],
                requeue: None,
            },
            Case {
                name: "deletion: when all stopped, remove, tear down, finish",
                pod: Some(deleted(pod(&[], &["a"], "Always"))),
                seen: seen(true, vec![exited("a", 0, 137, 0, 1)]),
                now: 100,
                want: vec![
                    remove("a", 0),
                    Action::TeardownNetwork,
                    Action::FinishDeletion,
                ],
                requeue: None,
            },
            Case {
                name: "gone from the API: kill at once, no deletion call",
                pod: None,
                seen: seen(true, vec![running("a", 0)]),
                now: 100,
                want: vec![kill("a", 0, 0, KillReason::PodDeleted)],
                requeue: None,
            },
            Case {
                name: "gone from the API and stopped: clean up only",
                pod: None,
                seen: seen(true, vec![exited("a", 0, 0, 0, 1)]),
                now: 100,
                want: vec![remove("a", 0), Action::TeardownNetwork],
                requeue: None,
            },
            Case {
                name: "a container no longer in the spec is stopped",
                pod: Some(pod(&[], &["a"], "Always")),
                seen: seen(true, vec![running("a", 0), running("old", 0)]),
                now: 100,
                want: vec![kill("old", 0, 5, KillReason::NotInSpec)],
                requeue: None,
            },
        ];
        for case in cases {
            let got = plan(case.pod.as_ref(), &case.seen, &health(case.now));
            assert_eq!(got.actions, case.want, "{}", case.name);
            assert_eq!(
                got.requeue_after,
                case.requeue.map(Duration::from_secs),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn failed_liveness_kills_the_attempt() {
        let p = pod(&[], &["a"], "Always");
        let mut h = health(100);
        h.liveness_failed.insert(("a".into(), 2));
        let got = plan(Some(&p), &seen(true, vec![running("a", 2)]), &h);
        assert_eq!(got.actions, vec![kill("a", 2, 5, KillReason::Unhealthy)]);
    }
}
