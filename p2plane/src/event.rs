use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::Stream;
use p2plane_core::{CodecError, Multiaddr, PeerId};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

/// Something that happened to a node. Subscribe with [`Node::events`](crate::Node::events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The node listens on a new address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// The first connection to a peer is up.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// The peer's address on that connection.
        addr: Multiaddr,
        /// Whether the peer dialed us.
        inbound: bool,
    },
    /// A peer told us (through identify) which protocols it serves.
    PeerIdentified {
        /// The peer.
        peer: PeerId,
        /// The protocols it serves, such as `"/my-app/1.0.0"`.
        protocols: Vec<String>,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A dial failed.
    DialFailed {
        /// The peer, when it was known.
        peer: Option<PeerId>,
        /// Why.
        reason: String,
    },
    /// What AutoNAT found out about this node's reachability changed (feature `relay`):
    /// `public` with the external addresses peers confirmed they can dial, or not public
    /// (a probe failed and no address is confirmed: the node is behind a NAT or firewall
    /// and should listen through a relay).
    Reachability {
        /// Whether peers can dial this node.
        public: bool,
        /// The confirmed direct external addresses (empty when not public). Addresses
        /// through a relay are not among them: they make a node reachable, not public.
        addrs: Vec<Multiaddr>,
    },
    /// A relay accepted this node's reservation: peers can reach it through the relay, at
    /// the circuit address reported by [`Event::Listening`] (feature `relay`).
    RelayReservation {
        /// The relay.
        relay: PeerId,
    },
    /// Listening through a relay ended: the relay refused the reservation, could not be
    /// reached, or went away. The node asks again after a wait that doubles from 1 s to
    /// at most 60 s, until the relay accepts (feature `relay`).
    RelayReservationFailed {
        /// The relay's address, as configured.
        relay: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A peer this node was connected to only through relays now has a direct connection
    /// too: by hole punching, or by a dial either way (an AutoNAT dial back, a dial of an
    /// address learned meanwhile). New streams to it open on the direct connection
    /// (feature `relay`).
    DirectUpgrade {
        /// The peer.
        peer: PeerId,
    },
    /// Hole punching to a peer failed; the relayed connection stays (feature `relay`).
    DirectUpgradeFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// mDNS found a peer on the local network (the node connects to it).
    PeerDiscovered {
        /// The peer.
        peer: PeerId,
        /// Where it listens.
        addr: Multiaddr,
    },
    /// A pub/sub message failed validation: it was neither delivered nor forwarded, and
    /// counts against the peer that sent it.
    MessageRejected {
        /// The topic.
        topic: String,
        /// The peer that forwarded it.
        peer: PeerId,
        /// Why the message type's validation refused it.
        reason: String,
    },
    /// An inbound request could not be served.
    InboundFailure {
        /// The peer that sent it.
        peer: PeerId,
        /// The protocol it came on.
        protocol: String,
        /// What went wrong.
        error: InboundError,
    },
}

/// Why an inbound request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// The request frame was malformed, truncated or too large.
    #[error("bad request frame: {0}")]
    Frame(CodecError),
    /// The frame did not hold a valid request.
    #[error("bad request: {0}")]
    Decode(CodecError),
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The exchange took longer than the inbound timeout.
    #[error("inbound request timed out")]
    Timeout,
    /// The node was at capacity and dropped the stream without answering.
    #[error("dropped: at capacity")]
    Overloaded,
    /// The request did not fit in the inbound byte budget (the peer's or the node's); it
    /// was answered `Busy` without its body being held.
    #[error("over the inbound byte budget: a {len}-byte request")]
    OverBudget {
        /// The request's announced length.
        len: u64,
    },
    /// The peer did not read the answer within the write deadline; the stream was closed.
    #[error("the peer did not take the answer in time")]
    WriteTimeout,
}

/// A stream of a node's [`Event`]s, from the moment of subscription.
///
/// Events are kept in a bounded buffer (1024); a subscriber that falls behind skips the
/// oldest ones, and [`Events::missed`] counts them.
pub struct Events {
    inner: BroadcastStream<Event>,
    missed: u64,
}

impl Events {
    pub(crate) fn new(rx: tokio::sync::broadcast::Receiver<Event>) -> Self {
        Self {
            inner: BroadcastStream::new(rx),
            missed: 0,
        }
    }

    /// How many events this subscriber skipped because it fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => self.missed += n,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
