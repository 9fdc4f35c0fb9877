//! Raft between control boxes: the HTTPS transport (client side) and the peer port
//! (server side), mutual TLS with the region CA, JSON bodies over HTTP/2.
//!
//! ```text
//!  HttpsTransport ── one HTTP/2 connection per peer address (reconnects on failure)
//!    POST /raft/append    AppendEntriesRequest  → Result<AppendEntriesResponse, Fatal>
//!    POST /raft/vote      VoteRequest           → Result<VoteResponse, Fatal>
//!    POST /raft/snapshot  u32 len, {vote, meta}, snapshot bytes → Result<SnapshotResponse, Fatal>
//!    POST /raft/leader    LeaderCall            → LeaderReply   (only if this box leads)
//!    POST /raft/member    LeaderCall            → LeaderReply   (membership, via the leader)
//!    POST /raft/members   (empty)               → Members       (this box's view)
//!  peer port: admits only certificates of the region CA in group kith:control-plane
//! ```
//! A message that never left (no connection) is `Unreachable`; one sent whose answer did
//! not come back is `Lost` (the peer may have acted on it: see `store::leader`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kith_api::server::{serve_tls, Body, Peer};
use openraft::error::Fatal;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Snapshot, SnapshotMeta, Vote};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use crate::pki::peer::is_control_plane;
use crate::store::leader::{self, LeaderCall, LeaderReply};
use crate::store::network::{fatal_to_transport, BoxFuture, RaftTransport, TransportError};
use crate::store::{NodeId, RaftStore, TypeConfig};

/// The node a message is for. A box that lost its disk comes back at the same address
/// as a new member; messages meant for the old member must not reach the new one (its
/// empty log would look like a log gone backwards to the leader).
const TARGET_HEADER: &str = "x-kith-raft-target";

/// Largest message a peer accepts (a snapshot of a big region is the largest).
const MAX_MESSAGE: usize = 1 << 30;
/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A box's view of the region's membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Members {
    /// This box.
    pub me: NodeId,
    pub leader: Option<NodeId>,
    /// Every member with its Raft address.
    pub members: std::collections::BTreeMap<NodeId, String>,
    pub voters: Vec<NodeId>,
}

/// The snapshot header before the snapshot's bytes.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
}

/// Raft messages to the other control boxes over mutual TLS. Cheap to clone: clones
/// share the connections.
#[derive(Clone)]
pub struct HttpsTransport {
    inner: Arc<Connections>,
}

/// A connection to a peer: made by a task of its own, shared by every message that waits
/// for it.
type Connecting =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<Sender, String>>>;
type Sender = SendRequest<Full<Bytes>>;

/// One HTTP/2 connection per peer address.
///
/// openraft gives each AppendEntries a deadline of one heartbeat interval and drops the
/// call when it passes. A connection made inside the call (TCP, TLS and HTTP/2: three or
/// four round trips) would be dropped with it, and on 50 ms links every next call would
/// start over and time out the same way: a new leader could never reach its followers.
/// So a connection is made by a spawned task that outlives the call which asked for it;
/// later calls wait for the same attempt.
struct Connections {
    tls: Arc<ClientConfig>,
    conns: Mutex<HashMap<String, Connecting>>,
}

