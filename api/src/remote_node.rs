//! The API server reaching the agents of other boxes for logs, exec and stats: HTTPS with
//! both ends authenticated by the cluster CA.
//!
//! ```text
//!  pods/log · pods/exec · metrics.k8s.io
//!        │
//!  RemoteNodes ─┬─ the in-process agent's node ─► its LocalNode / Stats, as before
//!               └─ any other node: Node.status InternalIP + daemonEndpoints.kubeletEndpoint.port
//!                    mutual TLS: client cert CN kith-apiserver ⇄ the node's serving cert,
//!                    checked against the cluster CA and the node's IP
//!                  POST /kith/v1/logs        {target, query}   → log bytes (streamed)
//!                  POST /kith/v1/exec/check  ExecTarget        → 200 | Status
//!                  GET  /kith/v1/exec  (target: header)  websocket v5.channel.k8s.io
//!                                                              → ExecStreams
//!                  GET  /kith/v1/stats                         → {nodes, pods}
//! ```
//! The node's side is `kith_agent::node_server`; the paths and bodies here are shared by
//! both. Exec reuses the Kubernetes channel protocol of [`crate::exec`] on the hop to the
//! node, so the node runs the same [`crate::exec::pump`] the API server runs for kubectl.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::ApiError;
use crate::exec::{self, ExecStreams, ExecTarget, NodeExec};
use crate::node_metrics::{NodeStatsSource, NodeUsage, PodUsage, StatsFuture};
use crate::nodes::{ByteStream, LogQuery, LogTarget, NodeConnector, NodeProxy, Proxied};

pub const LOGS_PATH: &str = "/kith/v1/logs";
pub const EXEC_CHECK_PATH: &str = "/kith/v1/exec/check";
pub const EXEC_PATH: &str = "/kith/v1/exec";
pub const STATS_PATH: &str = "/kith/v1/stats";
/// The agent's Prometheus metrics (the API server's node proxy reads them).
pub const METRICS_PATH: &str = "/metrics";
/// The most an agent's `/metrics` may hold.
const MAX_METRICS: usize = 16 << 20;
/// The exec websocket's target: the [`ExecTarget`] as JSON, base64 (standard).
pub const EXEC_TARGET_HEADER: &str = "x-kith-exec-target";
/// The port a node serves on when its Node does not say.
pub const DEFAULT_NODE_PORT: u16 = 10250;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stats of a node that does not answer in this time are left out of the answer.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// The body of `POST /kith/v1/logs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub target: LogTarget,
    pub query: LogQuery,
}

/// The body of `GET /kith/v1/stats`: the node's own use and its pods'.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    pub nodes: Vec<NodeUsage>,
    pub pods: Vec<PodUsage>,
}

/// The API server's credentials toward nodes (PEM): the cluster CA (nodes' serving
/// certificates chain to it) and a client certificate with CN
/// [`crate::join::APISERVER_USER`].
#[derive(Clone)]
pub struct ClientIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Leaves the key out.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the API server's node credentials: {0}")]
    Credentials(String),
}

/// The agent running inside the API server's process, reached without a network hop.
pub struct LocalParts {
    pub name: String,
    pub logs: Arc<dyn NodeConnector>,
    pub exec: Arc<dyn NodeExec>,
    pub stats: Arc<dyn NodeStatsSource>,
    /// The agent's `/metrics` (its series and the process's).
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// Logs, exec and stats of every node: the local one in-process, the others over HTTPS.
pub struct RemoteNodes {
    nodes: kube::Api<Node>,
    client: NodeClient,
    local: Option<LocalParts>,
}

/// Where a Node's agent serves: its first InternalIP and its kubelet endpoint port.
pub fn endpoint_of(node: &Node) -> Option<SocketAddr> {
    let status = node.status.as_ref()?;
    let ip: IpAddr = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    let port = status
        .daemon_endpoints
        .as_ref()
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .and_then(|e| u16::try_from(e.port).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_NODE_PORT);
    Some(SocketAddr::new(ip, port))
}

/// The error a node answered with (`code`, a Status or plain text), as the API server's
/// own: the caller's mistakes stay 400s; the node refusing the API server is an internal
/// error, not the caller's.
pub fn error_from_status(code: u16, body: &[u8]) -> ApiError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    match code {
        400 | 404 | 422 => ApiError::BadRequest(message),
        401 | 403 => ApiError::Internal(format!("the node refused the API server: {message}")),
        503 => ApiError::Unavailable(message),
        504 => ApiError::Timeout(message),
        _ => ApiError::Internal(message),
    }
}

