//! Serving inbound requests: one task per protocol accepts streams and hands each to a task
//! of its own, under a bounded number of permits.

use std::{sync::Arc, time::Duration};

use futures::AsyncWriteExt as _;
use libp2p::{PeerId, Stream};
use p2plane_codec::{CborCodec, Envelope, FrameBuf, FrameError, read_frame};
use p2plane_core::{Codec as _, Error, Protocol, Request};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tower::{BoxError, ServiceExt as _};
use tower_service::Service;

use crate::event::{Event, InboundError};

pub(crate) struct ServerContext {
    pub(crate) codec: CborCodec,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) timeout: Duration,
    pub(crate) max_concurrent: usize,
}

/// Accepts streams until the node shuts down. A stream beyond `max_concurrent` is answered
/// `Busy` by a small task of its own (bounded as well); beyond that it is dropped and
/// reported.
pub(crate) async fn run<P, H>(
    ctx: ServerContext,
    mut inbound: mpsc::Receiver<(PeerId, Stream)>,
    handler: H,
) where
    P: Protocol,
    H: Service<Request<P::Request>, Response = P::Response> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
{
    let ctx = Arc::new(ctx);
    let workers = Arc::new(Semaphore::new(ctx.max_concurrent));
    let busy_writers = Arc::new(Semaphore::new(ctx.max_concurrent));
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (peer, stream) = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => break,
            next = inbound.recv() => match next {
                Some(next) => next,
                None => break,
            },
        };
        if let Ok(permit) = Arc::clone(&workers).try_acquire_owned() {
            let (ctx, handler) = (Arc::clone(&ctx), handler.clone());
            tokio::spawn(async move {
                serve::<P, H>(&ctx, peer, stream, handler).await;
                drop(permit);
            });
        } else if let Ok(permit) = Arc::clone(&busy_writers).try_acquire_owned() {
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    ctx.timeout,
                    respond(&ctx.codec, &mut stream, &Envelope::<()>::Busy),
                )
                .await;
                drop(permit);
            });
        } else {
            report::<P>(&ctx, peer, InboundError::Overloaded);
        }
    }
}

fn report<P: Protocol>(ctx: &ServerContext, peer: PeerId, error: InboundError) {
    tracing::debug!(%peer, protocol = P::NAME, %error, "inbound request failed");
    let _ = ctx.events.send(Event::InboundFailure {
        peer,
        protocol: P::NAME.to_owned(),
        error,
    });
}

async fn serve<P, H>(ctx: &ServerContext, peer: PeerId, mut stream: Stream, handler: H)
where
    P: Protocol,
    H: Service<Request<P::Request>, Response = P::Response> + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
{
    let exchange = async {
        let body: P::Request = match read_request(ctx, &mut stream).await {
            Ok(body) => body,
            Err(error) => {
                // Tell an honest but mistaken peer why, when the stream still works.
                if matches!(error, InboundError::Frame(_) | InboundError::Decode(_)) {
                    let reason = error.to_string();
                    let _ =
                        respond(&ctx.codec, &mut stream, &Envelope::<()>::Rejected(reason)).await;
                }
                return Err(error);
            }
        };
        let request = Request::for_protocol::<P>(peer, body);
        let outcome = handler
            .oneshot(request)
            .await
            .map_err(|e| handler_error(e.into()));
        match outcome {
            Ok(response) => {
                match respond(&ctx.codec, &mut stream, &Envelope::Ok(&response)).await {
                    Err(RespondError::Encode(e)) => {
                        let failed = Envelope::<()>::Failed(format!("response not sent: {e}"));
                        respond(&ctx.codec, &mut stream, &failed)
                            .await
                            .map_err(RespondError::into_inbound)
                    }
                    other => other.map_err(RespondError::into_inbound),
                }
            }
            Err(envelope) => respond(&ctx.codec, &mut stream, &envelope)
                .await
                .map_err(RespondError::into_inbound),
        }
    };
    let outcome = tokio::time::timeout(ctx.timeout, exchange)
        .await
        .unwrap_or(Err(InboundError::Timeout));
    if let Err(error) = outcome {
        report::<P>(ctx, peer, error);
    }
}

async fn read_request<T: serde::de::DeserializeOwned>(
    ctx: &ServerContext,
    stream: &mut Stream,
) -> Result<T, InboundError> {
    let bytes = read_frame(stream, ctx.codec.max_message_size())
        .await
        .map_err(|e| match e {
            FrameError::Io(e) => InboundError::Io(e.to_string()),
            FrameError::Codec(e) => InboundError::Frame(e),
            other => InboundError::Io(other.to_string()),
        })?;
    ctx.codec.decode(&bytes).map_err(InboundError::Decode)
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

enum RespondError {
    Encode(p2plane_core::CodecError),
    Io(std::io::Error),
}

impl RespondError {
    fn into_inbound(self) -> InboundError {
        match self {
            RespondError::Encode(e) => InboundError::Frame(e),
            RespondError::Io(e) => InboundError::Io(e.to_string()),
        }
    }
}

async fn respond<T: Serialize>(
    codec: &CborCodec,
    stream: &mut Stream,
    envelope: &Envelope<T>,
) -> Result<(), RespondError> {
    let frame = FrameBuf::encode(codec, envelope).map_err(RespondError::Encode)?;
    stream
        .write_all(frame.as_bytes())
        .await
        .map_err(RespondError::Io)?;
    stream.close().await.map_err(RespondError::Io)
}
