use std::{
    io,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, future::BoxFuture};
use libp2p::StreamProtocol;
use p2plane_codec::{Envelope, FrameBuf, read_frame};
use p2plane_core::{Codec as _, Error, PeerId, Protocol, Request};
use tower_service::Service;

use super::shared_stream::Route;
use super::{
    answer_error, instrumented, map_open_error, map_stream_error, request_span, stream_protocol,
};
use crate::node_state::NodeState;

/// Sends requests of protocol `P` to peers: a [`tower::Service`] from
/// [`Request<P::Request>`](Request) to `P::Response`, so tower middleware wraps it.
///
/// Cheap to clone. A call goes to the peer (dialing it if needed, from addresses the node
/// has learned) on a shared stream: one long-lived stream per peer and protocol (two: one
/// for frames up to 64 KiB, one for larger ones) carries every request, each frame tagged
/// with an id that its response carries back. A peer that does not serve the shared form,
/// or a node configured with `use_shared_streams: false`, gets a stream per request instead (the
/// form in `docs/wire.md`). A request larger than the node's `max_message_size` fails with
/// [`Error::TooLarge`] before anything is sent. Without a timeout layer, a call gives up
/// after the node's `request_timeout`.
pub struct Client<P: Protocol> {
    shared: Arc<NodeState>,
    protocols: Arc<Protocols>,
    _protocol: PhantomData<fn() -> P>,
}

/// A protocol's two stream names: one request per stream, and the shared form.
pub(crate) struct Protocols {
    pub(crate) plain: StreamProtocol,
    pub(crate) shared: StreamProtocol,
}

impl<P: Protocol> Clone for Client<P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocols: Arc::clone(&self.protocols),
            _protocol: PhantomData,
        }
    }
}

impl<P: Protocol> std::fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("protocol", &P::NAME)
            .finish()
    }
}

impl<P: Protocol> Client<P> {
    pub(crate) fn new(shared: Arc<NodeState>) -> Self {
        Self {
            shared,
            protocols: Arc::new(Protocols {
                plain: stream_protocol::<P>(),
                shared: crate::rpc::shared_protocol(P::NAME),
            }),
            _protocol: PhantomData,
        }
    }

    /// Sends `body` to `peer` and waits for the answer: a shortcut for calling the service
    /// with [`Request::for_protocol`].
    pub async fn request(&self, peer: PeerId, body: P::Request) -> Result<P::Response, Error> {
        self.clone()
            .call(Request::for_protocol::<P>(peer, body))
            .await
    }
}

impl<P: Protocol> Service<Request<P::Request>> for Client<P> {
    type Response = P::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<P::Response, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.shared.is_shut_down() {
            return Poll::Ready(Err(Error::Shutdown));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<P::Request>) -> Self::Future {
        let span = request_span("outbound", request.peer(), P::NAME, Some(request.attempt()));
        let metrics = self.shared.metrics.clone();
        let attempt = request.attempt();
        let call = call::<P>(
            Arc::clone(&self.shared),
            Arc::clone(&self.protocols),
            request,
        );
        let measured = async move {
            let Some(metrics) = metrics else {
                return call.await;
            };
            let start = std::time::Instant::now();
            let result = call.await;
            metrics.outbound(
                P::NAME,
                attempt,
                start.elapsed(),
                result.as_ref().map(|_| ()),
            );
            result
        };
        Box::pin(instrumented(measured, span))
    }
}

async fn call<P: Protocol>(
    shared: Arc<NodeState>,
    protocols: Arc<Protocols>,
    request: Request<P::Request>,
) -> Result<P::Response, Error> {
    let peer = request.peer();
    if shared.is_shut_down() {
        return Err(Error::Shutdown);
    }
    // Encode first: a request that is too large fails here, before anything is sent.
    // Shared, not copied, with a shared stream's writer (the frame may be sent again).
    let frame = Arc::new(FrameBuf::encode(&shared.codec, request.body())?);
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        result = tokio::time::timeout(shared.config.request_timeout, exchange::<P>(&shared, &protocols, peer, &frame)) => {
            result.unwrap_or(Err(Error::Timeout { peer }))
        }
        _ = shutdown.wait_for(|down| *down) => Err(Error::Shutdown),
    };
    // A connection torn down by shutdown must read as shutdown, not as a network failure.
    if result.is_err() && shared.is_shut_down() {
        return Err(Error::Shutdown);
    }
    result
}

