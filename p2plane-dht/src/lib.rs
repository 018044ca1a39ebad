//! Kademlia discovery, records and providers for P2PLane, on libp2p-kad.
//!
//! - [`DhtConfig`]: protocol name, mode, replication, TTLs, timeouts, parallelism, periodic
//!   bootstrap, store bounds and a record validator, with defaults and `with_*` setters.
//! - [`DhtState`]: the state machine the node's event loop drives: it turns [`DhtCommand`]s
//!   into Kademlia queries and answers each when its query ends (`on_command`/`on_event`).
//!
//! Applications use it through the `p2plane` facade (`node.dht()`).

mod config;
mod state;

pub use config::{DhtConfig, DhtMode, RecordValidator};
pub use state::{DhtCommand, DhtError, DhtState, FoundPeer, Quorum};
