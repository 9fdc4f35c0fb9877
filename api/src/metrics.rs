//! `/metrics`: what the API server measures about its requests, and how a scrape renders
//! every registered metric (the API's and whatever the control plane adds).
//!
//! ```text
//!  ApiService::handle ──request_verb()──▶ RequestTimer ─▶ apiserver_request_total
//!       │                                  (drop)      └▶ apiserver_request_duration_seconds
//!       ├─ InflightGuard ─▶ apiserver_current_inflight_requests{request_kind}
//!       └─ WatcherGuard (lives in the watch body) ─▶ apiserver_registered_watchers{resource}
//!  GET /metrics ─▶ Metrics::render(accept) ─▶ OpenMetrics (Prometheus asks for it)
//!                                          └▶ text 0.0.4 (curl, promtool) via to_text_format
//! ```
//!
//! Names, labels and buckets are kube-apiserver's, so the dashboards and alerts written
//! for it work unchanged. The registry is built once at start: the control plane adds its
//! own metrics and scrape-time collectors through [`Metrics::registry_mut`] before the
//! `Metrics` is shared.

use std::collections::HashSet;
use std::sync::Arc;

use http::Method;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// kube-apiserver's `apiserver_request_duration_seconds` buckets (seconds).
pub const REQUEST_DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The OpenMetrics content type Prometheus asks for first and gets from kith.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format (0.0.4), for everyone else (curl, `promtool check metrics`).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Content-Type of a server-side apply PATCH.
const APPLY_PATCH_TYPE: &str = "application/apply-patch+yaml";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    subresource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InflightLabels {
    request_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

/// The request metrics of one API server.
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<DurationLabels>,
    inflight: Family<InflightLabels, Gauge>,
    watchers: Family<ResourceLabels, Gauge>,
}

impl ApiMetrics {
    fn register(registry: &mut Registry) -> ApiMetrics {
        let m = ApiMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            inflight: Family::default(),
            watchers: Family::default(),
        };
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, resource, subresource and HTTP response code",
            m.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb and resource",
            m.durations.clone(),
        );
        registry.register(
            "apiserver_current_inflight_requests",
            "Maximal number of currently used inflight request limit of this apiserver per request kind",
            m.inflight.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Number of currently registered watchers for a given resource",
            m.watchers.clone(),
        );
        // Prometheus' kubernetes-apiservers recipes also look for these at 0 before any
        // request of that kind arrives.
        for kind in [READ_ONLY, MUTATING] {
            m.inflight
                .get_or_create(&InflightLabels {
                    request_kind: kind.to_string(),
                })
                .set(0);
        }
        m
    }

    /// Count one request as in flight until the guard is dropped. Watches are
    /// long-running and counted as watchers instead, as kube-apiserver does.
    pub fn inflight(self: &Arc<Self>, verb: &str) -> Option<InflightGuard> {
        let kind = match verb {
            "WATCH" => return None,
            "GET" | "LIST" => READ_ONLY,
            _ => MUTATING,
        };
        let labels = InflightLabels {
            request_kind: kind.to_string(),
        };
        self.inflight.get_or_create(&labels).inc();
        Some(InflightGuard {
            metrics: self.clone(),
            labels,
        })
    }

    /// Record one finished request.
    pub fn observe(&self, labels: &RequestInfo, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: labels.verb.to_string(),
                resource: labels.resource.clone(),
                subresource: labels.subresource.clone(),
                code: code.to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&DurationLabels {
                verb: labels.verb.to_string(),
                resource: labels.resource.clone(),
            })
            .observe(seconds);
    }

    /// Count one open watch on `resource` until the guard is dropped (the client went
    /// away or the watch ended).
    pub fn watcher(self: &Arc<Self>, resource: &str) -> WatcherGuard {
        let labels = ResourceLabels {
            resource: resource.to_string(),
        };
        self.watchers.get_or_create(&labels).inc();
        WatcherGuard {
            metrics: self.clone(),
            labels,
        }
    }

    /// Open watches on `resource` now.
    pub fn watchers(&self, resource: &str) -> i64 {
        self.watchers
            .get(&ResourceLabels {
                resource: resource.to_string(),
            })
            .map(|g| g.get())
            .unwrap_or(0)
    }
}

const READ_ONLY: &str = "readOnly";
const MUTATING: &str = "mutating";

/// Keeps a request counted in `apiserver_current_inflight_requests`.
#[derive(Debug)]
pub struct InflightGuard {
    metrics: Arc<ApiMetrics>,
    labels: InflightLabels,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.metrics.inflight.get_or_create(&self.labels).dec();
    }
}

/// Keeps a watch counted in `apiserver_registered_watchers`.
#[derive(Debug)]
pub struct WatcherGuard {
    metrics: Arc<ApiMetrics>,
    labels: ResourceLabels,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.metrics.watchers.get_or_create(&self.labels).dec();
    }
}

/// The labels a request is counted under, known before it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: &'static str,
    /// Plural resource name; empty for non-resource paths (discovery, health, /metrics).
    pub resource: String,
    pub subresource: String,
}

