use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use p2plane_core::{Error, PeerId, Request};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

#[derive(Debug)]
struct State {
    max_per_peer: usize,
    in_flight: Mutex<HashMap<PeerId, usize>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, usize>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_enter(self: &Arc<Self>, peer: PeerId) -> Option<Guard> {
        let mut map = self.lock();
        let count = map.entry(peer).or_insert(0);
        if *count >= self.max_per_peer {
            return None;
        }
        *count += 1;
        Some(Guard {
            state: Arc::clone(self),
            peer,
        })
    }
}

/// Releases a peer's slot when the request ends, however it ends.
#[derive(Debug)]
struct Guard {
    state: Arc<State>,
    peer: PeerId,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut map = self.state.lock();
        if let Some(count) = map.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Applies [`InFlightLimit`]; clones share their counts.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    state: Arc<State>,
}

impl InFlightLimitLayer {
    /// At most `max_per_peer` requests of one peer in flight at once (at least 1).
    pub fn new(max_per_peer: usize) -> Self {
        Self {
            state: Arc::new(State {
                max_per_peer: max_per_peer.max(1),
                in_flight: Mutex::default(),
            }),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> InFlightLimit<S> {
        InFlightLimit {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// Answers [`Error::Busy`] to a peer that already has the maximum of requests in flight.
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> InFlightLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T> Service<Request<T>> for InFlightLimit<S>
where
    S: Service<Request<T>>,
    S::Error: From<Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, InFlightFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let peer = request.peer();
        match self.state.try_enter(peer) {
            Some(guard) => {
                // A served stream keeps the place until it ends.
                let guard = match request.extensions().get::<super::StreamScope>() {
                    Some(scope) => {
                        scope.keep(guard);
                        None
                    }
                    None => Some(guard),
                };
                Either::Right(InFlightFuture {
                    inner: self.inner.call(request),
                    _guard: guard,
                })
            }
            None => Either::Left(ready(Err(Error::Busy { peer }.into()))),
        }
    }
}

pin_project! {
    /// The response future of [`InFlightLimit`]: holds the peer's slot until it completes or
    /// is dropped (a served stream's slot is held by its [`StreamScope`](super::StreamScope)
    /// instead).
    #[derive(Debug)]
    pub struct InFlightFuture<F> {
        #[pin]
        inner: F,
        _guard: Option<Guard>,
    }
}

impl<F: Future> Future for InFlightFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}
