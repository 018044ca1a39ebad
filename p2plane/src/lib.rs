//! P2PLane: join a peer-to-peer network in a few lines, then talk to peers with typed
//! messages.
//!
//! A [`Node`] owns a libp2p swarm (TCP+Noise+Yamux, QUIC, or in-process memory
//! connections, with identify and ping) in a task of its own. Its handles are cheap to
//! clone: [`Node::client`] gives a [`Client`], a [`tower::Service`] that sends typed
//! requests; [`Node::serve`] installs a handler, itself any `tower::Service`.
//!
//! ```
//! use p2plane::{Message, Node, NodeConfig, Request, service_fn};
//! use serde::{Deserialize, Serialize};
//! use std::convert::Infallible;
//! use tower::{Service, ServiceExt};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct MyMessage(String);
//!
//! impl Message for MyMessage {
//!     const PROTOCOL: &'static str = "/my-app/1.0.0";
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = || NodeConfig { listen_addr: "/ip4/127.0.0.1/tcp/0".parse().unwrap(), ..Default::default() };
//! let server = Node::<MyMessage>::new(config()).await?;
//! server.serve(service_fn(|req: Request<MyMessage>| async move {
//!     Ok::<_, Infallible>(MyMessage(format!("you said {}", req.body().0)))
//! }))?;
//!
//! let node = Node::<MyMessage>::new(config()).await?;
//! let peer = node.dial(server.listen_addrs().await?[0].clone()).await?;
//! let mut client = node.client();
//! let reply = client.ready().await?.call(Request::new(peer, MyMessage("hi".into()))).await?;
//! assert_eq!(reply.0, "you said hi");
//! # Ok(())
//! # }
//! ```
//!
//! | capability | where | on by default |
//! |---|---|---|
//! | typed requests over TCP, QUIC, memory | [`Node::client`], [`Node::serve`] | yes |
//! | retry, timeout, validation, per-peer limits | [`layer`] | composed by you |
//! | peer store: memory or persistent (redb) | [`NodeConfig::peer_store`], [`peers`] | memory |
//! | Kademlia discovery, records, providers | [`Node::dht`], [`DhtConfig`] | yes |
//! | publish/subscribe (gossipsub) | [`Node::subscribe`], [`pubsub`] | no: [`NodeConfig::pubsub`] |
//! | Prometheus metrics | [`NodeConfig::metrics_addr`] | no |
//! | closed groups (allow-list) | [`NodeConfig::allowed_peers`] | no |
//! | tracing spans per request and DHT query | `p2plane.request`, `p2plane.dht` | with any subscriber |
//!
//! ## Feature flags
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `tcp` | TCP with Noise and Yamux | yes |
//! | `quic` | QUIC (`/udp/../quic-v1`) | yes |
//! | `websocket` | WebSocket over TCP (`/tcp/../ws`), for HTTP-only firewalls and js-libp2p peers | yes |
//! | `relay` | reachability (AutoNAT v2), relays and hole punching: `NodeConfig::reach`, [`ReachConfig`] | yes |
//! | `dht` | Kademlia: `Node::dht`, `NodeConfig::dht`, lookups of unknown peers | yes |
//! | `pubsub` | gossipsub: `Node::subscribe`, `Node::publish`, `NodeConfig::pubsub` | yes |
//! | `mdns` | local discovery: `NodeConfig::mdns` | yes |
//! | `metrics` | a Prometheus endpoint: `NodeConfig::metrics_addr` | yes |
//! | `redb` | the persistent peer store `peers::RedbPeerStore` | yes |
//!
//! The in-process memory transport, typed request/response with its tower layers, the
//! memory peer store, identify and ping are always there: `default-features = false,
//! features = ["tcp"]` builds a node that does request/response over TCP alone.
//!
//! Crates: [`p2plane_core`] (vocabulary), [`p2plane_codec`] (wire format),
//! [`p2plane_transport`] (keys and transports), [`p2plane_peers`] (peer stores),
//! [`p2plane_dht`] (Kademlia configuration); this crate re-exports what an application
//! needs.

mod budget;
mod command;
mod config;
mod delayed;
#[cfg(feature = "dht")]
mod dht;
mod error;
mod event;
mod event_loop;
mod gate;
pub mod layer;
#[cfg_attr(not(feature = "metrics"), path = "metrics_off.rs")]
mod metrics;
mod node;
mod node_state;
#[cfg(feature = "relay")]
mod observed;
mod peer_table;
#[cfg(feature = "pubsub")]
pub mod pubsub;
#[cfg(feature = "relay")]
mod reach;
mod rpc;
mod streams;
// Nothing is heard of without the DHT or mDNS.
#[cfg_attr(not(any(feature = "dht", feature = "mdns")), allow(dead_code))]
mod unverified;

pub use config::{Identity, NodeConfig};
#[cfg(feature = "dht")]
pub use dht::{Dht, DhtConfig, DhtError, DhtMode, FoundPeer, Quorum, StoreStats};
pub use error::NodeError;
pub use event::{Event, Events, InboundError};
pub use layer::{RetryLayer, RetryPolicy, TimeoutLayer, ValidateLayer};
pub use node::Node;
pub use p2plane_codec as codec;
pub use p2plane_core::{
    self as core, Codec, CodecError, Error, Message, Multiaddr, PeerId, PeerStore, Protocol,
    Request, Streaming, Validate,
};
pub use p2plane_peers as peers;
pub use p2plane_transport::{self as transport, Limits, TransportConfig};
pub use peer_table::ConnectedPeers;
#[cfg(feature = "pubsub")]
pub use pubsub::{PubsubConfig, PubsubError, Subscription, Topic};
#[cfg(feature = "relay")]
pub use reach::{ReachConfig, RelayServerConfig};
pub use rpc::{Client, ItemStream, StreamClient, StreamConfig, UploadStream, Uploads};
pub use tower::{self, BoxError, service_fn};

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
