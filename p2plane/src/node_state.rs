//! What every handle of a node shares: the way to the event loop, the streams, the
//! configuration and the node's bookkeeping.

use std::sync::Arc;

use p2plane_codec::CborCodec;
use p2plane_core::PeerId;
use tokio::sync::{broadcast, mpsc, watch};

use crate::{
    NodeConfig, budget::Budget, command::Command, event::Event, metrics::Metrics,
    peer_table::PeerTable, rpc::shared_stream::SharedStreams, streams, unverified::Unverified,
};

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
    pub(crate) shared_streams: Arc<SharedStreams>,
    /// Addresses heard of but not proved by a connection (DHT lookups, mDNS).
    #[cfg_attr(not(feature = "dht"), allow(dead_code))]
    pub(crate) unverified: Arc<Unverified>,
    /// The inbound byte budget of every protocol served.
    pub(crate) budget: Arc<Budget>,
    /// P2PLane's own metrics, when they are on.
    pub(crate) metrics: Option<Arc<Metrics>>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Places for streaming calls this node makes ([`StreamConfig::max_outbound`](crate::StreamConfig::max_outbound)).
    pub(crate) outbound_streams: Arc<tokio::sync::Semaphore>,
    /// The streams this node serves (shutdown lets them end with a `Shutdown` frame).
    pub(crate) served_streams: Arc<crate::rpc::streaming::Served>,
}

impl NodeState {
    pub(crate) fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
