//! The object store contract between the API layer and whatever keeps the objects.
//!
//! ```text
//!  api::handler ──ObjectStore──▶ MemoryStore (tests)      ┐ both wrap the same
//!                             └▶ control::store::RaftStore ┘ `state::State`
//! ```
//!
//! The store is deliberately dumb: it keeps JSON objects keyed by resource, namespace and
//! name, stamps `metadata.resourceVersion` with the revision of the write (derived from its
//! position in the Raft log: unique per write, rising in log order), checks preconditions,
//! and tails applied writes to watchers. Everything Kubernetes means by an object (defaults,
//! validation, uid, generation) is decided above it, before a write is proposed, so a
//! rejected request never reaches the log.

pub mod memory;
pub mod object;
pub mod state;
#[cfg(any(test, feature = "test-util"))]
pub mod suite;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use object::ObjectJson;
pub use state::{State, WatchHub, WatchStream};

/// A kind of object as the store sees it: API group and plural resource name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resource {
    pub group: String,
    pub plural: String,
}

impl Resource {
    pub fn new(group: &str, plural: &str) -> Self {
        Resource {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// Where one object lives. `namespace` is empty for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: Resource, namespace: &str, name: &str) -> Self {
        ObjectKey {
            resource,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// Conditions a write must meet against the stored object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    pub resource_version: Option<u64>,
    pub uid: Option<String>,
}

/// One write, as proposed to the log. Objects arrive complete (uid, timestamps, generation
/// set by the API layer), so applying a write is deterministic on every replica. They
/// travel as JSON text ([`ObjectJson`]): the log, the peers and the leader only carry them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    Create {
        key: ObjectKey,
        object: ObjectJson,
    },
    Update {
        key: ObjectKey,
        object: ObjectJson,
        expect: Precondition,
    },
    Delete {
        key: ObjectKey,
        expect: Precondition,
    },
}

impl WriteOp {
    pub fn key(&self) -> &ObjectKey {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }
}

/// Why the store refused or failed. The API layer maps these to `Status` in one place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("object not found")]
    NotFound,
    #[error("object already exists")]
    AlreadyExists,
    #[error("resource version conflict: expected {expected}, stored {actual}")]
    Conflict { expected: String, actual: String },
    #[error("resource version {requested} is too old, the oldest available is {oldest}")]
    Expired { requested: u64, oldest: u64 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store failure: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How fresh a read must be. Kubernetes reads with no resourceVersion are linearizable;
/// `resourceVersion=0` lets the server answer from any replica's applied state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    Linearizable,
    Stale,
}

/// Objects of one resource (optionally one namespace) at one revision.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Serialized JSON objects ordered by (namespace, name).
    pub items: Vec<Bytes>,
    /// The applied revision the listing reflects.
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One applied change to one object.
#[derive(Clone, Debug)]
pub struct StoreEvent {
    pub revision: u64,
    pub kind: EventType,
    /// Shared with the state's map while the object lives: the history holds up to
    /// 10,000 events by default, and a copy of each key would cost ~200 B per event.
    pub key: Arc<ObjectKey>,
    /// The object after the write; for a delete, the last state with the delete's revision.
    pub object: Bytes,
    /// The object before the write (none for a create); lets watchers with selectors turn
    /// "stopped matching" into DELETED.
    pub prev: Option<Bytes>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// Every event after this revision (410 Expired if it left the history window).
    Revision(u64),
    /// The current objects as the initial state, then every later event.
    Now,
}

/// What `ObjectStore::watch` returns: the initial objects (for `WatchFrom::Now`), the
/// revision they reflect, and the stream of events after it.
pub struct Watch {
    pub initial: Vec<Bytes>,
    pub revision: u64,
    pub events: WatchStream,
}

/// The object store the API layer runs on.
pub trait ObjectStore: Send + Sync + 'static {
    fn get(&self, key: &ObjectKey, mode: ReadMode) -> impl Future<Output = Result<Bytes>> + Send;
    fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        mode: ReadMode,
    ) -> impl Future<Output = Result<Listing>> + Send;
    /// Apply one write after it is durable; returns the stored object (with its new
    /// resourceVersion; for a delete, the deleted object).
    fn write(&self, op: WriteOp) -> impl Future<Output = Result<Bytes>> + Send;
    fn watch(&self, resource: &Resource, namespace: Option<&str>, from: WatchFrom)
        -> Result<Watch>;
    /// The applied revision.
    fn revision(&self) -> u64;
}

/// Shared handle: `Arc<S>` is a store too, so one store can serve the API and in-process clients.
impl<S: ObjectStore> ObjectStore for Arc<S> {
    fn get(&self, key: &ObjectKey, mode: ReadMode) -> impl Future<Output = Result<Bytes>> + Send {
        (**self).get(key, mode)
    }
    fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        mode: ReadMode,
    ) -> impl Future<Output = Result<Listing>> + Send {
        (**self).list(resource, namespace, mode)
    }
    fn write(&self, op: WriteOp) -> impl Future<Output = Result<Bytes>> + Send {
        (**self).write(op)
    }
    fn watch(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        from: WatchFrom,
    ) -> Result<Watch> {
        (**self).watch(resource, namespace, from)
    }
    fn revision(&self) -> u64 {
        (**self).revision()
    }
}
