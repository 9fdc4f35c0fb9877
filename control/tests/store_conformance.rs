//! The Raft store against the two behaviour lists it must satisfy: openraft's storage
//! conformance suite (log store + state machine) and kith's `ObjectStore` suite (the same
//! one the in-memory store passes). Plus group commit: concurrent writers share fsyncs.

use std::sync::Arc;

use bytes::Bytes;
use kith_api::store::{
    Listing, ObjectKey, ObjectStore, ReadMode, Resource, Result, Watch, WatchFrom, WriteOp,
};
use kith_control::store::log::LogStore;
use kith_control::store::sm::StateMachine;
use kith_control::store::{NodeId, RaftStore, StoreConfig, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use serde_json::json;
use tempfile::TempDir;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for DiskBuilder {
    async fn build(
        &self,
    ) -> std::result::Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let log =
            LogStore::open(&dir.path().join("log.redb")).map_err(|e| StorageIOError::write(&e))?;
        let sm = StateMachine::open(&dir.path().join("state.redb"), 100)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite makes its own runtime per case, so this is a plain #[test].
    Suite::test_all(DiskBuilder).expect("openraft storage suite");
}

/// A store on a directory that lives as long as it does.
struct TempStore {
    store: Arc<RaftStore>,
    _dir: TempDir,
}

async fn temp_store(history: usize) -> TempStore {
    let dir = TempDir::new().expect("tempdir");
    let mut config = StoreConfig::new(1, "in-process:1", dir.path());
    config.history = history;
    let store = RaftStore::open(config).await.expect("open store");
    TempStore { store, _dir: dir }
}

impl ObjectStore for TempStore {
    async fn get(&self, key: &ObjectKey, mode: ReadMode) -> Result<Bytes> {
        self.store.get(key, mode).await
    }
    async fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        mode: ReadMode,
    ) -> Result<Listing> {
        self.store.list(resource, namespace, mode).await
    }
    async fn write(&self, op: WriteOp) -> Result<Bytes> {
        self.store.write(op).await
    }
    fn watch(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        from: WatchFrom,
    ) -> Result<Watch> {
        self.store.watch(resource, namespace, from)
    }
    fn revision(&self) -> u64 {
        self.store.revision()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_store_passes_the_object_store_suite() {
    kith_api::store::suite::run_all(temp_store).await;
}

/// openraft 0.9.25's RaftCore awaits every append's `LogFlushed` before it handles the next
/// client write (`RaftCore::append_to_log`), so on a leader each write is its own append and
/// its own fsync however many writers wait; the log writer groups only what is queued
/// together (see `log::tests::queued_appends_share_commits_and_stay_readable`). What this
/// pins down: 64 concurrent writers all succeed with one durable commit per write, and the
/// committed pointer rides along instead of adding commits of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_cost_one_commit_per_write() {
    const WRITERS: usize = 64;
    const EACH: usize = 20;
    let t = temp_store(100).await;
    let before = t.store.log_stats();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = t.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let name = format!("w{w}-{i}");
                let op = WriteOp::Create {
                    key: ObjectKey::new(Resource::new("", "configmaps"), "default", &name),
                    object: json!({"metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}}),
                };
                store.write(op).await.expect("write");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let elapsed = started.elapsed();
    let after = t.store.log_stats();
    let entries = after.entries - before.entries;
    let commits = after.commits - before.commits;
    let writes = (WRITERS * EACH) as u64;
    eprintln!(
        "{writes} writes by {WRITERS} writers in {:.2}s ({:.0} writes/s): {entries} entries, \
         {commits} fsynced commits ({:.2} entries/commit, {:.2}ms per commit)",
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64(),
        entries as f64 / commits.max(1) as f64,
        (after.commit_micros - before.commit_micros) as f64 / 1000.0 / commits.max(1) as f64,
    );
    assert_eq!(entries, writes, "every write is one log entry");
    assert!(
        commits <= entries + 4,
        "{commits} commits for {entries} entries: something commits on its own"
    );
    let listing = t
        .store
        .list(
            &Resource::new("", "configmaps"),
            None,
            ReadMode::Linearizable,
        )
        .await
        .expect("list");
    assert_eq!(listing.items.len() as u64, writes);
}
