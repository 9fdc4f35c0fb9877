//! `/openapi/v3`: the index of group-versions and one OpenAPI 3.0 document per
//! group-version, generated from the kinds registry and k8s-openapi's schemas.
//!
//! ```text
//!  GET /openapi/v3            ──▶ index()   {"paths": {"apis/apps/v1": {"serverRelativeURL": "...?hash=H"}}}
//!  GET /openapi/v3/apis/apps/v1 ──▶ group_version_json("apps", "v1")   (paths + components.schemas)
//! ```
//!
//! Two clients depend on these documents. `kubectl apply --validate=strict` looks for a
//! `patch` operation tagged with the object's group-version-kind that takes a
//! `fieldValidation` parameter; finding it, kubectl leaves validation to the server.
//! `kubectl explain` finds a kind's schema by its `x-kubernetes-group-version-kind`
//! and walks `$ref`s through `components.schemas`, so every referenced schema is included.
//!
//! Schemas never change while kith runs, so every document is built once, on first use.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::sync::OnceLock;

use k8s_openapi::api::{autoscaling, core};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::kinds::{group_versions, Kind, Subresource, KINDS};

/// One group-version's document, built once.
struct Document {
    group: &'static str,
    version: &'static str,
    value: Value,
    json: Vec<u8>,
    hash: String,
}

fn documents() -> &'static [Document] {
    static DOCS: OnceLock<Vec<Document>> = OnceLock::new();
    DOCS.get_or_init(|| {
        group_versions()
            .into_iter()
            .map(|(group, version)| {
                let value = build_document(group, version);
                // Serializing a serde_json::Value cannot fail: keys are strings.
                let json = serde_json::to_vec(&value).unwrap_or_default();
                let hash = content_hash(&json);
                Document {
                    group,
                    version,
                    value,
                    json,
                    hash,
                }
            })
            .collect()
    })
}

fn find(group: &str, version: &str) -> Option<&'static Document> {
    documents()
        .iter()
        .find(|d| d.group == group && d.version == version)
}

/// `GET /openapi/v3`: every served group-version and the URL of its document. The URL
/// carries a hash of the document so clients may cache it for as long as it matches.
pub fn index() -> Value {
    let mut paths = Map::new();
    for doc in documents() {
        let path = gv_path(doc.group, doc.version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}),
        );
    }
    json!({"paths": paths})
}

/// The OpenAPI document of one group-version (core is group `""`), or `None` if not served.
/// Content-Type of a protobuf OpenAPI v2 document (gnostic `openapi_v2.Document`).
/// (kube-openapi replies with a dot where clients ask with `@`, which Go cannot parse.)
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The `/openapi/v2` document. kith publishes its schemas as OpenAPI v3 only; the v2
/// document declares the API with no definitions, which is what kubectl consults when a
/// manifest names a kind the v3 documents do not have (so it reports the kind as unknown).
pub fn v2_document(protobuf: bool) -> Vec<u8> {
    let version = crate::discovery::version()["gitVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !protobuf {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": version}, "paths": {}});
        return serde_json::to_vec(&doc).unwrap_or_default();
    }
    // Protobuf by hand: three fields of gnostic's Document (1 swagger, 2 info{1 title,
    // 2 version}, 8 paths) — not worth a code generator.
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push((number << 3) | 2);
        let mut len = bytes.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    field(&mut doc, 8, &[]);
    doc
}

pub fn group_version_doc(group: &str, version: &str) -> Option<&'static Value> {
    find(group, version).map(|d| &d.value)
}

/// The same document, already serialized: what the HTTP layer sends as the body.
pub fn group_version_json(group: &str, version: &str) -> Option<&'static [u8]> {
    find(group, version).map(|d| d.json.as_slice())
}

