//! The Raft log on disk: entries, vote, committed and purge pointers in one redb file,
//! written by one thread that turns every queued write into ONE transaction and ONE fsync.
//!
//! ```text
//!  RaftCore ─append(entries, cb)──▶ tail map ──(readable at once)
//!     │     ─save_vote / truncate / purge (wait for the commit)
//!     │     ─save_committed (no wait)                        │ mpsc, in call order
//!     │                                                      ▼
//!     │                        writer thread: drain the queue → one redb txn → commit
//!     │                        (Immediate) → keep the newest flushed entries in the tail
//!     └◀──── LogFlushed for every append in the batch ────────┘
//!  LogReader (replication, apply, startup) ── tail map, then redb ──▶ entries
//! ```
//!
//! The tail keeps the newest durable entries too (up to `TAIL_KEPT_BYTES` of them):
//! right after an entry is flushed, replication to each follower and the state machine
//! read it again, and reading it from redb would decode it once per reader.
//!
//! Everything queued while a commit is in flight goes into the next one, so queued writes
//! share an fsync (group commit), and the committed pointer rides along with them instead
//! of costing a commit of its own. All writes go through the one queue, which keeps them in
//! the order openraft issued them, as its contract requires.
//!
//! Limit found in openraft 0.9.25: `RaftCore::append_to_log` awaits each append's
//! `LogFlushed` before the core handles its next message, and the core turns every client
//! write into its own append. So on a leader appends reach this store one at a time; the
//! grouping of concurrent Kubernetes writes happens before Raft (`super::batch`: one entry
//! per batch of writes), and the grouping here covers what openraft does queue together
//! (votes, purges, committed pointers with appends; openraft 0.10's non-blocking log IO).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{NodeId, StoreOpenError, TrackedDb, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";

/// Upper bound on queued commands folded into one transaction, so one commit stays short.
const MAX_BATCH: usize = 4096;
/// How long a committed pointer waits for a batch to ride along with before it is written
/// alone. Losing it (crash) only means less replay at restart; the leader re-commits.
const COMMITTED_IDLE: Duration = Duration::from_millis(20);
/// Encoded bytes of durable entries the tail keeps in memory for the readers that come
/// right after the flush (replication, apply). Entries carry up to `batch::MAX_BATCH`
/// writes, so the bound is in bytes, not entries.
const TAIL_KEPT_BYTES: usize = 2 * 1024 * 1024;
/// redb's page cache; the log is read back rarely (replication catch-up, startup), and an
/// idle edge box should not keep tens of MB of log pages resident.
const CACHE_BYTES: usize = 1024 * 1024;

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// Counters of the log writer.
#[derive(Debug)]
pub struct LogStats {
    commits: AtomicU64,
    entries: AtomicU64,
    commit_micros: AtomicU64,
    repaired_on_open: AtomicBool,
    /// The committed index openraft last saved (0 before any).
    committed_index: AtomicU64,
    /// Seconds per writer batch: write the entries, then commit them durably.
    append_seconds: Histogram,
    /// Seconds per durable redb commit (where the fsync happens).
    fsync_seconds: Histogram,
}

/// 100 µs to ~6.5 s: an fsync on a laptop SSD to one on a struggling SD card.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for LogStats {
    fn default() -> Self {
        LogStats {
            commits: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            repaired_on_open: AtomicBool::new(false),
            committed_index: AtomicU64::new(0),
            append_seconds: latency_histogram(),
            fsync_seconds: latency_histogram(),
        }
    }
}

/// A reading of `LogStats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCounters {
    /// Durable redb transactions committed by the writer: one fsync each.
    pub commits: u64,
    /// Log entries written.
    pub entries: u64,
    /// Time spent in redb commits (write + fsync), in microseconds.
    pub commit_micros: u64,
    /// redb rebuilt its allocator state when the file was opened (it was not closed
    /// cleanly, e.g. after kill -9). That is redb's own crash recovery, not a kith step.
    pub repaired_on_open: bool,
}

impl LogStats {
    pub fn counters(&self) -> LogCounters {
        LogCounters {
            commits: self.commits.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
            repaired_on_open: self.repaired_on_open.load(Ordering::Relaxed),
        }
    }

