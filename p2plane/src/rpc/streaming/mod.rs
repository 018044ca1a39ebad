//! Streaming calls: protocols ([`Streaming`]) whose handler answers with a stream of items,
//! and whose caller may stream uploads to it.
//!
//! One call is one libp2p stream. Both directions carry frames (`StreamFrame`, see
//! `docs/wire.md`), and each direction is flow controlled by credit: a side sends an item only
//! while the other has granted it room (items and bytes), and grants more as its consumer
//! takes items. So a consumer that stops reading stops the producer, and what either side
//! holds for one stream is bounded by its window ([`StreamConfig`]), whatever the transport
//! buffers.
//!
//! - [`client`]: [`StreamClient`](client::StreamClient), the caller's tower service, and the
//!   [`ItemStream`](client::ItemStream) it returns.
//! - [`server`]: the accept loop and the task that serves one stream.
//! - here: the window's bookkeeping on both sides, the reader task both sides run, and the
//!   frame batching both writers use.

pub(crate) mod client;
pub(crate) mod server;

use std::{
    marker::PhantomData,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{AsyncRead, AsyncWriteExt as _, Stream, StreamExt as _, io::BufReader};
use libp2p::StreamProtocol;
use p2plane_codec::{CborCodec, FrameError, StreamFrame, read_frame};
use p2plane_core::{Codec as _, CodecError, Error, PeerId, Request, Streaming};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Notify, mpsc};

/// Settings of streaming calls, both as caller and as server ([`NodeConfig::streams`](crate::NodeConfig::streams)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Items a receiver holds for one stream before the sender must wait (its window in
    /// items). The receiver grants more as its consumer takes items. Default 256.
    pub window_items: u32,
    /// Payload bytes a receiver holds for one stream before the sender must wait. One item
    /// may go over (an item is sent while any byte of room is left), so the most held is
    /// this plus one item of up to `max_message_size`. Default 1 MiB.
    pub window_bytes: u32,
    /// Streams one peer may have open to this node, per protocol; beyond it a call is
    /// answered `Busy`. Default 32.
    pub max_per_peer: usize,
    /// Streams open to this node in all, per protocol; beyond it a call is answered `Busy`.
    /// Default 1024.
    pub max_inbound: usize,
    /// Streams this node may have open as caller at once (all protocols); a call waits for
    /// a place. Default 1024.
    pub max_outbound: usize,
    /// A served stream on which nothing moves for this long (the caller grants no room, sends
    /// nothing) is closed, so a caller that stalls cannot hold a place forever. Default 60 s.
    pub idle_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            window_items: 256,
            window_bytes: 1 << 20,
            max_per_peer: 32,
            max_inbound: 1024,
            max_outbound: 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl StreamConfig {
    /// The window both sides use, clamped to what the wire carries and to at least one item
    /// and one byte.
    fn window(&self) -> (u32, u32) {
        (self.window_items.max(1), self.window_bytes.max(1))
    }
}

/// The streams a node serves, counted, so that shutdown can let them write their last frame
/// (`Shutdown`) before the connections close.
#[derive(Default)]
pub(crate) struct Served {
    open: std::sync::atomic::AtomicUsize,
    none_left: Notify,
}

impl Served {
    /// Counts one served stream until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> ServedGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ServedGuard(Arc::clone(self))
    }

    /// Waits until no served stream is left.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.none_left.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One served stream, counted in [`Served`].
pub(crate) struct ServedGuard(Arc<Served>);

impl Drop for ServedGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// The libp2p name of streaming protocol `Q`, checked when the program is compiled.
pub(crate) fn streaming_protocol<Q: Streaming>() -> StreamProtocol {
    struct Check<Q>(PhantomData<Q>);
    impl<Q: Streaming> Check<Q> {
        const VALID: () = assert!(
            p2plane_core::is_valid_protocol_name(Q::NAME),
            "a protocol name must start with '/'"
        );
    }
    let () = Check::<Q>::VALID;
    StreamProtocol::new(Q::NAME)
}

/// The longest a stream's frame may be: an item of `max_message_size` plus its wrapping.
fn frame_limit(codec: &CborCodec) -> usize {
    codec.max_message_size().saturating_add(16)
}

