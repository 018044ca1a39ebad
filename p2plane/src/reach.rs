//! Reach: relays and hole punching, for peers that cannot dial each other directly.
//!
//! A node behind a NAT or firewall cannot be dialled. With [`ReachConfig::relays`] it
//! reserves a slot on each relay (circuit relay v2) and listens through it: peers then dial
//! it at `<relay address>/p2p-circuit/p2p/<its id>`, and requests, pub/sub and the DHT work
//! over that relayed connection (within the relay's limits). With
//! [`ReachConfig::hole_punching`] (the default) both ends then try to open a direct
//! connection by hole punching (DCUtR); new streams prefer a direct connection once one
//! exists. [`Event::RelayReservation`](crate::Event::RelayReservation),
//! [`Event::DirectUpgrade`](crate::Event::DirectUpgrade) and
//! [`Event::DirectUpgradeFailed`](crate::Event::DirectUpgradeFailed) report each step.
//!
//! A node with a public address can serve as a relay for others
//! ([`ReachConfig::relay_server`], off by default), with bounded reservations and circuits.
//!
//! ```no_run
//! # use p2plane::{Message, Node, NodeConfig, ReachConfig};
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! # struct MyMessage(String);
//! # impl Message for MyMessage { const PROTOCOL: &'static str = "/my-app/1.0.0"; }
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // A node behind a NAT listens through a relay.
//! let relay = "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq";
//! let config = NodeConfig::default().with_reach(ReachConfig::default().with_relay(relay.parse()?));
//! let node = Node::<MyMessage>::new(config).await?;
//! # let _ = node;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use libp2p::{PeerId, relay};
use p2plane_core::Multiaddr;

/// How a node reaches peers it cannot dial and is reached by them (feature `relay`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReachConfig {
    /// Relays to reserve a slot on and listen through, each with its `/p2p/<id>`. A relay
    /// that refuses, cannot be reached or goes away is asked again after a wait (1 s,
    /// doubling to 60 s). Default none (see also [`ReachConfig::auto_relays`]).
    pub relays: Vec<Multiaddr>,
    /// Relays to choose among connected peers while this node is private: once AutoNAT
    /// finds no address of this node that peers can dial, it listens through up to this
    /// many connected peers that offer the relay service (identify lists the circuit relay
    /// v2 hop protocol), besides [`ReachConfig::relays`]. A chosen relay that refuses or
    /// goes away is replaced by another candidate. AutoNAT finds a node private once a
    /// peer's dial back fails, which takes the transport's
    /// [`connection_timeout`](crate::TransportConfig::connection_timeout) (8 s by default)
    /// behind a NAT that drops it. A node found public later keeps the relays it chose.
    /// Default 2; 0 turns it off.
    pub auto_relays: usize,
    /// Upgrade relayed connections to direct ones by hole punching (DCUtR). Default on.
    pub hole_punching: bool,
    /// Serve as a relay for other peers. Default `None` (off).
    pub relay_server: Option<RelayServerConfig>,
    /// Learn whether this node can be dialled (AutoNAT v2): connected peers that serve
    /// AutoNAT dial back the addresses other peers observed this node at; a confirmed one
    /// becomes an external address, and [`Event::Reachability`](crate::Event::Reachability)
    /// reports the outcome. The node also answers other peers' probes. Default on.
    pub autonat: bool,
    /// How often AutoNAT tests untested address candidates. Default 5 s (libp2p's).
    pub autonat_probe_interval: Duration,
}

impl Default for ReachConfig {
    fn default() -> Self {
        Self {
            relays: Vec::new(),
            auto_relays: 2,
            hole_punching: true,
            relay_server: None,
            autonat: true,
            autonat_probe_interval: Duration::from_secs(5),
        }
    }
}

impl ReachConfig {
    /// Adds a relay to listen through (its address must end in `/p2p/<relay id>`; `Node::new`
    /// refuses it otherwise, with [`NodeError::Relay`](crate::NodeError::Relay)).
    pub fn with_relay(mut self, addr: Multiaddr) -> Self {
        self.relays.push(addr);
        self
    }

    /// Checks that each relay can be listened through: a direct address that ends in
    /// `/p2p/<relay id>` (the relay client must know whom it reserves on).
    pub(crate) fn check(&self) -> Result<(), crate::NodeError> {
        for addr in &self.relays {
            let refuse = |reason| {
                Err(crate::NodeError::Relay {
                    addr: addr.clone(),
                    reason,
                })
            };
            if p2plane_transport::is_relayed(addr) {
                return refuse("a relay's address cannot itself go through a relay");
            }
            if !matches!(
                addr.iter().last(),
                Some(libp2p::multiaddr::Protocol::P2p(_))
            ) {
                return refuse("the address must end in /p2p/<the relay's peer id>");
            }
        }
        Ok(())
    }

    /// Sets how many relays to choose among connected peers while private (0: none).
    pub fn with_auto_relays(mut self, n: usize) -> Self {
        self.auto_relays = n;
        self
    }

    /// Turns hole punching on or off.
    pub fn with_hole_punching(mut self, on: bool) -> Self {
        self.hole_punching = on;
        self
    }

    /// Turns AutoNAT (reachability probes, both asking and answering) on or off.
    pub fn with_autonat(mut self, on: bool) -> Self {
        self.autonat = on;
        self
    }

    /// Sets how often AutoNAT tests new address candidates.
    pub fn with_autonat_probe_interval(mut self, interval: Duration) -> Self {
        self.autonat_probe_interval = interval;
        self
    }

    /// Serves as a relay with `config`'s limits.
    pub fn with_relay_server(mut self, config: RelayServerConfig) -> Self {
        self.relay_server = Some(config);
        self
    }
}

/// The limits of a node that serves as a relay. The defaults are libp2p's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayServerConfig {
    /// Reservations held at once. Default 128.
    pub max_reservations: usize,
    /// Reservations one peer may hold. Default 4.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the client must renew it. Default 1 hour.
    pub reservation_duration: Duration,
    /// Circuits relayed at once. Default 16.
    pub max_circuits: usize,
    /// Circuits one peer may have relayed at once. Default 4.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may last. Default 2 minutes.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry in each direction. Default 128 KiB.
    pub max_circuit_bytes: u64,
}

impl Default for RelayServerConfig {
    fn default() -> Self {
        let d = relay::Config::default();
        Self {
            max_reservations: d.max_reservations,
            max_reservations_per_peer: d.max_reservations_per_peer,
            reservation_duration: d.reservation_duration,
            max_circuits: d.max_circuits,
            max_circuits_per_peer: d.max_circuits_per_peer,
            max_circuit_duration: d.max_circuit_duration,
            max_circuit_bytes: d.max_circuit_bytes,
        }
    }
}

impl RelayServerConfig {
    /// libp2p's relay behaviour with these limits (and libp2p's default rate limits on
    /// reservations and circuits per peer and per IP).
    pub(crate) fn behaviour(&self, local_peer_id: PeerId) -> relay::Behaviour {
        let config = relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            ..relay::Config::default()
        };
        relay::Behaviour::new(local_peer_id, config)
    }
}
