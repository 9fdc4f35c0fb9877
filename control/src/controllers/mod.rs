//! In-process controllers of the control plane. Each keeps its decision in a pure
//! function tested by tables and a thin loop that carries it out. They reach the API
//! through an in-process `kube::Client` (see [`crate::client`]), like any other client.

pub mod clusterip;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod nodeipam;
pub mod pods;
mod queue;
pub mod replicaset;
pub mod statefulset;

use std::sync::Arc;

use kith_api::handler::Api;
use kith_api::store::ObjectStore;
use tokio::task::JoinSet;

/// A merge patch that sets `status`. Kubernetes leaves zero counts out of a status, so a
/// count that dropped to zero must be sent as null or the merge would keep its old value;
/// `zero_counts` names those optional count fields.
pub(crate) fn status_merge_patch<T: serde::Serialize>(
    status: &T,
    zero_counts: &[&str],
) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(status)?;
    if let Some(m) = v.as_object_mut() {
        for k in zero_counts {
            m.entry(*k).or_insert(serde_json::Value::Null);
        }
    }
    Ok(serde_json::json!({ "status": v }))
}

/// What a kube-runtime `Controller` stream's `for_each` gets: counts each reconcile pass
/// of `controller` (and the failed ones) in `/metrics`. Queue and watch errors are not
/// passes and are left out.
pub(crate) fn count_reconciles<T, E, Q>(
    controller: &'static str,
) -> impl FnMut(Result<T, kube::runtime::controller::Error<E, Q>>) -> std::future::Ready<()> {
    move |result| {
        use kube::runtime::controller::Error;
        match result {
            Ok(_) => crate::metrics::control().reconciled(controller, true),
            Err(Error::ReconcilerFailed(..)) => {
                crate::metrics::control().reconciled(controller, false)
            }
            Err(_) => {}
        }
        std::future::ready(())
    }
}

/// Start every controller (and the scheduler); they run until the set is dropped.
pub fn spawn_all<S: ObjectStore>(
    client: kube::Client,
    api: Arc<Api<S>>,
    cluster_cidr: nodeipam::Cidr,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(namespace::run(api));
    set.spawn(replicaset::run(client.clone()));
    set.spawn(deployment::run(client.clone()));
    set.spawn(daemonset::run(client.clone()));
    set.spawn(gc::run(client.clone()));
    set.spawn(job::run(client.clone()));
    set.spawn(cronjob::run(client.clone()));
    set.spawn(clusterip::run(client.clone(), clusterip::Range::default()));
    set.spawn(endpoints::run(client.clone()));
    set.spawn(statefulset::run(client.clone()));
    set.spawn(node_lifecycle::run(client.clone()));
    set.spawn(nodeipam::run(client.clone(), cluster_cidr));
    set.spawn(crate::scheduler::run(client.clone()));
    set
}
