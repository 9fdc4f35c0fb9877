//! Group commit above openraft: concurrent writes become one Raft entry, so they share one
//! log append, one fsync and one replication round.
//!
//! ```text
//!  RaftStore::write(op) ──(op, reply)──▶ queue ──▶ proposer task (one per node)
//!    waits on reply ◀──────┐                        wait for one op, take whatever else
//!                          │                        is queued (≤ MAX_BATCH), drop the ones
//!                          │                        whose writer gave up
//!                          │                              │ client_write(Vec<WriteOp>)
//!                          │                              ▼
//!                          │                        Raft: one entry, one append/fsync
//!                          └──── result of op p ◀── sm applies op p at revision(i, p)
//! ```
//!
//! openraft 0.9.25 turns every `client_write` into its own log append and waits for that
//! append's fsync before it takes the next message, so grouping has to happen before Raft
//! sees the writes. The proposer keeps one batch in flight: while it waits for that batch,
//! new writes queue up and form the next one, so the busier the store, the larger the
//! batches and the fewer fsyncs per write. An idle store proposes a lone write at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_api::store::{Result, StoreError, WriteOp};
use tokio::sync::{mpsc, oneshot};

use super::leader::{self, LeaderCall};
use super::network::RaftTransport;
use super::{KithRaft, NodeId};

/// Most writes in one Raft entry. Also the revision stride: op `p` of the entry at log
/// index `i` has revision `i * MAX_BATCH + p`, so the bound keeps revisions unique.
pub const MAX_BATCH: usize = 1000;

/// Writes waiting for the proposer. Each writer has one write in flight, so this only
/// bounds bursts from very many writers; a full queue makes writers wait, not fail.
const QUEUE: usize = 4 * MAX_BATCH;

/// The revision (resourceVersion) of the write at `position` in the entry at log `index`.
/// Blank and membership entries advance the revision to `revision(index, 0)`.
pub fn revision(index: u64, position: usize) -> u64 {
    // A log index near u64::MAX / 1000 is centuries of writes away; saturate rather than
    // wrap so revisions at least never go backwards.
    index
        .saturating_mul(MAX_BATCH as u64)
        .saturating_add(position as u64)
}

/// What a writer gets back: the log index of the entry that carried its write (0 when
/// none did) and the write's result.
pub(crate) type Reply = (u64, Result<Bytes>);

/// One write waiting to be proposed, and where its result goes.
pub(crate) struct Pending {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Reply>,
}

/// Counters of the proposer.
#[derive(Debug, Default)]
pub struct WriteStats {
    proposals: AtomicU64,
    ops: AtomicU64,
    largest: AtomicU64,
}

/// A reading of `WriteStats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounters {
    /// Raft entries proposed by this node (`client_write` calls).
    pub proposals: u64,
    /// Writes carried by those entries.
    pub ops: u64,
    /// The most writes one entry carried.
    pub largest: u64,
}

impl WriteStats {
    pub fn counters(&self) -> WriteCounters {
        WriteCounters {
            proposals: self.proposals.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }

    fn record(&self, ops: usize) {
        let ops = ops as u64;
        self.proposals.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
        self.largest.fetch_max(ops, Ordering::Relaxed);
    }
}

/// The writers' end of the queue.
pub(crate) fn queue() -> (mpsc::Sender<Pending>, mpsc::Receiver<Pending>) {
    mpsc::channel(QUEUE)
}

/// What the proposer needs to get a batch into the log: this node, its Raft, and the way to
/// the leader when that is another node.
pub(crate) struct Proposer {
    pub me: NodeId,
    pub raft: KithRaft,
    pub transport: Arc<dyn RaftTransport>,
    pub timeout: Duration,
}

/// Propose queued writes in batches until every sender is gone.
pub(crate) async fn run_proposer(
    proposer: Proposer,
    mut queue: mpsc::Receiver<Pending>,
    stats: Arc<WriteStats>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A writer that timed out or was cancelled while queued gets no write behind its
        // back: nothing was proposed for it yet.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) =
            batch.drain(..).map(|p| (p.op, p.reply)).unzip();
        stats.record(ops.len());
        let n = ops.len();
        let results = proposer.propose(ops).await;
        fan_out(results, replies, n);
    }
    tracing::debug!("write proposer stopped");
}

impl Proposer {
    /// One entry for the whole batch, appended by the leader (this node or the one it
    /// forwards to); its per-op results once this node has applied it too, or why none
    /// were applied.
    async fn propose(
        &self,
        ops: Vec<WriteOp>,
    ) -> std::result::Result<(u64, Vec<Result<Bytes>>), StoreError> {
        let call = LeaderCall::write(ops, self.timeout);
        let reply = leader::call(self.me, &self.raft, &self.transport, call, self.timeout).await?;
        let (index, results) = leader::written(reply)?;
        // Read-your-writes through a follower: answer once this replica has the entry.
        leader::applied(&self.raft, index, self.timeout).await?;
        Ok((index, results))
    }
}

/// Hand result `p` to writer `p`; an error of the whole batch to every writer in it.
fn fan_out(
    results: std::result::Result<(u64, Vec<Result<Bytes>>), StoreError>,
    replies: Vec<oneshot::Sender<Reply>>,
    proposed: usize,
) {
    match results {
        Ok((index, results)) => {
            let got = results.len();
            let mut results = results.into_iter();
            for reply in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(StoreError::Internal(format!(
                        "a batch of {proposed} writes was applied with {got} results"
                    )))
                });
                // The writer may have stopped waiting; its write is applied all the same.
                let _ = reply.send((index, result));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send((0, Err(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_unique_and_follow_log_order() {
        assert_eq!(revision(12, 3), 12_003);
        assert_eq!(revision(1, 0), 1000);
        // The last op of an entry stays below the first of the next one.
        assert!(revision(7, MAX_BATCH - 1) < revision(8, 0));
        assert_eq!(revision(u64::MAX, 5), u64::MAX);
    }

    #[tokio::test]
    async fn results_go_to_their_writers_in_order() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel()).unzip();
        let results = vec![
            Ok(Bytes::from_static(b"a")),
            Err(StoreError::AlreadyExists),
            Ok(Bytes::from_static(b"c")),
        ];
        fan_out(Ok((7, results.clone())), txs, 3);
        let mut got = Vec::new();
        for rx in rxs {
            let (index, r) = rx.await.expect("reply");
            assert_eq!(index, 7);
            got.push(r);
        }
        assert_eq!(got, results);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_writer_and_short_results_are_internal() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| oneshot::channel()).unzip();
        let down = StoreError::Unavailable("not the leader".into());
        fan_out(Err(down.clone()), txs, 2);
        for rx in rxs {
            assert_eq!(rx.await.expect("reply"), (0, Err(down.clone())));
        }

        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| oneshot::channel()).unzip();
        fan_out(Ok((3, vec![Ok(Bytes::from_static(b"a"))])), txs, 2);
        let (_, second) = rxs.pop().expect("rx").await.expect("reply");
        assert!(matches!(second, Err(StoreError::Internal(_))), "{second:?}");
        let (_, first) = rxs.pop().expect("rx").await.expect("reply");
        assert_eq!(first, Ok(Bytes::from_static(b"a")));
    }
}
