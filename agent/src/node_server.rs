//! The node's HTTPS port: how the API server reaches this box's logs, exec and stats (the
//! other end of [`kith_api::remote_node`]).
//!
//! ```text
//!  TCP :10250 ─► rustls: a client certificate of the cluster CA is required
//!             ─► its CN must be kith-apiserver, else 403
//!             ─► POST /kith/v1/logs         ─► NodeConnector::logs  ─► streamed body
//!                POST /kith/v1/exec/check   ─► NodeExec::check
//!                GET  /kith/v1/exec         ─► NodeExec::exec, websocket ─► exec::pump
//!                GET  /kith/v1/stats        ─► NodeStatsSource (nodes, pods)
//!                GET  /metrics              ─► the agent's registry (Prometheus, through
//!                                              the API server's nodes/{name}/proxy/metrics)
//! ```
//! The answers come from the same [`crate::server::LocalNode`] and [`crate::stats::Stats`]
//! a one-box `kith up` calls in-process.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use kith_api::error::ApiError;
use kith_api::exec::{self, ExecQuery, ExecTarget, NodeExec};
use kith_api::join::APISERVER_USER;
use kith_api::node_metrics::NodeStatsSource;
use kith_api::nodes::NodeConnector;
use kith_api::remote_node::{self as wire, LogsRequest, NodeStats};
use kith_api::server::{error_response, Body};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// The serving certificate and key a node got at join, under its data dir.
pub const SERVING_CERT: &str = "serving.crt";
pub const SERVING_KEY: &str = "serving.key";
/// Request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeServerError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the node's TLS credentials: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What the port serves.
pub struct NodeServer {
    pub logs: Arc<dyn NodeConnector>,
    pub exec: Arc<dyn NodeExec>,
    pub stats: Arc<dyn NodeStatsSource>,
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// Whether the verified client certificate `der` is the API server's.
pub fn authorized(der: Option<&[u8]>) -> bool {
    let auth = kith_api::auth::Authenticator::new(Vec::<(String, kith_api::auth::User)>::new());
    der.and_then(|d| auth.authenticate(None, Some(d)).ok())
        .is_some_and(|u| u.name == APISERVER_USER)
}

/// TLS for the port: the node's serving certificate; client certificates required and
/// checked against the cluster CA `ca_pem`.
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, NodeServerError> {
    let tls = |e: String| NodeServerError::Tls(e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| tls(format!("the CA: {e}")))?)
            .map_err(|e| tls(format!("the CA: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("the serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| tls(format!("the serving key: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// [`tls_config`] from the files join wrote under `dir` and the CA `ca_pem`; `None` when
/// the node has no serving certificate (it joined before nodes got one).
pub fn tls_from_dir(
    dir: &Path,
    ca_pem: &str,
) -> Result<Option<Arc<rustls::ServerConfig>>, NodeServerError> {
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NodeServerError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    };
    match (read(SERVING_CERT)?, read(SERVING_KEY)?) {
        (Some(cert), Some(key)) => tls_config(ca_pem, &cert, &key).map(Some),
        _ => Ok(None),
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json(v: &impl serde::Serialize) -> Response<Body> {
    let body = match serde_json::to_vec(v) {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::Internal(e.to_string())),
    };
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

impl NodeServer {
    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        peer_ok: bool,
    ) -> Result<Response<Body>, ApiError> {
        if !peer_ok {
            return Err(ApiError::Forbidden(format!(
                "this port serves only {APISERVER_USER}"
            )));
        }
        match (req.method().clone(), req.uri().path()) {
            (Method::POST, wire::LOGS_PATH) => {
                let r: LogsRequest = read_json(req).await?;
                let mut stream = self.logs.logs(r.target, r.query).await?;
                // Through a channel: the body must be Sync, the node's stream is not. The
                // client going away ends the send, which drops the stream (and a follow).
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
                tokio::spawn(async move {
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(b) => {
                                if tx.send(b).await.is_err() {
                                    break;
                                }
                            }
                            // A read error ends the body early: the client sees a short log.
                            Err(e) => {
                                tracing::debug!(error = %e, "log stream");
                                break;
                            }
                        }
                    }
                });
                let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                    .map(|b| Ok::<_, Infallible>(Frame::data(b)));
                let mut r = Response::new(BodyExt::boxed(StreamBody::new(body)));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                Ok(r)
            }
            (Method::POST, wire::EXEC_CHECK_PATH) => {
                let target: ExecTarget = read_json(req).await?;
                self.exec.check(&target).await?;
                Ok(Response::new(full(Bytes::new())))
            }
            (Method::GET, wire::EXEC_PATH) => self.exec_upgrade(req).await,
            (Method::GET, wire::STATS_PATH) => Ok(json(&NodeStats {
                nodes: self.stats.nodes().await?,
                pods: self.stats.pods().await?,
            })),
            (Method::GET, wire::METRICS_PATH) => {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (text, content_type) = kith_api::metrics::render(&self.metrics, accept);
                let mut r = Response::new(full(text));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                Ok(r)
            }
            _ => Err(ApiError::NoRoute),
        }
    }

    /// The exec websocket: every error is answered before the upgrade, as the API server
    /// does for kubectl; after it, [`exec::pump`] carries the session.
    async fn exec_upgrade(
        &self,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let target: ExecTarget = req
            .headers()
            .get(wire::EXEC_TARGET_HEADER)
            .and_then(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .ok()
            })
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!("missing or invalid {}", wire::EXEC_TARGET_HEADER))
            })?;
        // Every stream goes to the API server, which forwards what its client asked for.
        let q = ExecQuery {
            command: target.command.clone(),
            container: Some(target.pod.container.clone()),
            stdin: target.stdin,
            stdout: true,
            stderr: true,
            tty: target.tty,
        };
        exec::accept_upgrade(&mut req, q, self.exec.exec(target)).await
    }
}

