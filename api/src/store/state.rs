//! The deterministic heart of every store: objects at a revision, and the watch hub.
//!
//! ```text
//!   write (index, WriteOp) ──▶ State::apply ──▶ objects map, revision = index
//!                                   │
//!                                   └──▶ WatchHub: bounded history + broadcast ──▶ WatchStream
//! ```
//!
//! `Shared` keeps both under one lock, so a watcher that lists and subscribes in one step
//! can neither miss nor repeat an event. The Raft state machine and the in-memory store both
//! apply writes through it; the caller picks each write's revision (the Raft store derives
//! it from the write's log position), which must rise with every write.
//!
//! When a snapshot replaces the whole state, the events between the old state and the
//! snapshot are never seen here, so every live watcher ends with `Expired` and relists.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::object::stamp;
use super::{
    EventType, Listing, ObjectKey, Precondition, Resource, Result, StoreError, StoreEvent, Watch,
    WatchFrom, WriteOp,
};

/// Default number of events a watch can resume from.
pub const DEFAULT_HISTORY: usize = 10_000;
const BROADCAST_CAPACITY: usize = 8192;

/// Objects at one revision. This is what a snapshot holds.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Keys are shared with the watch history's events (`StoreEvent::key`).
    objects: BTreeMap<Arc<ObjectKey>, Bytes>,
    revision: u64,
}

