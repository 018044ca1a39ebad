use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{Either, Ready, ready};
use p2plane_core::{Error, PeerId, Request};
use tokio::time::Instant;
use tower::Layer;
use tower_service::Service;

use super::MAX_TRACKED_PEERS;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct State {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<PeerId, Bucket>>,
}

impl State {
    fn try_take(&self, peer: PeerId) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let refill = |b: &mut Bucket| {
            let earned = now.saturating_duration_since(b.refilled).as_secs_f64() * self.per_second;
            b.tokens = (b.tokens + earned).min(self.capacity);
            b.refilled = now;
        };
        if !buckets.contains_key(&peer) && buckets.len() >= MAX_TRACKED_PEERS {
            // A full bucket says no more than an absent one: forget those.
            buckets.retain(|_, b| {
                refill(b);
                b.tokens < self.capacity
            });
            if buckets.len() >= MAX_TRACKED_PEERS {
                return false;
            }
        }
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.capacity,
            refilled: now,
        });
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Applies [`RateLimit`]; clones share their buckets.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    state: Arc<State>,
}

impl RateLimitLayer {
    /// At most `requests` per `per` from one peer, with bursts of up to `requests` (a token
    /// bucket per peer, refilled continuously).
    pub fn new(requests: u32, per: Duration) -> Self {
        let capacity = f64::from(requests.max(1));
        let per_second = capacity / per.as_secs_f64().max(f64::MIN_POSITIVE);
        Self {
            state: Arc::new(State {
                capacity,
                per_second,
                buckets: Mutex::default(),
            }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// Answers [`Error::Busy`] to a peer that has used up its rate.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> RateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T> Service<Request<T>> for RateLimit<S>
where
    S: Service<Request<T>>,
    S::Error: From<Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<T>) -> Self::Future {
        let peer = request.peer();
        if self.state.try_take(peer) {
            Either::Right(self.inner.call(request))
        } else {
            Either::Left(ready(Err(Error::Busy { peer }.into())))
        }
    }
}
