//! Relays and hole punching: reservations on relays, circuits served, direct upgrades.

use std::collections::HashMap;

use libp2p::{Multiaddr, Swarm, core::transport::ListenerId, dcutr, multiaddr::Protocol, relay};

use super::{Behaviour, EventLoop};
use crate::{NodeConfig, error::error_chain, event::Event, gate::is_private};

/// The loop's side of reach: the listeners through relays, and whether this node serves
/// as a relay.
pub(crate) struct ReachState {
    /// Listeners through a relay, with the relay's address.
    relay_listeners: HashMap<ListenerId, Multiaddr>,
    /// A relay announces its own listen addresses: libp2p's relay service refuses
    /// reservations until the node has a confirmed external address.
    announce_listen_addrs: bool,
    allow_private_addrs: bool,
}

impl ReachState {
    /// Starts listening through each relay of `config` (the relay client dials the relay
    /// and reserves a slot; the circuit address is reported by `Event::Listening` once the
    /// relay accepts), and announces `first_addr` when this node is a relay.
    pub(crate) fn start(
        swarm: &mut Swarm<Behaviour>,
        config: &NodeConfig,
        first_addr: &Multiaddr,
    ) -> Self {
        let mut state = Self {
            relay_listeners: HashMap::new(),
            announce_listen_addrs: config.reach.relay_server.is_some(),
            allow_private_addrs: config.allow_private_addrs,
        };
        state.on_listen_addr(swarm, first_addr);
        for relay in &config.reach.relays {
            let addr = relay.clone().with(Protocol::P2pCircuit);
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    state.relay_listeners.insert(id, relay.clone());
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %error_chain(&e), "cannot listen through relay");
                }
            }
        }
        state
    }

    /// A new listen address: a relay announces it as an external address.
    pub(crate) fn on_listen_addr(&self, swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) {
        let relayed = addr.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        if self.announce_listen_addrs && !relayed && (self.allow_private_addrs || !is_private(addr))
        {
            swarm.add_external_address(addr.clone());
        }
    }

    /// A listener closed: when it listened through a relay, the relay to report.
    pub(crate) fn on_listener_closed(&mut self, id: ListenerId) -> Option<Multiaddr> {
        self.relay_listeners.remove(&id)
    }
}

impl EventLoop {
    /// A listener through a relay closed: the reservation was refused or lost.
    pub(super) fn on_relay_listener_closed(&mut self, id: ListenerId, reason: String) {
        if let Some(relay) = self.reach.on_listener_closed(id) {
            tracing::warn!(%relay, %reason, "listening through the relay ended");
            self.emit(Event::RelayReservationFailed { relay, reason });
        }
    }

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                tracing::debug!(relay = %relay_peer_id, renewal, "relay reservation accepted");
                if !renewal {
                    self.emit(Event::RelayReservation {
                        relay: relay_peer_id,
                    });
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "outbound circuit established");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "inbound circuit established");
            }
        }
    }

    pub(super) fn on_relay_server(&mut self, event: relay::Event) {
        tracing::debug!(?event, "relay service");
    }

    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(_) => {
                tracing::debug!(%peer, "direct connection by hole punching");
                // New requests open their shared streams anew, on the direct connection
                // (streams prefer it); what is in flight finishes on the relayed one.
                self.shared_streams.forget(&peer);
                self.emit(Event::DirectUpgrade { peer });
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "hole punch failed");
                self.emit(Event::DirectUpgradeFailed {
                    peer,
                    reason: error_chain(&e),
                });
            }
        }
    }
}
