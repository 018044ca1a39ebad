//! What pub/sub handles ask of the event loop, and what a message carries from receipt to
//! its subscribers.

use std::sync::{Arc, atomic::AtomicU64};

use libp2p::gossipsub::{MessageId, TopicHash};
use p2plane_codec::CborCodec;
use p2plane_core::{Codec as _, PeerId, Validate as _};
use tokio::sync::{mpsc, oneshot};

use super::{PubsubError, Topic};

/// A received message on its way to a subscriber.
pub(crate) struct Delivery {
    pub(super) author: Option<PeerId>,
    pub(super) via: PeerId,
    pub(super) data: Arc<[u8]>,
}

/// Decodes and validates one message of a topic's type.
pub(super) type Check = fn(&CborCodec, &[u8]) -> Result<(), String>;

pub(super) fn check<T: Topic>(codec: &CborCodec, bytes: &[u8]) -> Result<(), String> {
    let message: T::Message = codec.decode(bytes).map_err(|e| e.to_string())?;
    message.validate()
}

/// A pub/sub command for the event loop.
pub(crate) enum PubsubCommand {
    Subscribe {
        topic: &'static str,
        check: Check,
        sender: mpsc::Sender<Delivery>,
        dropped: Arc<AtomicU64>,
        reply: oneshot::Sender<Result<u64, PubsubError>>,
    },
    Unsubscribe {
        topic: &'static str,
        id: u64,
    },
    Publish {
        topic: &'static str,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), PubsubError>>,
    },
    MeshPeers {
        topic: &'static str,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// A received message, checked off the event loop.
    Checked(Box<Checked>),
}

/// A received message and the verdict of its check.
pub(crate) struct Checked {
    pub(super) message_id: MessageId,
    pub(super) topic: TopicHash,
    pub(super) delivery: Delivery,
    pub(super) verdict: Result<(), String>,
}

impl PubsubCommand {
    /// Answers the command with `Disabled`.
    pub(super) fn refuse(self) {
        match self {
            PubsubCommand::Subscribe { reply, .. } => {
                let _ = reply.send(Err(PubsubError::Disabled));
            }
            PubsubCommand::Publish { reply, .. } => {
                let _ = reply.send(Err(PubsubError::Disabled));
            }
            PubsubCommand::MeshPeers { reply, .. } => {
                let _ = reply.send(Vec::new());
            }
            PubsubCommand::Unsubscribe { .. } | PubsubCommand::Checked(_) => {}
        }
    }
}
