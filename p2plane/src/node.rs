use std::{
    marker::PhantomData,
    sync::Arc,
    time::{Duration, SystemTime},
};

use p2plane_core::{Error, Multiaddr, PeerId, PeerStore, Protocol, Request, Streaming};
use tokio::sync::{Semaphore, oneshot};
use tower::BoxError;
use tower_service::Service;

use crate::{
    Client, ConnectedPeers, NodeConfig, NodeError,
    command::Command,
    event::Events,
    event_loop::EventLoop,
    node_state::NodeState,
    rpc::{
        self,
        server::{self, ServerContext},
        stream_protocol,
    },
};

/// A running P2PLane node, speaking protocol `P` (a [`Message`](crate::Message) or a
/// [`Protocol`]), and able to take on more protocols.
///
/// `Node` is a cheap, cloneable handle. One task, the event loop, owns the libp2p swarm; the
/// handles talk to it over bounded channels. Requests do not pass through the event loop:
/// they go on streams opened straight on the connection, a shared stream per peer and
/// protocol (see [`Client`]). The node shuts down on
/// [`Node::shutdown`] or when the last handle ([`Node`] or [`Client`]) is dropped; calls
/// still pending then fail with [`Error::Shutdown`].
///
/// ```
/// use p2plane::{Message, Node, NodeConfig, Request, service_fn};
/// use serde::{Deserialize, Serialize};
/// use std::convert::Infallible;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
/// struct Echo(String);
/// impl Message for Echo {
///     const PROTOCOL: &'static str = "/echo/1.0.0";
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = || NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap());
/// let server = Node::<Echo>::new(config()).await?;
/// server.serve(service_fn(|req: Request<Echo>| async move { Ok::<_, Infallible>(req.into_body()) }))?;
///
/// let client = Node::<Echo>::new(config()).await?;
/// let peer = client.dial(server.listen_addrs().await?[0].clone()).await?;
/// let reply = client.client().request(peer, Echo("hi".into())).await?;
/// assert_eq!(reply, Echo("hi".into()));
/// # Ok(())
/// # }
/// ```
pub struct Node<P: Protocol> {
    shared: Arc<NodeState>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> Clone for Node<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _protocol: PhantomData,
        }
    }
}

impl<P: Protocol> std::fmt::Debug for Node<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.shared.local_peer_id)
            .field("protocol", &P::NAME)
            .finish()
    }
}

