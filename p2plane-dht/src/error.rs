//! The DHT's error type.

/// Why a DHT operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// No record (or peer) was found.
    #[error("not found")]
    NotFound,
    /// Fewer nodes than the quorum stored the record.
    #[error("quorum failed: {success} of {quorum} nodes stored the record")]
    QuorumFailed {
        /// Nodes that stored it.
        success: usize,
        /// Nodes required.
        quorum: usize,
    },
    /// The query did not finish in time.
    #[error("the query timed out")]
    Timeout,
    /// The validator refused the record.
    #[error("record rejected: {0}")]
    Rejected(String),
    /// The routing table is empty: connect to a peer (or set a bootstrap address) first.
    #[error("no known peers to ask")]
    NoKnownPeers,
    /// The local record store refused the record (full, or the value too large).
    #[error("record store: {0}")]
    Store(String),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
    /// The node was started without a DHT (`NodeConfig::dht` is `None`).
    #[error("the node has no DHT")]
    Disabled,
}
