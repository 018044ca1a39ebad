//! The address book both stores keep in memory: every rule of what is kept, and for how
//! long, lives here.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use p2plane_core::{DialOutcome, Multiaddr, PeerId, PeerRecord};

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) record: PeerRecord,
    /// When the entry last changed, for eviction when the book is full.
    activity: u64,
}

#[derive(Debug)]
pub(crate) struct Book {
    peers: HashMap<PeerId, Entry>,
    max_peers: usize,
    max_addrs_per_peer: usize,
    tick: u64,
    /// Peers changed (or evicted) since the last `take_touched`, when tracking is on.
    touched: Option<HashSet<PeerId>>,
}

impl Book {
    pub(crate) fn new(max_peers: usize, max_addrs_per_peer: usize, track: bool) -> Self {
        Self {
            peers: HashMap::new(),
            max_peers: max_peers.max(1),
            max_addrs_per_peer: max_addrs_per_peer.max(1),
            tick: 0,
            touched: track.then(HashSet::new),
        }
    }

    #[cfg(feature = "redb")]
    /// Loads a record without marking it changed (a persistent store's contents at open).
    pub(crate) fn load(&mut self, peer: PeerId, record: PeerRecord) {
        self.tick += 1;
        self.peers.insert(
            peer,
            Entry {
                record,
                activity: self.tick,
            },
        );
    }

    #[cfg(feature = "redb")]
    pub(crate) fn take_touched(&mut self) -> HashSet<PeerId> {
        self.touched
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    #[cfg(feature = "redb")]
    /// Marks peers changed again (their commit failed and must be retried).
    pub(crate) fn mark_touched(&mut self, peers: HashSet<PeerId>) {
        if let Some(t) = &mut self.touched {
            t.extend(peers);
        }
    }

    fn touch(&mut self, peer: PeerId) {
        if let Some(t) = &mut self.touched {
            t.insert(peer);
        }
    }

    /// The entry for `peer`, created (evicting the stalest unbanned peer if the book is
    /// full) when missing.
    fn entry(&mut self, peer: PeerId) -> &mut Entry {
        self.tick += 1;
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_peers {
            let now = SystemTime::now();
            let victim = self
                .peers
                .iter()
                .min_by_key(|(_, e)| (e.record.is_banned_at(now), e.activity))
                .map(|(p, _)| *p);
            if let Some(victim) = victim {
                self.peers.remove(&victim);
                self.touch(victim);
            }
        }
        self.touch(peer);
        let tick = self.tick;
        let entry = self.peers.entry(peer).or_insert_with(|| Entry {
            record: PeerRecord::default(),
            activity: tick,
        });
        entry.activity = tick;
        entry
    }

    pub(crate) fn peers(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    pub(crate) fn record(&self, peer: &PeerId) -> Option<PeerRecord> {
        self.peers.get(peer).map(|e| e.record.clone())
    }

    pub(crate) fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|e| e.record.addresses.iter().map(|(a, _)| a.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn add_address(&mut self, peer: PeerId, addr: Multiaddr) {
        let max = self.max_addrs_per_peer;
        let addrs = &mut self.entry(peer).record.addresses;
        addrs.retain(|(a, _)| a != &addr);
        addrs.insert(0, (addr, SystemTime::now()));
        addrs.truncate(max);
    }

    pub(crate) fn set_protocols(&mut self, peer: PeerId, protocols: Vec<String>) {
        self.entry(peer).record.protocols = protocols;
    }

    pub(crate) fn record_outcome(&mut self, peer: PeerId, outcome: DialOutcome) {
        let now = SystemTime::now();
        let record = &mut self.entry(peer).record;
        match outcome {
            DialOutcome::Success => {
                record.last_success = Some(now);
                record.failures = 0;
            }
            DialOutcome::Failure => {
                record.failures = record.failures.saturating_add(1);
                record.last_failure = Some(now);
            }
        }
    }

    pub(crate) fn ban(&mut self, peer: PeerId, until: SystemTime) {
        self.entry(peer).record.banned_until = Some(until);
    }

    pub(crate) fn unban(&mut self, peer: &PeerId) {
        if self.peers.contains_key(peer) {
            self.entry(*peer).record.banned_until = None;
        }
    }

    pub(crate) fn remove(&mut self, peer: &PeerId) -> bool {
        let known = self.peers.remove(peer).is_some();
        if known {
            self.touch(*peer);
        }
        known
    }
}