/// The exit code in the Status that ends an exec on the error channel (the inverse of
/// [`exec::exit_status`]); `Err` with the message of any other failure.
pub fn exit_from_status(v: &Value) -> Result<i32, String> {
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode" {
        let code = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(v["message"]
        .as_str()
        .unwrap_or("the exec failed on the node")
        .to_string())
}

/// Aborts the tasks of an exec session when the session's exit future goes away: that
/// closes the websocket, and the node stops the process.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The process at the other end of a `v5.channel.k8s.io` websocket, as [`ExecStreams`]:
/// channels 1 and 2 become stdout and stderr, the Status on channel 3 the exit code, and
/// stdin (when asked for) goes out on channel 0, its end as the v5 close message, and
/// terminal sizes on channel 4.
pub fn streams_over<S>(ws: WebSocketStream<S>, stdin: bool) -> ExecStreams
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
    let (mut err_w, err_r) = tokio::io::duplex(64 * 1024);
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<Result<i32, String>>();
    let reader = tokio::spawn(async move {
        let mut exit = Err("the node ended the exec without an exit status".to_string());
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            match channel {
                // A reader that went away only means nobody wants that stream.
                exec::STDOUT => {
                    let _ = out_w.write_all(rest).await;
                }
                exec::STDERR => {
                    let _ = err_w.write_all(rest).await;
                }
                exec::ERROR => {
                    exit = serde_json::from_slice::<Value>(rest)
                        .map_err(|e| format!("the node's exit status: {e}"))
                        .and_then(|v| exit_from_status(&v));
                }
                _ => {}
            }
        }
        drop(out_w);
        drop(err_w);
        let _ = exit_tx.send(exit);
    });
    // Stdin and terminal sizes in the order they were given (sizes first when both are
    // ready: one sent before some input then reaches the terminal before it).
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<exec::TermSize>(8);
    let (stdin_w, mut input) = if stdin {
        let (w, r) = tokio::io::duplex(64 * 1024);
        (
            Some(Box::pin(w) as Pin<Box<dyn AsyncWrite + Send>>),
            Some(r),
        )
    } else {
        (None, None)
    };
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        let mut sizes_open = true;
        loop {
            let data = tokio::select! {
                biased;
                size = resize_rx.recv(), if sizes_open => match size {
                    Some(size) => {
                        let json = serde_json::to_vec(&size).unwrap_or_default();
                        exec::encode(exec::RESIZE, &json)
                    }
                    None => {
                        sizes_open = false;
                        continue;
                    }
                },
                n = async { input.as_mut().expect("guarded").read(&mut buf).await },
                    if input.is_some() => match n {
                    Ok(n) if n > 0 => exec::encode(exec::STDIN, &buf[..n]),
                    _ => {
                        input = None;
                        exec::encode(exec::CLOSE, &[exec::STDIN])
                    }
                },
                else => break,
            };
            if sink.send(Message::Binary(data)).await.is_err() {
                break;
            }
        }
        // The sink stays open until the session ends.
        std::future::pending::<()>().await;
    });
    let guard = AbortOnDrop(vec![reader, writer]);
    ExecStreams {
        stdin: stdin_w,
        stdout: Box::pin(out_r),
        stderr: Box::pin(err_r),
        // Sizes go to the node, whose pump hands them to the terminal, if there is one.
        resize: Some(resize_tx),
        exit_code: Box::pin(async move {
            let _guard = guard;
            exit_rx
                .await
                .unwrap_or_else(|_| Err("the exec session ended".to_string()))
        }),
    }
}

