//! The event loop's side of pub/sub: subscribers per topic, and the checks of received
//! messages.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use p2plane_codec::CborCodec;
use tokio::sync::{Semaphore, mpsc};

use super::{
    MAX_VALIDATING, PubsubError,
    command::{Check, Checked, Delivery, PubsubCommand},
};
use crate::{command::Command, event::Event};

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
