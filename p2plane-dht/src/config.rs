use std::{fmt, num::NonZeroUsize, path::PathBuf, sync::Arc, time::Duration};

use libp2p::{
    PeerId, StreamProtocol,
    kad::{self, store::MemoryStoreConfig},
};

use crate::{
    behaviour::Kademlia,
    error::DhtError,
    store::{DhtStore, PublisherQuota, RecordValidator},
};

/// Whether the node answers other nodes' Kademlia queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhtMode {
    /// Serves queries and stores records for others.
    Server,
    /// Asks, but does not answer or store.
    Client,
    /// libp2p's automatic mode: a client until an external address is confirmed (which
    /// never happens on loopback or behind NAT without more protocols).
    Automatic,
}

/// How the node takes part in the DHT.
#[derive(Clone)]
pub struct DhtConfig {
    /// The Kademlia protocol name. Default `/p2plane/kad/1.0.0`; `/ipfs/kad/1.0.0` joins IPFS.
    pub protocol: String,
    /// Default [`DhtMode::Automatic`].
    pub mode: DhtMode,
    /// How many nodes store each record (k). Default 20.
    pub replication: NonZeroUsize,
    /// Lookups in flight per query (alpha). Default 3.
    pub parallelism: NonZeroUsize,
    /// How long a query may run. Default 10 s.
    pub query_timeout: Duration,
    /// How long records live. Default 48 h.
    pub record_ttl: Option<Duration>,
    /// How long provider records live. Default 48 h.
    pub provider_ttl: Option<Duration>,
    /// How often the routing table is refreshed. Default 5 min; `None` turns it off.
    pub bootstrap_interval: Option<Duration>,
    /// Records kept. Default 1,024.
    pub max_records: usize,
    /// Largest record value, in bytes. Default 16 KiB (Kademlia's packet limit is raised to
    /// fit it).
    pub max_value_bytes: usize,
    /// Records one publishing peer may have this node store. Default 128.
    pub max_records_per_publisher: usize,
    /// Bytes of record values one publishing peer may have this node store. Default 1 MiB.
    pub max_bytes_per_publisher: usize,
    /// Provider records one peer may have this node store (each with at most
    /// [`MAX_PROVIDER_ADDRS`](crate::MAX_PROVIDER_ADDRS) addresses). This node's own provider
    /// records are kept apart and never crowded out by others'. Other peers' provider records
    /// cover at most `4 × max_records` keys in all. Default 128.
    pub max_provider_records_per_peer: usize,
    /// A redb file that mirrors the record store, so a restarted node still holds the
    /// records and provider records it stored. Default `None` (memory only).
    pub record_store: Option<PathBuf>,
    /// Runs before a record is stored (local or from the network) or returned by a get.
    pub validator: Option<RecordValidator>,
}

impl fmt::Debug for DhtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhtConfig")
            .field("protocol", &self.protocol)
            .field("mode", &self.mode)
            .field("replication", &self.replication)
            .field("parallelism", &self.parallelism)
            .field("query_timeout", &self.query_timeout)
            .field("max_records", &self.max_records)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("max_records_per_publisher", &self.max_records_per_publisher)
            .field("max_bytes_per_publisher", &self.max_bytes_per_publisher)
            .field(
                "max_provider_records_per_peer",
                &self.max_provider_records_per_peer,
            )
            .field("record_store", &self.record_store)
            .field("validator", &self.validator.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            protocol: "/p2plane/kad/1.0.0".to_owned(),
            mode: DhtMode::Automatic,
            replication: NonZeroUsize::new(20).expect("non-zero"),
            parallelism: NonZeroUsize::new(3).expect("non-zero"),
            query_timeout: Duration::from_secs(10),
            record_ttl: Some(Duration::from_secs(48 * 3600)),
            provider_ttl: Some(Duration::from_secs(48 * 3600)),
            bootstrap_interval: Some(Duration::from_secs(300)),
            max_records: 1024,
            max_value_bytes: 16 * 1024,
            max_records_per_publisher: 128,
            max_bytes_per_publisher: 1 << 20,
            max_provider_records_per_peer: 128,
            record_store: None,
            validator: None,
        }
    }
}

impl DhtConfig {
    /// Sets the mode.
    #[must_use]
    pub fn with_mode(mut self, mode: DhtMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the protocol name (it must start with `/`).
    #[must_use]
    pub fn with_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = protocol.into();
        self
    }

    /// Sets the replication factor.
    #[must_use]
    pub fn with_replication(mut self, k: NonZeroUsize) -> Self {
        self.replication = k;
        self
    }

