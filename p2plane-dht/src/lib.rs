//! Kademlia discovery, records and providers for P2PLane, on libp2p-kad.
//!
//! - [`DhtConfig`]: protocol name, mode, replication, TTLs, timeouts, parallelism, periodic
//!   bootstrap, store bounds and a record validator, with defaults and `with_*` setters.
//! - [`DhtState`]: the state machine the node's event loop drives: it turns [`DhtCommand`]s
//!   into Kademlia queries and answers each when its query ends (`on_command`/`on_event`).
//!
//! Applications use it through the `p2plane` facade (`node.dht()`); what they set here is
//! the configuration:
//!
//! ```
//! use std::{num::NonZeroUsize, time::Duration};
//! use p2plane_dht::{DhtConfig, DhtMode};
//!
//! let config = DhtConfig::default()
//!     .with_mode(DhtMode::Server) // answer queries even without a confirmed public address
//!     .with_replication(NonZeroUsize::new(5).unwrap())
//!     .with_query_timeout(Duration::from_secs(10))
//!     // Records under "name/" must be short UTF-8; the validator runs before a record is
//!     // stored (locally or from the network) and before a get returns it.
//!     .with_validator(|key, value| match key.strip_prefix(b"name/") {
//!         Some(_) if value.len() <= 64 && std::str::from_utf8(value).is_ok() => Ok(()),
//!         Some(_) => Err("a name is up to 64 bytes of UTF-8".into()),
//!         None => Ok(()),
//!     });
//! assert_eq!(config.mode, DhtMode::Server);
//! ```

mod behaviour;
mod config;
mod error;
mod state;
pub mod store;

pub use behaviour::Kademlia;
pub use config::{DhtConfig, DhtMode};
pub use error::DhtError;
pub use state::{DhtCommand, DhtState, FoundPeer, Quorum};
pub use store::{DhtStore, MAX_PROVIDER_ADDRS, PublisherQuota, RecordValidator, StoreStats};
