//! How the primary and the worker talk to other authorities: P2PLane clients under the
//! retry and timeout layers, cancelled once garbage collection makes a message useless.

use std::time::Duration;

use p2plane::{
    Client, Error, Node, Protocol, Request, RetryLayer, RetryPolicy, TimeoutLayer,
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
    let policy = RetryPolicy::exponential(retries)
        .with_base_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .without_budget();
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(TimeoutLayer::new(timeout))
        .service(node.client_for::<Q>())
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
