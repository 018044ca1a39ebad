//! The client half of shared streams: one long-lived stream per peer and protocol carries many
//! requests, each frame tagged with an id, so a request costs no stream setup or protocol
//! negotiation and many requests share one write.
//!
//! The stream is negotiated under the protocol's name followed by [`SUFFIX`](super::SUFFIX). A peer that
//! does not serve that name (another implementation speaking only the one-stream-per-request
//! form in `docs/wire.md`) is remembered and reached with a stream per request instead.
//! Each peer and protocol gets two shared streams: one for frames up to [`MAX_SMALL_FRAME`],
//! one for larger bodies, so a large body does not hold up small ones, and its stream keeps
//! the flow-control window yamux has grown.

use std::{
    io,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use foldhash::{HashMap, HashSet};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, future};
use libp2p::{PeerId, StreamProtocol};
use p2plane_codec::{FrameBuf, FrameError, SharedFrame, read_shared_frame};
use p2plane_core::{CodecError, Error};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{BATCH, Outgoing, READ_BUFFER, answer_error, gather, map_stream_error};
use crate::streams;

/// Frames up to this size share the small-message stream; larger ones the bulk stream.
const MAX_SMALL_FRAME: usize = 64 * 1024;
/// Requests in flight on one shared stream; more wait for a slot.
const MAX_IN_FLIGHT: usize = 1024;
/// The most (peer, protocol) pairs remembered as without shared streams.
const MAX_NO_SHARED: usize = 10_000;

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, Error>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request queued for a shared stream: the caller's frame, shared rather than copied (the
/// caller keeps it to send again on a new stream, or on a stream of its own), and its id,
/// written in a head of its own before the payload.
struct Queued {
    id: u64,
    frame: Arc<FrameBuf>,
}

impl Outgoing for Queued {
    fn put(&self, batch: &mut Vec<u8>) {
        batch.extend_from_slice(self.frame.head_with_id(self.id).as_bytes());
        batch.extend_from_slice(self.frame.payload());
    }
}

/// Where a call goes, and the limits of the stream that carries it.
pub(crate) struct Route<'a> {
    pub(crate) control: &'a streams::Control,
    pub(crate) peer: PeerId,
    pub(crate) protocol: &'a StreamProtocol,
    /// The largest response accepted.
    pub(crate) limit: usize,
    /// A stream with nothing in flight for this long is closed.
    pub(crate) idle: Duration,
}

/// What a drive task needs of its stream: a [`Route`] it owns.
struct Link {
    control: streams::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    limit: usize,
    idle: Duration,
}

/// One shared stream to a peer for a protocol, driven by a task of its own.
struct Channel {
    frames: mpsc::Sender<Queued>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    slots: Semaphore,
    /// Why the stream ended, once it has (`None`: idle, nothing in flight). Callers that come
    /// too late to be told by the drive task read it here: the refusal of a peer without
    /// the shared form can end the stream before the first caller's frame is queued.
    ended: Arc<Ended>,
}

type Ended = OnceLock<Option<Error>>;

impl Channel {
    fn alive(&self) -> bool {
        self.ended.get().is_none()
    }

    fn idled_out(&self) -> bool {
        matches!(self.ended.get(), Some(None))
    }

    /// The error for a caller of a stream that has ended.
    fn ended(&self, peer: PeerId) -> Error {
        match self.ended.get() {
            Some(Some(error)) => error.clone(),
            _ => Error::ConnectionClosed { peer },
        }
    }
}

/// The node's shared streams.
#[derive(Default)]
pub(crate) struct SharedStreams {
    channels: Mutex<HashMap<(PeerId, StreamProtocol, bool), Arc<Channel>>>,
    no_shared: Mutex<HashSet<(PeerId, StreamProtocol)>>,
}

impl SharedStreams {
    pub(crate) fn speaks_shared(&self, peer: PeerId, protocol: &StreamProtocol) -> bool {
        !lock(&self.no_shared).contains(&(peer, protocol.clone()))
    }

    pub(crate) fn mark_no_shared(&self, peer: PeerId, protocol: StreamProtocol) {
        let mut set = lock(&self.no_shared);
        if set.len() >= MAX_NO_SHARED {
            set.clear();
        }
        set.insert((peer, protocol));
    }

    /// Forgets the shared streams to `peer`: its last connection closed, so they are gone
    /// with it, and the next call opens a stream on a new connection instead of finding a
    /// dead one. Their drive tasks end on their own, failing what was in flight.
    pub(crate) fn forget(&self, peer: &PeerId) {
        lock(&self.channels).retain(|(p, _, _), _| p != peer);
    }

