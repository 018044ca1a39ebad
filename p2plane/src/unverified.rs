//! Addresses heard from third parties (a DHT lookup, mDNS) that no connection has proved.
//!
//! They may be dialled, but they are kept apart from the peer store, which holds only
//! addresses a connection proved (the handshake showed the expected peer there): a lying
//! lookup answer or a spoofed mDNS reply can neither enter the store nor evict what is in
//! it. An address moves to the store once a dial to it reaches the peer.

use std::sync::Mutex;

use foldhash::HashMap;
use libp2p::{Multiaddr, PeerId};

/// Peers whose unproved addresses are kept; beyond, an arbitrary one is forgotten.
const MAX_PEERS: usize = 1024;
/// Unproved addresses kept per peer.
const MAX_ADDRS: usize = 4;

struct Heard {
    addrs: Vec<Multiaddr>,
    /// Heard on the local network (mDNS), where private addresses are the point.
    local: bool,
}

/// The node's unproved addresses, bounded in peers and addresses per peer.
#[derive(Default)]
pub(crate) struct Unverified {
    heard: Mutex<HashMap<PeerId, Heard>>,
}

impl Unverified {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Heard>> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `addrs` for `peer`, heard on the local network when `local`.
    pub(crate) fn add(
        &self,
        peer: PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
        local: bool,
    ) {
        let mut heard = self.lock();
        if !heard.contains_key(&peer)
            && heard.len() >= MAX_PEERS
            && let Some(old) = heard.keys().next().copied()
        {
            heard.remove(&old);
        }
        let entry = heard.entry(peer).or_insert_with(|| Heard {
            addrs: Vec::new(),
            local,
        });
        entry.local |= local;
        for addr in addrs {
            if !entry.addrs.contains(&addr) {
                entry.addrs.insert(0, addr);
            }
        }
        entry.addrs.truncate(MAX_ADDRS);
    }

    /// The unproved addresses of `peer`.
    pub(crate) fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.lock()
            .get(peer)
            .map(|h| h.addrs.clone())
            .unwrap_or_default()
    }

    /// A dial to `addr` reached `peer`: forgets what was heard of it, and tells whether
    /// `addr` was heard on the local network.
    pub(crate) fn proved(&self, peer: &PeerId, addr: &Multiaddr) -> bool {
        self.lock()
            .remove(peer)
            .is_some_and(|h| h.local && h.addrs.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_proved_once() {
        let unverified = Unverified::default();
        let peer = PeerId::random();
        let addr =
            |port: u16| -> Multiaddr { format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap() };
        unverified.add(peer, (0..10).map(addr), true);
        assert_eq!(unverified.addresses(&peer).len(), MAX_ADDRS);
        assert!(unverified.proved(&peer, &addr(9)));
        assert!(unverified.addresses(&peer).is_empty());
        for _ in 0..MAX_PEERS + 10 {
            unverified.add(PeerId::random(), [addr(1)], false);
        }
        assert_eq!(unverified.lock().len(), MAX_PEERS);
    }
}
