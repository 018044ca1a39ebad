//! Streaming calls over real connections (TCP and QUIC on 127.0.0.1): items in order and a
//! clean end, uploads, flow control with a stalled consumer, cancellation, errors, limits,
//! and what the tower layers do on streams.

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{Echo, QUIC, TCP, config, first_addr, within};
use futures::{StreamExt as _, stream};
use p2plane::{
    BoxError, Error, ItemStream, Node, NodeConfig, PeerId, Request, Streaming, Uploads,
    layer::{RetryLayer, RetryPolicy, TimeoutLayer, ValidateLayer},
    service_fn,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tower::{Service as _, ServiceBuilder, ServiceExt as _};

/// Counts from `from` up to `to` (exclusive); with `to == u64::MAX`, without end.
struct Count;
impl Streaming for Count {
    const NAME: &'static str = "/p2plane-test/count/1";
    type Request = (u64, u64);
    type Upload = ();
    type Item = u64;
    fn validate_item(item: &u64) -> Result<(), String> {
        if *item == 13 {
            Err("unlucky".to_owned())
        } else {
            Ok(())
        }
    }
}

/// Blobs of the requested size, `n` of them.
struct Blobs;
impl Streaming for Blobs {
    const NAME: &'static str = "/p2plane-test/blobs/1";
    type Request = (u32, usize);
    type Upload = ();
    type Item = Blob;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// Uploads numbers; the handler answers with their running sums.
struct Sums;
impl Streaming for Sums {
    const NAME: &'static str = "/p2plane-test/sums/1";
    type Request = String;
    type Upload = u64;
    type Item = u64;
    fn validate_upload(upload: &u64) -> Result<(), String> {
        if *upload > 1_000_000 {
            Err("too big".to_owned())
        } else {
            Ok(())
        }
    }
}

async fn pair(
    addr: &str,
    server_config: impl FnOnce(&mut NodeConfig),
) -> (Node<Echo>, Node<Echo>, PeerId) {
    let mut cfg = config(addr);
    server_config(&mut cfg);
    let server = Node::<Echo>::new(cfg).await.expect("server starts");
    let client = Node::<Echo>::new(config(addr))
        .await
        .expect("client starts");
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .expect("dial");
    (server, client, peer)
}

fn serve_count(node: &Node<Echo>) {
    node.serve_stream::<Count, _>(service_fn(|req: Request<(u64, u64)>| async move {
        let (from, to) = *req.body();
        Ok::<_, Infallible>(stream::iter(from..to).map(Ok::<_, Infallible>))
    }))
    .unwrap();
}

async fn collect<T>(items: ItemStream<T>) -> Vec<Result<T, Error>> {
    within("the stream's end", items.collect::<Vec<_>>()).await
}

async fn every_item_in_order(addr: &str) {
    let (server, client, peer) = pair(addr, |_| {}).await;
    serve_count(&server);
    let items = within(
        "first item",
        client.stream_client::<Count>().request(peer, (0, 20_000)),
    )
    .await
    .expect("stream opens");
    let got: Vec<u64> = collect(items)
        .await
        .into_iter()
        .map(|item| item.expect("no error"))
        .collect();
    assert_eq!(got, (0..20_000).collect::<Vec<_>>());
    // An empty stream ends cleanly too.
    let items = client
        .stream_client::<Count>()
        .request(peer, (5, 5))
        .await
        .unwrap();
    assert!(collect(items).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_arrive_in_order_and_end_cleanly_over_tcp() {
    every_item_in_order(TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_arrive_in_order_and_end_cleanly_over_quic() {
    every_item_in_order(QUIC).await;
}

fn serve_sums(node: &Node<Echo>) {
    node.serve_stream::<Sums, _>(
        ServiceBuilder::new()
            .layer(ValidateLayer::items_only())
            .service(service_fn(|mut req: Request<String>| async move {
                let uploads = Uploads::<u64>::take(&mut req);
                let sums = uploads.scan(0u64, |sum, upload| {
                    futures::future::ready(Some(upload.map(|n| {
                        *sum += n;
                        *sum
                    })))
                });
                Ok::<_, Error>(sums)
            })),
    )
    .unwrap();
}

async fn uploads_and_answers_interleave(addr: &str) {
    let (server, client, peer) = pair(addr, |c| c.streams.window_items = 8).await;
    serve_sums(&server);
    // Bidirectional: far more uploads than either window, answered one by one.
    let n = 2_000u64;
    let items = within(
        "first sum",
        client
            .stream_client::<Sums>()
            .open(peer, "sum".to_owned(), stream::iter(1..=n)),
    )
    .await
    .expect("stream opens");
    let sums: Vec<u64> = collect(items)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<u64> = (1..=n)
        .scan(0, |s, x| {
            *s += x;
            Some(*s)
        })
        .collect();
    assert_eq!(sums, expected);

    // An upload the handler's validation refuses ends the stream with Rejected.
    let items = client
        .stream_client::<Sums>()
        .open(peer, "sum".to_owned(), stream::iter([1, 2, 5_000_000, 3]))
        .await
        .unwrap();
    let got = collect(items).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].as_ref().unwrap(), &1);
    assert_eq!(got[1].as_ref().unwrap(), &3);
    assert!(
        matches!(&got[2], Err(Error::Rejected { reason, peer: Some(p) }) if reason == "too big" && *p == peer),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_answers_interleave_over_tcp() {
    uploads_and_answers_interleave(TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_answers_interleave_over_quic() {
    uploads_and_answers_interleave(QUIC).await;
}

/// A handler whose stream counts what it produced and says when it reached `mark`.
fn counting_producer(
    node: &Node<Echo>,
    produced: Arc<AtomicU64>,
    reached: Arc<Notify>,
    mark: u64,
    size: usize,
) {
    node.serve_stream::<Blobs, _>(service_fn(move |_: Request<(u32, usize)>| {
        let (produced, reached) = (Arc::clone(&produced), Arc::clone(&reached));
        async move {
            Ok::<_, Infallible>(stream::repeat_with(move || {
                if produced.fetch_add(1, Ordering::SeqCst) + 1 == mark {
                    reached.notify_one();
                }
                Ok::<_, Infallible>(Blob(vec![7; size]))
            }))
        }
    }))
    .unwrap();
}

/// Round trips on the same connection: time for an unbounded producer to run far ahead.
async fn round_trips(client: &Node<Echo>, peer: PeerId, n: usize) {
    for _ in 0..n {
        let items = client
            .stream_client::<Count>()
            .request(peer, (0, 1))
            .await
            .unwrap();
        assert_eq!(collect(items).await.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_stops_the_producer_at_the_window_in_items() {
    let window = 16;
    let (server, client, peer) = pair(TCP, |_| {}).await;
    serve_count(&server);
    let mut client_config = config(TCP);
    client_config.streams.window_items = window as u32;
    let client = {
        drop(client);
        Node::<Echo>::new(client_config).await.unwrap()
    };
    within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let (produced, reached) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
    counting_producer(
        &server,
        Arc::clone(&produced),
        Arc::clone(&reached),
        window,
        64,
    );
    // The call takes the first item; the consumer then stalls.
    let mut items = client
        .stream_client::<Blobs>()
        .request(peer, (0, 0))
        .await
        .unwrap();
    within("the producer to fill the window", reached.notified()).await;
    // Many round trips later, the producer has not made one item more than the window.
    round_trips(&client, peer, 50).await;
    assert_eq!(produced.load(Ordering::SeqCst), window);
    // Reading resumes the producer.
    for _ in 0..10 * window {
        within("an item", items.next()).await.unwrap().unwrap();
    }
    assert!(produced.load(Ordering::SeqCst) >= 10 * window);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_stops_the_producer_at_the_window_in_bytes() {
    let (server, _, _) = pair(QUIC, |_| {}).await;
    serve_count(&server);
    let mut client_config = config(QUIC);
    client_config.streams.window_items = 10_000;
    client_config.streams.window_bytes = 256 * 1024;
    let client = Node::<Echo>::new(client_config).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let size = 60 * 1024;
    // Items are sent while any byte of room is left: 5 items of 60 KiB fit a 256 KiB window.
    let bound = 5;
    let (produced, reached) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
    counting_producer(
        &server,
        Arc::clone(&produced),
        Arc::clone(&reached),
        bound,
        size,
    );
    let mut items = client
        .stream_client::<Blobs>()
        .request(peer, (0, 0))
        .await
        .unwrap();
    within("the producer to fill the window", reached.notified()).await;
    round_trips(&client, peer, 50).await;
    assert_eq!(produced.load(Ordering::SeqCst), bound);
    for _ in 0..100 {
        let blob = within("an item", items.next()).await.unwrap().unwrap();
        assert_eq!(blob.0.len(), size);
    }
}

/// Drops `Notify` when dropped: the handler's stream was dropped.
struct DropSignal(Arc<Notify>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

async fn dropping_the_stream_cancels_the_handler(addr: &str) {
    // The idle limit is far away: only the caller's leaving can end the handler's stream.
    let (server, client, peer) =
        pair(addr, |c| c.streams.idle_timeout = Duration::from_secs(3600)).await;
    let dropped = Arc::new(Notify::new());
    let signal = Arc::clone(&dropped);
    server
        .serve_stream::<Count, _>(service_fn(move |_: Request<(u64, u64)>| {
            let guard = DropSignal(Arc::clone(&signal));
            async move {
                Ok::<_, Infallible>(stream::iter(0..).map(move |n| {
                    let _ = &guard;
                    Ok::<_, Infallible>(n)
                }))
            }
        }))
        .unwrap();
    let mut items = client
        .stream_client::<Count>()
        .request(peer, (0, u64::MAX))
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    drop(items);
    within("the handler to see its caller leave", dropped.notified()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_cancels_the_handler_over_tcp() {
    dropping_the_stream_cancels_the_handler(TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_cancels_the_handler_over_quic() {
    dropping_the_stream_cancels_the_handler(QUIC).await;
}

async fn a_handler_error_ends_the_stream_after_its_items_on(addr: &str) {
    let (server, client, peer) = pair(addr, |_| {}).await;
    server
        .serve_stream::<Count, _>(service_fn(|req: Request<(u64, u64)>| async move {
            let (from, to) = *req.body();
            let items = stream::iter(from..to).map(Ok);
            Ok::<_, BoxError>(items.chain(stream::once(async {
                Err::<u64, BoxError>("disk on fire".into())
            })))
        }))
        .unwrap();
    let got = collect(
        client
            .stream_client::<Count>()
            .request(peer, (0, 5))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.len(), 6);
    assert!(got[..5].iter().all(Result::is_ok));
    assert!(
        matches!(&got[5], Err(Error::Failed { message, .. }) if message == "disk on fire"),
        "{got:?}"
    );
    // An error before any item is the call's error.
    let err = client
        .stream_client::<Count>()
        .request(peer, (0, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_ends_the_stream_after_its_items() {
    for addr in [TCP, QUIC] {
        a_handler_error_ends_the_stream_after_its_items_on(addr).await;
    }
}

/// Serves `Count` with one item, then nothing: the stream stays open until something ends
/// it from outside.
fn serve_one_then_nothing(node: &Node<Echo>) {
    node.serve_stream::<Count, _>(service_fn(|_: Request<(u64, u64)>| async move {
        Ok::<_, Infallible>(stream::iter([Ok(1)]).chain(stream::pending()))
    }))
    .unwrap();
}

/// Opens a `Count` stream as soon as the handler's side has a place for it again (the place
/// of a dropped stream is freed when the handler's side sees the drop).
async fn once_a_place_is_free(client: &Node<Echo>, peer: PeerId) -> ItemStream<u64> {
    within("a freed place", async {
        loop {
            match client.stream_client::<Count>().request(peer, (0, 0)).await {
                Ok(c) => return c,
                Err(Error::Busy { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await
}

/// Opens a `Count` stream and takes its first item.
async fn first_of(client: &Node<Echo>, peer: PeerId) -> ItemStream<u64> {
    let mut items = client
        .stream_client::<Count>()
        .request(peer, (0, 0))
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 1);
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_going_away_mid_stream_is_an_error_not_an_end() {
    for (transport, caller_closes) in [(TCP, true), (TCP, false), (QUIC, true), (QUIC, false)] {
        let (server, client, peer) = pair(transport, |_| {}).await;
        serve_one_then_nothing(&server);
        let mut items = first_of(&client, peer).await;
        // Either side closes the connection: the caller's own disconnect, or the handler's
        // side dropping it (over yamux, that reads as a clean end of stream).
        if caller_closes {
            assert!(client.disconnect(peer).await.unwrap());
        } else {
            assert!(server.disconnect(client.local_peer_id()).await.unwrap());
        }
        let end = within("the stream's error", items.next()).await;
        assert!(
            matches!(end, Some(Err(Error::ConnectionClosed { peer: p })) if p == peer),
            "{transport}, caller closes: {caller_closes}: {end:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutting_down_ends_its_streams_with_a_typed_error() {
    let (server, client, peer) = pair(QUIC, |_| {}).await;
    serve_one_then_nothing(&server);
    let mut items = first_of(&client, peer).await;
    server.shutdown().await;
    let end = within("the stream's error", items.next()).await;
    assert!(
        matches!(end, Some(Err(Error::RemoteShutdown { peer: p })) if p == peer),
        "{end:?}"
    );
}

async fn streams_over_the_per_peer_limit_are_busy_and_run_no_handler_on(addr: &str) {
    let (server, client, peer) = pair(addr, |c| c.streams.max_per_peer = 2).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    server
        .serve_stream::<Count, _>(service_fn(move |_: Request<(u64, u64)>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(stream::iter([Ok(1)]).chain(stream::pending())) }
        }))
        .unwrap();
    let open = client.stream_client::<Count>();
    let a = open.request(peer, (0, 0)).await.unwrap();
    let b = open.request(peer, (0, 0)).await.unwrap();
    let err = open.request(peer, (0, 0)).await.unwrap_err();
    assert!(
        matches!(err, Error::Busy { peer: p } if p == peer),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A place freed is a place taken again.
    drop(a);
    let c = once_a_place_is_free(&client, peer).await;
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_peer_limit_are_busy_and_run_no_handler() {
    for addr in [TCP, QUIC] {
        streams_over_the_per_peer_limit_are_busy_and_run_no_handler_on(addr).await;
    }
}

async fn retry_happens_before_the_first_item_and_never_after_on(addr: &str) {
    let (server, client, peer) = pair(addr, |_| {}).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    server
        .serve_stream::<Count, _>(service_fn(move |req: Request<(u64, u64)>| {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                let (from, _) = *req.body();
                match (from, call) {
                    // Busy at first: the caller's retry layer tries again.
                    (0, 0) => Err(Error::Busy { peer: req.peer() }),
                    (0, _) => Ok(stream::iter([Ok(1), Ok(2)]).boxed()),
                    // Busy after an item: delivered as the stream's error, not retried.
                    _ => Ok(stream::iter([Ok(1), Err(Error::Busy { peer: req.peer() })]).boxed()),
                }
            }
        }))
        .unwrap();
    let mut retrying = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::exponential(3).with_base_delay(Duration::from_millis(1)),
        ))
        .service(client.stream_client::<Count>());
    let items = retrying
        .ready()
        .await
        .unwrap()
        .call(Request::for_stream::<Count>(peer, (0, 0)))
        .await
        .expect("retried past Busy");
    assert_eq!(
        collect(items)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let items = retrying
        .ready()
        .await
        .unwrap()
        .call(Request::for_stream::<Count>(peer, (1, 0)))
        .await
        .unwrap();
    let got = collect(items).await;
    assert!(
        matches!(got[..], [Ok(1), Err(Error::Busy { .. })]),
        "{got:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "no retry after an item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_happens_before_the_first_item_and_never_after() {
    for addr in [TCP, QUIC] {
        retry_happens_before_the_first_item_and_never_after_on(addr).await;
    }
}

async fn the_timeout_layer_bounds_the_first_item_and_each_gap_on(addr: &str) {
    let (server, client, peer) = pair(addr, |_| {}).await;
    server
        .serve_stream::<Count, _>(service_fn(|req: Request<(u64, u64)>| async move {
            let (from, _) = *req.body();
            let items = if from == 0 {
                // No first item.
                stream::pending().boxed()
            } else {
                // A first item, then nothing.
                stream::iter([Ok(from)]).chain(stream::pending()).boxed()
            };
            Ok::<_, Infallible>(items)
        }))
        .unwrap();
    let mut bounded = ServiceBuilder::new()
        .layer(
            TimeoutLayer::new(Duration::from_millis(300))
                .with_item_timeout(Some(Duration::from_millis(200))),
        )
        .service(client.stream_client::<Count>());
    let err = bounded
        .ready()
        .await
        .unwrap()
        .call(Request::for_stream::<Count>(peer, (0, 0)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { peer: p } if p == peer),
        "{err:?}"
    );
    let mut items = bounded
        .ready()
        .await
        .unwrap()
        .call(Request::for_stream::<Count>(peer, (9, 0)))
        .await
        .unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 9);
    let gap = within("the gap's timeout", items.next()).await;
    assert!(matches!(gap, Some(Err(Error::Timeout { .. }))), "{gap:?}");
    assert!(
        items.next().await.is_none(),
        "a stream ends after its error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_layer_bounds_the_first_item_and_each_gap() {
    for addr in [TCP, QUIC] {
        the_timeout_layer_bounds_the_first_item_and_each_gap_on(addr).await;
    }
}

async fn the_validate_layer_checks_the_request_and_each_item_on(addr: &str) {
    let (server, client, peer) = pair(addr, |_| {}).await;
    serve_count(&server);
    let mut validated = ServiceBuilder::new()
        .layer(ValidateLayer::with(|req: &Request<(u64, u64)>| {
            if req.body().0 > req.body().1 {
                Err("backwards".to_owned())
            } else {
                Ok(())
            }
        }))
        .service(client.stream_client::<Count>());
    let err = validated
        .ready()
        .await
        .unwrap()
        .call(Request::for_stream::<Count>(peer, (5, 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { peer: None, .. }), "{err:?}");
    let items = validated
        .ready()
        .await
        .unwrap()
        .call(Request::for_stream::<Count>(peer, (10, 20)))
        .await
        .unwrap();
    let got = collect(items).await;
    assert!(
        matches!(
            got[..],
            [Ok(10), Ok(11), Ok(12), Err(Error::Protocol { .. })]
        ),
        "{got:?}"
    );
    // Without the layer, the same items pass.
    let got = collect(
        client
            .stream_client::<Count>()
            .request(peer, (10, 20))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validate_layer_checks_the_request_and_each_item() {
    for addr in [TCP, QUIC] {
        the_validate_layer_checks_the_request_and_each_item_on(addr).await;
    }
}

async fn oversized_items_and_requests_are_typed_errors_on(addr: &str) {
    let (server, _, _) = pair(addr, |c| c.max_message_size = 64 * 1024).await;
    server
        .serve_stream::<Blobs, _>(service_fn(|req: Request<(u32, usize)>| async move {
            let (n, size) = *req.body();
            Ok::<_, Infallible>(stream::iter(0..n).map(move |_| Ok(Blob(vec![1; size]))))
        }))
        .unwrap();
    // The client accepts items of 16 KiB at most.
    let mut small = config(addr);
    small.max_message_size = 16 * 1024;
    let client = Node::<Echo>::new(small).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let got = collect(
        client
            .stream_client::<Blobs>()
            .request(peer, (3, 1024))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.len(), 3);
    // An item over the caller's limit.
    let err = client
        .stream_client::<Blobs>()
        .request(peer, (3, 32 * 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { response: true, .. }),
        "{err:?}"
    );
    // An item over the handler's own limit: it says why it stopped.
    let mut big = config(addr);
    big.max_message_size = 1 << 20;
    let client = Node::<Echo>::new(big).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let err = client
        .stream_client::<Blobs>()
        .request(peer, (3, 100 * 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. } if message.contains("item not sent")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_items_and_requests_are_typed_errors() {
    for addr in [TCP, QUIC] {
        oversized_items_and_requests_are_typed_errors_on(addr).await;
    }
}

async fn a_peer_without_the_protocol_is_unsupported_on(addr: &str) {
    let (_server, client, peer) = pair(addr, |_| {}).await;
    let err = client
        .stream_client::<Count>()
        .request(peer, (0, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedProtocol { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_protocol_is_unsupported() {
    for addr in [TCP, QUIC] {
        a_peer_without_the_protocol_is_unsupported_on(addr).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_at_once_each_get_their_own_items() {
    let (server, client, peer) = pair(QUIC, |c| c.streams.max_per_peer = 64).await;
    serve_count(&server);
    let calls = (0..64u64).map(|i| {
        let streams = client.stream_client::<Count>();
        async move {
            let items = streams
                .request(peer, (i * 1000, i * 1000 + 500))
                .await
                .unwrap();
            let got: Vec<u64> = items.map(Result::unwrap).collect().await;
            assert_eq!(got, (i * 1000..i * 1000 + 500).collect::<Vec<_>>());
        }
    });
    within("64 streams", futures::future::join_all(calls)).await;
}

/// One frame: the varint length and the CBOR of `value`.
fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    p2plane::codec::FrameBuf::encode(&p2plane::codec::CborCodec::default(), value)
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_ignores_its_credit_is_cut_off_at_the_window() {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use p2plane::codec::StreamFrame;
    let window = 8u32;
    let server = Node::<Echo>::new({
        let mut c = config(TCP);
        c.streams.window_items = window;
        c
    })
    .await
    .unwrap();
    let taken = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&taken);
    server
        .serve_stream::<Sums, _>(service_fn(move |mut req: Request<String>| {
            let counted = Arc::clone(&counted);
            async move {
                let uploads = Uploads::<u64>::take(&mut req);
                Ok::<_, Error>(uploads.map(move |upload| {
                    if upload.is_ok() {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    upload
                }))
            }
        }))
        .unwrap();
    let mut events = server.events();
    let mut attacker = common::attacker::Attacker::connect(first_addr(&server).await).await;
    let mut stream = attacker
        .control
        .open_stream(attacker.node, libp2p::StreamProtocol::new(Sums::NAME))
        .await
        .unwrap();
    // The request, a window for the answers, then a flood of uploads nobody granted.
    let mut bytes = frame(&"sum".to_owned());
    bytes.extend(frame(&StreamFrame::<&()>::Credit(1000, 1 << 20)));
    for n in 0..10_000u64 {
        bytes.extend(frame(&StreamFrame::Item(&n)));
    }
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let _ = within(
        "the node to cut the stream",
        stream.read_to_end(&mut answer),
    )
    .await;
    common::wait_event(&mut events, "the failure reported", |e| {
        matches!(e, p2plane::Event::InboundFailure { protocol, .. } if protocol == Sums::NAME)
            .then_some(())
    })
    .await;
    assert!(
        taken.load(Ordering::SeqCst) <= window,
        "the handler saw only what was granted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_ignores_its_credit_is_a_protocol_error() {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use p2plane::codec::StreamFrame;
    let mut c = config(TCP);
    c.streams.window_items = 4;
    let client = Node::<Echo>::new(c).await.unwrap();
    let mut attacker = common::attacker::Attacker::connect(first_addr(&client).await).await;
    let mut incoming = attacker
        .control
        .accept(libp2p::StreamProtocol::new(Count::NAME))
        .unwrap();
    let attacker_id = within("the attacker's connection", async {
        loop {
            let peers = client.connected_peers().await.unwrap();
            if let Some(p) = peers.first() {
                return *p;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let mut request = [0u8; 64];
            let _ = stream.read(&mut request).await;
            // Our own window, then far more items than the caller granted.
            let mut bytes = frame(&StreamFrame::<&()>::Credit(10, 1000));
            for n in 0..1_000u64 {
                bytes.extend(frame(&StreamFrame::Item(&n)));
            }
            let _ = stream.write_all(&bytes).await;
            let _ = stream.close().await;
        }
    });
    let items = within(
        "first item",
        client.stream_client::<Count>().request(attacker_id, (0, 1)),
    )
    .await
    .unwrap();
    let got = collect(items).await;
    assert!(
        got.len() <= 5,
        "at most the window, then the error: {got:?}"
    );
    assert!(
        matches!(got.last(), Some(Err(Error::Protocol { reason, .. })) if reason.contains("beyond the granted")),
        "{got:?}"
    );
}

async fn the_in_flight_limit_counts_open_streams_not_handler_calls_on(addr: &str) {
    use p2plane::layer::InFlightLimitLayer;
    let (server, client, peer) = pair(addr, |_| {}).await;
    server
        .serve_stream::<Count, _>(
            ServiceBuilder::new()
                .layer(InFlightLimitLayer::new(2))
                .service(service_fn(|_: Request<(u64, u64)>| async move {
                    Ok::<_, Error>(stream::iter([Ok(1)]).chain(stream::pending()))
                })),
        )
        .unwrap();
    // Both handlers have returned their streams; the streams are still open.
    let a = first_of(&client, peer).await;
    let b = first_of(&client, peer).await;
    let err = client
        .stream_client::<Count>()
        .request(peer, (0, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    // A stream that ends frees its place.
    drop(a);
    let c = once_a_place_is_free(&client, peer).await;
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_counts_open_streams_not_handler_calls() {
    for addr in [TCP, QUIC] {
        the_in_flight_limit_counts_open_streams_not_handler_calls_on(addr).await;
    }
}

/// Uploads numbers; the handler answers once, with their total, after the last upload.
struct Total;
impl Streaming for Total {
    const NAME: &'static str = "/p2plane-test/total/1";
    type Request = ();
    type Upload = u64;
    type Item = u64;
}

async fn an_upload_is_read_whole_before_the_one_answer(addr: &str) {
    let (server, client, peer) = pair(addr, |c| c.streams.window_items = 8).await;
    server
        .serve_stream::<Total, _>(service_fn(|mut req: Request<()>| async move {
            // The handler reads every upload before it returns its stream: the caller's
            // window for uploads is granted before the handler runs, so this cannot wait on
            // the answer.
            let total = Uploads::<u64>::take(&mut req)
                .fold(Ok(0u64), |sum, n| async move { Ok::<_, Error>(sum? + n?) })
                .await?;
            Ok::<_, Error>(stream::once(async move { Ok(total) }))
        }))
        .unwrap();
    let items = within(
        "the total",
        client
            .stream_client::<Total>()
            .open(peer, (), stream::iter(1..=10_000u64)),
    )
    .await
    .unwrap();
    let got: Vec<u64> = collect(items)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [10_000 * 10_001 / 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_read_whole_before_the_one_answer_over_tcp_and_quic() {
    for addr in [TCP, QUIC] {
        an_upload_is_read_whole_before_the_one_answer(addr).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_deadline_moves_on_with_each_upload_it_takes() {
    let (server, client, peer) =
        pair(TCP, |c| c.inbound_timeout = Duration::from_millis(300)).await;
    server
        .serve_stream::<Total, _>(service_fn(|mut req: Request<()>| async move {
            let total = Uploads::<u64>::take(&mut req)
                .fold(Ok(0u64), |sum, n| async move { Ok::<_, Error>(sum? + n?) })
                .await?;
            Ok::<_, Error>(stream::once(async move { Ok(total) }))
        }))
        .unwrap();
    // Ten uploads, one every 100 ms: a second in all, three times the handler's deadline,
    // but never 300 ms without one.
    let slow = stream::iter(1..=10u64).then(|n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n
    });
    let items = within(
        "the total",
        client.stream_client::<Total>().open(peer, (), slow),
    )
    .await
    .unwrap();
    let got: Vec<u64> = collect(items)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [55]);
    // A caller that sends nothing for longer than the deadline: the handler is cut off.
    let stalled = stream::iter([1u64]).chain(stream::pending());
    let err = within(
        "the handler's timeout",
        client.stream_client::<Total>().open(peer, (), stalled),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message, .. } if message.contains("timed out")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_which_nothing_moves_is_closed_at_the_idle_limit() {
    let (server, _, _) = pair(TCP, |c| c.streams.idle_timeout = Duration::from_millis(300)).await;
    serve_count(&server);
    let mut small = config(TCP);
    small.streams.window_items = 4;
    let client = Node::<Echo>::new(small).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let mut events = server.events();
    // The caller takes the first item, then neither reads nor grants room: the handler
    // waits on credit with items left to send.
    let mut items = client
        .stream_client::<Count>()
        .request(peer, (0, 1_000))
        .await
        .unwrap();
    common::wait_event(&mut events, "the idle stream's report", |e| {
        matches!(
            e,
            p2plane::Event::InboundFailure { protocol, error: p2plane::InboundError::WriteTimeout, .. }
                if protocol == Count::NAME
        )
        .then_some(())
    })
    .await;
    // What was granted still arrives; then the cut stream is an error, never a clean end.
    let got = within("the stream's end", async {
        let mut got = Vec::new();
        while let Some(item) = items.next().await {
            got.push(item);
        }
        got
    })
    .await;
    let delivered = got.iter().filter(|item| item.is_ok()).count();
    assert!(delivered <= 4, "at most the window: {got:?}");
    assert!(
        matches!(got.last(), Some(Err(Error::ConnectionClosed { .. }))),
        "{got:?}"
    );
}
