//! Serving inbound requests. Per protocol, one task accepts streams of one request each, and
//! one accepts shared streams. Every request runs under the protocol's permits
//! (`max_concurrent_inbound`), and beyond them is answered `Busy`. A stream of one request
//! is served by a task of its own; on a shared stream, the reader runs each request's
//! handler once itself and gives a task of its own only to one not answered then (see
//! [`Inline`]).

use std::{sync::Arc, time::Duration};

use futures::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use libp2p::{PeerId, Stream};
use p2plane_codec::{
    CborCodec, Envelope, FrameBuf, FrameError, read_frame_body, read_frame_len, read_shared_head,
};
use p2plane_core::{Codec as _, CodecError, Error, Protocol, Request};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tower::{BoxError, ServiceExt as _};
use tower_service::Service;

use crate::{
    budget::{Budget, Charge},
    event::{Event, InboundError},
};

/// A first poll of a shared stream's request job longer than this is slow: the stream's
/// next [`SPAWN_AFTER_SLOW`] requests go straight to tasks of their own.
const INLINE_LIMIT: Duration = Duration::from_micros(50);
/// See [`INLINE_LIMIT`].
const SPAWN_AFTER_SLOW: u32 = 64;

/// Shared streams one peer may have open per protocol (a client opens two).
pub(crate) const MAX_SHARED_PER_PEER: usize = 8;

pub(crate) struct ServerContext {
    pub(crate) codec: CborCodec,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) handler_timeout: Duration,
    /// The rest of a frame must arrive within this once it has begun.
    pub(crate) read_timeout: Duration,
    /// An answer must be taken within this.
    pub(crate) write_timeout: Duration,
    /// The node's inbound byte budget, shared by all its protocols.
    pub(crate) budget: Arc<Budget>,
    /// Shared streams open per peer (at most [`MAX_SHARED_PER_PEER`]).
    pub(crate) shared_streams: Arc<crate::rpc::PeerSlots>,
    /// Shared streams open in all (for this protocol); a stream costs no worker permit.
    pub(crate) shared_total: Arc<Semaphore>,
    /// A shared stream on which no frame begins for this long is closed.
    pub(crate) shared_idle: Duration,
    /// Requests of this protocol handled at once, whichever form they came in.
    pub(crate) workers: Arc<Semaphore>,
    /// Streams of one request being read at once (before their handler runs).
    pub(crate) readers: Arc<Semaphore>,
    /// Small tasks that answer `Busy` to a one-request stream, or close a refused shared
    /// stream.
    pub(crate) helpers: Arc<Semaphore>,
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl ServerContext {
    fn count<P: Protocol>(&self, outcome: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.inbound(P::NAME, outcome);
        }
    }
}

/// What handlers must be.
pub(crate) trait Handler<P: Protocol>:
    Service<
        Request<P::Request>,
        Response = P::Response,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<P: Protocol, H> Handler<P> for H where
    H: Service<
            Request<P::Request>,
            Response = P::Response,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Takes the next stream, until the node shuts down or stops serving the protocol.
async fn next(
    ctx: &ServerContext,
    inbound: &mut mpsc::Receiver<crate::streams::Inbound>,
) -> Option<(PeerId, Stream)> {
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|down| *down) => None,
        next = inbound.recv() => next.map(|(peer, stream, _)| (peer, stream)),
    }
}

