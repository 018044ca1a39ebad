//! Relays and hole punching: reservations on relays, circuits served, direct upgrades.

use std::{collections::HashMap, time::Duration};

use libp2p::{
    Multiaddr, PeerId, Swarm, core::transport::ListenerId, dcutr, multiaddr::Protocol, relay,
};
use tokio::sync::mpsc;

use super::{Behaviour, EventLoop};
use crate::{NodeConfig, command::Command, error::error_chain, event::Event, gate::is_private};

/// The first wait before listening again through a relay that was lost or refused us.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts (the wait doubles from `FIRST_RETRY`).
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The loop's side of reach: the listeners through relays, and whether this node serves
/// as a relay.
pub(crate) struct ReachState {
    /// Listeners through a relay, with the relay's address.
    relay_listeners: HashMap<ListenerId, Multiaddr>,
    /// A relay announces its own listen addresses: libp2p's relay service refuses
    /// reservations until the node has a confirmed external address.
    announce_listen_addrs: bool,
    allow_private_addrs: bool,
    /// The next wait before listening again through each relay that failed (reset once
    /// the relay accepts a reservation). At most one timer per relay is pending.
    retry_after: HashMap<Multiaddr, Duration>,
    /// Where retry timers send [`Command::Relisten`]. Weak, so that the node still stops
    /// when its last handle is dropped.
    commands: mpsc::WeakSender<Command>,
    /// The confirmed external addresses last reported (`None`: nothing reported yet;
    /// empty: not public).
    reported: Option<Vec<Multiaddr>>,
}

impl ReachState {
    /// Starts listening through each relay of `config` (the relay client dials the relay
    /// and reserves a slot; the circuit address is reported by `Event::Listening` once the
    /// relay accepts), and announces `first_addr` when this node is a relay.
    pub(crate) fn start(
        swarm: &mut Swarm<Behaviour>,
        config: &NodeConfig,
        first_addr: &Multiaddr,
        commands: &mpsc::Sender<Command>,
    ) -> Self {
        let mut state = Self {
            relay_listeners: HashMap::new(),
            announce_listen_addrs: config.reach.relay_server.is_some(),
            allow_private_addrs: config.allow_private_addrs,
            retry_after: HashMap::new(),
            commands: commands.downgrade(),
            reported: None,
        };
        state.on_listen_addr(swarm, first_addr);
        for relay in &config.reach.relays {
            state.listen_through(swarm, relay.clone());
        }
        state
    }

    /// Listens through `relay` (the relay client dials it and asks for a reservation).
    pub(crate) fn listen_through(&mut self, swarm: &mut Swarm<Behaviour>, relay: Multiaddr) {
        let addr = relay.clone().with(Protocol::P2pCircuit);
        match swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.relay_listeners.insert(id, relay);
            }
            Err(e) => {
                tracing::warn!(%addr, error = %error_chain(&e), "cannot listen through relay");
            }
        }
    }

    /// Asks the loop to listen through `relay` again after a wait that doubles with each
    /// failure, from [`FIRST_RETRY`] up to [`MAX_RETRY`].
    fn retry_later(&mut self, relay: Multiaddr) {
        let wait = self
            .retry_after
            .get(&relay)
            .map_or(FIRST_RETRY, |w| (*w * 2).min(MAX_RETRY));
        self.retry_after.insert(relay.clone(), wait);
        let commands = self.commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(commands) = commands.upgrade() {
                let _ = commands.send(Command::Relisten(relay)).await;
            }
        });
    }

    /// `relay_peer` accepted a reservation: its next failure starts from the first wait.
    fn on_reservation(&mut self, relay_peer: PeerId) {
        self.retry_after
            .retain(|addr, _| addr.iter().last() != Some(Protocol::P2p(relay_peer)));
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
    /// An AutoNAT probe of one of this node's addresses ended.
    pub(super) fn on_autonat(&mut self, event: libp2p::autonat::v2::client::Event) {
        match &event.result {
            Ok(()) => {
                tracing::debug!(addr = %event.tested_addr, server = %event.server, "reachable")
            }
            Err(e) => {
                tracing::debug!(addr = %event.tested_addr, server = %event.server, error = %e, "not reachable")
            }
        }
        // A success confirms the address (the swarm reports it, and `on_external_addrs`
        // runs); a failure with nothing confirmed means private.
        if event.result.is_err() {
            self.on_external_addrs();
        }
    }

    /// The confirmed external addresses changed, or a probe failed: report the
    /// reachability if it changed.
    pub(super) fn on_external_addrs(&mut self) {
        let addrs: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        if self.reach.reported.as_ref() != Some(&addrs) {
            self.reach.reported = Some(addrs.clone());
            let public = !addrs.is_empty();
            tracing::info!(public, addrs = ?addrs, "reachability");
            self.emit(Event::Reachability { public, addrs });
        }
    }

    /// A listener through a relay closed: the reservation was refused or lost.
    pub(super) fn on_relay_listener_closed(&mut self, id: ListenerId, reason: String) {
        if let Some(relay) = self.reach.on_listener_closed(id) {
            tracing::warn!(%relay, %reason, "listening through the relay ended; will retry");
            self.reach.retry_later(relay.clone());
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
                self.reach.on_reservation(relay_peer_id);
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
