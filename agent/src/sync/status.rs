//! `pod_status`: the `status` a kubelet would post for a pod, from what the box shows.
//! Pure, so `kubectl get/describe` output can be checked by tables.
//!
//! ```text
//!  Pod (spec, old status) + Seen (attempts) + Facts (IPs, readiness, start failures, now)
//!        └──────────────────────────► pod_status() ──► PodStatus
//! ```

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{latest, pod_finished, Attempt, AttemptState, RestartPolicy, Seen};

/// Why a container could not be started (pull or create failed), shown as its waiting
/// state: `ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`, ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    pub reason: String,
    pub message: String,
}

/// What the status needs beyond the attempts.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub now: Option<Timestamp>,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    /// Running containers whose readiness probe passes (or that have none).
    pub ready: BTreeSet<String>,
    /// Containers whose last start failed, and why.
    pub failures: BTreeMap<String, StartFailure>,
    /// Containers waiting out a crash back-off.
    pub backing_off: BTreeSet<String>,
    /// Image id (`sha256:...`) per container, once pulled.
    pub image_ids: BTreeMap<String, String>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// The status for `pod` given what the box shows.
pub fn pod_status(pod: &Pod, seen: &Seen, facts: &Facts) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone().unwrap_or_default();
    let now = facts.now.unwrap_or_else(Timestamp::now);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let policy = RestartPolicy::of(pod);

    let inits: &[Container] = spec.init_containers.as_deref().unwrap_or_default();
    let initialized = inits.iter().all(|c| {
        matches!(
            latest(seen, &c.name),
            Some(Attempt {
                state: AttemptState::Exited { exit_code: 0, .. },
                ..
            })
        )
    });
    let init_statuses: Vec<ContainerStatus> = inits
        .iter()
        .map(|c| container_status(c, &uid, seen, facts, "PodInitializing", true))
        .collect();
    let waiting_reason = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, &uid, seen, facts, waiting_reason, false))
        .collect();

    let finished = pod_finished(pod, seen, policy);
    let phase = if finished {
        let all_ok = spec.containers.iter().all(|c| {
            matches!(
                latest(seen, &c.name),
                Some(Attempt {
                    state: AttemptState::Exited { exit_code: 0, .. },
                    ..
                })
            )
        }) && initialized;
        if all_ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized
        && spec
            .containers
            .iter()
            .any(|c| latest(seen, &c.name).is_some())
    {
        "Running"
    } else {
        "Pending"
    };

    let containers_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    let mut conditions = vec![
        ("PodReadyToStartContainers", seen.network, None),
        (
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
        ),
        (
            "ContainersReady",
            containers_ready,
            (!containers_ready).then_some("ContainersNotReady"),
        ),
        (
            "Ready",
            containers_ready,
            (!containers_ready).then_some("ContainersNotReady"),
        ),
        ("PodScheduled", true, None),
    ]
    .into_iter()
    .map(|(kind, ok, reason)| condition(&old, kind, ok, reason, now))
    .collect::<Vec<_>>();
    // A finished pod is not ready whatever its last probes said.
    if finished {
        for c in conditions.iter_mut() {
            if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                c.reason = Some("PodCompleted".into());
            }
        }
    }

    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: facts.host_ip.clone(),
        host_ips: facts
            .host_ip
            .clone()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: facts.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: old.start_time.clone().or_else(|| Some(time(now))),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        qos_class: old
            .qos_class
            .clone()
            .or_else(|| Some(qos_class(&spec.containers).into())),
        ..Default::default()
    }
}

/// A condition, keeping its lastTransitionTime when its status did not change.
fn condition(
    old: &PodStatus,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let previous = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.map(Into::into),
        last_transition_time: previous.or_else(|| Some(time(now))),
        ..Default::default()
    }
}

/// The runtime's id for one attempt, as containerStatuses[].containerID shows it.
pub fn container_id(pod_uid: &str, container: &str, attempt: u32) -> String {
    format!("kith://{pod_uid}/{container}/{attempt}")
}

