//! Which connected peers speak which protocols, as identify reports them. The event loop
//! writes it; failover selectors read it.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use p2plane_core::PeerId;

use crate::layer::PeerSelector;

#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    protocols: RwLock<HashMap<PeerId, Vec<String>>>,
}

impl PeerTable {
    pub(crate) fn set(&self, peer: PeerId, protocols: Vec<String>) {
        self.protocols
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, protocols);
    }

    pub(crate) fn remove(&self, peer: &PeerId) {
        self.protocols
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    fn speakers(&self, protocol: &str, exclude: &[PeerId]) -> Vec<PeerId> {
        let table = self.protocols.read().unwrap_or_else(|e| e.into_inner());
        table
            .iter()
            .filter(|(peer, protocols)| {
                !exclude.contains(peer) && protocols.iter().any(|p| p == protocol)
            })
            .map(|(peer, _)| *peer)
            .collect()
    }
}

/// A [`PeerSelector`] that picks, at random, a connected peer that announced (through
/// identify) that it serves the request's protocol. From
/// [`Node::peer_selector`](crate::Node::peer_selector).
#[derive(Debug, Clone)]
pub struct ConnectedPeers {
    table: Arc<PeerTable>,
}

impl ConnectedPeers {
    pub(crate) fn new(table: Arc<PeerTable>) -> Self {
        Self { table }
    }

    /// The connected peers that serve `protocol`, in no particular order.
    pub fn serving(&self, protocol: &str) -> Vec<PeerId> {
        self.table.speakers(protocol, &[])
    }
}

impl PeerSelector for ConnectedPeers {
    fn select(&self, protocol: &str, exclude: &[PeerId]) -> Option<PeerId> {
        let candidates = self.table.speakers(protocol, exclude);
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[rand::random_range(0..candidates.len())])
    }
}
