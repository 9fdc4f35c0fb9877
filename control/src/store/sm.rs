//! The state machine: the objects live in memory in `Shared`; only snapshots reach disk.
//!
//! ```text
//!  committed entries ──apply──▶ Shared::apply(revision(index, p), op p) for each write
//!                               / Shared::advance(revision(index, 0)) for blank, membership
//!                                   │ (memory only: no fsync per write, the log has it)
//!  build_snapshot ── clone State ──▶ encode ──▶ state.redb {meta, data} (Immediate)
//!  install_snapshot ◀── leader ─── decode ──▶ state.redb, then Shared::replace
//!  restart: state.redb snapshot ──▶ Shared, then openraft replays the committed log
//! ```
//!
//! The snapshot is the whole object map plus its revision, in a small length-prefixed
//! binary format (objects are stored JSON already; wrapping them in JSON again would
//! escape every byte).

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kith_api::store::state::{Shared, State};
use kith_api::store::{ObjectKey, StoreError, WriteOp};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::batch::{revision, MAX_BATCH};
use super::{NodeId, Replies, StoreOpenError, TrackedDb, TypeConfig};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const META_KEY: &str = "meta";
const DATA_KEY: &str = "data";
/// The snapshot database is written once per snapshot and read once at start: a page cache
/// would only hold a copy of data the state machine already has in memory.
const CACHE_BYTES: usize = 2 * 1024 * 1024;

type StoreResult<T> = Result<T, StorageError<NodeId>>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// openraft's state machine for one node.
pub struct StateMachine {
    shared: Arc<Shared>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    db: Arc<TrackedDb>,
    /// Makes snapshot ids unique among snapshots of the same log position.
    snapshot_seq: Arc<AtomicU64>,
    snapshot_stats: Arc<SnapshotStats>,
}

/// What `/metrics` reports about snapshots.
#[derive(Debug)]
pub struct SnapshotStats {
    /// Size of the last snapshot this node built.
    pub last_bytes: AtomicU64,
    /// Seconds to build one (encode and persist durably).
    pub build_seconds: Histogram,
}

impl Default for SnapshotStats {
    fn default() -> Self {
        SnapshotStats {
            last_bytes: AtomicU64::new(0),
            // 1 ms .. ~65 s: from an empty store to a large one on slow flash.
            build_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl StateMachine {
    /// Open or create the snapshot file and load the latest snapshot into memory.
    pub fn open(path: &Path, history: usize) -> Result<StateMachine, StoreOpenError> {
        let err = |e: &dyn std::fmt::Display| StoreOpenError::Database {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(SNAPSHOT).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        let db = Arc::new(TrackedDb::new(db));

        let (state, last_applied, last_membership) =
            match read_snapshot(&db).map_err(|e| err(&e))? {
                None => (State::default(), None, StoredMembership::default()),
                Some((meta, data)) => {
                    let state = decode_state(&data).map_err(|e| err(&e))?;
                    tracing::info!(snapshot = %meta, objects = state.len(), "loaded snapshot");
                    (state, meta.last_log_id, meta.last_membership)
                }
            };
        Ok(StateMachine {
            shared: Arc::new(Shared::new(state, history)),
            last_applied,
            last_membership,
            db,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            snapshot_stats: Arc::default(),
        })
    }

    pub fn snapshot_stats(&self) -> Arc<SnapshotStats> {
        self.snapshot_stats.clone()
    }

    /// The objects and watch hub this state machine applies to.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Becomes true once the snapshot file is closed (openraft dropped the state machine and
    /// every snapshot builder).
    pub fn closed(&self) -> Arc<AtomicBool> {
        self.db.closed()
    }
}

/// Why stored snapshot bytes could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot does not start with the kith snapshot header")]
    BadHeader,
    #[error("snapshot ends early at byte {0}")]
    Truncated(usize),
    #[error("snapshot object key at byte {at} is unreadable: {source}")]
    BadKey {
        at: usize,
        source: serde_json::Error,
    },
    #[error("snapshot has {0} bytes after its last object")]
    TrailingBytes(usize),
    #[error("snapshot storage: {0}")]
    Storage(String),
}

const MAGIC: &[u8; 9] = b"KITHSNAP1";

/// Encode the objects and revision of `state`.
pub fn encode_state(state: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + state.len() * 512);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&state.revision().to_le_bytes());
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    for (key, object) in state.iter() {
        // ObjectKey is plain strings; serializing it cannot fail.
        let key = serde_json::to_vec(key).unwrap_or_default();
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(&key);
        out.extend_from_slice(&(object.len() as u64).to_le_bytes());
        out.extend_from_slice(object);
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(SnapshotError::Truncated(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self) -> Result<usize, SnapshotError> {
        let at = self.at;
        usize::try_from(self.u64()?).map_err(|_| SnapshotError::Truncated(at))
    }
}

/// Decode what `encode_state` wrote.
pub fn decode_state(buf: &[u8]) -> Result<State, SnapshotError> {
    let mut r = Reader { buf, at: 0 };
    if r.take(MAGIC.len()).map_err(|_| SnapshotError::BadHeader)? != MAGIC {
        return Err(SnapshotError::BadHeader);
    }
    let revision = r.u64()?;
    let count = r.u64()?;
    let mut objects = Vec::new();
    for _ in 0..count {
        let n = r.len()?;
        let at = r.at;
        let key: ObjectKey = serde_json::from_slice(r.take(n)?)
            .map_err(|source| SnapshotError::BadKey { at, source })?;
        let n = r.len()?;
        let object = Bytes::copy_from_slice(r.take(n)?);
        objects.push((key, object));
    }
    if r.at != buf.len() {
        return Err(SnapshotError::TrailingBytes(buf.len() - r.at));
    }
    Ok(State::from_parts(revision, objects))
}

fn read_snapshot(db: &Database) -> Result<Option<(Meta, Vec<u8>)>, SnapshotError> {
    let storage = |e: &dyn std::fmt::Display| SnapshotError::Storage(e.to_string());
    let txn = db.begin_read().map_err(|e| storage(&e))?;
    let table = txn.open_table(SNAPSHOT).map_err(|e| storage(&e))?;
    let Some(meta) = table.get(META_KEY).map_err(|e| storage(&e))? else {
        return Ok(None);
    };
    let meta: Meta = serde_json::from_slice(meta.value()).map_err(|e| storage(&e))?;
    let data = table
        .get(DATA_KEY)
        .map_err(|e| storage(&e))?
        .map(|d| d.value().to_vec())
        .ok_or_else(|| SnapshotError::Storage("snapshot meta without data".into()))?;
    Ok(Some((meta, data)))
}

/// Store `meta` and `data` as the current snapshot unless a newer one is already stored.
/// Returns whether it was stored.
fn write_snapshot(db: &Database, meta: &Meta, data: &[u8]) -> Result<bool, SnapshotError> {
    let storage = |e: &dyn std::fmt::Display| SnapshotError::Storage(e.to_string());
    let meta_bytes = serde_json::to_vec(meta).map_err(|e| storage(&e))?;
    let txn = db.begin_write().map_err(|e| storage(&e))?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| storage(&e))?;
        let stored: Option<Meta> = match table.get(META_KEY).map_err(|e| storage(&e))? {
            Some(v) => serde_json::from_slice(v.value()).ok(),
            None => None,
        };
        if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
            return Ok(false);
        }
        table
            .insert(META_KEY, meta_bytes.as_slice())
            .map_err(|e| storage(&e))?;
        table.insert(DATA_KEY, data).map_err(|e| storage(&e))?;
    }
    txn.commit().map_err(|e| storage(&e))?;
    Ok(true)
}

