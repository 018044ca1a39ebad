use std::time::SystemTime;

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

/// Everything a store knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerRecord {
    /// Addresses with the time each was last seen, most recent first.
    pub addresses: Vec<(Multiaddr, SystemTime)>,
    /// Protocols the peer serves, as it announced them.
    pub protocols: Vec<String>,
    /// When a connection to the peer last succeeded.
    pub last_success: Option<SystemTime>,
    /// Failed dials since the last success.
    pub failures: u32,
    /// When a dial last failed.
    pub last_failure: Option<SystemTime>,
    /// The peer is refused, inbound and outbound, until then.
    pub banned_until: Option<SystemTime>,
}

impl PeerRecord {
    /// Whether the peer is banned at `now`.
    pub fn is_banned_at(&self, now: SystemTime) -> bool {
        self.banned_until.is_some_and(|until| until > now)
    }
}

/// The outcome of a connection attempt, for dial backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialOutcome {
    /// A connection was established.
    Success,
    /// The dial failed.
    Failure,
}

/// Why a peer store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerStoreError {
    /// The store's file is damaged.
    #[error("peer store is corrupted: {0}")]
    Corrupted(String),
    /// The storage failed (I/O, disk full, locked by another process).
    #[error("peer store storage error: {0}")]
    Storage(String),
    /// The store was closed.
    #[error("peer store is closed")]
    Closed,
}

/// Where a node keeps what it knows about other peers: addresses, dial outcomes, bans and
/// protocols.
///
/// Methods take `&self` and are synchronous: the node's event loop calls them inline, so an
/// implementation must answer fast, use interior mutability, and never wait on a disk (see
/// [`PeerStore::flush`] for durability). Implementations bound what they keep (peers,
/// addresses per peer). `p2plane-peers` has a conformance suite every implementation should
/// pass.
pub trait PeerStore: Send + Sync + 'static {
    /// Every peer the store knows.
    fn get_peers(&self) -> Vec<PeerId>;

    /// Records that `peer` can be reached at `addr`, seen now.
    fn add_peer_with_addr(&self, peer: PeerId, addr: Multiaddr);

    /// The addresses known for `peer`, most recently seen first.
    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr>;

    /// All the store knows about `peer`.
    fn record(&self, peer: &PeerId) -> Option<PeerRecord>;

    /// Replaces the protocols `peer` serves.
    fn set_protocols(&self, peer: PeerId, protocols: Vec<String>);

    /// Records the outcome of a connection attempt to `peer`, now. A success clears the
    /// failure count.
    fn record_outcome(&self, peer: PeerId, outcome: DialOutcome);

    /// Refuses `peer` until `until`.
    fn ban(&self, peer: PeerId, until: SystemTime);

    /// Lifts a ban.
    fn unban(&self, peer: &PeerId);

    /// Whether `peer` is banned now.
    fn is_banned(&self, peer: &PeerId) -> bool {
        self.record(peer)
            .is_some_and(|r| r.is_banned_at(SystemTime::now()))
    }

    /// Forgets `peer`. Returns whether it was known.
    fn remove_peer(&self, peer: &PeerId) -> bool;

    /// Waits until every change made before the call is durable. Stores that keep nothing
    /// beyond the process return `Ok` at once.
    fn flush(&self) -> Result<(), PeerStoreError> {
        Ok(())
    }
}
