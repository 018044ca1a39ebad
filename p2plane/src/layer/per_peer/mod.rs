//! Per-peer limits for servers: at most so many requests in flight, and at most so many per
//! unit of time, from any one peer. Over a limit, a request is answered
//! [`Error::Busy`](p2plane_core::Error::Busy) at once (the handler does not run, and the
//! caller's retry layer backs off); nothing queues.
//!
//! On a streaming handler ([`Node::serve_stream`](crate::Node::serve_stream)),
//! [`InFlightLimitLayer`] counts open streams: a stream holds its peer's place until it ends,
//! not just until the handler has returned it (see [`StreamScope`]). [`RateLimitLayer`]
//! counts streams opened.
//!
//! A layer's state is shared by its clones: give the same layer to several
//! [`serve_protocol`](crate::Node::serve_protocol) stacks to limit a peer across all of
//! them, or separate layers to limit each protocol on its own.
//!
//! ```
//! use p2plane::layer::{InFlightLimitLayer, RateLimitLayer};
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! let per_peer = ServiceBuilder::new()
//!     .layer(InFlightLimitLayer::new(8))                           // 8 at once per peer
//!     .layer(RateLimitLayer::new(100, Duration::from_secs(1)));    // 100 per second per peer
//! # let _ = per_peer;
//! ```

mod in_flight;
mod rate;
mod scope;

pub use in_flight::{InFlightFuture, InFlightLimit, InFlightLimitLayer};
pub use rate::{RateLimit, RateLimitLayer};
pub use scope::StreamScope;

/// The most peers whose state a limiter keeps at once.
pub const MAX_TRACKED_PEERS: usize = 10_000;