impl HttpsTransport {
    pub fn new(tls: Arc<ClientConfig>) -> HttpsTransport {
        HttpsTransport {
            inner: Arc::new(Connections {
                tls,
                conns: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Connections {
    /// A ready HTTP/2 sender to `addr`: the cached one, or one from a new connection (a
    /// dead cached one is replaced once).
    async fn sender(&self, target: NodeId, addr: &str) -> Result<Sender, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable { target, reason };
        for _ in 0..2 {
            let attempt = self.attempt(addr);
            match attempt.clone().await {
                // A dead connection fails here, before anything is sent.
                Ok(mut s) => match s.ready().await {
                    Ok(()) => return Ok(s),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "peer connection is closed");
                        self.forget(addr, &attempt);
                    }
                },
                Err(reason) => {
                    self.forget(addr, &attempt);
                    return Err(unreachable(reason));
                }
            }
        }
        Err(unreachable(format!("no live connection to {addr}")))
    }

    /// The connection to `addr` being made or made; a new attempt if there is none.
    fn attempt(&self, addr: &str) -> Connecting {
        use futures::FutureExt;
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .entry(addr.to_string())
            .or_insert_with(|| {
                let task = tokio::spawn(connect(self.tls.clone(), addr.to_string()));
                async move {
                    task.await
                        .unwrap_or_else(|e| Err(format!("connecting: {e}")))
                }
                .boxed()
                .shared()
            })
            .clone()
    }

    /// Drop `attempt` from the cache (unless a newer one replaced it already).
    fn forget(&self, addr: &str, attempt: &Connecting) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.get(addr).is_some_and(|c| c.ptr_eq(attempt)) {
            conns.remove(addr);
        }
    }

    /// POST `body` to `path` on the peer at `addr`; the answer's body.
    async fn post(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, TransportError> {
        let mut sender = self.sender(target, addr).await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{addr}{path}"));
        if target != 0 {
            req = req.header(TARGET_HEADER, target.to_string());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| TransportError::Unreachable {
                target,
                reason: e.to_string(),
            })?;
        let lost = |reason: String| TransportError::Lost { target, reason };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            // A broken connection says so to the next `ready`, which replaces it.
            Err(e) => return Err(lost(format!("{addr}{path}: {e}"))),
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_MESSAGE)
            .collect()
            .await
            .map_err(|e| lost(format!("{addr}{path}: reading the answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes);
            // Refused before acting (not a peer, bad message): nothing happened there.
            return Err(TransportError::Unreachable {
                target,
                reason: format!("{addr}{path}: {status}: {}", text.trim()),
            });
        }
        Ok(bytes)
    }
}

/// TCP, TLS and HTTP/2 to the peer at `addr`; the reason when it fails.
async fn connect(tls: Arc<ClientConfig>, addr: String) -> Result<Sender, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host_of(&addr).to_string())
        .map_err(|e| format!("peer address {addr}: {e}"))?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/2 with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "peer connection ended");
        }
    });
    Ok(sender)
}

/// The host of `host:port` (`[v6]:port` too), for the TLS server name.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

fn answered<T>(target: NodeId, r: Result<T, Fatal<NodeId>>) -> Result<T, TransportError> {
    r.map_err(|f| fatal_to_transport(target, f))
}