impl<P: Protocol> Node<P> {
    /// Starts a node: loads or makes its key, listens on `config.listen_addr` (returning once
    /// the listener is up, so [`Node::listen_addrs`] holds the real port) and dials the
    /// bootstrap address if there is one.
    ///
    /// Must be called within a tokio runtime.
    pub async fn new(config: NodeConfig) -> Result<Self, NodeError> {
        stream_protocol::<P>();
        Ok(Self {
            shared: Arc::new(EventLoop::start(config).await?),
            _protocol: PhantomData,
        })
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    /// A client for the node's protocol `P`: a [`tower::Service`] taking
    /// [`Request<P::Request>`](Request) and answering `P::Response`.
    pub fn client(&self) -> Client<P> {
        self.client_for::<P>()
    }

    /// A client for another protocol `Q` on the same node (and its connections).
    pub fn client_for<Q: Protocol>(&self) -> Client<Q> {
        Client::new(Arc::clone(&self.shared))
    }

    /// Serves protocol `P` with `handler`: any [`tower::Service`] from [`Request<P::Request>`]
    /// to `P::Response`, such as a closure wrapped in [`service_fn`](crate::service_fn).
    ///
    /// At most [`max_concurrent_inbound`](NodeConfig::max_concurrent_inbound) requests are
    /// handled at once; beyond that the caller is answered `Busy`. A handler error reaches
    /// the caller as [`Error::Failed`], except [`Error::Rejected`] and [`Error::Busy`],
    /// which travel as themselves (so validation middleware can reject); a handler that
    /// panics is answered `Failed` too.
    ///
    /// Requests from one peer share a stream, and the task reading it polls each request's
    /// handler once itself: most handlers answer at once, and a task per request would cost
    /// more than they do. A handler that is not done after that first poll (it waits on
    /// something) continues in a task of its own, so it does not hold up the requests
    /// behind it. Heavy CPU work belongs in `tokio::task::spawn_blocking`, as anywhere in
    /// async code; a first poll that takes over 50 µs makes the stream give the next
    /// requests tasks of their own at once.
    ///
    /// Until a protocol is served, peers asking for it get
    /// [`Error::UnsupportedProtocol`].
    ///
    /// A handler that holds a [`Node`] or [`Client`] handle (to forward requests, say) keeps
    /// the node alive: such a node stops on [`Node::shutdown`], not when the other handles
    /// are dropped.
    pub fn serve<H>(&self, handler: H) -> Result<(), NodeError>
    where
        H: Service<Request<P::Request>, Response = P::Response> + Clone + Send + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send + 'static,
    {
        self.serve_protocol::<P, H>(handler)
    }

    /// Serves another protocol `Q` with `handler`; see [`Node::serve`].
    pub fn serve_protocol<Q, H>(&self, handler: H) -> Result<(), NodeError>
    where
        Q: Protocol,
        H: Service<Request<Q::Request>, Response = Q::Response> + Clone + Send + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send + 'static,
    {
        if self.shared.is_shut_down() {
            return Err(NodeError::Shutdown);
        }
        let protocol = stream_protocol::<Q>();
        let limit = self.shared.config.max_concurrent_inbound;
        let control = &self.shared.control;
        let inbound = control
            .accept(protocol, limit)
            .map_err(|_| NodeError::AlreadyServing { protocol: Q::NAME })?;
        let shared_inbound = control
            .accept(rpc::shared_protocol(Q::NAME), limit)
            .map_err(|_| NodeError::AlreadyServing { protocol: Q::NAME })?;
        let context = Arc::new(ServerContext {
            codec: self.shared.codec,
            events: self.shared.events.clone(),
            shutdown: self.shared.shutdown.clone(),
            handler_timeout: self.shared.config.inbound_timeout,
            read_timeout: self.shared.config.read_timeout,
            write_timeout: self.shared.config.write_timeout,
            budget: Arc::clone(&self.shared.budget),
            shared_streams: Arc::new(rpc::PeerSlots::new(server::MAX_SHARED_PER_PEER)),
            shared_total: Arc::new(Semaphore::new(self.shared.config.max_shared_streams)),
            shared_idle: self.shared.config.shared_stream_idle_timeout,
            metrics: self.shared.metrics.clone(),
            workers: Arc::new(Semaphore::new(limit)),
            readers: Arc::new(Semaphore::new(
                self.shared.config.max_shared_streams.max(limit),
            )),
            helpers: Arc::new(Semaphore::new(limit)),
        });
        tokio::spawn(server::run_shared::<Q, H>(
            Arc::clone(&context),
            shared_inbound,
            handler.clone(),
        ));
        tokio::spawn(server::run::<Q, H>(context, inbound, handler));
        Ok(())
    }

    /// A client for streaming protocol `Q` (see [`StreamClient`](crate::StreamClient)).
    pub fn stream_client<Q: Streaming>(&self) -> crate::StreamClient<Q> {
        crate::StreamClient::new(Arc::clone(&self.shared))
    }

    /// Serves streaming protocol `Q` with `handler`: any [`tower::Service`] from
    /// [`Request<Q::Request>`](Request) to a [`Stream`](futures::Stream) of
    /// `Result<Q::Item, E>`. The stream's items go to the caller as its window allows (the
    /// handler's stream is polled only when there is room, so a slow caller slows it down);
    /// its end ends the call cleanly, and an error item ends it with that error (a
    /// [`Error::Rejected`] or [`Error::Busy`] as themselves, anything else as
    /// [`Error::Failed`]). The caller's uploads are in the request: take them with
    /// [`Uploads::take`](crate::Uploads::take).
    ///
    /// The handler's call (until it returns its stream) is bounded by
    /// [`inbound_timeout`](NodeConfig::inbound_timeout) without progress (each upload it
    /// takes moves the deadline on, so a handler may read a long upload before it answers);
    /// the stream itself by nothing but the caller: when the caller drops its end, or goes away, the handler's stream is
    /// dropped within a round trip or so. A stream on which nothing moves for
    /// [`StreamConfig::idle_timeout`](crate::StreamConfig::idle_timeout) is closed. Beyond
    /// [`StreamConfig::max_per_peer`](crate::StreamConfig::max_per_peer) or
    /// [`StreamConfig::max_inbound`](crate::StreamConfig::max_inbound) open streams, a call
    /// is answered [`Error::Busy`] and the handler does not run. When the node shuts down,
    /// its open streams end with [`Error::RemoteShutdown`] at their callers.
    pub fn serve_stream<Q, H>(&self, handler: H) -> Result<(), NodeError>
    where
        Q: Streaming,
        H: Service<Request<Q::Request>> + Clone + Send + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send + 'static,
        H::Response: futures::Stream<Item = Result<Q::Item, H::Error>> + Send + 'static,
    {
        if self.shared.is_shut_down() {
            return Err(NodeError::Shutdown);
        }
        let protocol = rpc::streaming::streaming_protocol::<Q>();
        let config = &self.shared.config;
        let inbound = self
            .shared
            .control
            .accept(protocol, config.streams.max_per_peer.max(16))
            .map_err(|_| NodeError::AlreadyServing { protocol: Q::NAME })?;
        let server = Arc::new(rpc::streaming::server::StreamServer {
            codec: self.shared.codec,
            events: self.shared.events.clone(),
            shutdown: self.shared.shutdown.clone(),
            handler_timeout: config.inbound_timeout,
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            config: config.streams.clone(),
            per_peer: Arc::new(rpc::PeerSlots::new(config.streams.max_per_peer)),
            total: Arc::new(Semaphore::new(config.streams.max_inbound)),
            helpers: Arc::new(Semaphore::new(config.max_concurrent_inbound)),
            served: Arc::clone(&self.shared.served_streams),
            metrics: self.shared.metrics.clone(),
        });
        tokio::spawn(rpc::streaming::server::run::<Q, H>(
            server, inbound, handler,
        ));
        Ok(())
    }

    /// A failover [`PeerSelector`](crate::layer::PeerSelector) for
    /// [`RetryPolicy::with_failover`](crate::RetryPolicy::with_failover): it picks a connected
    /// peer that serves the request's protocol (as the peer announced through identify).
    pub fn peer_selector(&self) -> ConnectedPeers {
        ConnectedPeers::new(Arc::clone(&self.shared.peers))
    }

    /// Bytes of inbound requests, and of their answers not yet written, that the node holds
    /// now: what counts against [`NodeConfig::max_inbound_bytes`].
    pub fn inbound_bytes(&self) -> usize {
        self.shared.budget.held()
    }

    /// The most bytes [`Node::inbound_bytes`] has been at once since the node started: a
    /// high-water mark taken at every charge, so no brief peak is missed.
    pub fn inbound_bytes_peak(&self) -> usize {
        self.shared.budget.peak()
    }

    /// The node's peer store.
    pub fn peer_store(&self) -> Arc<dyn PeerStore> {
        Arc::clone(&self.shared.config.peer_store)
    }

    /// Refuses `peer` for `duration`, inbound and outbound, and closes its connections.
    pub async fn ban(&self, peer: PeerId, duration: Duration) -> Result<(), Error> {
        let until = SystemTime::now() + duration;
        self.command(Command::Ban { peer, until }).await
    }

    /// Closes every connection to `peer` and tells whether there was one. Nothing else
    /// changes: the peer is neither banned nor forgotten, and the next request to it dials
    /// again. Requests in flight on the closed connections fail (they are not sent again).
    /// [`Event::PeerDisconnected`](crate::Event::PeerDisconnected) follows once the connections are gone.
    ///
    /// ```no_run
    /// # async fn run<P: p2plane::Protocol>(node: p2plane::Node<P>, peer: p2plane::PeerId) -> Result<(), p2plane::Error> {
    /// if node.disconnect(peer).await? {
    ///     println!("closed the connections to {peer}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, Error> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Disconnect { peer, reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    #[cfg(feature = "dht")]
    /// A handle to the node's DHT: discovery, records and providers.
    pub fn dht(&self) -> crate::Dht {
        crate::Dht::new(self.shared.commands.clone(), self.shared.metrics.clone())
    }

    /// Subscribes to the node's events from now on.
    ///
    /// The node is already running when [`Node::new`] returns (it listens, dials its
    /// bootstrap peer, and may discover peers by mDNS), so events can precede the first
    /// subscription. To act on something that may already have happened, subscribe first,
    /// then read the state ([`Node::peer_store`], [`Node::connected_peers`]), then wait on
    /// the events.
    pub fn events(&self) -> Events {
        Events::new(self.shared.events.subscribe())
    }

    /// Connects to `addr` and returns the peer's id once the connection is up.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, Error> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Dial { addr, reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    #[cfg(feature = "pubsub")]
    /// Subscribes to topic `T`: the node joins the topic's mesh and delivers every valid
    /// message published on it (by others) to the subscription. Needs
    /// [`NodeConfig::pubsub`](crate::NodeConfig::pubsub).
    ///
    /// ```no_run
    /// # use p2plane::{Message, Node, NodeConfig, PubsubConfig, Topic};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize)]
    /// # struct Line(String);
    /// # impl Message for Line { const PROTOCOL: &'static str = "/chat/1"; }
    /// # struct Room;
    /// # impl Topic for Room { const NAME: &'static str = "room"; type Message = Line; }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = NodeConfig::listen_on("/ip4/0.0.0.0/tcp/0".parse()?)
    ///     .with_pubsub(Some(PubsubConfig::default()));
    /// let node = Node::<Line>::new(config).await?;
    /// let mut room = node.subscribe::<Room>().await?;
    /// node.publish::<Room>(&Line("hello".into())).await?;
    /// while let Some(received) = room.recv().await {
    ///     println!("{:?}: {:?}", received.author, received.message);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<T: crate::Topic>(
        &self,
    ) -> Result<crate::Subscription<T>, crate::PubsubError> {
        let buffer = self
            .shared
            .config
            .pubsub
            .as_ref()
            .map_or(1, |p| p.subscription_buffer);
        crate::pubsub::subscribe::<T>(&self.shared.commands, self.shared.codec, buffer).await
    }

