//! The scheduler: binds pending pods to nodes, as kube-scheduler does.
//!
//! ```text
//!  watch pods ──┐                    ┌─▶ place() ─Ok(node)─▶ POST pods/x/binding ─▶ Event Scheduled
//!  watch nodes ─┼─▶ reflector stores ┤                                            └▶ PodScheduled=True
//!  watch ns ────┘   (wake on change) └─▶ Snapshot ─Err(why)─▶ Event FailedScheduling (Warning)
//!                                                           ├▶ PodScheduled=False/Unschedulable
//!                                                           └▶ back-off 1 s .. 60 s, cut short
//!                                                              when nodes or bound pods change
//! ```
//!
//! The decision is the pure [`place`] over a [`Snapshot`]; this module only carries it out.
//! Pods placed in one pass are added to the snapshot with [`Snapshot::assume`], so a burst
//! of pods costs one snapshot, not one per pod.

pub mod place;
pub mod quantity;
pub mod selectors;
pub mod snapshot;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use place::{place, Unschedulable};
pub use snapshot::Snapshot;

use crate::events::{record, reference, EventType};
use crate::metrics::{self, ScheduleResult};

/// The name pods ask for in `spec.schedulerName`, and the events' source.
pub const SCHEDULER_NAME: &str = "default-scheduler";
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why one binding attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("binding pod {pod} to node {node}: {source}")]
    Bind {
        pod: String,
        node: String,
        source: kube::Error,
    },
}

/// When a pod that did not fit may be tried again.
struct Backoff {
    delay: Duration,
    until: Instant,
    /// The pod's resourceVersion after our own status write: any other change retries it.
    seen: Option<String>,
    /// The cluster (nodes and bound pods) when it failed: any change retries it.
    cluster: u64,
    /// Waiting because no node fits (not because the binding failed).
    unschedulable: bool,
}

/// The pods waiting in `backoff` as (failed binding, unschedulable), for
/// `scheduler_pending_pods`.
fn waiting(backoff: &HashMap<String, Backoff>) -> (usize, usize) {
    let unschedulable = backoff.values().filter(|b| b.unschedulable).count();
    (backoff.len() - unschedulable, unschedulable)
}

/// Whether `pod` is this scheduler's to place now.
pub fn is_pending(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let mine = matches!(
        spec.scheduler_name.as_deref(),
        None | Some("") | Some(SCHEDULER_NAME)
    );
    let unbound = spec.node_name.as_deref().unwrap_or_default().is_empty();
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    mine && unbound && !finished && pod.metadata.deletion_timestamp.is_none()
}

/// A fingerprint of what placement depends on: nodes and bound pods with their versions.
fn cluster_fingerprint(nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> u64 {
    let mut parts: Vec<(&str, &str)> = nodes
        .iter()
        .map(|n| {
            (
                n.metadata.name.as_deref().unwrap_or_default(),
                n.metadata.resource_version.as_deref().unwrap_or_default(),
            )
        })
        .chain(
            pods.iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| !n.is_empty())
                })
                .map(|p| {
                    (
                        p.metadata.uid.as_deref().unwrap_or_default(),
                        p.metadata.resource_version.as_deref().unwrap_or_default(),
                    )
                }),
        )
        .collect();
    parts.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The pod's conditions with PodScheduled set to (status, reason, message); `None` when it
/// already says that, so retries do not rewrite the pod.
fn with_scheduled_condition(
    pod: &Pod,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> Option<Vec<PodCondition>> {
    let mut conds = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    match conds.iter_mut().find(|c| c.type_ == "PodScheduled") {
        Some(c)
            if c.status == status
                && c.reason.as_deref() == reason
                && c.message.as_deref() == message =>
        {
            return None
        }
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now);
            }
            c.status = status.into();
            c.reason = reason.map(str::to_string);
            c.message = message.map(str::to_string);
        }
        None => conds.push(PodCondition {
            type_: "PodScheduled".into(),
            status: status.into(),
            reason: reason.map(str::to_string),
            message: message.map(str::to_string),
            last_transition_time: Some(now),
            ..Default::default()
        }),
    }
    Some(conds)
}

/// Write PodScheduled; returns the pod's new resourceVersion.
async fn set_condition(api: &Api<Pod>, pod: &Pod, conds: Vec<PodCondition>) -> Option<String> {
    let name = pod.metadata.name.as_deref()?;
    let patch = json!({"status": {"conditions": conds}});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(p) => p.metadata.resource_version,
        Err(e) => {
            tracing::debug!(pod = name, error = %e, "could not set PodScheduled");
            None
        }
    }
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> Result<(), BindError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
    .map_err(|source| BindError::Bind {
        pod: format!("{ns}/{name}"),
        node: node.to_string(),
        source,
    })
}

