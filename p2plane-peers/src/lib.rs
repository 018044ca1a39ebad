//! Peer stores for P2PLane: where a node keeps the addresses, dial outcomes, bans and
//! protocols of the peers it knows.
//!
//! | store | keeps | for |
//! |---|---|---|
//! | [`MemoryPeerStore`] | memory | the default |
//! | [`RedbPeerStore`] | one redb file (or redb's in-memory backend) | nodes that restart without the bootstrap node |
//!
//! `RedbPeerStore` needs the `redb` feature (default). Both pass the `conformance` suite (feature `conformance`), which a third-party [`PeerStore`] should pass too.
//!
//! ```
//! use p2plane_core::{PeerId, PeerStore};
//! use p2plane_peers::MemoryPeerStore;
//!
//! let store = MemoryPeerStore::new(1000, 8);
//! let peer = PeerId::random();
//! store.add_peer_with_addr(peer, "/ip4/192.0.2.1/tcp/4001".parse().unwrap());
//! assert_eq!(store.get_peers(), vec![peer]);
//! ```

mod book;
#[cfg(feature = "conformance")]
pub mod conformance;
mod memory;
#[cfg(feature = "redb")]
mod redb_store;

pub use memory::MemoryPeerStore;
pub use p2plane_core::{DialOutcome, PeerRecord, PeerStore, PeerStoreError};
#[cfg(feature = "redb")]
pub use redb_store::{RedbConfig, RedbPeerStore};

/// The default peer capacity of both stores.
pub const DEFAULT_MAX_PEERS: usize = 10_000;
/// The default number of addresses kept per peer.
pub const DEFAULT_MAX_ADDRS_PER_PEER: usize = 8;