fn terminated(a: &Attempt, uid: &str) -> Option<ContainerStateTerminated> {
    match &a.state {
        AttemptState::Exited {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => Some(ContainerStateTerminated {
            exit_code: *exit_code,
            reason: Some(reason.clone()),
            started_at: started_at.map(time),
            finished_at: Some(time(*finished_at)),
            container_id: Some(container_id(uid, &a.container, a.attempt)),
            ..Default::default()
        }),
        _ => None,
    }
}

fn container_status(
    c: &Container,
    uid: &str,
    seen: &Seen,
    facts: &Facts,
    waiting_reason: &str,
    init: bool,
) -> ContainerStatus {
    let newest = latest(seen, &c.name);
    let previous = newest.and_then(|n| {
        seen.attempts
            .iter()
            .filter(|a| a.container == c.name && a.attempt < n.attempt)
            .max_by_key(|a| a.attempt)
    });
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    };
    let failure = facts.failures.get(&c.name);
    let (state, last, running) = match newest {
        None => {
            let state = match failure {
                Some(f) => waiting(&f.reason, Some(f.message.clone())),
                None => waiting(waiting_reason, None),
            };
            (state, None, false)
        }
        Some(a) => match &a.state {
            AttemptState::Running { started_at } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(time(*started_at)),
                    }),
                    ..Default::default()
                },
                previous.and_then(|p| terminated(p, uid)),
                true,
            ),
            AttemptState::Created => (
                waiting("ContainerCreating", None),
                previous.and_then(|p| terminated(p, uid)),
                false,
            ),
            AttemptState::Exited { .. } => {
                if let Some(f) = failure {
                    (
                        waiting(&f.reason, Some(f.message.clone())),
                        terminated(a, uid),
                        false,
                    )
                } else if facts.backing_off.contains(&c.name) {
                    let message = format!(
                        "back-off restarting failed container {} in pod {}",
                        c.name, uid
                    );
                    (
                        waiting("CrashLoopBackOff", Some(message)),
                        terminated(a, uid),
                        false,
                    )
                } else {
                    (
                        ContainerState {
                            terminated: terminated(a, uid),
                            ..Default::default()
                        },
                        previous.and_then(|p| terminated(p, uid)),
                        false,
                    )
                }
            }
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: facts.image_ids.get(&c.name).cloned().unwrap_or_default(),
        container_id: newest.map(|a| container_id(uid, &c.name, a.attempt)),
        ready: running && !init && facts.ready.contains(&c.name),
        started: Some(running),
        restart_count: newest.map(|a| a.attempt as i32).unwrap_or(0),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Guaranteed when every container has cpu and memory limits equal to its requests,