/// Serves streams that carry one request each.
pub(crate) async fn run<P: Protocol, H: Handler<P>>(
    ctx: Arc<ServerContext>,
    mut inbound: mpsc::Receiver<crate::streams::Inbound>,
    handler: H,
) {
    while let Some((peer, stream)) = next(&ctx, &mut inbound).await {
        // A stream being read holds a reader's place only: a handler permit is taken once
        // its request has arrived, so streams that stall before that cannot starve the
        // handlers.
        if let Ok(reader) = Arc::clone(&ctx.readers).try_acquire_owned() {
            let (ctx, handler) = (Arc::clone(&ctx), handler.clone());
            tokio::spawn(async move {
                serve::<P, H>(&ctx, peer, stream, handler).await;
                drop(reader);
            });
        } else if let Ok(permit) = Arc::clone(&ctx.helpers).try_acquire_owned() {
            ctx.count::<P>("busy");
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                let mut stream = stream;
                let busy = FrameBuf::encode(&ctx.codec, &Envelope::<()>::Busy);
                if let Ok(busy) = busy {
                    let _ = tokio::time::timeout(
                        ctx.write_timeout,
                        write_and_close(&mut stream, &busy),
                    )
                    .await;
                }
                drop(permit);
            });
        } else {
            report::<P>(&ctx, peer, InboundError::Overloaded);
        }
    }
}

/// Serves shared streams: each carries many requests, matched to answers by id.
pub(crate) async fn run_shared<P: Protocol, H: Handler<P>>(
    ctx: Arc<ServerContext>,
    mut inbound: mpsc::Receiver<crate::streams::Inbound>,
    handler: H,
) {
    while let Some((peer, stream)) = next(&ctx, &mut inbound).await {
        // A shared stream holds a place among the peer's and among all shared streams, but
        // no worker: an idle stream costs no handler capacity.
        let place = ctx.shared_streams.take(peer).and_then(|slot| {
            Some((
                slot,
                Arc::clone(&ctx.shared_total).try_acquire_owned().ok()?,
            ))
        });
        let Some((slot, permit)) = place else {
            refuse_shared::<P>(&ctx, peer, stream);
            continue;
        };
        let (ctx, handler) = (Arc::clone(&ctx), handler.clone());
        tokio::spawn(async move {
            serve_shared::<P, H>(Arc::clone(&ctx), peer, stream, handler).await;
            drop(slot);
            drop(permit);
        });
    }
}

/// A shared stream over the limits is closed at once, cleanly and unread: its caller knows
/// that none of its requests ran, tries once more on a new stream, then reports
/// [`Error::Busy`].
fn refuse_shared<P: Protocol>(ctx: &Arc<ServerContext>, peer: PeerId, mut stream: Stream) {
    report::<P>(ctx, peer, InboundError::Overloaded);
    if let Ok(permit) = Arc::clone(&ctx.helpers).try_acquire_owned() {
        let timeout = ctx.write_timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, stream.close()).await;
            drop(permit);
        });
    }
}

fn report<P: Protocol>(ctx: &ServerContext, peer: PeerId, error: InboundError) {
    report_inbound(&ctx.events, ctx.metrics.as_deref(), peer, P::NAME, error);
}

/// An inbound request or stream that failed: counted by outcome, and reported as
/// [`Event::InboundFailure`].
pub(crate) fn report_inbound(
    events: &broadcast::Sender<Event>,
    metrics: Option<&crate::metrics::Metrics>,
    peer: PeerId,
    protocol: &'static str,
    error: InboundError,
) {
    tracing::debug!(%peer, protocol, %error, "inbound request failed");
    if let Some(metrics) = metrics {
        metrics.inbound(
            protocol,
            match error {
                InboundError::Frame(_) | InboundError::Decode(_) => "malformed",
                InboundError::Timeout | InboundError::WriteTimeout => "timeout",
                InboundError::Overloaded => "dropped",
                InboundError::OverBudget { .. } => "over_budget",
                _ => "io",
            },
        );
    }
    let _ = events.send(Event::InboundFailure {
        peer,
        protocol: protocol.to_owned(),
        error,
    });
}

/// The longest text a stand-in `Failed` answer carries.
const MAX_FALLBACK_TEXT: usize = 120;