/// The verb kube-apiserver reports for a request: `LIST` for a collection GET, `WATCH`
/// for any `?watch`, `APPLY` for a server-side apply PATCH, else the HTTP method.
pub fn request_verb(
    method: &Method,
    named: bool,
    watch: bool,
    content_type: Option<&str>,
) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if watch => "WATCH",
        Method::GET | Method::HEAD if !named => "LIST",
        Method::GET | Method::HEAD => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH
            if content_type
                .and_then(|c| c.split(';').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case(APPLY_PATCH_TYPE)) =>
        {
            "APPLY"
        }
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        // Any other method is refused; one label value keeps the series bounded.
        _ => "OTHER",
    }
}

/// Whether a query string asks for a watch (`watch`, `watch=true`, `watch=1`).
pub fn wants_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "watch" && matches!(v.as_ref(), "" | "true" | "1"))
    })
}

/// Every metric of one server. Built once, then shared read-only: metrics update through
/// atomics, collectors read their sources at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api: Arc<ApiMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the API request metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let api = Arc::new(ApiMetrics::register(&mut registry));
        crate::process_metrics::register(&mut registry);
        Metrics { registry, api }
    }

    pub fn api(&self) -> &Arc<ApiMetrics> {
        &self.api
    }

    /// Where the control plane adds its metrics and collectors before sharing `self`.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The exposition for a scrape whose Accept header is `accept`, and its Content-Type.
    pub fn render(&self, accept: Option<&str>) -> (String, &'static str) {
        render(&self.registry, accept)
    }
}

/// `registry`'s exposition for a scrape whose Accept header is `accept`, and its
/// Content-Type: the API server's `/metrics` and an agent's.
pub fn render(registry: &Registry, accept: Option<&str>) -> (String, &'static str) {
    let mut out = String::with_capacity(64 * 1024);
    // Writing to a String cannot fail; a collector's own fmt::Error would leave a
    // truncated exposition, which Prometheus reports as a failed scrape.
    if let Err(e) = encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    if wants_openmetrics(accept) {
        (out, OPENMETRICS_CONTENT_TYPE)
    } else {
        (to_text_format(&out), TEXT_CONTENT_TYPE)
    }
}

/// Prometheus sends `Accept: application/openmetrics-text;...,text/plain;...`.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            part.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/openmetrics-text")
        })
    })
}

