//! Peer stores for P2PLane.
//!
//! [`MemoryPeerStore`] is the default [`PeerStore`]: bounded in peers and in addresses per
//! peer, dropping the least recently updated peer when full.
//!
//! ```
//! use p2plane_core::{PeerId, PeerStore};
//! use p2plane_peers::MemoryPeerStore;
//!
//! let store = MemoryPeerStore::new(1000, 8);
//! let peer = PeerId::random();
//! store.add_peer_with_addr(peer, "/ip4/127.0.0.1/tcp/4001".parse().unwrap());
//! assert_eq!(store.get_peers(), vec![peer]);
//! ```

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use p2plane_core::{Multiaddr, PeerId, PeerStore};

/// An in-memory [`PeerStore`], bounded in peers and in addresses per peer.
#[derive(Debug)]
pub struct MemoryPeerStore {
    inner: Mutex<Inner>,
    max_peers: usize,
    max_addrs_per_peer: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Addresses per peer, most recent first, with the update tick.
    peers: HashMap<PeerId, (u64, VecDeque<Multiaddr>)>,
    tick: u64,
}

impl MemoryPeerStore {
    /// A store that keeps at most `max_peers` peers and `max_addrs_per_peer` addresses each
    /// (both at least 1).
    pub fn new(max_peers: usize, max_addrs_per_peer: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_peers: max_peers.max(1),
            max_addrs_per_peer: max_addrs_per_peer.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryPeerStore {
    /// 10,000 peers, 8 addresses each.
    fn default() -> Self {
        Self::new(10_000, 8)
    }
}

impl PeerStore for MemoryPeerStore {
    fn get_peers(&self) -> Vec<PeerId> {
        self.lock().peers.keys().copied().collect()
    }

    fn add_peer_with_addr(&self, peer: PeerId, addr: Multiaddr) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.peers.contains_key(&peer) && inner.peers.len() >= self.max_peers {
            // O(n) eviction of the stalest peer; only when full.
            if let Some(stalest) = inner
                .peers
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(p, _)| *p)
            {
                inner.peers.remove(&stalest);
            }
        }
        let (t, addrs) = inner.peers.entry(peer).or_default();
        *t = tick;
        addrs.retain(|a| a != &addr);
        addrs.push_front(addr);
        addrs.truncate(self.max_addrs_per_peer);
    }

    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.lock()
            .peers
            .get(peer)
            .map(|(_, a)| a.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn remove_peer(&self, peer: &PeerId) -> bool {
        self.lock().peers.remove(peer).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn addresses_are_most_recent_first_and_capped() {
        let s = MemoryPeerStore::new(10, 2);
        let p = PeerId::random();
        s.add_peer_with_addr(p, addr(1));
        s.add_peer_with_addr(p, addr(2));
        s.add_peer_with_addr(p, addr(3));
        s.add_peer_with_addr(p, addr(2));
        assert_eq!(s.addresses(&p), vec![addr(2), addr(3)]);
    }

    #[test]
    fn full_store_evicts_the_stalest_peer() {
        let s = MemoryPeerStore::new(2, 1);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        s.add_peer_with_addr(a, addr(1));
        s.add_peer_with_addr(b, addr(2));
        s.add_peer_with_addr(a, addr(3));
        s.add_peer_with_addr(c, addr(4));
        let mut peers = s.get_peers();
        peers.sort();
        let mut want = vec![a, c];
        want.sort();
        assert_eq!(peers, want);
        assert!(s.remove_peer(&a));
        assert!(!s.remove_peer(&a));
        assert!(s.addresses(&a).is_empty());
    }
}