/// The room the remote has granted this side (the sending half of flow control).
#[derive(Default)]
pub(crate) struct SendCredit {
    items: AtomicI64,
    bytes: AtomicI64,
    more: Notify,
}

impl SendCredit {
    fn grant(&self, items: u32, bytes: u32) {
        self.items.fetch_add(i64::from(items), Ordering::AcqRel);
        self.bytes.fetch_add(i64::from(bytes), Ordering::AcqRel);
        self.more.notify_one();
    }

    fn available(&self) -> bool {
        self.items.load(Ordering::Acquire) > 0 && self.bytes.load(Ordering::Acquire) > 0
    }

    /// Waits until an item may be sent. Only the writer waits.
    async fn wait(&self) {
        while !self.available() {
            self.more.notified().await;
        }
    }

    fn spend(&self, len: usize) {
        self.items.fetch_sub(1, Ordering::AcqRel);
        self.bytes
            .fetch_sub(i64::try_from(len).unwrap_or(i64::MAX), Ordering::AcqRel);
    }
}

/// The receiving half of flow control: what the consumer has taken since the last grant,
/// for the writer to grant back; and what is held now, to catch a sender over its window.
pub(crate) struct Window {
    items: u32,
    bytes: u32,
    taken_items: AtomicU64,
    taken_bytes: AtomicU64,
    held_items: AtomicU64,
    held_bytes: AtomicU64,
    /// Items taken since the stream began.
    total_taken: AtomicU64,
    /// Wakes the writer when enough was taken to be worth a grant.
    due: Notify,
}

impl Window {
    fn new((items, bytes): (u32, u32)) -> Self {
        Self {
            items,
            bytes,
            taken_items: AtomicU64::new(0),
            taken_bytes: AtomicU64::new(0),
            held_items: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            total_taken: AtomicU64::new(0),
            due: Notify::new(),
        }
    }

    /// The consumer took an item of `len` payload bytes.
    fn taken(&self, len: u32) {
        self.held_items.fetch_sub(1, Ordering::AcqRel);
        self.held_bytes.fetch_sub(u64::from(len), Ordering::AcqRel);
        self.total_taken.fetch_add(1, Ordering::Relaxed);
        let items = self.taken_items.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = self.taken_bytes.fetch_add(u64::from(len), Ordering::AcqRel) + u64::from(len);
        // Grant in halves of the window: one frame per half, and the sender never runs dry
        // while the consumer keeps up.
        if items >= u64::from(self.items.div_ceil(2)) || bytes >= u64::from(self.bytes.div_ceil(2))
        {
            self.due.notify_one();
        }
    }

    /// The grant to send now, if the consumer took anything since the last one.
    fn grant(&self) -> Option<(u32, u32)> {
        let items = self.taken_items.swap(0, Ordering::AcqRel);
        let bytes = self.taken_bytes.swap(0, Ordering::AcqRel);
        (items > 0 || bytes > 0).then(|| {
            (
                u32::try_from(items).unwrap_or(u32::MAX),
                u32::try_from(bytes).unwrap_or(u32::MAX),
            )
        })
    }

    /// Whether a grant is due (enough taken), without taking it.
    fn grant_due(&self) -> bool {
        self.taken_items.load(Ordering::Acquire) >= u64::from(self.items.div_ceil(2))
            || self.taken_bytes.load(Ordering::Acquire) >= u64::from(self.bytes.div_ceil(2))
    }

    /// Items taken since the stream began.
    fn total_taken(&self) -> u64 {
        self.total_taken.load(Ordering::Relaxed)
    }

    /// An item of `len` bytes arrived: refused when the sender had no room left for it (it
    /// may send while any byte of room is left, so the item itself may go over).
    fn arrived(&self, len: u32) -> bool {
        let items = self.held_items.fetch_add(1, Ordering::AcqRel);
        let bytes = self.held_bytes.fetch_add(u64::from(len), Ordering::AcqRel);
        items < u64::from(self.items) && bytes < u64::from(self.bytes)
    }
}

/// A protocol's check of one item ([`Streaming::validate_item`] or
/// [`Streaming::validate_upload`]).
pub(crate) type Check<T> = fn(&T) -> Result<(), String>;