impl RaftTransport for HttpsTransport {
    fn append_entries(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<Result<AppendEntriesResponse<NodeId>, TransportError>> {
        let this = self.inner.clone();
        let addr = node.addr.clone();
        Box::pin(
            async move { answered(target, this.rpc(target, &addr, "/raft/append", &rpc).await?) },
        )
    }

    fn vote(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<Result<VoteResponse<NodeId>, TransportError>> {
        let this = self.inner.clone();
        let addr = node.addr.clone();
        Box::pin(
            async move { answered(target, this.rpc(target, &addr, "/raft/vote", &rpc).await?) },
        )
    }

    fn snapshot(
        &self,
        target: NodeId,
        node: &BasicNode,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> BoxFuture<Result<SnapshotResponse<NodeId>, TransportError>> {
        let this = self.inner.clone();
        let addr = node.addr.clone();
        Box::pin(async move {
            let header = SnapshotHeader {
                vote,
                meta: snapshot.meta,
            };
            let body = encode_snapshot(&header, snapshot.snapshot.into_inner()).map_err(|e| {
                TransportError::Unreachable {
                    target,
                    reason: format!("encoding a snapshot: {e}"),
                }
            })?;
            let path = "/raft/snapshot";
            let bytes = this.post(target, &addr, path, body).await?;
            answered(target, decode(target, &addr, path, &bytes)?)
        })
    }

    fn leader(
        &self,
        target: NodeId,
        node: &BasicNode,
        call: LeaderCall,
    ) -> BoxFuture<Result<LeaderReply, TransportError>> {
        let this = self.inner.clone();
        let addr = node.addr.clone();
        Box::pin(async move { this.rpc(target, &addr, "/raft/leader", &call).await })
    }
}

impl Connections {
    /// POST `req` as JSON to `path` on the peer at `addr`; its JSON answer.
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        req: &Req,
    ) -> Result<Resp, TransportError> {
        let body = serde_json::to_vec(req).map_err(|e| TransportError::Unreachable {
            target,
            reason: format!("encoding {path}: {e}"),
        })?;
        let bytes = self.post(target, addr, path, body.into()).await?;
        decode(target, addr, path, &bytes)
    }
}

/// A peer's JSON answer; one that does not decode is a lost answer (the peer may have
/// acted on the message).
fn decode<Resp: DeserializeOwned>(
    target: NodeId,
    addr: &str,
    path: &str,
    bytes: &[u8],
) -> Result<Resp, TransportError> {
    serde_json::from_slice(bytes).map_err(|e| TransportError::Lost {
        target,
        reason: format!("{addr}{path}: undecodable answer: {e}"),
    })
}

impl HttpsTransport {
    /// The membership as the box whose Raft port is `addr` sees it.
    pub async fn members(&self, addr: &str) -> Result<Members, TransportError> {
        self.inner.rpc(0, addr, "/raft/members", &()).await
    }

    /// Ask the box whose Raft port is `addr` to make a membership change (it takes it to
    /// the leader).
    pub async fn member_call(
        &self,
        addr: &str,
        call: &LeaderCall,
    ) -> Result<LeaderReply, TransportError> {
        self.inner.rpc(0, addr, "/raft/member", call).await
    }
}

fn encode_snapshot(header: &SnapshotHeader, data: Vec<u8>) -> Result<Bytes, serde_json::Error> {
    let head = serde_json::to_vec(header)?;
    let mut out = BytesMut::with_capacity(4 + head.len() + data.len());
    out.put_u32(head.len() as u32);
    out.put_slice(&head);
    out.put_slice(&data);
    Ok(out.freeze())
}

fn decode_snapshot(mut body: Bytes) -> Result<(SnapshotHeader, Vec<u8>), String> {
    if body.len() < 4 {
        return Err("snapshot message too short".into());
    }
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err("snapshot header longer than the message".into());
    }
    let head = body.split_to(len);
    let header: SnapshotHeader =
        serde_json::from_slice(&head).map_err(|e| format!("snapshot header: {e}"))?;
    Ok((header, body.to_vec()))
}

/// Serve the peer port until `shutdown`: Raft messages for `store`'s Raft from the other
/// control boxes (and nobody else).
/// `left` is notified once this box has been taken out of the region through its own
/// peer port (`kith control leave`).
pub async fn serve_peers(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Arc<RaftStore>,
    left: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, tls, shutdown, move |req, peer| {
        let store = store.clone();
        let left = left.clone();
        async move { handle(&store, &left, req, &peer).await }
    })
    .await
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.into()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(b) => plain(StatusCode::OK, String::from_utf8(b).unwrap_or_default()),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn handle(
    store: &RaftStore,
    left: &Notify,
    req: Request<hyper::body::Incoming>,
    peer: &Peer,
) -> Response<Body> {
    if !peer.cert.as_deref().is_some_and(is_control_plane) {
        return plain(StatusCode::FORBIDDEN, "only control boxes of this region");
    }
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let target = req
        .headers()
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(target) = target.filter(|t| *t != store.node_id().to_string()) {
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is node {}, not {target}", store.node_id()),
        );
    }
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the message: {e}")),
    };
    let raft = store.raft();
    let bad = |e: serde_json::Error| plain(StatusCode::BAD_REQUEST, format!("{path}: {e}"));
    match path.as_str() {
        "/raft/append" => match serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&body) {
            Ok(rpc) => json(&raft.append_entries(rpc).await.map_err(fatal_only)),
            Err(e) => bad(e),
        },
        "/raft/vote" => match serde_json::from_slice::<VoteRequest<NodeId>>(&body) {
            Ok(rpc) => json(&raft.vote(rpc).await.map_err(fatal_only)),
            Err(e) => bad(e),
        },
        "/raft/snapshot" => match decode_snapshot(body) {
            Ok((header, data)) => {
                let snapshot = Snapshot {
                    meta: header.meta,
                    snapshot: Box::new(std::io::Cursor::new(data)),
                };
                json(&raft.install_full_snapshot(header.vote, snapshot).await)
            }
            Err(e) => plain(StatusCode::BAD_REQUEST, e),
        },
        "/raft/leader" => match serde_json::from_slice::<LeaderCall>(&body) {
            // Forwarded writes join this box's own write queue (group commit).
            Ok(LeaderCall::Write { ops, expires_ms }) => {
                json(&store.write_forwarded(ops, expires_ms).await)
            }
            Ok(call) => json(&leader::serve(raft, call).await),
            Err(e) => bad(e),
        },
        "/raft/member" => match serde_json::from_slice::<LeaderCall>(&body) {
            Ok(LeaderCall::AddVoter { id, addr }) => {
                json(&membership(store.add_voter(id, &addr).await))
            }
            Ok(LeaderCall::Remove { id }) => {
                let reply = membership(store.remove_member(id).await);
                if id == store.node_id() && matches!(reply, LeaderReply::Changed { .. }) {
                    // Not a member any more: this box's Raft may never hear of the final
                    // configuration (the leader stops replicating to it), so say it here.
                    left.notify_one();
                }
                json(&reply)
            }
            Ok(other) => plain(
                StatusCode::BAD_REQUEST,
                format!("not a membership change: {other:?}"),
            ),
            Err(e) => bad(e),
        },
        "/raft/members" => {
            let (voters, _) = leader::members(raft);
            json(&Members {
                me: store.node_id(),
                leader: store.leader(),
                members: store.members(),
                voters: voters.into_iter().collect(),
            })
        }
        _ => plain(StatusCode::NOT_FOUND, format!("no peer route {path}")),
    }
}