/// The document for a path below `/openapi/v3/`, as listed in [`index`]
/// (`api/v1`, `apis/apps/v1`); any `?hash=` query must be stripped first.
pub fn document_for_path(path: &str) -> Option<&'static [u8]> {
    let path = path.trim_matches('/');
    documents()
        .iter()
        .find(|d| gv_path(d.group, d.version) == path)
        .map(|d| d.json.as_slice())
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable hash of a document's bytes, upper-case hex like kube-apiserver's. Stability
/// only matters for client caches: a different hash after an upgrade costs one refetch.
fn content_hash(bytes: &[u8]) -> String {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    format!("{:016X}", h.finish())
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn build_document(group: &str, version: &str) -> Value {
    let kinds: Vec<&Kind> = KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    let mut gen = SchemaSettings::openapi3()
        .with(|s| {
            s.meta_schema = None;
        })
        .into_generator();

    // Shared types every document's operations refer to.
    gen.subschema_for::<meta::Status>();
    gen.subschema_for::<meta::DeleteOptions>();
    gen.subschema_for::<meta::Patch>();
    gen.subschema_for::<meta::ListMeta>();
    let mut extra_kinds: Vec<(String, Value)> = Vec::new();
    if kinds.iter().any(|k| k.has(Subresource::Scale)) {
        extra_kinds.push((
            schema_name::<autoscaling::v1::Scale>(&mut gen),
            gvk("autoscaling", "v1", "Scale"),
        ));
    }
    if kinds.iter().any(|k| k.has(Subresource::Binding)) {
        extra_kinds.push((
            schema_name::<core::v1::Binding>(&mut gen),
            gvk("", "v1", "Binding"),
        ));
    }
    for kind in &kinds {
        kind.typed.schema(&mut gen);
    }
    let mut schemas = gen.take_definitions(true);
    crate::patch::annotate_openapi(&mut schemas);

    for kind in &kinds {
        let name = kind.typed.schema_name();
        if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(kind.group, kind.version, kind.kind)]),
            );
        }
        let list_name = format!("{name}List");
        schemas.insert(list_name, list_schema(kind, &name));
    }
    for (name, gvk) in extra_kinds {
        if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
    }

    let mut paths = Map::new();
    for kind in &kinds {
        add_paths(&mut paths, kind);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::version()["gitVersion"].clone()},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Registers `T` with the generator and returns its definition name.
fn schema_name<T: JsonSchema>(gen: &mut SchemaGenerator) -> String {
    gen.subschema_for::<T>();
    T::schema_name().into_owned()
}

/// `<Kind>List`: k8s-openapi's `List<T>` is generic, so its schema is written here in the
/// shape kube-apiserver publishes.
fn list_schema(kind: &Kind, item_schema: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {}.", kind.kind, kind.kind),
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "items": {"type": "array", "description": format!("List of {}.", kind.plural), "items": schema_ref(item_schema)},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {"allOf": [schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")], "description": "Standard list metadata."},
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": [gvk(kind.group, kind.version, &kind.list_kind())],
    })
}

