//! The handler's side of a streaming call: one task accepts the protocol's streams, and
//! each stream is served by a task of its own (plus its reader), within the limits of
//! [`StreamConfig`].

use std::{sync::Arc, time::Duration};

use futures::{
    AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _, Stream, StreamExt as _, io::BufReader,
};
use libp2p::{PeerId, Stream as Libp2pStream};
use p2plane_codec::{CborCodec, StreamFrame, read_frame};
use p2plane_core::{Codec as _, Error, Request, Streaming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tower::{BoxError, ServiceExt as _};
use tower_service::Service;

use super::{
    Ends, Inbox, Reader, SendCredit, Sent, StreamConfig, Uploads, Window, Writer, send_items,
};
use crate::event::{Event, InboundError};

/// What the streams of one served protocol share.
pub(crate) struct StreamServer {
    pub(crate) codec: CborCodec,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Bounds the handler's call without progress, until it returns its stream.
    pub(crate) handler_timeout: Duration,
    /// The request must arrive within this once the stream is open.
    pub(crate) read_timeout: Duration,
    /// A refusal must be taken within this.
    pub(crate) write_timeout: Duration,
    pub(crate) config: StreamConfig,
    /// Streams open per peer.
    pub(crate) per_peer: Arc<crate::rpc::PeerSlots>,
    /// Streams open in all.
    pub(crate) total: Arc<Semaphore>,
    /// Small tasks that answer `Busy` to a stream over the limits.
    pub(crate) helpers: Arc<Semaphore>,
    /// The node's served streams, which shutdown waits for (briefly).
    pub(crate) served: Arc<super::Served>,
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl StreamServer {
    /// Counts a stream's outcome (`ok`, `failed`, `rejected`, `busy`, `cancelled`,
    /// `timeout`, `shutdown`).
    fn count(&self, protocol: &'static str, outcome: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.inbound(protocol, outcome);
        }
    }
}

/// What handlers of streaming protocol `Q` must be: services from the request to a stream of
/// items (or errors, the first of which ends the stream).
pub(crate) trait StreamHandler<Q: Streaming>:
    Service<
        Request<Q::Request>,
        Response = Self::Items,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The handler's stream.
    type Items: Stream<Item = Result<Q::Item, Self::ItemError>> + Send + 'static;
    /// Its items' error.
    type ItemError: Into<BoxError>;
}

impl<Q, H, S, E> StreamHandler<Q> for H
where
    Q: Streaming,
    H: Service<Request<Q::Request>, Response = S, Error: Into<BoxError>, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
    S: Stream<Item = Result<Q::Item, E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Items = S;
    type ItemError = E;
}

fn report(ctx: &StreamServer, peer: PeerId, protocol: &'static str, error: InboundError) {
    crate::rpc::server::report_inbound(&ctx.events, ctx.metrics.as_deref(), peer, protocol, error);
}

/// Accepts the protocol's streams until the node shuts down.
pub(crate) async fn run<Q: Streaming, H: StreamHandler<Q>>(
    ctx: Arc<StreamServer>,
    mut inbound: mpsc::Receiver<crate::streams::Inbound>,
    handler: H,
) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (peer, stream, gone) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => return,
            next = inbound.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let place = ctx
            .per_peer
            .take(peer)
            .and_then(|slot| Some((slot, Arc::clone(&ctx.total).try_acquire_owned().ok()?)));
        match place {
            Some(place) => {
                let (ctx, handler) = (Arc::clone(&ctx), handler.clone());
                let served = ctx.served.enter();
                tokio::spawn(async move {
                    serve::<Q, H>(ctx, peer, (stream, gone), handler, place).await;
                    drop(served);
                });
            }
            None => refuse::<Q>(&ctx, peer, stream),
        }
    }
}

/// A stream over the limits is answered `Busy` unread (its handler never runs), by a small
/// task of bounded number; beyond those it is dropped (reset).
fn refuse<Q: Streaming>(ctx: &Arc<StreamServer>, peer: PeerId, mut stream: Libp2pStream) {
    report(ctx, peer, Q::NAME, InboundError::Overloaded);
    let Ok(permit) = Arc::clone(&ctx.helpers).try_acquire_owned() else {
        return;
    };
    let (codec, timeout) = (ctx.codec, ctx.write_timeout);
    tokio::spawn(async move {
        let mut writer = Writer::new(&mut stream, codec);
        writer.put_control(StreamFrame::Busy);
        let _ = finish(&mut writer, timeout).await;
        drop(permit);
    });
}

/// The frame that ends a stream whose handler failed: rejections and load shedding raised
/// by middleware travel as themselves, every other error as `Failed`.
fn failure(error: BoxError) -> StreamFrame<&'static ()> {
    match error.downcast_ref::<Error>() {
        Some(Error::Rejected { reason, .. }) => StreamFrame::Rejected(reason.clone()),
        Some(Error::Busy { .. }) => StreamFrame::Busy,
        Some(Error::Timeout { .. }) => StreamFrame::Failed("the handler timed out".to_owned()),
        _ => StreamFrame::Failed(error.to_string()),
    }
}