/// What the reader task hands to the consumer: items with their payload lengths, or the error
/// that ended the stream. A clean end closes the channel.
type Arrival<T> = Result<Vec<(T, u32)>, Error>;

/// Signals from one stream's reader to its writer.
#[derive(Default)]
pub(crate) struct Ends {
    /// The remote sent its `End` (or an error frame): no more items come, so no more grants
    /// are needed.
    items_over: AtomicBool,
    /// The call is over for the writer: on the caller's side, the handler ended it (`End`,
    /// an error frame) or went away; on the handler's side, the caller went away (end of
    /// stream or reset before the handler's `End`, which is how a caller cancels) or broke
    /// the protocol.
    call_over: AtomicBool,
    changed: Notify,
}

impl Ends {
    fn set_items_over(&self) {
        self.items_over.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn set_call_over(&self) {
        self.call_over.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn items_over(&self) -> bool {
        self.items_over.load(Ordering::Acquire)
    }

    pub(crate) fn call_over(&self) -> bool {
        self.call_over.load(Ordering::Acquire)
    }
}

/// Everything one side's reader needs.
pub(crate) struct Reader<R> {
    pub(crate) io: BufReader<R>,
    pub(crate) codec: CborCodec,
    pub(crate) peer: PeerId,
    /// Room the remote grants us, fed by its `Credit` frames.
    pub(crate) credit: Arc<SendCredit>,
    /// Our window, checked on every item.
    pub(crate) window: Arc<Window>,
    pub(crate) ends: Arc<Ends>,
    /// Whether the remote is the handler (it may send error frames) or the caller.
    pub(crate) remote_is_handler: bool,
    /// The stream's connection closing ends the reader (a pending yamux read is not woken
    /// when this side closes the connection).
    pub(crate) gone: crate::streams::ConnectionGone,
    /// The protocol, to name in a negotiation failure.
    pub(crate) protocol: StreamProtocol,
}

/// What to do after a frame.
enum Next {
    Read,
    Stop,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads the remote's frames: items go to `items` (whose capacity is the window in items
    /// plus one, for the error that may end them), `Credit`s to our send credit. Its `End`
    /// closes `items`; the reader goes on for the `Credit`s that may follow, until the
    /// stream ends.
    ///
    /// Frames that are whole in the read buffer are decoded straight out of it, and the items
    /// of one buffer go to the consumer as one batch: one channel message and one wake-up
    /// per read rather than per item.
    pub(crate) async fn run<T: DeserializeOwned>(mut self, items: mpsc::Sender<Arrival<T>>) {
        let limit = frame_limit(&self.codec);
        let mut items = Some(items);
        let gone = self.gone.clone().wait();
        tokio::pin!(gone);
        let mut batch = Vec::new();
        loop {
            // Every frame already in the buffer.
            loop {
                let buffered = self.io.buffer();
                let range = match p2plane_codec::buffered_frame(buffered, limit) {
                    Ok(Some(range)) => range,
                    Ok(None) => break,
                    Err(e) => {
                        self.send(&mut items, &mut batch);
                        return self.failed(items, FrameError::Codec(e));
                    }
                };
                let decoded = self
                    .codec
                    .decode::<StreamFrame<T>>(&buffered[range.clone()]);
                let len = u32::try_from(range.len()).unwrap_or(u32::MAX);
                futures::io::AsyncBufReadExt::consume_unpin(&mut self.io, range.end);
                if let Next::Stop = self.on_frame(decoded, len, &mut items, &mut batch) {
                    return;
                }
            }
            self.send(&mut items, &mut batch);
            // Then wait for more: a refill of an empty buffer, or the rest of a frame that
            // straddles the buffer's end.
            let more = tokio::select! {
                biased;
                more = async {
                    if self.io.buffer().is_empty() {
                        futures::io::AsyncBufReadExt::fill_buf(&mut self.io)
                            .await
                            .map_err(FrameError::Io)
                            .and_then(|filled| {
                                if filled.is_empty() {
                                    Err(FrameError::Codec(CodecError::Truncated { expected: 0, got: 0 }))
                                } else {
                                    Ok(None)
                                }
                            })
                    } else {
                        read_frame(&mut self.io, limit).await.map(Some)
                    }
                } => more,
                () = &mut gone => Err(FrameError::Io(std::io::ErrorKind::ConnectionAborted.into())),
            };
            match more {
                Ok(None) => {}
                Ok(Some(bytes)) => {
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    let decoded = self.codec.decode::<StreamFrame<T>>(&bytes);
                    if let Next::Stop = self.on_frame(decoded, len, &mut items, &mut batch) {
                        return;
                    }
                }
                Err(e) => {
                    self.send(&mut items, &mut batch);
                    return self.failed(items, e);
                }
            }
        }
    }

    /// Hands the items gathered so far to the consumer.
    fn send<T>(&self, items: &mut Option<mpsc::Sender<Arrival<T>>>, batch: &mut Vec<(T, u32)>) {
        if batch.is_empty() {
            return;
        }
        let Some(queue) = items else {
            batch.clear();
            return;
        };
        if queue.try_send(Ok(std::mem::take(batch))).is_err() {
            // The consumer is gone, and the stream with it. (The queue has room for every
            // batch: each holds an item, and no more items than the window are held.)
            self.ends.set_call_over();
            *items = None;
        }
    }

    /// The stream failed: the end of the stream, a reset or a lost connection, or a frame
    /// that could not be read.
    fn failed<T>(&self, items: Option<mpsc::Sender<Arrival<T>>>, e: FrameError) {
        self.ends.set_call_over();
        let Some(items) = items else {
            return;
        };
        let error = match e {
            FrameError::Codec(CodecError::TooLarge { limit, len }) => Error::TooLarge {
                limit,
                len,
                response: self.remote_is_handler,
            },
            FrameError::Codec(CodecError::Truncated { .. }) => {
                Error::ConnectionClosed { peer: self.peer }
            }
            FrameError::Io(e) => crate::rpc::map_stream_error(e, self.peer, &self.protocol),
            other => Error::Protocol {
                peer: self.peer,
                reason: other.to_string(),
            },
        };
        let _ = items.try_send(Err(error));
    }

    fn on_frame<T>(
        &self,
        frame: Result<StreamFrame<T>, CodecError>,
        len: u32,
        items: &mut Option<mpsc::Sender<Arrival<T>>>,
        batch: &mut Vec<(T, u32)>,
    ) -> Next {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return self.violation(items, batch, format!("malformed frame: {e}")),
        };
        match frame {
            StreamFrame::Credit(n, bytes) => self.credit.grant(n, bytes),
            StreamFrame::Item(item) => {
                if items.is_none() {
                    return self.violation(items, batch, "an item after the end".to_owned());
                }
                if !self.window.arrived(len) {
                    return self.violation(
                        items,
                        batch,
                        "an item beyond the granted room".to_owned(),
                    );
                }
                batch.push((item, len));
            }
            StreamFrame::End => {
                if items.is_none() {
                    return self.violation(items, batch, "a second end".to_owned());
                }
                self.send(items, batch);
                *items = None;
                self.ends.set_items_over();
                if self.remote_is_handler {
                    self.ends.set_call_over();
                }
            }
            other if self.remote_is_handler => {
                let error = match other {
                    StreamFrame::Busy => Error::Busy { peer: self.peer },
                    StreamFrame::Rejected(reason) => Error::Rejected {
                        peer: Some(self.peer),
                        reason,
                    },
                    StreamFrame::Failed(message) => Error::Failed {
                        peer: self.peer,
                        message,
                    },
                    _ => Error::RemoteShutdown { peer: self.peer },
                };
                self.send(items, batch);
                self.ends.set_items_over();
                self.ends.set_call_over();
                if let Some(items) = items.take() {
                    let _ = items.try_send(Err(error));
                }
                return Next::Stop;
            }
            _ => return self.violation(items, batch, "an error frame from the caller".to_owned()),
        }
        Next::Read
    }

    fn violation<T>(
        &self,
        items: &mut Option<mpsc::Sender<Arrival<T>>>,
        batch: &mut Vec<(T, u32)>,
        reason: String,
    ) -> Next {
        tracing::debug!(peer = %self.peer, %reason, "stream protocol violation");
        self.send(items, batch);
        self.ends.set_call_over();
        let error = if self.remote_is_handler {
            Error::Protocol {
                peer: self.peer,
                reason,
            }
        } else {
            Error::Rejected {
                peer: Some(self.peer),
                reason,
            }
        };
        if let Some(items) = items.take() {
            let _ = items.try_send(Err(error));
        }
        Next::Stop
    }
}

/// The consumer's end of one direction: items in arrival order, each granted back once taken.
pub(crate) struct Inbox<T> {
    items: mpsc::Receiver<Arrival<T>>,
    /// The rest of the batch being taken.
    current: std::vec::IntoIter<(T, u32)>,
    window: Arc<Window>,
    validate: Option<Check<T>>,
    /// The error a refused item ends the stream with.
    refused: fn(PeerId, String) -> Error,
    peer: PeerId,
    done: bool,
}

impl<T> Inbox<T> {
    pub(crate) fn new(
        items: mpsc::Receiver<Arrival<T>>,
        window: Arc<Window>,
        validate: Option<Check<T>>,
        refused: fn(PeerId, String) -> Error,
        peer: PeerId,
    ) -> Self {
        Self {
            items,
            current: Vec::new().into_iter(),
            window,
            validate,
            refused,
            peer,
            done: false,
        }
    }

