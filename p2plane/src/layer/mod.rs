//! Middleware for clients and servers, as tower layers.
//!
//! A [`Client`](crate::Client) is a `tower::Service`, and so is a server's handler: wrap
//! either with `tower::ServiceBuilder`. The recommended client stack, outermost first:
//!
//! ```text
//!            request                                   response / typed Error
//!               │                                               ▲
//!   ┌───────────▼───────────────────────────────────────────────┴──────────┐
//!   │ ValidateLayer   refuses a bad request before anything else happens   │
//!   │ ┌─────────────────────────────────────────────────────────────────┐  │
//!   │ │ RetryLayer    repeats transient failures, with backoff          │  │
//!   │ │ ┌────────────────────────────────────────────────────────────┐  │  │
//!   │ │ │ TimeoutLayer  bounds each attempt                          │  │  │
//!   │ │ │ ┌───────────────────────────────────────────────────────┐  │  │  │
//!   │ │ │ │ Client        a shared stream per peer and protocol   │  │  │  │
//!   │ │ │ └───────────────────────────────────────────────────────┘  │  │  │
//!   │ │ └────────────────────────────────────────────────────────────┘  │  │
//!   │ └─────────────────────────────────────────────────────────────────┘  │
//!   └──────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Why this order:
//! - **validate outside retry**: an invalid request fails once, at once, and is never sent;
//!   retrying it could not help.
//! - **retry outside timeout**: the deadline applies to each attempt, so a slow first
//!   attempt becomes a retry instead of using up the whole budget; a timeout is transient,
//!   so the retry layer sees it.
//! - **timeout inside**: its typed [`Error::Timeout`](crate::Error::Timeout) names the
//!   peer, and retries of non-idempotent requests are refused after it, since the remote
//!   may have acted.
//!
//! ```
//! use p2plane::layer::{RetryLayer, RetryPolicy, TimeoutLayer, ValidateLayer};
//! use p2plane::{Message, Node, NodeConfig, Request, service_fn};
//! use serde::{Deserialize, Serialize};
//! use std::{convert::Infallible, time::Duration};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Greeting(String);
//! impl Message for Greeting {
//!     const PROTOCOL: &'static str = "/greet/1.0.0";
//!     fn validate(&self) -> Result<(), String> {
//!         if self.0.is_empty() { Err("empty greeting".into()) } else { Ok(()) }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let config = || NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap());
//! # let server = Node::<Greeting>::new(config()).await?;
//! # server.serve(service_fn(|r: Request<Greeting>| async move { Ok::<_, Infallible>(r.into_body()) }))?;
//! # let node = Node::<Greeting>::new(config()).await?;
//! # let peer = node.dial(server.listen_addrs().await?[0].clone()).await?;
//! let mut client = ServiceBuilder::new()
//!     .layer(ValidateLayer::new())
//!     .layer(RetryLayer::new(RetryPolicy::exponential(3)))
//!     .layer(TimeoutLayer::new(Duration::from_secs(5)))
//!     .service(node.client());
//!
//! let reply = client.ready().await?.call(Request::new(peer, Greeting("hi".into()))).await?;
//! assert_eq!(reply.0, "hi");
//!
//! // Refused locally, never sent:
//! let err = client.ready().await?.call(Request::new(peer, Greeting(String::new()))).await;
//! assert!(matches!(err, Err(p2plane::Error::Rejected { peer: None, .. })));
//! # Ok(())
//! # }
//! ```
//!
//! ## Server side
//!
//! A handler is a `tower::Service` too, so the same layers wrap it, plus the per-peer limits
//! in [`per_peer`]. The handler's error type must accept [`Error`](crate::Error) (use
//! `p2plane::Error` or [`BoxError`](crate::BoxError)). What the caller sees:
//!
//! | layer on the handler | caller gets |
//! |---|---|
//! | [`ValidateLayer`] refuses | [`Error::Rejected`](crate::Error::Rejected) with the reason; the handler did not run |
//! | [`InFlightLimitLayer`] / [`RateLimitLayer`] over the limit | [`Error::Busy`](crate::Error::Busy) (transient: a retry layer backs off) |
//! | [`TimeoutLayer`] fires | [`Error::Failed`](crate::Error::Failed) ("handler timed out"): it may have acted |
//! | any other handler error | [`Error::Failed`](crate::Error::Failed) with its text |
//!
//! A stack passed to [`Node::serve_protocol`](crate::Node::serve_protocol) applies to that
//! protocol; a layer whose clone is given to several stacks shares its state across them,
//! so a per-peer limit can cover all inbound traffic of the node.

pub mod per_peer;
mod retry;
pub mod timeout;
pub mod validate;

pub use per_peer::{InFlightLimitLayer, RateLimitLayer, StreamScope};
pub use retry::{Budget, PeerSelector, Retry, RetryLayer, RetryPolicy, TpsBudget};
pub use timeout::{ItemTimeout, Timeout, TimeoutLayer};
pub use validate::{ByBody, ItemsOnly, Validate, ValidateItems, ValidateLayer, Validator};