async fn serve<Q: Streaming, H: StreamHandler<Q>>(
    ctx: Arc<StreamServer>,
    peer: PeerId,
    (stream, gone): (Libp2pStream, crate::streams::ConnectionGone),
    handler: H,
    _place: (crate::rpc::PeerSlot, OwnedSemaphorePermit),
) {
    let (read_half, write_half) = stream.split();
    let mut io = BufReader::with_capacity(crate::rpc::BATCH, read_half);
    let mut writer = Writer::new(write_half, ctx.codec);
    let request = match tokio::time::timeout(
        ctx.read_timeout,
        read_frame(&mut io, ctx.codec.max_message_size()),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return report(&ctx, peer, Q::NAME, super::super::server::frame_error(e)),
        Err(_) => return report(&ctx, peer, Q::NAME, InboundError::Timeout),
    };
    let body: Q::Request = match ctx.codec.decode(&request) {
        Ok(body) => body,
        Err(e) => {
            writer.put_control(StreamFrame::Rejected(e.to_string()));
            let _ = tokio::time::timeout(ctx.write_timeout, async {
                writer.flush().await?;
                writer.io.close().await
            })
            .await;
            return report(&ctx, peer, Q::NAME, InboundError::Decode(e));
        }
    };
    // The window for the caller's uploads, granted at once (the handler may read them
    // before it returns its stream).
    let config = &ctx.config;
    let (items, bytes) = config.window();
    let window = Arc::new(Window::new((items, bytes)));
    let credit = Arc::new(SendCredit::default());
    let ends = Arc::new(Ends::default());
    writer.put_control(StreamFrame::Credit(items, bytes));
    // Sent now, not with the first items: a handler that reads uploads before it returns
    // its stream would otherwise wait for uploads that wait for this.
    if tokio::time::timeout(ctx.write_timeout, writer.flush())
        .await
        .map_or(true, |written| written.is_err())
    {
        return report(&ctx, peer, Q::NAME, InboundError::WriteTimeout);
    }
    let (tx, rx) = mpsc::channel(items as usize + 1);
    let reading = tokio::spawn(
        Reader {
            io,
            codec: ctx.codec,
            peer,
            credit: Arc::clone(&credit),
            window: Arc::clone(&window),
            ends: Arc::clone(&ends),
            remote_is_handler: false,
            gone,
            protocol: super::streaming_protocol::<Q>(),
        }
        .run::<Q::Upload>(tx),
    );
    let _reading = AbortOnDrop(reading);
    let mut request = Request::for_stream::<Q>(peer, body);
    let mut uploads = Uploads::from_results(InboxStream(Inbox::new(
        rx,
        Arc::clone(&window),
        None,
        |peer, reason| Error::Rejected {
            peer: Some(peer),
            reason,
        },
        peer,
    )));
    uploads.validate = Some(Q::validate_upload);
    request.extensions_mut().insert(uploads);
    // Released when this function returns, however the stream ends.
    let scope = crate::layer::per_peer::StreamScope::default();
    request.extensions_mut().insert(scope.clone());
    let _release = Release(scope);

    let span = crate::rpc::request_span("inbound", peer, Q::NAME, None);
    let call = std::panic::AssertUnwindSafe(
        handler
            .oneshot(request)
            .map(|result| result.map_err(Into::<BoxError>::into)),
    )
    .catch_unwind();
    let mut shutdown = ctx.shutdown.clone();
    let call = crate::rpc::instrumented(call, span);
    tokio::pin!(call);
    // While the handler runs (it may read uploads before it returns its stream), room for
    // uploads is granted back as it takes them. A grant is written between polls of the
    // call, never cancelled half-written. The handler's deadline is `inbound_timeout`
    // without progress: each upload it takes moves the deadline on, so a long upload read
    // whole is not cut off while it flows.
    let mut deadline = tokio::time::Instant::now() + ctx.handler_timeout;
    let mut progress = window.total_taken();
    let called = loop {
        if window.grant_due()
            && let Some((n, bytes)) = window.grant()
        {
            writer.put_control(StreamFrame::Credit(n, bytes));
            if writer.flush().await.is_err() {
                return report(
                    &ctx,
                    peer,
                    Q::NAME,
                    InboundError::Io("the caller left".to_owned()),
                );
            }
        }
        tokio::select! {
            called = &mut call => break Called::Done(called),
            _ = shutdown.wait_for(|down| *down) => break Called::Shutdown,
            _ = window.due.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                let now = window.total_taken();
                if now == progress {
                    break Called::TimedOut;
                }
                progress = now;
                deadline = tokio::time::Instant::now() + ctx.handler_timeout;
            }
        }
    };
    let items = match called {
        Called::Done(Ok(Ok(items))) => items,
        refused => {
            let frame = match refused {
                Called::Shutdown => StreamFrame::Shutdown,
                Called::Done(Ok(Err(error))) => failure(error),
                Called::Done(Err(_panic)) => StreamFrame::Failed("the handler panicked".to_owned()),
                Called::TimedOut | Called::Done(Ok(Ok(_))) => {
                    report(&ctx, peer, Q::NAME, InboundError::Timeout);
                    StreamFrame::Failed("the handler timed out".to_owned())
                }
            };
            ctx.count(Q::NAME, outcome_of(&frame));
            writer.put_control(frame);
            let _ = finish(&mut writer, ctx.write_timeout).await;
            return;
        }
    };
    // A handler's stream that panics ends like one that fails. Items are counted as they
    // are taken from it.
    let sent_items = std::sync::atomic::AtomicU64::new(0);
    let mut items = Box::pin(
        std::panic::AssertUnwindSafe(items)
            .catch_unwind()
            .map(|item| match item {
                Ok(Ok(item)) => {
                    sent_items.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(item)
                }
                Ok(Err(e)) => Err(item_error(e.into(), peer)),
                Err(_panic) => Err(Error::Failed {
                    peer,
                    message: "the handler panicked".to_owned(),
                }),
            }),
    );
    let sent = send_items(
        &mut writer,
        &mut items,
        &credit,
        &window,
        &ends,
        Some(config.idle_timeout),
        &mut shutdown,
    )
    .await;
    // The handler's stream is dropped here, before the last frame: it sees the end at once.
    drop(items);
    if let Some(metrics) = &ctx.metrics {
        let n = sent_items.load(std::sync::atomic::Ordering::Relaxed);
        metrics.stream_items(Q::NAME, "sent", n);
    }
    match &sent {
        Sent::End => ctx.count(Q::NAME, "ok"),
        Sent::Failed(Error::Rejected { .. }) => ctx.count(Q::NAME, "rejected"),
        Sent::Failed(Error::Busy { .. }) => ctx.count(Q::NAME, "busy"),
        Sent::Failed(_) | Sent::TooLarge(_) => ctx.count(Q::NAME, "failed"),
        Sent::Shutdown => ctx.count(Q::NAME, "shutdown"),
        // Counted by `report` below.
        Sent::Gone | Sent::Idle => {}
    }
    match sent {
        Sent::End => writer.put_control(StreamFrame::End),
        Sent::Failed(error) => writer.put_control(match error {
            Error::Rejected { reason, .. } => StreamFrame::Rejected(reason),
            Error::Busy { .. } => StreamFrame::Busy,
            Error::Failed { message, .. } => StreamFrame::Failed(message),
            other => StreamFrame::Failed(other.to_string()),
        }),
        Sent::TooLarge(e) => {
            writer.put_control(StreamFrame::Failed(format!("item not sent: {e}")));
        }
        Sent::Shutdown => writer.put_control(StreamFrame::Shutdown),
        Sent::Gone => {
            // The caller cancelled (or went away): counted as such, reported as an event.
            ctx.count(Q::NAME, "cancelled");
            let _ = ctx.events.send(Event::InboundFailure {
                peer,
                protocol: Q::NAME.to_owned(),
                error: InboundError::Io("the caller left".to_owned()),
            });
            return;
        }
        Sent::Idle => {
            report(&ctx, peer, Q::NAME, InboundError::WriteTimeout);
            return;
        }
    }
    let _ = finish(&mut writer, ctx.write_timeout).await;
}