    fn poll_item(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<T, Error>>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let (item, len) = loop {
            if let Some(next) = self.current.next() {
                break next;
            }
            match self.items.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(batch))) => self.current = batch.into_iter(),
            }
        };
        self.window.taken(len);
        if let Some(check) = self.validate
            && let Err(reason) = check(&item)
        {
            self.done = true;
            return Poll::Ready(Some(Err((self.refused)(self.peer, reason))));
        }
        Poll::Ready(Some(Ok(item)))
    }
}

/// A stream's writer: frames gathered into batches of up to [`BATCH`](crate::rpc::BATCH)
/// bytes, each batch one write.
pub(crate) struct Writer<W> {
    pub(crate) io: W,
    codec: CborCodec,
    /// Frames to write, from `start` on.
    batch: Vec<u8>,
    start: usize,
    /// Where a frame is encoded, after [`HEAD`] bytes kept for its length prefix.
    scratch: Vec<u8>,
}

/// Room for a frame's length prefix before its payload.
const HEAD: usize = p2plane_codec::MAX_VARINT_LEN;

impl<W: futures::AsyncWrite + Unpin> Writer<W> {
    pub(crate) fn new(io: W, codec: CborCodec) -> Self {
        Self {
            io,
            codec,
            batch: Vec::with_capacity(crate::rpc::BATCH),
            start: 0,
            scratch: Vec::new(),
        }
    }

