//! In-process controllers of the control plane. Each keeps its decision in a pure
//! function tested by tables and a thin loop that carries it out. They reach the API
//! through an in-process `kube::Client` (see [`crate::client`]), like any other client.

pub mod clusterip;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod pods;
pub mod replicaset;
pub mod statefulset;

use std::sync::Arc;

use kith_api::handler::Api;
use kith_api::store::ObjectStore;
use tokio::task::JoinSet;

/// Start every controller (and the scheduler); they run until the set is dropped.
pub fn spawn_all<S: ObjectStore>(client: kube::Client, api: Arc<Api<S>>) -> JoinSet<()> {
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
    set.spawn(crate::scheduler::run(client.clone()));
    set
}