    #[cfg(feature = "pubsub")]
    /// Publishes `message` on topic `T`, after checking it with its own validation
    /// ([`PubsubError::Rejected`](crate::PubsubError::Rejected) if it fails; nothing is
    /// sent). Fails with [`PubsubError::NoPeers`](crate::PubsubError::NoPeers) while no
    /// connected peer subscribes to the topic.
    pub async fn publish<T: crate::Topic>(
        &self,
        message: &T::Message,
    ) -> Result<(), crate::PubsubError> {
        crate::pubsub::publish::<T>(&self.shared.commands, &self.shared.codec, message).await
    }

    #[cfg(feature = "pubsub")]
    /// The peers in this node's mesh for topic `T` (those it forwards messages to).
    pub async fn topic_peers<T: crate::Topic>(&self) -> Result<Vec<PeerId>, crate::PubsubError> {
        crate::pubsub::mesh_peers::<T>(&self.shared.commands).await
    }

    #[cfg(feature = "metrics")]
    /// Where the Prometheus metrics are served, when
    /// [`NodeConfig::metrics_addr`](crate::NodeConfig::metrics_addr) is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.metrics_addr
    }

    /// The peers with at least one open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, Error> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::ConnectedPeers { reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// The addresses the node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::ListenAddrs { reply }).await?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Shuts the node down and waits until it has: pending calls on every handle fail with
    /// [`Error::Shutdown`], servers stop, the peer store is flushed (and released by the
    /// event loop), and connections close.
    pub async fn shutdown(&self) {
        let _ = self.shared.commands.send(Command::Shutdown).await;
        // Returns once the node has flushed its peer store and released it, and closed its
        // connections (or if the event loop is already gone).
        let mut stopped = self.shared.stopped.clone();
        let _ = stopped.wait_for(|done| *done).await;
    }

    async fn command(&self, command: Command) -> Result<(), Error> {
        self.shared
            .commands
            .send(command)
            .await
            .map_err(|_| Error::Shutdown)
    }
}
