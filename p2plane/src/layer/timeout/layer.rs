use std::time::Duration;

use tower::Layer;

use super::Timeout;

/// Applies [`Timeout`] to a service: a per-attempt deadline with a typed error.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
    item_timeout: Option<Option<Duration>>,
}

impl TimeoutLayer {
    /// A layer with a deadline of `timeout`.
    pub const fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            item_timeout: None,
        }
    }

    /// Bounds the wait for each item of a stream after the first by `gap` (`None`: no
    /// limit) instead of the deadline; see [`Timeout`].
    #[must_use]
    pub const fn with_item_timeout(mut self, gap: Option<Duration>) -> Self {
        self.item_timeout = Some(gap);
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        match self.item_timeout {
            Some(gap) => Timeout::new(inner, self.timeout).with_item_timeout(gap),
            None => Timeout::new(inner, self.timeout),
        }
    }
}