/// One pass: place every pending pod that is not backing off. Returns when to look again
/// at the latest (the earliest back-off expiry).
async fn pass(
    client: &Client,
    pods: &Store<Pod>,
    nodes: &Store<Node>,
    namespaces: &Store<Namespace>,
    backoff: &mut HashMap<String, Backoff>,
) -> Option<Instant> {
    let all_pods = pods.state();
    let all_nodes = nodes.state();
    let cluster = cluster_fingerprint(&all_nodes, &all_pods);
    let mut snap = Snapshot::new(
        all_nodes.iter().map(AsRef::as_ref),
        all_pods.iter().map(AsRef::as_ref),
    );
    for ns in namespaces.state() {
        if let Some(name) = ns.metadata.name.as_deref() {
            snap.set_namespace_labels(name, ns.metadata.labels.clone().unwrap_or_default());
        }
    }
    let mut pending: Vec<&Arc<Pod>> = all_pods.iter().filter(|p| is_pending(p)).collect();
    // Oldest first, as kube-scheduler's queue does for pods of one priority.
    pending.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.namespace.clone(),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    backoff.retain(|uid, _| {
        pending
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
    });
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    for pod in pending {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(b) = backoff.get(&uid) {
            let changed = b.cluster != cluster || b.seen != pod.metadata.resource_version;
            if !changed && b.until > now {
                next = Some(next.map_or(b.until, |n| n.min(b.until)));
                continue;
            }
        }
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let attempt = Instant::now();
        let attempted = |result| metrics::control().schedule_attempt(result, attempt.elapsed());
        match place(pod, &snap) {
            Ok(node) => match bind(client, pod, &node).await {
                Ok(()) => {
                    attempted(ScheduleResult::Scheduled);
                    snap.assume(pod, &node);
                    backoff.remove(&uid);
                    tracing::debug!(pod = %format!("{ns}/{name}"), node, "scheduled");
                    // Events and the condition do not hold up the next binding.
                    let (client, pod) = (client.clone(), Arc::clone(pod));
                    tokio::spawn(async move {
                        let msg = format!("Successfully assigned {ns}/{name} to {node}");
                        record(
                            &client,
                            &reference(&*pod),
                            EventType::Normal,
                            "Scheduled",
                            &msg,
                            SCHEDULER_NAME,
                        )
                        .await;
                        // kube-apiserver sets this on binding; kith's binding does not (yet).
                        if let Some(conds) = with_scheduled_condition(&pod, "True", None, None) {
                            set_condition(&api, &pod, conds).await;
                        }
                    });
                }
                Err(e) => {
                    attempted(ScheduleResult::Error);
                    // Bound meanwhile, deleted, or the API is unhappy: look again soon.
                    tracing::debug!(error = %e, "binding failed");
                    let until = now + FIRST_BACKOFF;
                    backoff.insert(
                        uid,
                        Backoff {
                            delay: FIRST_BACKOFF,
                            until,
                            seen: pod.metadata.resource_version.clone(),
                            cluster,
                            unschedulable: false,
                        },
                    );
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            },
            Err(why) => {
                attempted(ScheduleResult::Unschedulable);
                let message = why.to_string();
                tracing::debug!(pod = %format!("{ns}/{name}"), %message, "unschedulable");
                record(
                    client,
                    &reference(&**pod),
                    EventType::Warning,
                    "FailedScheduling",
                    &message,
                    SCHEDULER_NAME,
                )
                .await;
                let mut seen = pod.metadata.resource_version.clone();
                if let Some(conds) =
                    with_scheduled_condition(pod, "False", Some("Unschedulable"), Some(&message))
                {
                    if let Some(rv) = set_condition(&api, pod, conds).await {
                        seen = Some(rv);
                    }
                }
                let delay = backoff
                    .get(&uid)
                    .map_or(FIRST_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
                let until = now + delay;
                backoff.insert(
                    uid,
                    Backoff {
                        delay,
                        until,
                        seen,
                        cluster,
                        unschedulable: true,
                    },
                );
                next = Some(next.map_or(until, |n| n.min(until)));
            }
        }
    }
    // Every pod not backing off was tried: what waits is in `backoff`.
    let (failed, unschedulable) = waiting(backoff);
    metrics::control().pending_pods(0, failed, unschedulable);
    next
}

/// Run the scheduler until the task is dropped.
pub async fn run(client: Client) {
    let wake = Arc::new(Notify::new());
    let (pods, pods_w) = reflector::store::<Pod>();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (namespaces, ns_w) = reflector::store::<Namespace>();
    // One watch over all pods: bound ones make the snapshot, unbound ones are the queue.
    let mirrors = futures::future::join3(
        crate::mirror::mirror(
            Api::<Pod>::all(client.clone()),
            pods_w,
            wake.clone(),
            "scheduler",
        ),
        crate::mirror::mirror(
            Api::<Node>::all(client.clone()),
            nodes_w,
            wake.clone(),
            "scheduler",
        ),
        crate::mirror::mirror(
            Api::<Namespace>::all(client.clone()),
            ns_w,
            wake.clone(),
            "scheduler",
        ),
    );
    let schedule = async {
        for store in [
            pods.wait_until_ready().await,
            nodes.wait_until_ready().await,
            namespaces.wait_until_ready().await,
        ] {
            if store.is_err() {
                return;
            }
        }
        let mut backoff = HashMap::new();
        loop {
            let next = pass(&client, &pods, &nodes, &namespaces, &mut backoff).await;
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = sleep => {}
            }
        }
    };
    tokio::select! {
        _ = mirrors => tracing::warn!("scheduler watches ended"),
        _ = schedule => tracing::warn!("scheduler stopped"),
    }
}
