//! The batches an authority's worker holds: its own and the other workers', by digest, with
//! the round each was stored in for garbage collection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::types::{Digest, Round, Transactions};

/// The most batch bytes a worker stores; beyond, other workers' batches are answered `Busy`
/// until garbage collection frees room.
pub(crate) const MAX_STORE_BYTES: usize = 2 << 30;
/// Batches by digest, each with the primary's round when it was stored (for garbage
/// collection).
#[derive(Default)]
pub(crate) struct BatchStore {
    /// Shared, so that an answer can take batches out under the lock without copying them
    /// there.
    batches: HashMap<Digest, (Arc<Transactions>, Round)>,
    bytes: usize,
}

pub(crate) type SharedStore = Arc<Mutex<BatchStore>>;

impl BatchStore {
    pub(crate) fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, BatchStore> {
        store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a batch; `false` if the store is full.
    pub(crate) fn insert(&mut self, digest: Digest, batch: Transactions, round: Round) -> bool {
        if self.batches.contains_key(&digest) {
            return true;
        }
        if self.bytes + batch.0.len() > MAX_STORE_BYTES {
            return false;
        }
        self.bytes += batch.0.len();
        self.batches.insert(digest, (Arc::new(batch), round));
        true
    }

    /// The held batches among `wanted`, in order. Only shared handles are taken: the lock is
    /// not held while batches are copied (a batch-sync answer streams them, each copied when
    /// the caller has room for it).
    pub(crate) fn held(&self, wanted: &[Digest]) -> Vec<Arc<Transactions>> {
        wanted
            .iter()
            .filter_map(|digest| self.batches.get(digest).map(|(batch, _)| Arc::clone(batch)))
            .collect()
    }

    /// The digests of `wanted` not held.
    pub(crate) fn missing(&self, wanted: &[Digest]) -> Vec<Digest> {
        wanted
            .iter()
            .filter(|d| !self.batches.contains_key(d))
            .copied()
            .collect()
    }

    /// Drops batches stored before round `gc_round`.
    pub(crate) fn collect_garbage(&mut self, gc_round: Round) {
        let mut freed = 0;
        self.batches.retain(|_, (batch, round)| {
            let keep = *round >= gc_round;
            if !keep {
                freed += batch.0.len();
            }
            keep
        });
        self.bytes -= freed;
    }
}
