//! The one task that owns the libp2p `Swarm`.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, identify, ping,
    swarm::{
        ConnectionId, DialError, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle,
        dial_opts::DialOpts,
    },
};
use p2plane_core::{DialOutcome, Error, PeerStore};
#[cfg(feature = "dht")]
use p2plane_dht::{DhtCommand, DhtState};
use p2plane_transport::libp2p::connection_limits;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::{
    delayed::Delayed,
    event::{Event, InboundError},
    gate::{Gate, is_private},
    peer_table::PeerTable,
    streams::{self, StreamEvent},
};

/// Listen addresses taken from one peer's identify message.
const MAX_LISTEN_ADDRS: usize = 16;

#[cfg(feature = "pubsub")]
use crate::pubsub::{PubsubCommand, PubsubState};

// A protocol whose feature is off keeps its place in the behaviour as a behaviour that does
// nothing (always toggled off), so the behaviour's shape is the same in every build.
#[cfg(feature = "dht")]
type Kad = p2plane_dht::Kademlia;
#[cfg(not(feature = "dht"))]
type Kad = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "pubsub")]
type Gossipsub = libp2p::gossipsub::Behaviour;
#[cfg(not(feature = "pubsub"))]
type Gossipsub = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "mdns")]
type Mdns = libp2p::mdns::tokio::Behaviour;
#[cfg(not(feature = "mdns"))]
type Mdns = libp2p::swarm::dummy::Behaviour;

/// The node's libp2p behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) ip_limits: p2plane_transport::IpLimits,
    pub(crate) gate: Gate,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) streams: streams::Behaviour,
    pub(crate) identify: Delayed<identify::Behaviour>,
    pub(crate) ping: Delayed<ping::Behaviour>,
    pub(crate) kad: Toggle<Kad>,
    pub(crate) gossipsub: Toggle<Gossipsub>,
    pub(crate) mdns: Toggle<Mdns>,
}

/// What handles ask of the event loop.
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
    Shutdown,
}

pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<Event>,
    /// `true` once the node stops taking work: pending calls fail with `Shutdown`.
    pub(crate) shutdown: watch::Sender<bool>,
    /// `true` once the node has stopped: store flushed, swarm and connections gone.
    pub(crate) stopped: watch::Sender<bool>,
    pub(crate) pending_dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, Error>>>,
    pub(crate) peers: Arc<PeerTable>,
    /// The node's outbound shared streams, forgotten per peer as its last connection closes.
    pub(crate) shared_streams: Arc<crate::rpc::shared_stream::SharedStreams>,
    pub(crate) store: Arc<dyn PeerStore>,
    /// Addresses heard of but not proved by a connection.
    pub(crate) unverified: Arc<crate::unverified::Unverified>,
    pub(crate) allow_private_addrs: bool,
    #[cfg(feature = "dht")]
    pub(crate) dht: DhtState,
    /// The Kademlia protocol name, when the node is in the DHT.
    #[cfg(feature = "dht")]
    pub(crate) kad_protocol: Option<libp2p::StreamProtocol>,
    #[cfg(feature = "pubsub")]
    pub(crate) pubsub: PubsubState,
    /// libp2p's metrics, when metrics are on.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<libp2p::metrics::Metrics>,
}