async fn exchange<P: Protocol>(
    shared: &NodeState,
    protocols: &Protocols,
    peer: PeerId,
    frame: &Arc<FrameBuf>,
) -> Result<P::Response, Error> {
    #[cfg(feature = "dht")]
    if needs_lookup(shared, peer) {
        // Rare, and a large future: boxed, so that every request does not carry its size.
        Box::pin(find_unknown_peer(shared, peer)).await;
    }
    let limit = shared.codec.max_message_size();
    let shared_stream = shared.config.use_shared_streams
        && shared.shared_streams.speaks_shared(peer, &protocols.shared);
    let bytes = if shared_stream {
        let route = Route {
            control: &shared.control,
            peer,
            protocol: &protocols.shared,
            limit,
            idle: shared.config.transport.idle_connection_timeout,
        };
        match shared.shared_streams.call(&route, frame).await {
            // A peer without the shared form: a stream per request from now on.
            Err(Error::UnsupportedProtocol { .. }) => {
                shared
                    .shared_streams
                    .mark_no_shared(peer, protocols.shared.clone());
                Box::pin(single(shared, &protocols.plain, peer, frame)).await?
            }
            other => other?,
        }
    } else {
        Box::pin(single(shared, &protocols.plain, peer, frame)).await?
    };
    let envelope: Envelope<P::Response> =
        shared.codec.decode(&bytes).map_err(|e| Error::Protocol {
            peer,
            reason: e.to_string(),
        })?;
    match envelope {
        Envelope::Ok(response) => Ok(response),
        Envelope::Busy => Err(Error::Busy { peer }),
        Envelope::Rejected(reason) => Err(Error::Rejected {
            peer: Some(peer),
            reason,
        }),
        Envelope::Failed(message) => Err(Error::Failed { peer, message }),
    }
}

/// A peer we are not connected to and know no address for is looked up in the DHT first
/// ([`find_unknown_peer`]), so a request can reach a peer never met.
#[cfg(feature = "dht")]
fn needs_lookup(shared: &NodeState, peer: PeerId) -> bool {
    shared.config.dht.is_some()
        && !shared.control.is_connected(&peer)
        && shared.config.peer_store.addresses(&peer).is_empty()
        && shared.unverified.addresses(&peer).is_empty()
}

/// Looks `peer` up in the DHT and keeps the addresses found as heard of, not proved: they
/// are dialled, and enter the peer store only once a connection proves them. Failures are
/// left to the dial that follows.
#[cfg(feature = "dht")]
async fn find_unknown_peer(shared: &NodeState, peer: PeerId) {
    if let Ok(addrs) = crate::Dht::new(shared.commands.clone(), shared.metrics.clone())
        .find_peer(peer)
        .await
    {
        let allow_private = shared.config.allow_private_addrs;
        shared.unverified.add(
            peer,
            addrs
                .into_iter()
                .filter(|a| allow_private || !crate::gate::is_private(a)),
            false,
        );
    }
}

/// One request on a stream of its own; returns the response payload.
async fn single(
    shared: &NodeState,
    protocol: &StreamProtocol,
    peer: PeerId,
    frame: &FrameBuf,
) -> Result<Vec<u8>, Error> {
    let stream_error = |e: io::Error| map_stream_error(e, peer, protocol);
    let mut stream = shared
        .control
        .open(peer, protocol.clone())
        .await
        .map_err(|e| map_open_error(e, peer, protocol))?;
    let written = async {
        stream.write_all(frame.as_bytes()).await?;
        stream.close().await
    };
    if let Err(e) = written.await {
        let error = stream_error(e);
        if matches!(error, Error::UnsupportedProtocol { .. }) {
            return Err(error);
        }
        // A refused protocol can reach the writer as a reset before the refusal is read;
        // a read reveals it.
        let mut probe = [0u8; 1];
        if let Ok(Err(e)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut probe)).await
        {
            let read_error = stream_error(e);
            if matches!(read_error, Error::UnsupportedProtocol { .. }) {
                return Err(read_error);
            }
        }
        return Err(error);
    }
    read_frame(&mut stream, shared.codec.max_message_size())
        .await
        .map_err(|e| answer_error(e, peer, stream_error))
}