fn pem_certs(
    pem: &str,
    what: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, RemoteError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RemoteError::Credentials(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(RemoteError::Credentials(format!("{what}: no certificate")));
    }
    Ok(certs)
}

/// The rustls client side of [`ClientIdentity`] (ring provider, HTTP/1.1).
pub fn client_tls(identity: &ClientIdentity) -> Result<Arc<rustls::ClientConfig>, RemoteError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: rustls::Error| RemoteError::Credentials(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(&identity.ca_pem, "the CA")? {
        roots.add(ca).map_err(bad)?;
    }
    let chain = pem_certs(&identity.cert_pem, "the client certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| RemoteError::Credentials(format!("the client key: {e}")))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(bad)?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(bad)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Talks to one node's agent at a known address, with the API server's credentials.
#[derive(Clone, Debug)]
pub struct NodeClient {
    identity: ClientIdentity,
    tls: Arc<rustls::ClientConfig>,
}

impl NodeClient {
    pub fn new(identity: ClientIdentity) -> Result<NodeClient, RemoteError> {
        let tls = client_tls(&identity)?;
        Ok(NodeClient { identity, tls })
    }

    /// An HTTPS client for the agent at `addr` with the API server's credentials.
    fn http(&self, addr: SocketAddr) -> Result<kube::Client, ApiError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let url = format!("https://{addr}")
            .parse()
            .map_err(|e| ApiError::Internal(format!("node address {addr}: {e}")))?;
        let mut cfg = kube::Config::new(url);
        let ca = pem_certs(&self.identity.ca_pem, "the CA")
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        cfg.root_cert = Some(ca.into_iter().map(|c| c.to_vec()).collect());
        // kube keeps the key as a secret string; its serde form is the way in.
        cfg.auth_info = serde_json::from_value(serde_json::json!({
            "client-certificate-data": b64(&self.identity.cert_pem),
            "client-key-data": b64(&self.identity.key_pem),
        }))
        .map_err(|e| ApiError::Internal(format!("node client credentials: {e}")))?;
        cfg.connect_timeout = Some(CONNECT_TIMEOUT);
        // Followed logs may be quiet for long.
        cfg.read_timeout = None;
        cfg.default_retry = false;
        kube::Client::try_from(cfg).map_err(|e| ApiError::Internal(format!("node client: {e}")))
    }

    /// Sends `req` to the agent at `addr`; a non-2xx answer becomes the matching error.
    async fn call(
        &self,
        addr: SocketAddr,
        req: Request<Vec<u8>>,
    ) -> Result<Response<kube::client::Body>, ApiError> {
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, kube::client::Body::from(body));
        let resp = self.http(addr)?.send(req).await.map_err(|e| {
            ApiError::Unavailable(format!("the node at {addr} can not be reached: {e}"))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let body = resp.into_body().collect_bytes().await.unwrap_or_default();
        Err(error_from_status(code, &body))
    }

    fn json_post(path: &str, body: &impl Serialize) -> Result<Request<Vec<u8>>, ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.to_string()))?;
        Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// The logs of `target` from the agent at `addr`, streamed.
    pub async fn logs(
        &self,
        addr: SocketAddr,
        target: LogTarget,
        query: LogQuery,
    ) -> Result<ByteStream, ApiError> {
        let req = Self::json_post(LOGS_PATH, &LogsRequest { target, query })?;
        let resp = self.call(addr, req).await?;
        let stream = http_body_util::BodyExt::into_data_stream(resp.into_body())
            .map(|r| r.map_err(std::io::Error::other));
        Ok(Box::pin(stream))
    }

    /// Whether the agent at `addr` could start `target` now.
    pub async fn check(&self, addr: SocketAddr, target: &ExecTarget) -> Result<(), ApiError> {
        let req = Self::json_post(EXEC_CHECK_PATH, target)?;
        self.call(addr, req).await.map(drop)
    }

    /// Starts `target` on the agent at `addr`.
    pub async fn exec(
        &self,
        addr: SocketAddr,
        target: ExecTarget,
    ) -> Result<ExecStreams, ApiError> {
        let unreachable = |e: String| ApiError::Unavailable(format!("the node at {addr}: {e}"));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable("connecting timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let json = serde_json::to_vec(&target).map_err(|e| ApiError::Internal(e.to_string()))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(json);
        let mut req = format!("wss://{addr}{EXEC_PATH}")
            .into_client_request()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(exec::Protocol::V5.as_str()),
        );
        h.insert(
            EXEC_TARGET_HEADER,
            http::HeaderValue::from_str(&encoded).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        match tokio_tungstenite::client_async(req, tls).await {
            Ok((ws, _)) => Ok(streams_over(ws, target.stdin)),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let code = resp.status().as_u16();
                Err(error_from_status(
                    code,
                    resp.body().as_deref().unwrap_or_default(),
                ))
            }
            Err(e) => Err(unreachable(format!("websocket: {e}"))),
        }
    }

    /// The `/metrics` of the agent at `addr`, in the format `accept` asks for.
    pub async fn metrics(
        &self,
        addr: SocketAddr,
        accept: Option<&str>,
    ) -> Result<Proxied, ApiError> {
        let mut req = Request::get(METRICS_PATH);
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        let req = req
            .body(Vec::new())
            .map_err(|e| ApiError::BadRequest(format!("the Accept header: {e}")))?;
        let resp = self.call(addr, req).await?;
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/plain")
            .to_string();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_METRICS);
        let body = http_body_util::BodyExt::collect(limited)
            .await
            .map_err(|e| ApiError::Unavailable(format!("metrics of the node at {addr}: {e}")))?
            .to_bytes();
        Ok(Proxied { content_type, body })
    }

    /// The use of the node at `addr` and of its pods.
    pub async fn stats(&self, addr: SocketAddr) -> Result<NodeStats, ApiError> {
        let req = Request::get(STATS_PATH)
            .body(Vec::new())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let resp = self.call(addr, req).await?;
        let body = resp
            .into_body()
            .collect_bytes()
            .await
            .map_err(|e| ApiError::Internal(format!("stats of {addr}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Internal(format!("stats of {addr}: {e}")))
    }
}

impl RemoteNodes {
    /// `client` reads Nodes (to find where their agents serve); `local`, when the API
    /// server runs an agent in-process, serves that node without a network hop.
    pub fn new(
        client: kube::Client,
        identity: ClientIdentity,
        local: Option<LocalParts>,
    ) -> Result<Arc<RemoteNodes>, RemoteError> {
        Ok(Arc::new(RemoteNodes {
            nodes: kube::Api::all(client),
            client: NodeClient::new(identity)?,
            local,
        }))
    }

    fn local(&self, node: &str) -> Option<&LocalParts> {
        self.local.as_ref().filter(|l| l.name == node)
    }

    async fn endpoint(&self, node: &str) -> Result<SocketAddr, ApiError> {
        let obj = self
            .nodes
            .get_opt(node)
            .await
            .map_err(|e| ApiError::Internal(format!("reading the node {node}: {e}")))?;
        let obj =
            obj.ok_or_else(|| ApiError::BadRequest(format!("the node {node} does not exist")))?;
        endpoint_of(&obj).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "the node {node} has no InternalIP address: its agent can not be reached"
            ))
        })
    }

    /// The local node's stats and those of every other node that answers in time.
    async fn all_stats(&self) -> Result<NodeStats, ApiError> {
        let mut out = NodeStats::default();
        if let Some(l) = &self.local {
            out.nodes.extend(l.stats.nodes().await?);
            out.pods.extend(l.stats.pods().await?);
        }
        let local = self.local.as_ref().map(|l| l.name.as_str());
        let list = self
            .nodes
            .list(&Default::default())
            .await
            .map_err(|e| ApiError::Internal(format!("listing nodes: {e}")))?;
        let remote: Vec<(String, SocketAddr)> = list
            .items
            .iter()
            .filter(|n| n.metadata.name.as_deref() != local)
            .filter_map(|n| Some((n.metadata.name.clone()?, endpoint_of(n)?)))
            .collect();
        let fetched = futures::future::join_all(remote.iter().map(|(name, addr)| async move {
            let got = tokio::time::timeout(STATS_TIMEOUT, self.client.stats(*addr)).await;
            (name, got)
        }))
        .await;
        for (name, got) in fetched {
            match got {
                Ok(Ok(s)) => {
                    out.nodes.extend(s.nodes);
                    out.pods.extend(s.pods);
                }
                Ok(Err(e)) => tracing::debug!(node = %name, error = %e, "node stats"),
                Err(_) => tracing::debug!(node = %name, "node stats timed out"),
            }
        }
        Ok(out)
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

impl NodeConnector for RemoteNodes {
    fn logs(&self, target: LogTarget, q: LogQuery) -> Fut<'_, ByteStream> {
        match self.local(&target.node) {
            Some(l) => l.logs.logs(target, q),
            None => Box::pin(async move {
                let addr = self.endpoint(&target.node).await?;
                self.client.logs(addr, target, q).await
            }),
        }
    }
}

