//! The one task that owns the libp2p `Swarm`: it takes the handles' commands and the
//! swarm's events, and hands each protocol's to that protocol's code.
//!
//! [`EventLoop::start`] (in `start.rs`) builds the swarm and spawns the loop; `behaviour.rs`
//! holds the protocols the swarm runs; the events of connections, of identify and ping,
//! and of mDNS are handled in their own files; the DHT's and pub/sub's loop-side state lives
//! with those protocols (`p2plane_dht::DhtState`, `crate::pubsub::PubsubState`).

mod behaviour;
mod connection;
mod identify;
#[cfg(feature = "mdns")]
mod mdns;
#[cfg(feature = "relay")]
mod reach;
mod start;

use std::{collections::HashMap, sync::Arc};

use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    swarm::{ConnectionId, SwarmEvent, dial_opts::DialOpts},
};
use p2plane_core::{Error, PeerStore};
#[cfg(feature = "dht")]
use p2plane_dht::DhtState;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

#[cfg(feature = "pubsub")]
use crate::pubsub::PubsubState;
use crate::{
    command::Command, error::error_chain, event::Event, gate::is_private, peer_table::PeerTable,
    rpc::shared_stream::SharedStreams, unverified::Unverified,
};
pub(crate) use behaviour::{Behaviour, BehaviourEvent};

/// Listen addresses taken from one peer's identify message.
const MAX_LISTEN_ADDRS: usize = 16;

/// The event loop: it owns the swarm, and lives until a `Shutdown` command or until every
/// handle is dropped.
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    /// `true` once the node stops taking work: pending calls fail with `Shutdown`.
    shutdown: watch::Sender<bool>,
    /// `true` once the node has stopped: store flushed, swarm and connections gone.
    stopped: watch::Sender<bool>,
    /// The streams the node serves: at shutdown they get a moment to say so to their callers.
    served_streams: Arc<crate::rpc::streaming::Served>,
    pending_dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, Error>>>,
    peers: Arc<PeerTable>,
    /// The node's outbound shared streams, forgotten per peer as its last connection closes.
    shared_streams: Arc<SharedStreams>,
    store: Arc<dyn PeerStore>,
    /// Addresses heard of but not proved by a connection.
    unverified: Arc<Unverified>,
    allow_private_addrs: bool,
    #[cfg(feature = "dht")]
    dht: DhtState,
    /// The Kademlia protocol name, when the node is in the DHT.
    #[cfg(feature = "dht")]
    kad_protocol: Option<libp2p::StreamProtocol>,
    #[cfg(feature = "pubsub")]
    pubsub: PubsubState,
    /// libp2p's metrics, when metrics are on.
    #[cfg(feature = "metrics")]
    metrics: Option<libp2p::metrics::Metrics>,
    /// Relays listened through, and whether this node is one.
    #[cfg(feature = "relay")]
    reach: reach::ReachState,
}

/// The longest shutdown waits for served streams to write their last frame.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl EventLoop {
    /// Runs until a `Shutdown` command or until every handle is dropped.
    async fn run(mut self) {
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
        // Served streams write their `Shutdown` frame (each within its write deadline); the
        // connections stay up, and the swarm polled, until they have, for a second at most.
        let served = Arc::clone(&self.served_streams);
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN, served.drained());
        tokio::pin!(drained);
        loop {
            tokio::select! {
                _ = &mut drained => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
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
            #[cfg(feature = "relay")]
            Command::Relisten(relay) => self.reach.listen_through(&mut self.swarm, relay),
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
        self.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                #[cfg(feature = "relay")]
                self.reach.on_listen_addr(&mut self.swarm, &address);
                self.emit(Event::Listening { addr: address });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connected(peer_id, connection_id, &endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                endpoint,
                ..
            } => self.on_connection_closed(peer_id, &endpoint, num_established),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_error(connection_id, peer_id, &error),
            #[cfg(feature = "relay")]
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_relay_listener_closed(
                listener_id,
                match reason {
                    Ok(()) => "listener closed".to_owned(),
                    Err(e) => error_chain(&e),
                },
            ),
            SwarmEvent::Behaviour(BehaviourEvent::Streams(event)) => self.on_streams(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => self.on_ping(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify(event),
            #[cfg(feature = "mdns")]
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.on_mdns(event),
            #[cfg(feature = "relay")]
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                self.on_relay_client(event)
            }
            #[cfg(feature = "relay")]
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => self.on_relay_server(event),
            #[cfg(feature = "relay")]
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => self.on_dcutr(event),
            #[cfg(feature = "relay")]
            SwarmEvent::Behaviour(BehaviourEvent::AutonatClient(event)) => self.on_autonat(event),
            #[cfg(feature = "relay")]
            SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
                self.on_external_addrs()
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

    /// Feeds libp2p's metrics, when they are on.
    #[cfg(feature = "metrics")]
    fn record(&self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder as _;
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.record(event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
            #[cfg(feature = "dht")]
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
            #[cfg(feature = "pubsub")]
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => metrics.record(e),
            #[cfg(feature = "relay")]
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => metrics.record(e),
            #[cfg(feature = "relay")]
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => metrics.record(e),
            _ => {}
        }
    }
}
