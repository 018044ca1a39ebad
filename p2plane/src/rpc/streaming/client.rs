//! The caller's side of a streaming call.

use std::{
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, Stream, future::BoxFuture, io::BufReader};
use libp2p::StreamProtocol;
use p2plane_codec::StreamFrame;
use p2plane_core::{Codec as _, Error, PeerId, Request, Streaming};
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    task::JoinHandle,
    time::Sleep,
};
use tower_service::Service;

use super::{
    Ends, Inbox, Reader, SendCredit, Sent, Uploads, Window, Writer, send_grants, send_items,
    streaming_protocol,
};
use crate::{
    layer::{timeout::ItemTimeout, validate::ValidateItems},
    node_state::NodeState,
    rpc::{map_open_error, map_stream_error},
};

/// Calls a [`Streaming`] protocol: a [`tower::Service`] from
/// [`Request<Q::Request>`](Request) to an [`ItemStream`] of the handler's items.
///
/// The call's future resolves with the handler's first item (or its clean end, or the
/// error that came first), so a [`TimeoutLayer`](crate::TimeoutLayer) around the client
/// bounds the time to the first item and a [`RetryLayer`](crate::RetryLayer) retries only
/// before an item has been delivered. Without a timeout layer, the first item and each gap
/// are bounded by the node's [`request_timeout`](crate::NodeConfig::request_timeout) (the
/// first item always is: a layer's longer deadline does not extend it). The stream then yields the rest. Uploads (for
/// protocols with a [`Streaming::Upload`]) ride in the request: see [`Uploads`] and
/// [`StreamClient::open`].
///
/// Each call is one libp2p stream with credit-based flow control both ways: a consumer that
/// stops reading stops the handler's producer once the window ([`StreamConfig`](crate::StreamConfig))
/// is full, and dropping the [`ItemStream`] resets the stream, which ends the handler's.
///
/// ```
/// use futures::{StreamExt, stream};
/// use p2plane::{Message, Node, NodeConfig, Request, Streaming, service_fn};
/// use serde::{Deserialize, Serialize};
/// use std::convert::Infallible;
///
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # struct Hello;
/// # impl Message for Hello { const PROTOCOL: &'static str = "/hello/1"; }
/// /// Counts from `from` up to `to`.
/// struct Count;
/// impl Streaming for Count {
///     const NAME: &'static str = "/count/1.0.0";
///     type Request = (u64, u64);
///     type Upload = ();
///     type Item = u64;
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = || NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap());
/// let server = Node::<Hello>::new(config()).await?;
/// server.serve_stream::<Count, _>(service_fn(|req: Request<(u64, u64)>| async move {
///     let (from, to) = *req.body();
///     Ok::<_, Infallible>(stream::iter(from..to).map(Ok::<_, Infallible>))
/// }))?;
///
/// let client = Node::<Hello>::new(config()).await?;
/// let peer = client.dial(server.listen_addrs().await?[0].clone()).await?;
/// let items = client.stream_client::<Count>().request(peer, (3, 6)).await?;
/// let got: Vec<u64> = items.map(|item| item.unwrap()).collect().await;
/// assert_eq!(got, [3, 4, 5]);
/// # Ok(())
/// # }
/// ```
pub struct StreamClient<Q: Streaming> {
    shared: Arc<NodeState>,
    protocol: StreamProtocol,
    _protocol: PhantomData<fn() -> Q>,
}

impl<Q: Streaming> Clone for StreamClient<Q> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
            _protocol: PhantomData,
        }
    }
}

impl<Q: Streaming> std::fmt::Debug for StreamClient<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClient")
            .field("protocol", &Q::NAME)
            .finish()
    }
}

impl<Q: Streaming> StreamClient<Q> {
    pub(crate) fn new(shared: Arc<NodeState>) -> Self {
        Self {
            shared,
            protocol: streaming_protocol::<Q>(),
            _protocol: PhantomData,
        }
    }

    /// Opens a stream to `peer` with `body` and no uploads: a shortcut for calling the
    /// service with [`Request::for_stream`].
    pub async fn request(
        &self,
        peer: PeerId,
        body: Q::Request,
    ) -> Result<ItemStream<Q::Item>, Error> {
        self.clone()
            .call(Request::for_stream::<Q>(peer, body))
            .await
    }

    /// Opens a stream to `peer` with `body`, then streams `uploads` to the handler as its
    /// window allows, while the handler's items come back: client streaming and
    /// bidirectional calls. The call resolves with the handler's first item, so uploads
    /// that the handler needs before it answers must not wait on this call.
    pub async fn open(
        &self,
        peer: PeerId,
        body: Q::Request,
        uploads: impl Stream<Item = Q::Upload> + Send + 'static,
    ) -> Result<ItemStream<Q::Item>, Error> {
        let mut request = Request::for_stream::<Q>(peer, body);
        request.extensions_mut().insert(Uploads::new(uploads));
        self.clone().call(request).await
    }
}