impl NodeExec for RemoteNodes {
    fn check(&self, target: &ExecTarget) -> Fut<'_, ()> {
        if let Some(l) = self.local(&target.pod.node) {
            return l.exec.check(target);
        }
        let target = target.clone();
        Box::pin(async move {
            let addr = self.endpoint(&target.pod.node).await?;
            self.client.check(addr, &target).await
        })
    }

    fn exec(&self, target: ExecTarget) -> Fut<'_, ExecStreams> {
        match self.local(&target.pod.node) {
            Some(l) => l.exec.exec(target),
            None => Box::pin(async move {
                let addr = self.endpoint(&target.pod.node).await?;
                self.client.exec(addr, target).await
            }),
        }
    }
}

impl NodeProxy for RemoteNodes {
    fn get<'a>(
        &'a self,
        node: &'a str,
        path: &'a str,
        accept: Option<&'a str>,
    ) -> Fut<'a, Proxied> {
        Box::pin(async move {
            if !crate::nodes::PROXY_PATHS.contains(&path) {
                return Err(ApiError::NoRoute);
            }
            if let Some(l) = self.local(node) {
                let (text, content_type) = crate::metrics::render(&l.metrics, accept);
                return Ok(Proxied {
                    content_type: content_type.to_string(),
                    body: text.into(),
                });
            }
            let addr = self.endpoint(node).await?;
            self.client.metrics(addr, accept).await
        })
    }
}

