//! A deadline per attempt, failing with [`Error::Timeout`] for the request's peer.

mod future;
mod layer;

use std::{
    task::{Context, Poll},
    time::Duration,
};

pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
use p2plane_core::{Error, Request};
use tower_service::Service;

/// Fails a request with [`Error::Timeout`] when the inner service has not answered within
/// the deadline. Under a retry layer the deadline applies to each attempt.
///
/// On a [`StreamClient`](crate::StreamClient), whose answer is the handler's first item, the
/// deadline bounds the time to the first item; the wait for each later item is bounded by
/// [`Timeout::with_item_timeout`] (by default the same deadline), which the layer leaves in
/// the request as an [`ItemTimeout`] for the client below it. On a handler, the deadline
/// bounds the handler's call, until it returns its stream.
///
/// The inner service's error type must accept [`Error`]: `p2plane::Error` itself (a client)
/// or [`BoxError`](crate::BoxError) (a handler, typically).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    item_timeout: Option<Duration>,
}

/// The longest a streaming call's caller waits for each item after the first (`None`: no
/// limit), left in a request's [extensions](Request::extensions) by [`Timeout`] or by the
/// caller. Without it, a [`StreamClient`](crate::StreamClient) waits the node's
/// `request_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemTimeout(pub Option<Duration>);

impl<S> Timeout<S> {
    /// Wraps `inner` with a deadline of `timeout`.
    pub const fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            item_timeout: None,
        }
    }

    /// Bounds the wait for each item of a stream after the first by `gap` (`None`: no
    /// limit) instead of the deadline. A request that already carries an [`ItemTimeout`]
    /// keeps it.
    #[must_use]
    pub const fn with_item_timeout(mut self, gap: Option<Duration>) -> Self {
        self.item_timeout = Some(match gap {
            Some(gap) => gap,
            None => Duration::MAX,
        });
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T> Service<Request<T>> for Timeout<S>
where
    S: Service<Request<T>>,
    S::Error: From<Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        let peer = request.peer();
        let extensions = request.extensions_mut();
        if extensions.get::<ItemTimeout>().is_none() {
            let gap = self.item_timeout.unwrap_or(self.timeout);
            extensions.insert(ItemTimeout((gap != Duration::MAX).then_some(gap)));
        }
        ResponseFuture::new(
            self.inner.call(request),
            tokio::time::sleep(self.timeout),
            peer,
        )
    }
}
