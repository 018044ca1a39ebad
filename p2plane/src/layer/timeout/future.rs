use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use p2plane_core::{Error, PeerId};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        peer: PeerId,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, sleep: Sleep, peer: PeerId) -> Self {
        Self { inner, sleep, peer }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Error::Timeout { peer: *this.peer }.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
