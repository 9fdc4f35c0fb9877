//! The region's object store: an openraft 0.9 log on redb whose state machine is the
//! `kith_api::store::state::Shared` every `ObjectStore` wraps.
//!
//! ```text
//!  ObjectStore::write ──▶ batch::run_proposer ──client_write(Vec<WriteOp>)──▶ Raft
//!   (queue, one reply    (one entry for all                                   │
//!    per write)           writes queued)                                      │
//!        ┌─────────────────────────────────────────────────────────────────────┘
//!        ├──append──▶ log::LogStore ──▶ writer thread: one redb txn, one fsync per batch
//!        │◀──────────── LogFlushed ──────────────┘
//!        ├──replicate──▶ network::RaftTransport ──▶ peers
//!        ▼ committed
//!  sm::StateMachine ──Shared::apply(revision(index, p), op p)──▶ objects + watch hub
//!        └──snapshots (state.redb)──▶ log purge
//!  ObjectStore::get/list/watch ──── read Shared (after a read barrier if linearizable)
//! ```
//!
//! Group commit happens above openraft (`batch`): openraft 0.9 makes every `client_write`
//! its own append and waits for its fsync before the next, so one write per entry would
//! cost one fsync per write. Instead a Raft entry carries up to `batch::MAX_BATCH` writes.
//!
//! Revisions (`metadata.resourceVersion`) are still derived from the log, one per write:
//! the write at position `p` (from 0) of the entry at log index `i` has revision
//! `i * 1000 + p` ("12003" is entry 12, write 3; decimal so a person can read it). Like
//! etcd's, every write has its own revision, unique and rising in log order, so a watch
//! can resume from any event's resourceVersion without a gap, and each write in a batch
//! sees the ones before it (preconditions stay exact). Blank and membership entries
//! advance the revision to `i * 1000`; a list's revision is the last applied write's.
//!
//! Membership is whatever Raft says: one voter when a box bootstraps alone, more when the
//! multi-box transport joins others through the same `network::RaftTransport` seam.

pub mod batch;
pub mod leader;
pub mod log;
pub mod network;
pub mod sm;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kith_api::store::state::{Shared, DEFAULT_HISTORY};
use kith_api::store::{
    Listing, ObjectKey, ObjectStore, ReadMode, Resource, Result, StoreError, Watch, WatchFrom,
    WriteOp,
};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, Config, RaftMetrics, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::batch::{Pending, Proposer, WriteCounters, WriteStats};
use self::leader::{LeaderCall, LeaderReply};
use self::log::{LogStats, LogStore};
use self::network::{InProcessNetwork, Network, RaftTransport};
use self::sm::{SnapshotStats, StateMachine};

/// A node's id in the region's Raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's view of kith: an entry is a batch of `WriteOp`s, its reply one result
    /// per write.
    pub TypeConfig:
        D = Vec<WriteOp>,
        R = Replies,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of one node.
pub type KithRaft = openraft::Raft<TypeConfig>;

/// What applying one log entry produced: one result per write of its batch, in order
/// (the stored object, or why a precondition refused it); empty for blank and membership
/// entries. Travels back to the proposer as openraft's `C::R`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Replies(#[serde(with = "results_wire")] pub Vec<Result<Bytes>>);

/// `Bytes` has no serde support without a feature flag. A stored object is JSON text, so
/// it travels as a JSON string: as a byte sequence serde_json would write every byte as a
/// decimal number (a 1.3 KiB object became ~4.5 KiB of digits and commas, encoded by the
/// leader and parsed by the follower for every write it forwarded). Anything that is not
/// UTF-8 still travels as a byte sequence, and both forms are read back.
mod results_wire {
    use std::borrow::Cow;

    use bytes::Bytes;
    use kith_api::store::StoreError;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire<'a> {
        #[serde(borrow)]
        Text(Cow<'a, str>),
        Raw(Vec<u8>),
    }