/// Query parameters, by name, as kube-apiserver documents them.
fn param(name: &str) -> Value {
    let (ty, description) = match name {
        "pretty" => ("string", "If 'true', then the output is pretty printed."),
        "dryRun" => ("string", "When present, indicates that modifications should not be persisted. Valid value: All"),
        "fieldManager" => ("string", "fieldManager is a name associated with the actor or entity that is making these changes."),
        "fieldValidation" => (
            "string",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
        "force" => ("boolean", "Force is going to \"force\" Apply requests: re-acquire fields owned by other managers."),
        "allowWatchBookmarks" => ("boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
        "continue" => ("string", "The continue option should be set when retrieving more results from the server."),
        "fieldSelector" => ("string", "A selector to restrict the list of returned objects by their fields."),
        "labelSelector" => ("string", "A selector to restrict the list of returned objects by their labels."),
        "limit" => ("integer", "limit is a maximum number of responses to return for a list call."),
        "resourceVersion" => ("string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
        "resourceVersionMatch" => ("string", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
        "sendInitialEvents" => ("boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
        "timeoutSeconds" => ("integer", "Timeout for the list/watch call."),
        "watch" => ("boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
        "gracePeriodSeconds" => ("integer", "The duration in seconds before the object should be deleted."),
        "propagationPolicy" => ("string", "Whether and how garbage collection will be performed: Orphan, Background or Foreground."),
        _ => ("string", ""),
    };
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "description": description, "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn params(names: &[&str]) -> Vec<Value> {
    names.iter().map(|n| param(n)).collect()
}

const LIST_PARAMS: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];
const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
const PATCH_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
const DELETE_PARAMS: &[&str] = &["dryRun", "gracePeriodSeconds", "propagationPolicy"];

/// The content types a PATCH body may have; the first is server-side apply.
pub const PATCH_CONTENT_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

fn json_response(schema: &str, code: &str) -> Value {
    json!({code: {"description": if code == "201" { "Created" } else { "OK" },
        "content": {"application/json": {"schema": schema_ref(schema)}, "application/yaml": {"schema": schema_ref(schema)}}},
        "401": {"description": "Unauthorized"}})
}

fn body(schema: &str) -> Value {
    json!({"content": {"*/*": {"schema": schema_ref(schema)}}, "required": true})
}

/// What one REST path serves: names for operation ids and the schemas it reads and writes.
struct Target<'a> {
    kind: &'a Kind,
    /// `Namespaced` or `""`, as in operation ids.
    scope: &'static str,
    /// `Status`, `Scale`, `Binding` or `""`.
    suffix: &'static str,
    /// The kind the operations answer with (and that GVK tags name).
    gvk: Value,
    schema: String,
}

impl Target<'_> {
    fn op(&self, action: &str, k8s_action: &str, extra: Map<String, Value>) -> Value {
        let kind = self.kind;
        let mut op = Map::new();
        op.insert("tags".into(), json!([tag(kind)]));
        op.insert(
            "description".into(),
            json!(format!("{k8s_action} {} {}", kind.kind, self.suffix)
                .trim_end()
                .to_string()),
        );
        op.insert(
            "operationId".into(),
            json!(format!(
                "{action}{}{}{}{}",
                gv_camel(kind),
                self.scope,
                kind.kind,
                self.suffix
            )),
        );
        op.extend(extra);
        op.insert("x-kubernetes-action".into(), json!(k8s_action));
        op.insert("x-kubernetes-group-version-kind".into(), self.gvk.clone());
        Value::Object(op)
    }

    fn read(&self) -> Value {
        self.op(
            "read",
            "get",
            fields([("responses", json_response(&self.schema, "200"))]),
        )
    }

    fn replace(&self) -> Value {
        self.op(
            "replace",
            "put",
            fields([
                ("parameters", json!(params(WRITE_PARAMS))),
                ("requestBody", body(&self.schema)),
                ("responses", json_response(&self.schema, "200")),
            ]),
        )
    }

    fn patch(&self) -> Value {
        let mut content = Map::new();
        for ct in PATCH_CONTENT_TYPES {
            content.insert(
                (*ct).into(),
                json!({"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")}),
            );
        }
        self.op(
            "patch",
            "patch",
            fields([
                ("parameters", json!(params(PATCH_PARAMS))),
                ("requestBody", json!({"content": content, "required": true})),
                ("responses", json_response(&self.schema, "200")),
            ]),
        )
    }
}

fn fields<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn tag(kind: &Kind) -> String {
    let group = if kind.group.is_empty() {
        "core"
    } else {
        kind.group.split('.').next().unwrap_or(kind.group)
    };
    format!("{group}_{}", kind.version)
}

/// `CoreV1`, `AppsV1`, `CoordinationV1`: the group-version part of operation ids.
fn gv_camel(kind: &Kind) -> String {
    let group = if kind.group.is_empty() {
        "core"
    } else {
        kind.group.split('.').next().unwrap_or(kind.group)
    };
    format!("{}{}", capitalize(group), capitalize(kind.version))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn add_paths(paths: &mut Map<String, Value>, kind: &Kind) {
    let prefix = format!("/{}", gv_path(kind.group, kind.version));
    let schema = kind.typed.schema_name();
    let list_schema = format!("{schema}List");
    let (collection, scope, mut scope_params) = if kind.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", kind.plural),
            "Namespaced",
            vec![path_param(
                "namespace",
                "object name and auth scope, such as for teams and projects",
            )],
        )
    } else {
        (format!("{prefix}/{}", kind.plural), "", vec![])
    };
    scope_params.push(param("pretty"));
    let main = Target {
        kind,
        scope,
        suffix: "",
        gvk: gvk(kind.group, kind.version, kind.kind),
        schema: schema.clone(),
    };

    let list = main.op(
        "list",
        "list",
        fields([
            ("parameters", json!(params(LIST_PARAMS))),
            ("responses", json_response(&list_schema, "200")),
        ]),
    );
    let create = main.op(
        "create",
        "post",
        fields([
            ("parameters", json!(params(WRITE_PARAMS))),
            ("requestBody", body(&schema)),
            ("responses", json_response(&schema, "201")),
        ]),
    );
    let mut delete_collection_params = params(DELETE_PARAMS);
    delete_collection_params.extend(params(LIST_PARAMS));
    let delete_collection = main.op(
        "deleteCollection",
        "deletecollection",
        fields([
            ("parameters", json!(delete_collection_params)),
            (
                "requestBody",
                body("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"),
            ),
            (
                "responses",
                json_response("io.k8s.apimachinery.pkg.apis.meta.v1.Status", "200"),
            ),
        ]),
    );
    paths.insert(
        collection.clone(),
        json!({"get": list, "post": create, "delete": delete_collection, "parameters": scope_params.clone()}),
    );

    if kind.namespaced {
        let all = main.op(
            "list",
            "list",
            fields([
                ("parameters", json!(params(LIST_PARAMS))),
                ("responses", json_response(&list_schema, "200")),
            ]),
        );
        // operationId of the all-namespaces list is distinct, as in kube-apiserver.
        let mut all = all;
        all["operationId"] = json!(format!(
            "list{}{}ForAllNamespaces",
            gv_camel(kind),
            kind.kind
        ));
        paths.insert(
            format!("{prefix}/{}", kind.plural),
            json!({"get": all, "parameters": [param("pretty")]}),
        );
    }

    let mut item_params = vec![path_param("name", &format!("name of the {}", kind.kind))];
    item_params.extend(scope_params);
    let item = format!("{collection}/{{name}}");
    let delete = main.op(
        "delete",
        "delete",
        fields([
            ("parameters", json!(params(DELETE_PARAMS))),
            (
                "requestBody",
                body("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"),
            ),
            ("responses", json_response(&schema, "200")),
        ]),
    );
    paths.insert(
        item.clone(),
        json!({"get": main.read(), "put": main.replace(), "patch": main.patch(), "delete": delete, "parameters": item_params.clone()}),
    );

    for &sub in kind.subresources {
        let path = format!("{item}/{}", sub.name());
        let entry = match sub {
            Subresource::Status => {
                let t = Target {
                    suffix: "Status",
                    ..clone_target(&main)
                };
                json!({"get": t.read(), "put": t.replace(), "patch": t.patch(), "parameters": item_params.clone()})
            }
            Subresource::Scale => {
                let t = Target {
                    suffix: "Scale",
                    gvk: gvk("autoscaling", "v1", "Scale"),
                    schema: "io.k8s.api.autoscaling.v1.Scale".into(),
                    ..clone_target(&main)
                };
                json!({"get": t.read(), "put": t.replace(), "patch": t.patch(), "parameters": item_params.clone()})
            }
            Subresource::Binding => {
                let t = Target {
                    suffix: "Binding",
                    gvk: gvk("", "v1", "Binding"),
                    schema: "io.k8s.api.core.v1.Binding".into(),
                    ..clone_target(&main)
                };
                let create = t.op(
                    "create",
                    "post",
                    fields([
                        (
                            "parameters",
                            json!(params(&["dryRun", "fieldManager", "fieldValidation"])),
                        ),
                        ("requestBody", body(&t.schema)),
                        ("responses", json_response(&t.schema, "201")),
                    ]),
                );
                json!({"post": create, "parameters": item_params.clone()})
            }
        };
        paths.insert(path, entry);
    }
}

fn clone_target<'a>(t: &Target<'a>) -> Target<'a> {
    Target {
        kind: t.kind,
        scope: t.scope,
        suffix: t.suffix,
        gvk: t.gvk.clone(),
        schema: t.schema.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn index_lists_every_group_version_with_a_hashed_url() {
        let index = index();
        let paths = index["paths"].as_object().unwrap();
        let keys: Vec<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "api/v1",
                "apis/apps/v1",
                "apis/batch/v1",
                "apis/coordination.k8s.io/v1",
                "apis/events.k8s.io/v1",
                "apis/discovery.k8s.io/v1"
            ]
        );
        let url = paths["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
        let hash = url.strip_prefix("/openapi/v3/apis/apps/v1?hash=").unwrap();
        assert_eq!(
            hash,
            content_hash(group_version_json("apps", "v1").unwrap())
        );
        assert_ne!(hash, content_hash(group_version_json("", "v1").unwrap()));
        assert_eq!(
            document_for_path("apis/apps/v1"),
            group_version_json("apps", "v1")
        );
        assert_eq!(document_for_path("/api/v1"), group_version_json("", "v1"));
        assert!(document_for_path("apis/apps/v2").is_none());
        assert!(group_version_doc("metrics.k8s.io", "v1beta1").is_none());
    }

    #[test]
    fn every_kind_schema_is_present_tagged_and_references_resolve() {
        for (group, version) in group_versions() {
            let doc = group_version_doc(group, version).unwrap();
            assert_eq!(doc["openapi"], "3.0.0");
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            for kind in KINDS
                .iter()
                .filter(|k| k.group == group && k.version == version)
            {
                let name = kind.typed.schema_name();
                let schema = &schemas[&name];
                assert_eq!(
                    schema["x-kubernetes-group-version-kind"],
                    json!([{"group": group, "version": version, "kind": kind.kind}]),
                    "{name}"
                );
                assert!(schema["properties"]["metadata"].is_object(), "{name}");
                assert_eq!(
                    schemas[&format!("{name}List")]["x-kubernetes-group-version-kind"][0]["kind"],
                    kind.list_kind()
                );
            }
            let mut all = Vec::new();
            refs(doc, &mut all);
            assert!(!all.is_empty());
            for r in all {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{r} is not a component ref"));
                assert!(
                    schemas.contains_key(name),
                    "{group}/{version}: dangling {r}"
                );
            }
        }
    }

    #[test]
    fn definition_names_are_the_kubernetes_ones() {
        let apps = group_version_doc("apps", "v1").unwrap();
        let schemas = apps["components"]["schemas"].as_object().unwrap();
        for name in [
            "io.k8s.api.apps.v1.Deployment",
            "io.k8s.api.apps.v1.DeploymentSpec",
            "io.k8s.api.core.v1.PodTemplateSpec",
            "io.k8s.api.core.v1.Container",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
            "io.k8s.api.autoscaling.v1.Scale",
        ] {
            assert!(schemas.contains_key(name), "{name}");
        }
        assert_eq!(
            schemas["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"],
            json!([{"group": "autoscaling", "version": "v1", "kind": "Scale"}])
        );
        // Pod schemas are not pulled into documents whose kinds do not use them.
        let leases = group_version_doc("coordination.k8s.io", "v1").unwrap();
        assert!(leases["components"]["schemas"]
            .get("io.k8s.api.core.v1.Container")
            .is_none());
    }

    #[test]
    fn patch_operations_let_kubectl_defer_validation_to_the_server() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "apps",
                "v1",
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                "Deployment",
            ),
            (
                "",
                "v1",
                "/api/v1/namespaces/{namespace}/pods/{name}",
                "Pod",
            ),
            ("", "v1", "/api/v1/nodes/{name}", "Node"),
            ("", "v1", "/api/v1/namespaces/{name}", "Namespace"),
            (
                "batch",
                "v1",
                "/apis/batch/v1/namespaces/{namespace}/cronjobs/{name}",
                "CronJob",
            ),
            (
                "apps",
                "v1",
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
                "Scale",
            ),
        ];
        for (group, version, path, kind) in cases {
            let doc = group_version_doc(group, version).unwrap();
            let patch = &doc["paths"][*path]["patch"];
            assert_eq!(
                patch["x-kubernetes-group-version-kind"]["kind"], *kind,
                "{path}"
            );
            let names: Vec<&str> = patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names,
                ["dryRun", "fieldManager", "fieldValidation", "force"],
                "{path}"
            );
            let types: Vec<&String> = patch["requestBody"]["content"]
                .as_object()
                .unwrap()
                .keys()
                .collect();
            assert_eq!(types, PATCH_CONTENT_TYPES, "{path}");
        }
    }

    #[test]
    fn paths_cover_collections_items_and_subresources() {
        let core = group_version_doc("", "v1").unwrap();
        let paths = core["paths"].as_object().unwrap();
        let pods = &paths["/api/v1/namespaces/{namespace}/pods"];
        assert_eq!(pods["get"]["operationId"], "listCoreV1NamespacedPod");
        assert_eq!(pods["post"]["x-kubernetes-action"], "post");
        assert_eq!(pods["delete"]["x-kubernetes-action"], "deletecollection");
        assert_eq!(
            paths["/api/v1/pods"]["get"]["operationId"],
            "listCoreV1PodForAllNamespaces"
        );
        let pod = &paths["/api/v1/namespaces/{namespace}/pods/{name}"];
        for verb in ["get", "put", "patch", "delete"] {
            assert!(pod[verb].is_object(), "{verb}");
        }
        assert_eq!(
            paths["/api/v1/namespaces/{namespace}/pods/{name}/status"]["patch"]["operationId"],
            "patchCoreV1NamespacedPodStatus"
        );
        assert_eq!(
            paths["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"]["operationId"],
            "createCoreV1NamespacedPodBinding"
        );
        assert!(paths.get("/api/v1/nodes").is_some());
        assert!(paths.get("/api/v1/namespaces/{namespace}/nodes").is_none());
        let leases = group_version_doc("coordination.k8s.io", "v1").unwrap();
        assert_eq!(
            leases["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"]
                ["get"]["operationId"],
            "readCoordinationV1NamespacedLease"
        );
    }
}
