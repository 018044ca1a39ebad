//! mDNS: peers announced on the local network.

use libp2p::{
    mdns,
    swarm::dial_opts::{DialOpts, PeerCondition},
};

use super::EventLoop;
use crate::{error::error_chain, event::Event};

impl EventLoop {
    pub(super) fn on_mdns(&mut self, event: mdns::Event) {
        let mdns::Event::Discovered(found) = event else {
            return;
        };
        for (peer, addr) in found {
            // Anyone on the link can claim any id by mDNS: the address is only heard of until
            // a dial proves it (then it is stored, private or not, and Kademlia learns the
            // peer from the connection).
            self.unverified.add(peer, [addr.clone()], true);
            if !self.swarm.is_connected(&peer) {
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, error = %error_chain(&e), "dial of an mDNS peer failed");
                }
            }
            self.emit(Event::PeerDiscovered { peer, addr });
        }
    }
}