    fn channel(&self, route: &Route<'_>, frame_len: usize) -> Arc<Channel> {
        let mut channels = lock(&self.channels);
        let key = (
            route.peer,
            route.protocol.clone(),
            frame_len > MAX_SMALL_FRAME,
        );
        if let Some(channel) = channels.get(&key).filter(|c| c.alive()) {
            return Arc::clone(channel);
        }
        channels.retain(|_, c| c.alive());
        let (frames, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let channel = Arc::new(Channel {
            frames,
            pending: Arc::default(),
            next_id: AtomicU64::new(0),
            slots: Semaphore::new(MAX_IN_FLIGHT),
            ended: Arc::default(),
        });
        let link = Link {
            control: route.control.clone(),
            peer: route.peer,
            protocol: route.protocol.clone(),
            limit: route.limit,
            idle: route.idle,
        };
        tokio::spawn(drive(
            link,
            rx,
            Arc::clone(&channel.pending),
            Arc::clone(&channel.ended),
        ));
        channels.insert(key, Arc::clone(&channel));
        channel
    }

    /// Sends `request` on the shared stream to the route's peer and returns the response
    /// payload.
    ///
    /// A stream that ended without reading this call's request (idle on our side as the
    /// call took it, or closed cleanly by the server: a server closes only between requests,
    /// having answered every one it read) is no failure: the call goes on a new stream,
    /// once. A server that closes that one too (it is at its limit of shared streams)
    /// leaves the call [`Error::Busy`]: it did not act on the request.
    pub(crate) async fn call(
        &self,
        route: &Route<'_>,
        request: &Arc<FrameBuf>,
    ) -> Result<Vec<u8>, Error> {
        let peer = route.peer;
        for _ in 0..2 {
            // Small and large frames use separate shared streams, so a large body never
            // holds up small ones.
            let channel = self.channel(route, request.len());
            let _slot = channel
                .slots
                .acquire()
                .await
                .map_err(|_| channel.ended(peer))?;
            let id = channel.next_id.fetch_add(1, Ordering::Relaxed);
            let span = tracing::Span::current();
            if !span.is_disabled() {
                span.record("id", id);
            }
            let frame = Queued {
                id,
                frame: Arc::clone(request),
            };
            let (tx, rx) = oneshot::channel();
            {
                // The drive task decides to idle out under this lock, so a call either is
                // in flight before it decides (and the stream stays) or sees it here.
                let mut pending = lock(&channel.pending);
                if channel.idled_out() {
                    continue;
                }
                pending.insert(id, tx);
            }
            // Forget the id if the caller gives up (timeout, cancellation).
            let _forget = Forget {
                pending: &channel.pending,
                id,
            };
            if channel.frames.send(frame).await.is_err() {
                if channel.idled_out() {
                    continue;
                }
                return Err(channel.ended(peer));
            }
            match rx.await {
                Ok(outcome) => return outcome,
                // Dropped unanswered by a stream that ended without reading it: go round.
                Err(_) if channel.idled_out() => {}
                Err(_) => return Err(channel.ended(peer)),
            }
        }
        Err(Error::Busy { peer })
    }
}

struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

/// Reads response frames and hands each to the caller waiting for its id, until the stream
/// fails, or ends cleanly between frames (`Ok`: the server closed it).
async fn read_responses<R: futures::AsyncRead + Unpin>(
    reader: &mut R,
    pending: &Pending,
    peer: PeerId,
    limit: usize,
    stream_error: impl Fn(io::Error) -> Error,
) -> Result<(), Error> {
    loop {
        let frame = match read_shared_frame(reader, limit).await {
            Ok(frame) => frame,
            Err(FrameError::Codec(CodecError::Truncated {
                expected: 0,
                got: 0,
            })) => return Ok(()),
            Err(e) => return Err(answer_error(e, peer, &stream_error)),
        };
        let (id, outcome) = match frame {
            SharedFrame::Frame { id, body } => (id, Ok(body)),
            SharedFrame::TooLarge { id, len } => (
                id,
                Err(Error::TooLarge {
                    limit,
                    len,
                    response: true,
                }),
            ),
        };
        if let Some(tx) = lock(pending).remove(&id) {
            let _ = tx.send(outcome);
        }
    }
}

/// Writes every frame queued in `frames` (many per write when they pile up), and reads the
/// responses, handing each to its caller. Ends when the stream fails, when it has been
/// idle for `idle` with nothing in flight, or when the server closes it; every caller still
/// waiting gets the error, or, when the server closed the stream cleanly (so it read none
/// of their requests), is told to go on a new stream.
async fn drive(
    link: Link,
    mut frames: mpsc::Receiver<Queued>,
    pending: Arc<Pending>,
    ended: Arc<Ended>,
) {
    let Link {
        control,
        peer,
        protocol,
        limit,
        idle,
    } = link;
    let outcome: Result<Option<Closed>, Error> = async {
        let stream = control
            .open(peer, protocol.clone())
            .await
            .map_err(|e| crate::rpc::map_open_error(e, peer, &protocol))?;
        let (reader, mut writer) = stream.split();
        let mut reader = futures::io::BufReader::with_capacity(READ_BUFFER, reader);
        let stream_error = |e: io::Error| map_stream_error(e, peer, &protocol);
        // The writer's errors stay raw until the end is known (see `server_closed`).
        let write = async {
            let mut batch = Vec::with_capacity(BATCH);
            let mut held = Vec::new();
            loop {
                let first = match tokio::time::timeout(idle, frames.recv()).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return Ok(()),
                    Err(_) => {
                        let pending = lock(&pending);
                        if pending.is_empty() {
                            let _ = ended.set(None);
                            return Ok(());
                        }
                        continue;
                    }
                };
                if first.frame.payload().len() >= BATCH {
                    // A large body goes out as it is, without a copy into the batch.
                    let head = first.frame.head_with_id(first.id);
                    writer.write_all(head.as_bytes()).await?;
                    writer.write_all(first.frame.payload()).await?;
                    writer.flush().await?;
                    continue;
                }
                gather(&mut batch, first, &mut frames, &mut held);
                held.clear();
                writer.write_all(&batch).await?;
                writer.flush().await?;
            }
        };
        let read = read_responses(&mut reader, &pending, peer, limit, stream_error);
        // `Ok(None)`: we idled out; `Ok(Some(write error))`: the stream read to a clean end,
        // after a failed write if there is one.
        let end: Result<Option<Option<io::Error>>, Error> = {
            futures::pin_mut!(write, read);
            match future::select(write, read).await {
                future::Either::Left((Ok(()), _)) => Ok(None),
                // A refused protocol can reach the writer as a reset before the reader has
                // seen the refusal; the reader knows the precise cause.
                future::Either::Left((Err(write_error), read)) => {
                    match tokio::time::timeout(Duration::from_secs(1), read).await {
                        Ok(Err(e @ Error::UnsupportedProtocol { .. })) => Err(e),
                        Ok(Ok(())) => Ok(Some(Some(write_error))),
                        _ => Err(stream_error(write_error)),
                    }
                }
                future::Either::Right((result, _)) => result.map(|()| Some(None)),
            }
        };
        match end {
            Ok(None) => Ok(None),
            Err(e) => Err(e),
            Ok(Some(_)) if lock(&pending).is_empty() => Ok(Some(Closed)),
            Ok(Some(write_error)) => {
                if server_closed(&mut writer, write_error).await {
                    Ok(Some(Closed))
                } else {
                    Err(Error::ConnectionClosed { peer })
                }
            }
        }
    }
    .await;
    // Before the queue closes: a caller that finds it closed reads why here. A clean close
    // by the server reads like our own idle end: callers go on a new stream.
    let _ = ended.set(outcome.as_ref().err().cloned());
    frames.close();
    let mut pending = lock(&pending);
    match outcome {
        // Dropping the senders tells each waiting caller to go on a new stream.
        Ok(Some(Closed)) => pending.clear(),
        Ok(None) => {
            for (_, tx) in pending.drain() {
                let _ = tx.send(Err(Error::ConnectionClosed { peer }));
            }
        }
        Err(error) => {
            for (_, tx) in pending.drain() {
                let _ = tx.send(Err(error.clone()));
            }
        }
    }
}

/// The server closed a shared stream cleanly, between frames.
struct Closed;

/// Whether a stream that read to a clean end with calls in flight was closed by the server
/// (which closes only between frames, having answered every request it read: the calls
/// may go on a new stream) rather than cut under them (the server may have read them).
///
/// The read alone cannot tell: over yamux (TCP, WebSocket, the memory transport), a stream
/// reset by the peer and every stream of a connection that is gone (a relay ending a
/// circuit, a peer killed) read to a clean end like a stream the server closed. The write
/// side tells them apart: after the server's close, writing still works, while a reset
/// or lost stream refuses it. Over QUIC a server's close stops our sending side
/// (`ConnectionReset`), and a lost connection fails the read itself, so it never comes here.
async fn server_closed<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    write_error: Option<io::Error>,
) -> bool {
    let probe = match write_error {
        Some(e) => Err(e),
        None => writer.write(&[]).await.map(drop),
    };
    match probe {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    }
}
