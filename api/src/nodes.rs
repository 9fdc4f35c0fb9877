//! What the API server asks of the node a pod runs on: `pods/log` today.
//!
//! ```text
//!  GET /api/v1/namespaces/{ns}/pods/{name}/log?container=&follow=&tailLines=...
//!        │ LogQuery::parse (400 on bad values)     │ the Pod (nodeName, containers)
//!        ▼                                         ▼
//!  choose_container (kube-apiserver's messages) ─► NodeConnector::logs ─► byte stream
//! ```
//! The connector is how the API server reaches agents: in a one-box `kith up` the agent
//! lives in the same process and reads its files directly.
//!
//! `GET /api/v1/nodes/{name}/proxy/metrics` reaches a node's agent the same way
//! ([`NodeProxy`]): Prometheus scrapes kubelets through the API server so, with the API
//! server's credentials, and kith's agents too.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use serde_json::Value;

use crate::error::ApiError;

/// A stream of log bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// The paths below `/api/v1/nodes/{name}/proxy/` an agent serves: its `/metrics`.
pub const PROXY_PATHS: &[&str] = &["metrics"];

/// What a node's agent answered through the node proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxied {
    pub content_type: String,
    pub body: Bytes,
}

/// `GET /api/v1/nodes/{node}/proxy/{path}` for one of [`PROXY_PATHS`], with the client's
/// `Accept` (Prometheus asks for OpenMetrics).
pub trait NodeProxy: Send + Sync {
    fn get<'a>(
        &'a self,
        node: &'a str,
        path: &'a str,
        accept: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<Proxied, ApiError>> + Send + 'a>>;
}

/// The `pods/log` options (`PodLogOptions`), as query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogQuery {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    /// RFC 3339.
    pub since_time: Option<jiff::Timestamp>,
    pub limit_bytes: Option<i64>,
}

/// A boolean query parameter as kube-apiserver reads it (a bare key means true).
pub(crate) fn flag(v: &str, name: &str) -> Result<bool, ApiError> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "invalid value {v:?} for {name}"
        ))),
    }
}

fn number(v: &str, name: &str, min: i64) -> Result<i64, ApiError> {
    let n: i64 = v
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid value {v:?} for {name}")))?;
    if n < min {
        return Err(ApiError::BadRequest(format!(
            "{name}: Invalid value: {n}: must be greater than or equal to {min}"
        )));
    }
    Ok(n)
}

impl LogQuery {
    pub fn parse(query: &str) -> Result<LogQuery, ApiError> {
        let mut q = LogQuery::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "container" => q.container = Some(v.into_owned()).filter(|c| !c.is_empty()),
                "follow" => q.follow = flag(&v, "follow")?,
                "previous" => q.previous = flag(&v, "previous")?,
                "timestamps" => q.timestamps = flag(&v, "timestamps")?,
                "tailLines" => q.tail_lines = Some(number(&v, "tailLines", 0)?),
                "sinceSeconds" => q.since_seconds = Some(number(&v, "sinceSeconds", 1)?),
                "limitBytes" => q.limit_bytes = Some(number(&v, "limitBytes", 1)?),
                "sinceTime" => {
                    q.since_time = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("invalid value {v:?} for sinceTime"))
                    })?)
                }
                // kubectl sends these; they change nothing here.
                "insecureSkipTLSVerifyBackend" | "pretty" | "stream" => {}
                _ => {}
            }
        }
        if q.since_seconds.is_some() && q.since_time.is_some() {
            return Err(ApiError::BadRequest(
                "at most one of sinceTime or sinceSeconds may be specified".into(),
            ));
        }
        Ok(q)
    }
}

/// Which pod and container the logs are of, and where it runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogTarget {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub node: String,
    pub container: String,
}

/// The container a log request is about, with kube-apiserver's messages when it can't
/// be chosen.
pub fn choose_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("containers");
    let inits = names("initContainers");
    match asked {
        Some(c) if containers.iter().chain(inits.iter()).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !inits.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::BadRequest(msg))
        }
    }
}

/// Where a log request goes, from the stored Pod.
pub fn log_target(pod: &Value, q: &LogQuery) -> Result<LogTarget, ApiError> {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let container = choose_container(pod, q.container.as_deref())?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(LogTarget {
        namespace: pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        pod: name,
        uid: pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        node: node.to_string(),
        container,
    })
}

/// How the API server reaches the agent of a node.
pub trait NodeConnector: Send + Sync + 'static {
    /// The logs of `target` shaped by `q`; errors are already the Status to answer with.
    fn logs(
        &self,
        target: LogTarget,
        q: LogQuery,
    ) -> Pin<Box<dyn Future<Output = Result<ByteStream, ApiError>> + Send + '_>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_table() {
        let cases: Vec<(&str, Result<LogQuery, &str>)> = vec![
            ("", Ok(LogQuery::default())),
            (
                "container=web&follow=true&tailLines=10&timestamps=true",
                Ok(LogQuery {
                    container: Some("web".into()),
                    follow: true,
                    tail_lines: Some(10),
                    timestamps: true,
                    ..Default::default()
                }),
            ),
            (
                "previous=true&limitBytes=100&sinceSeconds=5",
                Ok(LogQuery {
                    previous: true,
                    limit_bytes: Some(100),
                    since_seconds: Some(5),
                    ..Default::default()
                }),
            ),
            ("tailLines=x", Err("invalid value \"x\" for tailLines")),
            ("tailLines=-1", Err("must be greater than or equal to 0")),
            ("limitBytes=0", Err("must be greater than or equal to 1")),
            ("follow=maybe", Err("invalid value \"maybe\" for follow")),
            (
                "sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z",
                Err("at most one of sinceTime or sinceSeconds"),
            ),
        ];
        for (query, want) in cases {
            match (LogQuery::parse(query), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(ApiError::BadRequest(m)), Err(want)) => {
                    assert!(m.contains(want), "{query}: {m}")
                }
                (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn container_choice_table() {
        let pod = |containers: &[&str], inits: &[&str]| {
            json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {
                    "nodeName": "n1",
                    "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
                    "initContainers": inits.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
                }
            })
        };
        let cases: Vec<(Value, Option<&str>, Result<&str, &str>)> = vec![
            (pod(&["a"], &[]), None, Ok("a")),
            (pod(&["a", "b"], &[]), Some("b"), Ok("b")),
            (pod(&["a"], &["i"]), Some("i"), Ok("i")),
            (
                pod(&["a", "b"], &[]),
                None,
                Err("a container name must be specified for pod p, choose one of: [a b]"),
            ),
            (
                pod(&["a", "b"], &["i"]),
                None,
                Err("choose one of: [a b] or one of the init containers: [i]"),
            ),
            (
                pod(&["a"], &[]),
                Some("zz"),
                Err("container zz is not valid for pod p"),
            ),
        ];
        for (p, asked, want) in cases {
            match (choose_container(&p, asked), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(ApiError::BadRequest(m)), Err(want)) => assert!(m.contains(want), "{m}"),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
        let mut unscheduled = pod(&["a"], &[]);
        unscheduled["spec"]["nodeName"] = Value::Null;
        let err = log_target(&unscheduled, &LogQuery::default()).unwrap_err();
        assert!(
            matches!(err, ApiError::BadRequest(m) if m.contains("does not have a host assigned"))
        );
    }
}
