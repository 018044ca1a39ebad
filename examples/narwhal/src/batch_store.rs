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
/// The most batch bytes in one batch-sync answer.
pub(crate) const MAX_SYNC_ANSWER_BYTES: usize = 6 << 20;
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

    /// The held batches among `wanted`, in order, up to [`MAX_SYNC_ANSWER_BYTES`] (at least
    /// one). Only shared handles are taken: the lock is not held while batches are copied.
    pub(crate) fn held(&self, wanted: &[Digest]) -> Vec<Arc<Transactions>> {
        let mut bytes = 0;
        let mut held = Vec::new();
        for digest in wanted {
            if let Some((batch, _)) = self.batches.get(digest) {
                bytes += batch.0.len();
                if bytes > MAX_SYNC_ANSWER_BYTES && !held.is_empty() {
                    break;
                }
                held.push(Arc::clone(batch));
            }
        }
        held
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