    impl<'a> Wire<'a> {
        fn of(b: &'a Bytes) -> Wire<'a> {
            match std::str::from_utf8(b) {
                Ok(text) => Wire::Text(Cow::Borrowed(text)),
                Err(_) => Wire::Raw(b.to_vec()),
            }
        }

        fn into_bytes(self) -> Bytes {
            match self {
                Wire::Text(t) => Bytes::from(t.into_owned()),
                Wire::Raw(v) => Bytes::from(v),
            }
        }
    }

    pub fn serialize<S: Serializer>(
        results: &[Result<Bytes, StoreError>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(results.iter().map(|r| r.as_ref().map(Wire::of)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Result<Bytes, StoreError>>, D::Error> {
        let wire = Vec::<Result<Wire<'de>, StoreError>>::deserialize(d)?;
        Ok(wire.into_iter().map(|r| r.map(Wire::into_bytes)).collect())
    }
}

/// How a node's store is opened. `StoreConfig::new` gives defaults suited to one box.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub node_id: NodeId,
    /// Where peers reach this node's Raft endpoint (recorded in the membership).
    pub addr: String,
    /// Holds `log.redb` (log, vote, committed, purge pointer) and `state.redb` (snapshot).
    pub data_dir: PathBuf,
    /// Events a watch can resume from.
    pub history: usize,
    /// Build a snapshot (and purge the log behind it) after this many applied entries (an
    /// entry carries 1 to `batch::MAX_BATCH` writes: more under load).
    pub snapshot_logs_since_last: u64,
    /// Applied entries kept in the log behind a snapshot, so a lagging follower can catch up
    /// without a snapshot transfer.
    pub max_in_snapshot_log_to_keep: u64,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// The most log entries one AppendEntries carries.
    pub max_payload_entries: u64,
    /// A write or linearizable read that is not done by then fails as unavailable (a write
    /// may still be applied later: the log decides).
    pub request_timeout_ms: u64,
    /// Form a one-voter cluster of this node when its log is empty. Off for a node that
    /// waits to be added to an existing region.
    pub bootstrap: bool,
}

impl StoreConfig {
    pub fn new(node_id: NodeId, addr: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            node_id,
            addr: addr.into(),
            data_dir: data_dir.into(),
            history: DEFAULT_HISTORY,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            // openraft's LAN defaults: on one box no message crosses a link, and a short
            // election timeout makes a restart ready sooner.
            heartbeat_ms: 50,
            election_min_ms: 150,
            election_max_ms: 300,
            // openraft's default.
            max_payload_entries: 300,
            request_timeout_ms: 10_000,
            bootstrap: true,
        }
    }

    fn raft_config(&self) -> std::result::Result<Config, StoreOpenError> {
        let config = Config {
            cluster_name: "kith".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| StoreOpenError::Config(e.to_string()))
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("this node did not become leader of its one-voter cluster: {0}")]
    NotReady(String),
}

/// The Raft-backed `ObjectStore` of one node.
pub struct RaftStore {
    node_id: NodeId,
    raft: KithRaft,
    /// How calls reach the leader when it is another node.
    transport: Arc<dyn RaftTransport>,
    shared: Arc<Shared>,
    stats: Arc<LogStats>,
    /// Set once each redb file is closed; shutdown waits for them so the same directory
    /// can be reopened at once (by this process or another).
    closed: Vec<Arc<AtomicBool>>,
    request_timeout: Duration,
    /// Writes for the proposer task, which groups them into Raft entries.
    proposals: mpsc::Sender<Pending>,
    proposer: Mutex<Option<JoinHandle<()>>>,
    write_stats: Arc<WriteStats>,
    snapshot_stats: Arc<SnapshotStats>,
}

impl RaftStore {
    /// Open (or create) the store under `config.data_dir` with an in-process transport
    /// (enough for one box). See `open_with_transport` for more boxes.
    pub async fn open(config: StoreConfig) -> std::result::Result<Arc<Self>, StoreOpenError> {
        Self::open_with_transport(config, Arc::new(InProcessNetwork::new())).await
    }

    /// Open the store; Raft messages to peers go through `transport`. With `bootstrap` and an
    /// empty log this node forms a one-voter cluster; whenever the membership is this node
    /// alone, returns once it is leader and has applied its whole log.
    pub async fn open_with_transport(
        config: StoreConfig,
        transport: Arc<dyn RaftTransport>,
    ) -> std::result::Result<Arc<Self>, StoreOpenError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreOpenError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let raft_config = Arc::new(config.raft_config()?);
        let log = LogStore::open(&config.data_dir.join("log.redb"))?;
        let sm = StateMachine::open(&config.data_dir.join("state.redb"), config.history)?;
        let shared = sm.shared();
        let stats = log.stats();
        let snapshot_stats = sm.snapshot_stats();
        let closed = vec![log.closed(), sm.closed()];

        let raft = KithRaft::new(
            config.node_id,
            raft_config,
            Network::new(config.node_id, transport.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| StoreOpenError::Raft(e.to_string()))?;

        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let write_stats = Arc::new(WriteStats::default());
        let (proposals, queue) = batch::queue();
        let proposer = tokio::spawn(batch::run_proposer(
            Proposer {
                me: config.node_id,
                raft: raft.clone(),
                transport: transport.clone(),
                timeout: request_timeout,
            },
            queue,
            write_stats.clone(),
        ));
        let store = Arc::new(RaftStore {
            node_id: config.node_id,
            raft,
            transport,
            shared,
            stats,
            closed,
            request_timeout,
            proposals,
            proposer: Mutex::new(Some(proposer)),
            write_stats,
            snapshot_stats,
        });

        let initialized = store
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreOpenError::Raft(e.to_string()))?;
        let mut bootstrapped = false;
        if config.bootstrap && !initialized {
            let members = BTreeMap::from([(config.node_id, BasicNode::new(&config.addr))]);
            tracing::info!(node = config.node_id, addr = %config.addr, "bootstrapping a one-voter cluster");
            match store.raft.initialize(members).await {
                // The metrics may not show the new membership yet; we know it.
                Ok(()) => bootstrapped = true,
                // Another path initialized it first (or it was already in motion): fine.
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::debug!("initialize not allowed: {e}");
                }
                Err(e) => return Err(StoreOpenError::Raft(e.to_string())),
            }
        }

        if bootstrapped || store.sole_voter() {
            let wait = Duration::from_millis(config.election_max_ms.saturating_mul(20))
                .max(Duration::from_secs(10));
            let me = config.node_id;
            let ready = store
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| {
                        m.current_leader == Some(me)
                            && m.last_applied.map(|l| l.index) >= m.last_log_index
                    },
                    "leader with its log applied",
                )
                .await;
            if let Err(e) = ready {
                // Leave nothing running that holds the files.
                if let Err(stop) = store.shutdown().await {
                    tracing::warn!("stopping the store that did not become ready: {stop}");
                }
                return Err(StoreOpenError::NotReady(e.to_string()));
            }
            tracing::info!(node = me, revision = store.revision(), "raft store ready");
        }
        Ok(store)
    }

