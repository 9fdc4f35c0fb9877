//! One behaviour suite for every `ObjectStore`: the in-memory store runs it in this crate's
//! unit tests, the Raft store in `control`. Each check is a plain async function named by
//! the behaviour it pins down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    EventType, ObjectKey, ObjectStore, Precondition, ReadMode, Resource, StoreError, WatchFrom,
    WriteOp,
};

fn cm() -> Resource {
    Resource::new("", "configmaps")
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(cm(), ns, name)
}

fn obj(ns: &str, name: &str, data: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}")},
           "data": {"v": data}})
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("stored object is JSON")
}

fn rv(b: &[u8]) -> u64 {
    parse(b)["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("resourceVersion is a number")
}

async fn create<S: ObjectStore>(
    s: &S,
    ns: &str,
    name: &str,
    data: &str,
) -> Result<bytes::Bytes, StoreError> {
    s.write(WriteOp::Create {
        key: key(ns, name),
        object: obj(ns, name, data).into(),
    })
    .await
}

/// Run every check against fresh stores made by `make(history_limit)`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: ObjectStore,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = S>,
{
    create_stamps_revision_and_get_returns_it(make(100).await).await;
    create_twice_is_already_exists(make(100).await).await;
    update_with_stale_version_conflicts(make(100).await).await;
    update_or_delete_of_missing_is_not_found(make(100).await).await;
    delete_returns_last_state_at_delete_revision(make(100).await).await;
    delete_with_wrong_uid_conflicts(make(100).await).await;
    list_filters_by_resource_and_namespace(make(100).await).await;
    watch_from_revision_replays_in_order(make(100).await).await;
    watch_now_returns_initial_state_then_changes(make(100).await).await;
    watch_from_compacted_revision_is_expired(make(3).await).await;
    concurrent_writers_get_distinct_increasing_revisions(make(10_000).await).await;
}

pub async fn create_stamps_revision_and_get_returns_it<S: ObjectStore>(s: S) {
    let before = s.revision();
    let stored = create(&s, "default", "a", "1").await.expect("create");
    let r = rv(&stored);
    assert!(r > before, "revision {r} must exceed the previous {before}");
    assert_eq!(s.revision(), r, "applied revision is the write's revision");
    let got = s
        .get(&key("default", "a"), ReadMode::Linearizable)
        .await
        .expect("get");
    assert_eq!(parse(&got), parse(&stored));
    assert_eq!(parse(&got)["data"]["v"], "1");
    let listing = s
        .list(&cm(), Some("default"), ReadMode::Stale)
        .await
        .expect("list");
    assert_eq!(listing.revision, r);
}

pub async fn create_twice_is_already_exists<S: ObjectStore>(s: S) {
    create(&s, "default", "a", "1").await.expect("create");
    let rev = s.revision();
    assert_eq!(
        create(&s, "default", "a", "2").await,
        Err(StoreError::AlreadyExists)
    );
    let got = s
        .get(&key("default", "a"), ReadMode::Linearizable)
        .await
        .expect("get");
    assert_eq!(
        parse(&got)["data"]["v"],
        "1",
        "a refused write changes nothing"
    );
    assert!(s.revision() >= rev);
}

pub async fn update_with_stale_version_conflicts<S: ObjectStore>(s: S) {
    let first = rv(&create(&s, "default", "a", "1").await.expect("create"));
    let second = s
        .write(WriteOp::Update {
            key: key("default", "a"),
            object: obj("default", "a", "2").into(),
            expect: Precondition {
                resource_version: Some(first),
                uid: None,
            },
        })
        .await
        .expect("update with current version");
    assert!(rv(&second) > first);
    let stale = s
        .write(WriteOp::Update {
            key: key("default", "a"),
            object: obj("default", "a", "3").into(),
            expect: Precondition {
                resource_version: Some(first),
                uid: None,
            },
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "got {stale:?}"
    );
    let got = s
        .get(&key("default", "a"), ReadMode::Linearizable)
        .await
        .expect("get");
    assert_eq!(parse(&got)["data"]["v"], "2");
    let unconditional = s
        .write(WriteOp::Update {
            key: key("default", "a"),
            object: obj("default", "a", "4").into(),
            expect: Precondition::default(),
        })
        .await
        .expect("unconditional update");
    assert!(rv(&unconditional) > rv(&second));
}

pub async fn update_or_delete_of_missing_is_not_found<S: ObjectStore>(s: S) {
    let up = s
        .write(WriteOp::Update {
            key: key("default", "nope"),
            object: obj("default", "nope", "1").into(),
            expect: Precondition::default(),
        })
        .await;
    assert_eq!(up, Err(StoreError::NotFound));
    let del = s
        .write(WriteOp::Delete {
            key: key("default", "nope"),
            expect: Precondition::default(),
        })
        .await;
    assert_eq!(del, Err(StoreError::NotFound));
    assert_eq!(
        s.get(&key("default", "nope"), ReadMode::Linearizable).await,
        Err(StoreError::NotFound)
    );
}

pub async fn delete_returns_last_state_at_delete_revision<S: ObjectStore>(s: S) {
    let created = rv(&create(&s, "default", "a", "1").await.expect("create"));
    let deleted = s
        .write(WriteOp::Delete {
            key: key("default", "a"),
            expect: Precondition::default(),
        })
        .await
        .expect("delete");
    assert!(rv(&deleted) > created);
    assert_eq!(parse(&deleted)["data"]["v"], "1");
    assert_eq!(
        s.get(&key("default", "a"), ReadMode::Linearizable).await,
        Err(StoreError::NotFound)
    );
    create(&s, "default", "a", "again")
        .await
        .expect("a deleted name can be reused");
}

pub async fn delete_with_wrong_uid_conflicts<S: ObjectStore>(s: S) {
    create(&s, "default", "a", "1").await.expect("create");
    let res = s
        .write(WriteOp::Delete {
            key: key("default", "a"),
            expect: Precondition {
                resource_version: None,
                uid: Some("other".into()),
            },
        })
        .await;
    assert!(
        matches!(res, Err(StoreError::Conflict { .. })),
        "got {res:?}"
    );
    s.get(&key("default", "a"), ReadMode::Linearizable)
        .await
        .expect("still there");
    s.write(WriteOp::Delete {
        key: key("default", "a"),
        expect: Precondition {
            resource_version: None,
            uid: Some("uid-default-a".into()),
        },
    })
    .await
    .expect("delete with matching uid");
}

pub async fn list_filters_by_resource_and_namespace<S: ObjectStore>(s: S) {
    create(&s, "b", "x", "1").await.expect("create");
    create(&s, "a", "y", "1").await.expect("create");
    create(&s, "a", "x", "1").await.expect("create");
    s.write(WriteOp::Create {
        key: ObjectKey::new(Resource::new("", "secrets"), "a", "s"),
        object: obj("a", "s", "1").into(),
    })
    .await
    .expect("create secret");
    let names = |items: &[bytes::Bytes]| -> Vec<String> {
        items
            .iter()
            .map(|b| {
                let v = parse(b);
                format!(
                    "{}/{}",
                    v["metadata"]["namespace"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let all = s
        .list(&cm(), None, ReadMode::Linearizable)
        .await
        .expect("list");
    assert_eq!(names(&all.items), ["a/x", "a/y", "b/x"]);
    assert_eq!(all.revision, s.revision());
    let in_a = s
        .list(&cm(), Some("a"), ReadMode::Linearizable)
        .await
        .expect("list");
    assert_eq!(names(&in_a.items), ["a/x", "a/y"]);
    let none = s
        .list(&cm(), Some("c"), ReadMode::Stale)
        .await
        .expect("list");
    assert!(none.items.is_empty());
}

async fn next_event<S>(w: &mut super::WatchStream, _s: &S) -> Arc<super::StoreEvent> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("event within 10s")
        .expect("stream open")
        .expect("no error")
}

pub async fn watch_from_revision_replays_in_order<S: ObjectStore>(s: S) {
    let start = s.revision();
    create(&s, "default", "a", "1").await.expect("create");
    s.write(WriteOp::Create {
        key: ObjectKey::new(Resource::new("", "secrets"), "default", "s"),
        object: obj("default", "s", "1").into(),
    })
    .await
    .expect("create other resource");
    create(&s, "other", "b", "1").await.expect("create");
    let mut w = s
        .watch(&cm(), Some("default"), WatchFrom::Revision(start))
        .expect("watch")
        .events;
    let ev = next_event(&mut w, &s).await;
    assert_eq!((ev.kind, ev.key.name.as_str()), (EventType::Added, "a"));
    // Live events follow the replayed ones without a gap.
    s.write(WriteOp::Update {
        key: key("default", "a"),
        object: obj("default", "a", "2").into(),
        expect: Precondition::default(),
    })
    .await
    .expect("update");
    s.write(WriteOp::Delete {
        key: key("default", "a"),
        expect: Precondition::default(),
    })
    .await
    .expect("delete");
    let m = next_event(&mut w, &s).await;
    assert_eq!(m.kind, EventType::Modified);
    assert!(m.prev.is_some());
    let d = next_event(&mut w, &s).await;
    assert_eq!(d.kind, EventType::Deleted);
    assert!(d.revision > m.revision && m.revision > ev.revision);
    assert_eq!(rv(&d.object), d.revision);
}

pub async fn watch_now_returns_initial_state_then_changes<S: ObjectStore>(s: S) {
    create(&s, "default", "a", "1").await.expect("create");
    create(&s, "default", "b", "1").await.expect("create");
    let w = s.watch(&cm(), None, WatchFrom::Now).expect("watch");
    assert_eq!(w.initial.len(), 2);
    assert_eq!(w.revision, s.revision());
    let mut events = w.events;
    create(&s, "default", "c", "1").await.expect("create");
    let ev = next_event(&mut events, &s).await;
    assert_eq!((ev.kind, ev.key.name.as_str()), (EventType::Added, "c"));
}

pub async fn watch_from_compacted_revision_is_expired<S: ObjectStore>(s: S) {
    let start = s.revision();
    for i in 0..10 {
        create(&s, "default", &format!("n{i}"), "1")
            .await
            .expect("create");
    }
    match s.watch(&cm(), None, WatchFrom::Revision(start)) {
        Err(StoreError::Expired { .. }) => {}
        Err(e) => panic!("expected Expired, got {e:?}"),
        Ok(_) => panic!("expected Expired, got a watch"),
    }
    // The newest revisions are still inside the window.
    let recent = s.revision() - 1;
    let mut w = s
        .watch(&cm(), None, WatchFrom::Revision(recent))
        .expect("recent watch")
        .events;
    let ev = next_event(&mut w, &s).await;
    assert_eq!(ev.revision, s.revision());
}

pub async fn concurrent_writers_get_distinct_increasing_revisions<S: ObjectStore>(s: S) {
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let b = create(&*s, "default", &format!("t{t}-{i}"), "x")
                    .await
                    .expect("create");
                revs.push(rv(&b));
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.expect("task");
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions increase"
        );
        all.extend(revs);
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        n,
        "every acknowledged write has its own revision"
    );
    let listing = s
        .list(&cm(), None, ReadMode::Linearizable)
        .await
        .expect("list");
    assert_eq!(listing.items.len(), n);
}
