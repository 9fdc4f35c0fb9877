//! What a request asks for, decided from its path and query alone (no I/O): the route and
//! the options of each verb. The REST layer dispatches on [`Route`].

use std::time::Duration;

use crate::error::ApiError;
use crate::kinds::{self, Kind};

/// Where a path leads.
#[derive(Debug, PartialEq)]
pub enum Route {
    Version,
    /// `/api` (core) or `/apis`.
    Discovery {
        core: bool,
    },
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    ResourceList {
        group: String,
        version: String,
    },
    OpenApiIndex,
    /// `/openapi/v2`: kubectl's fallback when a kind is missing from the v3 documents.
    OpenApiV2,
    OpenApiDoc {
        group: String,
        version: String,
    },
    Health,
    Resource(ResourceRoute),
    /// `/api/v1/nodes/{node}/proxy/{path}`: a request for the node's agent.
    NodeProxy {
        node: String,
        path: String,
    },
}

/// A request to a resource: a collection (`name` none) or one object, maybe a subresource.
#[derive(Debug, PartialEq)]
pub struct ResourceRoute {
    pub kind: &'static Kind,
    /// The namespace in the path; none for cluster-scoped kinds and all-namespace lists.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Decide the route of `path` (already percent-decoded segments are not needed: names are
/// DNS labels/subdomains and never contain escapes).
pub fn route(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Ok(Route::Version),
        ["livez"] | ["readyz"] | ["healthz"] => Ok(Route::Health),
        ["livez" | "readyz" | "healthz", _] => Ok(Route::Health),
        ["api"] => Ok(Route::Discovery { core: true }),
        ["apis"] => Ok(Route::Discovery { core: false }),
        ["openapi", "v3"] => Ok(Route::OpenApiIndex),
        ["openapi", "v2"] => Ok(Route::OpenApiV2),
        ["openapi", "v3", "api", v] => Ok(Route::OpenApiDoc {
            group: String::new(),
            version: v.to_string(),
        }),
        ["openapi", "v3", "apis", g, v] => Ok(Route::OpenApiDoc {
            group: g.to_string(),
            version: v.to_string(),
        }),
        ["apis", g] => Ok(Route::Group(g.to_string())),
        ["api", v] => Ok(Route::ResourceList {
            group: String::new(),
            version: v.to_string(),
        }),
        ["apis", g, v] => Ok(Route::ResourceList {
            group: g.to_string(),
            version: v.to_string(),
        }),
        ["api", "v1", "nodes", node, "proxy", rest @ ..] => Ok(Route::NodeProxy {
            node: node.to_string(),
            path: rest.join("/"),
        }),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Err(ApiError::NoRoute),
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Result<Route, ApiError> {
    let find = |plural: &str| kinds::by_resource(group, version, plural).ok_or(ApiError::NoRoute);
    let r = |kind, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Ok(Route::Resource(ResourceRoute {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        }))
    };
    match rest {
        // namespaces/{ns}/{resource}[/{name}[/{sub}]] — unless {resource} is a namespace subresource.
        ["namespaces", ns, res, tail @ ..]
            if kinds::by_resource(group, version, res).is_some_and(|k| k.namespaced) =>
        {
            let kind = find(res)?;
            match tail {
                [] => r(kind, Some(ns), None, None),
                [name] => r(kind, Some(ns), Some(name), None),
                [name, sub] => r(kind, Some(ns), Some(name), Some(sub)),
                _ => Err(ApiError::NoRoute),
            }
        }
        [res] => r(find(res)?, None, None, None),
        [res, name] => {
            let kind = find(res)?;
            if kind.namespaced {
                // `/api/v1/pods/x` names nothing in Kubernetes.
                return Err(ApiError::NoRoute);
            }
            r(kind, None, Some(name), None)
        }
        [res, name, sub] => {
            let kind = find(res)?;
            if kind.namespaced {
                return Err(ApiError::NoRoute);
            }
            r(kind, None, Some(name), Some(sub))
        }
        _ => Err(ApiError::NoRoute),
    }
}

/// `fieldValidation`: what to do with fields the type does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Strict,
    #[default]
    Warn,
    Ignore,
}

/// Query options of every verb, parsed once.
#[derive(Debug, Default, PartialEq)]
pub struct Query {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub watch: bool,
    pub allow_watch_bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    pub force: bool,
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub pretty: bool,
}

