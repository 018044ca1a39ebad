//! Where the peer store meets connections: banned peers (and, with an allow-list, every peer
//! not on it) are refused both ways, peers that keep failing are not redialed until their
//! backoff passes, and dials by peer id get the store's addresses.

use std::{
    collections::HashSet,
    convert::Infallible,
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm, dummy,
    },
};
use p2plane_core::{PeerRecord, PeerStore};

/// The first wait after a failed dial; it doubles with each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Why the gate refused a connection.
#[derive(Debug)]
pub(crate) enum Refused {
    Banned,
    NotAllowed,
    BackingOff { retry_in: Duration },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Banned => write!(f, "the peer is banned"),
            Refused::NotAllowed => write!(f, "the peer is not on the allow-list"),
            Refused::BackingOff { retry_in } => {
                write!(
                    f,
                    "backing off after failed dials; next attempt allowed in {retry_in:?}"
                )
            }
        }
    }
}

impl std::error::Error for Refused {}

/// When a peer with this record may be dialed again, if not yet.
pub(crate) fn backoff_remaining(record: &PeerRecord, now: SystemTime) -> Option<Duration> {
    if record.failures == 0 {
        return None;
    }
    let wait = BACKOFF_BASE
        .saturating_mul(1 << record.failures.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    let since = now.duration_since(record.last_failure?).unwrap_or_default();
    wait.checked_sub(since).filter(|d| !d.is_zero())
}

pub(crate) struct Gate {
    store: Arc<dyn PeerStore>,
    allowed: Option<HashSet<PeerId>>,
    unverified: Arc<crate::unverified::Unverified>,
}

impl Gate {
    pub(crate) fn new(
        store: Arc<dyn PeerStore>,
        allowed: Option<HashSet<PeerId>>,
        unverified: Arc<crate::unverified::Unverified>,
    ) -> Self {
        Self {
            store,
            allowed,
            unverified,
        }
    }

    fn check_allowed(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        match &self.allowed {
            Some(allowed) if !allowed.contains(peer) => {
                Err(ConnectionDenied::new(Refused::NotAllowed))
            }
            _ => Ok(()),
        }
    }

    fn check(&self, peer: &PeerId, outbound: bool) -> Result<(), ConnectionDenied> {
        self.check_allowed(peer)?;
        let Some(record) = self.store.record(peer) else {
            return Ok(());
        };
        let now = SystemTime::now();
        if record.is_banned_at(now) {
            return Err(ConnectionDenied::new(Refused::Banned));
        }
        if outbound && let Some(retry_in) = backoff_remaining(&record, now) {
            return Err(ConnectionDenied::new(Refused::BackingOff { retry_in }));
        }
        Ok(())
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = peer else {
            return Ok(Vec::new());
        };
        self.check(&peer, true)?;
        // Proved addresses first, then those only heard of (a lookup, mDNS).
        let mut addrs = self.store.addresses(&peer);
        for addr in self.unverified.addresses(&peer) {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(addrs)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(&peer, false)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Peers reached by address: their id is known only now.
        self.check_allowed(&peer)?;
        if self.store.is_banned(&peer) {
            return Err(ConnectionDenied::new(Refused::Banned));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Whether `addr` points at this machine or a private network: loopback, private ranges,
/// link-local, unspecified, or the in-process memory transport.
pub(crate) fn is_private(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(Protocol::Ip6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Some(Protocol::Memory(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let now = SystemTime::now();
        let record = |failures, ago: u64| PeerRecord {
            failures,
            last_failure: Some(now - Duration::from_secs(ago)),
            ..Default::default()
        };
        assert_eq!(backoff_remaining(&record(0, 0), now), None);
        assert_eq!(
            backoff_remaining(&record(1, 0), now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            backoff_remaining(&record(3, 1), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(backoff_remaining(&record(3, 4), now), None);
        assert_eq!(backoff_remaining(&record(30, 0), now), Some(BACKOFF_MAX));
    }

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.0.1/udp/1/quic-v1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/memory/5",
        ] {
            assert!(is_private(&private.parse().unwrap()), "{private}");
        }
        for public in [
            "/ip4/192.0.2.1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/dns4/example.com/tcp/1",
        ] {
            assert!(!is_private(&public.parse().unwrap()), "{public}");
        }
    }
}
