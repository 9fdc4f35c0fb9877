//! A clean restart keeps everything: the same objects with the same uid and
//! resourceVersion, a revision that does not go backwards, and new writes above it; also
//! when the state comes back from a snapshot and the log behind it was purged.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_api::store::{
    ObjectKey, ObjectStore, Precondition, ReadMode, Resource, StoreError, WatchFrom, WriteOp,
};
use kith_control::store::{RaftStore, StoreConfig};
use serde_json::{json, Value};
use tempfile::TempDir;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(Resource::new("", "configmaps"), "default", name)
}

fn object(name: &str, data: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
           "data": {"v": data}})
}

fn rv(b: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(b).expect("json");
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion")
}

async fn open(dir: &Path) -> Arc<RaftStore> {
    let mut config = StoreConfig::new(1, "in-process:1", dir);
    // Only the snapshots this test asks for.
    config.snapshot_logs_since_last = 1_000_000;
    RaftStore::open(config).await.expect("open store")
}

/// Creates, updates and deletes; returns what each surviving object must look like.
async fn write_some(store: &RaftStore, prefix: &str, n: usize) -> BTreeMap<String, Bytes> {
    let mut expect = BTreeMap::new();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let b = store
            .write(WriteOp::Create {
                key: key(&name),
                object: object(&name, "1").into(),
            })
            .await
            .expect("create");
        expect.insert(name, b);
    }
    for i in (0..n).step_by(3) {
        let name = format!("{prefix}{i}");
        let prev = rv(&expect[&name]);
        let b = store
            .write(WriteOp::Update {
                key: key(&name),
                object: object(&name, "2").into(),
                expect: Precondition {
                    resource_version: Some(prev),
                    uid: None,
                },
            })
            .await
            .expect("update");
        assert!(rv(&b) > prev);
        expect.insert(name, b);
    }
    for i in (1..n).step_by(5) {
        let name = format!("{prefix}{i}");
        store
            .write(WriteOp::Delete {
                key: key(&name),
                expect: Precondition::default(),
            })
            .await
            .expect("delete");
        expect.remove(&name);
    }
    expect
}

async fn assert_has_exactly(store: &RaftStore, expect: &BTreeMap<String, Bytes>) {
    let listing = store
        .list(
            &Resource::new("", "configmaps"),
            None,
            ReadMode::Linearizable,
        )
        .await
        .expect("list");
    assert_eq!(listing.items.len(), expect.len(), "object count");
    for (name, bytes) in expect {
        let got = store
            .get(&key(name), ReadMode::Linearizable)
            .await
            .expect("get");
        assert_eq!(
            got, *bytes,
            "{name} comes back byte for byte (uid, resourceVersion, data)"
        );
    }
}

async fn wait_for(
    store: &RaftStore,
    what: &str,
    ok: impl Fn(&openraft::RaftMetrics<u64, openraft::BasicNode>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if ok(&store.metrics()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_objects_versions_and_revision() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path()).await;
    let expect = write_some(&store, "a", 30).await;
    let before = store.revision();
    store.shutdown().await.expect("shutdown");
    drop(store);

    let store = open(dir.path()).await;
    assert!(
        !store.log_stats().repaired_on_open,
        "a clean shutdown needs no redb repair"
    );
    assert!(
        store.revision() >= before,
        "revision went back: {} < {before}",
        store.revision()
    );
    assert_has_exactly(&store, &expect).await;
    match store.get(&key("a1"), ReadMode::Linearizable).await {
        Err(StoreError::NotFound) => {}
        other => panic!("deleted object came back: {other:?}"),
    }
    let b = store
        .write(WriteOp::Create {
            key: key("after"),
            object: object("after", "1").into(),
        })
        .await
        .expect("create after restart");
    assert!(
        rv(&b) > before,
        "new write {} is not above {before}",
        rv(&b)
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_after_log_purge() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path()).await;
    let mut expect = write_some(&store, "s", 40).await;

    store
        .raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    let applied = store.metrics().last_applied.map(|l| l.index).unwrap_or(0);
    wait_for(&store, "snapshot", |m| {
        m.snapshot.map(|s| s.index) >= Some(applied)
    })
    .await;
    store
        .raft()
        .trigger()
        .purge_log(applied)
        .await
        .expect("trigger purge");
    wait_for(&store, "purge", |m| {
        m.purged.map(|p| p.index) >= Some(applied)
    })
    .await;
    let snapshot_rev = store.revision();

    // Entries after the snapshot: these come back by replaying the log on top of it.
    expect.extend(write_some(&store, "t", 10).await);
    let before = store.revision();
    store.shutdown().await.expect("shutdown");
    drop(store);

    let store = open(dir.path()).await;
    let m = store.metrics();
    assert!(
        m.snapshot.map(|s| s.index) >= Some(applied),
        "snapshot survives: {:?}",
        m.snapshot
    );
    assert!(
        m.purged.map(|p| p.index) >= Some(applied),
        "purge survives: {:?}",
        m.purged
    );
    assert!(store.revision() >= before);
    assert_has_exactly(&store, &expect).await;
    // History restarts at the snapshot: older resume points are gone, newer ones are not.
    assert!(matches!(
        store.watch(
            &Resource::new("", "configmaps"),
            None,
            WatchFrom::Revision(snapshot_rev - 1)
        ),
        Err(StoreError::Expired { .. })
    ));
    let b = store
        .write(WriteOp::Create {
            key: key("after"),
            object: object("after", "1").into(),
        })
        .await
        .expect("create after restart");
    assert!(rv(&b) > before);
    store.shutdown().await.expect("shutdown");
}