    /// Sets the query timeout.
    #[must_use]
    pub fn with_query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Sets how many lookups a query keeps in flight (alpha).
    #[must_use]
    pub fn with_parallelism(mut self, alpha: NonZeroUsize) -> Self {
        self.parallelism = alpha;
        self
    }

    /// Sets how long records live; `None` keeps them until the store evicts them.
    #[must_use]
    pub fn with_record_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// Sets how long provider records live; `None` keeps them until the store evicts them.
    #[must_use]
    pub fn with_provider_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.provider_ttl = ttl;
        self
    }

    /// Sets how often the routing table is refreshed; `None` turns periodic refresh off
    /// (a node still refreshes when its table holds fewer than k peers).
    #[must_use]
    pub fn with_bootstrap_interval(mut self, interval: Option<Duration>) -> Self {
        self.bootstrap_interval = interval;
        self
    }

    /// Sets how many records the node keeps in all, and the largest value it accepts.
    #[must_use]
    pub fn with_store_limits(mut self, max_records: usize, max_value_bytes: usize) -> Self {
        self.max_records = max_records;
        self.max_value_bytes = max_value_bytes;
        self
    }

    /// Keeps the record store in the redb file at `path` as well as in memory.
    #[must_use]
    pub fn with_record_store(mut self, path: impl Into<PathBuf>) -> Self {
        self.record_store = Some(path.into());
        self
    }

    /// Sets how many records, and bytes of values, one publishing peer may have this node
    /// store.
    #[must_use]
    pub fn with_publisher_quota(mut self, records: usize, bytes: usize) -> Self {
        self.max_records_per_publisher = records;
        self.max_bytes_per_publisher = bytes;
        self
    }

    /// Sets how many provider records one peer may have this node store.
    #[must_use]
    pub fn with_provider_quota(mut self, records: usize) -> Self {
        self.max_provider_records_per_peer = records;
        self
    }

    /// Sets the record validator.
    #[must_use]
    pub fn with_validator(
        mut self,
        validator: impl Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// The libp2p protocol name; an invalid configured name falls back to the default.
    pub fn stream_protocol(&self) -> StreamProtocol {
        StreamProtocol::try_from_owned(self.protocol.clone())
            .unwrap_or_else(|_| StreamProtocol::new("/p2plane/kad/1.0.0"))
    }

    fn memory_config(&self) -> MemoryStoreConfig {
        MemoryStoreConfig {
            max_records: self.max_records,
            max_value_bytes: self.max_value_bytes,
            ..Default::default()
        }
    }

    fn quota(&self) -> PublisherQuota {
        PublisherQuota {
            records: self.max_records_per_publisher,
            bytes: self.max_bytes_per_publisher,
            provider_records: self.max_provider_records_per_peer,
        }
    }

    /// The record store for node `peer`: in memory, or mirrored to
    /// [`record_store`](Self::record_store) (opened, and loaded, here).
    pub fn open_store(&self, peer: PeerId) -> Result<DhtStore, DhtError> {
        let store = match &self.record_store {
            Some(path) => DhtStore::open(path, peer, self.memory_config(), self.quota())?,
            None => DhtStore::in_memory(peer, self.memory_config(), self.quota()),
        };
        Ok(store.with_validator(self.validator.clone()))
    }

    /// The Kademlia behaviour for node `peer`, with an in-memory store.
    pub fn behaviour(&self, peer: PeerId) -> Kademlia {
        let store = DhtStore::in_memory(peer, self.memory_config(), self.quota())
            .with_validator(self.validator.clone());
        self.behaviour_with_store(peer, store)
    }

    /// The Kademlia behaviour for node `peer` with `store` (from [`Self::open_store`]).
    pub fn behaviour_with_store(&self, peer: PeerId, store: DhtStore) -> Kademlia {
        let mut config = kad::Config::new(self.stream_protocol());
        config
            .set_replication_factor(self.replication)
            .set_parallelism(self.parallelism)
            .set_query_timeout(self.query_timeout)
            .set_record_ttl(self.record_ttl)
            .set_provider_record_ttl(self.provider_ttl)
            .set_periodic_bootstrap_interval(self.bootstrap_interval)
            .set_max_packet_size(self.max_value_bytes + 4096)
            // Inbound records are stored as they arrive, by the store, which checks them
            // (validator, quotas, caps): a record it refuses is not acknowledged.
            .set_record_filtering(kad::StoreInserts::Unfiltered);
        let mut behaviour = kad::Behaviour::with_config(peer, store, config);
        match self.mode {
            DhtMode::Server => behaviour.set_mode(Some(kad::Mode::Server)),
            DhtMode::Client => behaviour.set_mode(Some(kad::Mode::Client)),
            DhtMode::Automatic => behaviour.set_mode(None),
        }
        Kademlia::new(behaviour)
    }
}
