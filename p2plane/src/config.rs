#[cfg(feature = "metrics")]
use std::net::SocketAddr;
use std::{collections::HashSet, fmt, path::PathBuf, sync::Arc, time::Duration};

use libp2p::identity::Keypair;
use p2plane_codec::DEFAULT_MAX_MESSAGE_SIZE;
use p2plane_core::{Multiaddr, PeerId, PeerStore};
#[cfg(feature = "dht")]
use p2plane_dht::DhtConfig;
use p2plane_peers::MemoryPeerStore;
use p2plane_transport::{Limits, TransportConfig};

#[cfg(feature = "pubsub")]
use crate::pubsub::PubsubConfig;

/// Where a node's key comes from.
#[derive(Debug, Clone, Default)]
pub enum Identity {
    /// A new random key each start (the `PeerId` changes on restart).
    #[default]
    Generate,
    /// A key file, created with owner-only permissions if it does not exist. A restarted node
    /// keeps its `PeerId`. A file other users can read is refused.
    KeyFile(PathBuf),
    /// A key the caller already has.
    Keypair(Keypair),
}

/// How to start a node. Every field but the two addresses has a sensible default:
///
/// ```
/// use p2plane::NodeConfig;
///
/// let config = NodeConfig {
///     listen_addr: "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
///     bootstrap_addr: None,
///     ..Default::default()
/// };
/// ```
///
/// The listen address picks the transport: `/ip4/../tcp/..` (TCP with Noise and Yamux),
/// `/ip4/../udp/../quic-v1` (QUIC) or `/memory/..` (in-process). A node dials all three
/// kinds whatever it listens on.
#[derive(Clone)]
pub struct NodeConfig {
    /// Where to listen. Default `/ip4/0.0.0.0/tcp/0` (all interfaces, a free port).
    pub listen_addr: Multiaddr,
    /// A peer to connect to at start.
    pub bootstrap_addr: Option<Multiaddr>,
    /// The node's key. Default: a new one.
    pub identity: Identity,
    /// The largest encoded request or response, in bytes. Default 4 MiB.
    pub max_message_size: usize,
    /// The longest one client call (one attempt, under a retry layer) waits for its
    /// response, whatever layers wrap the client; a `TimeoutLayer` sets a shorter deadline
    /// per attempt. Default 30 s.
    pub request_timeout: Duration,
    /// The longest a handler may take to answer one inbound request, on both stream forms:
    /// a slower one is cut off, its caller answered `Failed` ("timed out") and
    /// [`InboundError::Timeout`](crate::InboundError::Timeout) reported. Reading the
    /// request and writing the answer have deadlines of their own (`read_timeout`,
    /// `write_timeout`). Default 30 s.
    pub inbound_timeout: Duration,
    /// Inbound requests handled at once per protocol; more are answered `Busy`. Default 256.
    pub max_concurrent_inbound: usize,
    /// Bytes of inbound requests the node holds at once, for all peers together: a request
    /// is charged its announced length before its body is read, and the charge lasts until
    /// its answer is written (an answer larger than its request waits, up to
    /// `write_timeout`, for room). A request that does not fit is answered `Busy` without
    /// its body being held. Default 256 MiB.
    pub max_inbound_bytes: usize,
    /// The same budget for any one peer, so that one peer (or a few) cannot take it all.
    /// Default 16 MiB. It caps the largest request a peer can send as well.
    pub max_inbound_bytes_per_peer: usize,
    /// Once the first byte of an inbound request frame has arrived, the rest must arrive
    /// within this time, or the stream is closed (a peer that announces a large request and
    /// stalls). Default 10 s.
    pub read_timeout: Duration,
    /// An answer must be taken by the peer within this time, or the stream is closed (a peer
    /// that never reads). Default 10 s.
    pub write_timeout: Duration,
    /// How often each connection is pinged. A connection whose pings fail (time out or
    /// error) twice in a row is closed, so that requests redial instead of waiting on a
    /// connection whose peer vanished without closing it. Default 15 s.
    pub ping_interval: Duration,
    /// How long a ping may wait for its answer. Default 20 s.
    pub ping_timeout: Duration,
    /// How long identify and ping wait on a new connection before their first exchange, so
    /// that their streams do not compete with the connection's first requests. Peers learn
    /// each other's protocols and addresses (and the DHT's routing tables grow) this much
    /// later. Zero starts both at once, as libp2p does. Default 20 ms.
    pub identify_delay: Duration,
    /// Transport settings (connection timeouts).
    pub transport: TransportConfig,
    /// Connection limits.
    pub limits: Limits,
    /// Where the node keeps what it learns about peers. Default: a [`MemoryPeerStore`]. A
    /// persistent store (`p2plane::peers::RedbPeerStore`) lets a restarted node find its
    /// peers without the bootstrap node.
    pub peer_store: Arc<dyn PeerStore>,
    /// Keep loopback, private-range and memory addresses in the peer store. Default `false`:
    /// such addresses mean nothing to other hosts. Turn it on for tests and private networks.
    pub allow_private_addrs: bool,
    /// When set, the only peers this node connects with, inbound or outbound: any other is
    /// refused as its connection is established (once the handshake has proved its
    /// `PeerId`), before any protocol runs. For closed groups such as a consensus
    /// committee. Default `None` (anyone may connect).
    pub allowed_peers: Option<HashSet<PeerId>>,
    /// How many known peers a node dials when it starts (most recently successful first).
    /// Default 8.
    pub redial_on_start: usize,
    /// Inbound shared streams open at once, per protocol, from all peers together (each
    /// peer may open at most 8 per protocol). A shared stream over either limit is closed
    /// unread; its caller tries once more on a new stream and then gets `Error::Busy`.
    /// An open stream holds no handler permit (see `max_concurrent_inbound`), only its
    /// buffers (about 8 KiB). Default 4,096. Streams of one request are read under the same
    /// bound (a separate count), and take a handler permit only once their request has
    /// arrived, so streams that stall cannot starve the handlers.
    pub max_shared_streams: usize,
    /// An inbound shared stream on which no request begins for this long is closed, cleanly:
    /// every request read is answered first, and a client whose request crossed the close
    /// sends it again on a new stream. Clients close their own idle streams after
    /// `transport.idle_connection_timeout` (60 s); this bounds peers that do not. Default
    /// 90 s.
    pub shared_stream_idle_timeout: Duration,
    /// Carry small requests to a peer on one shared stream per protocol (ids match
    /// responses to requests) instead of a stream per request. Default `true`; peers that do
    /// not serve the shared form are reached with a stream per request either way.
    pub use_shared_streams: bool,
    /// Streaming calls ([`Streaming`](crate::Streaming) protocols): windows, limits, idle
    /// timeout.
    pub streams: crate::StreamConfig,
    #[cfg(feature = "dht")]
    /// Kademlia settings; `None` leaves the node out of the DHT. Default: on, in libp2p's
    /// automatic mode (use [`DhtMode::Server`](p2plane_dht::DhtMode::Server) on networks
    /// without confirmed external addresses, such as loopback tests).
    pub dht: Option<DhtConfig>,
    #[cfg(feature = "pubsub")]
    /// Publish/subscribe (gossipsub) settings; `None` (the default) leaves it off, and
    /// [`Node::subscribe`](crate::Node::subscribe) answers
    /// [`PubsubError::Disabled`](crate::PubsubError::Disabled).
    pub pubsub: Option<PubsubConfig>,
    #[cfg(feature = "metrics")]
    /// Where to serve Prometheus metrics (`GET /metrics`, text format), such as
    /// `127.0.0.1:9090` (port 0 picks one; [`Node::metrics_addr`](crate::Node::metrics_addr)
    /// tells which). `None` (the default) collects nothing.
    pub metrics_addr: Option<SocketAddr>,
    #[cfg(feature = "mdns")]
    /// Finds peers on the local network by mDNS (multicast DNS), and connects to them. Their
    /// addresses are kept even when private. Default `false`.
    pub mdns: bool,
    #[cfg(feature = "relay")]
    /// Relays, hole punching and the relay service (see [`ReachConfig`](crate::ReachConfig)).
    /// Default: no relays, hole punching on, not a relay.
    pub reach: crate::ReachConfig,
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NodeConfig");
        d.field("listen_addr", &self.listen_addr)
            .field("bootstrap_addr", &self.bootstrap_addr)
            .field("identity", &self.identity)
            .field("max_message_size", &self.max_message_size)
            .field("request_timeout", &self.request_timeout)
            .field("inbound_timeout", &self.inbound_timeout)
            .field("max_concurrent_inbound", &self.max_concurrent_inbound)
            .field("max_inbound_bytes", &self.max_inbound_bytes)
            .field(
                "max_inbound_bytes_per_peer",
                &self.max_inbound_bytes_per_peer,
            )
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("identify_delay", &self.identify_delay)
            .field("transport", &self.transport)
            .field("limits", &self.limits)
            .field("allow_private_addrs", &self.allow_private_addrs)
            .field(
                "allowed_peers",
                &self.allowed_peers.as_ref().map(HashSet::len),
            )
            .field("redial_on_start", &self.redial_on_start)
            .field("max_shared_streams", &self.max_shared_streams)
            .field(
                "shared_stream_idle_timeout",
                &self.shared_stream_idle_timeout,
            )
            .field("use_shared_streams", &self.use_shared_streams)
            .field("streams", &self.streams);
        #[cfg(feature = "dht")]
        d.field("dht", &self.dht);
        #[cfg(feature = "pubsub")]
        d.field("pubsub", &self.pubsub);
        #[cfg(feature = "metrics")]
        d.field("metrics_addr", &self.metrics_addr);
        #[cfg(feature = "mdns")]
        d.field("mdns", &self.mdns);
        #[cfg(feature = "relay")]
        d.field("reach", &self.reach);
        d.finish_non_exhaustive()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen_addr: "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
            bootstrap_addr: None,
            identity: Identity::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            request_timeout: Duration::from_secs(30),
            inbound_timeout: Duration::from_secs(30),
            max_concurrent_inbound: 256,
            max_inbound_bytes: 256 << 20,
            max_inbound_bytes_per_peer: 16 << 20,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(20),
            identify_delay: Duration::from_millis(20),
            transport: TransportConfig::default(),
            limits: Limits::default(),
            peer_store: Arc::new(MemoryPeerStore::default()),
            allow_private_addrs: false,
            allowed_peers: None,
            redial_on_start: 8,
            max_shared_streams: 4096,
            shared_stream_idle_timeout: Duration::from_secs(90),
            use_shared_streams: true,
            streams: crate::StreamConfig::default(),
            #[cfg(feature = "dht")]
            dht: Some(DhtConfig::default()),
            #[cfg(feature = "pubsub")]
            pubsub: None,
            #[cfg(feature = "metrics")]
            metrics_addr: None,
            #[cfg(feature = "mdns")]
            mdns: false,
            #[cfg(feature = "relay")]
            reach: crate::ReachConfig::default(),
        }
    }
}

