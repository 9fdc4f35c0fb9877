//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), turned into the JSON
//! the rest of kith speaks.
//!
//! kubectl 1.32+ sends protobuf for `kubectl create namespace|configmap|secret|service|...`
//! and does not fall back to JSON on 415, so kith must read these bodies:
//!
//! ```text
//!  "k8s\0" | runtime.Unknown{typeMeta{apiVersion,kind}, raw, contentEncoding, contentType}
//!                                                       |
//!                 prost decode of the kind's message <--+
//!                                                       |
//!        JSON exactly as kube-apiserver's JSON codec would write the same Go object
//! ```
//!
//! The Go side (gogo-protobuf) writes every non-pointer field, zero or not, so `Some("")`
//! and `Some(0)` mean "Go zero value": fields that are `omitempty` in Go's JSON tags are
//! omitted when zero, pointer fields are written whenever present, and the few fields
//! without `omitempty` (`containerPort`, `port`, container `name`, cron `schedule`) always.
//!
//! Nothing is dropped silently: each message is destructured exhaustively (a field added to
//! k8s-pb fails the build here), every field is either converted or, when set, refused with
//! [`ProtobufError::Unsupported`] naming its JSON path, so the client learns to send JSON.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not become JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("protobuf body does not start with the Kubernetes magic bytes \"k8s\\x00\"")]
    BadMagic,
    #[error("malformed protobuf body: {0}")]
    Malformed(String),
    /// A kind kith has no protobuf decoder for.
    #[error("protobuf bodies of kind {kind} ({api_version}) are not supported by kith; send JSON")]
    UnsupportedKind { api_version: String, kind: String },
    /// A field that is set but not converted; `field` is its JSON path.
    #[error("protobuf field {field} of {kind} is not supported by kith; send JSON")]
    Unsupported { kind: String, field: String },
}

impl ProtobufError {
    pub fn into_api(self) -> ApiError {
        match self {
            ProtobufError::BadMagic | ProtobufError::Malformed(_) => {
                ApiError::BadRequest(self.to_string())
            }
            ProtobufError::UnsupportedKind { .. } | ProtobufError::Unsupported { .. } => {
                ApiError::UnsupportedMediaType(self.to_string())
            }
        }
    }
}

type Result<T, E = ProtobufError> = std::result::Result<T, E>;

