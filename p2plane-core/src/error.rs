use libp2p_identity::PeerId;

use crate::CodecError;

/// What can go wrong with a request or a node operation.
///
/// Two predicates sort errors for middleware:
///
/// - [`Error::is_transient`]: trying again (later, or at another peer) may succeed.
/// - [`Error::remote_may_have_acted`]: the request may have reached the remote's handler, so
///   repeating it could apply it twice. Only [`Timeout`](Error::Timeout),
///   [`ConnectionClosed`](Error::ConnectionClosed), [`Io`](Error::Io),
///   [`Failed`](Error::Failed), [`Protocol`](Error::Protocol), [`Shutdown`](Error::Shutdown)
///   and [`RemoteShutdown`](Error::RemoteShutdown) say yes: in every other
///   case the remote certainly did not run its handler on this request.
///
/// | variant | transient | remote may have acted |
/// |---|---|---|
/// | `Dial` | yes | no |
/// | `UnsupportedProtocol` | no | no |
/// | `TooLarge` | no | no when raised before sending; yes for a response that is too large |
/// | `Timeout` | yes | yes |
/// | `ConnectionClosed` | yes | yes |
/// | `Io` | yes | yes |
/// | `Busy` | yes | no |
/// | `Rejected` | no | no |
/// | `Failed` | no | yes |
/// | `Protocol` | no | yes |
/// | `Codec` | no | no |
/// | `Shutdown` | no | yes |
/// | `RemoteShutdown` | yes | yes |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection to the peer could be made.
    #[error("could not connect{}: {reason}", peer_suffix(.peer))]
    Dial {
        /// The peer, when it was known.
        peer: Option<PeerId>,
        /// Why the dial failed.
        reason: String,
    },
    /// The peer does not speak the protocol (multistream-select found no match).
    #[error("peer {peer} does not support protocol {protocol}")]
    UnsupportedProtocol {
        /// The peer.
        peer: PeerId,
        /// The protocol name asked for.
        protocol: String,
    },
    /// A message is larger than the configured limit. A request that is too large is
    /// refused before anything is sent.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// The message's length in bytes.
        len: u64,
        /// Whether the message was a response, which means the remote did act.
        response: bool,
    },
    /// No response came within the deadline.
    #[error("request to {peer} timed out")]
    Timeout {
        /// The peer.
        peer: PeerId,
    },
    /// The connection or stream closed before the response arrived.
    #[error("connection to {peer} closed before the response arrived")]
    ConnectionClosed {
        /// The peer.
        peer: PeerId,
    },
    /// An I/O error on the stream.
    #[error("i/o error with {peer}: {message}")]
    Io {
        /// The peer.
        peer: PeerId,
        /// The error's kind.
        kind: std::io::ErrorKind,
        /// The error's text.
        message: String,
    },
    /// The remote is at its limit of concurrent requests and did not run the handler.
    #[error("peer {peer} is busy")]
    Busy {
        /// The peer.
        peer: PeerId,
    },
    /// A validator refused the request, locally before sending or at the remote before its
    /// handler ran.
    #[error("request rejected{}: {reason}", peer_suffix(.peer))]
    Rejected {
        /// The peer that rejected it; `None` when it was rejected locally.
        peer: Option<PeerId>,
        /// Why.
        reason: String,
    },
    /// The remote's handler returned an error.
    #[error("handler at {peer} failed: {message}")]
    Failed {
        /// The peer.
        peer: PeerId,
        /// The handler's error text.
        message: String,
    },
    /// The peer sent something that is not a valid response.
    #[error("invalid response from {peer}: {reason}")]
    Protocol {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        reason: String,
    },
    /// A value could not be encoded or decoded locally.
    #[error(transparent)]
    Codec(CodecError),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
    /// The remote node shut down while it served a stream; the stream ended there.
    #[error("peer {peer} shut down")]
    RemoteShutdown {
        /// The peer.
        peer: PeerId,
    },
}

fn peer_suffix(peer: &Option<PeerId>) -> String {
    peer.map(|p| format!(" by {p}")).unwrap_or_default()
}

impl Error {
    /// Whether trying again, later or at another peer, may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Dial { .. }
                | Error::Timeout { .. }
                | Error::ConnectionClosed { .. }
                | Error::Io { .. }
                | Error::Busy { .. }
                | Error::RemoteShutdown { .. }
        )
    }

    /// Whether the remote may have run its handler on the request. When `false`, repeating
    /// the request cannot apply it twice.
    pub fn remote_may_have_acted(&self) -> bool {
        match self {
            Error::Timeout { .. }
            | Error::ConnectionClosed { .. }
            | Error::Io { .. }
            | Error::Failed { .. }
            | Error::Protocol { .. }
            | Error::Shutdown
            | Error::RemoteShutdown { .. } => true,
            Error::TooLarge { response, .. } => *response,
            _ => false,
        }
    }

    /// The peer the error concerns, when there is one.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            Error::Dial { peer, .. } | Error::Rejected { peer, .. } => *peer,
            Error::UnsupportedProtocol { peer, .. }
            | Error::Timeout { peer }
            | Error::ConnectionClosed { peer }
            | Error::Io { peer, .. }
            | Error::Busy { peer }
            | Error::Failed { peer, .. }
            | Error::Protocol { peer, .. }
            | Error::RemoteShutdown { peer } => Some(*peer),
            Error::TooLarge { .. } | Error::Codec(_) | Error::Shutdown => None,
        }
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { limit, len } => Error::TooLarge {
                limit,
                len,
                response: false,
            },
            other => Error::Codec(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_acted_follow_the_table() {
        let p = PeerId::random();
        let busy = Error::Busy { peer: p };
        assert!(busy.is_transient() && !busy.remote_may_have_acted());
        let timeout = Error::Timeout { peer: p };
        assert!(timeout.is_transient() && timeout.remote_may_have_acted());
        let rejected = Error::Rejected {
            peer: Some(p),
            reason: "no".into(),
        };
        assert!(!rejected.is_transient() && !rejected.remote_may_have_acted());
        assert!(!Error::Shutdown.is_transient());
        let too_large: Error = CodecError::TooLarge { limit: 1, len: 2 }.into();
        assert!(matches!(
            too_large,
            Error::TooLarge {
                response: false,
                ..
            }
        ));
        assert!(!too_large.remote_may_have_acted());
        assert_eq!(busy.peer(), Some(p));
    }

    #[test]
    fn messages_name_the_peer() {
        let p = PeerId::random();
        let e = Error::Dial {
            peer: Some(p),
            reason: "refused".into(),
        };
        assert!(e.to_string().contains(&p.to_string()));
        let e = Error::Rejected {
            peer: None,
            reason: "empty".into(),
        };
        assert_eq!(e.to_string(), "request rejected: empty");
    }
}
