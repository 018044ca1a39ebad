use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, identify, ping, swarm::SwarmEvent};
use p2plane_codec::CborCodec;
use p2plane_core::{
    Error, Multiaddr, PeerId, PeerStore, Protocol, Request, is_valid_protocol_name,
};
#[cfg(feature = "dht")]
use p2plane_dht::{DhtConfig, DhtState};
use p2plane_transport::{build_swarm, identity};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tower::BoxError;
use tower_service::Service;

use crate::{
    Client, ConnectedPeers, Identity, NodeConfig, NodeError,
    delayed::Delayed,
    event::{Event, Events},
    event_loop::{Behaviour, Command, EventLoop, error_chain},
    gate::Gate,
    peer_table::PeerTable,
    rpc::server::{self, ServerContext},
    streams,
};

/// How many commands may queue for the event loop before callers wait.
const COMMAND_QUEUE: usize = 256;
/// How many events are buffered for subscribers.
const EVENT_BUFFER: usize = 1024;
/// How long `Node::new` waits for its listener to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol version identify announces.
const IDENTIFY_PROTOCOL: &str = "/p2plane/0.1.0";

/// What every handle shares. When the last handle is dropped, the command channel closes
/// and the event loop shuts the node down.
pub(crate) struct NodeState {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) control: streams::Control,
    pub(crate) codec: CborCodec,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) stopped: watch::Receiver<bool>,
    pub(crate) local_peer_id: PeerId,
    pub(crate) config: NodeConfig,
    pub(crate) peers: Arc<PeerTable>,
    pub(crate) shared_streams: Arc<crate::rpc::shared_stream::SharedStreams>,
    /// Addresses heard of but not proved by a connection (DHT lookups, mDNS).
    #[cfg_attr(not(feature = "dht"), allow(dead_code))]
    pub(crate) unverified: Arc<crate::unverified::Unverified>,
    /// The inbound byte budget of every protocol served.
    pub(crate) budget: Arc<crate::budget::Budget>,
    /// P2PLane's own metrics, when they are on.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

impl NodeState {
    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

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

/// The libp2p name of protocol `Q`, checked when the program is compiled: a protocol whose
/// name does not start with `/` fails the build here instead of panicking at run time.
pub(crate) fn stream_protocol<Q: Protocol>() -> StreamProtocol {
    struct Check<Q>(PhantomData<Q>);
    impl<Q: Protocol> Check<Q> {
        const VALID: () = assert!(
            is_valid_protocol_name(Q::NAME),
            "a protocol name must start with '/'"
        );
    }
    let () = Check::<Q>::VALID;
    StreamProtocol::new(Q::NAME)
}

impl<P: Protocol> Node<P> {
    /// Starts a node: loads or makes its key, listens on `config.listen_addr` (returning once
    /// the listener is up, so [`Node::listen_addrs`] holds the real port) and dials the
    /// bootstrap address if there is one.
    ///
    /// Must be called within a tokio runtime.
    pub async fn new(config: NodeConfig) -> Result<Self, NodeError> {
        stream_protocol::<P>();
        let keypair = match &config.identity {
            Identity::Generate => identity::generate(),
            Identity::KeyFile(path) => identity::load_or_create(path)?,
            Identity::Keypair(k) => k.clone(),
        };
        let local_peer_id = keypair.public().to_peer_id();
        let streams = streams::Behaviour::new();
        let control = streams.control();
        let limits = config.limits.behaviour();
        let ip_limits = config.limits.ip_behaviour();
        let shared_streams = Arc::new(crate::rpc::shared_stream::SharedStreams::default());
        let unverified = Arc::new(crate::unverified::Unverified::default());
        let gate = Gate::new(
            Arc::clone(&config.peer_store),
            config.allowed_peers.clone(),
            Arc::clone(&unverified),
        );
        #[cfg(feature = "dht")]
        let kad = match &config.dht {
            Some(dht) => {
                let store = dht
                    .open_store(local_peer_id)
                    .map_err(NodeError::RecordStore)?;
                Some(dht.behaviour_with_store(local_peer_id, store))
            }
            None => None,
        };
        #[cfg(not(feature = "dht"))]
        let kad = None;
        #[cfg(feature = "mdns")]
        let mdns = if config.mdns {
            Some(
                libp2p::mdns::tokio::Behaviour::new(
                    libp2p::mdns::Config::default(),
                    keypair.public().to_peer_id(),
                )
                .map_err(|e| NodeError::Mdns(e.to_string()))?,
            )
        } else {
            None
        };
        #[cfg(not(feature = "mdns"))]
        let mdns = None;
        #[cfg(feature = "pubsub")]
        let gossipsub = match &config.pubsub {
            Some(pubsub) => Some(
                pubsub
                    .behaviour(&keypair, config.max_message_size)
                    .map_err(NodeError::Pubsub)?,
            ),
            None => None,
        };
        #[cfg(not(feature = "pubsub"))]
        let gossipsub = None;
        let (ping_interval, ping_timeout, identify_delay) = (
            config.ping_interval,
            config.ping_timeout,
            config.identify_delay,
        );
        let mut swarm = build_swarm(keypair, &config.transport, move |key| Behaviour {
            gate,
            limits,
            ip_limits,
            streams,
            identify: Delayed::new(
                identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                        .with_agent_version(format!("p2plane/{}", env!("CARGO_PKG_VERSION"))),
                ),
                identify_delay,
            ),
            ping: Delayed::new(
                ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(ping_interval)
                        .with_timeout(ping_timeout),
                ),
                identify_delay,
            ),
            kad: Toggle::from(kad),
            gossipsub: Toggle::from(gossipsub),
            mdns: Toggle::from(mdns),
        })?;