    fn sole_voter(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        voters == [self.node_id]
    }

    /// Stop Raft and wait until the redb files are closed.
    pub async fn shutdown(&self) -> Result<()> {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        // Writers still queued or in flight see their reply dropped: unavailable.
        let proposer = self
            .proposer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(proposer) = proposer {
            proposer.abort();
        }
        // openraft drops the log store and state machine as its tasks end; poll for it so a
        // caller can reopen the directory right away.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.closed.iter().all(|c| c.load(Ordering::Acquire)) {
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Internal(
                    "redb files still open 10s after raft shutdown".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!(node = self.node_id, "raft store shut down");
        Ok(())
    }

    /// Forget all but the newest `keep` watch events (tests force 410 Expired with it).
    pub fn compact_history(&self, keep: usize) {
        self.shared.compact_history(keep);
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The Raft handle: membership changes, snapshots, metrics, serving peers' RPCs.
    pub fn raft(&self) -> &KithRaft {
        &self.raft
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Log writer counters: redb commits and entries written (entries per commit shows how
    /// well queued appends share an fsync).
    pub fn log_stats(&self) -> log::LogCounters {
        self.stats.counters()
    }

    /// The log writer's counters and latency histograms, shared (for `/metrics`).
    pub fn log_stats_handle(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    /// Snapshot size and build time (for `/metrics`).
    pub fn snapshot_stats(&self) -> Arc<SnapshotStats> {
        self.snapshot_stats.clone()
    }

    /// Read the applied objects under the state lock (keep `f` short: writes wait).
    pub fn with_state<T>(&self, f: impl FnOnce(&kith_api::store::State) -> T) -> T {
        self.shared.with_state(f)
    }

    /// Proposer counters: Raft entries proposed and the writes they carried (writes per
    /// entry shows how well concurrent writers share an append, an fsync, a replication).
    pub fn write_stats(&self) -> WriteCounters {
        self.write_stats.counters()
    }

    /// Make a linearizable read safe on this node: the leader confirms its leadership with
    /// a quorum and names the index to read at; this node waits until it applied it.
    async fn read_barrier(&self, mode: ReadMode) -> Result<()> {
        if mode == ReadMode::Stale {
            return Ok(());
        }
        let reply = self
            .call_leader(LeaderCall::ReadIndex, self.request_timeout)
            .await?;
        match reply {
            LeaderReply::ReadIndex(index) => {
                leader::applied(&self.raft, index, self.request_timeout).await
            }
            LeaderReply::Failed(e) => Err(e),
            other => Err(StoreError::Internal(format!(
                "the leader answered a read index with {other:?}"
            ))),
        }
    }

    /// Wait until this node has applied everything the region had committed when asked
    /// (a linearizable read barrier): a box that just joined, or restarted behind the
    /// others, serves only once it has caught up.
    pub async fn catch_up(&self) -> Result<()> {
        self.read_barrier(ReadMode::Linearizable).await
    }

    async fn call_leader(&self, call: LeaderCall, timeout: Duration) -> Result<LeaderReply> {
        leader::call(self.node_id, &self.raft, &self.transport, call, timeout).await
    }

    /// Writes a follower forwarded to this node (the leader): queued with this node's own,
    /// so they share its next entry, fsync and replication round instead of taking one of
    /// their own. Refused as `NotLeader` when this node does not lead (the follower tries
    /// the one it names), or when `expires_ms` has passed.
    pub async fn write_forwarded(&self, ops: Vec<WriteOp>, expires_ms: u64) -> LeaderReply {
        if let Some(refused) = leader::refuse_forwarded(&self.raft, self.node_id, expires_ms) {
            return refused;
        }
        let mut waiting = Vec::with_capacity(ops.len());
        for op in ops {
            let (reply, result) = oneshot::channel();
            if self.proposals.send(Pending { op, reply }).await.is_err() {
                return LeaderReply::Failed(StoreError::Unavailable(
                    "the store is shut down".into(),
                ));
            }
            waiting.push(result);
        }
        let mut index = 0;
        let mut results = Vec::with_capacity(waiting.len());
        for result in waiting {
            let (i, r) = result.await.unwrap_or_else(|_| {
                (
                    0,
                    Err(StoreError::Unavailable(
                        "the store shut down before the write committed".into(),
                    )),
                )
            });
            index = index.max(i);
            results.push(r);
        }
        LeaderReply::Written {
            index,
            results: Replies(results),
        }
    }

    /// Make node `id` (its Raft endpoint at `addr`) a voter of the region, through the
    /// leader: a learner first, promoted once it has caught up. Returns the index of the
    /// membership entry. Idempotent.
    pub async fn add_voter(&self, id: NodeId, addr: &str) -> Result<u64> {
        let call = LeaderCall::AddVoter {
            id,
            addr: addr.to_string(),
        };
        self.membership_change(call).await
    }

    /// Take node `id` out of the region (through the leader). Idempotent.
    pub async fn remove_member(&self, id: NodeId) -> Result<u64> {
        self.membership_change(LeaderCall::Remove { id }).await
    }

    async fn membership_change(&self, call: LeaderCall) -> Result<u64> {
        // A learner catching up by snapshot over a slow link takes longer than a write.
        let timeout = self.request_timeout.max(MEMBERSHIP_TIMEOUT);
        match self.call_leader(call, timeout).await? {
            LeaderReply::Changed { index } => Ok(index),
            LeaderReply::Failed(e) => Err(e),
            other => Err(StoreError::Internal(format!(
                "the leader answered a membership change with {other:?}"
            ))),
        }
    }

    /// Every member of the region and its Raft endpoint.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        leader::member_addrs(&self.raft)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }
}

/// How long a membership change may take (the new member catches up first).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

impl ObjectStore for RaftStore {
    async fn get(&self, key: &ObjectKey, mode: ReadMode) -> Result<Bytes> {
        self.read_barrier(mode).await?;
        self.shared.get(key)
    }

    async fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        mode: ReadMode,
    ) -> Result<Listing> {
        self.read_barrier(mode).await?;
        Ok(self.shared.list(resource, namespace))
    }

    async fn write(&self, op: WriteOp) -> Result<Bytes> {
        let (reply, result) = oneshot::channel();
        let queued_and_applied = async {
            self.proposals
                .send(Pending { op, reply })
                .await
                .map_err(|_| StoreError::Unavailable("the store is shut down".into()))?;
            result
                .await
                .map_err(|_| {
                    StoreError::Unavailable("the store shut down before the write committed".into())
                })?
                .1
        };
        // If this fires while the write is still queued, the proposer drops it unwritten.
        // A little past the proposer's own deadline, so that its more precise answer (no
        // leader, leader silent) is the one the writer gets.
        let limit = self.request_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, queued_and_applied).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "write not committed within {}ms; it may still be applied",
                limit.as_millis()
            ))),
            Ok(result) => result,
        }
    }

    fn watch(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        from: WatchFrom,
    ) -> Result<Watch> {
        self.shared.watch(resource, namespace, from)
    }

    fn revision(&self) -> u64 {
        self.shared.revision()
    }
}