fn encode<T: Serialize>(codec: &CborCodec, envelope: &Envelope<T>) -> FrameBuf {
    FrameBuf::encode(codec, envelope).unwrap_or_else(|e| {
        // Only an answer larger than the limit fails to encode; say so instead, in a short
        // text. Encoded without a limit: under a limit too small for even that, the peer
        // reads it as a response over its limit (a typed error), and nothing here panics.
        let mut text = format!("response not sent: {e}");
        if text.len() > MAX_FALLBACK_TEXT {
            let mut end = MAX_FALLBACK_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        FrameBuf::encode(&CborCodec::new(usize::MAX), &Envelope::<()>::Failed(text))
            .unwrap_or_else(|_| FrameBuf::encode_raw(&[]))
    })
}

/// Runs the handler on one request and encodes its answer (or its error, or its panic).
async fn answer<P: Protocol, H: Handler<P>>(
    ctx: &ServerContext,
    peer: PeerId,
    id: Option<u64>,
    body: P::Request,
    handler: H,
) -> FrameBuf {
    let span = crate::rpc::request_span("inbound", peer, P::NAME, None);
    let request = Request::for_protocol::<P>(peer, body);
    if let Some(id) = id.filter(|_| !span.is_disabled()) {
        span.record("id", id);
    }
    // A handler that panics is answered like one that fails.
    let run = std::panic::AssertUnwindSafe(handler.oneshot(request)).catch_unwind();
    match tokio::time::timeout(ctx.handler_timeout, crate::rpc::instrumented(run, span)).await {
        Ok(Ok(Ok(response))) => {
            ctx.count::<P>("ok");
            encode(&ctx.codec, &Envelope::Ok(&response))
        }
        Ok(Ok(Err(error))) => {
            let envelope = handler_error(error.into());
            ctx.count::<P>(match envelope {
                Envelope::Rejected(_) => "rejected",
                Envelope::Busy => "busy",
                _ => "failed",
            });
            encode(&ctx.codec, &envelope)
        }
        Ok(Err(_panic)) => {
            ctx.count::<P>("failed");
            encode(
                &ctx.codec,
                &Envelope::<()>::Failed("the handler panicked".to_owned()),
            )
        }
        Err(_) => {
            report::<P>(ctx, peer, InboundError::Timeout);
            encode(
                &ctx.codec,
                &Envelope::<()>::Failed("the handler timed out".to_owned()),
            )
        }
    }
}

/// Rejections and load shedding raised by middleware travel as themselves; every other
/// handler error as `Failed`.
fn handler_error(error: BoxError) -> Envelope<()> {
    match error.downcast_ref::<Error>() {
        Some(Error::Rejected { reason, .. }) => Envelope::Rejected(reason.clone()),
        Some(Error::Busy { .. }) => Envelope::Busy,
        Some(Error::Timeout { .. }) => Envelope::Failed("the handler timed out".to_owned()),
        _ => Envelope::Failed(error.to_string()),
    }
}

pub(crate) fn frame_error(e: FrameError) -> InboundError {
    match e {
        FrameError::Io(e) => InboundError::Io(e.to_string()),
        FrameError::Codec(e) => InboundError::Frame(e),
        other => InboundError::Io(other.to_string()),
    }
}

async fn write_and_close(stream: &mut Stream, frame: &FrameBuf) -> std::io::Result<()> {
    stream.write_all(frame.as_bytes()).await?;
    stream.close().await
}

async fn serve<P: Protocol, H: Handler<P>>(
    ctx: &ServerContext,
    peer: PeerId,
    mut stream: Stream,
    handler: H,
) {
    let peer_budget = ctx.budget.peer(peer);
    let exchange = async {
        // A stream opened for one request carries it at once: the whole frame is due
        // within the read deadline. The body is read only once it fits in the budget.
        let read = async {
            let len = read_frame_len(&mut stream, ctx.codec.max_message_size()).await?;
            let Some(charge) = ctx.budget.try_charge(&peer_budget, len as usize) else {
                return Ok(Err(len));
            };
            let bytes = read_frame_body(&mut stream, len).await?;
            Ok::<_, FrameError>(Ok((bytes, charge)))
        };
        let read = match tokio::time::timeout(ctx.read_timeout, read).await {
            Err(_) => return Err(InboundError::Timeout),
            Ok(Ok(Err(len))) => {
                let busy = encode(&ctx.codec, &Envelope::<()>::Busy);
                let _ =
                    tokio::time::timeout(ctx.write_timeout, write_and_close(&mut stream, &busy))
                        .await;
                return Err(InboundError::OverBudget { len });
            }
            Ok(Err(e)) => Err(frame_error(e)),
            Ok(Ok(Ok((bytes, charge)))) => ctx
                .codec
                .decode::<P::Request>(&bytes)
                .map(|body| (body, charge))
                .map_err(InboundError::Decode),
        };
        let (body, mut charge) = match read {
            Ok(read) => read,
            Err(error) => {
                // Tell an honest but mistaken peer why, when the stream still works.
                if matches!(error, InboundError::Frame(_) | InboundError::Decode(_)) {
                    let rejected = encode(&ctx.codec, &Envelope::<()>::Rejected(error.to_string()));
                    let _ = tokio::time::timeout(
                        ctx.write_timeout,
                        write_and_close(&mut stream, &rejected),
                    )
                    .await;
                }
                return Err(error);
            }
        };
        let Ok(permit) = Arc::clone(&ctx.workers).try_acquire_owned() else {
            ctx.count::<P>("busy");
            let busy = encode(&ctx.codec, &Envelope::<()>::Busy);
            return send(ctx, &peer_budget, &mut charge, busy, &mut stream).await;
        };
        let frame = answer::<P, H>(ctx, peer, None, body, handler).await;
        drop(permit);
        send(ctx, &peer_budget, &mut charge, frame, &mut stream).await
    };
    // No deadline around the whole: reading has `read_timeout`, the handler
    // `inbound_timeout` (in `answer`), writing `write_timeout`, each applied once.
    if let Err(error) = exchange.await {
        report::<P>(ctx, peer, error);
    }
}

/// Writes an answer under the budget (held until written) and the write deadline.
async fn send(
    ctx: &ServerContext,
    peer_budget: &Arc<Semaphore>,
    charge: &mut Charge,
    frame: FrameBuf,
    stream: &mut Stream,
) -> Result<(), InboundError> {
    if !ctx
        .budget
        .grow(peer_budget, charge, frame.len(), ctx.write_timeout)
        .await
    {
        return Err(InboundError::OverBudget {
            len: frame.len() as u64,
        });
    }
    match tokio::time::timeout(ctx.write_timeout, write_and_close(stream, &frame)).await {
        Err(_) => Err(InboundError::WriteTimeout),
        Ok(result) => result.map_err(|e| InboundError::Io(e.to_string())),
    }
}

/// One peer's shared stream, as its reader and its request jobs see it.
struct SharedPeer {
    ctx: Arc<ServerContext>,
    peer: PeerId,
    /// The peer's share of the inbound budget.
    budget: Arc<Semaphore>,
    /// Answers on their way out, each with the budget it holds until written.
    answers: mpsc::Sender<(FrameBuf, Option<Charge>)>,
}

impl SharedPeer {
    /// Queues an answer without a charge; `false` once the writer is gone.
    async fn answer(&self, id: u64, mut frame: FrameBuf) -> bool {
        frame.set_id(id);
        self.answers.send((frame, None)).await.is_ok()
    }
}

async fn serve_shared<P: Protocol, H: Handler<P>>(
    ctx: Arc<ServerContext>,
    peer: PeerId,
    stream: Stream,
    handler: H,
) {
    let (reader, mut writer) = stream.split();
    let reader = futures::io::BufReader::with_capacity(crate::rpc::READ_BUFFER, reader);
    let (answers, mut outgoing) = mpsc::channel::<(FrameBuf, Option<Charge>)>(1024);
    let shared = Arc::new(SharedPeer {
        budget: ctx.budget.peer(peer),
        ctx: Arc::clone(&ctx),
        peer,
        answers,
    });
    let read = read_shared::<P, H>(shared, reader, handler);
    let write = async move {
        let mut batch = Vec::with_capacity(crate::rpc::BATCH);
        // The answers in the batch, with their charges, until it is written.
        let mut held = Vec::new();
        while let Some(first) = outgoing.recv().await {
            crate::rpc::gather(&mut batch, first, &mut outgoing, &mut held);
            let written = tokio::time::timeout(ctx.write_timeout, async {
                writer.write_all(&batch).await?;
                writer.flush().await
            })
            .await;
            held.clear();
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return report::<P>(&ctx, peer, InboundError::WriteTimeout),
            }
        }
        let _ = tokio::time::timeout(ctx.write_timeout, writer.close()).await;
    };
    futures::pin_mut!(read, write);
    match futures::future::select(read, write).await {
        // The peer is done sending: finish writing what it is owed.
        futures::future::Either::Left(((), write)) => write.await,
        // The writer gave up (a peer that does not read): stop reading too.
        futures::future::Either::Right(((), _read)) => {}
    }
}

