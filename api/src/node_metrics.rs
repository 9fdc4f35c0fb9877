//! `metrics.k8s.io/v1beta1`: the resource metrics `kubectl top` reads (NodeMetrics and
//! PodMetrics), answered from what the agents measure instead of a metrics-server.
//!
//! ```text
//!  GET /apis/metrics.k8s.io/v1beta1/nodes[/{name}]
//!  GET /apis/metrics.k8s.io/v1beta1[/namespaces/{ns}]/pods[/{name}]
//!        │ route()                      │ NodeStatsSource::{nodes, pods} (the agents)
//!        ▼                              ▼
//!     MetricsRoute ────────────► render() ─► NodeMetrics(List) / PodMetrics(List) JSON
//! ```
//! The group also appears in discovery ([`api_group`], [`aggregated_group`],
//! [`resource_list`]), which is how kubectl decides the metrics API is there.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::error::{ApiError, Target};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// A node's use over `window` ending at `timestamp`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeUsage {
    pub name: String,
    pub timestamp: Timestamp,
    pub window: Duration,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// A pod's containers' use over `window` ending at `timestamp`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub timestamp: Timestamp,
    pub window: Duration,
    pub containers: Vec<ContainerUsage>,
}

pub type StatsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// Where the API server gets resource use from: the agents.
pub trait NodeStatsSource: Send + Sync + 'static {
    /// The latest use of every node the source knows.
    fn nodes(&self) -> StatsFuture<'_, Vec<NodeUsage>>;
    /// The latest use of every pod the source knows.
    fn pods(&self) -> StatsFuture<'_, Vec<PodUsage>>;
}

/// What a metrics.k8s.io path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsRoute {
    Nodes {
        name: Option<String>,
    },
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
}

/// `None` when `path` is not a metrics.k8s.io resource path (discovery paths included:
/// those go through [`crate::discovery`]); `Some(Err)` for an unknown resource under it.
pub fn route(path: &str) -> Option<Result<MetricsRoute, ApiError>> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segs.as_slice() {
        ["apis", GROUP, VERSION, rest @ ..] if !rest.is_empty() => rest,
        _ => return None,
    };
    let s = |x: &&str| Some(x.to_string());
    Some(match rest {
        ["nodes"] => Ok(MetricsRoute::Nodes { name: None }),
        ["nodes", name] => Ok(MetricsRoute::Nodes { name: s(name) }),
        ["pods"] => Ok(MetricsRoute::Pods {
            namespace: None,
            name: None,
        }),
        ["namespaces", ns, "pods"] => Ok(MetricsRoute::Pods {
            namespace: s(ns),
            name: None,
        }),
        ["namespaces", ns, "pods", name] => Ok(MetricsRoute::Pods {
            namespace: s(ns),
            name: s(name),
        }),
        _ => Err(ApiError::NoRoute),
    })
}

/// Selectors need the objects' labels, which the agents' readings do not carry.
pub fn check_query(query: Option<&str>) -> Result<(), ApiError> {
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if matches!(k.as_ref(), "labelSelector" | "fieldSelector") && !v.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{k} is not supported for {GROUP} on this server"
            )));
        }
    }
    Ok(())
}

fn not_found(resource: &str, kind: &str, name: &str) -> ApiError {
    ApiError::NotFound(Target {
        group: GROUP.into(),
        resource: resource.into(),
        kind: kind.into(),
        name: name.into(),
    })
}

fn usage(cpu_nanocores: u64, memory_bytes: u64) -> Value {
    json!({"cpu": format!("{cpu_nanocores}n"), "memory": format!("{}Ki", memory_bytes / 1024)})
}

fn window(w: Duration) -> String {
    format!("{}s", w.as_secs_f64())
}

pub fn node_metrics(n: &NodeUsage) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"name": n.name, "creationTimestamp": n.timestamp.to_string()},
        "timestamp": n.timestamp.to_string(),
        "window": window(n.window),
        "usage": usage(n.cpu_nanocores, n.memory_bytes),
    })
}

