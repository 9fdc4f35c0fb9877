//! The registry of resource kinds kith serves. Each kind is described once, here; the REST
//! layer, discovery, OpenAPI, Tables and selectors all read these descriptions, so adding
//! a kind is one entry, not a new handler.

use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::store::Resource;

/// Subresources a kind supports beyond the object itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: the only way to change `.status`; the main resource ignores status changes.
    Status,
    /// `/scale`: autoscaling/v1 Scale over `spec.replicas`.
    Scale,
    /// `pods/binding`: assigns `spec.nodeName` once.
    Binding,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
        }
    }
}

/// A JSON object decoded through its typed form.
#[derive(Debug)]
pub struct Decoded {
    /// The object as the typed form serializes it: unknown fields dropped.
    pub object: Value,
    /// Paths of fields the type does not know, e.g. `spec.replica` (for fieldValidation).
    pub unknown: Vec<String>,
}

/// What a kind's Rust type (from k8s-openapi) can do for the generic layer.
pub trait TypedKind: Send + Sync {
    /// Decode through the typed form: type errors fail, unknown fields are reported.
    fn decode(&self, object: Value) -> Result<Decoded, String>;
    /// Add the type's schema (and everything it references) to `gen`; returns a `$ref`.
    fn schema(&self, gen: &mut SchemaGenerator) -> Schema;
    /// The schema's definition name, e.g. `io.k8s.api.core.v1.Pod`.
    fn schema_name(&self) -> String;
}

struct Typed<T>(PhantomData<fn() -> T>);

impl<T> Typed<T> {
    const NEW: Self = Typed(PhantomData);
}

impl<T: DeserializeOwned + Serialize + JsonSchema> TypedKind for Typed<T> {
    fn decode(&self, object: Value) -> Result<Decoded, String> {
        let mut unknown = Vec::new();
        let typed: T = serde_ignored::deserialize(object, |path| unknown.push(json_path(&path)))
            .map_err(|e| e.to_string())?;
        let object = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        Ok(Decoded { object, unknown })
    }

    fn schema(&self, gen: &mut SchemaGenerator) -> Schema {
        gen.subschema_for::<T>()
    }

    fn schema_name(&self) -> String {
        T::schema_name().into_owned()
    }
}

/// `spec.containers[0].imagePullPolicy`-style path, as kube-apiserver writes unknown fields.
fn json_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", json_path(parent)),
        Path::Map { parent, key } => {
            let p = json_path(parent);
            if p.is_empty() {
                key.to_string()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => json_path(parent),
    }
}