    /// The committed log index openraft last saved.
    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }

    /// Latency of a writer batch (entries written and made durable), for `/metrics`.
    pub fn append_histogram(&self) -> &Histogram {
        &self.append_seconds
    }

    /// Latency of the durable commit (the fsync) alone, for `/metrics`.
    pub fn fsync_histogram(&self) -> &Histogram {
        &self.fsync_seconds
    }
}

/// State shared by the log store, its readers and the writer thread.
struct Inner {
    db: TrackedDb,
    /// Appended entries not yet committed to redb, and the newest committed ones.
    tail: Mutex<Tail>,
    last_purged: Mutex<Option<LogId<NodeId>>>,
    committed: Mutex<Option<LogId<NodeId>>>,
    vote: Mutex<Option<Vote<NodeId>>>,
    stats: Arc<LogStats>,
}

/// The newest entries of the log in memory: every appended entry until it is durable,
/// and after that as long as the durable ones kept stay under a byte budget.
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// The durable entries still in `entries`, oldest first, with their encoded size.
    kept: VecDeque<(LogId<NodeId>, usize)>,
    kept_bytes: usize,
}

impl Tail {
    /// `flushed` (log id, encoded bytes) are durable now: keep them while the durable ones
    /// kept fit in `budget` bytes, dropping the oldest first.
    fn flushed(&mut self, flushed: &[(LogId<NodeId>, Vec<u8>)], budget: usize) {
        for (id, bytes) in flushed {
            // A truncate may have replaced this index meanwhile; that entry is not durable.
            if self.entries.get(&id.index).is_some_and(|e| e.log_id == *id) {
                self.kept.push_back((*id, bytes.len()));
                self.kept_bytes += bytes.len();
            }
        }
        while self.kept_bytes > budget {
            let Some((id, size)) = self.kept.pop_front() else {
                break;
            };
            self.kept_bytes -= size;
            if self.entries.get(&id.index).is_some_and(|e| e.log_id == id) {
                self.entries.remove(&id.index);
            }
        }
    }

    /// Forget entries from `since` on.
    fn truncate(&mut self, since: u64) {
        drop(self.entries.split_off(&since));
        self.retain_kept(|index| index < since);
    }

    /// Forget entries up to `upto`.
    fn purge(&mut self, upto: u64) {
        self.entries = self.entries.split_off(&(upto + 1));
        self.retain_kept(|index| index > upto);
    }