pub fn parse_query(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let Some(query) = query else { return Ok(q) };
    let bool_of = |k: &str, v: &str| -> Result<bool, ApiError> {
        match v {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ApiError::BadRequest(format!(
                "invalid value {v:?} for {k}: expected true or false"
            ))),
        }
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "labelSelector" => q.label_selector = Some(v).filter(|s| !s.is_empty()),
            "fieldSelector" => q.field_selector = Some(v).filter(|s| !s.is_empty()),
            "limit" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid limit {v:?}")))?;
                q.limit = (n > 0).then_some(n as usize);
            }
            "continue" => q.continue_token = Some(v).filter(|s| !s.is_empty()),
            "resourceVersion" => q.resource_version = Some(v).filter(|s| !s.is_empty()),
            "resourceVersionMatch" => q.resource_version_match = Some(v).filter(|s| !s.is_empty()),
            "watch" => q.watch = bool_of("watch", &v)?,
            "allowWatchBookmarks" => q.allow_watch_bookmarks = bool_of("allowWatchBookmarks", &v)?,
            "sendInitialEvents" => q.send_initial_events = bool_of("sendInitialEvents", &v)?,
            "timeoutSeconds" => {
                let s: u64 = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {v:?}")))?;
                q.timeout = Some(Duration::from_secs(s));
            }
            "dryRun" => match v.as_str() {
                "All" => q.dry_run = true,
                "" => {}
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported dry run value {other:?}, only 'All' is supported"
                    )))
                }
            },
            "fieldManager" => q.field_manager = Some(v).filter(|s| !s.is_empty()),
            "fieldValidation" => {
                q.field_validation = match v.as_str() {
                    "Strict" => FieldValidation::Strict,
                    "Warn" | "" => FieldValidation::Warn,
                    "Ignore" => FieldValidation::Ignore,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "fieldValidation must be one of Ignore, Warn, or Strict, got {other:?}"
                        )))
                    }
                }
            }
            "force" => q.force = bool_of("force", &v)?,
            "gracePeriodSeconds" => {
                q.grace_period_seconds = Some(v.parse().map_err(|_| {
                    ApiError::BadRequest(format!("invalid gracePeriodSeconds {v:?}"))
                })?)
            }
            "propagationPolicy" => q.propagation_policy = Some(v).filter(|s| !s.is_empty()),
            "pretty" => q.pretty = bool_of("pretty", &v)?,
            // Accepted and ignored, as harmless: hash (openapi caching), orphanDependents (old form).
            _ => {}
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        match route(path).unwrap() {
            Route::Resource(r) => (
                r.kind.plural.to_string(),
                r.namespace,
                r.name,
                r.subresource,
            ),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn resource_paths() {
        let s = |x: &str| Some(x.to_string());
        type Want = (&'static str, Option<String>, Option<String>, Option<String>);
        let cases: [(&str, Want); 11] = [
            ("/api/v1/pods", ("pods", None, None, None)),
            (
                "/api/v1/namespaces/default/pods",
                ("pods", s("default"), None, None),
            ),
            (
                "/api/v1/namespaces/default/pods/p",
                ("pods", s("default"), s("p"), None),
            ),
            (
                "/api/v1/namespaces/default/pods/p/status",
                ("pods", s("default"), s("p"), s("status")),
            ),
            ("/api/v1/namespaces", ("namespaces", None, None, None)),
            (
                "/api/v1/namespaces/kube-system",
                ("namespaces", None, s("kube-system"), None),
            ),
            (
                "/api/v1/namespaces/x/status",
                ("namespaces", None, s("x"), s("status")),
            ),
            (
                "/api/v1/namespaces/x/finalize",
                ("namespaces", None, s("x"), s("finalize")),
            ),
            (
                "/api/v1/nodes/n1/status",
                ("nodes", None, s("n1"), s("status")),
            ),
            (
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                ("deployments", s("a"), s("d"), s("scale")),
            ),
            (
                "/apis/apps/v1/deployments",
                ("deployments", None, None, None),
            ),
        ];
        for (path, (plural, ns, name, sub)) in cases {
            assert_eq!(res(path), (plural.to_string(), ns, name, sub), "{path}");
        }
    }

    #[test]
    fn non_resource_paths() {
        assert_eq!(route("/version").unwrap(), Route::Version);
        assert_eq!(route("/api").unwrap(), Route::Discovery { core: true });
        assert_eq!(route("/apis/").unwrap(), Route::Discovery { core: false });
        assert_eq!(route("/readyz").unwrap(), Route::Health);
        assert_eq!(
            route("/apis/apps/v1").unwrap(),
            Route::ResourceList {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert_eq!(
            route("/openapi/v3/apis/apps/v1").unwrap(),
            Route::OpenApiDoc {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        let proxy = |node: &str, path: &str| Route::NodeProxy {
            node: node.into(),
            path: path.into(),
        };
        assert_eq!(
            route("/api/v1/nodes/box-1/proxy/metrics").unwrap(),
            proxy("box-1", "metrics")
        );
        assert_eq!(
            route("/api/v1/nodes/box-1/proxy/metrics/cadvisor").unwrap(),
            proxy("box-1", "metrics/cadvisor")
        );
        assert_eq!(route("/api/v1/nodes/b/proxy/").unwrap(), proxy("b", ""));
        for bad in [
            "/api/v1/nosuch",
            "/apis/apps/v1/pods",
            "/api/v1/pods/x",
            "/foo",
            "/api/v1/namespaces/a/pods/p/status/extra",
        ] {
            assert_eq!(route(bad).unwrap_err(), ApiError::NoRoute, "{bad}");
        }
    }

    #[test]
    fn query_options() {
        let q = parse_query(Some(
            "labelSelector=app%3Dweb&limit=500&watch=true&resourceVersion=12&dryRun=All&fieldValidation=Strict&timeoutSeconds=290&allowWatchBookmarks=true",
        ))
        .unwrap();
        assert_eq!(q.label_selector.as_deref(), Some("app=web"));
        assert_eq!(q.limit, Some(500));
        assert!(q.watch && q.dry_run && q.allow_watch_bookmarks);
        assert_eq!(q.resource_version.as_deref(), Some("12"));
        assert_eq!(q.field_validation, FieldValidation::Strict);
        assert_eq!(q.timeout, Some(Duration::from_secs(290)));
        for bad in [
            "limit=x",
            "watch=maybe",
            "dryRun=Some",
            "fieldValidation=Loud",
            "timeoutSeconds=-1",
        ] {
            assert!(
                matches!(parse_query(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}
