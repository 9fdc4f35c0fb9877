//! How Raft messages reach other nodes: a three-call seam (`RaftTransport`) under
//! openraft's `RaftNetworkFactory`, and an in-process transport for one process.
//!
//! ```text
//!  openraft replication ──▶ Network (factory) ──▶ Peer (RaftNetwork) ──▶ dyn RaftTransport
//!                                                   timeouts, error      │
//!                                                   mapping              ├─ InProcessNetwork:
//!                                                                        │  registry of Raft
//!                                                                        │  handles (tests, one box)
//!                                                                        └─ (multi-box: HTTPS)
//!  receiving side: raft.append_entries / raft.vote / raft.install_full_snapshot
//! ```
//!
//! A transport carries whole messages; snapshots go whole too (`full_snapshot`), so a
//! transport needs no chunking protocol.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, OptionalSend, RPCTypes, RaftNetwork, RaftNetworkFactory, Snapshot, Vote,
};

use super::leader::{self, LeaderCall, LeaderReply};
use super::{KithRaft, NodeId, TypeConfig};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a message did not get an answer from the peer's Raft.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Not delivered (no route, connection refused, peer not running): retried after a backoff.
    #[error("node {target} is unreachable: {reason}")]
    Unreachable { target: NodeId, reason: String },
    /// Maybe delivered, but no answer came back (connection broken mid-request, timeout):
    /// the peer may have acted on it.
    #[error("node {target} did not answer: {reason}")]
    Lost { target: NodeId, reason: String },
    /// Delivered, but the peer's Raft failed (storage error, shutting down).
    #[error("node {target} failed: {error}")]
    Remote {
        target: NodeId,
        error: Box<Fatal<NodeId>>,
    },
}

/// Carries Raft's three messages to a peer and brings back its answer. The receiving side
/// hands them to `Raft::append_entries`, `Raft::vote` and `Raft::install_full_snapshot`,
/// and calls for the leader to [`leader::serve`](super::leader::serve).
pub trait RaftTransport: Send + Sync + 'static {
    fn append_entries(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<Result<AppendEntriesResponse<NodeId>, TransportError>>;

    fn vote(
        &self,
        target: NodeId,
        node: &BasicNode,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<Result<VoteResponse<NodeId>, TransportError>>;

    fn snapshot(
        &self,
        target: NodeId,
        node: &BasicNode,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> BoxFuture<Result<SnapshotResponse<NodeId>, TransportError>>;

    /// A write, read index or membership change for the node `target` (believed leader).
    fn leader(
        &self,
        target: NodeId,
        node: &BasicNode,
        call: LeaderCall,
    ) -> BoxFuture<Result<LeaderReply, TransportError>>;
}

/// openraft's network factory over a `RaftTransport`.
pub struct Network {
    me: NodeId,
    transport: Arc<dyn RaftTransport>,
}

impl Network {
    pub fn new(me: NodeId, transport: Arc<dyn RaftTransport>) -> Self {
        Network { me, transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            me: self.me,
            target,
            node: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub struct Peer {
    me: NodeId,
    target: NodeId,
    node: BasicNode,
    transport: Arc<dyn RaftTransport>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    fn timeout(&self, action: RPCTypes, ttl: Duration) -> Timeout<NodeId> {
        Timeout {
            action,
            id: self.me,
            target: self.target,
            timeout: ttl,
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: TransportError,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match e {
            TransportError::Unreachable { .. } | TransportError::Lost { .. } => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            TransportError::Remote { error, .. } => {
                RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.node.clone(),
                    RaftError::Fatal(*error),
                ))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let ttl = option.hard_ttl();
        let call = self.transport.append_entries(self.target, &self.node, rpc);
        match tokio::time::timeout(ttl, call).await {
            Err(_) => Err(RPCError::Timeout(
                self.timeout(RPCTypes::AppendEntries, ttl),
            )),
            Ok(Err(e)) => Err(self.rpc_error(e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let ttl = option.hard_ttl();
        let call = self.transport.vote(self.target, &self.node, rpc);
        match tokio::time::timeout(ttl, call).await {
            Err(_) => Err(RPCError::Timeout(self.timeout(RPCTypes::Vote, ttl))),
            Ok(Err(e)) => Err(self.rpc_error(e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Chunked snapshot transfer is openraft's fallback for transports that cannot carry a
    /// whole snapshot; ours send it whole through `full_snapshot`, which openraft 0.9 uses.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let why =
            std::io::Error::other("kith sends snapshots whole (full_snapshot), not in chunks");
        Err(RPCError::Network(NetworkError::new(&why)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let ttl = option.hard_ttl();
        let call = tokio::time::timeout(
            ttl,
            self.transport
                .snapshot(self.target, &self.node, vote, snapshot),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = call => match res {
                Err(_) => Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, ttl))),
                Ok(Err(TransportError::Remote { error, .. })) => {
                    Err(StreamingError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), *error)))
                }
                Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
                Ok(Ok(resp)) => Ok(resp),
            },
        }
    }
}

/// A transport between Raft nodes in one process: a registry of their handles. A node not
/// registered (or removed, to simulate a crash or partition) is unreachable.
#[derive(Clone, Default)]
pub struct InProcessNetwork {
    nodes: Arc<RwLock<HashMap<NodeId, KithRaft>>>,
}

impl InProcessNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, id: NodeId, raft: KithRaft) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, raft);
    }

    pub fn unregister(&self, id: NodeId) {
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn find(&self, target: NodeId) -> Result<KithRaft, TransportError> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable {
                target,
                reason: "not registered in this process".into(),
            })
    }
}

/// A peer that stopped answers with `Fatal::Stopped`; to its callers that is a node gone.
pub fn fatal_to_transport(target: NodeId, error: Fatal<NodeId>) -> TransportError {
    match error {
        Fatal::Stopped => TransportError::Unreachable {
            target,
            reason: "raft stopped".into(),
        },
        error => TransportError::Remote {
            target,
            error: Box::new(error),
        },
    }
}

fn fatal_of(target: NodeId, e: RaftError<NodeId>) -> TransportError {
    match e {
        RaftError::Fatal(f) => fatal_to_transport(target, f),
        RaftError::APIError(never) => match never {},
    }
}

impl RaftTransport for InProcessNetwork {
    fn append_entries(
        &self,
        target: NodeId,
        _node: &BasicNode,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<Result<AppendEntriesResponse<NodeId>, TransportError>> {
        let raft = self.find(target);
        Box::pin(async move {
            raft?
                .append_entries(rpc)
                .await
                .map_err(|e| fatal_of(target, e))
        })
    }

    fn vote(
        &self,
        target: NodeId,
        _node: &BasicNode,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<Result<VoteResponse<NodeId>, TransportError>> {
        let raft = self.find(target);
        Box::pin(async move { raft?.vote(rpc).await.map_err(|e| fatal_of(target, e)) })
    }

    fn snapshot(
        &self,
        target: NodeId,
        _node: &BasicNode,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> BoxFuture<Result<SnapshotResponse<NodeId>, TransportError>> {
        let raft = self.find(target);
        Box::pin(async move {
            raft?
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| fatal_to_transport(target, e))
        })
    }

    fn leader(
        &self,
        target: NodeId,
        _node: &BasicNode,
        call: LeaderCall,
    ) -> BoxFuture<Result<LeaderReply, TransportError>> {
        let raft = self.find(target);
        Box::pin(async move { Ok(leader::serve(&raft?, call).await) })
    }
}
