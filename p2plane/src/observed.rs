//! Keeps what peers tell this node about its own address over relayed connections out of
//! its address candidates.
//!
//! identify reports, as a candidate for this node's external address, the address each peer
//! observed it at. Over a relayed connection that is the relay's address (or, after
//! libp2p-identify 0.48 translates it onto this node's listen port, the relay's IP with
//! this node's port): never an address of this node. AutoNAT then tests it, fails, and
//! the node concludes it is private; hole punching sends it to peers. On the NAT test bed a
//! public node that had dialled a peer through a relay reported itself private this way,
//! chose a relay it did not need, and 3 of 20 of its hole punches then failed. go-libp2p
//! and nim-libp2p drop these observations too.

use std::{
    collections::HashSet,
    task::{Context, Poll, ready},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    identify,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
        behaviour::{ConnectionClosed, ConnectionEstablished},
    },
};
use p2plane_transport::is_relayed;

/// identify (`B`), without the address candidates that peers observed over relayed
/// connections.
pub(crate) struct DirectObservations<B> {
    inner: B,
    /// This node's relayed connections.
    relayed: HashSet<ConnectionId>,
    /// identify emits a peer's observation as candidates right after its `Received` event
    /// for that peer (libp2p-identify 0.48 queues them in one step): set after a `Received`
    /// from a relayed connection, until the next event that is not a candidate.
    dropping: bool,
}

impl<B> DirectObservations<B> {
    pub(crate) fn new(inner: B) -> Self {
        Self {
            inner,
            relayed: HashSet::new(),
            dropping: false,
        }
    }
}

impl<B: NetworkBehaviour<ToSwarm = identify::Event>> NetworkBehaviour for DirectObservations<B> {
    type ConnectionHandler = THandler<B>;
    type ToSwarm = identify::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match &event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint,
                ..
            }) if endpoint.is_relayed() => {
                self.relayed.insert(*connection_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.relayed.remove(connection_id);
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            let event = ready!(self.inner.poll(cx));
            match &event {
                ToSwarm::NewExternalAddrCandidate(addr) if self.dropping || is_relayed(addr) => {
                    tracing::debug!(%addr, "dropped: observed over a relayed connection");
                    continue;
                }
                ToSwarm::NewExternalAddrCandidate(_) | ToSwarm::NewExternalAddrOfPeer { .. } => {}
                ToSwarm::GenerateEvent(identify::Event::Received { connection_id, .. }) => {
                    self.dropping = self.relayed.contains(connection_id);
                }
                _ => self.dropping = false,
            }
            return Poll::Ready(event);
        }
    }
}