/// Serve `server` on `listener` with `tls` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: Arc<NodeServer>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "node port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "node port: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let peer_ok = authorized(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref()),
            );
            if !peer_ok {
                tracing::info!(%addr, "node port: a client that is not the API server");
            }
            let svc = hyper::service::service_fn(move |req| {
                let server = Arc::clone(&server);
                async move {
                    let resp = server
                        .handle(req, peer_ok)
                        .await
                        .unwrap_or_else(|e| error_response(&e));
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%addr, error = %e, "node port: connection ended with an error");
            }
        });
    }
}

/// Open the node's port for `opts` when join gave this node a serving certificate (next
/// to `kubeconfig`, whose CA checks the API server): the serving task, or `None` (with a
/// warning) for a node that joined before nodes got one.
pub async fn start(
    opts: &crate::run::AgentOptions,
    stats: Arc<crate::stats::Stats>,
    kubeconfig: &Path,
) -> Result<Option<tokio::task::JoinHandle<()>>, NodeServerError> {
    let ca = crate::join::read_kubeconfig(kubeconfig)
        .map_err(|e| NodeServerError::Tls(e.to_string()))?
        .credentials
        .ca;
    let dir = kubeconfig.parent().unwrap_or(Path::new("."));
    let Some(tls) = tls_from_dir(dir, &ca)? else {
        tracing::warn!(
            "no serving certificate in {}: the API server can not reach this node for logs, \
             exec or stats (join again to get one)",
            dir.display()
        );
        return Ok(None);
    };
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], opts.node_port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeServerError::Bind { addr, source })?;
    let node = Arc::new(opts.local_node());
    let server = Arc::new(NodeServer {
        logs: node.clone(),
        exec: node,
        metrics: Arc::new(stats.agent_registry()),
        stats,
    });
    tracing::info!(%addr, "node port serving the API server");
    Ok(Some(tokio::spawn(serve(
        listener,
        tls,
        server,
        std::future::pending(),
    ))))
}
