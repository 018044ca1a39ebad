//! The request path: everything between a [`Client`] call and the handler that answers it.
//!
//! - [`client`]: the `Client` service. A call goes on a shared stream ([`shared_stream`])
//!   or, to a peer without them, on a stream of its own.
//! - [`shared_stream`]: the client half of shared streams: one long-lived stream per peer
//!   and protocol carries many requests, each frame tagged with an id.
//! - [`server`]: the accept loops and both server halves (one-request streams and shared
//!   streams), the handler's deadline, budgets and answers.
//! - here: what both sides share: the shared stream's wire name, read buffer and write
//!   batching, how stream failures map to [`Error`]s, and the request span.
//!
//! Arrows go one way: `client` → `shared_stream` → this module, and `server` → this module.
//! The client reads the node's state (`node_state::NodeState`); nothing here reads `node`.

pub(crate) mod client;
pub(crate) mod server;
pub(crate) mod shared_stream;
pub(crate) mod streaming;

use std::{io, marker::PhantomData};

use libp2p::{StreamProtocol, core::upgrade::NegotiationError};
use p2plane_codec::FrameError;
use p2plane_core::{CodecError, Error, PeerId, Protocol, is_valid_protocol_name};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::streams::OpenError;

pub use client::Client;
pub use streaming::{
    StreamConfig, UploadStream, Uploads,
    client::{ItemStream, StreamClient},
};

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

/// Appended to a protocol's name to name its shared-stream form.
pub(crate) const SUFFIX: &str = "/p2plane-mux/1";
/// The read buffer of each end of a shared stream: a frame's length, id and small body come
/// out of it without a read of the stream each (six reads of the stream per small frame
/// without it, each taking the stream's lock). Larger bodies bypass it.
pub(crate) const READ_BUFFER: usize = 4 * 1024;
/// Bytes gathered into one write on a shared stream.
pub(crate) const BATCH: usize = 64 * 1024;

/// Streams open per peer, up to a limit: the places of one served protocol's streams.
pub(crate) struct PeerSlots {
    open: std::sync::Mutex<std::collections::HashMap<PeerId, usize>>,
    max: usize,
}

impl PeerSlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: Default::default(),
            max,
        }
    }

    /// A place for one more of `peer`'s streams, freed when dropped; `None` at the limit.
    pub(crate) fn take(self: &std::sync::Arc<Self>, peer: PeerId) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(peer).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            slots: std::sync::Arc::clone(self),
            peer,
        })
    }
}

/// One of a peer's places in [`PeerSlots`]; freed when dropped.
pub(crate) struct PeerSlot {
    slots: std::sync::Arc<PeerSlots>,
    peer: PeerId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// A frame queued for a shared stream, with whatever must live until it is written.
pub(crate) trait Outgoing {
    /// Appends its bytes to `batch`.
    fn put(&self, batch: &mut Vec<u8>);
}

/// Puts `first` and whatever else is already queued (up to [`BATCH`] bytes) into `batch`,
/// so that one write carries them all; the items gathered go to `held`, to be dropped once
/// the batch is written. Both ends of a shared stream write this way.
pub(crate) fn gather<T: Outgoing>(
    batch: &mut Vec<u8>,
    first: T,
    queue: &mut mpsc::Receiver<T>,
    held: &mut Vec<T>,
) {
    batch.clear();
    first.put(batch);
    held.push(first);
    while batch.len() < BATCH {
        match queue.try_recv() {
            Ok(item) => {
                item.put(batch);
                held.push(item);
            }
            Err(_) => break,
        }
    }
}
/// The name of `name`'s shared-stream form (the wire name keeps its first spelling, `mux`).
pub(crate) fn shared_protocol(name: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("{name}{SUFFIX}"))
        .expect("a valid name plus a suffix is valid")
}

/// `future` inside `span`, unless nobody listens for the span: entering and leaving a
/// disabled span on every poll still costs (with `tracing`'s `log` feature, which a
/// dependency turns on, each poll asks `log` whether it is enabled).
pub(crate) fn instrumented<F: std::future::Future>(
    future: F,
    span: tracing::Span,
) -> futures::future::Either<F, tracing::instrument::Instrumented<F>> {
    if span.is_disabled() {
        futures::future::Either::Left(future)
    } else {
        futures::future::Either::Right(future.instrument(span))
    }
}

/// The span of one request, on either side: `p2plane.request` with its direction, peer,
/// protocol, attempt (outbound) and, on shared streams, its id (recorded once known).
pub(crate) fn request_span(
    direction: &'static str,
    peer: PeerId,
    protocol: &'static str,
    attempt: Option<u32>,
) -> tracing::Span {
    tracing::debug_span!(
        "p2plane.request",
        direction,
        %peer,
        protocol,
        attempt,
        id = tracing::field::Empty,
    )
}

/// What a failure to read an answer frame means for the caller.
pub(crate) fn answer_error(
    e: FrameError,
    peer: PeerId,
    stream_error: impl Fn(io::Error) -> Error,
) -> Error {
    match e {
        FrameError::Io(e) => stream_error(e),
        FrameError::Codec(CodecError::TooLarge { limit, len }) => Error::TooLarge {
            limit,
            len,
            response: true,
        },
        FrameError::Codec(CodecError::Truncated {
            expected: 0,
            got: 0,
        }) => Error::ConnectionClosed { peer },
        other => Error::Protocol {
            peer,
            reason: other.to_string(),
        },
    }
}

pub(crate) fn map_open_error(e: OpenError, peer: PeerId, protocol: &StreamProtocol) -> Error {
    match e {
        OpenError::Unsupported => Error::UnsupportedProtocol {
            peer,
            protocol: plain_name(protocol),
        },
        OpenError::Dial(reason) => Error::Dial {
            peer: Some(peer),
            reason,
        },
        OpenError::Closed => Error::ConnectionClosed { peer },
        OpenError::Timeout => Error::Timeout { peer },
        OpenError::Io(e) => map_stream_error(e, peer, protocol),
    }
}

/// With optimistic negotiation, a peer that does not speak the protocol is detected on the
/// first read or write rather than when the stream opens.
pub(crate) fn map_stream_error(e: io::Error, peer: PeerId, protocol: &StreamProtocol) -> Error {
    if is_negotiation_failure(&e) {
        Error::UnsupportedProtocol {
            peer,
            protocol: plain_name(protocol),
        }
    } else {
        io_error(peer, e)
    }
}

/// The application's protocol name, without the shared-stream suffix.
fn plain_name(protocol: &StreamProtocol) -> String {
    let name = protocol.as_ref();
    name.strip_suffix(crate::rpc::SUFFIX)
        .unwrap_or(name)
        .to_owned()
}

fn is_negotiation_failure(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<NegotiationError>()),
        Some(NegotiationError::Failed)
    )
}

fn io_error(peer: PeerId, e: io::Error) -> Error {
    use io::ErrorKind::*;
    match e.kind() {
        // yamux fails reads and writes on a closed connection with `WriteZero`.
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
        | WriteZero => Error::ConnectionClosed { peer },
        kind => Error::Io {
            peer,
            kind,
            message: e.to_string(),
        },
    }
}
