//! How the primary and the worker talk to other authorities: P2PLane clients under the
//! retry and timeout layers, cancelled once garbage collection makes a message useless.

use std::time::Duration;

use futures::StreamExt as _;
use p2plane::{
    Client, Error, Node, Protocol, Request, RetryLayer, RetryPolicy, StreamClient, Streaming,
    TimeoutLayer,
    layer::{Retry, Timeout},
    tower::{ServiceBuilder, ServiceExt},
};
use tokio::sync::watch;

use crate::types::Round;

/// A client that retries transient failures (unreachable peer, timeout, closed connection,
/// `Busy`) with jittered exponential backoff, as the reference's `ReliableSender` keeps
/// resending until acknowledged.
pub(crate) type Reliable<Q> = Retry<RetryPolicy, Timeout<Client<Q>>>;

/// A [`Reliable`] client for protocol `Q` on `node`: each attempt times out after
/// `timeout`; up to `retries` retries, backing off from 50 ms to 1 s.
pub(crate) fn reliable<P: Protocol, Q: Protocol>(
    node: &Node<P>,
    timeout: Duration,
    retries: u32,
) -> Reliable<Q> {
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy(retries)))
        .layer(TimeoutLayer::new(timeout))
        .service(node.client_for::<Q>())
}

/// Up to `retries` retries, backing off from 50 ms to 1 s.
fn policy(retries: u32) -> RetryPolicy {
    RetryPolicy::exponential(retries)
        .with_base_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .without_budget()
}

/// A [`Reliable`] client of a streaming protocol: retried until the first item arrives (never
/// after), each attempt's first item and each later item within the timeout.
pub(crate) type ReliableStream<Q> = Retry<RetryPolicy, Timeout<StreamClient<Q>>>;

/// A [`ReliableStream`] client for streaming protocol `Q` on `node`.
pub(crate) fn reliable_stream<P: Protocol, Q: Streaming>(
    node: &Node<P>,
    timeout: Duration,
    retries: u32,
) -> ReliableStream<Q> {
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy(retries)))
        .layer(TimeoutLayer::new(timeout))
        .service(node.stream_client::<Q>())
}

/// Opens a stream with `request` through `client` and hands each item to `item` as it
/// arrives, until the stream ends or fails; gives up once the garbage-collection round passes
/// `round`. Returns how many items arrived.
pub(crate) async fn stream_until_gc<Q: Streaming>(
    client: ReliableStream<Q>,
    request: Request<Q::Request>,
    mut gc: watch::Receiver<Round>,
    round: Round,
    mut item: impl FnMut(Q::Item),
) -> usize {
    let consume = async {
        let Ok(mut items) = client.oneshot(request).await else {
            return 0;
        };
        let mut n = 0;
        while let Some(Ok(next)) = items.next().await {
            item(next);
            n += 1;
        }
        n
    };
    tokio::select! {
        n = consume => n,
        _ = gc.wait_for(|gc_round| *gc_round > round) => 0,
    }
}

/// Sends `request` through `client`, giving up (with `None`) once the garbage-collection
/// round passes `round`: the answer would be useless by then.
pub(crate) async fn send_until_gc<Q: Protocol>(
    client: Reliable<Q>,
    request: Request<Q::Request>,
    mut gc: watch::Receiver<Round>,
    round: Round,
) -> Option<Result<Q::Response, Error>> {
    tokio::select! {
        result = client.oneshot(request) => Some(result),
        _ = gc.wait_for(|gc_round| *gc_round > round) => None,
    }
}