        let listen_error = |reason: String| NodeError::Listen {
            addr: config.listen_addr.clone(),
            reason,
        };
        let listener = swarm
            .listen_on(config.listen_addr.clone())
            .map_err(|e| listen_error(error_chain(&e)))?;
        let first_addr = tokio::time::timeout(LISTEN_TIMEOUT, async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr {
                        listener_id,
                        address,
                    } if listener_id == listener => {
                        return Ok(address);
                    }
                    SwarmEvent::ListenerClosed {
                        listener_id,
                        reason,
                        ..
                    } if listener_id == listener => {
                        return Err(listen_error(match reason {
                            Ok(()) => "listener closed".to_owned(),
                            Err(e) => error_chain(&e),
                        }));
                    }
                    SwarmEvent::ListenerError { listener_id, error } if listener_id == listener => {
                        return Err(listen_error(error_chain(&error)));
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| listen_error("timed out waiting for the listener".to_owned()))??;
        tracing::info!(peer = %local_peer_id, addr = %first_addr, "node started");

        // The DHT starts from the peers the store knows to speak it.
        #[cfg(feature = "dht")]
        if let (Some(dht), Some(kad)) = (&config.dht, swarm.behaviour_mut().kad.as_mut()) {
            let name = dht.protocol.as_str();
            let store = config.peer_store.as_ref();
            for peer in store.get_peers() {
                let Some(record) = store.record(&peer) else {
                    continue;
                };
                if record.protocols.iter().any(|p| p == name) {
                    for (addr, _) in record.addresses {
                        kad.add_address(&peer, addr);
                    }
                }
            }
        }
        // Known peers first: a restarted node does not depend on the bootstrap node.
        redial_known_peers(
            &mut swarm,
            config.peer_store.as_ref(),
            config.redial_on_start,
        );
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        if let Some(addr) = &config.bootstrap_addr
            && let Err(e) = swarm.dial(addr.clone())
        {
            let _ = events.send(Event::DialFailed {
                peer: None,
                reason: error_chain(&e),
            });
        }
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        #[cfg(feature = "metrics")]
        let mut libp2p_metrics = None;
        #[cfg(feature = "metrics")]
        let mut metrics = None;
        #[cfg(not(feature = "metrics"))]
        let metrics = None;
        #[cfg(feature = "metrics")]
        let mut metrics_addr = None;
        #[cfg(feature = "metrics")]
        if let Some(addr) = config.metrics_addr {
            let mut registry = prometheus_client::registry::Registry::default();
            libp2p_metrics = Some(libp2p::metrics::Metrics::new(&mut registry));
            let own = Arc::new(crate::metrics::Metrics::new(&mut registry));
            let listener = crate::metrics::bind(addr)
                .await
                .map_err(|e| NodeError::Metrics(format!("cannot listen on {addr}: {e}")))?;
            metrics_addr = listener.local_addr().ok();
            tokio::spawn(crate::metrics::serve(
                listener,
                Arc::new(registry),
                Arc::clone(&own),
                Arc::clone(&config.peer_store),
                shutdown_rx.clone(),
            ));
            metrics = Some(own);
        }
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let peers = Arc::new(PeerTable::default());
        let event_loop = EventLoop {
            swarm,
            commands: commands_rx,
            events: events.clone(),
            shutdown: shutdown_tx,
            stopped: stopped_tx,
            pending_dials: HashMap::new(),
            peers: Arc::clone(&peers),
            shared_streams: Arc::clone(&shared_streams),
            store: Arc::clone(&config.peer_store),
            unverified: Arc::clone(&unverified),
            allow_private_addrs: config.allow_private_addrs,
            #[cfg(feature = "dht")]
            dht: DhtState::new(config.dht.as_ref().and_then(|d| d.validator.clone())),
            #[cfg(feature = "dht")]
            kad_protocol: config.dht.as_ref().map(DhtConfig::stream_protocol),
            #[cfg(feature = "pubsub")]
            pubsub: crate::pubsub::PubsubState::new(config.max_message_size, &commands_tx),
            #[cfg(feature = "metrics")]
            metrics: libp2p_metrics,
        };
        tokio::spawn(event_loop.run());

        let codec = CborCodec::new(config.max_message_size);
        let budget = Arc::new(crate::budget::Budget::new(
            config.max_inbound_bytes,
            config.max_inbound_bytes_per_peer,
        ));
        Ok(Self {
            shared: Arc::new(NodeState {
                commands: commands_tx,
                control,
                codec,
                events,
                shutdown: shutdown_rx,
                stopped: stopped_rx,
                local_peer_id,
                config,
                peers,
                shared_streams,
                unverified,
                budget,
                metrics,
                #[cfg(feature = "metrics")]
                metrics_addr,
            }),
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
            .accept(crate::rpc::shared_protocol(Q::NAME), limit)
            .map_err(|_| NodeError::AlreadyServing { protocol: Q::NAME })?;
        let context = Arc::new(ServerContext {
            codec: self.shared.codec,
            events: self.shared.events.clone(),
            shutdown: self.shared.shutdown.clone(),
            handler_timeout: self.shared.config.inbound_timeout,
            read_timeout: self.shared.config.read_timeout,
            write_timeout: self.shared.config.write_timeout,
            budget: Arc::clone(&self.shared.budget),
            shared_streams: Default::default(),
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
    /// [`Event::PeerDisconnected`] follows once the connections are gone.
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

/// Dials up to `limit` peers the store knows, most recently successful first, skipping
/// banned peers and peers without addresses. Their outcomes are recorded as usual.
fn redial_known_peers(swarm: &mut libp2p::Swarm<Behaviour>, store: &dyn PeerStore, limit: usize) {
    let now = SystemTime::now();
    let mut known: Vec<_> = store
        .get_peers()
        .into_iter()
        .filter_map(|peer| store.record(&peer).map(|record| (peer, record)))
        .filter(|(_, record)| !record.is_banned_at(now) && !record.addresses.is_empty())
        .collect();
    // Most recently successful first; never-successful peers last, most recently seen first.
    known.sort_by_key(|(_, r)| {
        std::cmp::Reverse((r.last_success, r.addresses.first().map(|(_, seen)| *seen)))
    });
    for (peer, record) in known.into_iter().take(limit) {
        let addrs = record.addresses.into_iter().map(|(a, _)| a).collect();
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        if let Err(e) = swarm.dial(opts) {
            tracing::debug!(%peer, error = %error_chain(&e), "redial failed");
        }
    }
}