/// Reads a shared stream's requests and starts each (see [`Inline`]), until the peer closes
/// its side, the stream idles out, or its framing breaks.
async fn read_shared<P: Protocol, H: Handler<P>>(
    shared: Arc<SharedPeer>,
    mut reader: futures::io::BufReader<futures::io::ReadHalf<Stream>>,
    handler: H,
) {
    let (ctx, peer) = (&shared.ctx, shared.peer);
    let limit = ctx.codec.max_message_size();
    let mut inline = Inline::default();
    loop {
        // Between frames the stream may idle, up to `shared_idle`: then it is closed,
        // cleanly (every request read gets its answer first). Once a frame has begun, the
        // rest of it, head and body, is due within the read deadline.
        match tokio::time::timeout(ctx.shared_idle, reader.fill_buf()).await {
            Err(_) => return ctx.count::<P>("idle_closed"),
            // The peer closed its side: a normal end.
            Ok(Ok([])) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return report::<P>(ctx, peer, InboundError::Io(e.to_string())),
        }
        let deadline = tokio::time::Instant::now() + ctx.read_timeout;
        let head = match tokio::time::timeout_at(deadline, read_shared_head(&mut reader)).await {
            Ok(Ok(head)) => head,
            Err(_) => return report::<P>(ctx, peer, InboundError::Timeout),
            // Anything else breaks the framing: nothing more can be answered.
            Ok(Err(e)) => return report::<P>(ctx, peer, frame_error(e)),
        };
        let id = head.id;
        let too_large = head.body_len > limit as u64;
        let charge = if too_large {
            None
        } else {
            ctx.budget
                .try_charge(&shared.budget, head.body_len as usize)
        };
        let Some(charge) = charge else {
            // Too large for us, or over budget: refused at once, without holding the body;
            // the body is then skipped (within the same deadline) and the stream goes on.
            let refusal = refuse_frame::<P>(ctx, peer, too_large, head.len);
            if !shared.answer(id, refusal).await {
                return;
            }
            match tokio::time::timeout_at(deadline, head.skip_body(&mut reader)).await {
                Ok(Ok(())) => continue,
                Err(_) => return report::<P>(ctx, peer, InboundError::Timeout),
                Ok(Err(e)) => return report::<P>(ctx, peer, frame_error(e)),
            }
        };
        let body = match tokio::time::timeout_at(deadline, head.read_body(&mut reader)).await {
            Ok(Ok(body)) => body,
            Err(_) => return report::<P>(ctx, peer, InboundError::Timeout),
            Ok(Err(e)) => return report::<P>(ctx, peer, frame_error(e)),
        };
        let body = match ctx.codec.decode::<P::Request>(&body) {
            Ok(body) => body,
            Err(e) => {
                let error = InboundError::Decode(e);
                let rejected = encode(&ctx.codec, &Envelope::<()>::Rejected(error.to_string()));
                report::<P>(ctx, peer, error);
                if !shared.answer(id, rejected).await {
                    return;
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&ctx.workers).try_acquire_owned() else {
            ctx.count::<P>("busy");
            if !shared
                .answer(id, encode(&ctx.codec, &Envelope::<()>::Busy))
                .await
            {
                return;
            }
            continue;
        };
        let job = answer_shared::<P, H>(
            Arc::clone(&shared),
            id,
            body,
            handler.clone(),
            (permit, charge),
        );
        inline.run_or_spawn(job);
    }
}

/// The answer to a frame refused before its body is read: `Rejected` if it is over the
/// size limit, `Busy` if it is over the budget.
fn refuse_frame<P: Protocol>(
    ctx: &ServerContext,
    peer: PeerId,
    too_large: bool,
    len: u64,
) -> FrameBuf {
    let limit = ctx.codec.max_message_size();
    let (error, envelope) = if too_large {
        let error = InboundError::Frame(CodecError::TooLarge { limit, len });
        let text = error.to_string();
        (error, Envelope::<()>::Rejected(text))
    } else {
        (InboundError::OverBudget { len }, Envelope::Busy)
    };
    report::<P>(ctx, peer, error);
    encode(&ctx.codec, &envelope)
}

/// Runs one request of a shared stream: the handler under the worker permit, then its
/// answer queued for the writer under the request's budget.
async fn answer_shared<P: Protocol, H: Handler<P>>(
    shared: Arc<SharedPeer>,
    id: u64,
    body: P::Request,
    handler: H,
    (permit, mut charge): (tokio::sync::OwnedSemaphorePermit, Charge),
) {
    let ctx = &shared.ctx;
    let peer = shared.peer;
    let mut frame = answer::<P, H>(ctx, peer, Some(id), body, handler).await;
    drop(permit);
    frame.set_id(id);
    let len = frame.len();
    if ctx
        .budget
        .grow(&shared.budget, &mut charge, len, ctx.write_timeout)
        .await
    {
        let _ = shared.answers.send((frame, Some(charge))).await;
    } else {
        // Every request read is answered (a clean close of the stream promises that the
        // requests left unanswered were not read): a short failure in place of the answer.
        report::<P>(ctx, peer, InboundError::OverBudget { len: len as u64 });
        drop(charge);
        let failed = encode(
            &ctx.codec,
            &Envelope::<()>::Failed("the answer did not fit the inbound budget".to_owned()),
        );
        shared.answer(id, failed).await;
    }
}

/// How a shared stream's reader runs its request jobs: it polls each once itself, and
/// spawns a task only for a job that is not finished by then. Most handlers answer at once,
/// and a task per request cost more than everything else on the request path together
/// (CPU per request, both peers, 64 in flight: 9.5 µs with a task per request, 6.5 µs
/// without; `cargo bench -p p2plane --bench reqresp -- --profile-small`). A job whose first
/// poll takes longer than [`INLINE_LIMIT`] (CPU-heavy handlers) would hold up the stream's
/// next requests, so the [`SPAWN_AFTER_SLOW`] requests after it get tasks of their own at
/// once, running in parallel on other workers.
#[derive(Default)]
struct Inline {
    spawn_next: u32,
}

impl Inline {
    fn run_or_spawn(&mut self, job: impl Future<Output = ()> + Send + 'static) {
        if self.spawn_next > 0 {
            self.spawn_next -= 1;
            tokio::spawn(job);
            return;
        }
        let mut job = Box::pin(job);
        let start = std::time::Instant::now();
        // A job still pending is polled again by its task, which registers that task's
        // waker; the reader's context is not used, so no wake-up reaches the reader.
        let done = (&mut job).now_or_never().is_some();
        if start.elapsed() > INLINE_LIMIT {
            self.spawn_next = SPAWN_AFTER_SLOW;
        }
        if !done {
            tokio::spawn(job);
        }
    }
}

impl crate::rpc::Outgoing for (FrameBuf, Option<Charge>) {
    fn put(&self, batch: &mut Vec<u8>) {
        batch.extend_from_slice(self.0.as_bytes());
    }
}
