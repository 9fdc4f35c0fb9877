//! An in-memory `ObjectStore`: the same `State` as the Raft store, with a counter in place
//! of the log. For tests of everything above the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use super::state::{Shared, State, DEFAULT_HISTORY};
use super::{
    Listing, ObjectKey, ObjectStore, ReadMode, Resource, Result, Watch, WatchFrom, WriteOp,
};

pub struct MemoryStore {
    shared: Shared,
    /// Serializes writes so revisions are applied in order, like a log.
    next: Mutex<()>,
    index: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }
}

impl MemoryStore {
    pub fn with_history(history: usize) -> Self {
        MemoryStore {
            shared: Shared::new(State::default(), history),
            next: Mutex::new(()),
            index: AtomicU64::new(0),
        }
    }

    /// Forget all but the newest `keep` events, as if history had been compacted.
    pub fn compact_history(&self, keep: usize) {
        self.shared.compact_history(keep);
    }
}

impl ObjectStore for MemoryStore {
    async fn get(&self, key: &ObjectKey, _mode: ReadMode) -> Result<Bytes> {
        self.shared.get(key)
    }

    async fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        _mode: ReadMode,
    ) -> Result<Listing> {
        Ok(self.shared.list(resource, namespace))
    }

    async fn write(&self, op: WriteOp) -> Result<Bytes> {
        let _g = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.apply(index, op)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_suite() {
        crate::store::suite::run_all(|history| async move { MemoryStore::with_history(history) })
            .await;
    }
}
