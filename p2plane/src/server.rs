//! Serving inbound requests. Per protocol, one task accepts streams of one request each, and
//! one accepts shared (multiplexed) streams; every request runs in a task of its own under
//! the protocol's permits (`max_concurrent_inbound`), and beyond them is answered `Busy`.

use std::{sync::Arc, time::Duration};

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{PeerId, Stream};
use p2plane_codec::{
    CborCodec, Envelope, FrameBuf, FrameError, SharedFrame, read_frame, read_shared_frame,
};
use p2plane_core::{Codec as _, CodecError, Error, Protocol, Request};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tower::{BoxError, ServiceExt as _};
use tower_service::Service;
use tracing::Instrument as _;

use crate::event::{Event, InboundError};

pub(crate) struct ServerContext {
    pub(crate) codec: CborCodec,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) timeout: Duration,
    /// Requests of this protocol handled at once, whichever form they came in.
    pub(crate) workers: Arc<Semaphore>,
    /// Small tasks that answer `Busy`, or shared streams being served.
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
    inbound: &mut mpsc::Receiver<(PeerId, Stream)>,
) -> Option<(PeerId, Stream)> {
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|down| *down) => None,
        next = inbound.recv() => next,
    }
}

/// Serves streams that carry one request each.
pub(crate) async fn run<P: Protocol, H: Handler<P>>(
    ctx: Arc<ServerContext>,
    mut inbound: mpsc::Receiver<(PeerId, Stream)>,
    handler: H,
) {
    while let Some((peer, stream)) = next(&ctx, &mut inbound).await {
        if let Ok(permit) = Arc::clone(&ctx.workers).try_acquire_owned() {
            let (ctx, handler) = (Arc::clone(&ctx), handler.clone());
            tokio::spawn(async move {
                serve::<P, H>(&ctx, peer, stream, handler).await;
                drop(permit);
            });
        } else if let Ok(permit) = Arc::clone(&ctx.helpers).try_acquire_owned() {
            ctx.count::<P>("busy");
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                let mut stream = stream;
                let busy = FrameBuf::encode(&ctx.codec, &Envelope::<()>::Busy);
                if let Ok(busy) = busy {
                    let _ = tokio::time::timeout(ctx.timeout, write_and_close(&mut stream, &busy))
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
    mut inbound: mpsc::Receiver<(PeerId, Stream)>,
    handler: H,
) {
    while let Some((peer, stream)) = next(&ctx, &mut inbound).await {
        match Arc::clone(&ctx.helpers).try_acquire_owned() {
            Ok(permit) => {
                let (ctx, handler) = (Arc::clone(&ctx), handler.clone());
                tokio::spawn(async move {
                    serve_shared::<P, H>(ctx, peer, stream, handler).await;
                    drop(permit);
                });
            }
            Err(_) => report::<P>(&ctx, peer, InboundError::Overloaded),
        }
    }
}

fn report<P: Protocol>(ctx: &ServerContext, peer: PeerId, error: InboundError) {
    tracing::debug!(%peer, protocol = P::NAME, %error, "inbound request failed");
    ctx.count::<P>(match error {
        InboundError::Frame(_) | InboundError::Decode(_) => "malformed",
        InboundError::Timeout => "timeout",
        InboundError::Overloaded => "dropped",
        _ => "io",
    });
    let _ = ctx.events.send(Event::InboundFailure {
        peer,
        protocol: P::NAME.to_owned(),
        error,
    });
}

fn encode<T: Serialize>(codec: &CborCodec, envelope: &Envelope<T>) -> FrameBuf {
    FrameBuf::encode(codec, envelope).unwrap_or_else(|e| {
        // Only an answer larger than the limit fails to encode; say so instead.
        let failed = Envelope::<()>::Failed(format!("response not sent: {e}"));
        FrameBuf::encode(codec, &failed).expect("a short text fits any limit")
    })
}

/// Runs the handler on one request and encodes its answer (or its error).
async fn answer<P: Protocol, H: Handler<P>>(
    ctx: &ServerContext,
    peer: PeerId,
    id: Option<u64>,
    body: P::Request,
    handler: H,
) -> FrameBuf {
    let span = crate::client::request_span("inbound", peer, P::NAME, None);
    if let Some(id) = id {
        span.record("id", id);
    }
    let request = Request::for_protocol::<P>(peer, body);
    let run = handler.oneshot(request).instrument(span);
    match tokio::time::timeout(ctx.timeout, run).await {
        Ok(Ok(response)) => {
            ctx.count::<P>("ok");
            encode(&ctx.codec, &Envelope::Ok(&response))
        }
        Ok(Err(error)) => {
            let envelope = handler_error(error.into());
            ctx.count::<P>(match envelope {
                Envelope::Rejected(_) => "rejected",
                Envelope::Busy => "busy",
                _ => "failed",
            });
            encode(&ctx.codec, &envelope)
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

fn frame_error(e: FrameError) -> InboundError {
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
    let exchange = async {
        let bytes = read_frame(&mut stream, ctx.codec.max_message_size())
            .await
            .map_err(frame_error);
        let body = bytes.and_then(|b| {
            ctx.codec
                .decode::<P::Request>(&b)
                .map_err(InboundError::Decode)
        });
        let frame = match body {
            Ok(body) => answer::<P, H>(ctx, peer, None, body, handler).await,
            Err(error) => {
                // Tell an honest but mistaken peer why, when the stream still works.
                if matches!(error, InboundError::Frame(_) | InboundError::Decode(_)) {
                    let _ = write_and_close(
                        &mut stream,
                        &encode(&ctx.codec, &Envelope::<()>::Rejected(error.to_string())),
                    )
                    .await;
                }
                return Err(error);
            }
        };
        write_and_close(&mut stream, &frame)
            .await
            .map_err(|e| InboundError::Io(e.to_string()))
    };
    let outcome = tokio::time::timeout(ctx.timeout, exchange)
        .await
        .unwrap_or(Err(InboundError::Timeout));
    if let Err(error) = outcome {
        report::<P>(ctx, peer, error);
    }
}

async fn serve_shared<P: Protocol, H: Handler<P>>(
    ctx: Arc<ServerContext>,
    peer: PeerId,
    stream: Stream,
    handler: H,
) {
    let (mut reader, mut writer) = stream.split();
    let (answers, mut outgoing) = mpsc::channel::<FrameBuf>(1024);
    let read = {
        let ctx = Arc::clone(&ctx);
        async move {
            let limit = ctx.codec.max_message_size();
            loop {
                let (id, body) = match read_shared_frame(&mut reader, limit).await {
                    Ok(SharedFrame::Frame { id, body }) => (id, body),
                    // Too large for us: refuse that request; the stream goes on.
                    Ok(SharedFrame::TooLarge { id, len }) => {
                        let error = InboundError::Frame(CodecError::TooLarge { limit, len });
                        let mut rejected =
                            encode(&ctx.codec, &Envelope::<()>::Rejected(error.to_string()));
                        report::<P>(&ctx, peer, error);
                        rejected.set_id(id);
                        if answers.send(rejected).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    // The peer closed its side: a normal end.
                    Err(FrameError::Codec(CodecError::Truncated {
                        expected: 0,
                        got: 0,
                    })) => return,
                    // Anything else breaks the framing: nothing more can be answered.
                    Err(e) => return report::<P>(&ctx, peer, frame_error(e)),
                };
                let body = &body[..];
                let mut reply = match ctx.codec.decode::<P::Request>(body) {
                    Err(e) => {
                        let error = InboundError::Decode(e);
                        let rejected =
                            encode(&ctx.codec, &Envelope::<()>::Rejected(error.to_string()));
                        report::<P>(&ctx, peer, error);
                        rejected
                    }
                    Ok(body) => match Arc::clone(&ctx.workers).try_acquire_owned() {
                        Ok(permit) => {
                            let (ctx, handler, answers) =
                                (Arc::clone(&ctx), handler.clone(), answers.clone());
                            tokio::spawn(async move {
                                let mut frame =
                                    answer::<P, H>(&ctx, peer, Some(id), body, handler).await;
                                frame.set_id(id);
                                let _ = answers.send(frame).await;
                                drop(permit);
                            });
                            continue;
                        }
                        Err(_) => {
                            ctx.count::<P>("busy");
                            encode(&ctx.codec, &Envelope::<()>::Busy)
                        }
                    },
                };
                reply.set_id(id);
                if answers.send(reply).await.is_err() {
                    return;
                }
            }
        }
    };
    let write = async move {
        let mut batch = Vec::with_capacity(crate::mux::BATCH);
        while let Some(first) = outgoing.recv().await {
            crate::mux::gather(&mut batch, &first, &mut outgoing);
            if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.close().await;
    };
    futures::join!(read, write);
}
