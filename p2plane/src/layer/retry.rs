//! Retries of transient failures, with exponential backoff and full jitter.
//!
//! The retrying itself is tower's [`Retry`]; this module supplies the [`RetryPolicy`].

use std::time::Duration;

use p2plane_core::{Error, Request};
pub use tower::retry::{Retry, RetryLayer};

/// When and how long to wait before trying a request again.
///
/// A failed attempt is retried only if
/// - the error [`is_transient`](Error::is_transient) (a dial failure, timeout, closed
///   connection, I/O error or `Busy`), and
/// - the request [`is_idempotent`](Request::is_idempotent), or the error says the remote
///   cannot have acted on it ([`Error::remote_may_have_acted`]), and
/// - fewer than `max_retries` retries were made.
///
/// Before retry `n` (from 0) it waits a random time between zero and
/// `min(max_delay, base_delay * 2^n)` ("full jitter"), so clients that failed together do
/// not retry together.
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
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    /// Retries made so far for the request this copy of the policy follows (tower clones
    /// the policy for every request).
    retries: u32,
}

impl RetryPolicy {
    /// Up to `max_retries` retries, waiting up to 100 ms before the first and doubling up to
    /// 10 s.
    pub const fn exponential(max_retries: u32) -> Self {
        Self {
            max_retries,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            retries: 0,
        }
    }

    /// Sets the upper bound of the first wait.
    #[must_use]
    pub const fn with_base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Sets the largest upper bound of any wait.
    #[must_use]
    pub const fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The upper bound of the wait before retry `n` (from 0).
    pub fn backoff_bound(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Whether `error` on a request that `idempotent` describes may be retried at all
    /// (attempts left aside).
    pub fn is_retryable(error: &Error, idempotent: bool) -> bool {
        error.is_transient() && (idempotent || !error.remote_may_have_acted())
    }
}

impl<T, Res> tower::retry::Policy<Request<T>, Res, Error> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request<T>,
        result: &mut Result<Res, Error>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if self.retries >= self.max_retries || !Self::is_retryable(error, request.is_idempotent()) {
            return None;
        }
        let bound = self.backoff_bound(self.retries);
        self.retries += 1;
        let delay = Duration::from_nanos(rand::random_range(
            0..=bound.as_nanos().min(u128::from(u64::MAX)) as u64,
        ));
        tracing::debug!(peer = %request.peer(), retry = self.retries, ?delay, %error, "retrying");
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &Request<T>) -> Option<Request<T>> {
        Some(request.clone())
    }
}