/// How the handler's call ended.
enum Called<T> {
    /// It returned (or panicked).
    Done(T),
    /// The node is shutting down.
    Shutdown,
    /// No progress within the handler's deadline.
    TimedOut,
}

/// The outcome label of a call refused before its stream began.
fn outcome_of(frame: &StreamFrame<&()>) -> &'static str {
    match frame {
        StreamFrame::Rejected(_) => "rejected",
        StreamFrame::Busy => "busy",
        StreamFrame::Shutdown => "shutdown",
        _ => "failed",
    }
}

/// A handler's item error as it travels: rejections and load shedding as themselves,
/// anything else as `Failed` with its text.
fn item_error(error: BoxError, peer: PeerId) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => match *error {
            rejected @ Error::Rejected { .. } => rejected,
            Error::Busy { .. } => Error::Busy { peer },
            other => Error::Failed {
                peer,
                message: other.to_string(),
            },
        },
        Err(other) => Error::Failed {
            peer,
            message: other.to_string(),
        },
    }
}

/// Writes what is batched and closes the writing half, within `timeout`.
async fn finish<W: futures::AsyncWrite + Unpin>(
    writer: &mut Writer<W>,
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, async {
        writer.flush().await?;
        writer.io.close().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

struct Release(crate::layer::per_peer::StreamScope);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The caller's uploads, as the handler reads them.
struct InboxStream<T>(Inbox<T>);

impl<T> Stream for InboxStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_item(cx)
    }
}

impl<T> Unpin for InboxStream<T> {}
