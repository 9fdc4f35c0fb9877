//! The HTTPS server: one hyper service that authenticates, routes and renders every
//! request, on a rustls listener.
//!
//! ```text
//!  TCP ─▶ rustls (client cert optional) ─▶ hyper (h2 | http/1.1) ─▶ ApiService::handle
//!          │                                                        ├─ /version /livez /readyz /healthz   (no auth)
//!          └─ peer cert ─▶ Authenticator ─▶ authorize ──────────────┼─ /api /apis /openapi/v3            (discovery)
//!                                                                   ├─ /metrics                           (metrics::Metrics)
//!                                                                   └─ resources ─▶ handler::Api ─▶ ObjectStore
//! ```
//!
//! Every request is counted and timed in [`crate::metrics`] under the verb and resource
//! kube-apiserver would report.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::auth::{authorize, Authenticator, User};
use crate::error::{ApiError, MAX_BODY_BYTES};
use crate::handler::{body_type_for, decode_body, Api, DeleteOptions, Reply};
use crate::metrics::{request_verb, wants_watch, Metrics, RequestInfo, WatcherGuard};
use crate::request::{parse_query, route, ResourceRoute, Route};
use crate::store::ObjectStore;
use crate::watch::{self, Render};
use crate::{discovery, openapi};

pub type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Who is calling, as established by the connection.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The verified client certificate (DER), if one was presented.
    pub cert: Option<Vec<u8>>,
    /// In-process callers (controllers) are trusted as this user without credentials.
    pub trusted: Option<User>,
}

/// Where a new control box gets the region's credentials (see [`crate::join`]).
pub const JOIN_CONTROL_PATH: &str = "/kith/v1/join/control";

/// The bearer token of a request, if it carries one.
fn bearer<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token)
        .map(str::to_string)
}

/// Serving readiness: `/readyz` answers `ok` only once the store is ready.
pub struct ApiService<S> {
    api: Arc<Api<S>>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    /// How `pods/log` reaches the agents; set once they exist.
    nodes: std::sync::OnceLock<Arc<dyn crate::nodes::NodeConnector>>,
    /// Serves `/cacerts` and `/kith/v1/join` when set.
    joiner: std::sync::OnceLock<Arc<dyn crate::join::Joiner>>,
    /// Where `metrics.k8s.io` (kubectl top) gets resource use; set once agents exist.
    node_stats: std::sync::OnceLock<Arc<dyn crate::node_metrics::NodeStatsSource>>,
    /// How `pods/exec` reaches the agents; set once they exist.
    exec: std::sync::OnceLock<Arc<dyn crate::exec::NodeExec>>,
    /// How `nodes/{name}/proxy/metrics` reaches the agents; set once they exist.
    proxy: std::sync::OnceLock<Arc<dyn crate::nodes::NodeProxy>>,
}

impl<S: ObjectStore> ApiService<S> {
    /// A service whose `/metrics` shows only the API's own request metrics.
    pub fn new(api: Arc<Api<S>>, auth: Authenticator) -> Arc<Self> {
        Self::with_metrics(api, auth, Arc::new(Metrics::new()))
    }

    /// A service that records into, and serves at `/metrics`, this registry.
    pub fn with_metrics(api: Arc<Api<S>>, auth: Authenticator, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(ApiService {
            api,
            auth,
            metrics,
            nodes: std::sync::OnceLock::new(),
            joiner: std::sync::OnceLock::new(),
            node_stats: std::sync::OnceLock::new(),
            exec: std::sync::OnceLock::new(),
            proxy: std::sync::OnceLock::new(),
        })
    }

    /// Let boxes join with join tokens from now on (a second call is ignored).
    pub fn set_joiner(&self, joiner: Arc<dyn crate::join::Joiner>) {
        let _ = self.joiner.set(joiner);
    }

