use std::{
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use p2plane_core::{DialOutcome, Multiaddr, PeerId, PeerRecord, PeerStore};

use crate::book::Book;

/// The default [`PeerStore`]: in memory, bounded in peers and in addresses per peer. When
/// full, it forgets the peer that changed least recently (banned peers last).
#[derive(Debug)]
pub struct MemoryPeerStore {
    book: Mutex<Book>,
}

impl MemoryPeerStore {
    /// A store that keeps at most `max_peers` peers and `max_addrs_per_peer` addresses each
    /// (both at least 1).
    pub fn new(max_peers: usize, max_addrs_per_peer: usize) -> Self {
        Self {
            book: Mutex::new(Book::new(max_peers, max_addrs_per_peer, false)),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryPeerStore {
    /// 10,000 peers, 8 addresses each.
    fn default() -> Self {
        Self::new(crate::DEFAULT_MAX_PEERS, crate::DEFAULT_MAX_ADDRS_PER_PEER)
    }
}

impl PeerStore for MemoryPeerStore {
    fn get_peers(&self) -> Vec<PeerId> {
        self.book().peers()
    }

    fn add_peer_with_addr(&self, peer: PeerId, addr: Multiaddr) {
        self.book().add_address(peer, addr);
    }

    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.book().addresses(peer)
    }

    fn record(&self, peer: &PeerId) -> Option<PeerRecord> {
        self.book().record(peer)
    }

    fn set_protocols(&self, peer: PeerId, protocols: Vec<String>) {
        self.book().set_protocols(peer, protocols);
    }

    fn record_outcome(&self, peer: PeerId, outcome: DialOutcome) {
        self.book().record_outcome(peer, outcome);
    }

    fn ban(&self, peer: PeerId, until: SystemTime) {
        self.book().ban(peer, until);
    }

    fn unban(&self, peer: &PeerId) {
        self.book().unban(peer);
    }

    fn remove_peer(&self, peer: &PeerId) -> bool {
        self.book().remove(peer)
    }
}