/// Write on a blocking thread: a snapshot commit is an fsync of possibly many megabytes.
async fn persist(db: Arc<TrackedDb>, meta: Meta, data: Arc<Vec<u8>>) -> StoreResult<bool> {
    let sig = meta.signature();
    let result = tokio::task::spawn_blocking(move || write_snapshot(&db, &meta, &data)).await;
    match result {
        Ok(Ok(stored)) => Ok(stored),
        Ok(Err(e)) => Err(StorageIOError::write_snapshot(Some(sig), &e).into()),
        Err(e) => Err(StorageIOError::write_snapshot(Some(sig), &e).into()),
    }
}

/// Builds a snapshot from the state captured when openraft asked for a builder.
pub struct SnapshotBuilder {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    db: Arc<TrackedDb>,
    seq: u64,
    stats: Arc<SnapshotStats>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let started = std::time::Instant::now();
        let data = Arc::new(encode_state(&self.state));
        let snapshot_id = match &self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        persist(self.db.clone(), meta.clone(), data.clone()).await?;
        self.stats
            .build_seconds
            .observe(started.elapsed().as_secs_f64());
        self.stats
            .last_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        tracing::info!(snapshot = %meta, objects = self.state.len(), bytes = data.len(), "built snapshot");
        let data = Arc::try_unwrap(data).unwrap_or_else(|shared| (*shared).clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Apply the writes of the entry at `index` in order, each at its own revision, so each
/// sees the ones before it.
fn apply_batch(shared: &Shared, index: u64, ops: Vec<WriteOp>) -> Replies {
    let results = ops
        .into_iter()
        .enumerate()
        .map(|(position, op)| {
            if position < MAX_BATCH {
                shared.apply(revision(index, position), op)
            } else {
                // Only a proposer that ignored MAX_BATCH writes this; applying it would
                // give the write the revision of the next entry's first one. Refused the
                // same way on every replica.
                Err(StoreError::Internal(format!(
                    "write {position} of entry {index} is beyond the {MAX_BATCH} writes an entry may carry"
                )))
            }
        })
        .collect();
    Replies(results)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Replies>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            self.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => {
                    self.shared.advance(revision(index, 0));
                    Replies::default()
                }
                EntryPayload::Normal(ops) => apply_batch(&self.shared, index, ops),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    self.shared.advance(revision(index, 0));
                    Replies::default()
                }
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            // Objects are `Bytes`: this clone copies pointers, not documents.
            state: self.shared.with_state(State::clone),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            db: self.db.clone(),
            seq: self.snapshot_seq.fetch_add(1, Ordering::Relaxed),
            stats: self.snapshot_stats.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let state = decode_state(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // Durable first: if this fails, memory still matches what is on disk.
        persist(self.db.clone(), meta.clone(), Arc::new(data)).await?;
        tracing::info!(snapshot = %meta, objects = state.len(), "installed snapshot");
        self.shared.replace(state);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let found = tokio::task::spawn_blocking(move || read_snapshot(&db))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(found.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use kith_api::store::Resource;
    use serde_json::json;

    use super::*;

    fn sample() -> State {
        let mut s = State::default();
        for (i, (ns, name)) in [("a", "x"), ("b", "y"), ("", "node-1")]
            .into_iter()
            .enumerate()
        {
            let key = ObjectKey::new(Resource::new("", "configmaps"), ns, name);
            let object =
                json!({"metadata": {"name": name, "namespace": ns}, "data": {"k": "v\u{e9}\"\n"}});
            let (res, _) = s.apply(
                i as u64 + 3,
                WriteOp::Create {
                    key,
                    object: object.into(),
                },
            );
            assert!(res.is_ok());
        }
        s
    }

    #[test]
    fn snapshot_round_trips_objects_and_revision() {
        let s = sample();
        let back = decode_state(&encode_state(&s)).expect("decode");
        assert_eq!(back.revision(), s.revision());
        let a: Vec<_> = s.iter().collect();
        let b: Vec<_> = back.iter().collect();
        assert_eq!(a, b);
        let empty = decode_state(&encode_state(&State::default())).expect("decode empty");
        assert_eq!((empty.revision(), empty.len()), (0, 0));
    }

    fn rv(b: &Bytes) -> String {
        kith_api::store::state::stored_version(b).0
    }

    #[test]
    fn a_batch_applies_in_order_each_write_at_its_own_revision() {
        let shared = Shared::new(State::default(), 100);
        let key = ObjectKey::new(Resource::new("", "configmaps"), "default", "a");
        let expect = |rv: u64| kith_api::store::Precondition {
            resource_version: Some(rv),
            uid: None,
        };
        let ops = vec![
            WriteOp::Create {
                key: key.clone(),
                object: json!({"metadata": {"name": "a"}}).into(),
            },
            // Sees the create just before it in the same entry.
            WriteOp::Update {
                key: key.clone(),
                object: json!({"metadata": {"name": "a"}, "data": {"k": "2"}}).into(),
                expect: expect(12_000),
            },
            WriteOp::Create {
                key: key.clone(),
                object: json!({"metadata": {"name": "a"}}).into(),
            },
            WriteOp::Delete {
                key: key.clone(),
                expect: expect(12_000),
            },
        ];
        let Replies(results) = apply_batch(&shared, 12, ops);
        assert_eq!(results.len(), 4);
        assert_eq!(rv(results[0].as_ref().expect("create")), "12000");
        assert_eq!(rv(results[1].as_ref().expect("update")), "12001");
        assert_eq!(results[2], Err(StoreError::AlreadyExists));
        assert!(
            matches!(&results[3], Err(StoreError::Conflict { actual, .. }) if actual == "12001"),
            "{:?}",
            results[3]
        );
        // A refused write still used its revision: the list revision is the last write's.
        assert_eq!(shared.revision(), 12_003);
        assert_eq!(rv(&shared.get(&key).expect("stored")), "12001");
    }

    #[test]
    fn writes_beyond_max_batch_are_refused_not_given_a_neighbours_revision() {
        let shared = Shared::new(State::default(), 10);
        let ops: Vec<WriteOp> = (0..=MAX_BATCH)
            .map(|i| WriteOp::Create {
                key: ObjectKey::new(Resource::new("", "configmaps"), "d", &format!("n{i}")),
                object: json!({"metadata": {}}).into(),
            })
            .collect();
        let Replies(results) = apply_batch(&shared, 3, ops);
        assert!(results[..MAX_BATCH].iter().all(|r| r.is_ok()));
        assert!(matches!(results[MAX_BATCH], Err(StoreError::Internal(_))));
        assert_eq!(shared.revision(), revision(3, MAX_BATCH - 1));
        assert!(shared.revision() < revision(4, 0));
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let good = encode_state(&sample());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"NOTASNAP1xxxxxxxxxxxxxxxx".to_vec(), "header"),
            (good[..good.len() - 1].to_vec(), "ends early"),
            ([good.as_slice(), b"!"].concat(), "after its last object"),
            (good[..5].to_vec(), "header"),
        ];
        for (bytes, want) in cases {
            let err = decode_state(&bytes).expect_err("must fail").to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }
}