fn membership(r: kith_api::store::Result<u64>) -> LeaderReply {
    match r {
        Ok(index) => LeaderReply::Changed { index },
        Err(e) => LeaderReply::Failed(e),
    }
}

/// Raft's receiving calls fail only fatally (`RaftError<_, Infallible>`).
fn fatal_only(e: openraft::error::RaftError<NodeId>) -> Fatal<NodeId> {
    match e {
        openraft::error::RaftError::Fatal(f) => f,
        openraft::error::RaftError::APIError(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_table() {
        for (addr, want) in [
            ("10.0.0.1:7443", "10.0.0.1"),
            ("[fd00::1]:7443", "fd00::1"),
            ("box-a.example:7443", "box-a.example"),
            ("noport", "noport"),
        ] {
            assert_eq!(host_of(addr), want, "{addr}");
        }
    }

    #[test]
    fn snapshot_messages_round_trip_and_garbage_is_refused() {
        let header = SnapshotHeader {
            vote: Vote::new(3, 1),
            meta: SnapshotMeta::default(),
        };
        let data = b"the state machine".to_vec();
        let wire = encode_snapshot(&header, data.clone()).expect("encode");
        let (back, got) = decode_snapshot(wire).expect("decode");
        assert_eq!(got, data);
        assert_eq!(back.vote, header.vote);
        assert!(decode_snapshot(Bytes::from_static(b"ab")).is_err());
        assert!(decode_snapshot(Bytes::from_static(b"\0\0\0\x10{}")).is_err());
        assert!(decode_snapshot(Bytes::from_static(b"\0\0\0\x02{]")).is_err());
    }
}