    /// Adds a frame to the batch; returns the payload's length. An item over the size limit
    /// is not added. A large frame that finds the batch empty becomes the batch, uncopied.
    fn put<T: Serialize>(&mut self, frame: &StreamFrame<&T>) -> Result<usize, CodecError> {
        self.scratch.clear();
        self.scratch.resize(HEAD, 0);
        self.codec.encode(frame, &mut self.scratch)?;
        let len = self.scratch.len() - HEAD;
        let (prefix, n) = varint(len as u64);
        let first = HEAD - n;
        self.scratch[first..HEAD].copy_from_slice(&prefix[..n]);
        if self.batch.is_empty() && len >= crate::rpc::READ_BUFFER {
            std::mem::swap(&mut self.batch, &mut self.scratch);
            self.start = first;
        } else {
            self.batch.extend_from_slice(&self.scratch[first..]);
        }
        Ok(len)
    }

    /// Adds a frame whose payload is a raw encoded value (the request).
    fn put_raw(&mut self, payload: &[u8]) {
        let (prefix, n) = varint(payload.len() as u64);
        self.batch.extend_from_slice(&prefix[..n]);
        self.batch.extend_from_slice(payload);
    }

    fn put_control(&mut self, frame: StreamFrame<&()>) {
        // Control frames are a few bytes: they always encode.
        let _ = self.put(&frame);
    }

    fn full(&self) -> bool {
        self.batch.len() - self.start >= crate::rpc::BATCH
    }

