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
//!   │ │ │ │ Client        one stream per request on the connection│  │  │  │
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
//! On the server side, the same [`ValidateLayer`] wraps the handler; a rejection travels
//! back to the caller as [`Error::Rejected`](crate::Error::Rejected), and the handler
//! does not run.

mod retry;
pub mod timeout;
pub mod validate;

pub use retry::{Retry, RetryLayer, RetryPolicy};
pub use timeout::{Timeout, TimeoutLayer};
pub use validate::{ByBody, Validate, ValidateLayer, Validator};