/// Decodes a whole request body (magic, envelope, object) into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(ProtobufError::BadMagic)?;
    let Unknown {
        type_meta,
        raw,
        content_encoding,
        content_type,
    } = Unknown::decode(rest).map_err(|e| ProtobufError::Malformed(e.to_string()))?;
    let TypeMeta { api_version, kind } = type_meta.unwrap_or_default();
    let (api_version, kind) = (api_version.unwrap_or_default(), kind.unwrap_or_default());
    let c = Conv { kind: &kind };
    if content_encoding.as_deref().is_some_and(|e| !e.is_empty()) {
        return Err(c.unsupported("", "contentEncoding"));
    }
    if content_type
        .as_deref()
        .is_some_and(|t| !t.is_empty() && t != "application/vnd.kubernetes.protobuf")
    {
        return Err(c.unsupported("", "contentType"));
    }
    let raw = raw.unwrap_or_default();
    let mut o = Obj::default();
    o.put("kind", kind.clone());
    o.put("apiVersion", api_version.clone());
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let core::Namespace {
                metadata,
                spec,
                status,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.put_if("spec", c.opt(spec, |s| c.namespace_spec(s))?);
            o.put_if("status", c.opt(status, |s| c.namespace_status(s))?);
        }
        ("v1", "ConfigMap") => {
            let core::ConfigMap {
                metadata,
                immutable,
                data,
                binary_data,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.ptr("immutable", immutable);
            o.map("data", data);
            o.put_if("binaryData", bytes_map(binary_data));
        }
        ("v1", "Secret") => {
            let core::Secret {
                metadata,
                immutable,
                data,
                string_data,
                r#type,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.ptr("immutable", immutable);
            o.put_if("data", bytes_map(data));
            o.map("stringData", string_data);
            o.s("type", r#type);
        }
        ("v1", "ServiceAccount") => {
            let core::ServiceAccount {
                metadata,
                secrets,
                image_pull_secrets,
                automount_service_account_token,
            } = parse(&raw)?;
            c.reject_list("", "secrets", &secrets)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.list(
                "imagePullSecrets",
                image_pull_secrets.into_iter().map(local_ref).collect(),
            );
            o.ptr(
                "automountServiceAccountToken",
                automount_service_account_token,
            );
        }
        ("v1", "Service") => {
            let core::Service {
                metadata,
                spec,
                status,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.put_if("spec", c.opt(spec, |s| c.service_spec(s))?);
            o.put_if("status", c.opt(status, |s| c.service_status(s))?);
        }
        ("apps/v1", "Deployment") => {
            let apps::Deployment {
                metadata,
                spec,
                status,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.put_if("spec", c.opt(spec, |s| c.deployment_spec(s))?);
            o.put_if("status", c.opt(status, |s| c.deployment_status(s))?);
        }
        ("batch/v1", "Job") => {
            let batch::Job {
                metadata,
                spec,
                status,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.put_if("spec", c.opt(spec, |s| c.job_spec("spec.", s))?);
            o.put_if("status", c.opt(status, |s| c.job_status(s))?);
        }
        ("batch/v1", "CronJob") => {
            let batch::CronJob {
                metadata,
                spec,
                status,
            } = parse(&raw)?;
            o.put_if("metadata", c.meta_top(metadata)?);
            o.put_if("spec", c.opt(spec, |s| c.cronjob_spec(s))?);
            o.put_if("status", c.opt(status, |s| c.cronjob_status(s))?);
        }
        _ => return Err(ProtobufError::UnsupportedKind { api_version, kind }),
    }
    Ok(o.into_value())
}

fn parse<M: Message + Default>(raw: &[u8]) -> Result<M> {
    M::decode(raw).map_err(|e| ProtobufError::Malformed(e.to_string()))
}

/// A JSON object built with Go's `encoding/json` rules for each kind of field.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(&mut self, key: &str, v: impl Into<Value>) {
        self.0.insert(key.to_string(), v.into());
    }

    fn put_if(&mut self, key: &str, v: Option<Value>) {
        if let Some(v) = v {
            self.put(key, v);
        }
    }

    /// `omitempty` scalar: absent or zero is omitted.
    fn s<T: Into<Value> + Default + PartialEq>(&mut self, key: &str, v: Option<T>) {
        if let Some(v) = v.filter(|v| *v != T::default()) {
            self.put(key, v);
        }
    }

    /// Scalar without `omitempty`: written even when zero.
    fn always<T: Into<Value> + Default>(&mut self, key: &str, v: Option<T>) {
        self.put(key, v.unwrap_or_default());
    }

    /// Pointer field: present on the wire means set, zero or not.
    fn ptr<T: Into<Value>>(&mut self, key: &str, v: Option<T>) {
        if let Some(v) = v {
            self.put(key, v);
        }
    }

    fn strings(&mut self, key: &str, v: Vec<String>) {
        if !v.is_empty() {
            self.put(key, v);
        }
    }

    fn map(&mut self, key: &str, v: BTreeMap<String, String>) {
        if !v.is_empty() {
            self.put(
                key,
                Value::Object(v.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
            );
        }
    }

    fn list(&mut self, key: &str, v: Vec<Value>) {
        if !v.is_empty() {
            self.put(key, v);
        }
    }

    fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

fn bytes_map(m: BTreeMap<String, Vec<u8>>) -> Option<Value> {
    if m.is_empty() {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(Value::Object(
        m.into_iter()
            .map(|(k, v)| (k, Value::String(b64.encode(v))))
            .collect(),
    ))
}

fn quantities(m: BTreeMap<String, Quantity>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, q)| (k, q.string.unwrap_or_default()))
        .collect()
}

fn int_or_string(v: IntOrString) -> Value {
    // type 1 is String; anything else reads as the int, as apimachinery does.
    if v.r#type == Some(1) {
        Value::String(v.str_val.unwrap_or_default())
    } else {
        Value::from(v.int_val.unwrap_or_default())
    }
}

/// metav1.Time as JSON: RFC 3339 in UTC at second precision; the zero time (an empty message
/// on the wire) is "unset" and omitted.
fn time(t: meta::Time) -> Option<Value> {
    let seconds = t.seconds.unwrap_or_default();
    if seconds == 0 && t.nanos.unwrap_or_default() == 0 {
        return None;
    }
    let ts = jiff::Timestamp::from_second(seconds).ok()?;
    Some(Value::String(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn local_ref(r: core::LocalObjectReference) -> Value {
    let mut o = Obj::default();
    o.s("name", r.name);
    o.into_value()
}

/// Conversion context: the kind, for error messages.
struct Conv<'a> {
    kind: &'a str,
}

impl Conv<'_> {
    fn unsupported(&self, path: &str, field: &str) -> ProtobufError {
        ProtobufError::Unsupported {
            kind: self.kind.to_string(),
            field: format!("{path}{field}"),
        }
    }

    fn reject<T>(&self, path: &str, field: &str, v: &Option<T>) -> Result<()> {
        match v {
            Some(_) => Err(self.unsupported(path, field)),
            None => Ok(()),
        }
    }

    fn reject_list<T>(&self, path: &str, field: &str, v: &[T]) -> Result<()> {
        if v.is_empty() {
            Ok(())
        } else {
            Err(self.unsupported(path, field))
        }
    }

    fn opt<T>(&self, v: Option<T>, f: impl FnOnce(T) -> Result<Value>) -> Result<Option<Value>> {
        v.map(f).transpose()
    }

    fn meta_top(&self, m: Option<meta::ObjectMeta>) -> Result<Option<Value>> {
        self.opt(m, |m| self.meta("metadata.", m))
    }

    fn meta(&self, path: &str, m: meta::ObjectMeta) -> Result<Value> {
        let meta::ObjectMeta {
            name,
            generate_name,
            namespace,
            self_link,
            uid,
            resource_version,
            generation,
            creation_timestamp,
            deletion_timestamp,
            deletion_grace_period_seconds,
            labels,
            annotations,
            owner_references,
            finalizers,
            managed_fields,
        } = m;
        self.reject_list(path, "managedFields", &managed_fields)?;
        let mut o = Obj::default();
        o.s("name", name);
        o.s("generateName", generate_name);
        o.s("namespace", namespace);
        o.s("selfLink", self_link);
        o.s("uid", uid);
        o.s("resourceVersion", resource_version);
        o.s("generation", generation);
        o.put_if("creationTimestamp", creation_timestamp.and_then(time));
        o.put_if("deletionTimestamp", deletion_timestamp.and_then(time));
        o.ptr("deletionGracePeriodSeconds", deletion_grace_period_seconds);
        o.map("labels", labels);
        o.map("annotations", annotations);
        let owners = owner_references
            .into_iter()
            .map(|r| {
                let meta::OwnerReference {
                    api_version,
                    kind,
                    name,
                    uid,
                    controller,
                    block_owner_deletion,
                } = r;
                let mut o = Obj::default();
                o.always("apiVersion", api_version);
                o.always("kind", kind);
                o.always("name", name);
                o.always("uid", uid);
                o.ptr("controller", controller);
                o.ptr("blockOwnerDeletion", block_owner_deletion);
                o.into_value()
            })
            .collect();
        o.list("ownerReferences", owners);
        o.strings("finalizers", finalizers);
        Ok(o.into_value())
    }

    fn namespace_spec(&self, s: core::NamespaceSpec) -> Result<Value> {
        let core::NamespaceSpec { finalizers } = s;
        let mut o = Obj::default();
        o.strings("finalizers", finalizers);
        Ok(o.into_value())
    }

    fn namespace_status(&self, s: core::NamespaceStatus) -> Result<Value> {
        let core::NamespaceStatus { phase, conditions } = s;
        self.reject_list("status.", "conditions", &conditions)?;
        let mut o = Obj::default();
        o.s("phase", phase);
        Ok(o.into_value())
    }

    fn service_spec(&self, s: core::ServiceSpec) -> Result<Value> {
        let core::ServiceSpec {
            ports,
            selector,
            cluster_ip,
            cluster_ips,
            r#type,
            external_ips,
            session_affinity,
            load_balancer_ip,
            load_balancer_source_ranges,
            external_name,
            external_traffic_policy,
            health_check_node_port,
            publish_not_ready_addresses,
            session_affinity_config,
            ip_families,
            ip_family_policy,
            allocate_load_balancer_node_ports,
            load_balancer_class,
            internal_traffic_policy,
            traffic_distribution,
        } = s;
        self.reject("spec.", "sessionAffinityConfig", &session_affinity_config)?;
        let ports = ports
            .into_iter()
            .map(|p| {
                let core::ServicePort {
                    name,
                    protocol,
                    app_protocol,
                    port,
                    target_port,
                    node_port,
                } = p;
                let mut o = Obj::default();
                o.s("name", name);
                o.s("protocol", protocol);
                o.ptr("appProtocol", app_protocol);
                o.always("port", port);
                o.put_if("targetPort", target_port.map(int_or_string));
                o.s("nodePort", node_port);
                o.into_value()
            })
            .collect();
        let mut o = Obj::default();
        o.list("ports", ports);
        o.map("selector", selector);
        o.s("clusterIP", cluster_ip);
        o.strings("clusterIPs", cluster_ips);
        o.s("type", r#type);
        o.strings("externalIPs", external_ips);
        o.s("sessionAffinity", session_affinity);
        o.s("loadBalancerIP", load_balancer_ip);
        o.strings("loadBalancerSourceRanges", load_balancer_source_ranges);
        o.s("externalName", external_name);
        o.s("externalTrafficPolicy", external_traffic_policy);
        o.s("healthCheckNodePort", health_check_node_port);
        o.s("publishNotReadyAddresses", publish_not_ready_addresses);
        o.strings("ipFamilies", ip_families);
        o.ptr("ipFamilyPolicy", ip_family_policy);
        o.ptr(
            "allocateLoadBalancerNodePorts",
            allocate_load_balancer_node_ports,
        );
        o.ptr("loadBalancerClass", load_balancer_class);
        o.ptr("internalTrafficPolicy", internal_traffic_policy);
        o.ptr("trafficDistribution", traffic_distribution);
        Ok(o.into_value())
    }

    fn service_status(&self, s: core::ServiceStatus) -> Result<Value> {
        let core::ServiceStatus {
            load_balancer,
            conditions,
        } = s;
        self.reject_list("status.", "conditions", &conditions)?;
        let mut o = Obj::default();
        if let Some(core::LoadBalancerStatus { ingress }) = load_balancer {
            self.reject_list("status.loadBalancer.", "ingress", &ingress)?;
            o.put("loadBalancer", Value::Object(Map::new()));
        }
        Ok(o.into_value())
    }

    fn label_selector(&self, s: meta::LabelSelector) -> Value {
        let meta::LabelSelector {
            match_labels,
            match_expressions,
        } = s;
        let exprs = match_expressions
            .into_iter()
            .map(|r| {
                let meta::LabelSelectorRequirement {
                    key,
                    operator,
                    values,
                } = r;
                let mut o = Obj::default();
                o.always("key", key);
                o.always("operator", operator);
                o.strings("values", values);
                o.into_value()
            })
            .collect();
        let mut o = Obj::default();
        o.map("matchLabels", match_labels);
        o.list("matchExpressions", exprs);
        o.into_value()
    }

    fn deployment_spec(&self, s: apps::DeploymentSpec) -> Result<Value> {
        let apps::DeploymentSpec {
            replicas,
            selector,
            template,
            strategy,
            min_ready_seconds,
            revision_history_limit,
            paused,
            progress_deadline_seconds,
        } = s;
        let mut o = Obj::default();
        o.ptr("replicas", replicas);
        o.put_if("selector", selector.map(|s| self.label_selector(s)));
        o.put_if(
            "template",
            self.opt(template, |t| self.pod_template("spec.template.", t))?,
        );
        if let Some(apps::DeploymentStrategy {
            r#type,
            rolling_update,
        }) = strategy
        {
            let mut st = Obj::default();
            st.s("type", r#type);
            if let Some(apps::RollingUpdateDeployment {
                max_unavailable,
                max_surge,
            }) = rolling_update
            {
                let mut ru = Obj::default();
                ru.put_if("maxUnavailable", max_unavailable.map(int_or_string));
                ru.put_if("maxSurge", max_surge.map(int_or_string));
                st.put("rollingUpdate", ru.into_value());
            }
            o.put("strategy", st.into_value());
        }
        o.s("minReadySeconds", min_ready_seconds);
        o.ptr("revisionHistoryLimit", revision_history_limit);
        o.s("paused", paused);
        o.ptr("progressDeadlineSeconds", progress_deadline_seconds);
        Ok(o.into_value())
    }

    fn deployment_status(&self, s: apps::DeploymentStatus) -> Result<Value> {
        let apps::DeploymentStatus {
            observed_generation,
            replicas,
            updated_replicas,
            ready_replicas,
            available_replicas,
            unavailable_replicas,
            terminating_replicas,
            conditions,
            collision_count,
        } = s;
        self.reject_list("status.", "conditions", &conditions)?;
        let mut o = Obj::default();
        o.s("observedGeneration", observed_generation);
        o.s("replicas", replicas);
        o.s("updatedReplicas", updated_replicas);
        o.s("readyReplicas", ready_replicas);
        o.s("availableReplicas", available_replicas);
        o.s("unavailableReplicas", unavailable_replicas);
        o.ptr("terminatingReplicas", terminating_replicas);
        o.ptr("collisionCount", collision_count);
        Ok(o.into_value())
    }

    fn job_spec(&self, path: &str, s: batch::JobSpec) -> Result<Value> {
        let batch::JobSpec {
            parallelism,
            completions,
            active_deadline_seconds,
            pod_failure_policy,
            success_policy,
            backoff_limit,
            backoff_limit_per_index,
            max_failed_indexes,
            selector,
            manual_selector,
            template,
            ttl_seconds_after_finished,
            completion_mode,
            suspend,
            pod_replacement_policy,
            managed_by,
        } = s;
        self.reject(path, "podFailurePolicy", &pod_failure_policy)?;
        self.reject(path, "successPolicy", &success_policy)?;
        let mut o = Obj::default();
        o.ptr("parallelism", parallelism);
        o.ptr("completions", completions);
        o.ptr("activeDeadlineSeconds", active_deadline_seconds);
        o.ptr("backoffLimit", backoff_limit);
        o.ptr("backoffLimitPerIndex", backoff_limit_per_index);
        o.ptr("maxFailedIndexes", max_failed_indexes);
        o.put_if("selector", selector.map(|s| self.label_selector(s)));
        o.ptr("manualSelector", manual_selector);
        o.put_if(
            "template",
            self.opt(template, |t| {
                self.pod_template(&format!("{path}template."), t)
            })?,
        );
        o.ptr("ttlSecondsAfterFinished", ttl_seconds_after_finished);
        o.ptr("completionMode", completion_mode);
        o.ptr("suspend", suspend);
        o.ptr("podReplacementPolicy", pod_replacement_policy);
        o.ptr("managedBy", managed_by);
        Ok(o.into_value())
    }

    fn job_status(&self, s: batch::JobStatus) -> Result<Value> {
        let batch::JobStatus {
            conditions,
            start_time,
            completion_time,
            active,
            succeeded,
            failed,
            terminating,
            completed_indexes,
            failed_indexes,
            uncounted_terminated_pods,
            ready,
        } = s;
        self.reject_list("status.", "conditions", &conditions)?;
        self.reject(
            "status.",
            "uncountedTerminatedPods",
            &uncounted_terminated_pods,
        )?;
        let mut o = Obj::default();
        o.put_if("startTime", start_time.and_then(time));
        o.put_if("completionTime", completion_time.and_then(time));
        o.s("active", active);
        o.s("succeeded", succeeded);
        o.s("failed", failed);
        o.ptr("terminating", terminating);
        o.s("completedIndexes", completed_indexes);
        o.ptr("failedIndexes", failed_indexes);
        o.ptr("ready", ready);
        Ok(o.into_value())
    }

    fn cronjob_spec(&self, s: batch::CronJobSpec) -> Result<Value> {
        let batch::CronJobSpec {
            schedule,
            time_zone,
            starting_deadline_seconds,
            concurrency_policy,
            suspend,
            job_template,
            successful_jobs_history_limit,
            failed_jobs_history_limit,
        } = s;
        let mut o = Obj::default();
        o.always("schedule", schedule);
        o.ptr("timeZone", time_zone);
        o.ptr("startingDeadlineSeconds", starting_deadline_seconds);
        o.s("concurrencyPolicy", concurrency_policy);
        o.ptr("suspend", suspend);
        if let Some(batch::JobTemplateSpec { metadata, spec }) = job_template {
            let mut t = Obj::default();
            t.put_if(
                "metadata",
                self.opt(metadata, |m| self.meta("spec.jobTemplate.metadata.", m))?,
            );
            t.put_if(
                "spec",
                self.opt(spec, |s| self.job_spec("spec.jobTemplate.spec.", s))?,
            );
            o.put("jobTemplate", t.into_value());
        }
        o.ptr("successfulJobsHistoryLimit", successful_jobs_history_limit);
        o.ptr("failedJobsHistoryLimit", failed_jobs_history_limit);
        Ok(o.into_value())
    }

    fn cronjob_status(&self, s: batch::CronJobStatus) -> Result<Value> {
        let batch::CronJobStatus {
            active,
            last_schedule_time,
            last_successful_time,
        } = s;
        self.reject_list("status.", "active", &active)?;
        let mut o = Obj::default();
        o.put_if("lastScheduleTime", last_schedule_time.and_then(time));
        o.put_if("lastSuccessfulTime", last_successful_time.and_then(time));
        Ok(o.into_value())
    }

    fn pod_template(&self, path: &str, t: core::PodTemplateSpec) -> Result<Value> {
        let core::PodTemplateSpec { metadata, spec } = t;
        let mut o = Obj::default();
        o.put_if(
            "metadata",
            self.opt(metadata, |m| self.meta(&format!("{path}metadata."), m))?,
        );
        o.put_if(
            "spec",
            self.opt(spec, |s| self.pod_spec(&format!("{path}spec."), s))?,
        );
        Ok(o.into_value())
    }

    fn pod_spec(&self, path: &str, s: core::PodSpec) -> Result<Value> {
        let core::PodSpec {
            volumes,
            init_containers,
            containers,
            ephemeral_containers,
            restart_policy,
            termination_grace_period_seconds,
            active_deadline_seconds,
            dns_policy,
            node_selector,
            service_account_name,
            service_account,
            automount_service_account_token,
            node_name,
            host_network,
            host_pid,
            host_ipc,
            share_process_namespace,
            security_context,
            image_pull_secrets,
            hostname,
            subdomain,
            affinity,
            scheduler_name,
            tolerations,
            host_aliases,
            priority_class_name,
            priority,
            dns_config,
            readiness_gates,
            runtime_class_name,
            enable_service_links,
            preemption_policy,
            overhead,
            topology_spread_constraints,
            set_hostname_as_fqdn,
            os,
            host_users,
            scheduling_gates,
            resource_claims,
            resources,
            hostname_override,
            workload_ref,
        } = s;
        self.reject_list(path, "volumes", &volumes)?;
        self.reject_list(path, "ephemeralContainers", &ephemeral_containers)?;
        self.reject(path, "securityContext", &security_context)?;
        self.reject(path, "affinity", &affinity)?;
        self.reject_list(path, "tolerations", &tolerations)?;
        self.reject_list(path, "hostAliases", &host_aliases)?;
        self.reject(path, "dnsConfig", &dns_config)?;
        self.reject_list(path, "readinessGates", &readiness_gates)?;
        self.reject_list(
            path,
            "topologySpreadConstraints",
            &topology_spread_constraints,
        )?;
        self.reject(path, "os", &os)?;
        self.reject_list(path, "schedulingGates", &scheduling_gates)?;
        self.reject_list(path, "resourceClaims", &resource_claims)?;
        self.reject(path, "resources", &resources)?;
        self.reject(path, "workloadRef", &workload_ref)?;
        let containers_of = |field: &str, list: Vec<core::Container>| -> Result<Vec<Value>> {
            list.into_iter()
                .enumerate()
                .map(|(i, c)| self.container(&format!("{path}{field}[{i}]."), c))
                .collect()
        };
        let mut o = Obj::default();
        o.list(
            "initContainers",
            containers_of("initContainers", init_containers)?,
        );
        // Go's `containers` has no omitempty, but an empty list and null are the same to
        // every reader, and protobuf cannot tell them apart anyway.
        o.list("containers", containers_of("containers", containers)?);
        o.s("restartPolicy", restart_policy);
        o.ptr(
            "terminationGracePeriodSeconds",
            termination_grace_period_seconds,
        );
        o.ptr("activeDeadlineSeconds", active_deadline_seconds);
        o.s("dnsPolicy", dns_policy);
        o.map("nodeSelector", node_selector);
        o.s("serviceAccountName", service_account_name);
        o.s("serviceAccount", service_account);
        o.ptr(
            "automountServiceAccountToken",
            automount_service_account_token,
        );
        o.s("nodeName", node_name);
        o.s("hostNetwork", host_network);
        o.s("hostPID", host_pid);
        o.s("hostIPC", host_ipc);
        o.ptr("shareProcessNamespace", share_process_namespace);
        o.list(
            "imagePullSecrets",
            image_pull_secrets.into_iter().map(local_ref).collect(),
        );
        o.s("hostname", hostname);
        o.s("subdomain", subdomain);
        o.s("schedulerName", scheduler_name);
        o.s("priorityClassName", priority_class_name);
        o.ptr("priority", priority);
        o.ptr("runtimeClassName", runtime_class_name);
        o.ptr("enableServiceLinks", enable_service_links);
        o.ptr("preemptionPolicy", preemption_policy);
        o.map("overhead", quantities(overhead));
        o.ptr("setHostnameAsFQDN", set_hostname_as_fqdn);
        o.ptr("hostUsers", host_users);
        o.ptr("hostnameOverride", hostname_override);
        Ok(o.into_value())
    }

    fn container(&self, path: &str, c: core::Container) -> Result<Value> {
        let core::Container {
            name,
            image,
            command,
            args,
            working_dir,
            ports,
            env_from,
            env,
            resources,
            resize_policy,
            restart_policy,
            restart_policy_rules,
            volume_mounts,
            volume_devices,
            liveness_probe,
            readiness_probe,
            startup_probe,
            lifecycle,
            termination_message_path,
            termination_message_policy,
            image_pull_policy,
            security_context,
            stdin,
            stdin_once,
            tty,
        } = c;
        self.reject_list(path, "envFrom", &env_from)?;
        self.reject_list(path, "resizePolicy", &resize_policy)?;
        self.reject_list(path, "restartPolicyRules", &restart_policy_rules)?;
        self.reject_list(path, "volumeMounts", &volume_mounts)?;
        self.reject_list(path, "volumeDevices", &volume_devices)?;
        self.reject(path, "livenessProbe", &liveness_probe)?;
        self.reject(path, "readinessProbe", &readiness_probe)?;
        self.reject(path, "startupProbe", &startup_probe)?;
        self.reject(path, "lifecycle", &lifecycle)?;
        self.reject(path, "securityContext", &security_context)?;
        let ports = ports
            .into_iter()
            .map(|p| {
                let core::ContainerPort {
                    name,
                    host_port,
                    container_port,
                    protocol,
                    host_ip,
                } = p;
                let mut o = Obj::default();
                o.s("name", name);
                o.s("hostPort", host_port);
                o.always("containerPort", container_port);
                o.s("protocol", protocol);
                o.s("hostIP", host_ip);
                o.into_value()
            })
            .collect();
        let env = env
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let core::EnvVar {
                    name,
                    value,
                    value_from,
                } = e;
                self.reject(&format!("{path}env[{i}]."), "valueFrom", &value_from)?;
                let mut o = Obj::default();
                o.always("name", name);
                o.s("value", value);
                Ok(o.into_value())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut o = Obj::default();
        o.always("name", name);
        o.s("image", image);
        o.strings("command", command);
        o.strings("args", args);
        o.s("workingDir", working_dir);
        o.list("ports", ports);
        o.list("env", env);
        if let Some(core::ResourceRequirements {
            limits,
            requests,
            claims,
        }) = resources
        {
            self.reject_list(&format!("{path}resources."), "claims", &claims)?;
            let mut r = Obj::default();
            r.map("limits", quantities(limits));
            r.map("requests", quantities(requests));
            o.put("resources", r.into_value());
        }
        o.ptr("restartPolicy", restart_policy);
        o.s("terminationMessagePath", termination_message_path);
        o.s("terminationMessagePolicy", termination_message_policy);
        o.s("imagePullPolicy", image_pull_policy);
        o.s("stdin", stdin);
        o.s("stdinOnce", stdin_once);
        o.s("tty", tty);
        Ok(o.into_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURES: &[&str] = &[
        "namespace",
        "namespace-save-config",
        "configmap",
        "configmap-binary",
        "secret",
        "secret-custom",
        "secret-docker-registry",
        "service",
        "service-nodeport",
        "service-headless",
        "service-externalname",
        "service-loadbalancer",
        "serviceaccount",
        "deployment",
        "deployment-multi",
        "deployment-command",
        "job",
        "job-no-command",
        "cronjob",
    ];

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/protobuf/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Go's JSON writes the zero `metav1.Time` as `null`; kith omits it (the body carries no
    /// time either: an empty message), so that is the one difference we remove.
    fn without_null_timestamps(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.get("creationTimestamp") == Some(&Value::Null) {
                    m.remove("creationTimestamp");
                }
                m.values_mut().for_each(without_null_timestamps);
            }
            Value::Array(a) => a.iter_mut().for_each(without_null_timestamps),
            _ => {}
        }
    }

    #[test]
    fn kubectl_bodies_decode_to_the_json_kubectl_would_send() {
        for name in FIXTURES {
            let got =
                decode(&fixture(&format!("{name}.pb"))).unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut want: Value =
                serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
            without_null_timestamps(&mut want);
            assert_eq!(got, want, "{name}");
            // Same field order as Go writes, so logs and stored objects read naturally. With
            // --save-config and labels, kubectl's own printer lists annotations before labels;
            // the body (and Go's struct order) has labels first.
            if *name != "deployment-command" {
                assert_eq!(got.to_string(), want.to_string(), "{name} order");
            }
        }
    }

    #[test]
    fn decoded_objects_pass_the_typed_decoders() {
        for name in FIXTURES {
            let obj = decode(&fixture(&format!("{name}.pb"))).unwrap();
            let kind = crate::kinds::by_kind(
                obj["apiVersion"].as_str().unwrap(),
                obj["kind"].as_str().unwrap(),
            )
            .unwrap_or_else(|| panic!("{name}: kind not served"));
            let decoded = kind
                .typed
                .decode(obj)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(decoded.unknown.is_empty(), "{name}: {:?}", decoded.unknown);
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(u.encode_to_vec());
        body
    }

    fn deployment_with(container: core::Container) -> apps::Deployment {
        apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("d".into()),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        containers: vec![container],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn go_zero_values_follow_the_json_tags() {
        let container = core::Container {
            name: Some(String::new()),
            image: Some(String::new()),
            ports: vec![core::ContainerPort {
                container_port: Some(0),
                host_port: Some(0),
                ..Default::default()
            }],
            stdin: Some(false),
            restart_policy: Some("Always".into()),
            ..Default::default()
        };
        let mut d = deployment_with(container);
        if let Some(spec) = d.spec.as_mut() {
            spec.replicas = Some(0);
            spec.paused = Some(false);
            spec.min_ready_seconds = Some(0);
        }
        if let Some(m) = d.metadata.as_mut() {
            m.generation = Some(0);
            m.creation_timestamp = Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            });
            m.deletion_grace_period_seconds = Some(0);
        }
        let got = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(
            got,
            json!({"kind": "Deployment", "apiVersion": "apps/v1",
                "metadata": {"name": "d", "creationTimestamp": "2023-11-14T22:13:20Z", "deletionGracePeriodSeconds": 0},
                "spec": {"replicas": 0, "template": {"spec": {"containers": [
                    {"name": "", "ports": [{"containerPort": 0}], "restartPolicy": "Always"}]}}}})
        );
    }

    #[test]
    fn int_or_string_and_quantities_keep_their_json_shapes() {
        let container = core::Container {
            name: Some("c".into()),
            resources: Some(core::ResourceRequirements {
                limits: [(
                    "memory".to_string(),
                    Quantity {
                        string: Some("128Mi".into()),
                    },
                )]
                .into(),
                requests: [(
                    "cpu".to_string(),
                    Quantity {
                        string: Some("100m".into()),
                    },
                )]
                .into(),
                claims: vec![],
            }),
            ..Default::default()
        };
        let mut d = deployment_with(container);
        if let Some(spec) = d.spec.as_mut() {
            spec.strategy = Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: Some("25%".into()),
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(2),
                        str_val: Some(String::new()),
                    }),
                }),
            });
        }
        let got = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(
            got["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 2}})
        );
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}})
        );
    }

    #[test]
    fn set_fields_kith_does_not_convert_are_refused_by_path() {
        let probe = core::Container {
            name: Some("c".into()),
            liveness_probe: Some(core::Probe::default()),
            ..Default::default()
        };
        let env = core::Container {
            name: Some("c".into()),
            env: vec![core::EnvVar {
                name: Some("A".into()),
                value: None,
                value_from: Some(core::EnvVarSource::default()),
            }],
            ..Default::default()
        };
        let mut volumes = deployment_with(core::Container::default());
        if let Some(t) = volumes
            .spec
            .as_mut()
            .and_then(|s| s.template.as_mut())
            .and_then(|t| t.spec.as_mut())
        {
            t.volumes = vec![core::Volume::default()];
        }
        let managed = core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                managed_fields: vec![meta::ManagedFieldsEntry::default()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (
                envelope(
                    "apps/v1",
                    "Deployment",
                    deployment_with(probe).encode_to_vec(),
                ),
                "Deployment",
                "spec.template.spec.containers[0].livenessProbe",
            ),
            (
                envelope(
                    "apps/v1",
                    "Deployment",
                    deployment_with(env).encode_to_vec(),
                ),
                "Deployment",
                "spec.template.spec.containers[0].env[0].valueFrom",
            ),
            (
                envelope("apps/v1", "Deployment", volumes.encode_to_vec()),
                "Deployment",
                "spec.template.spec.volumes",
            ),
            (
                envelope("v1", "ConfigMap", managed.encode_to_vec()),
                "ConfigMap",
                "metadata.managedFields",
            ),
        ];
        for (body, kind, field) in cases {
            let err = decode(&body).unwrap_err();
            assert_eq!(
                err,
                ProtobufError::Unsupported {
                    kind: kind.into(),
                    field: field.into()
                }
            );
            let status = err.clone().into_api().status();
            assert_eq!(status["code"], 415, "{field}");
            assert!(
                status["message"].as_str().unwrap().contains(&format!(
                    "protobuf field {field} of {kind} is not supported by kith; send JSON"
                )),
                "{status}"
            );
        }
    }

    #[test]
    fn malformed_and_unknown_bodies_are_errors_not_panics() {
        let deployment = fixture("deployment.pb");
        let gzip = {
            let mut u = Unknown::decode(&deployment[4..]).unwrap();
            u.content_encoding = Some("gzip".into());
            let mut b = MAGIC.to_vec();
            b.extend(u.encode_to_vec());
            b
        };
        let cases: Vec<(&str, Vec<u8>, ProtobufError, u16)> = vec![
            ("empty", vec![], ProtobufError::BadMagic, 400),
            (
                "json",
                br#"{"kind":"Namespace"}"#.to_vec(),
                ProtobufError::BadMagic,
                400,
            ),
            (
                "wrong magic",
                b"k8s\x01\x0a\x00".to_vec(),
                ProtobufError::BadMagic,
                400,
            ),
            (
                "pod",
                envelope("v1", "Pod", vec![]),
                ProtobufError::UnsupportedKind {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                },
                415,
            ),
            (
                "deployment in the wrong group",
                envelope("apps/v1beta1", "Deployment", vec![]),
                ProtobufError::UnsupportedKind {
                    api_version: "apps/v1beta1".into(),
                    kind: "Deployment".into(),
                },
                415,
            ),
            (
                "gzip",
                gzip,
                ProtobufError::Unsupported {
                    kind: "Deployment".into(),
                    field: "contentEncoding".into(),
                },
                415,
            ),
        ];
        for (name, body, want, code) in cases {
            let err = decode(&body).unwrap_err();
            assert_eq!(err, want, "{name}");
            assert_eq!(err.into_api().code(), code, "{name}");
        }
        // Cut inside the envelope or the object: never a panic, and cutting the last byte
        // (inside `raw`) is always caught.
        for len in 0..deployment.len() {
            let _ = decode(&deployment[..len]);
        }
        let err = decode(&deployment[..deployment.len() - 1]).unwrap_err();
        assert!(matches!(err, ProtobufError::Malformed(_)), "{err:?}");
        assert_eq!(err.into_api().code(), 400);
        // A valid envelope around garbage.
        let err = decode(&envelope("v1", "Namespace", vec![0x0a, 0xff, 0xff])).unwrap_err();
        assert!(matches!(err, ProtobufError::Malformed(_)), "{err:?}");
    }
}