pub fn pod_metrics(p: &PodUsage) -> Value {
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": usage(c.cpu_nanocores, c.memory_bytes)}))
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "creationTimestamp": p.timestamp.to_string(),
        },
        "timestamp": p.timestamp.to_string(),
        "window": window(p.window),
        "containers": containers,
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// The answer to `route` from what the source reported.
pub async fn serve(route: &MetricsRoute, source: &dyn NodeStatsSource) -> Result<Value, ApiError> {
    match route {
        MetricsRoute::Nodes { name } => Ok(render_nodes(name.as_deref(), &source.nodes().await?)?),
        MetricsRoute::Pods { namespace, name } => Ok(render_pods(
            namespace.as_deref(),
            name.as_deref(),
            &source.pods().await?,
        )?),
    }
}

pub fn render_nodes(name: Option<&str>, nodes: &[NodeUsage]) -> Result<Value, ApiError> {
    match name {
        Some(name) => nodes
            .iter()
            .find(|n| n.name == name)
            .map(node_metrics)
            .ok_or_else(|| not_found("nodes", "NodeMetrics", name)),
        None => {
            let mut items: Vec<&NodeUsage> = nodes.iter().collect();
            items.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(list(
                "NodeMetricsList",
                items.into_iter().map(node_metrics).collect(),
            ))
        }
    }
}

pub fn render_pods(
    namespace: Option<&str>,
    name: Option<&str>,
    pods: &[PodUsage],
) -> Result<Value, ApiError> {
    let mut items: Vec<&PodUsage> = pods
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
        .collect();
    items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    match name {
        Some(name) => items
            .into_iter()
            .find(|p| p.name == name)
            .map(pod_metrics)
            .ok_or_else(|| not_found("pods", "PodMetrics", name)),
        None => Ok(list(
            "PodMetricsList",
            items.into_iter().map(pod_metrics).collect(),
        )),
    }
}

/// The group's entry in `GET /apis` (`APIGroupList`).
pub fn api_group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

const VERBS: &[&str] = &["get", "list"];

/// The group's item in the aggregated discovery document (`APIGroupDiscoveryList`).
pub fn aggregated_group() -> Value {
    let resource = |plural: &str, singular: &str, kind: &str, scope: &str| {
        json!({
            "resource": plural,
            "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
            "scope": scope,
            "singularResource": singular,
            "verbs": VERBS,
        })
    };
    json!({
        "metadata": {"name": GROUP},
        "versions": [{
            "version": VERSION,
            "resources": [
                resource("nodes", "node", "NodeMetrics", "Cluster"),
                resource("pods", "pod", "PodMetrics", "Namespaced"),
            ],
            "freshness": "Current",
        }],
    })
}

