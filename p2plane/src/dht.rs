use std::collections::HashSet;

use futures::channel::oneshot;
use p2plane_core::{Multiaddr, PeerId};
use p2plane_dht::DhtCommand;
pub use p2plane_dht::{DhtConfig, DhtError, DhtMode, Quorum};
use tokio::sync::mpsc;

use crate::event_loop::Command;

/// A cheap, cloneable handle to a node's DHT (Kademlia): discovery, records and providers.
/// From [`Node::dht`](crate::Node::dht).
///
/// Keys and values are bytes. Records pass the configured validator
/// ([`DhtConfig::with_validator`]) before they are stored, locally or from the network, and
/// before a get returns them.
#[derive(Clone, Debug)]
pub struct Dht {
    commands: mpsc::Sender<Command>,
}

impl Dht {
    pub(crate) fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, DhtError>>) -> DhtCommand,
    ) -> Result<T, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dht(make(tx)))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)?
    }

    /// Refreshes the routing table: looks up this node and random keys through the peers it
    /// knows. Fails with [`DhtError::NoKnownPeers`] before the node knows anyone.
    pub async fn bootstrap(&self) -> Result<(), DhtError> {
        self.ask(DhtCommand::Bootstrap).await
    }

    /// The peers closest to `key` (up to the replication factor), with their addresses.
    pub async fn closest_peers(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, DhtError> {
        let key = key.into();
        self.ask(|r| DhtCommand::ClosestPeers(key, r)).await
    }

    /// Finds `peer`'s addresses through the DHT.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, DhtError> {
        self.ask(|r| DhtCommand::FindPeer(peer, r)).await
    }

    /// Stores `value` under `key` on the nodes closest to the key; succeeds once `quorum` of
    /// them confirm.
    pub async fn put_record(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        quorum: Quorum,
    ) -> Result<(), DhtError> {
        let (key, value) = (key.into(), value.into());
        self.ask(|r| DhtCommand::PutRecord(key, value, quorum, r))
            .await
    }

    /// Finds the value stored under `key`.
    pub async fn get_record(&self, key: impl Into<Vec<u8>>) -> Result<Vec<u8>, DhtError> {
        let key = key.into();
        self.ask(|r| DhtCommand::GetRecord(key, r)).await
    }

    /// Announces that this node provides `key`.
    pub async fn start_providing(&self, key: impl Into<Vec<u8>>) -> Result<(), DhtError> {
        let key = key.into();
        self.ask(|r| DhtCommand::StartProviding(key, r)).await
    }

    /// The nodes that announced they provide `key`.
    pub async fn providers(&self, key: impl Into<Vec<u8>>) -> Result<HashSet<PeerId>, DhtError> {
        let key = key.into();
        self.ask(|r| DhtCommand::GetProviders(key, r)).await
    }

    /// How many peers the routing table holds (0 without a DHT).
    pub async fn routing_table_size(&self) -> Result<usize, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dht(DhtCommand::RoutingTableSize(tx)))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }
}