/// One resource kind.
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Field selector keys beyond `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
    pub typed: &'static dyn TypedKind,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kind({}/{} {})", self.group, self.version, self.kind)
    }
}

/// Kinds are static and unique: identity is equality.
impl PartialEq for Kind {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn resource(&self) -> Resource {
        Resource::new(self.group, self.plural)
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// Whether a write to the object itself should bump `metadata.generation` and ignore
    /// `.status` (kinds with a spec and a status subresource).
    pub fn has_status(&self) -> bool {
        self.has(Subresource::Status)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `field` can be used in a field selector on this kind.
    pub fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || self.field_selectors.contains(&field)
    }
}

use k8s_openapi::api::{apps, batch, coordination, core, discovery, events};

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const ALL: &[&str] = &["all"];
use Subresource::{Binding, Scale, Status};

/// Every kind kith serves, in discovery order.
pub static KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &[Status],
        field_selectors: &["status.phase"],
        typed: &Typed::<core::v1::Namespace>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: ALL,
        subresources: &[Status, Binding],
        field_selectors: POD_FIELDS,
        typed: &Typed::<core::v1::Pod>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &[Status],
        field_selectors: &["spec.unschedulable"],
        typed: &Typed::<core::v1::Node>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: ALL,
        subresources: &[Status],
        field_selectors: &["spec.clusterIP", "spec.type"],
        typed: &Typed::<core::v1::Service>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        typed: &Typed::<core::v1::Endpoints>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        typed: &Typed::<core::v1::ConfigMap>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &["type"],
        typed: &Typed::<core::v1::Secret>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        field_selectors: EVENT_FIELDS,
        typed: &Typed::<core::v1::Event>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        typed: &Typed::<core::v1::ServiceAccount>::NEW,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: &[],
        subresources: &[Status],
        field_selectors: &[],
        typed: &Typed::<core::v1::PersistentVolumeClaim>::NEW,
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: ALL,
        subresources: &[Status, Scale],
        field_selectors: &[],
        typed: &Typed::<apps::v1::Deployment>::NEW,
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: ALL,
        subresources: &[Status, Scale],
        field_selectors: &[],
        typed: &Typed::<apps::v1::ReplicaSet>::NEW,
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        categories: ALL,
        subresources: &[Status],
        field_selectors: &[],
        typed: &Typed::<apps::v1::DaemonSet>::NEW,
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        namespaced: true,
        short_names: &["sts"],
        categories: ALL,
        subresources: &[Status, Scale],
        field_selectors: &[],
        typed: &Typed::<apps::v1::StatefulSet>::NEW,
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        typed: &Typed::<apps::v1::ControllerRevision>::NEW,
    },
    Kind {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        namespaced: true,
        short_names: &[],
        categories: ALL,
        subresources: &[Status],
        field_selectors: &["status.successful"],
        typed: &Typed::<batch::v1::Job>::NEW,
    },
    Kind {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        namespaced: true,
        short_names: &["cj"],
        categories: ALL,
        subresources: &[Status],
        field_selectors: &[],
        typed: &Typed::<batch::v1::CronJob>::NEW,
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        typed: &Typed::<coordination::v1::Lease>::NEW,
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        field_selectors: &[
            "reason",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
        ],
        typed: &Typed::<events::v1::Event>::NEW,
    },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
        typed: &Typed::<discovery::v1::EndpointSlice>::NEW,
    },
];

/// Look up a kind by group, version and plural (or singular) resource name.
pub fn by_resource(group: &str, version: &str, resource: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && (k.plural == resource))
}

/// Look up a kind by apiVersion and kind, as written in an object.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.api_version() == api_version && k.kind == kind)
}

/// The (group, version) pairs served, in discovery order, core first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in KINDS {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_is_found_by_resource_and_by_kind() {
        for k in KINDS {
            assert!(std::ptr::eq(
                by_resource(k.group, k.version, k.plural).unwrap(),
                k
            ));
            assert!(
                std::ptr::eq(by_kind(&k.api_version(), k.kind).unwrap(), k),
                "{k:?}"
            );
        }
        assert!(by_resource("apps", "v1", "pods").is_none());
    }

    #[test]
    fn schema_names_are_the_kubernetes_definition_names() {
        assert_eq!(
            by_kind("v1", "Pod").unwrap().typed.schema_name(),
            "io.k8s.api.core.v1.Pod"
        );
        assert_eq!(
            by_kind("apps/v1", "Deployment")
                .unwrap()
                .typed
                .schema_name(),
            "io.k8s.api.apps.v1.Deployment"
        );
    }

    #[test]
    fn decode_reports_unknown_fields_with_their_paths() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]}, "extra": true});
        let d = by_kind("v1", "Pod").unwrap().typed.decode(pod).unwrap();
        let mut u = d.unknown.clone();
        u.sort();
        assert_eq!(
            u,
            [
                "extra",
                "metadata.bogus",
                "spec.containers[0].imagePullPolicyy"
            ]
        );
        assert!(
            d.object.get("extra").is_none(),
            "unknown fields are dropped"
        );
        assert_eq!(d.object["spec"]["containers"][0]["image"], "i");
    }

    #[test]
    fn decode_rejects_wrong_types() {
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let err = by_kind("apps/v1", "Deployment")
            .unwrap()
            .typed
            .decode(bad)
            .unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }
}