/// `GET /apis/metrics.k8s.io/v1beta1` (`APIResourceList`).
pub fn resource_list() -> Value {
    let resource = |plural: &str, singular: &str, kind: &str, namespaced: bool| {
        json!({"name": plural, "singularName": singular, "namespaced": namespaced,
               "kind": kind, "verbs": VERBS})
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            resource("nodes", "node", "NodeMetrics", false),
            resource("pods", "pod", "PodMetrics", true),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let nodes = |n: Option<&str>| {
            Some(MetricsRoute::Nodes {
                name: n.map(String::from),
            })
        };
        let pods = |ns: Option<&str>, n: Option<&str>| {
            Some(MetricsRoute::Pods {
                namespace: ns.map(String::from),
                name: n.map(String::from),
            })
        };
        let cases: Vec<(&str, Option<Option<MetricsRoute>>)> = vec![
            ("/apis/metrics.k8s.io/v1beta1/nodes", Some(nodes(None))),
            (
                "/apis/metrics.k8s.io/v1beta1/nodes/box-1",
                Some(nodes(Some("box-1"))),
            ),
            ("/apis/metrics.k8s.io/v1beta1/pods", Some(pods(None, None))),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/a/pods",
                Some(pods(Some("a"), None)),
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/a/pods/p",
                Some(pods(Some("a"), Some("p"))),
            ),
            // an unknown resource of the group is a 404, not another route
            ("/apis/metrics.k8s.io/v1beta1/services", Some(None)),
            ("/apis/metrics.k8s.io/v1beta1/nodes/a/b", Some(None)),
            // discovery and other groups are not ours
            ("/apis/metrics.k8s.io/v1beta1", None),
            ("/apis/metrics.k8s.io", None),
            ("/apis/apps/v1/deployments", None),
            ("/api/v1/pods", None),
        ];
        for (path, want) in cases {
            let got = route(path).map(|r| r.ok());
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn query_table() {
        let cases = [
            (None, true),
            (Some(""), true),
            (Some("labelSelector="), true),
            (Some("limit=500&labelSelector=&fieldSelector="), true),
            (Some("labelSelector=app%3Dweb"), false),
            (Some("fieldSelector=metadata.name%3Dx"), false),
        ];
        for (q, ok) in cases {
            assert_eq!(check_query(q).is_ok(), ok, "{q:?}");
        }
    }

    fn ts() -> Timestamp {
        "2026-11-21T12:00:00Z".parse().unwrap()
    }

    fn pod(ns: &str, name: &str) -> PodUsage {
        PodUsage {
            namespace: ns.into(),
            name: name.into(),
            timestamp: ts(),
            window: Duration::from_secs(5),
            containers: vec![ContainerUsage {
                name: "app".into(),
                cpu_nanocores: 250_000_000,
                memory_bytes: 4 * 1024 * 1024 + 100,
            }],
        }
    }

    #[test]
    fn renders_what_kubectl_top_decodes() {
        let n = NodeUsage {
            name: "box-1".into(),
            timestamp: ts(),
            window: Duration::from_millis(5500),
            cpu_nanocores: 1_500_000_000,
            memory_bytes: 2048,
        };
        assert_eq!(
            render_nodes(Some("box-1"), std::slice::from_ref(&n)).unwrap(),
            json!({
                "kind": "NodeMetrics",
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {"name": "box-1", "creationTimestamp": "2026-11-21T12:00:00Z"},
                "timestamp": "2026-11-21T12:00:00Z",
                "window": "5.5s",
                "usage": {"cpu": "1500000000n", "memory": "2Ki"},
            })
        );
        assert!(matches!(
            render_nodes(Some("other"), std::slice::from_ref(&n)),
            Err(ApiError::NotFound(_))
        ));
        let all = render_nodes(None, &[n]).unwrap();
        assert_eq!(all["kind"], "NodeMetricsList");
        assert_eq!(all["items"][0]["metadata"]["name"], "box-1");

        let pods = [pod("b", "z"), pod("a", "y"), pod("b", "x")];
        let names = |v: Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    format!(
                        "{}/{}",
                        i["metadata"]["namespace"].as_str().unwrap(),
                        i["metadata"]["name"].as_str().unwrap()
                    )
                })
                .collect()
        };
        assert_eq!(
            names(render_pods(None, None, &pods).unwrap()),
            ["a/y", "b/x", "b/z"]
        );
        assert_eq!(
            names(render_pods(Some("b"), None, &pods).unwrap()),
            ["b/x", "b/z"]
        );
        let one = render_pods(Some("a"), Some("y"), &pods).unwrap();
        assert_eq!(one["kind"], "PodMetrics");
        assert_eq!(
            one["containers"],
            json!([{"name": "app", "usage": {"cpu": "250000000n", "memory": "4096Ki"}}])
        );
        assert!(render_pods(Some("a"), Some("z"), &pods).is_err());
    }

    #[test]
    fn discovery_documents() {
        assert_eq!(
            api_group()["preferredVersion"]["groupVersion"],
            "metrics.k8s.io/v1beta1"
        );
        let agg = aggregated_group();
        assert_eq!(agg["metadata"]["name"], GROUP);
        assert_eq!(agg["versions"][0]["resources"][1]["scope"], "Namespaced");
        assert_eq!(resource_list()["resources"][0]["kind"], "NodeMetrics");
    }
}
