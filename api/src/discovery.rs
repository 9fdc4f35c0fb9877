//! Discovery documents: what `/version`, `/api`, `/apis`, `/api/v1` and `/apis/<g>/<v>`
//! answer, derived from the kinds registry so a new kind shows up everywhere at once.
//!
//! ```text
//!  kubectl ──GET /api, /apis (Accept: ...as=APIGroupDiscoveryList...)──▶ aggregated()
//!          └─ legacy clients (kube-rs Discovery::run) ──▶ api_versions(), api_group_list(),
//!                                                         api_resource_list(g, v)
//! ```
//!
//! Everything here is a pure function of [`KINDS`]; the HTTP layer picks the document and
//! the Content-Type (see [`wants_aggregated`] and [`AGGREGATED_CONTENT_TYPE`]).

use serde_json::{json, Map, Value};

use crate::kinds::{group_versions, Kind, Subresource, KINDS};

/// Content-Type of an aggregated discovery reply. client-go only accepts the aggregated
/// body when the reply carries exactly these media type parameters; otherwise it falls
/// back to the legacy per-group-version requests.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The Kubernetes release whose API kith speaks; kubectl's version-dispatcher picks its
/// client binary by this minor.
const KUBE_MAJOR: &str = "1";
const KUBE_MINOR: &str = "33";

/// Verbs every kind supports on its main resource, sorted as kube-apiserver lists them.
const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Verbs of the status and scale subresources.
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

/// `GET /version`: a `version.Info`. The gitVersion is a semver with build metadata, the
/// same shape k3s uses (`v1.33.1+k3s1`), so clients that parse it as semver accept it.
pub fn version() -> Value {
    let crate_version = env!("CARGO_PKG_VERSION");
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+kith.{crate_version}"),
        "gitCommit": "unknown",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch(std::env::consts::ARCH)),
    })
}

/// Go's name for a CPU architecture, which is what clients expect in `platform`.
fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `GET /api` (legacy): an `APIVersions` listing the core group's versions.
///
/// `serverAddressByClientCIDRs` is required by the type but only meaningful behind
/// address translation; an empty list tells clients to keep using the address they dialled.
pub fn api_versions() -> Value {
    let versions: Vec<&str> = group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty())
        .map(|(_, v)| v)
        .collect();
    json!({
        "kind": "APIVersions",
        "versions": versions,
        "serverAddressByClientCIDRs": [],
    })
}

