//! Relays and hole punching: reservations on relays, circuits served, direct upgrades.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::{ConnectedPoint, transport::ListenerId},
    dcutr,
    multiaddr::Protocol,
    relay,
    swarm::dial_opts::{DialOpts, PeerCondition},
};
use tokio::sync::mpsc;

use super::{Behaviour, EventLoop};
use crate::{NodeConfig, command::Command, error::error_chain, event::Event, gate::is_private};

/// The first wait before listening again through a relay that was lost or refused us.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts (the wait doubles from `FIRST_RETRY`).
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Connected peers remembered as relays this node could choose.
const MAX_CANDIDATES: usize = 32;

/// A peer's connections, relayed and direct.
#[derive(Default)]
struct Links {
    relayed: u32,
    direct: u32,
}

/// Direct addresses dialled after a failed hole punch.
const MAX_DIRECT_ADDRS: usize = 8;

/// The loop's side of reach: the listeners through relays, and whether this node serves
/// as a relay.
pub(crate) struct ReachState {
    /// Listeners through a configured relay, with the relay's address.
    relay_listeners: HashMap<ListenerId, Multiaddr>,
    /// How many relays to choose among connected peers while private.
    auto_relays: usize,
    /// Connected peers that offer the relay service, with an address to reach them at
    /// (ending in their `/p2p/<id>`); at most [`MAX_CANDIDATES`], ordered by id so that
    /// the choice does not depend on a hash seed.
    candidates: BTreeMap<PeerId, Multiaddr>,
    /// Listeners through relays chosen among the candidates.
    auto_listeners: HashMap<ListenerId, PeerId>,
    /// For each connected peer, how many of its connections are relayed and how many
    /// direct.
    links: HashMap<PeerId, Links>,
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
            auto_relays: config.reach.auto_relays,
            candidates: BTreeMap::new(),
            auto_listeners: HashMap::new(),
            links: HashMap::new(),
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
        if self.announce_listen_addrs
            && !p2plane_transport::is_relayed(addr)
            && (self.allow_private_addrs || !is_private(addr))
        {
            swarm.add_external_address(addr.clone());
        }
    }

    /// Whether AutoNAT has found that this node cannot be dialled (it reported no
    /// confirmed address).
    fn is_private(&self) -> bool {
        self.reported.as_ref().is_some_and(Vec::is_empty)
    }

    /// A peer identified itself: when it offers the relay service at an address this node
    /// may dial, it becomes a candidate relay. Returns whether it did.
    fn on_identified(&mut self, peer: PeerId, info: &libp2p::identify::Info) -> bool {
        if self.auto_relays == 0 || !info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            return false;
        }
        if self.candidates.len() >= MAX_CANDIDATES && !self.candidates.contains_key(&peer) {
            return false;
        }
        let usable = |addr: &&Multiaddr| {
            !p2plane_transport::is_relayed(addr) && (self.allow_private_addrs || !is_private(addr))
        };
        let Some(addr) = info.listen_addrs.iter().find(usable) else {
            return false;
        };
        let addr = addr.clone().with_p2p(peer).unwrap_or_else(|addr| addr);
        self.candidates.insert(peer, addr);
        true
    }

    /// While private, listens through candidates until
    /// [`auto_relays`](crate::ReachConfig::auto_relays) relays are chosen.
    ///
    /// A node found public later keeps the relays it chose: closing a listener while the
    /// relay's answer to a reservation (or a renewal) is on its way panics libp2p-relay's
    /// client (0.22: "Relay connection exist"; seen on the NAT test bed when a first
    /// AutoNAT probe of a public node failed and a later one succeeded).
    fn choose_relays(&mut self, swarm: &mut Swarm<Behaviour>) {
        if !self.is_private() {
            return;
        }
        let configured: Vec<PeerId> = self
            .relay_listeners
            .values()
            .filter_map(|addr| match addr.iter().last() {
                Some(Protocol::P2p(peer)) => Some(peer),
                _ => None,
            })
            .collect();
        while self.auto_listeners.len() < self.auto_relays {
            let chosen = self.candidates.iter().find(|(peer, _)| {
                !configured.contains(peer) && !self.auto_listeners.values().any(|p| p == *peer)
            });
            let Some((&peer, addr)) = chosen else {
                return;
            };
            let circuit = addr.clone().with(Protocol::P2pCircuit);
            match swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(%circuit, "private: listening through a relay among the peers");
                    self.auto_listeners.insert(id, peer);
                }
                Err(e) => {
                    tracing::debug!(%circuit, error = %error_chain(&e), "cannot listen through relay");
                    self.candidates.remove(&peer);
                }
            }
        }
    }

    /// A peer disconnected: it is no longer a candidate (a listener through it closes by
    /// itself).
    fn on_disconnected(&mut self, peer: &PeerId) {
        self.candidates.remove(peer);
    }

    /// Counts a new connection; returns whether it is the first direct one to a peer that
    /// had only relayed ones.
    fn on_connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint) -> bool {
        let links = self.links.entry(peer).or_default();
        if endpoint.is_relayed() {
            links.relayed += 1;
            false
        } else {
            links.direct += 1;
            links.direct == 1 && links.relayed > 0
        }
    }

    /// Counts a closed connection.
    pub(crate) fn on_connection_closed(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if let Some(links) = self.links.get_mut(&peer) {
            let count = if endpoint.is_relayed() {
                &mut links.relayed
            } else {
                &mut links.direct
            };
            *count = count.saturating_sub(1);
            if links.relayed == 0 && links.direct == 0 {
                self.links.remove(&peer);
            }
        }
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
        // The relay client confirms its circuit addresses itself; they say nothing about
        // whether this node can be dialled directly.
        let addrs: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .filter(|a| !p2plane_transport::is_relayed(a))
            .cloned()
            .collect();
        if self.reach.reported.as_ref() != Some(&addrs) {
            self.reach.reported = Some(addrs.clone());
            self.reach.choose_relays(&mut self.swarm);
            let public = !addrs.is_empty();
            tracing::info!(public, addrs = ?addrs, "reachability");
            self.emit(Event::Reachability { public, addrs });
        }
    }

    /// A listener through a relay closed: the reservation was refused or lost. A
    /// configured relay is asked again later; one chosen among the peers is dropped for
    /// another.
    pub(super) fn on_relay_listener_closed(&mut self, id: ListenerId, reason: String) {
        if let Some(relay) = self.reach.relay_listeners.remove(&id) {
            tracing::warn!(%relay, %reason, "listening through the relay ended; will retry");
            self.reach.retry_later(relay.clone());
            self.emit(Event::RelayReservationFailed { relay, reason });
        } else if let Some(peer) = self.reach.auto_listeners.remove(&id) {
            tracing::info!(relay = %peer, %reason, "listening through the relay ended");
            if let Some(relay) = self.reach.candidates.remove(&peer) {
                self.emit(Event::RelayReservationFailed { relay, reason });
            }
            self.reach.choose_relays(&mut self.swarm);
        }
    }

    /// A peer identified itself: it may offer the relay service this node needs.
    pub(super) fn on_identified_reach(&mut self, peer: PeerId, info: &libp2p::identify::Info) {
        if self.reach.on_identified(peer, info) {
            self.reach.choose_relays(&mut self.swarm);
        }
    }

    /// Hole punching to `peer` failed: when the peer store holds direct addresses for it
    /// (identify's listen addresses land there), dial them once, from a new port. A peer with a public address is reached so (DCUtR's TCP punch can
    /// stall there: when the NATed side's SYN arrives before the public side has dialled,
    /// the public side accepts it on its listener and both ends wait as responders until the
    /// handshake times out); behind a NAT that filters, the dial fails and nothing changes.
    fn dial_direct_after_failed_punch(&mut self, peer: PeerId) {
        if self.reach.links.get(&peer).is_some_and(|l| l.direct > 0) {
            return;
        }
        let addrs: Vec<Multiaddr> = self
            .store
            .addresses(&peer)
            .into_iter()
            .filter(|a| !p2plane_transport::is_relayed(a))
            .take(MAX_DIRECT_ADDRS)
            .collect();
        if addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(addrs)
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %error_chain(&e), "direct dial after a failed hole punch");
        }
    }

    /// A peer's last connection closed.
    pub(super) fn on_disconnected_reach(&mut self, peer: &PeerId) {
        self.reach.on_disconnected(peer);
    }

    /// A connection was established: the first direct one to a peer reached only through
    /// relays so far is a direct upgrade, however it came about.
    pub(super) fn on_connected_reach(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if self.reach.on_connected(peer, endpoint) {
            tracing::debug!(%peer, "direct connection to a peer reached through a relay");
            // New requests open their shared streams anew, on the direct connection
            // (streams prefer it); what is in flight finishes on the relayed one.
            self.shared_streams.forget(&peer);
            self.emit(Event::DirectUpgrade { peer });
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
            // The direct connection's establishment reported the upgrade.
            Ok(_) => tracing::debug!(%peer, "direct connection by hole punching"),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "hole punch failed");
                self.dial_direct_after_failed_punch(peer);
                self.emit(Event::DirectUpgradeFailed {
                    peer,
                    reason: error_chain(&e),
                });
            }
        }
    }
}