/// A redb database that says when it has really closed. A weak count reaching zero is not
/// enough: the drop that writes the clean-shutdown header and releases the file lock runs
/// after it.
pub struct TrackedDb {
    // Declared first: dropped (file closed, lock released) before `closed` is raised.
    db: redb::Database,
    closed: CloseFlag,
}

struct CloseFlag(Arc<AtomicBool>);

impl Drop for CloseFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl TrackedDb {
    pub fn new(db: redb::Database) -> Self {
        TrackedDb {
            db,
            closed: CloseFlag(Arc::new(AtomicBool::new(false))),
        }
    }

    /// Becomes true once the database is dropped and its file closed.
    pub fn closed(&self) -> Arc<AtomicBool> {
        self.closed.0.clone()
    }
}

impl Deref for TrackedDb {
    type Target = redb::Database;

    fn deref(&self) -> &redb::Database {
        &self.db
    }
}

fn not_leader(f: &ForwardToLeader<NodeId, BasicNode>) -> StoreError {
    StoreError::Unavailable(match (f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => format!("not the leader; leader is {id} at {}", node.addr),
        (Some(id), None) => format!("not the leader; leader is {id}"),
        (None, _) => "not the leader; no leader is known (election in progress)".to_string(),
    })
}

pub(crate) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            StoreError::Internal(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(f) => StoreError::Unavailable(format!("raft is not running: {f}")),
    }
}

