//! What handles ask of the event loop: one bounded channel carries every command, the
//! node's own and each protocol's.

use std::time::SystemTime;

use p2plane_core::{Error, Multiaddr, PeerId};
#[cfg(feature = "dht")]
use p2plane_dht::DhtCommand;
use tokio::sync::oneshot;

#[cfg(feature = "pubsub")]
use crate::pubsub::PubsubCommand;

/// A command for the event loop.
pub(crate) enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, Error>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Ban {
        peer: PeerId,
        until: SystemTime,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    #[cfg(feature = "dht")]
    Dht(DhtCommand),
    #[cfg(feature = "pubsub")]
    Pubsub(PubsubCommand),
    /// Listen through this relay again (sent by the loop's own retry timer).
    #[cfg(feature = "relay")]
    Relisten(Multiaddr),
    Shutdown,
}