impl State {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// All objects in key order, for snapshots.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Bytes)> {
        self.objects.iter().map(|(k, v)| (&**k, v))
    }

    /// Rebuild from a snapshot's contents.
    pub fn from_parts(
        revision: u64,
        objects: impl IntoIterator<Item = (ObjectKey, Bytes)>,
    ) -> Self {
        State {
            objects: objects.into_iter().map(|(k, v)| (Arc::new(k), v)).collect(),
            revision,
        }
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Bytes> {
        self.objects.get(key)
    }

    /// Objects of a resource, optionally in one namespace, in (namespace, name) order.
    pub fn list(&self, resource: &Resource, namespace: Option<&str>) -> Vec<Bytes> {
        let start = ObjectKey {
            resource: resource.clone(),
            namespace: namespace.unwrap_or("").to_string(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(|(k, _)| {
                &k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Record that the log reached `index` without an object write (blank or membership
    /// entries): list revisions still follow the applied index.
    pub fn advance(&mut self, index: u64) {
        self.revision = self.revision.max(index);
    }

    /// Apply one write at log index `index`. Deterministic: the same writes in the same
    /// order give the same objects on every replica. A refused write still advances the
    /// revision (its log entry was applied; it just changed nothing).
    pub fn apply(&mut self, index: u64, op: WriteOp) -> (Result<Bytes>, Option<StoreEvent>) {
        self.advance(index);
        match op {
            // One search of the map per write (`entry`): with many objects each search is a
            // few dozen key comparisons, each chasing pointers to the key's strings.
            WriteOp::Create { key, object } => {
                let key = Arc::new(key);
                let Entry::Vacant(slot) = self.objects.entry(key.clone()) else {
                    return (Err(StoreError::AlreadyExists), None);
                };
                let json = match stamp(object.as_bytes(), index) {
                    Ok(j) => j,
                    Err(e) => return (Err(e), None),
                };
                slot.insert(json.clone());
                let ev = StoreEvent {
                    revision: index,
                    kind: EventType::Added,
                    key,
                    object: json.clone(),
                    prev: None,
                };
                (Ok(json), Some(ev))
            }
            WriteOp::Update {
                key,
                object,
                expect,
            } => {
                let Entry::Occupied(mut slot) = self.objects.entry(Arc::new(key)) else {
                    return (Err(StoreError::NotFound), None);
                };
                // The stored key: the events share it with the map.
                let key = slot.key().clone();
                let prev = slot.get().clone();
                if let Err(e) = check(&prev, &expect) {
                    return (Err(e), None);
                }
                let json = match stamp(object.as_bytes(), index) {
                    Ok(j) => j,
                    Err(e) => return (Err(e), None),
                };
                slot.insert(json.clone());
                let ev = StoreEvent {
                    revision: index,
                    kind: EventType::Modified,
                    key,
                    object: json.clone(),
                    prev: Some(prev),
                };
                (Ok(json), Some(ev))
            }
            WriteOp::Delete { key, expect } => {
                let Entry::Occupied(slot) = self.objects.entry(Arc::new(key)) else {
                    return (Err(StoreError::NotFound), None);
                };
                if let Err(e) = check(slot.get(), &expect) {
                    return (Err(e), None);
                }
                let (key, prev) = slot.remove_entry();
                let last = match stamp(&prev, index) {
                    Ok(j) => j,
                    Err(e) => return (Err(e), None),
                };
                let ev = StoreEvent {
                    revision: index,
                    kind: EventType::Deleted,
                    key,
                    object: last.clone(),
                    prev: Some(prev),
                };
                (Ok(last), Some(ev))
            }
        }
    }
}

/// The resourceVersion and uid stored in an object's metadata.
pub fn stored_version(json: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default, rename = "resourceVersion")]
        resource_version: String,
        #[serde(default)]
        uid: String,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        #[serde(default)]
        metadata: Meta,
    }
    serde_json::from_slice::<Obj>(json)
        .map(|o| (o.metadata.resource_version, o.metadata.uid))
        .unwrap_or_default()
}

fn check(stored: &[u8], expect: &Precondition) -> Result<()> {
    if expect.resource_version.is_none() && expect.uid.is_none() {
        return Ok(());
    }
    let (rv, uid) = stored_version(stored);
    if let Some(want) = expect.resource_version {
        if rv != want.to_string() {
            return Err(StoreError::Conflict {
                expected: want.to_string(),
                actual: rv,
            });
        }
    }
    if let Some(want) = &expect.uid {
        if &uid != want {
            return Err(StoreError::Conflict {
                expected: format!("uid {want}"),
                actual: format!("uid {uid}"),
            });
        }
    }
    Ok(())
}

/// Recent events, kept so watches can resume, and the broadcast that feeds live watchers.
pub struct WatchHub {
    history: VecDeque<Arc<StoreEvent>>,
    limit: usize,
    /// Every event with a revision above this is in `history`.
    floor: u64,
    tx: broadcast::Sender<Arc<StoreEvent>>,
    /// Set, to the new floor, when the state is replaced: tells the watchers of the current
    /// `tx` that its channel closed because they must relist, not because the store stopped.
    replaced: Arc<OnceLock<u64>>,
}

impl WatchHub {
    pub fn new(limit: usize, floor: u64) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        WatchHub {
            history: VecDeque::new(),
            limit: limit.max(1),
            floor,
            tx,
            replaced: Arc::new(OnceLock::new()),
        }
    }

    pub fn publish(&mut self, ev: StoreEvent) {
        let ev = Arc::new(ev);
        if self.history.len() == self.limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.revision;
            }
        }
        self.history.push_back(ev.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(ev);
    }

    /// Drop all history, e.g. after a snapshot replaced the state: watches must relist.
    /// Live watchers get the events already sent to them, then `Expired`.
    pub fn reset(&mut self, floor: u64) {
        self.history.clear();
        self.floor = floor;
        // Mark first, then close the old channel by dropping its only sender; new watchers
        // subscribe to the fresh one.
        let _ = self.replaced.set(floor);
        self.replaced = Arc::new(OnceLock::new());
        self.tx = broadcast::channel(BROADCAST_CAPACITY).0;
    }

    /// Drop the oldest events so that only `keep` remain (tests force compaction with it).
    pub fn compact(&mut self, keep: usize) {
        while self.history.len() > keep {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.revision;
            }
        }
    }

    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    fn subscribe(&self, filter: Filter, after: u64) -> Result<WatchStream> {
        if after < self.floor {
            return Err(StoreError::Expired {
                requested: after,
                oldest: self.floor,
            });
        }
        let backlog = self
            .history
            .iter()
            .filter(|e| e.revision > after && filter.matches(&e.key))
            .cloned()
            .collect();
        Ok(WatchStream {
            backlog,
            rx: self.tx.subscribe(),
            replaced: self.replaced.clone(),
            filter,
            after,
            done: false,
        })
    }
}

