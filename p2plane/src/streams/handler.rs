use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use libp2p::{
    PeerId, Stream, StreamProtocol,
    core::{InboundUpgrade, OutboundUpgrade, UpgradeInfo},
    swarm::{
        ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};
use tokio::sync::{mpsc, mpsc::error::TrySendError, oneshot};

use super::{ConnectionGone, NewStream, OpenError, Shared, StreamEvent, lock};

type Reply = oneshot::Sender<Result<(Stream, ConnectionGone), OpenError>>;

/// One connection's handler: opens the streams callers ask for and passes inbound streams
/// to their protocol's queue.
pub(crate) struct Handler {
    remote: PeerId,
    shared: Arc<Mutex<Shared>>,
    requests: mpsc::Receiver<NewStream>,
    events: Vec<StreamEvent>,
    /// Dropped with the handler, when the connection is gone: see [`ConnectionGone`].
    gone: tokio::sync::watch::Sender<()>,
}

impl Handler {
    pub(super) fn new(
        remote: PeerId,
        shared: Arc<Mutex<Shared>>,
        requests: mpsc::Receiver<NewStream>,
    ) -> Self {
        Self {
            remote,
            shared,
            requests,
            events: Vec::new(),
            gone: tokio::sync::watch::Sender::new(()),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = StreamEvent;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Reply;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade(lock(&self.shared).supported_inbound()), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Reply, StreamEvent>> {
        if let Some(event) = self.events.pop() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        loop {
            match self.requests.poll_recv(cx) {
                // The caller gave up: skip it.
                Poll::Ready(Some(req)) if req.reply.is_closed() => {}
                Poll::Ready(Some(NewStream { protocol, reply })) => {
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(Upgrade(vec![protocol]), reply),
                    });
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<'_, Upgrade, Upgrade, (), Reply>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                let sender = lock(&self.shared).inbound.get(&protocol).cloned();
                let dropped = match sender {
                    Some(tx) => match tx.try_send((
                        self.remote,
                        stream,
                        ConnectionGone(self.gone.subscribe()),
                    )) {
                        Ok(()) => false,
                        Err(TrySendError::Full(_)) => true,
                        Err(TrySendError::Closed(_)) => false, // no longer served
                    },
                    None => false,
                };
                if dropped {
                    tracing::debug!(peer = %self.remote, %protocol, "inbound queue full, dropping stream");
                    self.events.push(StreamEvent::InboundDropped {
                        peer: self.remote,
                        protocol,
                    });
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: reply,
            }) => {
                let _ = reply.send(Ok((stream, ConnectionGone(self.gone.subscribe()))));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => OpenError::Timeout,
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Io(e) => OpenError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

/// Negotiates one of a list of protocols and yields the raw stream.
pub(crate) struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
