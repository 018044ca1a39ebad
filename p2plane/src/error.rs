use p2plane_core::Multiaddr;
use p2plane_transport::{IdentityError, TransportError};

/// Why a node could not start, or could not take on a protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The key file could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The transports could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node could not listen on its address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The protocol already has a handler on this node.
    #[error("protocol {protocol} is already served")]
    AlreadyServing {
        /// The protocol.
        protocol: &'static str,
    },
    #[cfg(feature = "mdns")]
    /// mDNS could not start (no usable network interface, or its socket failed).
    #[error("mDNS: {0}")]
    Mdns(String),
    #[cfg(feature = "dht")]
    /// The DHT's record store file could not be opened.
    #[error(transparent)]
    RecordStore(p2plane_dht::DhtError),
    #[cfg(feature = "metrics")]
    /// The metrics endpoint could not listen.
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[cfg(feature = "pubsub")]
    /// The pub/sub settings were refused.
    #[error("pub/sub configuration: {0}")]
    Pubsub(String),
    #[cfg(feature = "relay")]
    /// A relay in [`ReachConfig::relays`](crate::ReachConfig::relays) cannot be listened
    /// through.
    #[error("relay {addr}: {reason}")]
    Relay {
        /// The relay's address as configured.
        addr: Multiaddr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
}

/// An error's text followed by the texts of its sources: libp2p's dial errors say little
/// at the top ("Dial error") and the cause below.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
