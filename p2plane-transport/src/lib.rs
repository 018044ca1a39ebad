//! Identity keys and libp2p transports for P2PLane.
//!
//! - [`identity`]: generate a node key, or load it from (and create) a key file that only its
//!   owner can read, so a restarted node keeps its [`PeerId`](libp2p::PeerId).
//! - [`build_swarm`]: a libp2p `Swarm` that speaks TCP+Noise+Yamux, QUIC and the in-process
//!   memory transport, so one node dials `/ip4/../tcp/..`, `/ip4/../udp/../quic-v1` and
//!   `/memory/..` addresses alike.
//! - [`Limits`]: connection limits, as a behaviour to put in the swarm.
//!
//! Features: `tcp` and `quic` (both default) add those transports; the memory transport is
//! always there.
//!
//! ```
//! use p2plane_transport::{TransportConfig, build_swarm, identity};
//! use libp2p::swarm::dummy;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = identity::generate();
//! let mut swarm = build_swarm(key, &TransportConfig::default(), |_| dummy::Behaviour)?;
//! swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
//! # Ok(())
//! # }
//! ```

pub mod identity;
mod ip_limits;
mod swarm;

pub use identity::IdentityError;
pub use ip_limits::{IpLimitExceeded, IpLimits};
pub use libp2p;
#[cfg(feature = "relay")]
pub use swarm::build_swarm_with_relay_client;
pub use swarm::{Limits, TransportConfig, TransportError, build_swarm};

use libp2p::{Multiaddr, multiaddr::Protocol};

/// Whether `addr` goes through a relay (holds `/p2p-circuit`): a relayed connection's
/// address names the relay, and its circuit is limited in time and bytes.
///
/// ```
/// let relayed: libp2p::Multiaddr =
///     "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq/p2p-circuit"
///         .parse()?;
/// assert!(p2plane_transport::is_relayed(&relayed));
/// assert!(!p2plane_transport::is_relayed(&"/ip4/203.0.113.7/tcp/4001".parse()?));
/// # Ok::<(), libp2p::multiaddr::Error>(())
/// ```
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}
