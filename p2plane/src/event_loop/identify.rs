//! Identify (what a peer speaks and where it listens) and ping (whether the connection is
//! alive).

use libp2p::{identify, ping};

use super::{EventLoop, MAX_LISTEN_ADDRS};
use crate::event::Event;
#[cfg(feature = "dht")]
use crate::gate::is_private;

impl EventLoop {
    pub(super) fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received {
            peer_id: peer,
            info,
            ..
        } = event
        else {
            return;
        };
        tracing::trace!(%peer, agent = %info.agent_version, "identified");
        #[cfg(feature = "relay")]
        self.on_identified_reach(peer, &info);
        let protocols: Vec<String> = info.protocols.iter().map(ToString::to_string).collect();
        self.peers.set(peer, protocols.clone());
        self.store.set_protocols(peer, protocols.clone());
        #[cfg(feature = "dht")]
        let speaks_kad = self
            .kad_protocol
            .as_ref()
            .is_some_and(|kad| info.protocols.contains(kad));
        // A peer may claim any number of addresses; the first few are plenty.
        for addr in info.listen_addrs.into_iter().take(MAX_LISTEN_ADDRS) {
            // Without this, routing tables never grow past the peers we dialed.
            #[cfg(feature = "dht")]
            if speaks_kad
                && (self.allow_private_addrs || !is_private(&addr))
                && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
            {
                kad.add_address(&peer, addr.clone());
            }
            self.remember(peer, addr);
        }
        self.emit(Event::PeerIdentified { peer, protocols });
    }

    pub(super) fn on_ping(&mut self, event: ping::Event) {
        let ping::Event {
            peer,
            connection,
            result: Err(failure),
        } = event
        else {
            return;
        };
        if matches!(failure, ping::Failure::Unsupported) {
            return;
        }
        // libp2p reports a ping failure from the second in a row on: the peer is gone or the
        // connection is stuck. Close it, so that requests redial rather than wait on it until
        // their own timeouts.
        tracing::debug!(%peer, %failure, "pings failing: closing the connection");
        self.swarm.close_connection(connection);
    }
}