impl NodeConfig {
    /// A config listening on `addr`, with defaults for the rest.
    pub fn listen_on(addr: Multiaddr) -> Self {
        Self {
            listen_addr: addr,
            ..Default::default()
        }
    }

    /// Sets the bootstrap address.
    #[must_use]
    pub fn with_bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap_addr = Some(addr);
        self
    }

    /// Uses (and creates if missing) the key file at `path`.
    #[must_use]
    pub fn with_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity = Identity::KeyFile(path.into());
        self
    }

    /// Sets the largest encoded message, in bytes.
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the client's fallback deadline.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how often connections are pinged and how long a ping may take; two failed pings
    /// in a row close the connection (see [`NodeConfig::ping_interval`]).
    #[must_use]
    pub fn with_ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.ping_timeout = timeout;
        self
    }

    /// Sets how long identify and ping wait on a new connection before their first exchange
    /// (see [`NodeConfig::identify_delay`]).
    #[must_use]
    pub fn with_identify_delay(mut self, delay: Duration) -> Self {
        self.identify_delay = delay;
        self
    }

    /// Sets the deadline of one inbound exchange.
    #[must_use]
    pub fn with_inbound_timeout(mut self, timeout: Duration) -> Self {
        self.inbound_timeout = timeout;
        self
    }

    /// Sets how many inbound requests per protocol are handled at once.
    #[must_use]
    pub fn with_max_concurrent_inbound(mut self, n: usize) -> Self {
        self.max_concurrent_inbound = n.max(1);
        self
    }

    /// Sets [`max_shared_streams`](Self::max_shared_streams) and
    /// [`shared_stream_idle_timeout`](Self::shared_stream_idle_timeout).
    #[must_use]
    pub fn with_shared_streams(mut self, max: usize, idle_timeout: Duration) -> Self {
        self.max_shared_streams = max;
        self.shared_stream_idle_timeout = idle_timeout;
        self
    }

    /// Sets the inbound byte budgets: for all peers together and for any one peer (see
    /// [`NodeConfig::max_inbound_bytes`]).
    ///
    /// ```
    /// let config = p2plane::NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
    ///     .with_inbound_budget(64 << 20, 8 << 20);
    /// assert_eq!(config.max_inbound_bytes_per_peer, 8 << 20);
    /// ```
    #[must_use]
    pub fn with_inbound_budget(mut self, total: usize, per_peer: usize) -> Self {
        self.max_inbound_bytes = total;
        self.max_inbound_bytes_per_peer = per_peer;
        self
    }

    /// Sets the read and write deadlines of inbound streams (see
    /// [`NodeConfig::read_timeout`] and [`NodeConfig::write_timeout`]).
    #[must_use]
    pub fn with_stream_deadlines(mut self, read: Duration, write: Duration) -> Self {
        self.read_timeout = read;
        self.write_timeout = write;
        self
    }

    /// Uses `store` for what the node learns about peers.
    #[must_use]
    pub fn with_peer_store(mut self, store: Arc<dyn PeerStore>) -> Self {
        self.peer_store = store;
        self
    }

    /// Keeps loopback and private addresses in the peer store (tests, private networks).
    #[must_use]
    pub fn with_private_addrs(mut self, allow: bool) -> Self {
        self.allow_private_addrs = allow;
        self
    }

    /// Connects only with `peers` (see [`NodeConfig::allowed_peers`]).
    ///
    /// ```
    /// use p2plane::{NodeConfig, PeerId};
    ///
    /// let committee = [PeerId::random(), PeerId::random()];
    /// let config = NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
    ///     .with_allowed_peers(committee);
    /// assert_eq!(config.allowed_peers.map(|p| p.len()), Some(2));
    /// ```
    #[must_use]
    pub fn with_allowed_peers(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.allowed_peers = Some(peers.into_iter().collect());
        self
    }

    #[cfg(feature = "mdns")]
    /// Turns local discovery by mDNS on or off (see [`NodeConfig::mdns`]).
    #[must_use]
    pub fn with_mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Sets how the node reaches peers behind NATs: relays to listen through, hole
    /// punching, the relay service (feature `relay`).
    #[cfg(feature = "relay")]
    pub fn with_reach(mut self, reach: crate::ReachConfig) -> Self {
        self.reach = reach;
        self
    }

    #[cfg(feature = "metrics")]
    /// Serves Prometheus metrics on `addr` (see [`NodeConfig::metrics_addr`]).
    ///
    /// ```
    /// let config = p2plane::NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
    ///     .with_metrics("127.0.0.1:0".parse().unwrap());
    /// assert!(config.metrics_addr.is_some());
    /// ```
    #[must_use]
    pub fn with_metrics(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    #[cfg(feature = "pubsub")]
    /// Turns publish/subscribe on with `config` (or off with `None`).
    #[must_use]
    pub fn with_pubsub(mut self, config: Option<PubsubConfig>) -> Self {
        self.pubsub = config;
        self
    }

    #[cfg(feature = "dht")]
    /// Sets the DHT configuration (`None` leaves the node out of the DHT).
    #[must_use]
    pub fn with_dht(mut self, dht: Option<DhtConfig>) -> Self {
        self.dht = dht;
        self
    }

    /// Sets the connection limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}
