//! P2PLane's vocabulary: the traits and types every other P2PLane crate speaks.
//!
//! This crate is small and stable on purpose. It has no networking and no runtime; a
//! third-party peer store or codec depends on it alone.
//!
//! | item | what it is |
//! |---|---|
//! | [`Message`] | a type that is both request and response on one protocol (the common case) |
//! | [`Protocol`] | a protocol with distinct request and response types |
//! | [`Streaming`] | a protocol whose answer (and optionally whose request) is a stream of items |
//! | [`Request`] | the cheap-to-clone envelope a client sends: peer, protocol, body |
//! | [`Codec`] | turns values into bytes and back, with a size limit |
//! | [`PeerStore`] | where a node keeps what it knows about peers |
//! | [`Error`] | what can go wrong with a request, with [`Error::is_transient`] |
//!
//! ```
//! use p2plane_core::{Message, Protocol, Request};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Ping(u64);
//!
//! impl Message for Ping {
//!     const PROTOCOL: &'static str = "/ping-example/1.0.0";
//! }
//!
//! let peer = p2plane_core::PeerId::random();
//! let request = Request::new(peer, Ping(7));
//! assert_eq!(request.protocol(), "/ping-example/1.0.0");
//! assert_eq!(<Ping as Protocol>::NAME, Ping(0).protocol_id());
//! ```

mod codec;
mod error;
mod message;
mod peer_store;
mod request;

pub use codec::{Codec, CodecError};
pub use error::Error;
pub use http::Extensions;
pub use libp2p_identity::PeerId;
pub use message::{Message, Payload, Protocol, Streaming, Validate, is_valid_protocol_name};
pub use multiaddr::Multiaddr;
pub use peer_store::{DialOutcome, PeerRecord, PeerStore, PeerStoreError};
pub use request::Request;