impl NodeStatsSource for RemoteNodes {
    fn nodes(&self) -> StatsFuture<'_, Vec<NodeUsage>> {
        Box::pin(async move { Ok(self.all_stats().await?.nodes) })
    }

    fn pods(&self) -> StatsFuture<'_, Vec<PodUsage>> {
        Box::pin(async move { Ok(self.all_stats().await?.pods) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus,
    };

    fn node(addresses: &[(&str, &str)], port: Option<i32>) -> Node {
        Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                daemon_endpoints: port.map(|port| NodeDaemonEndpoints {
                    kubelet_endpoint: Some(DaemonEndpoint { port }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_table() {
        let cases: Vec<(Node, Option<&str>)> = vec![
            (
                node(&[("InternalIP", "192.0.2.7")], Some(10443)),
                Some("192.0.2.7:10443"),
            ),
            (
                node(&[("InternalIP", "192.0.2.7")], None),
                Some("192.0.2.7:10250"),
            ),
            (
                node(&[("InternalIP", "192.0.2.7")], Some(0)),
                Some("192.0.2.7:10250"),
            ),
            (
                node(
                    &[("Hostname", "box"), ("InternalIP", "2001:db8::7")],
                    Some(1),
                ),
                Some("[2001:db8::7]:1"),
            ),
            (node(&[("Hostname", "box")], Some(10250)), None),
            (node(&[("InternalIP", "not-an-ip")], Some(10250)), None),
            (Node::default(), None),
        ];
        for (n, want) in cases {
            assert_eq!(
                endpoint_of(&n).map(|a| a.to_string()).as_deref(),
                want,
                "{:?}",
                n.status
            );
        }
    }

    #[test]
    fn error_table() {
        let status = |code: u16, msg: &str| {
            serde_json::to_vec(&serde_json::json!({"kind": "Status", "code": code, "message": msg}))
                .unwrap()
        };
        let cases: Vec<(u16, Vec<u8>, u16, &str)> = vec![
            (
                400,
                status(400, "container c is not running"),
                400,
                "container c is not running",
            ),
            (
                403,
                b"forbidden".to_vec(),
                500,
                "the node refused the API server: forbidden",
            ),
            (503, status(503, "busy"), 503, "busy"),
            (500, b"boom".to_vec(), 500, "boom"),
        ];
        for (code, body, want_code, want) in cases {
            let e = error_from_status(code, &body);
            assert_eq!(e.code(), want_code, "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn exit_codes_round_trip() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        for code in [0, 1, 3, 137] {
            assert_eq!(exit_from_status(&exec::exit_status(code, &cmd)), Ok(code));
        }
        let failure = serde_json::json!({"status": "Failure", "message": "no such container"});
        assert_eq!(
            exit_from_status(&failure),
            Err("no such container".to_string())
        );
    }

    /// The node's pump on one end of a websocket, streams_over on the other: stdout,
    /// stderr, stdin (and its end) and the exit code all cross.
    #[tokio::test]
    async fn streams_cross_a_websocket_to_the_pump() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (stdin_w, mut stdin_r) = tokio::io::duplex(1024);
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let (size_tx, mut size_rx) = tokio::sync::mpsc::channel(4);
        let node = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
            let streams = ExecStreams {
                stdin: Some(Box::pin(stdin_w)),
                stdout: Box::pin(std::io::Cursor::new(b"out\n".to_vec())),
                stderr: Box::pin(std::io::Cursor::new(b"err\n".to_vec())),
                resize: Some(size_tx),
                exit_code: Box::pin(async move {
                    // The process exits once its stdin ends, with what it read.
                    let mut got = Vec::new();
                    let _ = stdin_r.read_to_end(&mut got).await;
                    let _ = seen_tx.send(got);
                    Ok(3)
                }),
            };
            let q = exec::ExecQuery {
                command: vec!["cat".into()],
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            exec::pump(ws, exec::Protocol::V5, streams, &q).await;
        });
        let ws = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let mut s = streams_over(ws, true);
        let size = exec::TermSize {
            width: 120,
            height: 40,
        };
        s.resize.as_ref().unwrap().send(size).await.unwrap();
        assert_eq!(size_rx.recv().await, Some(size), "a terminal size crosses");
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"hello").await.unwrap();
        stdin.shutdown().await.unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        s.stdout.read_to_string(&mut out).await.unwrap();
        s.stderr.read_to_string(&mut err).await.unwrap();
        assert_eq!(s.exit_code.await, Ok(3));
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(seen_rx.await.unwrap(), b"hello");
        node.await.unwrap();
    }
}
