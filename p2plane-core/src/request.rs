use std::sync::Arc;

use libp2p_identity::PeerId;

use crate::{Message, Protocol, Streaming};

/// The envelope a client sends: which peer, which protocol, what body.
///
/// Cloning is cheap whatever the body's size (the body is behind an [`Arc`]), so retry
/// middleware can keep a copy of each request.
///
/// A request is *idempotent* unless marked otherwise with [`Request::non_idempotent`]: retry
/// middleware repeats a non-idempotent request only when the remote cannot have acted on it
/// (see [`Error::remote_may_have_acted`](crate::Error::remote_may_have_acted)).
#[derive(Debug)]
pub struct Request<T> {
    peer: PeerId,
    protocol: &'static str,
    body: Arc<T>,
    idempotent: bool,
    attempt: u32,
    extensions: http::Extensions,
}

impl<T> Clone for Request<T> {
    fn clone(&self) -> Self {
        Self {
            peer: self.peer,
            protocol: self.protocol,
            body: Arc::clone(&self.body),
            idempotent: self.idempotent,
            attempt: self.attempt,
            extensions: self.extensions.clone(),
        }
    }
}

impl<M: Message> Request<M> {
    /// A request carrying `body` to `peer` on the message's protocol, [`Message::PROTOCOL`].
    pub fn new(peer: PeerId, body: M) -> Self {
        Self::for_protocol::<M>(peer, body)
    }
}

impl<T> Request<T> {
    /// A request carrying `body` to `peer` on protocol `P`, for protocols whose request and
    /// response types differ.
    pub fn for_protocol<P: Protocol<Request = T>>(peer: PeerId, body: T) -> Self {
        Self::named(peer, P::NAME, body)
    }

    /// A request opening a stream of protocol `S` (a [`Streaming`] protocol) to `peer`.
    pub fn for_stream<S: Streaming<Request = T>>(peer: PeerId, body: T) -> Self {
        Self::named(peer, S::NAME, body)
    }

    fn named(peer: PeerId, protocol: &'static str, body: T) -> Self {
        Self {
            peer,
            protocol,
            body: Arc::new(body),
            idempotent: true,
            attempt: 0,
            extensions: http::Extensions::new(),
        }
    }

    /// Marks the request as not safe to repeat once the remote may have acted on it.
    #[must_use]
    pub fn non_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    /// The peer the request goes to (or, on the server side, came from).
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The protocol name the request travels on.
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The body.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// Whether the request may be repeated after the remote may have acted on it.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// Which attempt this is: 0 for the first, counted up by retry middleware (it shows in
    /// the request's tracing span). It is not sent.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Counts one more attempt (for retry middleware).
    pub fn next_attempt(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
    }

    /// The same request addressed to another peer (used for failover).
    #[must_use]
    pub fn with_peer(mut self, peer: PeerId) -> Self {
        self.peer = peer;
        self
    }

    /// Values attached to the request that do not travel: middleware leaves settings here
    /// for the services below it (a stream's item deadline, say), and a server leaves the
    /// caller's uploads here for the handler. Keyed by type, as in `http::Request`.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// The request's [extensions](Request::extensions), mutably.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// The body, cloned out of the shared envelope only if another clone still holds it.
    pub fn into_body(self) -> T
    where
        T: Clone,
    {
        Arc::unwrap_or_clone(self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    struct Big(Vec<u8>);
    impl Message for Big {
        const PROTOCOL: &'static str = "/big/1";
    }

    #[test]
    fn clone_shares_the_body() {
        let r = Request::new(PeerId::random(), Big(vec![0; 1 << 20]));
        let c = r.clone();
        assert!(std::ptr::eq(r.body(), c.body()));
        assert_eq!(c.protocol(), "/big/1");
        assert!(c.is_idempotent());
        assert!(!c.non_idempotent().is_idempotent());
    }

    #[test]
    fn with_peer_readdresses() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let r = Request::new(a, Big(vec![1])).with_peer(b);
        assert_eq!(r.peer(), b);
        assert_eq!(r.into_body(), Big(vec![1]));
    }
}
