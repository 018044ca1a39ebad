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
/// The inner service's error type must accept [`Error`]: `p2plane::Error` itself (a client)
/// or [`BoxError`](crate::BoxError) (a handler, typically).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a deadline of `timeout`.
    pub const fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
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

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let peer = request.peer();
        ResponseFuture::new(
            self.inner.call(request),
            tokio::time::sleep(self.timeout),
            peer,
        )
    }
}
