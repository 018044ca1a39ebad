//! Retries of transient failures: exponential backoff with full jitter, a retry budget, and
//! optional failover to another peer.
//!
//! The retrying itself is tower's [`Retry`]; this module supplies the [`RetryPolicy`].

use std::{fmt, sync::Arc, time::Duration};

use p2plane_core::{Error, PeerId, Request};
pub use tower::retry::{
    Retry, RetryLayer,
    budget::{Budget, TpsBudget},
};

/// Picks another peer to send a request to after a failure (failover).
///
/// [`Node::peer_selector`](crate::Node::peer_selector) gives one that picks among connected
/// peers that speak the protocol; a closure `Fn(&str, &[PeerId]) -> Option<PeerId>` is one
/// too.
pub trait PeerSelector: Send + Sync + 'static {
    /// A peer that can answer requests on `protocol`, none of those in `exclude` (the peers
    /// this request already failed at), or `None` to stay with the current peer.
    fn select(&self, protocol: &str, exclude: &[PeerId]) -> Option<PeerId>;
}

impl<F> PeerSelector for F
where
    F: Fn(&str, &[PeerId]) -> Option<PeerId> + Send + Sync + 'static,
{
    fn select(&self, protocol: &str, exclude: &[PeerId]) -> Option<PeerId> {
        self(protocol, exclude)
    }
}

/// When, how long and where to try a request again.
///
/// A failed attempt is retried only if
/// - the error [`is_transient`](Error::is_transient) (a dial failure, timeout, closed
///   connection, I/O error or `Busy`), and
/// - the request [`is_idempotent`](Request::is_idempotent), or the error says the remote
///   cannot have acted on it ([`Error::remote_may_have_acted`]), and
/// - fewer than `max_retries` retries were made for it, and
/// - the retry budget has room: retries are limited to a share of the requests that succeed
///   (20 % by default, plus 10 retries per second), so when a peer is down its callers do
///   not multiply the load with retries. The budget is shared by every clone of the
///   policy, and so by every request through one layer.
///
/// Before retry `n` (from 0) it waits a random time between zero and
/// `min(max_delay, base_delay * 2^n)` ("full jitter"), so clients that failed together do
/// not retry together. With failover set, a retry goes to another peer from the
/// [`PeerSelector`] when it has one, without waiting.
///
/// ```
/// use p2plane::layer::{RetryLayer, RetryPolicy};
/// use std::time::Duration;
///
/// let layer = RetryLayer::new(
///     RetryPolicy::exponential(3).with_base_delay(Duration::from_millis(20)),
/// );
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    budget: Option<Arc<TpsBudget>>,
    failover: Option<Arc<dyn PeerSelector>>,
    /// Retries made so far for the request this copy follows (tower clones the policy for
    /// every request).
    retries: u32,
    /// Peers this request failed at, when failing over.
    tried: Vec<PeerId>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_retries", &self.max_retries)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("budget", &self.budget.is_some())
            .field("failover", &self.failover.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// Up to `max_retries` retries, waiting up to 100 ms before the first and doubling up to
    /// 10 s, under the default budget (20 % of successes plus 10 per second, over 10 s).
    pub fn exponential(max_retries: u32) -> Self {
        Self {
            max_retries,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            budget: Some(Arc::new(TpsBudget::default())),
            failover: None,
            retries: 0,
            tried: Vec::new(),
        }
    }

    /// Sets the upper bound of the first wait.
    #[must_use]
    pub fn with_base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Sets the largest upper bound of any wait.
    #[must_use]
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Uses `budget` (shared with every clone of this policy) instead of the default.
    #[must_use]
    pub fn with_budget(mut self, budget: TpsBudget) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// Retries without a budget: only `max_retries` limits them.
    #[must_use]
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Retries at another peer from `selector` when it has one.
    #[must_use]
    pub fn with_failover(mut self, selector: impl PeerSelector) -> Self {
        self.failover = Some(Arc::new(selector));
        self
    }

    /// The upper bound of the wait before retry `n` (from 0).
    pub fn backoff_bound(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Whether `error` on a request that `idempotent` describes may be retried at all
    /// (attempts and budget aside).
    pub fn is_retryable(error: &Error, idempotent: bool) -> bool {
        error.is_transient() && (idempotent || !error.remote_may_have_acted())
    }

    fn jittered(&self, n: u32) -> Duration {
        let bound = self.backoff_bound(n).as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(rand::random_range(0..=bound))
    }
}

impl<T, Res> tower::retry::Policy<Request<T>, Res, Error> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request<T>,
        result: &mut Result<Res, Error>,
    ) -> Option<Self::Future> {
        let Err(error) = result else {
            if let Some(budget) = &self.budget {
                budget.deposit();
            }
            return None;
        };
        if self.retries >= self.max_retries || !Self::is_retryable(error, request.is_idempotent()) {
            return None;
        }
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            tracing::debug!(peer = %request.peer(), %error, "retry budget exhausted");
            return None;
        }
        let failed_at = request.peer();
        let mut delay = self.jittered(self.retries);
        self.retries += 1;
        request.next_attempt();
        if let Some(selector) = &self.failover {
            self.tried.push(failed_at);
            if let Some(next) = selector.select(request.protocol(), &self.tried) {
                *request = request.clone().with_peer(next);
                delay = Duration::ZERO;
            }
        }
        tracing::debug!(peer = %failed_at, next = %request.peer(), retry = self.retries, ?delay, %error, "retrying");
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &Request<T>) -> Option<Request<T>> {
        Some(request.clone())
    }
}