    /// `/cacerts` and `/kith/v1/join`: answered before any authentication, since the
    /// joiner has no credentials yet (the join token is checked by the joiner).
    async fn join_routes<B>(&self, req: Request<B>) -> Option<Result<Response<Body>, ApiError>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let joiner = self.joiner.get()?.clone();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/cacerts") => Some(Ok(text(StatusCode::OK, joiner.ca_pem()))),
            (&Method::POST, JOIN_CONTROL_PATH) => {
                // Taken before awaiting: the request (its body) is not `Sync`, so the
                // future must not borrow it.
                let token = bearer(&req);
                Some(
                    async move {
                        let token = token.ok_or(ApiError::Unauthorized)?;
                        let bundle = joiner.join_control(&token).await?;
                        let value = serde_json::to_value(bundle)
                            .map_err(|e| ApiError::Internal(e.to_string()))?;
                        Ok(json_response(StatusCode::OK, &value, &[]))
                    }
                    .await,
                )
            }
            (&Method::POST, "/kith/v1/join") => Some(
                async {
                    let token = bearer(&req).ok_or(ApiError::Unauthorized)?;
                    let body = read_body(req).await?;
                    let join = crate::join::parse_request(&body)?;
                    let reply = joiner.join(&token, &join).await?;
                    let value = serde_json::to_value(reply)
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    Ok(json_response(StatusCode::OK, &value, &[]))
                }
                .await,
            ),
            _ => None,
        }
    }

    /// Route `pods/log` to `nodes` from now on (a second call is ignored).
    pub fn set_node_connector(&self, nodes: Arc<dyn crate::nodes::NodeConnector>) {
        let _ = self.nodes.set(nodes);
    }

    /// Answer `metrics.k8s.io` from `stats` from now on (a second call is ignored).
    pub fn set_node_stats(&self, stats: Arc<dyn crate::node_metrics::NodeStatsSource>) {
        let _ = self.node_stats.set(stats);
    }

    /// `GET /apis/metrics.k8s.io/v1beta1/...` (kubectl top).
    async fn node_metrics(
        &self,
        route: &crate::node_metrics::MetricsRoute,
        query: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        crate::node_metrics::check_query(query)?;
        let source = self
            .node_stats
            .get()
            .ok_or_else(|| ApiError::Unavailable("no node reports resource metrics yet".into()))?;
        let body = crate::node_metrics::serve(route, source.as_ref()).await?;
        Ok(json_response(StatusCode::OK, &body, &[]))
    }

    /// Route `nodes/{name}/proxy/...` to `proxy` from now on (a second call is ignored).
    pub fn set_node_proxy(&self, proxy: Arc<dyn crate::nodes::NodeProxy>) {
        let _ = self.proxy.set(proxy);
    }

    /// `GET /api/v1/nodes/{node}/proxy/{path}`: the agent's answer, passed through.
    async fn node_proxy(
        &self,
        method: &Method,
        node: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        if method != Method::GET {
            return Err(ApiError::MethodNotAllowed {
                target: crate::error::Target {
                    group: String::new(),
                    resource: "nodes/proxy".into(),
                    kind: "Node".into(),
                    name: node.into(),
                },
                verb: method.as_str().to_ascii_lowercase(),
            });
        }
        let proxy = self.proxy.get().ok_or_else(|| {
            ApiError::Unavailable(format!("the node {node} can not be reached yet"))
        })?;
        let got = proxy.get(node, path, accept).await?;
        let mut r = Response::new(full(got.body));
        let ct = HeaderValue::from_str(&got.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("text/plain"));
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
        Ok(r)
    }

    /// Route `pods/exec` to `exec` from now on (a second call is ignored).
    pub fn set_node_exec(&self, exec: Arc<dyn crate::exec::NodeExec>) {
        let _ = self.exec.set(exec);
    }

    /// `GET|POST pods/{name}/exec` and `pods/{name}/attach`: every error is answered before
    /// the websocket upgrade;
    /// after it, [`crate::exec::pump`] carries the session.
    async fn pod_exec<B>(
        &self,
        mut req: Request<B>,
        r: &ResourceRoute,
    ) -> Result<Response<Body>, ApiError> {
        use crate::exec;
        let attach = r.subresource.as_deref() == Some("attach");
        let mut q = exec::ExecQuery::parse(req.uri().query().unwrap_or_default(), attach)?;
        if attach {
            // An attach target is an exec target without a command (see ExecTarget).
            q.command.clear();
        }
        let name = r.name.as_deref().unwrap_or_default();
        let pod = self
            .api
            .get_object(
                r.kind,
                r.namespace.as_deref(),
                name,
                crate::store::ReadMode::Linearizable,
            )
            .await?;
        let target = exec::exec_target(&pod, &q)?;
        let nodes = self.exec.get().ok_or_else(|| {
            ApiError::BadRequest(format!(
                "the node {} of pod {name} can not be reached for exec",
                target.pod.node
            ))
        })?;
        nodes.check(&target).await?;
        exec::accept_upgrade(&mut req, q, nodes.exec(target)).await
    }

    /// `GET pods/{name}/log`: the pod says which node and container; the node streams.
    async fn pod_logs(
        &self,
        r: &ResourceRoute,
        query: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let q = crate::nodes::LogQuery::parse(query.unwrap_or_default())?;
        let name = r.name.as_deref().unwrap_or_default();
        let pod = self
            .api
            .get_object(
                r.kind,
                r.namespace.as_deref(),
                name,
                crate::store::ReadMode::Linearizable,
            )
            .await?;
        let target = crate::nodes::log_target(&pod, &q)?;
        let nodes = self.nodes.get().ok_or_else(|| {
            ApiError::BadRequest(format!(
                "the node {} of pod {name} can not be reached for logs",
                target.node
            ))
        })?;
        let mut stream = nodes.logs(target, q).await?;
        // A channel between the node's stream and the body: the client going away ends the
        // send, which drops the stream (and stops a follow).
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) => {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "log stream");
                        break;
                    }
                }
            }
        });
        Ok(stream_response(rx, "text/plain"))
    }

    pub fn api(&self) -> &Arc<Api<S>> {
        &self.api
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handle one request end to end; never fails (errors become `Status` replies).
    pub async fn handle<B>(&self, req: Request<B>, peer: &Peer) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let info = request_info(&req);
        let api_metrics = self.metrics.api();
        let inflight = api_metrics.inflight(info.verb);
        let started = std::time::Instant::now();
        let mut resp = match self.route_request(req, peer).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        drop(inflight);
        let code = resp.status().as_u16();
        let elapsed = started.elapsed();
        api_metrics.observe(&info, code, elapsed.as_secs_f64());
        if info.verb == "WATCH" && resp.status().is_success() {
            // Counted as long as the client holds the stream open.
            let guard = api_metrics.watcher(&info.resource);
            resp = resp.map(|body| {
                BodyExt::boxed(Watched {
                    inner: body,
                    _guard: guard,
                })
            });
        }
        tracing::debug!(%method, %path, code, elapsed_ms = elapsed.as_millis() as u64, "request");
        resp
    }

    async fn route_request<B>(
        &self,
        req: Request<B>,
        peer: &Peer,
    ) -> Result<Response<Body>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        if path == "/cacerts" || path == "/kith/v1/join" || path == JOIN_CONTROL_PATH {
            if let Some(reply) = self.join_routes(req).await {
                return reply;
            }
            return Err(ApiError::NoRoute);
        }
        let r = route(&path);
        // Health and version are public, as on kube-apiserver.
        match &r {
            Ok(Route::Health) => return Ok(text(StatusCode::OK, "ok")),
            Ok(Route::Version) => {
                return Ok(json_response(StatusCode::OK, &discovery::version(), &[]))
            }
            _ => {}
        }
        let user = match &peer.trusted {
            Some(u) => u.clone(),
            None => {
                let authz = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                self.auth.authenticate(authz, peer.cert.as_deref())?
            }
        };
        authorize(&user, &req.method().as_str().to_ascii_lowercase(), &path)?;
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if path == "/metrics" && req.method() == Method::GET {
            let (text, content_type) = self.metrics.render(accept.as_deref());
            let mut r = Response::new(full(text));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return Ok(r);
        }
        if let Some(m) = crate::node_metrics::route(&path) {
            if req.method() != Method::GET {
                return Err(ApiError::MethodNotAllowed {
                    target: crate::error::Target {
                        group: crate::node_metrics::GROUP.into(),
                        resource: path.rsplit('/').next().unwrap_or_default().into(),
                        kind: String::new(),
                        name: String::new(),
                    },
                    verb: req.method().as_str().to_ascii_lowercase(),
                });
            }
            return self.node_metrics(&m?, req.uri().query()).await;
        }
        let r = r?;
        match r {
            Route::Health | Route::Version => Err(ApiError::NoRoute),
            Route::NodeProxy { node, path } => {
                self.node_proxy(req.method(), &node, &path, accept.as_deref())
                    .await
            }
            Route::Discovery { core } => {
                if accept.as_deref().is_some_and(discovery::wants_aggregated) {
                    let body = discovery::aggregated(core);
                    Ok(json_with_type(
                        StatusCode::OK,
                        &body,
                        discovery::AGGREGATED_CONTENT_TYPE,
                    ))
                } else if core {
                    Ok(json_response(
                        StatusCode::OK,
                        &discovery::api_versions(),
                        &[],
                    ))
                } else {
                    Ok(json_response(
                        StatusCode::OK,
                        &discovery::api_group_list(),
                        &[],
                    ))
                }
            }
            Route::Group(g) => {
                let list = discovery::api_group_list();
                let group = list["groups"]
                    .as_array()
                    .and_then(|gs| gs.iter().find(|x| x["name"] == g.as_str()))
                    .cloned()
                    .ok_or(ApiError::NoRoute)?;
                let mut body = group;
                body["kind"] = Value::from("APIGroup");
                body["apiVersion"] = Value::from("v1");
                Ok(json_response(StatusCode::OK, &body, &[]))
            }
            Route::ResourceList { group, version } => {
                let body =
                    discovery::api_resource_list(&group, &version).ok_or(ApiError::NoRoute)?;
                Ok(json_response(StatusCode::OK, &body, &[]))
            }
            Route::OpenApiIndex => Ok(json_response(StatusCode::OK, &openapi::index(), &[])),
            Route::OpenApiV2 => {
                let protobuf = accept.as_deref().is_some_and(|a| a.contains("protobuf"));
                let mut r = Response::new(full(openapi::v2_document(protobuf)));
                let ct = if protobuf {
                    openapi::V2_PROTOBUF
                } else {
                    "application/json"
                };
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
                Ok(r)
            }
            Route::OpenApiDoc { group, version } => {
                // Documents are built once and served as the same bytes every time.
                let doc = openapi::group_version_json(&group, &version).ok_or(ApiError::NoRoute)?;
                let mut r = Response::new(full(Bytes::from_static(doc)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok(r)
            }
            Route::Resource(rr)
                if rr.kind.plural == "pods"
                    && rr.kind.group.is_empty()
                    && rr.subresource.as_deref() == Some("log")
                    && req.method() == Method::GET =>
            {
                self.pod_logs(&rr, req.uri().query()).await
            }
            Route::Resource(rr)
                if rr.kind.plural == "pods"
                    && rr.kind.group.is_empty()
                    && matches!(rr.subresource.as_deref(), Some("exec" | "attach"))
                    && (req.method() == Method::GET || req.method() == Method::POST) =>
            {
                self.pod_exec(req, &rr).await
            }
            Route::Resource(rr) => self.resource(req, rr, accept.as_deref(), &user).await,
        }
    }

    async fn resource<B>(
        &self,
        req: Request<B>,
        r: ResourceRoute,
        accept: Option<&str>,
        user: &User,
    ) -> Result<Response<Body>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let query_str = req.uri().query().map(str::to_string);
        let q = parse_query(query_str.as_deref())?;
        let include = query_str.as_deref().and_then(|qs| {
            form_urlencoded::parse(qs.as_bytes())
                .find(|(k, _)| k == "includeObject")
                .map(|(_, v)| v.into_owned())
        });
        let render = Render::from_accept(accept, include.as_deref())?;
        let method = req.method().clone();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let manager = q
            .field_manager
            .clone()
            .unwrap_or_else(|| default_manager(&user_agent, &user.name));
        let api = &self.api;
        let now = api.now();
        let reply = match (&method, &r.name) {
            (&Method::GET, None) if q.watch => {
                let rx = watch::start(api, &r, &q, render)?;
                return Ok(stream_response(rx, "application/json"));
            }
            (&Method::GET, Some(_)) if q.watch => {
                // `?watch` on a single object is a watch with a name field selector.
                let mut q2 = q;
                let name = r.name.clone().unwrap_or_default();
                q2.field_selector = Some(match q2.field_selector {
                    Some(f) => format!("{f},metadata.name={name}"),
                    None => format!("metadata.name={name}"),
                });
                let rr = ResourceRoute {
                    kind: r.kind,
                    namespace: r.namespace.clone(),
                    name: None,
                    subresource: None,
                };
                let rx = watch::start(api, &rr, &q2, render)?;
                return Ok(stream_response(rx, "application/json"));
            }
            (&Method::GET, None) => {
                let page = api.list(&r, &q).await?;
                let mut meta = serde_json::json!({"resourceVersion": page.revision.to_string()});
                if let Some(c) = page.continue_token {
                    meta["continue"] = c.into();
                }
                if let Some(n) = page.remaining {
                    meta["remainingItemCount"] = n.into();
                }
                Reply {
                    code: 200,
                    body: watch::render_list(r.kind, page.items, meta, render, now),
                    warnings: vec![],
                }
            }
            (&Method::GET, Some(_)) => {
                let mut reply = api.get(&r, &q).await?;
                if r.subresource.is_none() {
                    reply.body = watch::render_object(r.kind, reply.body, render, now);
                }
                reply
            }
            (&Method::POST, _) => {
                let ty = body_type_for(&method, content_type.as_deref())?;
                let body = read_body(req).await?;
                let obj = decode_body(&body, ty)?;
                api.create(&r, &q, obj, &manager).await?
            }
            (&Method::PUT, Some(_)) => {
                let ty = body_type_for(&method, content_type.as_deref())?;
                let body = read_body(req).await?;
                let obj = decode_body(&body, ty)?;
                api.update(&r, &q, obj, &manager).await?
            }
            (&Method::PATCH, Some(_)) => {
                let ty = body_type_for(&method, content_type.as_deref())?;
                let body = read_body(req).await?;
                api.patch(&r, &q, ty, &body, &manager).await?
            }
            (&Method::DELETE, Some(_)) => {
                let body = read_body(req).await?;
                let opts = DeleteOptions::from_body(&body)?;
                api.delete(&r, &q, &opts).await?
            }
            (&Method::DELETE, None) => {
                let body = read_body(req).await?;
                let opts = DeleteOptions::from_body(&body)?;
                api.delete_collection(&r, &q, &opts).await?
            }
            _ => {
                return Err(ApiError::MethodNotAllowed {
                    target: crate::error::Target {
                        group: r.kind.group.into(),
                        resource: r.kind.plural.into(),
                        kind: r.kind.kind.into(),
                        name: r.name.clone().unwrap_or_default(),
                    },
                    verb: method.to_string(),
                })
            }
        };
        let code = StatusCode::from_u16(reply.code).unwrap_or(StatusCode::OK);
        Ok(json_response(code, &reply.body, &reply.warnings))
    }
}