/// `GET /apis` (legacy): an `APIGroupList` of every named group. Each group's first
/// version in registry order is its preferred one.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = named_groups()
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            let preferred = versions.first().cloned().unwrap_or(Value::Null);
            json!({"name": group, "versions": versions, "preferredVersion": preferred})
        })
        .chain([crate::node_metrics::api_group()])
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`: an `APIResourceList`, or `None` when
/// the group-version is not served (the caller answers 404).
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (crate::node_metrics::GROUP, crate::node_metrics::VERSION) {
        return Some(crate::node_metrics::resource_list());
    }
    let kinds: Vec<&Kind> = KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for kind in kinds {
        let mut main = Map::new();
        main.insert("name".into(), kind.plural.into());
        main.insert("singularName".into(), kind.singular.into());
        main.insert("namespaced".into(), kind.namespaced.into());
        main.insert("kind".into(), kind.kind.into());
        main.insert("verbs".into(), json!(VERBS));
        if !kind.short_names.is_empty() {
            main.insert("shortNames".into(), json!(kind.short_names));
        }
        if !kind.categories.is_empty() {
            main.insert("categories".into(), json!(kind.categories));
        }
        resources.push(Value::Object(main));
        for &sub in kind.subresources {
            let shape = subresource_shape(kind, sub);
            let mut entry = Map::new();
            entry.insert(
                "name".into(),
                format!("{}/{}", kind.plural, sub.name()).into(),
            );
            // Subresources have no singular name of their own; kube-apiserver sends "".
            entry.insert("singularName".into(), "".into());
            entry.insert("namespaced".into(), kind.namespaced.into());
            // group/version are only written when the subresource's kind lives elsewhere.
            if shape.group != kind.group || shape.version != kind.version {
                entry.insert("group".into(), shape.group.into());
                entry.insert("version".into(), shape.version.into());
            }
            entry.insert("kind".into(), shape.kind.into());
            entry.insert("verbs".into(), json!(shape.verbs));
            resources.push(Value::Object(entry));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// `GET /api` (`core = true`) or `GET /apis` (`core = false`) asked for aggregated
/// discovery: an `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`, to be sent with
/// [`AGGREGATED_CONTENT_TYPE`].
pub fn aggregated(core: bool) -> Value {
    let mut items = Vec::new();
    let groups: Vec<(&str, Vec<&str>)> = if core {
        let versions: Vec<&str> = group_versions()
            .into_iter()
            .filter(|(g, _)| g.is_empty())
            .map(|(_, v)| v)
            .collect();
        vec![("", versions)]
    } else {
        named_groups()
    };
    for (group, versions) in groups {
        let versions: Vec<Value> = versions
            .into_iter()
            .map(|version| {
                let resources: Vec<Value> = KINDS
                    .iter()
                    .filter(|k| k.group == group && k.version == version)
                    .map(aggregated_resource)
                    .collect();
                json!({"version": version, "resources": resources, "freshness": "Current"})
            })
            .collect();
        // The core group is the item with an empty name.
        let metadata = if group.is_empty() {
            json!({})
        } else {
            json!({"name": group})
        };
        items.push(json!({"metadata": metadata, "versions": versions}));
    }
    if !core {
        // Served from the agents' readings, not the kinds registry.
        items.push(crate::node_metrics::aggregated_group());
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_resource(kind: &Kind) -> Value {
    let mut out = Map::new();
    out.insert("resource".into(), kind.plural.into());
    out.insert(
        "responseKind".into(),
        json!({"group": kind.group, "version": kind.version, "kind": kind.kind}),
    );
    out.insert(
        "scope".into(),
        (if kind.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        })
        .into(),
    );
    out.insert("singularResource".into(), kind.singular.into());
    out.insert("verbs".into(), json!(VERBS));
    if !kind.short_names.is_empty() {
        out.insert("shortNames".into(), json!(kind.short_names));
    }
    if !kind.categories.is_empty() {
        out.insert("categories".into(), json!(kind.categories));
    }
    if !kind.subresources.is_empty() {
        let subs: Vec<Value> = kind
            .subresources
            .iter()
            .map(|&sub| {
                let shape = subresource_shape(kind, sub);
                json!({
                    "subresource": sub.name(),
                    "responseKind": {"group": shape.group, "version": shape.version, "kind": shape.kind},
                    "verbs": shape.verbs,
                })
            })
            .collect();
        out.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(out)
}

/// Whether an `Accept` header asks for aggregated discovery in a form kith serves (JSON,
/// apidiscovery.k8s.io/v2). Clients list it before a plain `application/json` fallback;
/// a media range with `q=0` is an explicit refusal and does not count.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !media.eq_ignore_ascii_case("application/json") {
            return false;
        }
        let (mut g, mut v, mut as_, mut refused) = (false, false, false, false);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "g" => g = value == "apidiscovery.k8s.io",
                "v" => v = value == "v2",
                "as" => as_ = value == "APIGroupDiscoveryList",
                "q" => refused = value.parse::<f32>().is_ok_and(|q| q <= 0.0),
                _ => {}
            }
        }
        g && v && as_ && !refused
    })
}

/// What a subresource answers with, and which verbs it takes.
struct SubresourceShape {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
}

fn subresource_shape(kind: &Kind, sub: Subresource) -> SubresourceShape {
    match sub {
        Subresource::Status => SubresourceShape {
            group: kind.group,
            version: kind.version,
            kind: kind.kind,
            verbs: GET_PATCH_UPDATE,
        },
        Subresource::Scale => SubresourceShape {
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: GET_PATCH_UPDATE,
        },
        Subresource::Binding => SubresourceShape {
            group: "",
            version: "v1",
            kind: "Binding",
            verbs: &["create"],
        },
    }
}

/// Named (non-core) groups with their versions, in registry order.
fn named_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for (group, version) in group_versions() {
        if group.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => versions.push(version),
            None => out.push((group, vec![version])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn version_reports_the_kubernetes_minor_kubectl_dispatches_on() {
        let v = version();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "33");
        let git = v["gitVersion"].as_str().unwrap();
        assert!(git.starts_with("v1.33.0+kith."), "{git}");
        assert!(v["platform"].as_str().unwrap().contains('/'));
    }

    #[test]
    fn legacy_core_lists_v1_and_groups_list_every_named_group() {
        assert_eq!(api_versions()["versions"], json!(["v1"]));
        let groups = api_group_list();
        let names: Vec<&str> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "batch",
                "coordination.k8s.io",
                "events.k8s.io",
                "discovery.k8s.io",
                // served from the agents' readings (node_metrics), last
                "metrics.k8s.io",
            ]
        );
        let apps = &groups["groups"][0];
        assert_eq!(
            apps["preferredVersion"],
            json!({"groupVersion": "apps/v1", "version": "v1"})
        );
        assert!(!names.contains(&""), "core is not a named group");
    }

    #[test]
    fn resource_lists_carry_main_resources_and_subresources() {
        let core = api_resource_list("", "v1").unwrap();
        assert_eq!(core["groupVersion"], "v1");
        let pods = find(&core, "pods");
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["verbs"], json!(VERBS));
        let binding = find(&core, "pods/binding");
        assert_eq!(binding["kind"], "Binding");
        assert_eq!(binding["verbs"], json!(["create"]));
        assert!(
            binding.get("group").is_none(),
            "Binding lives in core/v1 itself"
        );
        assert_eq!(
            find(&core, "pods/status")["verbs"],
            json!(["get", "patch", "update"])
        );
        assert_eq!(find(&core, "namespaces")["namespaced"], false);

        let apps = api_resource_list("apps", "v1").unwrap();
        assert_eq!(apps["groupVersion"], "apps/v1");
        let scale = find(&apps, "deployments/scale");
        assert_eq!(
            (&scale["group"], &scale["version"], &scale["kind"]),
            (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
        );
        assert!(api_resource_list("apps", "v1beta1").is_none());
        assert!(api_resource_list("metrics.k8s.io", "v1").is_none());
        let metrics = api_resource_list("metrics.k8s.io", "v1beta1").unwrap();
        assert_eq!(find(&metrics, "pods")["kind"], "PodMetrics");
    }

    #[test]
    fn category_all_covers_the_workloads_kubectl_get_all_shows() {
        let mut in_all: Vec<String> = Vec::new();
        for doc in [aggregated(true), aggregated(false)] {
            for item in doc["items"].as_array().unwrap() {
                for v in item["versions"].as_array().unwrap() {
                    for r in v["resources"].as_array().unwrap() {
                        if r["categories"]
                            .as_array()
                            .is_some_and(|c| c.contains(&json!("all")))
                        {
                            in_all.push(r["resource"].as_str().unwrap().to_string());
                        }
                    }
                }
            }
        }
        in_all.sort();
        let mut want = [
            "pods",
            "services",
            "deployments",
            "replicasets",
            "daemonsets",
            "statefulsets",
            "jobs",
            "cronjobs",
        ];
        want.sort();
        assert_eq!(in_all, want);
    }

    #[test]
    fn aggregated_documents_describe_every_kind_once() {
        let core = aggregated(true);
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"], json!({}));
        let named = aggregated(false);
        let mut count = 0;
        for doc in [&core, &named] {
            for item in doc["items"].as_array().unwrap() {
                for v in item["versions"].as_array().unwrap() {
                    count += v["resources"].as_array().unwrap().len();
                }
            }
        }
        // every kind, plus metrics.k8s.io's nodes and pods
        assert_eq!(count, KINDS.len() + 2);
        let deploy = named["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(
            deploy["responseKind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["singularResource"], "deployment");
        let subs = deploy["subresources"].as_array().unwrap();
        assert_eq!(subs[1]["subresource"], "scale");
        assert_eq!(
            subs[1]["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        let nodes = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "nodes")
            .unwrap();
        assert_eq!(nodes["scope"], "Cluster");
        assert_eq!(nodes["responseKind"]["group"], "");
    }

    /// Writes every served document to `$KITH_DUMP` for e2e/scripts/discovery-check.py,
    /// which serves them to real kubectl binaries.
    #[test]
    #[ignore = "writes a file; run by e2e/scripts/discovery-check.py"]
    fn dump_documents() {
        let Ok(path) = std::env::var("KITH_DUMP") else {
            return;
        };
        let mut plain = Map::new();
        plain.insert("/version".into(), version());
        plain.insert("/api".into(), api_versions());
        plain.insert("/apis".into(), api_group_list());
        for (g, v) in group_versions() {
            let url = if g.is_empty() {
                format!("/api/{v}")
            } else {
                format!("/apis/{g}/{v}")
            };
            plain.insert(url, api_resource_list(g, v).unwrap());
        }
        let mut openapi = Map::new();
        openapi.insert("/openapi/v3".into(), crate::openapi::index());
        for (g, v) in group_versions() {
            let url = if g.is_empty() {
                format!("/openapi/v3/api/{v}")
            } else {
                format!("/openapi/v3/apis/{g}/{v}")
            };
            openapi.insert(
                url,
                crate::openapi::group_version_doc(g, v).unwrap().clone(),
            );
        }
        let doc = json!({
            "plain": plain,
            "openapi": openapi,
            "aggregated": {"/api": aggregated(true), "/apis": aggregated(false)},
            "aggregatedContentType": AGGREGATED_CONTENT_TYPE,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }

    #[test]
    fn accept_header_negotiation() {
        let cases: &[(&str, bool)] = &[
            // kubectl 1.30 and 1.33 send exactly this
            ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json", true),
            // a client offering protobuf first, JSON second
            ("application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json", true),
            ("application/json; as=APIGroupDiscoveryList; v=v2; g=apidiscovery.k8s.io", true),
            ("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json", false),
            ("application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList", false),
            ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0,application/json", false),
            ("application/json, */*", false),
            ("", false),
        ];
        for (accept, want) in cases {
            assert_eq!(wants_aggregated(accept), *want, "{accept}");
        }
    }
}
