use std::{collections::HashSet, sync::Arc};

use futures::channel::oneshot;
use p2plane_core::{Multiaddr, PeerId};
use p2plane_dht::DhtCommand;
pub use p2plane_dht::{DhtConfig, DhtError, DhtMode, FoundPeer, Quorum, StoreStats};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::command::Command;

/// A cheap, cloneable handle to a node's DHT (Kademlia): discovery, records and providers.
/// From [`Node::dht`](crate::Node::dht).
///
/// Keys and values are bytes. Records pass the configured validator
/// ([`DhtConfig::with_validator`]) before they are stored, locally or from the network, and
/// before a get returns them.
///
/// ```
/// use futures::StreamExt;
/// use p2plane::{DhtConfig, DhtMode, Event, Message, Node, NodeConfig, Quorum};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Ping;
/// impl Message for Ping {
///     const PROTOCOL: &'static str = "/dht-example/1.0.0";
/// }
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Loopback has no confirmed external address, so say "server" explicitly.
/// let config = || {
///     NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
///         .with_private_addrs(true)
///         .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)))
/// };
/// let first = Node::<Ping>::new(config()).await?;
/// let addr = first.listen_addrs().await?[0].clone();
/// let (a, b) = (Node::<Ping>::new(config()).await?, Node::<Ping>::new(config()).await?);
/// for node in [&a, &b] {
///     let mut events = node.events();
///     let boot = node.dial(addr.clone()).await?;
///     // Identify tells the node where the first one listens and that it speaks Kademlia.
///     while let Some(event) = events.next().await {
///         if matches!(event, Event::PeerIdentified { peer, .. } if peer == boot) {
///             break;
///         }
///     }
///     node.dht().bootstrap().await?;
/// }
/// a.dht().put_record(b"color".to_vec(), b"blue".to_vec(), Quorum::One).await?;
/// assert_eq!(b.dht().get_record(b"color".to_vec()).await?, b"blue");
/// assert!(!b.dht().find_peer(a.local_peer_id()).await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Dht {
    commands: mpsc::Sender<Command>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Dht {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        Self { commands, metrics }
    }

    /// Sends one query to the event loop and waits for its outcome, in a `p2plane.dht` span
    /// naming the query and recording its outcome.
    async fn ask<T>(
        &self,
        query: &'static str,
        make: impl FnOnce(oneshot::Sender<Result<T, DhtError>>) -> DhtCommand,
    ) -> Result<T, DhtError> {
        let span = tracing::debug_span!("p2plane.dht", query, outcome = tracing::field::Empty);
        let record = span.clone();
        let result = async {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(Command::Dht(make(tx)))
                .await
                .map_err(|_| DhtError::Shutdown)?;
            rx.await.map_err(|_| DhtError::Shutdown)?
        }
        .instrument(span)
        .await;
        match &result {
            Ok(_) => record.record("outcome", "ok"),
            Err(e) => record.record("outcome", tracing::field::display(e)),
        };
        if let Some(metrics) = &self.metrics {
            metrics.dht_query(query, result.is_ok());
        }
        result
    }

    /// Refreshes the routing table: looks up this node and random keys through the peers it
    /// knows. Fails with [`DhtError::NoKnownPeers`] before the node knows anyone.
    pub async fn bootstrap(&self) -> Result<(), DhtError> {
        self.ask("bootstrap", DhtCommand::Bootstrap).await
    }

    /// The peers closest to `key` (up to the replication factor), with their addresses.
    pub async fn closest_peers(
        &self,
        key: impl Into<Vec<u8>>,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, DhtError> {
        let key = key.into();
        self.ask("closest_peers", |r| DhtCommand::ClosestPeers(key, r))
            .await
    }

    /// Finds `peer`'s addresses through the DHT.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, DhtError> {
        self.lookup_peer(peer).await.map(|found| found.addresses)
    }

    /// Finds `peer` through the DHT, reporting how many requests the lookup sent.
    pub async fn lookup_peer(&self, peer: PeerId) -> Result<FoundPeer, DhtError> {
        self.ask("find_peer", |r| DhtCommand::FindPeer(peer, r))
            .await
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
        self.ask("put_record", |r| {
            DhtCommand::PutRecord(key, value, quorum, r)
        })
        .await
    }

    /// Finds the value stored under `key`.
    pub async fn get_record(&self, key: impl Into<Vec<u8>>) -> Result<Vec<u8>, DhtError> {
        let key = key.into();
        self.ask("get_record", |r| DhtCommand::GetRecord(key, r))
            .await
    }

    /// Announces that this node provides `key`.
    pub async fn start_providing(&self, key: impl Into<Vec<u8>>) -> Result<(), DhtError> {
        let key = key.into();
        self.ask("start_providing", |r| DhtCommand::StartProviding(key, r))
            .await
    }

    /// The nodes that announced they provide `key`.
    pub async fn providers(&self, key: impl Into<Vec<u8>>) -> Result<HashSet<PeerId>, DhtError> {
        let key = key.into();
        self.ask("providers", |r| DhtCommand::GetProviders(key, r))
            .await
    }

    /// The peers the routing table holds (none without a DHT).
    pub async fn routing_table_peers(&self) -> Result<Vec<PeerId>, DhtError> {
        self.read(DhtCommand::RoutingTablePeers).await
    }

    /// What the node's record store holds: records, publishers, the largest publisher's
    /// share (all zero without a DHT).
    pub async fn store_stats(&self) -> Result<StoreStats, DhtError> {
        self.read(DhtCommand::StoreStats).await
    }

    /// How many peers the routing table holds (0 without a DHT).
    pub async fn routing_table_size(&self) -> Result<usize, DhtError> {
        self.read(DhtCommand::RoutingTableSize).await
    }

    /// Asks the event loop for a piece of local state (no network query, no span).
    async fn read<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> DhtCommand,
    ) -> Result<T, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Dht(make(tx)))
            .await
            .map_err(|_| DhtError::Shutdown)?;
        rx.await.map_err(|_| DhtError::Shutdown)
    }
}
