//! Object-state metrics with kube-state-metrics' names and labels, computed from the
//! stored objects at scrape time, so the dashboards and alerts written for
//! kube-state-metrics work against kith unchanged.
//!
//! ```text
//!  stored JSON ─▶ k8s-openapi type ─▶ pod_samples / deployment_samples / ... ─▶ Vec<Sample>
//!                                     (pure, tested by tables)              └▶ encoded by
//!                                                                                FAMILIES order
//! ```

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::scheduler::quantity::parse_milli;

/// One sample of one family.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub family: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What a scrape says about a family before its samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyDesc {
    /// For counters, the name without `_total` (OpenMetrics names the family so).
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
}

const fn gauge(name: &'static str, help: &'static str) -> FamilyDesc {
    FamilyDesc {
        name,
        help,
        counter: false,
    }
}

/// Every family this module emits, in the order they are written.
pub const FAMILIES: &[FamilyDesc] = &[
    gauge("kube_pod_info", "Information about pod"),
    gauge("kube_pod_status_phase", "The pods current phase"),
    gauge("kube_pod_status_ready", "Describes whether the pod is ready to serve requests"),
    FamilyDesc {
        name: "kube_pod_container_status_restarts",
        help: "The number of container restarts per container",
        counter: true,
    },
    gauge("kube_pod_container_status_running", "Describes whether the container is currently in running state"),
    gauge("kube_pod_container_status_waiting", "Describes whether the container is currently in waiting state"),
    gauge("kube_pod_container_status_waiting_reason", "Describes the reason the container is currently in waiting state"),
    gauge("kube_pod_container_status_terminated", "Describes whether the container is currently in terminated state"),
    gauge("kube_deployment_spec_replicas", "Number of desired pods for a deployment"),
    gauge("kube_deployment_status_replicas", "The number of replicas per deployment"),
    gauge("kube_deployment_status_replicas_available", "The number of available replicas per deployment"),
    gauge("kube_deployment_status_replicas_unavailable", "The number of unavailable replicas per deployment"),
    gauge("kube_deployment_status_replicas_updated", "The number of updated replicas per deployment"),
    gauge("kube_deployment_status_replicas_ready", "The number of ready replicas per deployment"),
    gauge("kube_deployment_metadata_generation", "Sequence number representing a specific generation of the desired state"),
    gauge("kube_deployment_status_observed_generation", "The generation observed by the deployment controller"),
    gauge("kube_replicaset_spec_replicas", "Number of desired pods for a ReplicaSet"),
    gauge("kube_replicaset_status_replicas", "The number of replicas per ReplicaSet"),
    gauge("kube_replicaset_status_ready_replicas", "The number of ready replicas per ReplicaSet"),
    gauge("kube_replicaset_status_fully_labeled_replicas", "The number of fully labeled replicas per ReplicaSet"),
    gauge("kube_replicaset_metadata_generation", "Sequence number representing a specific generation of the desired state"),
    gauge("kube_replicaset_status_observed_generation", "The generation observed by the ReplicaSet controller"),
    gauge("kube_replicaset_owner", "Information about the ReplicaSet's owner"),
    gauge("kube_daemonset_status_current_number_scheduled", "The number of nodes running at least one daemon pod and are supposed to"),
    gauge("kube_daemonset_status_desired_number_scheduled", "The number of nodes that should be running the daemon pod"),
    gauge("kube_daemonset_status_number_available", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available"),
    gauge("kube_daemonset_status_number_misscheduled", "The number of nodes running a daemon pod but are not supposed to"),
    gauge("kube_daemonset_status_number_ready", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready"),
    gauge("kube_daemonset_status_number_unavailable", "The number of nodes that should be running the daemon pod and have none of the daemon pod running and available"),
    gauge("kube_daemonset_status_updated_number_scheduled", "The total number of nodes that are running updated daemon pod"),
    gauge("kube_daemonset_status_observed_generation", "The most recent generation observed by the daemon set controller"),
    gauge("kube_daemonset_metadata_generation", "Sequence number representing a specific generation of the desired state"),
    gauge("kube_statefulset_replicas", "Number of desired pods for a StatefulSet"),
    gauge("kube_statefulset_status_replicas", "The number of replicas per StatefulSet"),
    gauge("kube_statefulset_status_replicas_available", "The number of available replicas per StatefulSet"),
    gauge("kube_statefulset_status_replicas_current", "The number of current replicas per StatefulSet"),
    gauge("kube_statefulset_status_replicas_ready", "The number of ready replicas per StatefulSet"),
    gauge("kube_statefulset_status_replicas_updated", "The number of updated replicas per StatefulSet"),
    gauge("kube_statefulset_metadata_generation", "Sequence number representing a specific generation of the desired state for the StatefulSet"),
    gauge("kube_statefulset_status_observed_generation", "The generation observed by the StatefulSet controller"),
    gauge("kube_job_spec_completions", "The desired number of successfully finished pods the job should be run with"),
    gauge("kube_job_status_active", "The number of actively running pods"),
    gauge("kube_job_status_succeeded", "The number of pods which reached Phase Succeeded"),
    gauge("kube_job_status_failed", "The number of pods which reached Phase Failed"),
    gauge("kube_job_complete", "The job has completed its execution"),
    gauge("kube_job_failed", "The job has failed its execution"),
    gauge("kube_node_info", "Information about a cluster node"),
    gauge("kube_node_spec_unschedulable", "Whether a node can schedule new pods"),
    gauge("kube_node_status_condition", "The condition of a cluster node"),
    gauge("kube_node_status_capacity", "The capacity for different resources of a node"),
    gauge("kube_node_status_allocatable", "The allocatable for different resources of a node that are available for scheduling"),
    gauge("kube_namespace_status_phase", "kubernetes namespace status phase"),
    gauge("kube_service_info", "Information about service"),
    gauge("kube_endpoint_address", "Information about Endpoint available and non available addresses"),
];

const POD_PHASES: [&str; 5] = ["Pending", "Succeeded", "Failed", "Unknown", "Running"];
const NAMESPACE_PHASES: [&str; 2] = ["Active", "Terminating"];
/// kube-state-metrics' three condition statuses, lower-case as it writes them.
const STATUSES: [&str; 3] = ["true", "false", "unknown"];

type Labels = Vec<(&'static str, String)>;

fn push(out: &mut Vec<Sample>, family: &'static str, labels: Labels, value: f64) {
    out.push(Sample {
        family,
        labels,
        value,
    });
}

fn name(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

fn namespace(m: &ObjectMeta) -> String {
    m.namespace.clone().unwrap_or_default()
}

fn uid(m: &ObjectMeta) -> String {
    m.uid.clone().unwrap_or_default()
}

fn generation(m: &ObjectMeta) -> f64 {
    m.generation.unwrap_or(0) as f64
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// One sample per status of a condition, 1 for the one it has ("True" → "true").
fn status_samples(out: &mut Vec<Sample>, family: &'static str, base: &Labels, status: &str) {
    for s in STATUSES {
        let mut labels = base.clone();
        labels.push(("condition", s.to_string()));
        push(
            out,
            family,
            labels,
            bool_value(status.eq_ignore_ascii_case(s)),
        );
    }
}

pub fn pod_samples(pod: &Pod, out: &mut Vec<Sample>) {
    let m = &pod.metadata;
    let base: Labels = vec![
        ("namespace", namespace(m)),
        ("pod", name(m)),
        ("uid", uid(m)),
    ];
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let controller = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let mut info = base.clone();
    info.extend([
        (
            "host_ip",
            status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        ),
        (
            "pod_ip",
            status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        ),
        (
            "node",
            spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ),
        (
            "created_by_kind",
            controller.map(|o| o.kind.clone()).unwrap_or_default(),
        ),
        (
            "created_by_name",
            controller.map(|o| o.name.clone()).unwrap_or_default(),
        ),
        (
            "priority_class",
            spec.and_then(|s| s.priority_class_name.clone())
                .unwrap_or_default(),
        ),
        (
            "host_network",
            spec.and_then(|s| s.host_network)
                .unwrap_or(false)
                .to_string(),
        ),
    ]);
    push(out, "kube_pod_info", info, 1.0);
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    for p in POD_PHASES {
        let mut labels = base.clone();
        labels.push(("phase", p.to_string()));
        push(out, "kube_pod_status_phase", labels, bool_value(p == phase));
    }
    if let Some(ready) = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
    {
        status_samples(out, "kube_pod_status_ready", &base, &ready.status);
    }
    for cs in status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        let mut labels = base.clone();
        labels.push(("container", cs.name.clone()));
        push(
            out,
            "kube_pod_container_status_restarts",
            labels.clone(),
            cs.restart_count as f64,
        );
        let state = cs.state.as_ref();
        let waiting = state.and_then(|s| s.waiting.as_ref());
        let running = state.is_some_and(|s| s.running.is_some());
        let terminated = state.is_some_and(|s| s.terminated.is_some());
        push(
            out,
            "kube_pod_container_status_running",
            labels.clone(),
            bool_value(running),
        );
        push(
            out,
            "kube_pod_container_status_waiting",
            labels.clone(),
            bool_value(waiting.is_some()),
        );
        if let Some(reason) = waiting.and_then(|w| w.reason.clone()) {
            let mut l = labels.clone();
            l.push(("reason", reason));
            push(out, "kube_pod_container_status_waiting_reason", l, 1.0);
        }
        push(
            out,
            "kube_pod_container_status_terminated",
            labels,
            bool_value(terminated),
        );
    }
}

pub fn deployment_samples(d: &Deployment, out: &mut Vec<Sample>) {
    let base: Labels = vec![
        ("namespace", namespace(&d.metadata)),
        ("deployment", name(&d.metadata)),
    ];
    let st = d.status.clone().unwrap_or_default();
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    for (family, v) in [
        ("kube_deployment_spec_replicas", spec_replicas),
        ("kube_deployment_status_replicas", st.replicas.unwrap_or(0)),
        (
            "kube_deployment_status_replicas_available",
            st.available_replicas.unwrap_or(0),
        ),
        (
            "kube_deployment_status_replicas_unavailable",
            st.unavailable_replicas.unwrap_or(0),
        ),
        (
            "kube_deployment_status_replicas_updated",
            st.updated_replicas.unwrap_or(0),
        ),
        (
            "kube_deployment_status_replicas_ready",
            st.ready_replicas.unwrap_or(0),
        ),
    ] {
        push(out, family, base.clone(), v as f64);
    }
    push(
        out,
        "kube_deployment_metadata_generation",
        base.clone(),
        generation(&d.metadata),
    );
    push(
        out,
        "kube_deployment_status_observed_generation",
        base,
        st.observed_generation.unwrap_or(0) as f64,
    );
}

pub fn replicaset_samples(rs: &ReplicaSet, out: &mut Vec<Sample>) {
    let base: Labels = vec![
        ("namespace", namespace(&rs.metadata)),
        ("replicaset", name(&rs.metadata)),
    ];
    let st = rs.status.clone().unwrap_or_default();
    let spec_replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    for (family, v) in [
        ("kube_replicaset_spec_replicas", spec_replicas as f64),
        ("kube_replicaset_status_replicas", st.replicas as f64),
        (
            "kube_replicaset_status_ready_replicas",
            st.ready_replicas.unwrap_or(0) as f64,
        ),
        (
            "kube_replicaset_status_fully_labeled_replicas",
            st.fully_labeled_replicas.unwrap_or(0) as f64,
        ),
        (
            "kube_replicaset_metadata_generation",
            generation(&rs.metadata),
        ),
        (
            "kube_replicaset_status_observed_generation",
            st.observed_generation.unwrap_or(0) as f64,
        ),
    ] {
        push(out, family, base.clone(), v);
    }
    let owners = rs.metadata.owner_references.clone().unwrap_or_default();
    if owners.is_empty() {
        let mut l = base.clone();
        l.extend([
            ("owner_kind", "<none>".to_string()),
            ("owner_name", "<none>".to_string()),
            ("owner_is_controller", "<none>".to_string()),
        ]);
        push(out, "kube_replicaset_owner", l, 1.0);
    }
    for o in owners {
        let mut l = base.clone();
        l.extend([
            ("owner_kind", o.kind),
            ("owner_name", o.name),
            (
                "owner_is_controller",
                o.controller.unwrap_or(false).to_string(),
            ),
        ]);
        push(out, "kube_replicaset_owner", l, 1.0);
    }
}

pub fn daemonset_samples(ds: &DaemonSet, out: &mut Vec<Sample>) {
    let base: Labels = vec![
        ("namespace", namespace(&ds.metadata)),
        ("daemonset", name(&ds.metadata)),
    ];
    let st = ds.status.clone().unwrap_or_default();
    for (family, v) in [
        (
            "kube_daemonset_status_current_number_scheduled",
            st.current_number_scheduled as f64,
        ),
        (
            "kube_daemonset_status_desired_number_scheduled",
            st.desired_number_scheduled as f64,
        ),
        (
            "kube_daemonset_status_number_available",
            st.number_available.unwrap_or(0) as f64,
        ),
        (
            "kube_daemonset_status_number_misscheduled",
            st.number_misscheduled as f64,
        ),
        ("kube_daemonset_status_number_ready", st.number_ready as f64),
        (
            "kube_daemonset_status_number_unavailable",
            st.number_unavailable.unwrap_or(0) as f64,
        ),
        (
            "kube_daemonset_status_updated_number_scheduled",
            st.updated_number_scheduled.unwrap_or(0) as f64,
        ),
        (
            "kube_daemonset_status_observed_generation",
            st.observed_generation.unwrap_or(0) as f64,
        ),
        (
            "kube_daemonset_metadata_generation",
            generation(&ds.metadata),
        ),
    ] {
        push(out, family, base.clone(), v);
    }
}

pub fn statefulset_samples(ss: &StatefulSet, out: &mut Vec<Sample>) {
    let base: Labels = vec![
        ("namespace", namespace(&ss.metadata)),
        ("statefulset", name(&ss.metadata)),
    ];
    let st = ss.status.clone().unwrap_or_default();
    let spec_replicas = ss.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    for (family, v) in [
        ("kube_statefulset_replicas", spec_replicas as f64),
        ("kube_statefulset_status_replicas", st.replicas as f64),
        (
            "kube_statefulset_status_replicas_available",
            st.available_replicas.unwrap_or(0) as f64,
        ),
        (
            "kube_statefulset_status_replicas_current",
            st.current_replicas.unwrap_or(0) as f64,
        ),
        (
            "kube_statefulset_status_replicas_ready",
            st.ready_replicas.unwrap_or(0) as f64,
        ),
        (
            "kube_statefulset_status_replicas_updated",
            st.updated_replicas.unwrap_or(0) as f64,
        ),
        (
            "kube_statefulset_metadata_generation",
            generation(&ss.metadata),
        ),
        (
            "kube_statefulset_status_observed_generation",
            st.observed_generation.unwrap_or(0) as f64,
        ),
    ] {
        push(out, family, base.clone(), v);
    }
}

pub fn job_samples(job: &Job, out: &mut Vec<Sample>) {
    let base: Labels = vec![
        ("namespace", namespace(&job.metadata)),
        ("job_name", name(&job.metadata)),
    ];
    if let Some(c) = job.spec.as_ref().and_then(|s| s.completions) {
        push(out, "kube_job_spec_completions", base.clone(), c as f64);
    }
    let st = job.status.clone().unwrap_or_default();
    for (family, v) in [
        ("kube_job_status_active", st.active),
        ("kube_job_status_succeeded", st.succeeded),
        ("kube_job_status_failed", st.failed),
    ] {
        push(out, family, base.clone(), v.unwrap_or(0) as f64);
    }
    for c in st.conditions.iter().flatten() {
        let family = match c.type_.as_str() {
            "Complete" => "kube_job_complete",
            "Failed" => "kube_job_failed",
            _ => continue,
        };
        status_samples(out, family, &base, &c.status);
    }
}

pub fn node_samples(node: &Node, out: &mut Vec<Sample>) {
    let base: Labels = vec![("node", name(&node.metadata))];
    let spec = node.spec.clone().unwrap_or_default();
    let st = node.status.clone().unwrap_or_default();
    let ni = st.node_info.clone().unwrap_or_default();
    let internal_ip = st
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .unwrap_or_default();
    let mut info = base.clone();
    info.extend([
        ("kernel_version", ni.kernel_version),
        ("os_image", ni.os_image),
        ("container_runtime_version", ni.container_runtime_version),
        ("kubelet_version", ni.kubelet_version),
        ("kubeproxy_version", ni.kube_proxy_version),
        ("provider_id", spec.provider_id.clone().unwrap_or_default()),
        ("pod_cidr", spec.pod_cidr.clone().unwrap_or_default()),
        ("system_uuid", ni.system_uuid),
        ("internal_ip", internal_ip),
    ]);
    push(out, "kube_node_info", info, 1.0);
    push(
        out,
        "kube_node_spec_unschedulable",
        base.clone(),
        bool_value(spec.unschedulable.unwrap_or(false)),
    );
    for c in st.conditions.iter().flatten() {
        for s in STATUSES {
            let mut l = base.clone();
            l.extend([("condition", c.type_.clone()), ("status", s.to_string())]);
            push(
                out,
                "kube_node_status_condition",
                l,
                bool_value(c.status.eq_ignore_ascii_case(s)),
            );
        }
    }
    for (family, list) in [
        ("kube_node_status_capacity", &st.capacity),
        ("kube_node_status_allocatable", &st.allocatable),
    ] {
        for (res, q) in list.iter().flatten() {
            let Some((resource, unit)) = resource_and_unit(res) else {
                continue;
            };
            let Some(milli) = parse_milli(&q.0) else {
                continue;
            };
            let mut l = base.clone();
            l.extend([("resource", resource), ("unit", unit.to_string())]);
            push(out, family, l, milli as f64 / 1000.0);
        }
    }
}

/// kube-state-metrics' resource label (dots, slashes and dashes become `_`) and unit.
fn resource_and_unit(resource: &str) -> Option<(String, &'static str)> {
    let unit = match resource {
        "cpu" => "core",
        "memory" | "ephemeral-storage" | "storage" => "byte",
        "pods" => "integer",
        r if r.starts_with("hugepages-") => "byte",
        r if r.contains('/') => "integer",
        _ => return None,
    };
    Some((resource.replace(['.', '/', '-'], "_"), unit))
}

pub fn namespace_samples(ns: &Namespace, out: &mut Vec<Sample>) {
    let phase = ns
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Active");
    for p in NAMESPACE_PHASES {
        push(
            out,
            "kube_namespace_status_phase",
            vec![("namespace", name(&ns.metadata)), ("phase", p.to_string())],
            bool_value(p == phase),
        );
    }
}

pub fn service_samples(svc: &Service, out: &mut Vec<Sample>) {
    let spec = svc.spec.clone().unwrap_or_default();
    let lb_ip = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone())
        .unwrap_or_default();
    push(
        out,
        "kube_service_info",
        vec![
            ("namespace", namespace(&svc.metadata)),
            ("service", name(&svc.metadata)),
            ("uid", uid(&svc.metadata)),
            ("cluster_ip", spec.cluster_ip.unwrap_or_default()),
            ("external_name", spec.external_name.unwrap_or_default()),
            ("load_balancer_ip", lb_ip),
        ],
        1.0,
    );
}

pub fn endpoints_samples(ep: &Endpoints, out: &mut Vec<Sample>) {
    let base: Labels = vec![
        ("namespace", namespace(&ep.metadata)),
        ("endpoint", name(&ep.metadata)),
    ];
    for subset in ep.subsets.iter().flatten() {
        for (addrs, ready) in [
            (&subset.addresses, "true"),
            (&subset.not_ready_addresses, "false"),
        ] {
            for a in addrs.iter().flatten() {
                let mut l = base.clone();
                l.extend([("ip", a.ip.clone()), ("ready", ready.to_string())]);
                push(out, "kube_endpoint_address", l, 1.0);
            }
        }
    }
}

/// The samples of one stored object of `(group, plural)`; nothing for kinds
/// kube-state-metrics does not cover here or objects that do not parse.
pub fn object_samples(group: &str, plural: &str, json: &[u8], out: &mut Vec<Sample>) {
    fn with<T: serde::de::DeserializeOwned>(json: &[u8], f: impl FnOnce(&T)) {
        match serde_json::from_slice::<T>(json) {
            Ok(obj) => f(&obj),
            Err(e) => tracing::debug!(error = %e, "object left out of the metrics"),
        }
    }
    match (group, plural) {
        ("", "pods") => with(json, |p| pod_samples(p, out)),
        ("", "nodes") => with(json, |n| node_samples(n, out)),
        ("", "namespaces") => with(json, |n| namespace_samples(n, out)),
        ("", "services") => with(json, |s| service_samples(s, out)),
        ("", "endpoints") => with(json, |e| endpoints_samples(e, out)),
        ("apps", "deployments") => with(json, |d| deployment_samples(d, out)),
        ("apps", "replicasets") => with(json, |r| replicaset_samples(r, out)),
        ("apps", "daemonsets") => with(json, |d| daemonset_samples(d, out)),
        ("apps", "statefulsets") => with(json, |s| statefulset_samples(s, out)),
        ("batch", "jobs") => with(json, |j| job_samples(j, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn samples(group: &str, plural: &str, obj: serde_json::Value) -> Vec<Sample> {
        let mut out = Vec::new();
        object_samples(group, plural, &serde_json::to_vec(&obj).unwrap(), &mut out);
        out
    }

    /// The value of the sample of `family` whose labels include all of `want`.
    fn value(out: &[Sample], family: &str, want: &[(&'static str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = out
            .iter()
            .filter(|s| s.family == family)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect();
        assert!(found.len() <= 1, "{family} {want:?} matches {found:?}");
        found.first().map(|s| s.value)
    }

    #[test]
    fn every_family_is_declared_once() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn pod_table() {
        let running = json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7f", "uid": "r", "controller": true}]},
            "spec": {"nodeName": "box1", "containers": [{"name": "app"}, {"name": "side"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5", "hostIP": "192.0.2.1",
                       "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [
                           {"name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": 3,
                            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
                           {"name": "side", "image": "x", "imageID": "", "ready": false, "restartCount": 7,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                       ]}
        });
        let pending = json!({"metadata": {"name": "p", "namespace": "shop", "uid": "u2"}, "spec": {"containers": []}});
        let out = samples("", "pods", running);
        let pod = [("namespace", "shop"), ("pod", "web-1"), ("uid", "u1")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = pod.to_vec();
            v.extend_from_slice(extra);
            v
        };
        type Case = (&'static str, Vec<(&'static str, &'static str)>, Option<f64>);
        let cases: Vec<Case> = vec![
            (
                "kube_pod_info",
                with(&[
                    ("node", "box1"),
                    ("pod_ip", "10.1.0.5"),
                    ("host_ip", "192.0.2.1"),
                    ("created_by_kind", "ReplicaSet"),
                    ("created_by_name", "web-7f"),
                    ("host_network", "false"),
                ]),
                Some(1.0),
            ),
            (
                "kube_pod_status_phase",
                with(&[("phase", "Running")]),
                Some(1.0),
            ),
            (
                "kube_pod_status_phase",
                with(&[("phase", "Pending")]),
                Some(0.0),
            ),
            (
                "kube_pod_status_phase",
                with(&[("phase", "Failed")]),
                Some(0.0),
            ),
            (
                "kube_pod_status_ready",
                with(&[("condition", "false")]),
                Some(1.0),
            ),
            (
                "kube_pod_status_ready",
                with(&[("condition", "true")]),
                Some(0.0),
            ),
            (
                "kube_pod_container_status_restarts",
                with(&[("container", "app")]),
                Some(3.0),
            ),
            (
                "kube_pod_container_status_restarts",
                with(&[("container", "side")]),
                Some(7.0),
            ),
            (
                "kube_pod_container_status_running",
                with(&[("container", "app")]),
                Some(1.0),
            ),
            (
                "kube_pod_container_status_running",
                with(&[("container", "side")]),
                Some(0.0),
            ),
            (
                "kube_pod_container_status_waiting",
                with(&[("container", "side")]),
                Some(1.0),
            ),
            (
                "kube_pod_container_status_waiting_reason",
                with(&[("container", "side"), ("reason", "CrashLoopBackOff")]),
                Some(1.0),
            ),
            (
                "kube_pod_container_status_waiting_reason",
                with(&[("container", "app")]),
                None,
            ),
            (
                "kube_pod_container_status_terminated",
                with(&[("container", "app")]),
                Some(0.0),
            ),
        ];
        for (family, labels, want) in cases {
            assert_eq!(value(&out, family, &labels), want, "{family} {labels:?}");
        }
        // A pod with no status yet is Pending, with no readiness or container samples.
        let out = samples("", "pods", pending);
        assert_eq!(
            value(
                &out,
                "kube_pod_status_phase",
                &[("pod", "p"), ("phase", "Pending")]
            ),
            Some(1.0)
        );
        assert_eq!(
            out.iter()
                .filter(|s| s.family == "kube_pod_status_phase")
                .count(),
            5
        );
        assert!(!out.iter().any(|s| s.family == "kube_pod_status_ready"));
    }

    #[test]
    fn workload_table() {
        let d = json!({"metadata": {"name": "web", "namespace": "shop", "generation": 4},
                       "spec": {"replicas": 3, "selector": {}, "template": {}},
                       "status": {"replicas": 3, "availableReplicas": 2, "unavailableReplicas": 1,
                                  "updatedReplicas": 3, "readyReplicas": 2, "observedGeneration": 4}});
        let rs = json!({"metadata": {"name": "web-7f", "namespace": "shop", "generation": 1,
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]},
                        "spec": {"replicas": 3, "selector": {}},
                        "status": {"replicas": 3, "readyReplicas": 2, "fullyLabeledReplicas": 3, "observedGeneration": 1}});
        let ds = json!({"metadata": {"name": "agent", "namespace": "kube-system", "generation": 2},
                        "spec": {"selector": {}, "template": {}},
                        "status": {"currentNumberScheduled": 3, "desiredNumberScheduled": 4, "numberMisscheduled": 0,
                                   "numberReady": 2, "numberAvailable": 2, "numberUnavailable": 2, "updatedNumberScheduled": 3,
                                   "observedGeneration": 2}});
        let ss = json!({"metadata": {"name": "db", "namespace": "shop"},
                        "spec": {"replicas": 2, "selector": {}, "template": {}, "serviceName": "db"},
                        "status": {"replicas": 2, "readyReplicas": 1, "currentReplicas": 2, "updatedReplicas": 2, "availableReplicas": 1}});
        let job = json!({"metadata": {"name": "backup", "namespace": "ops"},
                         "spec": {"completions": 1, "template": {}},
                         "status": {"failed": 4, "conditions": [{"type": "Failed", "status": "True"}]}});
        let mut out = samples("apps", "deployments", d);
        out.extend(samples("apps", "replicasets", rs));
        out.extend(samples("apps", "daemonsets", ds));
        out.extend(samples("apps", "statefulsets", ss));
        out.extend(samples("batch", "jobs", job));
        out.extend(samples(
            "apps",
            "controllerrevisions",
            json!({"metadata": {"name": "x"}}),
        ));
        let web = [("namespace", "shop"), ("deployment", "web")];
        type Case = (&'static str, Vec<(&'static str, &'static str)>, Option<f64>);
        let cases: Vec<Case> = vec![
            ("kube_deployment_spec_replicas", web.to_vec(), Some(3.0)),
            ("kube_deployment_status_replicas", web.to_vec(), Some(3.0)),
            (
                "kube_deployment_status_replicas_available",
                web.to_vec(),
                Some(2.0),
            ),
            (
                "kube_deployment_status_replicas_unavailable",
                web.to_vec(),
                Some(1.0),
            ),
            (
                "kube_deployment_status_replicas_updated",
                web.to_vec(),
                Some(3.0),
            ),
            (
                "kube_deployment_metadata_generation",
                web.to_vec(),
                Some(4.0),
            ),
            (
                "kube_deployment_status_observed_generation",
                web.to_vec(),
                Some(4.0),
            ),
            (
                "kube_replicaset_spec_replicas",
                vec![("replicaset", "web-7f")],
                Some(3.0),
            ),
            (
                "kube_replicaset_status_ready_replicas",
                vec![("replicaset", "web-7f")],
                Some(2.0),
            ),
            (
                "kube_replicaset_owner",
                vec![
                    ("replicaset", "web-7f"),
                    ("owner_kind", "Deployment"),
                    ("owner_name", "web"),
                    ("owner_is_controller", "true"),
                ],
                Some(1.0),
            ),
            (
                "kube_daemonset_status_desired_number_scheduled",
                vec![("daemonset", "agent")],
                Some(4.0),
            ),
            (
                "kube_daemonset_status_number_ready",
                vec![("daemonset", "agent")],
                Some(2.0),
            ),
            (
                "kube_daemonset_status_number_unavailable",
                vec![("daemonset", "agent")],
                Some(2.0),
            ),
            (
                "kube_statefulset_replicas",
                vec![("statefulset", "db")],
                Some(2.0),
            ),
            (
                "kube_statefulset_status_replicas_ready",
                vec![("statefulset", "db")],
                Some(1.0),
            ),
            (
                "kube_job_status_failed",
                vec![("job_name", "backup")],
                Some(4.0),
            ),
            (
                "kube_job_status_succeeded",
                vec![("job_name", "backup")],
                Some(0.0),
            ),
            (
                "kube_job_spec_completions",
                vec![("job_name", "backup")],
                Some(1.0),
            ),
            (
                "kube_job_failed",
                vec![("job_name", "backup"), ("condition", "true")],
                Some(1.0),
            ),
            (
                "kube_job_failed",
                vec![("job_name", "backup"), ("condition", "false")],
                Some(0.0),
            ),
            ("kube_job_complete", vec![("job_name", "backup")], None),
        ];
        for (family, labels, want) in cases {
            assert_eq!(value(&out, family, &labels), want, "{family} {labels:?}");
        }
    }

    #[test]
    fn cluster_objects_table() {
        let node = json!({"metadata": {"name": "box1"},
                          "spec": {"unschedulable": true, "podCIDR": "10.1.0.0/24"},
                          "status": {"conditions": [{"type": "Ready", "status": "Unknown"}, {"type": "MemoryPressure", "status": "False"}],
                                     "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "1000", "example.com/dongle": "2", "weird": "1"},
                                     "allocatable": {"cpu": "3500m", "memory": "7Gi"},
                                     "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                                     "nodeInfo": {"kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion": "kith://0.1",
                                                  "kubeletVersion": "v1.33.0-kith", "kubeProxyVersion": "", "machineID": "", "systemUUID": "s",
                                                  "bootID": "", "architecture": "amd64", "operatingSystem": "linux"}}});
        let ns = json!({"metadata": {"name": "shop"}, "status": {"phase": "Terminating"}});
        let svc = json!({"metadata": {"name": "kubernetes", "namespace": "default", "uid": "s1"},
                         "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}});
        let ep = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "notReadyAddresses": [{"ip": "127.0.0.2"}], "ports": [{"port": 6443}]}]});
        let mut out = samples("", "nodes", node);
        out.extend(samples("", "namespaces", ns));
        out.extend(samples("", "services", svc));
        out.extend(samples("", "endpoints", ep));
        out.extend(samples("", "pods", json!("not an object")));
        let box1 = ("node", "box1");
        type Case = (&'static str, Vec<(&'static str, &'static str)>, Option<f64>);
        let cases: Vec<Case> = vec![
            (
                "kube_node_info",
                vec![
                    box1,
                    ("kernel_version", "6.1"),
                    ("internal_ip", "192.0.2.1"),
                    ("pod_cidr", "10.1.0.0/24"),
                ],
                Some(1.0),
            ),
            ("kube_node_spec_unschedulable", vec![box1], Some(1.0)),
            (
                "kube_node_status_condition",
                vec![box1, ("condition", "Ready"), ("status", "unknown")],
                Some(1.0),
            ),
            (
                "kube_node_status_condition",
                vec![box1, ("condition", "Ready"), ("status", "true")],
                Some(0.0),
            ),
            (
                "kube_node_status_condition",
                vec![box1, ("condition", "MemoryPressure"), ("status", "false")],
                Some(1.0),
            ),
            (
                "kube_node_status_capacity",
                vec![box1, ("resource", "cpu"), ("unit", "core")],
                Some(4.0),
            ),
            (
                "kube_node_status_capacity",
                vec![box1, ("resource", "memory"), ("unit", "byte")],
                Some(8589934592.0),
            ),
            (
                "kube_node_status_capacity",
                vec![box1, ("resource", "pods"), ("unit", "integer")],
                Some(110.0),
            ),
            (
                "kube_node_status_capacity",
                vec![box1, ("resource", "ephemeral_storage")],
                Some(1000.0),
            ),
            (
                "kube_node_status_capacity",
                vec![
                    box1,
                    ("resource", "example_com_dongle"),
                    ("unit", "integer"),
                ],
                Some(2.0),
            ),
            (
                "kube_node_status_capacity",
                vec![box1, ("resource", "weird")],
                None,
            ),
            (
                "kube_node_status_allocatable",
                vec![box1, ("resource", "cpu")],
                Some(3.5),
            ),
            (
                "kube_namespace_status_phase",
                vec![("namespace", "shop"), ("phase", "Terminating")],
                Some(1.0),
            ),
            (
                "kube_namespace_status_phase",
                vec![("namespace", "shop"), ("phase", "Active")],
                Some(0.0),
            ),
            (
                "kube_service_info",
                vec![
                    ("service", "kubernetes"),
                    ("cluster_ip", "10.96.0.1"),
                    ("uid", "s1"),
                ],
                Some(1.0),
            ),
            (
                "kube_endpoint_address",
                vec![
                    ("endpoint", "kubernetes"),
                    ("ip", "127.0.0.1"),
                    ("ready", "true"),
                ],
                Some(1.0),
            ),
            (
                "kube_endpoint_address",
                vec![
                    ("endpoint", "kubernetes"),
                    ("ip", "127.0.0.2"),
                    ("ready", "false"),
                ],
                Some(1.0),
            ),
        ];
        for (family, labels, want) in cases {
            assert_eq!(value(&out, family, &labels), want, "{family} {labels:?}");
        }
        assert!(!out.iter().any(|s| s.family.starts_with("kube_pod")));
        for s in &out {
            assert!(
                FAMILIES.iter().any(|f| f.name == s.family),
                "{} undeclared",
                s.family
            );
        }
    }
}
