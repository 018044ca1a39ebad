use std::{
    io,
    sync::{Arc, Mutex},
};

use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::{ConnectionGone, Inbound, NewStream, Shared, lock};

/// Why a stream could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The remote does not speak the protocol.
    Unsupported,
    /// No connection could be made; the text says why.
    Dial(String),
    /// The connection closed before the stream was open.
    Closed,
    /// Protocol negotiation timed out.
    Timeout,
    /// Negotiation failed with an I/O error.
    Io(io::Error),
}

/// The protocol already has a server.
#[derive(Debug)]
pub(crate) struct AlreadyRegistered;

/// A cheap handle for opening outbound streams and receiving inbound ones.
#[derive(Clone)]
pub(crate) struct Control {
    shared: Arc<Mutex<Shared>>,
    dial_tx: mpsc::Sender<PeerId>,
}

impl Control {
    pub(super) fn new(shared: Arc<Mutex<Shared>>, dial_tx: mpsc::Sender<PeerId>) -> Self {
        Self { shared, dial_tx }
    }

    /// Whether there is an established connection to `peer`.
    #[cfg_attr(not(feature = "dht"), allow(dead_code))]
    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        lock(&self.shared).by_peer.contains_key(peer)
    }

    /// Opens a stream to `peer` on `protocol`, dialing the peer if there is no connection.
    pub(crate) async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenError> {
        Ok(self.open_watched(peer, protocol).await?.0)
    }

    /// [`Control::open`], with the end of the stream's connection.
    pub(crate) async fn open_watched(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<(Stream, ConnectionGone), OpenError> {
        let (tx, needs_dial) = lock(&self.shared).sender_for(peer);
        if needs_dial {
            self.dial_tx
                .send(peer)
                .await
                .map_err(|_| OpenError::Closed)?;
        }
        let (reply, response) = oneshot::channel();
        tx.send(NewStream { protocol, reply })
            .await
            .map_err(|_| OpenError::Closed)?;
        response.await.map_err(|_| OpenError::Closed)?
    }

    /// Starts accepting inbound streams on `protocol`; they queue in a channel of `capacity`.
    ///
    /// Dropping the receiver stops serving the protocol.
    pub(crate) fn accept(
        &self,
        protocol: StreamProtocol,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Inbound>, AlreadyRegistered> {
        let mut shared = lock(&self.shared);
        shared.inbound.retain(|_, tx| !tx.is_closed());
        if shared.inbound.contains_key(&protocol) {
            return Err(AlreadyRegistered);
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        shared.inbound.insert(protocol, tx);
        Ok(rx)
    }
}
