//! How each field of a built-in kind merges: the `x-kubernetes-patch-strategy`,
//! `x-kubernetes-patch-merge-key` and `x-kubernetes-list-type` markers kube-apiserver
//! publishes, which k8s-openapi's schemas do not carry.
//!
//! The markers live in a small static table keyed by (schema definition, field), taken from
//! the `patchStrategy`/`patchMergeKey` tags and `+listType`/`+listMapKey`/`+structType`
//! comments of `k8s.io/api` and `k8s.io/apimachinery`. A [`Node`] walks a kind's schemars
//! schema alongside the JSON, following `$ref`s, so the walker always knows which
//! definition (and therefore which table row) a field belongs to.
//!
//! ```text
//!   Kind ──schema()──▶ SchemaGenerator definitions ──▶ Node(def, schema)
//!                                                      │ field("containers")
//!                                                      ▼
//!                       MARKERS[(io.k8s.api.core.v1.PodSpec, containers)] = merge by name
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use schemars::SchemaGenerator;
use serde_json::{Map, Value};

use crate::kinds::Kind;

/// How server-side apply identifies the items of a list (`x-kubernetes-list-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListType {
    /// The list is one value, owned and replaced as a whole (the default for unmarked lists).
    Atomic,
    /// A list of distinct scalars, each owned separately (`v:<value>`).
    Set,
    /// Items identified by these key fields (`k:{...}`); the second element is the
    /// default the API server fills in when the key field is absent (e.g. `protocol: TCP`).
    Map(&'static [(&'static str, Option<&'static str>)]),
}