impl EventLoop {
    /// Runs until a `Shutdown` command or until every handle is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        tracing::info!(peer = %self.swarm.local_peer_id(), "node shutting down");
        // Tell pending calls and servers first, then close connections by dropping the swarm.
        self.shutdown.send_replace(true);
        for (_, reply) in self.pending_dials.drain() {
            let _ = reply.send(Err(Error::Shutdown));
        }
        #[cfg(feature = "dht")]
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
            && let Err(e) = kad.store_mut().flush()
        {
            tracing::warn!(error = %e, "record store flush at shutdown failed");
        }
        // Make what the node learned durable (the store's flush may wait on a disk).
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "peer store flush at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "peer store flush at shutdown failed"),
        }
        let Self {
            swarm,
            store,
            stopped,
            ..
        } = self;
        drop(swarm);
        drop(store);
        stopped.send_replace(true);
    }

    /// Records `addr` for `peer` unless it is private and private addresses are not kept.
    fn remember(&self, peer: PeerId, addr: Multiaddr) {
        if self.allow_private_addrs || !is_private(&addr) {
            self.store.add_peer_with_addr(peer, addr);
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dial {
                            peer: None,
                            reason: error_chain(&e),
                        }));
                    }
                }
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Ban { peer, until } => {
                self.store.ban(peer, until);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Disconnect { peer, reply } => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            #[cfg(feature = "dht")]
            Command::Dht(command) => match self.swarm.behaviour_mut().kad.as_mut() {
                Some(kad) => self.dht.on_command(kad, command),
                None => command.refuse(),
            },
            #[cfg(feature = "pubsub")]
            Command::Pubsub(command) => {
                let gossipsub = self.swarm.behaviour_mut().gossipsub.as_mut();
                if let Some(event) = self.pubsub.on_command(gossipsub, command) {
                    self.emit(event);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn emit(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            use libp2p::metrics::Recorder as _;
            metrics.record(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
                #[cfg(feature = "dht")]
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
                #[cfg(feature = "pubsub")]
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => metrics.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(Event::Listening { addr: address });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                if endpoint.is_dialer() {
                    // The address we dialed is one the peer listens on: proved by the
                    // handshake. One heard by mDNS is kept even when private.
                    let addr = endpoint.get_remote_address();
                    self.store.record_outcome(peer_id, DialOutcome::Success);
                    if self.unverified.proved(&peer_id, addr) {
                        self.store.add_peer_with_addr(peer_id, addr.clone());
                    } else {
                        self.remember(peer_id, addr.clone());
                    }
                }
                if num_established.get() == 1 {
                    tracing::debug!(peer = %peer_id, "connected");
                    self.emit(Event::PeerConnected {
                        peer: peer_id,
                        addr: endpoint.get_remote_address().clone(),
                        inbound: endpoint.is_listener(),
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.peers.remove(&peer_id);
                self.shared_streams.forget(&peer_id);
                tracing::debug!(peer = %peer_id, "disconnected");
                self.emit(Event::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let reason = error_chain(&error);
                tracing::debug!(?peer_id, %reason, "dial failed");
                // Our own refusals (ban, backoff, limits) and dials never tried say nothing
                // about the peer.
                let attempted = !matches!(
                    error,
                    DialError::Denied { .. }
                        | DialError::DialPeerConditionFalse(_)
                        | DialError::Aborted
                );
                if let (Some(peer), true) = (peer_id, attempted) {
                    self.store.record_outcome(peer, DialOutcome::Failure);
                }
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(Error::Dial {
                        peer: peer_id,
                        reason: reason.clone(),
                    }));
                }
                self.emit(Event::DialFailed {
                    peer: peer_id,
                    reason,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Streams(StreamEvent::InboundDropped {
                peer,
                protocol,
            })) => {
                self.emit(Event::InboundFailure {
                    peer,
                    protocol: protocol.to_string(),
                    error: InboundError::Overloaded,
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(failure),
            })) if !matches!(failure, ping::Failure::Unsupported) => {
                // libp2p reports a ping failure from the second in a row on: the peer is gone
                // or the connection is stuck. Close it, so that requests redial rather than
                // wait on it until their own timeouts.
                tracing::debug!(%peer, %failure, "pings failing: closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::trace!(peer = %peer_id, agent = %info.agent_version, "identified");
                let protocols: Vec<String> =
                    info.protocols.iter().map(ToString::to_string).collect();
                self.peers.set(peer_id, protocols.clone());
                self.store.set_protocols(peer_id, protocols.clone());
                #[cfg(feature = "dht")]
                let speaks_kad = self
                    .kad_protocol
                    .as_ref()
                    .is_some_and(|kad| info.protocols.contains(kad));
                // A peer may claim any number of addresses; the first few are plenty.
                for addr in info.listen_addrs.into_iter().take(MAX_LISTEN_ADDRS) {
                    // Without this, routing tables never grow past the peers we dialed.
                    #[cfg(feature = "dht")]
                    if speaks_kad
                        && (self.allow_private_addrs || !is_private(&addr))
                        && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                    {
                        kad.add_address(&peer_id, addr.clone());
                    }
                    self.remember(peer_id, addr);
                }
                self.emit(Event::PeerIdentified {
                    peer: peer_id,
                    protocols,
                });
            }
            #[cfg(feature = "mdns")]
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    // Anyone on the link can claim any id by mDNS: the address is only heard
                    // of until a dial proves it (then it is stored, private or not, and
                    // Kademlia learns the peer from the connection).
                    self.unverified.add(peer, [addr.clone()], true);
                    if !self.swarm.is_connected(&peer) {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(vec![addr.clone()])
                            .condition(
                                libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing,
                            )
                            .build();
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!(%peer, error = %error_chain(&e), "dial of an mDNS peer failed");
                        }
                    }
                    self.emit(Event::PeerDiscovered { peer, addr });
                }
            }
            #[cfg(feature = "pubsub")]
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => {
                if let Some(gossipsub) = self.swarm.behaviour_mut().gossipsub.as_mut() {
                    self.pubsub.on_event(gossipsub, event);
                }
            }
            #[cfg(feature = "dht")]
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    self.dht.on_event(kad, event);
                }
            }
            _ => {}
        }
    }
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
