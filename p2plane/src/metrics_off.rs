//! Without the `metrics` feature there are no metrics: `Metrics` has no values, so every
//! `Option<Arc<Metrics>>` is `None` and its methods can never be called.

use std::time::Duration;

use p2plane_core::Error;

/// No metrics: a type with no values.
#[derive(Debug)]
pub(crate) enum Metrics {}

impl Metrics {
    pub(crate) fn outbound(
        &self,
        _protocol: &'static str,
        _attempt: u32,
        _elapsed: Duration,
        _result: Result<(), &Error>,
    ) {
        match *self {}
    }

    pub(crate) fn inbound(&self, _protocol: &'static str, _outcome: &'static str) {
        match *self {}
    }

    pub(crate) fn stream_items(&self, _protocol: &'static str, _direction: &'static str, _n: u64) {
        match *self {}
    }

    #[cfg(feature = "dht")]
    pub(crate) fn dht_query(&self, _query: &'static str, _ok: bool) {
        match *self {}
    }
}
