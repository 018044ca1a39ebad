//! Typed publish/subscribe: gossipsub behind a [`Topic`] trait.
//!
//! A topic names itself and its message type; messages travel CBOR-encoded and signed by
//! their author. Each node checks every message it receives with the message type's
//! [`Validate`] impl (the same check [`ValidateLayer`](crate::ValidateLayer) runs on
//! requests) *before* forwarding it: a message that fails is not delivered, not forwarded,
//! and counts against the peer that sent it (gossipsub's peer scoring). Checks run in tasks
//! of their own, never in the event loop, at most [`MAX_VALIDATING`] at once; a message
//! arriving beyond that is dropped unforwarded (without penalty).

mod command;
mod state;
mod subscription;

use std::time::Duration;

use libp2p::{gossipsub, identity::Keypair};
use p2plane_core::{CodecError, Payload, PeerId, Validate};

pub(crate) use command::PubsubCommand;
pub(crate) use state::PubsubState;
pub use subscription::Subscription;
pub(crate) use subscription::{mesh_peers, publish, subscribe};

/// A pub/sub topic: its name and the type of its messages.
///
/// ```
/// use p2plane::{Message, pubsub::Topic};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Line { from: String, text: String }
///
/// impl Message for Line {
///     const PROTOCOL: &'static str = "/chat/line/1";
///     fn validate(&self) -> Result<(), String> {
///         if self.text.is_empty() { Err("empty line".into()) } else { Ok(()) }
///     }
/// }
///
/// struct Room;
/// impl Topic for Room {
///     const NAME: &'static str = "chat/room/1";
///     type Message = Line;
/// }
/// ```
pub trait Topic: Send + Sync + 'static {
    /// The topic's name on the wire.
    const NAME: &'static str;
    /// What is published on it. Its [`Validate`] impl decides which messages a node
    /// delivers and forwards (every [`Message`](crate::Message) has one).
    type Message: Payload + Validate;
}

/// Pub/sub settings; pub/sub is off unless [`NodeConfig::pubsub`](crate::NodeConfig::pubsub)
/// is set.
#[derive(Debug, Clone)]
pub struct PubsubConfig {
    /// How often the mesh is maintained and gossip is sent. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Messages buffered per subscription; when a subscriber falls this far behind, newer
    /// messages are dropped for it (and counted, see [`Subscription::dropped`]). Default 1024.
    pub subscription_buffer: usize,
    /// Peers a node keeps in its mesh per topic (gossipsub's D). Default 6.
    pub mesh_n: usize,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            subscription_buffer: 1024,
            mesh_n: 6,
        }
    }
}

impl PubsubConfig {
    pub(crate) fn behaviour(
        &self,
        key: &Keypair,
        max_message_size: usize,
    ) -> Result<gossipsub::Behaviour, String> {
        let mesh_n = self.mesh_n.max(1);
        let config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(self.heartbeat_interval)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(max_message_size)
            .mesh_n(mesh_n)
            .mesh_n_low(mesh_n.saturating_sub(1).max(1))
            .mesh_n_high(mesh_n * 2)
            .mesh_outbound_min(mesh_n.div_ceil(3).min(mesh_n / 2))
            .build()
            .map_err(|e| e.to_string())?;
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
            .map_err(str::to_owned)
    }
}

/// Why a pub/sub operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubsubError {
    /// The node was started without pub/sub (`NodeConfig::pubsub` is `None`).
    #[error("the node has no pub/sub")]
    Disabled,
    /// The message failed its own validation; nothing was sent.
    #[error("message rejected: {0}")]
    Rejected(String),
    /// The message could not be encoded (or is larger than the node's message limit).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// No connected peer subscribes to the topic yet.
    #[error("no peer subscribes to the topic")]
    NoPeers,
    /// Gossipsub refused the message for another reason.
    #[error("publish failed: {0}")]
    Failed(String),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
}

/// A message received on a topic.
#[derive(Debug, Clone)]
pub struct Received<M> {
    /// The peer that wrote and signed it.
    pub author: Option<PeerId>,
    /// The peer that forwarded it to this node.
    pub via: PeerId,
    /// The message.
    pub message: M,
}

/// Messages being checked at once; beyond, arriving messages are ignored.
pub const MAX_VALIDATING: usize = 256;