    /// Writes the batch.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.len() > self.start {
            self.io.write_all(&self.batch[self.start..]).await?;
        }
        self.batch.clear();
        self.start = 0;
        if self.batch.capacity() > 4 * crate::rpc::BATCH {
            self.batch.shrink_to(crate::rpc::BATCH);
        }
        Ok(())
    }
}

/// `n` as an unsigned varint: its bytes, and how many there are.
fn varint(mut n: u64) -> ([u8; HEAD], usize) {
    let mut out = [0u8; HEAD];
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    (out, i + 1)
}

/// Why a writer's loop over its items stopped.
pub(crate) enum Sent {
    /// The items ended cleanly.
    End,
    /// An item was an error.
    Failed(Error),
    /// An item could not be encoded (over the size limit).
    TooLarge(CodecError),
    /// The remote went away, or the stream could not be written.
    Gone,
    /// Nothing moved for the idle limit (server side only).
    Idle,
    /// The node is shutting down.
    Shutdown,
}

/// Sends `items` as credit allows, with grants of our own window in between, until the items
/// end or the stream fails. Between batches, a source that is not ready makes the batch go
/// out; so do [`BATCH`](crate::rpc::BATCH) bytes.
pub(crate) async fn send_items<W, T, S>(
    writer: &mut Writer<W>,
    items: &mut S,
    credit: &SendCredit,
    window: &Window,
    ends: &Ends,
    idle: Option<Duration>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Sent
where
    W: futures::AsyncWrite + Unpin,
    T: Serialize,
    S: Stream<Item = Result<T, Error>> + Unpin,
{
    loop {
        // Gather what is ready without waiting.
        loop {
            if window.grant_due()
                && let Some((n, bytes)) = window.grant()
            {
                writer.put_control(StreamFrame::Credit(n, bytes));
            }
            if ends.call_over() {
                return Sent::Gone;
            }
            if writer.full() || !credit.available() {
                break;
            }
            match futures::FutureExt::now_or_never(items.next()) {
                Some(Some(Ok(item))) => match writer.put(&StreamFrame::Item(&item)) {
                    Ok(len) => credit.spend(len),
                    Err(e) => return Sent::TooLarge(e),
                },
                Some(Some(Err(e))) => return Sent::Failed(e),
                Some(None) => return Sent::End,
                None => break,
            }
        }
        if writer.flush().await.is_err() {
            return Sent::Gone;
        }
        // Wait for something to do: an item (when there is room for it), a grant to send, the
        // remote leaving, shutdown.
        let wait = async {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|down| *down) => Some(Sent::Shutdown),
                // No preconditions on these two: a flag set between the checks above and
                // this select would disable its branch and lose its one wake-up (a caller's
                // cancellation was missed that way). A stale wake-up only loops once more.
                _ = ends.changed.notified() => None,
                _ = window.due.notified() => None,
                _ = credit.wait(), if !credit.available() => None,
                next = items.next(), if credit.available() => Some(match next {
                    Some(Ok(item)) => match writer.put(&StreamFrame::Item(&item)) {
                        Ok(len) => {
                            credit.spend(len);
                            return None;
                        }
                        Err(e) => Sent::TooLarge(e),
                    },
                    Some(Err(e)) => Sent::Failed(e),
                    None => Sent::End,
                }),
            }
        };
        let woke = match idle {
            Some(idle) => match tokio::time::timeout(idle, wait).await {
                Ok(woke) => woke,
                Err(_) => Some(Sent::Idle),
            },
            None => wait.await,
        };
        if let Some(stop) = woke {
            return stop;
        }
    }
}

/// Sends grants of our window until the remote's side is over (or gone).
pub(crate) async fn send_grants<W: futures::AsyncWrite + Unpin>(
    writer: &mut Writer<W>,
    window: &Window,
    ends: &Ends,
) {
    loop {
        if window.grant_due()
            && let Some((n, bytes)) = window.grant()
        {
            writer.put_control(StreamFrame::Credit(n, bytes));
        }
        // What the caller left in the batch (its `End`) goes out too.
        if writer.flush().await.is_err() {
            return;
        }
        if ends.items_over() || ends.call_over() {
            return;
        }
        tokio::select! {
            _ = ends.changed.notified() => {}
            _ = window.due.notified() => {}
        }
    }
}