impl<Q: Streaming> Service<Request<Q::Request>> for StreamClient<Q> {
    type Response = ItemStream<Q::Item>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<ItemStream<Q::Item>, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.shared.is_shut_down() {
            return Poll::Ready(Err(Error::Shutdown));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Q::Request>) -> Self::Future {
        let span =
            crate::rpc::request_span("outbound", request.peer(), Q::NAME, Some(request.attempt()));
        let (shared, protocol) = (Arc::clone(&self.shared), self.protocol.clone());
        let attempt = request.attempt();
        Box::pin(crate::rpc::instrumented(
            async move {
                let start = std::time::Instant::now();
                let uploads = request.extensions().get::<Uploads<Q::Upload>>().cloned();
                let mut stream = uploads.as_ref().and_then(Uploads::take_stream);
                if uploads.is_some() && stream.is_none() {
                    return Err(Error::Rejected {
                        peer: None,
                        reason: "the uploads were sent by an earlier attempt".to_owned(),
                    });
                }
                let result = open::<Q>(&shared, protocol, &request, &mut stream).await;
                // Failed before the uploads were handed to the stream: a retry sends them.
                if let (Some(uploads), Some(stream)) = (uploads, stream) {
                    *uploads.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
                }
                // A streaming call's round trip is the time to its first item.
                if let Some(metrics) = &shared.metrics {
                    let outcome = result.as_ref().map(|_| ());
                    metrics.outbound(Q::NAME, attempt, start.elapsed(), outcome);
                }
                result
            },
            span,
        ))
    }
}

async fn open<Q: Streaming>(
    shared: &Arc<NodeState>,
    protocol: StreamProtocol,
    request: &Request<Q::Request>,
    uploads: &mut Option<super::UploadStream<Q::Upload>>,
) -> Result<ItemStream<Q::Item>, Error> {
    let peer = request.peer();
    if shared.is_shut_down() {
        return Err(Error::Shutdown);
    }
    // Encode first: a request that is too large fails here, before anything is sent.
    let mut body = Vec::new();
    shared.codec.encode(request.body(), &mut body)?;
    let gap = match request.extensions().get::<ItemTimeout>() {
        Some(ItemTimeout(gap)) => *gap,
        None => Some(shared.config.request_timeout),
    };
    let validate = request
        .extensions()
        .get::<ValidateItems>()
        .map(|_| Q::validate_item as super::Check<Q::Item>);
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        result = tokio::time::timeout(
            shared.config.request_timeout,
            first_item::<Q>(shared, protocol, peer, body, uploads, gap, validate),
        ) => result.unwrap_or(Err(Error::Timeout { peer })),
        _ = shutdown.wait_for(|down| *down) => Err(Error::Shutdown),
    };
    if result.is_err() && shared.is_shut_down() {
        return Err(Error::Shutdown);
    }
    result
}

