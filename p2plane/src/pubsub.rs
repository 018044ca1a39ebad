//! Typed publish/subscribe: gossipsub behind a [`Topic`] trait.
//!
//! A topic names itself and its message type; messages travel CBOR-encoded and signed by
//! their author. Each node checks every message it receives with the message type's
//! [`Validate`] impl (the same check [`ValidateLayer`](crate::ValidateLayer) runs on
//! requests) *before* forwarding it: a message that fails is not delivered, not forwarded,
//! and counts against the peer that sent it (gossipsub's peer scoring). Checks run in tasks
//! of their own, never in the event loop, at most [`MAX_VALIDATING`] at once; a message
//! arriving beyond that is dropped unforwarded (without penalty).

use std::{
    collections::HashMap,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use libp2p::{
    gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash},
    identity::Keypair,
};
use p2plane_codec::CborCodec;
use p2plane_core::{Codec as _, CodecError, Payload, PeerId, Validate};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{event::Event, event_loop::Command};

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

pub(crate) struct Delivery {
    author: Option<PeerId>,
    via: PeerId,
    data: Arc<[u8]>,
}

/// Messages being checked at once; beyond, arriving messages are ignored.
pub const MAX_VALIDATING: usize = 256;

/// Decodes and validates one message of a topic's type.
type Check = fn(&CborCodec, &[u8]) -> Result<(), String>;

fn check<T: Topic>(codec: &CborCodec, bytes: &[u8]) -> Result<(), String> {
    let message: T::Message = codec.decode(bytes).map_err(|e| e.to_string())?;
    message.validate()
}

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
    message_id: MessageId,
    topic: TopicHash,
    delivery: Delivery,
    verdict: Result<(), String>,
}

impl PubsubCommand {
    /// Answers the command with `Disabled`.
    fn refuse(self) {
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

struct Subscriber {
    id: u64,
    check: Check,
    sender: mpsc::Sender<Delivery>,
    dropped: Arc<AtomicU64>,
}

/// The event loop's pub/sub bookkeeping: who subscribes to what, and how to check it.
pub(crate) struct PubsubState {
    codec: CborCodec,
    topics: HashMap<TopicHash, Vec<Subscriber>>,
    next_id: u64,
    /// Where checks report back. Weak, so that the node still stops when its last handle
    /// is dropped.
    commands: mpsc::WeakSender<Command>,
    checking: Arc<Semaphore>,
}

impl PubsubState {
    pub(crate) fn new(max_message_size: usize, commands: &mpsc::Sender<Command>) -> Self {
        Self {
            codec: CborCodec::new(max_message_size),
            topics: HashMap::new(),
            next_id: 0,
            commands: commands.downgrade(),
            checking: Arc::new(Semaphore::new(MAX_VALIDATING)),
        }
    }

    /// Handles a command; returns an event for a message that failed its check.
    pub(crate) fn on_command(
        &mut self,
        gossipsub: Option<&mut gossipsub::Behaviour>,
        command: PubsubCommand,
    ) -> Option<Event> {
        let Some(gossipsub) = gossipsub else {
            command.refuse();
            return None;
        };
        match command {
            PubsubCommand::Subscribe {
                topic,
                check,
                sender,
                dropped,
                reply,
            } => {
                let topic = IdentTopic::new(topic);
                if let Err(e) = gossipsub.subscribe(&topic) {
                    let _ = reply.send(Err(PubsubError::Failed(e.to_string())));
                    return None;
                }
                self.next_id += 1;
                let id = self.next_id;
                self.topics
                    .entry(topic.hash())
                    .or_default()
                    .push(Subscriber {
                        id,
                        check,
                        sender,
                        dropped,
                    });
                let _ = reply.send(Ok(id));
            }
            PubsubCommand::Unsubscribe { topic, id } => {
                let topic = IdentTopic::new(topic);
                if let Some(subscribers) = self.topics.get_mut(&topic.hash()) {
                    subscribers.retain(|s| s.id != id);
                    if subscribers.is_empty() {
                        self.topics.remove(&topic.hash());
                        gossipsub.unsubscribe(&topic);
                    }
                }
            }
            PubsubCommand::Publish { topic, data, reply } => {
                let result = match gossipsub.publish(IdentTopic::new(topic), data) {
                    Ok(_) => Ok(()),
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                        Err(PubsubError::NoPeers)
                    }
                    Err(e) => Err(PubsubError::Failed(e.to_string())),
                };
                let _ = reply.send(result);
            }
            PubsubCommand::MeshPeers { topic, reply } => {
                let hash = IdentTopic::new(topic).hash();
                let _ = reply.send(gossipsub.mesh_peers(&hash).copied().collect());
            }
            PubsubCommand::Checked(checked) => return self.on_checked(gossipsub, *checked),
        }
        None
    }

    /// Starts checking a received message against every local subscriber's type, in a task.
    pub(crate) fn on_event(
        &mut self,
        gossipsub: &mut gossipsub::Behaviour,
        event: gossipsub::Event,
    ) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let checks: Vec<Check> = self
            .topics
            .get(&message.topic)
            .map(|subscribers| subscribers.iter().map(|s| s.check).collect())
            .unwrap_or_default();
        let permit = Arc::clone(&self.checking).try_acquire_owned();
        let commands = self.commands.upgrade();
        let (Ok(permit), Some(commands), false) = (permit, commands, checks.is_empty()) else {
            // Not subscribed (any more), too many checks running, or shutting down.
            gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                MessageAcceptance::Ignore,
            );
            return;
        };
        let codec = self.codec;
        let delivery = Delivery {
            author: message.source,
            via: propagation_source,
            data: message.data.into(),
        };
        let topic = message.topic;
        tokio::spawn(async move {
            let verdict = checks
                .iter()
                .find_map(|check| check(&codec, &delivery.data).err())
                .map_or(Ok(()), Err);
            let checked = PubsubCommand::Checked(Box::new(Checked {
                message_id,
                topic,
                delivery,
                verdict,
            }));
            let _ = commands.send(Command::Pubsub(checked)).await;
            drop(permit);
        });
    }

    /// Tells gossipsub whether to forward a checked message, and delivers it if it passed.
    fn on_checked(
        &mut self,
        gossipsub: &mut gossipsub::Behaviour,
        checked: Checked,
    ) -> Option<Event> {
        let Checked {
            message_id,
            topic,
            delivery,
            verdict,
        } = checked;
        let acceptance = match &verdict {
            Ok(()) => MessageAcceptance::Accept,
            Err(_) => MessageAcceptance::Reject,
        };
        gossipsub.report_message_validation_result(&message_id, &delivery.via, acceptance);
        if let Err(reason) = verdict {
            return Some(Event::MessageRejected {
                topic: topic.into_string(),
                peer: delivery.via,
                reason,
            });
        }
        for subscriber in self.topics.get(&topic).into_iter().flatten() {
            let copy = Delivery {
                author: delivery.author,
                via: delivery.via,
                data: Arc::clone(&delivery.data),
            };
            if subscriber.sender.try_send(copy).is_err() {
                subscriber.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        None
    }
}

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