    fn retain_kept(&mut self, keep: impl Fn(u64) -> bool) {
        self.kept.retain(|(id, _)| keep(id.index));
        self.kept_bytes = self.kept.iter().map(|(_, size)| size).sum();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated in a way reads would trust
    // less than the poison flag; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One write for the writer thread, in openraft's call order.
enum Cmd {
    Append {
        entries: Vec<(LogId<NodeId>, Vec<u8>)>,
        /// openraft's `LogFlushed` in production; told once the batch is durable.
        flushed: Box<dyn FnOnce(io::Result<()>) + Send>,
    },
    Vote {
        bytes: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Committed {
        bytes: Vec<u8>,
    },
    Truncate {
        since: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    Purge {
        upto: u64,
        bytes: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// openraft's log storage for one node.
pub struct LogStore {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Cmd>,
}

/// A reader of the log, handed to replication tasks.
#[derive(Clone)]
pub struct LogReader {
    inner: Arc<Inner>,
}

fn db_error(path: &Path, e: impl std::fmt::Display) -> StoreOpenError {
    StoreOpenError::Database {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl LogStore {
    /// Open or create the log file and start its writer thread.
    pub fn open(path: &Path) -> Result<LogStore, StoreOpenError> {
        let stats = Arc::new(LogStats::default());
        let repaired = stats.clone();
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(move |_| repaired.repaired_on_open.store(true, Ordering::Relaxed))
            .create(path)
            .map_err(|e| db_error(path, e))?;
        if stats.repaired_on_open.load(Ordering::Relaxed) {
            tracing::warn!(path = %path.display(), "raft log was not closed cleanly; redb rebuilt its allocator state");
        }
        // Create the tables so readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| db_error(path, e))?;
        txn.open_table(LOG).map_err(|e| db_error(path, e))?;
        txn.open_table(META).map_err(|e| db_error(path, e))?;
        txn.commit().map_err(|e| db_error(path, e))?;

        let read = |key: &str| -> Result<Option<Vec<u8>>, StoreOpenError> {
            let txn = db.begin_read().map_err(|e| db_error(path, e))?;
            let table = txn.open_table(META).map_err(|e| db_error(path, e))?;
            let value = table.get(key).map_err(|e| db_error(path, e))?;
            Ok(value.map(|v| v.value().to_vec()))
        };
        fn decode<T: serde::de::DeserializeOwned>(
            path: &Path,
            what: &str,
            raw: Option<Vec<u8>>,
        ) -> Result<Option<T>, StoreOpenError> {
            raw.map(|b| serde_json::from_slice(&b))
                .transpose()
                .map_err(|e| db_error(path, format!("stored {what} is unreadable: {e}")))
        }
        let vote: Option<Vote<NodeId>> = decode(path, "vote", read(VOTE_KEY)?)?;
        let committed: Option<LogId<NodeId>> =
            decode(path, "committed", read(COMMITTED_KEY)?)?.flatten();
        let last_purged: Option<LogId<NodeId>> = decode(path, "last purged", read(PURGED_KEY)?)?;

        let inner = Arc::new(Inner {
            db: TrackedDb::new(db),
            tail: Mutex::new(Tail::default()),
            last_purged: Mutex::new(last_purged),
            committed: Mutex::new(committed),
            vote: Mutex::new(vote),
            stats,
        });
        let (tx, rx) = mpsc::channel();
        let writer = inner.clone();
        let name = format!("raft-log-writer:{}", short_name(path));
        std::thread::Builder::new()
            .name(name)
            .spawn(move || run_writer(writer, rx))
            .map_err(|e| db_error(path, format!("cannot start the log writer thread: {e}")))?;
        Ok(LogStore { inner, tx })
    }

    pub fn stats(&self) -> Arc<LogStats> {
        self.inner.stats.clone()
    }

    /// Becomes true once the redb file is closed (openraft dropped the store and its readers
    /// and the writer thread ended).
    pub fn closed(&self) -> Arc<AtomicBool> {
        self.inner.db.closed()
    }

    fn send(&self, cmd: Cmd) -> Result<(), io::Error> {
        self.tx
            .send(cmd)
            .map_err(|_| io::Error::other("the raft log writer thread has stopped"))
    }

    /// Queue `cmd` and wait until the writer committed it.
    async fn send_and_wait(
        &self,
        make: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Cmd,
    ) -> Result<(), io::Error> {
        let (done, wait) = oneshot::channel();
        self.send(make(done))?;
        wait.await
            .map_err(|_| io::Error::other("the raft log writer thread dropped a request"))?
    }

    /// Make `entries` readable at once and queue them for the writer, which calls `flushed`
    /// once they are durable.
    // openraft's own error type, handed back unchanged through its traits.
    #[allow(clippy::result_large_err)]
    fn enqueue_append(
        &self,
        entries: Vec<Entry<TypeConfig>>,
        flushed: Box<dyn FnOnce(io::Result<()>) + Send>,
    ) -> StoreResult<()> {
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            let bytes = serde_json::to_vec(e)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, &err))?;
            encoded.push((e.log_id, bytes));
        }
        {
            let mut tail = lock(&self.inner.tail);
            for e in entries {
                tail.entries.insert(e.log_id.index, e);
            }
        }
        self.send(Cmd::Append {
            entries: encoded,
            flushed,
        })
        .map_err(write_err)
    }
}

fn short_name(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(path).display().to_string())
}

fn run_writer(inner: Arc<Inner>, rx: mpsc::Receiver<Cmd>) {
    // After a failed commit nothing later may land: it could leave a hole. Fail the rest.
    let mut broken: Option<String> = None;
    // The newest committed pointer not yet written. It rides along with the next batch, or
    // is written alone once the queue stays idle: a commit of its own after every write
    // would double the fsyncs and delay the next append.
    let mut committed: Option<Vec<u8>> = None;
    loop {
        let first = if committed.is_some() {
            match rx.recv_timeout(COMMITTED_IDLE) {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(cmd) => Some(cmd),
                Err(_) => break,
            }
        };
        let mut batch = Vec::new();
        let mut received = first.is_some();
        let mut next = first;
        while let Some(cmd) = next {
            match cmd {
                Cmd::Committed { bytes } => committed = Some(bytes),
                cmd => batch.push(cmd),
            }
            next = if batch.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
            received |= next.is_some();
        }
        if batch.is_empty() && received {
            // Only committed pointers arrived: wait for company or for the queue to go idle.
            continue;
        }
        commit(&inner, &mut broken, batch, committed.take());
    }
    if committed.is_some() {
        // Clean shutdown: leave the newest committed pointer so a restart replays it all.
        commit(&inner, &mut broken, Vec::new(), committed);
    }
    tracing::debug!("raft log writer stopped");
}

/// Write `batch` (and the committed pointer) in one durable transaction, then tell every
/// waiter how it went.
fn commit(inner: &Inner, broken: &mut Option<String>, batch: Vec<Cmd>, committed: Option<Vec<u8>>) {
    let started = std::time::Instant::now();
    let result = match broken.as_ref() {
        Some(msg) => Err(msg.clone()),
        None => write_batch(&inner.db, &batch, committed.as_deref()).map_err(|e| e.to_string()),
    };
    let elapsed = started.elapsed();
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    inner
        .stats
        .commit_micros
        .fetch_add(micros, Ordering::Relaxed);
    match &result {
        Ok((entries, fsync)) => {
            inner.stats.commits.fetch_add(1, Ordering::Relaxed);
            inner.stats.entries.fetch_add(*entries, Ordering::Relaxed);
            inner.stats.append_seconds.observe(elapsed.as_secs_f64());
            inner.stats.fsync_seconds.observe(fsync.as_secs_f64());
        }
        Err(msg) => {
            if broken.is_none() {
                tracing::error!("raft log write failed: {msg}");
                *broken = Some(msg.clone());
            }
        }
    }
    let io_result = || {
        result
            .as_ref()
            .map(|_| ())
            .map_err(|m| io::Error::other(m.clone()))
    };
    for cmd in batch {
        match cmd {
            Cmd::Append { entries, flushed } => {
                if result.is_ok() {
                    lock(&inner.tail).flushed(&entries, TAIL_KEPT_BYTES);
                }
                flushed(io_result());
            }
            Cmd::Vote { done, .. } | Cmd::Truncate { done, .. } | Cmd::Purge { done, .. } => {
                // The caller may have given up waiting; nothing to do then.
                let _ = done.send(io_result());
            }
            Cmd::Committed { .. } => {}
        }
    }
}

/// Write a batch in one durable transaction; returns the number of entries written and
/// how long the durable commit took.
fn write_batch(
    db: &Database,
    batch: &[Cmd],
    committed: Option<&[u8]>,
) -> Result<(u64, Duration), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut written = 0u64;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for cmd in batch {
            match cmd {
                Cmd::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        log.insert(id.index, bytes.as_slice())?;
                        written += 1;
                    }
                }
                Cmd::Vote { bytes, .. } => {
                    meta.insert(VOTE_KEY, bytes.as_slice())?;
                }
                Cmd::Committed { bytes } => {
                    meta.insert(COMMITTED_KEY, bytes.as_slice())?;
                }
                Cmd::Truncate { since, .. } => {
                    log.retain_in(*since.., |_, _| false)?;
                }
                Cmd::Purge { upto, bytes, .. } => {
                    log.retain_in(..=*upto, |_, _| false)?;
                    meta.insert(PURGED_KEY, bytes.as_slice())?;
                }
            }
        }
        if let Some(bytes) = committed {
            meta.insert(COMMITTED_KEY, bytes)?;
        }
    }
    let fsync = std::time::Instant::now();
    txn.commit()?;
    Ok((written, fsync.elapsed()))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn to_bound(b: Bound<&u64>) -> Bound<u64> {
    match b {
        Bound::Included(x) => Bound::Included(*x),
        Bound::Excluded(x) => Bound::Excluded(*x),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Inner {
    // openraft's own error type, handed back unchanged through its traits.
    #[allow(clippy::result_large_err)]
    fn read_range(&self, range: (Bound<u64>, Bound<u64>)) -> StoreResult<Vec<Entry<TypeConfig>>> {
        // The tail first, then redb: an entry that leaves the tail was committed before it
        // left, so this order can miss nothing.
        let fresh: Vec<Entry<TypeConfig>> = lock(&self.tail)
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect();
        if covers(range, &fresh) {
            return Ok(fresh);
        }
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = BTreeMap::new();
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        for item in table.range::<u64>(range).map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
                .map_err(|e| StorageIOError::read_log_at_index(k.value(), &e))?;
            out.insert(k.value(), entry);
        }
        for e in fresh {
            out.insert(e.log_id.index, e);
        }
        Ok(out.into_values().collect())
    }

    // openraft's own error type, handed back unchanged through its traits.
    #[allow(clippy::result_large_err)]
    fn last_log_id(&self) -> StoreResult<Option<LogId<NodeId>>> {
        if let Some((_, e)) = lock(&self.tail).entries.last_key_value() {
            return Ok(Some(e.log_id));
        }
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            None => None,
            Some((k, v)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
                    .map_err(|e| StorageIOError::read_log_at_index(k.value(), &e))?;
                Some(entry.log_id)
            }
        };
        Ok(last)
    }
}

/// Whether `entries` (consecutive, from the tail) are the whole bounded `range`.
fn covers(range: (Bound<u64>, Bound<u64>), entries: &[Entry<TypeConfig>]) -> bool {
    let start = match range.0 {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => return false,
    };
    let end = match range.1 {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => e,
        Bound::Unbounded => return false,
    };
    match (entries.first(), entries.last()) {
        (Some(first), Some(last)) => {
            first.log_id.index == start
                && last.log_id.index + 1 == end
                && entries.len() as u64 == end - start
        }
        _ => start >= end,
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (to_bound(range.start_bound()), to_bound(range.end_bound()))
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        self.inner.read_range(bounds(&range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        self.inner.read_range(bounds(&range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id = *lock(&self.inner.last_purged);
        let last_log_id = self.inner.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            inner: self.inner.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.send_and_wait(|done| Cmd::Vote { bytes, done })
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        *lock(&self.inner.vote) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        Ok(*lock(&self.inner.vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(&committed).map_err(write_err)?;
        *lock(&self.inner.committed) = committed;
        if let Some(c) = committed {
            self.inner
                .stats
                .committed_index
                .store(c.index, Ordering::Relaxed);
        }
        // Not waited for: a lost committed pointer only means less replay on restart.
        self.send(Cmd::Committed { bytes }).map_err(write_err)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(*lock(&self.inner.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.enqueue_append(
            entries.into_iter().collect(),
            Box::new(move |result| callback.log_io_completed(result)),
        )
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        tracing::debug!(since = %log_id, "truncating raft log");
        lock(&self.inner.tail).truncate(log_id.index);
        self.send_and_wait(|done| Cmd::Truncate {
            since: log_id.index,
            done,
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        tracing::debug!(upto = %log_id, "purging raft log");
        let bytes = serde_json::to_vec(&log_id).map_err(write_err)?;
        lock(&self.inner.tail).purge(log_id.index);
        *lock(&self.inner.last_purged) = Some(log_id);
        self.send_and_wait(|done| Cmd::Purge {
            upto: log_id.index,
            bytes,
            done,
        })
        .await
        .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    /// What openraft 0.10-style non-blocking IO (or several followers' batches) would do:
    /// many appends queued before the first is durable. They must share commits, and every
    /// entry must be readable before and after its commit.
    #[tokio::test]
    async fn queued_appends_share_commits_and_stay_readable() {
        const APPENDS: u64 = 64;
        let dir = tempfile::TempDir::new().expect("tempdir");
        let mut store = LogStore::open(&dir.path().join("log.redb")).expect("open");
        let mut waits = Vec::new();
        for i in 1..=APPENDS {
            let (tx, rx) = oneshot::channel();
            let done = Box::new(move |r: io::Result<()>| {
                let _ = tx.send(r.is_ok());
            });
            store.enqueue_append(vec![blank(i)], done).expect("enqueue");
            waits.push(rx);
        }
        // Readable as soon as append returned, flushed or not.
        let early = store.try_get_log_entries(1..=APPENDS).await.expect("read");
        assert_eq!(early.len() as u64, APPENDS);
        for w in waits {
            assert!(w.await.expect("callback"), "append failed");
        }
        let c = store.stats().counters();
        eprintln!("{APPENDS} queued appends: {} commits", c.commits);
        assert_eq!(c.entries, APPENDS);
        assert!(
            c.commits * 4 <= APPENDS,
            "{} commits for {APPENDS} queued appends",
            c.commits
        );
        assert_eq!(
            lock(&store.inner.tail).kept.len() as u64,
            APPENDS,
            "small flushed entries stay in the tail"
        );
        let late = store.try_get_log_entries(1..=APPENDS).await.expect("read");
        assert_eq!(
            late.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (1..=APPENDS).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_tail_keeps_the_newest_durable_entries_within_its_budget() {
        let id = |term: u64, index: u64| LogId::new(CommittedLeaderId::new(term, 0), index);
        let indexes = |t: &Tail| t.entries.keys().copied().collect::<Vec<_>>();
        let mut tail = Tail::default();
        for i in 1..=5 {
            tail.entries.insert(i, blank(i));
        }
        let ten = || vec![0u8; 10];
        tail.flushed(
            &[(id(1, 1), ten()), (id(1, 2), ten()), (id(1, 3), ten())],
            25,
        );
        // 30 bytes durable > 25: the oldest goes; 4 and 5 are not durable yet and stay.
        assert_eq!(indexes(&tail), [2, 3, 4, 5]);
        assert_eq!(tail.kept_bytes, 20);
        // An index rewritten by another term since is not the entry that was flushed.
        tail.entries.insert(
            4,
            Entry {
                log_id: id(2, 4),
                payload: openraft::EntryPayload::Blank,
            },
        );
        tail.flushed(&[(id(1, 4), ten())], 25);
        assert_eq!(tail.kept_bytes, 20);
        assert_eq!(indexes(&tail), [2, 3, 4, 5]);
        tail.truncate(3);
        assert_eq!(indexes(&tail), [2]);
        assert_eq!(tail.kept_bytes, 10);
        tail.entries.insert(3, blank(3));
        tail.purge(2);
        assert_eq!(indexes(&tail), [3]);
        assert_eq!((tail.kept.len(), tail.kept_bytes), (0, 0));
    }

    /// Entries written before objects travelled as text hold each object inline, as a
    /// JSON tree; they still decode, to the same write.
    #[test]
    fn entries_written_with_inline_objects_still_decode() {
        use kith_api::store::{ObjectJson, ObjectKey, Resource, WriteOp};
        let object = serde_json::json!({"metadata": {"name": "a"}, "data": {"k": "\"v\""}});
        let old = serde_json::json!({
            "log_id": {"leader_id": {"term": 2, "node_id": 1}, "index": 7},
            "payload": {"Normal": [{"Create": {
                "key": {"resource": {"group": "", "plural": "configmaps"},
                        "namespace": "default", "name": "a"},
                "object": object,
            }}]},
        });
        let entry: Entry<TypeConfig> =
            serde_json::from_slice(&serde_json::to_vec(&old).expect("ser")).expect("old entry");
        let openraft::EntryPayload::Normal(ops) = &entry.payload else {
            panic!("not a normal entry: {entry:?}");
        };
        let want = WriteOp::Create {
            key: ObjectKey::new(Resource::new("", "configmaps"), "default", "a"),
            object: ObjectJson::from(&object),
        };
        assert_eq!(ops.as_slice(), [want]);
        assert_eq!(entry.log_id.index, 7);
        // And what is written now reads back the same.
        let again: Entry<TypeConfig> =
            serde_json::from_slice(&serde_json::to_vec(&entry).expect("ser")).expect("de");
        assert_eq!(again.payload, entry.payload);
    }

    #[test]
    fn covers_only_a_complete_bounded_range() {
        let e = |r: std::ops::Range<u64>| r.map(blank).collect::<Vec<_>>();
        type Case = ((Bound<u64>, Bound<u64>), Vec<Entry<TypeConfig>>, bool);
        let cases: Vec<Case> = vec![
            ((Bound::Included(3), Bound::Excluded(6)), e(3..6), true),
            ((Bound::Included(3), Bound::Included(5)), e(3..6), true),
            ((Bound::Included(3), Bound::Excluded(6)), e(4..6), false),
            ((Bound::Included(3), Bound::Excluded(6)), e(3..5), false),
            ((Bound::Included(3), Bound::Unbounded), e(3..6), false),
            ((Bound::Unbounded, Bound::Excluded(6)), e(0..6), false),
            ((Bound::Included(3), Bound::Excluded(3)), vec![], true),
            ((Bound::Included(3), Bound::Excluded(6)), vec![], false),
        ];
        for (range, entries, want) in cases {
            assert_eq!(covers(range, &entries), want, "{range:?}");
        }
    }
}