/// Opens the stream, sends the request, and waits for the handler's first item.
async fn first_item<Q: Streaming>(
    shared: &Arc<NodeState>,
    protocol: StreamProtocol,
    peer: PeerId,
    body: Vec<u8>,
    uploads: &mut Option<super::UploadStream<Q::Upload>>,
    gap: Option<Duration>,
    validate: Option<super::Check<Q::Item>>,
) -> Result<ItemStream<Q::Item>, Error> {
    let permit = Arc::clone(&shared.outbound_streams)
        .acquire_owned()
        .await
        .map_err(|_| Error::Shutdown)?;
    let (stream, gone) = shared
        .control
        .open_watched(peer, protocol.clone())
        .await
        .map_err(|e| map_open_error(e, peer, &protocol))?;
    let config = &shared.config.streams;
    let window = Arc::new(Window::new(config.window()));
    let credit = Arc::new(SendCredit::default());
    let ends = Arc::new(Ends::default());
    let (read_half, write_half) = stream.split();
    let mut writer = Writer::new(write_half, shared.codec);
    writer.put_raw(&body);
    let (items, bytes) = config.window();
    writer.put_control(StreamFrame::Credit(items, bytes));
    if uploads.is_none() {
        writer.put_control(StreamFrame::End);
    }
    let (tx, rx) = mpsc::channel(items as usize + 1);
    let reader = Reader {
        io: BufReader::with_capacity(crate::rpc::BATCH, read_half),
        codec: shared.codec,
        peer,
        credit: Arc::clone(&credit),
        window: Arc::clone(&window),
        ends: Arc::clone(&ends),
        remote_is_handler: true,
        gone,
        protocol: protocol.clone(),
    };
    if let Err(e) = writer.flush().await {
        // A peer that does not speak the protocol shows on the first read (negotiation is
        // optimistic); the read says so where the write only failed.
        let mut probe = [0u8; 1];
        let mut reader = reader;
        let read = tokio::time::timeout(Duration::from_millis(500), reader.io.read(&mut probe));
        if let Ok(Err(read_error)) = read.await {
            let error = map_stream_error(read_error, peer, &protocol);
            if matches!(error, Error::UnsupportedProtocol { .. }) {
                return Err(error);
            }
        }
        return Err(map_stream_error(e, peer, &protocol));
    }
    let reading = tokio::spawn(reader.run::<Q::Item>(tx.clone()));
    let failed_upload = tx.downgrade();
    drop(tx);
    let sending = {
        let (credit, window, ends) = (Arc::clone(&credit), Arc::clone(&window), Arc::clone(&ends));
        let mut uploads = uploads.take();
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            if let Some(uploads) = &mut uploads {
                match send_items(
                    &mut writer,
                    uploads,
                    &credit,
                    &window,
                    &ends,
                    None,
                    &mut shutdown,
                )
                .await
                {
                    Sent::End => writer.put_control(StreamFrame::End),
                    Sent::TooLarge(e) => {
                        if let Some(tx) = failed_upload.upgrade() {
                            let _ = tx.try_send(Err(e.into()));
                        }
                        return;
                    }
                    // An upload that fails is the caller's own stream: it cannot fail.
                    Sent::Failed(_) | Sent::Gone | Sent::Idle | Sent::Shutdown => return,
                }
            }
            send_grants(&mut writer, &window, &ends).await;
            let _ = writer.flush().await;
            let _ = writer.io.close().await;
        })
    };
    let mut items = ItemStream {
        inbox: Inbox::new(
            rx,
            window,
            validate,
            |peer, reason| Error::Protocol {
                peer,
                reason: format!("item refused: {reason}"),
            },
            peer,
        ),
        first: None,
        gap,
        sleep: None,
        tasks: Tasks([Some(reading), Some(sending)]),
        _permit: permit,
        received: Received {
            n: 0,
            protocol: Q::NAME,
            metrics: shared.metrics.clone(),
        },
    };
    // The first item (or the end, or the error that came instead).
    match futures::future::poll_fn(|cx| items.inbox.poll_item(cx)).await {
        Some(Ok(item)) => items.first = Some(item),
        Some(Err(e)) => return Err(e),
        None => {}
    }
    Ok(items)
}

/// The reader and writer tasks of one stream, aborted when the stream is dropped: the
/// libp2p stream is dropped with them, which resets it (the handler sees its caller leave).
struct Tasks([Option<JoinHandle<()>>; 2]);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.iter_mut().flatten() {
            task.abort();
        }
    }
}

/// The items of a streaming call, as they arrive: a [`Stream`] of `Result<T, Error>` that
/// ends cleanly (`None`) when the handler's stream ended, or yields the error that ended it
/// and then ends: the handler's error ([`Error::Failed`], [`Error::Rejected`],
/// [`Error::Busy`]), the peer gone ([`Error::ConnectionClosed`]), the remote node shutting
/// down ([`Error::RemoteShutdown`]), an item over the size limit ([`Error::TooLarge`]), a
/// malformed or refused item ([`Error::Protocol`]), or no item within the item deadline
/// ([`Error::Timeout`]).
///
/// Items are granted back to the handler as they are taken, so reading slowly slows the
/// handler down. Dropping the stream cancels the call.
pub struct ItemStream<T> {
    inbox: Inbox<T>,
    first: Option<T>,
    /// The longest wait for each item after the first.
    gap: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    tasks: Tasks,
    _permit: OwnedSemaphorePermit,
    received: Received,
}

/// Items a caller has received, counted in the node's metrics when its stream is dropped.
struct Received {
    n: u64,
    protocol: &'static str,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(metrics) = &self.metrics {
            metrics.stream_items(self.protocol, "received", self.n);
        }
    }
}

impl<T> std::fmt::Debug for ItemStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemStream")
            .field("peer", &self.inbox.peer)
            .field("done", &self.inbox.done)
            .finish_non_exhaustive()
    }
}

impl<T> ItemStream<T> {
    /// The peer whose handler streams the items.
    pub fn peer(&self) -> PeerId {
        self.inbox.peer
    }

    fn end(&mut self) {
        self.inbox.done = true;
        self.sleep = None;
        for task in self.tasks.0.iter_mut().flatten() {
            task.abort();
        }
    }
}

impl<T> Unpin for ItemStream<T> {}

impl<T> Stream for ItemStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            this.received.n += 1;
            return Poll::Ready(Some(Ok(first)));
        }
        match this.inbox.poll_item(cx) {
            Poll::Ready(Some(Ok(item))) => {
                this.sleep = None;
                this.received.n += 1;
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                // The handler's end ends the call: nothing more is read or sent.
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(gap) = this.gap else {
                    return Poll::Pending;
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let peer = this.inbox.peer;
                        this.end();
                        Poll::Ready(Some(Err(Error::Timeout { peer })))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}