#[derive(Clone, Debug)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
}

impl Filter {
    fn matches(&self, key: &ObjectKey) -> bool {
        key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| &key.namespace == ns)
    }
}

/// Events of one resource (and namespace) after a revision, in order, without gaps.
pub struct WatchStream {
    backlog: VecDeque<Arc<StoreEvent>>,
    rx: broadcast::Receiver<Arc<StoreEvent>>,
    replaced: Arc<OnceLock<u64>>,
    filter: Filter,
    after: u64,
    done: bool,
}

impl WatchStream {
    /// The next event; `Some(Err(Expired))` once if this watcher fell too far behind or a
    /// snapshot replaced the state, then `None`. `None` also when the store shut down.
    pub async fn next(&mut self) -> Option<Result<Arc<StoreEvent>>> {
        if self.done {
            return None;
        }
        if let Some(ev) = self.backlog.pop_front() {
            self.after = ev.revision;
            return Some(Ok(ev));
        }
        loop {
            match self.rx.recv().await {
                Ok(ev) => {
                    if ev.revision <= self.after || !self.filter.matches(&ev.key) {
                        continue;
                    }
                    self.after = ev.revision;
                    return Some(Ok(ev));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.done = true;
                    return Some(Err(StoreError::Expired {
                        requested: self.after,
                        oldest: self.after + 1,
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return self.replaced.get().map(|&oldest| {
                        Err(StoreError::Expired {
                            requested: self.after,
                            oldest,
                        })
                    });
                }
            }
        }
    }

    /// Whether every event published so far has been handed out (or filtered away). Read
    /// the store's revision R first, then ask this: if true, nothing at or below R is still
    /// pending for this watcher, so a bookmark at R is safe.
    pub fn caught_up(&self) -> bool {
        self.backlog.is_empty() && self.rx.is_empty()
    }

    /// The revision of the last event handed out (or the start revision).
    pub fn revision(&self) -> u64 {
        self.after
    }
}

/// State and hub under one lock; what both store implementations hold.
pub struct Shared {
    inner: RwLock<(State, WatchHub)>,
}

impl Shared {
    pub fn new(state: State, history: usize) -> Self {
        let floor = state.revision();
        Shared {
            inner: RwLock::new((state, WatchHub::new(history, floor))),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, (State, WatchHub)> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, (State, WatchHub)> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply one write at `index` and notify watchers.
    pub fn apply(&self, index: u64, op: WriteOp) -> Result<Bytes> {
        let mut g = self.write_lock();
        let (state, hub) = &mut *g;
        let (res, ev) = state.apply(index, op);
        if let Some(ev) = ev {
            hub.publish(ev);
        }
        res
    }

    pub fn advance(&self, index: u64) {
        self.write_lock().0.advance(index);
    }

    /// Replace the whole state (snapshot install). Watchers must relist: history restarts.
    pub fn replace(&self, state: State) {
        let mut g = self.write_lock();
        let rev = state.revision();
        g.0 = state;
        g.1.reset(rev);
    }

    /// Run `f` over the current state (snapshot building, metrics).
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.read().0)
    }

    pub fn compact_history(&self, keep: usize) {
        self.write_lock().1.compact(keep);
    }

    pub fn watchers(&self) -> usize {
        self.read().1.watchers()
    }

    pub fn revision(&self) -> u64 {
        self.read().0.revision()
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.read().0.get(key).cloned().ok_or(StoreError::NotFound)
    }

    pub fn list(&self, resource: &Resource, namespace: Option<&str>) -> Listing {
        let g = self.read();
        Listing {
            items: g.0.list(resource, namespace),
            revision: g.0.revision(),
        }
    }

    pub fn watch(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        from: WatchFrom,
    ) -> Result<Watch> {
        let g = self.read();
        let filter = Filter {
            resource: resource.clone(),
            namespace: namespace.map(str::to_string),
        };
        match from {
            WatchFrom::Revision(rev) => Ok(Watch {
                initial: Vec::new(),
                revision: rev,
                events: g.1.subscribe(filter, rev)?,
            }),
            WatchFrom::Now => {
                let rev = g.0.revision();
                Ok(Watch {
                    initial: g.0.list(resource, namespace),
                    revision: rev,
                    events: g.1.subscribe(filter, rev)?,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cm(name: &str) -> ObjectKey {
        ObjectKey::new(Resource::new("", "configmaps"), "default", name)
    }

    fn create(name: &str) -> WriteOp {
        WriteOp::Create {
            key: cm(name),
            object: json!({"metadata": {"name": name}}).into(),
        }
    }

    #[test]
    fn events_share_the_key_of_the_stored_object() {
        let mut state = State::default();
        let stored = |s: &State| s.objects.get_key_value(&cm("a")).map(|(k, _)| k.clone());
        let (_, created) = state.apply(1, create("a"));
        let created = created.expect("event");
        let key = stored(&state).expect("stored");
        assert!(Arc::ptr_eq(&created.key, &key));
        let update = WriteOp::Update {
            key: cm("a"),
            object: json!({"metadata": {"name": "a"}, "data": {"k": "v"}}).into(),
            expect: Precondition::default(),
        };
        let (_, updated) = state.apply(2, update);
        assert!(Arc::ptr_eq(&updated.expect("event").key, &key));
        let delete = WriteOp::Delete {
            key: cm("a"),
            expect: Precondition::default(),
        };
        let (_, deleted) = state.apply(3, delete);
        let deleted = deleted.expect("event");
        assert!(Arc::ptr_eq(&deleted.key, &key));
        assert_eq!(*deleted.key, cm("a"));
        assert!(stored(&state).is_none());
        // Once the state lets go, the events are the key's only holders.
        drop(key);
        assert_eq!(
            Arc::strong_count(&deleted.key),
            2,
            "the create and delete events"
        );
    }

    #[tokio::test]
    async fn replacing_the_state_expires_live_watches_after_their_pending_events() {
        let shared = Shared::new(State::default(), 100);
        let resource = Resource::new("", "configmaps");
        let mut busy = shared
            .watch(&resource, None, WatchFrom::Now)
            .expect("watch")
            .events;
        let mut idle = shared
            .watch(&resource, None, WatchFrom::Revision(0))
            .expect("watch")
            .events;
        shared.apply(1, create("a")).expect("apply");
        let ev = idle.next().await.expect("event").expect("ok");
        assert_eq!(ev.revision, 1);

        shared.replace(State::from_parts(
            5000,
            [(cm("b"), Bytes::from_static(b"{}"))],
        ));

        // Sent before the snapshot: still delivered, in order.
        let ev = busy.next().await.expect("event").expect("ok");
        assert_eq!((ev.revision, ev.key.name.as_str()), (1, "a"));
        for (w, after) in [(&mut busy, 1), (&mut idle, 1)] {
            match w.next().await {
                Some(Err(StoreError::Expired { requested, oldest })) => {
                    assert_eq!((requested, oldest), (after, 5000));
                }
                other => panic!("expected Expired, got {other:?}"),
            }
            assert!(w.next().await.is_none(), "one Expired, then the end");
        }

        // New watchers live on the new state and see new writes.
        let mut fresh = shared
            .watch(&resource, None, WatchFrom::Now)
            .expect("watch")
            .events;
        // Only the new watcher listens to the new channel.
        assert_eq!(shared.watchers(), 1);
        shared.apply(5001, create("c")).expect("apply");
        let ev = fresh.next().await.expect("event").expect("ok");
        assert_eq!((ev.revision, ev.key.name.as_str()), (5001, "c"));
        assert!(matches!(
            shared.watch(&resource, None, WatchFrom::Revision(4999)),
            Err(StoreError::Expired { oldest: 5000, .. })
        ));
    }

    #[tokio::test]
    async fn a_store_that_stops_ends_watches_without_expired() {
        let shared = Shared::new(State::default(), 100);
        let mut w = shared
            .watch(&Resource::new("", "configmaps"), None, WatchFrom::Now)
            .expect("watch")
            .events;
        drop(shared);
        assert!(w.next().await.is_none());
    }
}