/// The labels a request is counted under: its verb as kube-apiserver names it and, for
/// resource requests, the resource and subresource (from the kinds registry, so bounded).
fn request_info<B>(req: &Request<B>) -> RequestInfo {
    let (resource, subresource, named) = match route(req.uri().path()) {
        Ok(Route::Resource(r)) => (
            r.kind.plural.to_string(),
            r.subresource.clone().unwrap_or_default(),
            r.name.is_some(),
        ),
        Ok(Route::NodeProxy { .. }) => ("nodes".into(), "proxy".into(), true),
        // Non-resource paths are one object each: GET, not LIST.
        _ => (String::new(), String::new(), true),
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    RequestInfo {
        verb: request_verb(
            req.method(),
            named,
            wants_watch(req.uri().query()),
            content_type,
        ),
        resource,
        subresource,
    }
}

/// A watch body that keeps its watcher counted until hyper drops it.
struct Watched {
    inner: Body,
    _guard: WatcherGuard,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The field manager Kubernetes derives from a client's User-Agent when none is given.
fn default_manager(user_agent: &str, user: &str) -> String {
    let first = user_agent.split('/').next().unwrap_or("").trim();
    if first.is_empty() {
        user.to_string()
    } else {
        first.chars().take(128).collect()
    }
}

async fn read_body<B>(req: Request<B>) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok())
    {
        if len > MAX_BODY_BYTES {
            return Err(ApiError::TooLarge);
        }
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge)
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "error reading request body: {e}"
        ))),
    }
}

fn text(code: StatusCode, s: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(s));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_with_type(code: StatusCode, body: &Value, ct: &'static str) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response<Body> {
    let mut r = json_with_type(code, body, "application/json");
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.status(), &[])
}

fn stream_response(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

/// Serve HTTPS on `listener` until `shutdown` completes.
pub async fn serve<S: ObjectStore>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<ApiService<S>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, tls, shutdown, move |req, peer| {
        let service = service.clone();
        async move { service.handle(req, &peer).await }
    })
    .await
}

/// The TLS accept loop under every kith HTTPS server (the API, the Raft peer port): each
/// connection is handshaken (10 s at most), its verified client certificate recorded in a
/// [`Peer`], and its requests (HTTP/1.1 with upgrades, or HTTP/2) handed to `handle`.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
    handle: H,
) where
    H: Fn(Request<hyper::body::Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec());
            let peer = Arc::new(Peer {
                cert,
                trusted: None,
            });
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = handle(req, peer.clone());
                async move { Ok::<_, Infallible>(response.await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
}