/// An upload stream handed to a handler, or given to a call: see [`Uploads`].
pub type UploadStream<U> = Pin<Box<dyn Stream<Item = Result<U, Error>> + Send>>;

/// The uploads of a streaming call: the items the caller streams to the handler after its
/// request.
///
/// A caller attaches them to its request (or uses
/// [`StreamClient::open`](crate::StreamClient::open)); a handler takes them out of its
/// request with [`Uploads::take`]. They travel in the request's
/// [extensions](p2plane_core::Request::extensions), so requests with uploads pass through
/// the same tower layers as any other; clones of the request share the one stream, which is
/// read once (a retry after the handler accepted the call has no uploads left to send and
/// fails).
///
/// ```
/// use futures::stream;
/// use p2plane::{PeerId, Request, Uploads, Streaming};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)] struct Chunk(Vec<u8>);
/// # struct Store;
/// # impl Streaming for Store {
/// #     const NAME: &'static str = "/store/1";
/// #     type Request = String; type Upload = Chunk; type Item = u64;
/// # }
/// let mut request = Request::for_stream::<Store>(PeerId::random(), "file.bin".to_owned());
/// request
///     .extensions_mut()
///     .insert(Uploads::new(stream::iter([Chunk(vec![1, 2]), Chunk(vec![3])])));
/// ```
pub struct Uploads<U> {
    stream: Arc<Mutex<Option<UploadStream<U>>>>,
    /// The protocol's check of each upload, run when a validation layer passed the request.
    validate: Option<Check<U>>,
}

impl<U> Clone for Uploads<U> {
    fn clone(&self) -> Self {
        Self {
            stream: Arc::clone(&self.stream),
            validate: self.validate,
        }
    }
}

impl<U> std::fmt::Debug for Uploads<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").finish_non_exhaustive()
    }
}

impl<U: Send + 'static> Uploads<U> {
    /// Uploads taken from `stream`, to attach to a request.
    pub fn new(stream: impl Stream<Item = U> + Send + 'static) -> Self {
        Self::from_results(stream.map(Ok))
    }

    fn from_results(stream: impl Stream<Item = Result<U, Error>> + Send + 'static) -> Self {
        Self {
            stream: Arc::new(Mutex::new(Some(Box::pin(stream)))),
            validate: None,
        }
    }

    /// Takes the uploads out of `request`: on the handler's side, the caller's uploads, which
    /// end cleanly when the caller is done, or with the error that cut them short. A request
    /// without uploads (or whose uploads were taken already) gives an empty stream.
    ///
    /// When a [`ValidateLayer`](crate::ValidateLayer) passed the request, each upload is
    /// checked with the protocol's [`Streaming::validate_upload`]; one refused ends the stream
    /// with [`Error::Rejected`].
    pub fn take<T>(request: &mut Request<T>) -> UploadStream<U> {
        let Some(uploads) = request.extensions_mut().remove::<Uploads<U>>() else {
            return Box::pin(futures::stream::empty());
        };
        let validated = request
            .extensions()
            .get::<crate::layer::validate::ValidateItems>()
            .is_some();
        let peer = request.peer();
        let Some(stream) = uploads
            .stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Box::pin(futures::stream::empty());
        };
        match uploads.validate.filter(|_| validated) {
            Some(check) => Box::pin(validated_uploads(stream, check, peer)),
            None => stream,
        }
    }

    /// The stream, once: `None` when a clone of the request took it already.
    fn take_stream(&self) -> Option<UploadStream<U>> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Ends `stream` with [`Error::Rejected`] at the first upload `check` refuses.
fn validated_uploads<U: Send + 'static>(
    stream: UploadStream<U>,
    check: Check<U>,
    peer: PeerId,
) -> impl Stream<Item = Result<U, Error>> + Send {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match stream.next().await? {
            Ok(item) => match check(&item) {
                Ok(()) => Some((Ok(item), Some(stream))),
                Err(reason) => Some((
                    Err(Error::Rejected {
                        peer: Some(peer),
                        reason,
                    }),
                    None,
                )),
            },
            Err(e) => Some((Err(e), None)),
        }
    })
}