/// The merge markers of one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Markers {
    /// `x-kubernetes-patch-strategy` contains `merge`: strategic merge patch merges the list
    /// instead of replacing it.
    pub merge: bool,
    /// `x-kubernetes-patch-strategy` contains `retainKeys`.
    pub retain_keys: bool,
    /// `x-kubernetes-patch-merge-key`, for merged lists of objects.
    pub merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type` (with `x-kubernetes-list-map-keys`).
    pub list: ListType,
}

impl Markers {
    /// What an unmarked field gets: lists replaced by strategic merge patch, atomic for apply.
    pub const NONE: Markers = Markers {
        merge: false,
        retain_keys: false,
        merge_key: None,
        list: ListType::Atomic,
    };
}

const fn keyed(
    key: &'static str,
    keys: &'static [(&'static str, Option<&'static str>)],
) -> Markers {
    Markers {
        merge: true,
        retain_keys: false,
        merge_key: Some(key),
        list: ListType::Map(keys),
    }
}

const fn keyed_retain(
    key: &'static str,
    keys: &'static [(&'static str, Option<&'static str>)],
) -> Markers {
    Markers {
        merge: true,
        retain_keys: true,
        merge_key: Some(key),
        list: ListType::Map(keys),
    }
}

const fn list(list: ListType) -> Markers {
    Markers {
        merge: false,
        retain_keys: false,
        merge_key: None,
        list,
    }
}

const NAME: &[(&str, Option<&str>)] = &[("name", None)];
const TYPE: &[(&str, Option<&str>)] = &[("type", None)];
const IP: &[(&str, Option<&str>)] = &[("ip", None)];
const MOUNT_PATH: &[(&str, Option<&str>)] = &[("mountPath", None)];
const DEVICE_PATH: &[(&str, Option<&str>)] = &[("devicePath", None)];
const CONTAINER_PORT: &[(&str, Option<&str>)] =
    &[("containerPort", None), ("protocol", Some("TCP"))];
const SERVICE_PORT: &[(&str, Option<&str>)] = &[("port", None), ("protocol", Some("TCP"))];
const TOPOLOGY: &[(&str, Option<&str>)] = &[("topologyKey", None), ("whenUnsatisfiable", None)];

/// A primitive list merged as a set (`finalizers`, `podCIDRs`).
const MERGE_SET: Markers = Markers {
    merge: true,
    retain_keys: false,
    merge_key: None,
    list: ListType::Set,
};
/// Conditions of workload status: merged by `type` in patches, but `+listType=atomic` for apply.
const MERGE_BY_TYPE_ATOMIC: Markers = Markers {
    merge: true,
    retain_keys: false,
    merge_key: Some("type"),
    list: ListType::Atomic,
};

/// (definition, field) → markers, as in Kubernetes v1.33. Unlisted fields get [`Markers::NONE`].
static MARKERS: &[(&str, &str, Markers)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        MERGE_SET,
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        keyed("uid", &[("uid", None)]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        keyed_retain("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        keyed("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        keyed("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        keyed("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        keyed("name", NAME),
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", keyed("ip", IP)),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        keyed("topologyKey", TOPOLOGY),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        keyed("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        keyed_retain("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        keyed("containerPort", CONTAINER_PORT),
    ),
    ("io.k8s.api.core.v1.Container", "env", keyed("name", NAME)),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        keyed("mountPath", MOUNT_PATH),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        keyed("devicePath", DEVICE_PATH),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        keyed("containerPort", CONTAINER_PORT),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        keyed("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        keyed("mountPath", MOUNT_PATH),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        keyed("devicePath", DEVICE_PATH),
    ),
    (
        "io.k8s.api.core.v1.ResourceRequirements",
        "claims",
        list(ListType::Map(NAME)),
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "volumeMounts",
        keyed("mountPath", MOUNT_PATH),
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "allocatedResourcesStatus",
        keyed("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        Markers {
            list: ListType::Atomic,
            ..keyed("ip", IP)
        },
    ),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", keyed("ip", IP)),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        keyed_retain("name", NAME),
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        keyed("port", SERVICE_PORT),
    ),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        keyed("name", NAME),
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", MERGE_SET),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        Markers {
            retain_keys: true,
            ..Markers::NONE
        },
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        keyed("type", TYPE),
    ),
    (
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        MERGE_BY_TYPE_ATOMIC,
    ),
    (
        "io.k8s.api.batch.v1.UncountedTerminatedPods",
        "succeeded",
        list(ListType::Set),
    ),
    (
        "io.k8s.api.batch.v1.UncountedTerminatedPods",
        "failed",
        list(ListType::Set),
    ),
    (
        "io.k8s.api.batch.v1.PodFailurePolicyOnExitCodesRequirement",
        "values",
        list(ListType::Set),
    ),
    (
        "io.k8s.api.discovery.v1.Endpoint",
        "addresses",
        list(ListType::Set),
    ),
];

/// Structs marked `+structType=atomic`: applied and owned as one value.
static ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.SecretReference",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.TopologySelectorTerm",
    "io.k8s.api.core.v1.ScopeSelector",
    "io.k8s.api.core.v1.EndpointAddress",
    "io.k8s.api.core.v1.EndpointPort",
    "io.k8s.api.discovery.v1.EndpointPort",
];

fn markers_for(def: &str, field: &str) -> Markers {
    MARKERS
        .iter()
        .find(|(d, f, _)| *d == def && *f == field)
        .map(|(_, _, m)| *m)
        .unwrap_or(Markers::NONE)
}

/// The schema definitions of one kind, generated once and cached.
#[derive(Debug)]
pub(crate) struct Schemas {
    defs: Map<String, Value>,
    root: Value,
}

fn cache() -> &'static RwLock<HashMap<String, Arc<Schemas>>> {
    static CACHE: OnceLock<RwLock<HashMap<String, Arc<Schemas>>>> = OnceLock::new();
    CACHE.get_or_init(|| RwLock::new(HashMap::new()))
}

/// The schemas of `kind`, generated on first use: generating the Pod tree takes a while and
/// patches are frequent.
pub(crate) fn schemas(kind: &Kind) -> Arc<Schemas> {
    let name = kind.typed.schema_name();
    {
        let read = cache().read().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = read.get(&name) {
            return Arc::clone(s);
        }
    }
    let mut gen = SchemaGenerator::default();
    let root = kind.typed.schema(&mut gen).to_value();
    let schemas = Arc::new(Schemas {
        defs: gen.definitions().clone(),
        root,
    });
    let mut write = cache().write().unwrap_or_else(|e| e.into_inner());
    Arc::clone(write.entry(name).or_insert(schemas))
}

impl Schemas {
    /// The node for the kind's top-level object.
    pub(crate) fn root(&self) -> Node<'_> {
        Node::resolve(self, Some(&self.root))
    }
}

/// A position in a kind's schema: the definition it is (for marker lookups) and its schema.
/// Unknown positions (fields the schema does not describe) have neither and merge with the
/// defaults, which is what kube-apiserver does for fields it has no tags for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node<'a> {
    schemas: Option<&'a Schemas>,
    def: Option<&'a str>,
    schema: Option<&'a Value>,
}

impl<'a> Node<'a> {
    /// A node with no schema: everything merges with the defaults.
    pub(crate) const UNKNOWN: Node<'static> = Node {
        schemas: None,
        def: None,
        schema: None,
    };

    fn resolve(schemas: &'a Schemas, mut schema: Option<&'a Value>) -> Node<'a> {
        let mut def = None;
        // A bounded loop: a `$ref` to a `$ref` is legal, a cycle of them would be a bug.
        for _ in 0..8 {
            let Some(name) = schema
                .and_then(|s| s.get("$ref"))
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
            else {
                break;
            };
            def = schemas.defs.get_key_value(name).map(|(k, _)| k.as_str());
            schema = schemas.defs.get(name);
        }
        Node {
            schemas: Some(schemas),
            def,
            schema,
        }
    }

    /// The definition name, e.g. `io.k8s.api.core.v1.PodSpec`.
    pub(crate) fn def(&self) -> Option<&'a str> {
        self.def
    }

    /// The schema node of object field `key` and that field's markers.
    pub(crate) fn field(&self, key: &str) -> (Node<'a>, Markers) {
        let (Some(schemas), Some(schema)) = (self.schemas, self.schema) else {
            return (Node::UNKNOWN, Markers::NONE);
        };
        let markers = self
            .def
            .map(|d| markers_for(d, key))
            .unwrap_or(Markers::NONE);
        let child = schema
            .get("properties")
            .and_then(|p| p.get(key))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
        match child {
            Some(c) => (Node::resolve(schemas, Some(c)), markers),
            None => (Node::UNKNOWN, markers),
        }
    }

    /// The schema node of this list's items.
    pub(crate) fn items(&self) -> Node<'a> {
        match (self.schemas, self.schema.and_then(|s| s.get("items"))) {
            (Some(schemas), Some(items)) => Node::resolve(schemas, Some(items)),
            _ => Node::UNKNOWN,
        }
    }

    /// Whether this node is a struct with named fields (as opposed to a string-keyed map such
    /// as `labels`, whose entries apply tracks individually even when they hold objects).
    pub(crate) fn is_struct(&self) -> bool {
        self.schema.and_then(|s| s.get("properties")).is_some()
    }

    /// Whether the struct is `+structType=atomic` (or a map marked atomic).
    pub(crate) fn is_atomic(&self) -> bool {
        self.def.is_some_and(|d| ATOMIC_STRUCTS.contains(&d))
    }
}

/// Put the merge markers on the schemas of an OpenAPI document, as kube-apiserver
/// publishes them: kubectl reads them (OpenAPI v3) to build strategic merge patches, and
/// without them it treats every list as atomic and re-sends whole lists on each apply.
pub fn annotate_openapi(schemas: &mut Map<String, Value>) {
    for (def, field, m) in MARKERS {
        let Some(prop) = schemas
            .get_mut(*def)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let strategy: Vec<&str> = [(m.merge, "merge"), (m.retain_keys, "retainKeys")]
            .into_iter()
            .filter_map(|(on, s)| on.then_some(s))
            .collect();
        if !strategy.is_empty() {
            prop.insert(
                "x-kubernetes-patch-strategy".into(),
                Value::from(strategy.join(",")),
            );
        }
        if let Some(key) = m.merge_key {
            prop.insert("x-kubernetes-patch-merge-key".into(), Value::from(key));
        }
        match m.list {
            ListType::Set => {
                prop.insert("x-kubernetes-list-type".into(), Value::from("set"));
            }
            ListType::Map(keys) => {
                prop.insert("x-kubernetes-list-type".into(), Value::from("map"));
                let keys: Vec<Value> = keys.iter().map(|(k, _)| Value::from(*k)).collect();
                prop.insert("x-kubernetes-list-map-keys".into(), Value::Array(keys));
            }
            ListType::Atomic => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;

    #[test]
    fn walks_from_deployment_to_container_env() {
        let kind = by_kind("apps/v1", "Deployment").expect("deployment kind");
        let s = schemas(kind);
        let root = s.root();
        assert_eq!(root.def(), Some("io.k8s.api.apps.v1.Deployment"));
        let (spec, _) = root.field("spec");
        let (template, _) = spec.field("template");
        let (pod_spec, _) = template.field("spec");
        assert_eq!(pod_spec.def(), Some("io.k8s.api.core.v1.PodSpec"));
        let (containers, m) = pod_spec.field("containers");
        assert_eq!(m.merge_key, Some("name"));
        assert!(m.merge);
        let container = containers.items();
        assert_eq!(container.def(), Some("io.k8s.api.core.v1.Container"));
        let (_, env) = container.field("env");
        assert_eq!(env.merge_key, Some("name"));
        let (_, args) = container.field("args");
        assert_eq!(args, Markers::NONE);
        let (_, strategy) = spec.field("strategy");
        assert!(strategy.retain_keys && !strategy.merge);
    }

    #[test]
    fn every_table_row_names_a_real_field_of_some_kind() {
        // A typo in the table would silently fall back to "replace"; catch it here.
        let mut known: HashMap<String, Value> = HashMap::new();
        for kind in crate::kinds::KINDS {
            let s = schemas(kind);
            for (k, v) in &s.defs {
                known.insert(k.clone(), v.clone());
            }
        }
        for (def, field, _) in MARKERS {
            let schema = known
                .get(*def)
                .unwrap_or_else(|| panic!("no definition {def}"));
            assert!(
                schema["properties"].get(*field).is_some(),
                "{def} has no field {field}"
            );
        }
    }

    #[test]
    fn labels_are_a_map_and_selectors_atomic() {
        let kind = by_kind("apps/v1", "Deployment").expect("deployment kind");
        let s = schemas(kind);
        let (meta, _) = s.root().field("metadata");
        assert!(meta.is_struct());
        let (labels, _) = meta.field("labels");
        assert!(!labels.is_struct());
        let (spec, _) = s.root().field("spec");
        let (selector, _) = spec.field("selector");
        assert!(selector.is_atomic());
    }
}
