//! The inbound byte budget: how many bytes of requests (and of their answers, until written)
//! a node holds at once, in total and for any one peer. A request is charged its announced
//! length before its body is read; the charge lasts until its answer has been written. A
//! request over budget is answered `Busy` without its body ever being held.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most peers whose budget is tracked while none of their bytes are held.
const MAX_IDLE_PEERS: usize = 4096;

/// Bytes held for one request or answer; released when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    global: OwnedSemaphorePermit,
    peer: OwnedSemaphorePermit,
}

impl Charge {
    /// The bytes this charge holds.
    pub(crate) fn bytes(&self) -> usize {
        self.peer.num_permits()
    }

    fn merge(&mut self, other: Charge) {
        self.global.merge(other.global);
        self.peer.merge(other.peer);
    }
}

/// A budget shared by every protocol a node serves.
#[derive(Debug)]
pub(crate) struct Budget {
    global: Arc<Semaphore>,
    total: usize,
    per_peer: usize,
    peers: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    /// The most bytes held at once so far.
    peak: std::sync::atomic::AtomicUsize,
}

impl Budget {
    pub(crate) fn new(global: usize, per_peer: usize) -> Self {
        let cap = Semaphore::MAX_PERMITS;
        Self {
            global: Arc::new(Semaphore::new(global.min(cap))),
            total: global.min(cap),
            per_peer: per_peer.min(global).min(cap),
            peers: Mutex::default(),
            peak: Default::default(),
        }
    }

    /// The semaphore of `peer`'s budget (kept for as long as some of its bytes are held,
    /// and forgotten, beyond [`MAX_IDLE_PEERS`] peers, once none are).
    pub(crate) fn peer(&self, peer: PeerId) -> Arc<Semaphore> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sem) = peers.get(&peer) {
            return Arc::clone(sem);
        }
        if peers.len() >= MAX_IDLE_PEERS {
            peers.retain(|_, sem| {
                Arc::strong_count(sem) > 1 || sem.available_permits() < self.per_peer
            });
        }
        let sem = Arc::new(Semaphore::new(self.per_peer));
        peers.insert(peer, Arc::clone(&sem));
        sem
    }

    /// Charges `bytes` to `peer` (its semaphore from [`Budget::peer`]) at once, or `None`
    /// when the peer's or the node's budget has no room.
    pub(crate) fn try_charge(&self, peer: &Arc<Semaphore>, bytes: usize) -> Option<Charge> {
        let n = u32::try_from(bytes.max(1)).ok()?;
        let peer = Arc::clone(peer).try_acquire_many_owned(n).ok()?;
        let global = Arc::clone(&self.global).try_acquire_many_owned(n).ok()?;
        self.note_peak();
        Some(Charge { global, peer })
    }

    fn note_peak(&self) {
        self.peak
            .fetch_max(self.held(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The most bytes held at once since the node started.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes `charge` hold at least `bytes`, waiting up to `wait` for room; `false` when
    /// there was none in time (or `bytes` exceeds a budget outright).
    pub(crate) async fn grow(
        &self,
        peer: &Arc<Semaphore>,
        charge: &mut Charge,
        bytes: usize,
        wait: Duration,
    ) -> bool {
        let Some(more) = bytes.checked_sub(charge.bytes()).filter(|&n| n > 0) else {
            return true;
        };
        let Ok(n) = u32::try_from(more) else {
            return false;
        };
        if more > self.per_peer {
            return false;
        }
        // Usually there is room: take it without a timer.
        if let Some(extra) = self.try_charge(peer, more) {
            charge.merge(extra);
            return true;
        }
        let acquire = async {
            let peer = Arc::clone(peer).acquire_many_owned(n).await.ok()?;
            let global = Arc::clone(&self.global).acquire_many_owned(n).await.ok()?;
            Some(Charge { global, peer })
        };
        match tokio::time::timeout(wait, acquire).await {
            Ok(Some(extra)) => {
                charge.merge(extra);
                self.note_peak();
                true
            }
            _ => false,
        }
    }

    /// Bytes held now, for all peers.
    pub(crate) fn held(&self) -> usize {
        self.total - self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn charges_are_bounded_per_peer_and_in_total_and_released_on_drop() {
        let budget = Budget::new(100, 60);
        let (a, b, c) = (
            budget.peer(PeerId::random()),
            budget.peer(PeerId::random()),
            budget.peer(PeerId::random()),
        );
        let first = budget.try_charge(&a, 50).expect("within both budgets");
        assert!(budget.try_charge(&a, 20).is_none(), "a's own budget is 60");
        let second = budget.try_charge(&b, 50).expect("b has its own 60");
        assert!(
            budget.try_charge(&c, 1).is_none(),
            "the node's 100 are held"
        );
        assert_eq!(budget.held(), 100);
        drop(first);
        assert!(budget.try_charge(&c, 50).is_some());
        drop(second);
        assert_eq!(budget.held(), 0);
        assert!(
            budget.try_charge(&a, 61).is_none(),
            "more than a peer may ever hold"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn growing_waits_for_room_then_gives_up() {
        let budget = Budget::new(100, 100);
        let peer = budget.peer(PeerId::random());
        let mut charge = budget.try_charge(&peer, 10).unwrap();
        let other = budget.try_charge(&peer, 80).unwrap();
        assert!(
            !budget
                .grow(&peer, &mut charge, 30, Duration::from_secs(1))
                .await
        );
        assert_eq!(charge.bytes(), 10);
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(other);
        });
        assert!(
            budget
                .grow(&peer, &mut charge, 30, Duration::from_secs(1))
                .await
        );
        assert_eq!(charge.bytes(), 30);
        release.await.unwrap();
        assert!(
            !budget
                .grow(&peer, &mut charge, 101, Duration::from_secs(1))
                .await
        );
    }

    #[test]
    fn idle_peers_are_forgotten_beyond_the_cap() {
        let budget = Budget::new(1 << 20, 1 << 10);
        let held_by = budget.peer(PeerId::random());
        let _held = budget.try_charge(&held_by, 5).unwrap();
        drop(held_by);
        for _ in 0..MAX_IDLE_PEERS + 10 {
            budget.peer(PeerId::random());
        }
        let peers = budget.peers.lock().unwrap();
        assert!(peers.len() <= MAX_IDLE_PEERS, "{}", peers.len());
        assert!(
            peers.values().any(|s| s.available_permits() < 1 << 10),
            "a peer with bytes held is kept"
        );
    }
}
