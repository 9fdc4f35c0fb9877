//! Pod start latency: from a pod's creation until every one of its containers runs,
//! observed once per pod into `kith_pod_start_duration_seconds`.
//!
//! The end point is the latest `state.running.startedAt` of the pod's containers (what
//! the agent itself reported), so the measure does not depend on when the watch event
//! arrives. Pods that were already running before this agent started are not counted:
//! an agent restart must not observe every pod on the box again.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};

use super::Stats;

/// Seconds from creation to all containers running, when `pod` runs and got there at or
/// after `since`.
pub fn start_duration(pod: &Pod, since: Timestamp) -> Option<f64> {
    let created = pod.metadata.creation_timestamp.as_ref()?.0;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let want = pod.spec.as_ref()?.containers.len();
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    if want == 0 || statuses.len() != want {
        return None;
    }
    let started = statuses
        .iter()
        .map(|c| {
            c.state
                .as_ref()?
                .running
                .as_ref()?
                .started_at
                .as_ref()
                .map(|t| t.0)
        })
        .collect::<Option<Vec<Timestamp>>>()?
        .into_iter()
        .max()?;
    if started < since {
        return None;
    }
    Some(started.duration_since(created).as_secs_f64().max(0.0))
}

/// Watches the pods bound to `node` and observes each one's start once.
pub async fn watch(client: Client, node: String, stats: Arc<Stats>) {
    let since = Timestamp::now();
    let pods: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut seen: HashSet<String> = HashSet::new();
    let mut events = std::pin::pin!(watcher(pods, cfg));
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if seen.contains(&uid) {
                    continue;
                }
                if let Some(secs) = start_duration(&pod, since) {
                    stats.observe_pod_start(secs);
                    seen.insert(uid);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    seen.remove(uid);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "watching pods for start latency"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(phase: &str, created: &str, started: &[Option<&str>]) -> Pod {
        let containers: Vec<_> = (0..started.len())
            .map(|i| json!({"name": format!("c{i}"), "image": "x"}))
            .collect();
        let statuses: Vec<_> = started
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let state = match s {
                    Some(t) => json!({"running": {"startedAt": t}}),
                    None => json!({"waiting": {"reason": "ContainerCreating"}}),
                };
                json!({"name": format!("c{i}"), "image": "x", "imageID": "", "ready": true,
                       "restartCount": 0, "state": state})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u", "creationTimestamp": created},
            "spec": {"containers": containers},
            "status": {"phase": phase, "containerStatuses": statuses},
        }))
        .unwrap()
    }

    #[test]
    fn start_duration_table() {
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t0 = "2026-01-01T00:00:10Z";
        let cases = [
            (
                pod("Running", t0, &[Some("2026-01-01T00:00:13Z")]),
                Some(3.0),
            ),
            // the last container to start decides
            (
                pod(
                    "Running",
                    t0,
                    &[Some("2026-01-01T00:00:12Z"), Some("2026-01-01T00:00:17Z")],
                ),
                Some(7.0),
            ),
            // one container still waiting
            (
                pod("Running", t0, &[Some("2026-01-01T00:00:12Z"), None]),
                None,
            ),
            (pod("Pending", t0, &[None]), None),
            // running since before this agent started: not counted again
            (
                pod(
                    "Running",
                    "2025-12-31T23:00:00Z",
                    &[Some("2025-12-31T23:59:00Z")],
                ),
                None,
            ),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            assert_eq!(start_duration(&p, since), want, "case {i}");
        }
    }
}
