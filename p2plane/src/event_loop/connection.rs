//! Connections opening and closing, dials failing, and inbound streams dropped.

use libp2p::{
    PeerId,
    core::ConnectedPoint,
    swarm::{ConnectionId, DialError},
};
use p2plane_core::{DialOutcome, Error};

use super::EventLoop;
use crate::{
    error::error_chain,
    event::{Event, InboundError},
    streams::StreamEvent,
};

impl EventLoop {
    pub(super) fn on_connected(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
        established: u32,
    ) {
        if let Some(reply) = self.pending_dials.remove(&connection) {
            let _ = reply.send(Ok(peer));
        }
        if endpoint.is_dialer() {
            // The address we dialed is one the peer listens on: proved by the handshake.
            // One heard by mDNS is kept even when private.
            let addr = endpoint.get_remote_address();
            self.store.record_outcome(peer, DialOutcome::Success);
            if self.unverified.proved(&peer, addr) {
                self.store.add_peer_with_addr(peer, addr.clone());
            } else {
                self.remember(peer, addr.clone());
            }
        }
        #[cfg(feature = "relay")]
        self.on_connected_reach(peer, endpoint);
        if established == 1 {
            tracing::debug!(%peer, "connected");
            self.emit(Event::PeerConnected {
                peer,
                addr: endpoint.get_remote_address().clone(),
                inbound: endpoint.is_listener(),
            });
        }
    }

    /// A connection to `peer` closed; `remaining` are still open.
    pub(super) fn on_connection_closed(
        &mut self,
        peer: PeerId,
        endpoint: &ConnectedPoint,
        remaining: u32,
    ) {
        #[cfg(feature = "relay")]
        self.reach.on_connection_closed(peer, endpoint);
        #[cfg(not(feature = "relay"))]
        let _ = endpoint;
        if remaining == 0 {
            self.on_disconnected(peer);
        }
    }

    /// The last connection to `peer` closed.
    fn on_disconnected(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
        self.shared_streams.forget(&peer);
        #[cfg(feature = "relay")]
        self.on_disconnected_reach(&peer);
        tracing::debug!(%peer, "disconnected");
        self.emit(Event::PeerDisconnected { peer });
    }

    pub(super) fn on_dial_error(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        error: &DialError,
    ) {
        let reason = error_chain(error);
        tracing::debug!(?peer, %reason, "dial failed");
        // Our own refusals (ban, backoff, limits) and dials never tried say nothing about
        // the peer.
        let attempted = !matches!(
            error,
            DialError::Denied { .. } | DialError::DialPeerConditionFalse(_) | DialError::Aborted
        );
        // Nor does a failed dial of a peer we are connected to (a hole punch, a direct dial
        // of a peer reached through a relay): it must not hold back the next dial.
        if let (Some(peer), true) = (peer, attempted)
            && !self.swarm.is_connected(&peer)
        {
            self.store.record_outcome(peer, DialOutcome::Failure);
        }
        if let Some(reply) = self.pending_dials.remove(&connection) {
            let _ = reply.send(Err(Error::Dial {
                peer,
                reason: reason.clone(),
            }));
        }
        self.emit(Event::DialFailed { peer, reason });
    }

    pub(super) fn on_streams(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::InboundDropped { peer, protocol } => {
                self.emit(Event::InboundFailure {
                    peer,
                    protocol: protocol.to_string(),
                    error: InboundError::Overloaded,
                });
            }
        }
    }
}
