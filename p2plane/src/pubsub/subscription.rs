//! The handles' side of pub/sub: a subscription, and the requests of `Node`'s methods.

use std::{
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use p2plane_codec::CborCodec;
use p2plane_core::{Codec as _, PeerId, Validate as _};
use tokio::sync::{mpsc, oneshot};

use super::{
    PubsubError, Received, Topic,
    command::{Delivery, PubsubCommand, check},
};
use crate::command::Command;

/// A subscription to topic `T`, from [`Node::subscribe`](crate::Node::subscribe). Dropping
/// it unsubscribes (the node leaves the topic when its last subscription goes).
pub struct Subscription<T: Topic> {
    receiver: mpsc::Receiver<Delivery>,
    codec: CborCodec,
    commands: mpsc::Sender<Command>,
    id: u64,
    dropped: Arc<AtomicU64>,
    _topic: PhantomData<fn() -> T>,
}

impl<T: Topic> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &T::NAME)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<T: Topic> Subscription<T> {
    /// The next message, or `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<Received<T::Message>> {
        loop {
            let delivery = self.receiver.recv().await?;
            // Checked before delivery, so it decodes; a failure here would be a bug, and the
            // message is skipped rather than the subscriber stopped.
            if let Ok(message) = self.codec.decode(&delivery.data) {
                return Some(Received {
                    author: delivery.author,
                    via: delivery.via,
                    message,
                });
            }
        }
    }

    /// Messages dropped for this subscription because its buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T: Topic> Drop for Subscription<T> {
    fn drop(&mut self) {
        // Best effort: if the command queue is full the topic stays joined until shutdown.
        let _ = self
            .commands
            .try_send(Command::Pubsub(PubsubCommand::Unsubscribe {
                topic: T::NAME,
                id: self.id,
            }));
    }
}

/// The request side of the node's pub/sub, used by [`Node`](crate::Node)'s methods.
pub(crate) async fn subscribe<T: Topic>(
    commands: &mpsc::Sender<Command>,
    codec: CborCodec,
    buffer: usize,
) -> Result<Subscription<T>, PubsubError> {
    let (sender, receiver) = mpsc::channel(buffer.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Pubsub(PubsubCommand::Subscribe {
            topic: T::NAME,
            check: check::<T>,
            sender,
            dropped: Arc::clone(&dropped),
            reply,
        }))
        .await
        .map_err(|_| PubsubError::Shutdown)?;
    let id = answer.await.map_err(|_| PubsubError::Shutdown)??;
    Ok(Subscription {
        receiver,
        codec,
        commands: commands.clone(),
        id,
        dropped,
        _topic: PhantomData,
    })
}

pub(crate) async fn publish<T: Topic>(
    commands: &mpsc::Sender<Command>,
    codec: &CborCodec,
    message: &T::Message,
) -> Result<(), PubsubError> {
    message.validate().map_err(PubsubError::Rejected)?;
    let mut data = Vec::new();
    codec.encode(message, &mut data)?;
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Pubsub(PubsubCommand::Publish {
            topic: T::NAME,
            data,
            reply,
        }))
        .await
        .map_err(|_| PubsubError::Shutdown)?;
    answer.await.map_err(|_| PubsubError::Shutdown)?
}

pub(crate) async fn mesh_peers<T: Topic>(
    commands: &mpsc::Sender<Command>,
) -> Result<Vec<PeerId>, PubsubError> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Pubsub(PubsubCommand::MeshPeers {
            topic: T::NAME,
            reply,
        }))
        .await
        .map_err(|_| PubsubError::Shutdown)?;
    answer.await.map_err(|_| PubsubError::Shutdown)
}