/// OpenMetrics text → Prometheus text format 0.0.4. They differ only in metadata:
/// OpenMetrics names a counter family without its `_total` suffix, and has `# UNIT`
/// and `# EOF` lines, `info` families and `unknown` types; the samples are the same.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut counters = HashSet::new();
    let mut infos = HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            match rest.split_once(' ') {
                Some((name, "counter")) => {
                    counters.insert(name);
                }
                Some((name, "info")) => {
                    infos.insert(name);
                }
                _ => {}
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        match meta {
            Some((what, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let (name, tail) = if counters.contains(name) {
                    (format!("{name}_total"), tail)
                } else if infos.contains(name) {
                    let tail = if what == "TYPE" { "gauge" } else { tail };
                    (format!("{name}_info"), tail)
                } else if what == "TYPE" && tail == "unknown" {
                    (name.to_string(), "untyped")
                } else {
                    (name.to_string(), tail)
                };
                out.push_str("# ");
                out.push_str(what);
                out.push(' ');
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_named_as_kube_apiserver_names_them() {
        let apply = Some("application/apply-patch+yaml");
        let merge = Some("application/merge-patch+json");
        let cases: Vec<(Method, bool, bool, Option<&str>, &str)> = vec![
            (Method::GET, false, false, None, "LIST"),
            (Method::GET, true, false, None, "GET"),
            (Method::GET, false, true, None, "WATCH"),
            (Method::GET, true, true, None, "WATCH"),
            (Method::HEAD, true, false, None, "GET"),
            (Method::POST, false, false, Some("application/json"), "POST"),
            (Method::PUT, true, false, None, "PUT"),
            (Method::PATCH, true, false, merge, "PATCH"),
            (Method::PATCH, true, false, apply, "APPLY"),
            (
                Method::PATCH,
                true,
                false,
                Some("Application/Apply-Patch+YAML; charset=utf-8"),
                "APPLY",
            ),
            (Method::PATCH, true, false, None, "PATCH"),
            (Method::DELETE, true, false, None, "DELETE"),
            (Method::DELETE, false, false, None, "DELETE"),
            (Method::OPTIONS, false, false, None, "OPTIONS"),
            (Method::TRACE, false, false, None, "OTHER"),
        ];
        for (method, named, watch, ct, want) in cases {
            assert_eq!(
                request_verb(&method, named, watch, ct),
                want,
                "{method} named={named} watch={watch} {ct:?}"
            );
        }
    }

    #[test]
    fn watch_query_table() {
        let cases = [
            (None, false),
            (Some(""), false),
            (Some("watch"), true),
            (Some("watch=true"), true),
            (Some("watch=1"), true),
            (Some("watch=false"), false),
            (Some("labelSelector=a%3Db&watch=true"), true),
            (Some("watcher=true"), false),
        ];
        for (q, want) in cases {
            assert_eq!(wants_watch(q), want, "{q:?}");
        }
    }

    #[test]
    fn accept_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn text_format_renames_counter_and_info_families() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{code=\"200\"} 3\n\
                  # HELP b_bytes Size.\n# TYPE b_bytes gauge\n# UNIT b_bytes bytes\nb_bytes 7\n\
                  # HELP c Build.\n# TYPE c info\nc_info{v=\"1\"} 1\n\
                  # HELP d Unknown.\n# TYPE d unknown\nd 1\n# EOF\n";
        let want = "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{code=\"200\"} 3\n\
                    # HELP b_bytes Size.\n# TYPE b_bytes gauge\nb_bytes 7\n\
                    # HELP c_info Build.\n# TYPE c_info gauge\nc_info{v=\"1\"} 1\n\
                    # HELP d Unknown.\n# TYPE d untyped\nd 1\n";
        assert_eq!(to_text_format(om), want);
    }

    async fn get_metrics(
        svc: &crate::server::ApiService<crate::store::memory::MemoryStore>,
        token: Option<&str>,
        accept: Option<&str>,
    ) -> (u16, String, String) {
        use http_body_util::BodyExt;
        let mut req = http::Request::get("/metrics");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = svc.handle(req, &crate::server::Peer::default()).await;
        let code = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (code, ct, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_endpoint_needs_a_reader_and_negotiates_the_format() {
        use crate::auth::{Authenticator, User, MASTERS_GROUP, METRICS_GROUP};
        let auth = Authenticator::new([
            (
                "reader-token".to_string(),
                User::new("kith-metrics", [METRICS_GROUP]),
            ),
            (
                "admin-token".to_string(),
                User::new("admin", [MASTERS_GROUP]),
            ),
            ("other-token".to_string(), User::new("alice", ["devs"])),
        ]);
        let api = Arc::new(crate::handler::Api::new(
            crate::store::memory::MemoryStore::default(),
        ));
        let svc = crate::server::ApiService::new(api, auth);
        let cases = [
            (None, None, 401, ""),
            (Some("wrong"), None, 401, ""),
            (Some("other-token"), None, 403, ""),
            (Some("reader-token"), None, 200, TEXT_CONTENT_TYPE),
            (Some("admin-token"), Some("*/*"), 200, TEXT_CONTENT_TYPE),
            (
                Some("reader-token"),
                Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
                200,
                OPENMETRICS_CONTENT_TYPE,
            ),
        ];
        for (token, accept, want_code, want_ct) in cases {
            let (code, ct, body) = get_metrics(&svc, token, accept).await;
            assert_eq!(code, want_code, "{token:?} {accept:?}: {body}");
            if code == 200 {
                assert_eq!(ct, want_ct);
                assert!(
                    body.contains("# TYPE apiserver_request_total counter")
                        || body.contains("# TYPE apiserver_request counter"),
                    "{body}"
                );
            }
        }
        // Every request above was counted, refused ones included, under the non-resource
        // labels.
        let (_, _, text) = get_metrics(&svc, Some("reader-token"), None).await;
        for want in [
            "apiserver_request_total{verb=\"GET\",resource=\"\",subresource=\"\",code=\"401\"} 2",
            "apiserver_request_total{verb=\"GET\",resource=\"\",subresource=\"\",code=\"403\"} 1",
            "apiserver_request_total{verb=\"GET\",resource=\"\",subresource=\"\",code=\"200\"} 3",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn requests_are_counted_and_guards_release() {
        let m = Metrics::new();
        let api = m.api().clone();
        let info = RequestInfo {
            verb: "LIST",
            resource: "pods".into(),
            subresource: String::new(),
        };
        {
            let _g = api.inflight("LIST");
            let _w = api.watcher("pods");
            assert_eq!(api.watchers("pods"), 1);
            let (text, _) = m.render(None);
            assert!(
                text.contains("apiserver_current_inflight_requests{request_kind=\"readOnly\"} 1"),
                "{text}"
            );
            assert!(api.inflight("WATCH").is_none());
        }
        assert_eq!(api.watchers("pods"), 0);
        api.observe(&info, 200, 0.03);
        api.observe(&info, 200, 0.002);
        let (text, ct) = m.render(None);
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        for want in [
            "# TYPE apiserver_request_total counter",
            "apiserver_request_total{verb=\"LIST\",resource=\"pods\",subresource=\"\",code=\"200\"} 2",
            "apiserver_request_duration_seconds_bucket{le=\"0.005\",verb=\"LIST\",resource=\"pods\"} 1",
            "apiserver_request_duration_seconds_bucket{le=\"0.05\",verb=\"LIST\",resource=\"pods\"} 2",
            "apiserver_request_duration_seconds_count{verb=\"LIST\",resource=\"pods\"} 2",
            "apiserver_current_inflight_requests{request_kind=\"readOnly\"} 0",
            "apiserver_registered_watchers{resource=\"pods\"} 0",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        let (om, ct) = m.render(Some("application/openmetrics-text; version=1.0.0"));
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(om.ends_with("# EOF\n"));
    }
}