/// BestEffort when none has any, Burstable otherwise (as Kubernetes computes it).
pub fn qos_class(containers: &[Container]) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let r = c.resources.clone().unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        if !limits.is_empty() || !requests.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.get(res);
            let request = requests.get(res).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pod(inits: &[&str], apps: &[&str], policy: &str) -> Pod {
        let c = |n: &&str| Container {
            name: n.to_string(),
            image: Some("busybox".into()),
            ..Default::default()
        };
        let mut p = Pod {
            spec: Some(PodSpec {
                init_containers: (!inits.is_empty()).then(|| inits.iter().map(c).collect()),
                containers: apps.iter().map(c).collect(),
                restart_policy: Some(policy.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.metadata.uid = Some("u1".into());
        p
    }

    fn running(name: &str, attempt: u32) -> Attempt {
        Attempt {
            container: name.into(),
            attempt,
            state: AttemptState::Running { started_at: t(0) },
        }
    }

    fn exited(name: &str, attempt: u32, code: i32) -> Attempt {
        Attempt {
            container: name.into(),
            attempt,
            state: AttemptState::Exited {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                started_at: Some(t(0)),
                finished_at: t(1),
            },
        }
    }

    fn facts(ready: &[&str]) -> Facts {
        Facts {
            now: Some(t(10)),
            pod_ip: Some("10.244.0.5".into()),
            host_ip: Some("192.0.2.1".into()),
            ready: ready.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn cond(s: &PodStatus, kind: &str) -> String {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    fn waiting_reason(s: &ContainerStatus) -> Option<String> {
        s.state.as_ref()?.waiting.as_ref()?.reason.clone()
    }

    #[test]
    fn phase_table() {
        let cases: Vec<(&str, Pod, Vec<Attempt>, &str)> = vec![
            (
                "nothing started",
                pod(&[], &["a"], "Always"),
                vec![],
                "Pending",
            ),
            (
                "init running",
                pod(&["i"], &["a"], "Always"),
                vec![running("i", 0)],
                "Pending",
            ),
            (
                "inits done, app running",
                pod(&["i"], &["a"], "Always"),
                vec![exited("i", 0, 0), running("a", 0)],
                "Running",
            ),
            (
                "crashed under Always is still Running",
                pod(&[], &["a"], "Always"),
                vec![exited("a", 0, 1)],
                "Running",
            ),
            (
                "OnFailure clean exit",
                pod(&[], &["a"], "OnFailure"),
                vec![exited("a", 0, 0)],
                "Succeeded",
            ),
            (
                "Never, failed",
                pod(&[], &["a"], "Never"),
                vec![exited("a", 0, 3)],
                "Failed",
            ),
            (
                "Never, one ok one failed",
                pod(&[], &["a", "b"], "Never"),
                vec![exited("a", 0, 0), exited("b", 0, 1)],
                "Failed",
            ),
            (
                "Never, failed init",
                pod(&["i"], &["a"], "Never"),
                vec![exited("i", 0, 1)],
                "Failed",
            ),
        ];
        for (name, p, attempts, want) in cases {
            let seen = Seen {
                network: true,
                attempts,
            };
            let s = pod_status(&p, &seen, &facts(&[]));
            assert_eq!(s.phase.as_deref(), Some(want), "{name}");
        }
    }

    #[test]
    fn readiness_drives_the_ready_conditions() {
        let p = pod(&[], &["a", "b"], "Always");
        let seen = Seen {
            network: true,
            attempts: vec![running("a", 0), running("b", 0)],
        };
        let s = pod_status(&p, &seen, &facts(&["a"]));
        assert_eq!(cond(&s, "Ready"), "False");
        assert_eq!(cond(&s, "ContainersReady"), "False");
        assert_eq!(cond(&s, "Initialized"), "True");
        let s = pod_status(&p, &seen, &facts(&["a", "b"]));
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.5"));
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let mut p = pod(&[], &["a"], "Always");
        let seen = Seen {
            network: true,
            attempts: vec![running("a", 0)],
        };
        let first = pod_status(&p, &seen, &facts(&["a"]));
        p.status = Some(first.clone());
        let mut later = facts(&["a"]);
        later.now = Some(t(500));
        let second = pod_status(&p, &seen, &later);
        assert_eq!(first.conditions, second.conditions);
        assert_eq!(first.start_time, second.start_time);
    }

    #[test]
    fn container_state_table() {
        let p = pod(&[], &["a"], "Always");
        let mut f = facts(&[]);
        // Never started, pull failing.
        f.failures.insert(
            "a".into(),
            StartFailure {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image \"nope\"".into(),
            },
        );
        let s = pod_status(&p, &Seen::default(), &f);
        let cs = &s.container_statuses.unwrap()[0];
        assert_eq!(waiting_reason(cs).as_deref(), Some("ImagePullBackOff"));
        assert_eq!(cs.restart_count, 0);

        // Crashed twice, now backing off: CrashLoopBackOff with lastState terminated.
        let mut f = facts(&[]);
        f.backing_off.insert("a".into());
        let seen = Seen {
            network: true,
            attempts: vec![exited("a", 1, 1), exited("a", 2, 1)],
        };
        let s = pod_status(&p, &seen, &f);
        let cs = &s.container_statuses.unwrap()[0];
        assert_eq!(waiting_reason(cs).as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(cs.restart_count, 2);
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 1);
        assert_eq!(last.container_id.as_deref(), Some("kith://u1/a/2"));

        // Restarted and running: lastState is the previous attempt.
        let seen = Seen {
            network: true,
            attempts: vec![exited("a", 0, 137), running("a", 1)],
        };
        let s = pod_status(&p, &seen, &facts(&["a"]));
        let cs = &s.container_statuses.unwrap()[0];
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert!(cs.ready);
        assert_eq!(cs.restart_count, 1);
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            137
        );
    }

    #[test]
    fn qos_table() {
        let q = |v: &str| Quantity(v.into());
        let res = |req: &[(&str, &str)], lim: &[(&str, &str)]| Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: (!req.is_empty())
                    .then(|| req.iter().map(|(k, v)| (k.to_string(), q(v))).collect()),
                limits: (!lim.is_empty())
                    .then(|| lim.iter().map(|(k, v)| (k.to_string(), q(v))).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (vec![res(&[], &[])], "BestEffort"),
            (
                vec![res(
                    &[("cpu", "1"), ("memory", "1Gi")],
                    &[("cpu", "1"), ("memory", "1Gi")],
                )],
                "Guaranteed",
            ),
            (
                vec![res(&[], &[("cpu", "1"), ("memory", "1Gi")])],
                "Guaranteed",
            ),
            (vec![res(&[("cpu", "100m")], &[])], "Burstable"),
            (
                vec![res(&[("cpu", "1")], &[("cpu", "2"), ("memory", "1Gi")])],
                "Burstable",
            ),
        ];
        for (containers, want) in cases {
            assert_eq!(qos_class(&containers), want);
        }
    }
}
