//! A small libp2p behaviour that hands out raw streams: the shared streams that carry many
//! requests each, and the one-request streams of peers without the shared form.
//!
//! Modeled on `libp2p-stream` (the callers hold channels straight to each connection's
//! handler, so opening a stream never passes through the node's event loop), with three
//! changes that P2PLane needs:
//!
//! - inbound streams queue in a channel of a configured size per protocol, and a stream that
//!   finds it full is reported ([`StreamEvent::InboundDropped`]) instead of vanishing;
//! - outbound streams negotiate concurrently (the open request rides in the upgrade's info);
//! - every dial failure answers the callers waiting for that peer.

mod control;
mod handler;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use foldhash::HashMap;
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, oneshot};

pub(crate) use control::{Control, OpenError};
use handler::Handler;

/// How many open requests may queue for one connection (or one dial) before callers wait.
const OPEN_QUEUE: usize = 128;
/// How many dials to unconnected peers may queue before callers wait.
const DIAL_QUEUE: usize = 64;

/// What the behaviour reports to the node.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// An inbound stream was negotiated but its protocol's queue was full, so it was dropped.
    InboundDropped {
        peer: PeerId,
        protocol: StreamProtocol,
    },
}

/// A request to a connection's handler to open an outbound stream.
pub(crate) struct NewStream {
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<(Stream, ConnectionGone), OpenError>>,
}

/// An inbound stream: its peer, the stream, and its connection's end.
pub(crate) type Inbound = (PeerId, Stream, ConnectionGone);

/// Resolves once the connection a stream runs on is gone. A read pending on a yamux stream
/// is not woken when this side closes the connection (a disconnect, a ban, shutdown): a
/// task that may wait on a read for long selects on this as well.
#[derive(Clone)]
pub(crate) struct ConnectionGone(tokio::sync::watch::Receiver<()>);

impl ConnectionGone {
    /// Waits until the connection's handler is dropped (its sender with it).
    pub(crate) async fn wait(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

#[derive(Default)]
struct Shared {
    inbound: HashMap<StreamProtocol, mpsc::Sender<Inbound>>,
    /// Open-request channels of established connections.
    connections: HashMap<ConnectionId, (PeerId, mpsc::Sender<NewStream>)>,
    /// Per peer, the connections above (usually one).
    by_peer: HashMap<PeerId, Vec<ConnectionId>>,
    /// Open requests waiting for a dial to the peer; the receiver goes to the first
    /// connection's handler.
    pending: HashMap<PeerId, (mpsc::Sender<NewStream>, mpsc::Receiver<NewStream>)>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The channel to open a stream to `peer`, and whether a dial must be started.
    fn sender_for(&mut self, peer: PeerId) -> (mpsc::Sender<NewStream>, bool) {
        if let Some(id) = self.by_peer.get(&peer).and_then(|ids| ids.first())
            && let Some((_, tx)) = self.connections.get(id)
        {
            return (tx.clone(), false);
        }
        let fresh = !self.pending.contains_key(&peer);
        let (tx, _) = self
            .pending
            .entry(peer)
            .or_insert_with(|| mpsc::channel(OPEN_QUEUE));
        (tx.clone(), fresh)
    }

    /// Streams are opened on a peer's first connection in `by_peer`: a direct connection
    /// goes first, so that once hole punching has opened one, new streams use it rather
    /// than the relay (whose circuits are limited in time and bytes).
    fn on_new_connection(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        relayed: bool,
    ) -> mpsc::Receiver<NewStream> {
        let (tx, rx) = self
            .pending
            .remove(&peer)
            .unwrap_or_else(|| mpsc::channel(OPEN_QUEUE));
        self.connections.insert(id, (peer, tx));
        let ids = self.by_peer.entry(peer).or_default();
        if relayed {
            ids.push(id);
        } else {
            ids.insert(0, id);
        }
        rx
    }

    fn on_connection_gone(&mut self, id: ConnectionId) {
        if let Some((peer, _)) = self.connections.remove(&id)
            && let Some(ids) = self.by_peer.get_mut(&peer)
        {
            ids.retain(|c| *c != id);
            if ids.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    fn on_dial_failure(&mut self, peer: PeerId, reason: &str) {
        let Some((_, mut rx)) = self.pending.remove(&peer) else {
            return;
        };
        while let Ok(req) = rx.try_recv() {
            let _ = req.reply.send(Err(OpenError::Dial(reason.to_owned())));
        }
    }

    fn supported_inbound(&mut self) -> Vec<StreamProtocol> {
        self.inbound.retain(|_, tx| !tx.is_closed());
        self.inbound.keys().cloned().collect()
    }
}

/// The behaviour; [`Behaviour::control`] gives the handle callers use.
pub(crate) struct Behaviour {
    shared: Arc<Mutex<Shared>>,
    dial_rx: mpsc::Receiver<PeerId>,
    dial_tx: mpsc::Sender<PeerId>,
    /// Handler reports not yet passed to the swarm (the swarm polls the behaviour right after
    /// each one, so this stays short; it is capped all the same).
    events: VecDeque<StreamEvent>,
}

/// The most handler reports kept before the oldest are dropped.
const MAX_PENDING_EVENTS: usize = 1024;

impl Behaviour {
    pub(crate) fn new() -> Self {
        let (dial_tx, dial_rx) = mpsc::channel(DIAL_QUEUE);
        Self {
            shared: Arc::default(),
            dial_rx,
            dial_tx,
            events: VecDeque::new(),
        }
    }

    pub(crate) fn control(&self) -> Control {
        Control::new(self.shared.clone(), self.dial_tx.clone())
    }

    fn handler(&self, peer: PeerId, id: ConnectionId, addr: &Multiaddr) -> Handler {
        let rx =
            lock(&self.shared).on_new_connection(peer, id, p2plane_transport::is_relayed(addr));
        Handler::new(peer, self.shared.clone(), rx)
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = StreamEvent;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        // A relayed inbound connection's local address is the circuit address.
        local: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id, local))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id, addr))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionClosed(e) => {
                lock(&self.shared).on_connection_gone(e.connection_id)
            }
            FromSwarm::ListenFailure(e) => lock(&self.shared).on_connection_gone(e.connection_id),
            FromSwarm::DialFailure(e) => {
                let mut shared = lock(&self.shared);
                shared.on_connection_gone(e.connection_id);
                match (e.peer_id, e.error) {
                    // Another dial to the peer is under way; its outcome answers the callers.
                    (_, DialError::DialPeerConditionFalse(_)) | (None, _) => {}
                    (Some(peer), error) => {
                        if !shared.by_peer.contains_key(&peer) {
                            shared.on_dial_failure(peer, &crate::error::error_chain(error));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        if let Poll::Ready(Some(peer)) = self.dial_rx.poll_recv(cx) {
            return Poll::Ready(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
            });
        }
        Poll::Pending
    }
}