pub(crate) fn read_error(
    e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
) -> StoreError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => StoreError::Unavailable(
            format!("quorum lost: only {:?} of {} answered", q.got, q.cluster),
        ),
        RaftError::Fatal(f) => StoreError::Unavailable(format!("raft is not running: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::error::{Fatal, QuorumNotEnough};

    use super::*;

    fn fwd(id: Option<NodeId>, addr: Option<&str>) -> ForwardToLeader<NodeId, BasicNode> {
        ForwardToLeader {
            leader_id: id,
            leader_node: addr.map(BasicNode::new),
        }
    }

    #[test]
    fn write_errors_map_to_unavailable_with_the_leader() {
        type Case = (
            RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
            StoreError,
        );
        let cases: Vec<Case> = vec![
            (
                RaftError::APIError(ClientWriteError::ForwardToLeader(fwd(
                    Some(2),
                    Some("10.0.0.2:7443"),
                ))),
                StoreError::Unavailable("not the leader; leader is 2 at 10.0.0.2:7443".into()),
            ),
            (
                RaftError::APIError(ClientWriteError::ForwardToLeader(fwd(Some(3), None))),
                StoreError::Unavailable("not the leader; leader is 3".into()),
            ),
            (
                RaftError::APIError(ClientWriteError::ForwardToLeader(fwd(None, None))),
                StoreError::Unavailable(
                    "not the leader; no leader is known (election in progress)".into(),
                ),
            ),
            (
                RaftError::Fatal(Fatal::Stopped),
                StoreError::Unavailable("raft is not running: raft stopped".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(write_error(input), want);
        }
    }

    #[test]
    fn read_errors_map_to_unavailable() {
        let q = QuorumNotEnough {
            cluster: "{1,2,3}".into(),
            got: BTreeSet::from([1]),
        };
        type Case = (
            RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
            StoreError,
        );
        let cases: Vec<Case> = vec![
            (
                RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)),
                StoreError::Unavailable("quorum lost: only {1} of {1,2,3} answered".into()),
            ),
            (
                RaftError::APIError(CheckIsLeaderError::ForwardToLeader(fwd(
                    Some(1),
                    Some("a:1"),
                ))),
                StoreError::Unavailable("not the leader; leader is 1 at a:1".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(read_error(input), want);
        }
    }

    #[test]
    fn replies_survive_serde() {
        for replies in [
            Replies(vec![
                Ok(Bytes::from_static(b"{\"a\":1}")),
                Err(StoreError::Conflict {
                    expected: "3".into(),
                    actual: "4".into(),
                }),
                Ok(Bytes::new()),
            ]),
            Replies::default(),
        ] {
            let json = serde_json::to_vec(&replies).expect("serialize");
            let back: Replies = serde_json::from_slice(&json).expect("deserialize");
            assert_eq!(back, replies);
        }
    }

    #[test]
    fn replies_carry_objects_as_text_and_other_bytes_as_sequences() {
        let object = br#"{"kind":"ConfigMap","data":{"k":"\"quoted\""}}"#;
        let replies = Replies(vec![
            Ok(Bytes::from_static(object)),
            Ok(Bytes::from_static(&[0xff, 0x00, 0x41])),
        ]);
        let json = serde_json::to_string(&replies).expect("serialize");
        assert_eq!(
            json,
            r#"[{"Ok":"{\"kind\":\"ConfigMap\",\"data\":{\"k\":\"\\\"quoted\\\"\"}}"},{"Ok":[255,0,65]}]"#
        );
        let back: Replies = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, replies);
        // What boxes of the previous release send: every object as a byte sequence.
        let old: Replies = serde_json::from_str(r#"[{"Ok":[123,125]}]"#).expect("old form");
        assert_eq!(old, Replies(vec![Ok(Bytes::from_static(b"{}"))]));
    }
}
