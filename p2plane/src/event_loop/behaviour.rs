//! The node's libp2p behaviour: every protocol the swarm runs, and how it is built from a
//! [`NodeConfig`].

use libp2p::{
    identify,
    identity::Keypair,
    ping,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};
use p2plane_core::PeerId;
use p2plane_transport::libp2p::connection_limits;

use crate::{NodeConfig, NodeError, delayed::Delayed, gate::Gate, streams};

/// The protocol version identify announces.
const IDENTIFY_PROTOCOL: &str = "/p2plane/0.1.0";

// A protocol whose feature is off keeps its place in the behaviour as a behaviour that does
// nothing (always toggled off), so the behaviour's shape is the same in every build.
#[cfg(feature = "dht")]
type Kad = p2plane_dht::Kademlia;
#[cfg(not(feature = "dht"))]
type Kad = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "pubsub")]
type Gossipsub = libp2p::gossipsub::Behaviour;
#[cfg(not(feature = "pubsub"))]
type Gossipsub = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "mdns")]
type Mdns = libp2p::mdns::tokio::Behaviour;
#[cfg(not(feature = "mdns"))]
type Mdns = libp2p::swarm::dummy::Behaviour;

#[cfg(feature = "relay")]
type RelayClient = libp2p::relay::client::Behaviour;
#[cfg(not(feature = "relay"))]
type RelayClient = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "relay")]
type RelayServer = libp2p::relay::Behaviour;
#[cfg(not(feature = "relay"))]
type RelayServer = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "relay")]
type Dcutr = libp2p::dcutr::Behaviour;
#[cfg(not(feature = "relay"))]
type Dcutr = libp2p::swarm::dummy::Behaviour;

// Over relayed connections, what peers observe of this node is the relay's address.
#[cfg(feature = "relay")]
type Identify = crate::observed::DirectObservations<Delayed<identify::Behaviour>>;
#[cfg(not(feature = "relay"))]
type Identify = Delayed<identify::Behaviour>;

#[cfg(feature = "relay")]
type AutonatClient = libp2p::autonat::v2::client::Behaviour;
#[cfg(not(feature = "relay"))]
type AutonatClient = libp2p::swarm::dummy::Behaviour;
#[cfg(feature = "relay")]
type AutonatServer = libp2p::autonat::v2::server::Behaviour;
#[cfg(not(feature = "relay"))]
type AutonatServer = libp2p::swarm::dummy::Behaviour;

/// The node's libp2p behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) ip_limits: p2plane_transport::IpLimits,
    pub(crate) gate: Gate,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) streams: streams::Behaviour,
    pub(crate) identify: Identify,
    pub(crate) ping: Delayed<ping::Behaviour>,
    pub(crate) kad: Toggle<Kad>,
    pub(crate) gossipsub: Toggle<Gossipsub>,
    pub(crate) mdns: Toggle<Mdns>,
    /// Set by the swarm's builder, which creates it with the relay transport.
    pub(crate) relay_client: Toggle<RelayClient>,
    pub(crate) relay: Toggle<RelayServer>,
    pub(crate) dcutr: Toggle<Dcutr>,
    pub(crate) autonat_client: Toggle<AutonatClient>,
    pub(crate) autonat_server: Toggle<AutonatServer>,
}

impl Behaviour {
    /// Builds the protocols `config` asks for, with the node's key.
    pub(crate) fn new(
        config: &NodeConfig,
        keypair: &Keypair,
        gate: Gate,
        streams: streams::Behaviour,
    ) -> Result<Self, NodeError> {
        let local_peer_id = keypair.public().to_peer_id();
        Ok(Self {
            ip_limits: config.limits.ip_behaviour(),
            gate,
            limits: config.limits.behaviour(),
            streams,
            identify: identify_behaviour(config, keypair),
            ping: Delayed::new(
                ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(config.ping_interval)
                        .with_timeout(config.ping_timeout),
                ),
                config.identify_delay,
            ),
            kad: Toggle::from(kad(config, local_peer_id)?),
            gossipsub: Toggle::from(gossipsub(config, keypair)?),
            mdns: Toggle::from(mdns(config, local_peer_id)?),
            relay_client: Toggle::from(None),
            relay: Toggle::from(relay_server(config, local_peer_id)),
            dcutr: Toggle::from(dcutr(config, local_peer_id)),
            autonat_client: Toggle::from(autonat_client(config)),
            autonat_server: Toggle::from(autonat_server(config)),
        })
    }
}

fn identify_behaviour(config: &NodeConfig, keypair: &Keypair) -> Identify {
    let identify = Delayed::new(
        identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), keypair.public())
                .with_agent_version(format!("p2plane/{}", env!("CARGO_PKG_VERSION")))
                // A new listen address (a relay's circuit, once it accepts the reservation)
                // reaches connected peers, and through them the DHT, at once rather than
                // at the next periodic identify.
                .with_push_listen_addr_updates(true),
        ),
        config.identify_delay,
    );
    #[cfg(feature = "relay")]
    let identify = crate::observed::DirectObservations::new(identify);
    identify
}

#[cfg(feature = "relay")]
fn relay_server(config: &NodeConfig, local_peer_id: PeerId) -> Option<RelayServer> {
    config
        .reach
        .relay_server
        .as_ref()
        .map(|server| server.behaviour(local_peer_id))
}

#[cfg(not(feature = "relay"))]
fn relay_server(_: &NodeConfig, _: PeerId) -> Option<RelayServer> {
    None
}

#[cfg(feature = "relay")]
fn dcutr(config: &NodeConfig, local_peer_id: PeerId) -> Option<Dcutr> {
    config
        .reach
        .hole_punching
        .then(|| Dcutr::new(local_peer_id))
}

#[cfg(not(feature = "relay"))]
fn dcutr(_: &NodeConfig, _: PeerId) -> Option<Dcutr> {
    None
}

#[cfg(feature = "dht")]
fn kad(config: &NodeConfig, local_peer_id: PeerId) -> Result<Option<Kad>, NodeError> {
    let Some(dht) = &config.dht else {
        return Ok(None);
    };
    let store = dht
        .open_store(local_peer_id)
        .map_err(NodeError::RecordStore)?;
    Ok(Some(dht.behaviour_with_store(local_peer_id, store)))
}

#[cfg(not(feature = "dht"))]
fn kad(_: &NodeConfig, _: PeerId) -> Result<Option<Kad>, NodeError> {
    Ok(None)
}

#[cfg(feature = "pubsub")]
fn gossipsub(config: &NodeConfig, keypair: &Keypair) -> Result<Option<Gossipsub>, NodeError> {
    let Some(pubsub) = &config.pubsub else {
        return Ok(None);
    };
    pubsub
        .behaviour(keypair, config.max_message_size)
        .map(Some)
        .map_err(NodeError::Pubsub)
}

#[cfg(not(feature = "pubsub"))]
fn gossipsub(_: &NodeConfig, _: &Keypair) -> Result<Option<Gossipsub>, NodeError> {
    Ok(None)
}

#[cfg(feature = "mdns")]
fn mdns(config: &NodeConfig, local_peer_id: PeerId) -> Result<Option<Mdns>, NodeError> {
    if !config.mdns {
        return Ok(None);
    }
    Mdns::new(libp2p::mdns::Config::default(), local_peer_id)
        .map(Some)
        .map_err(|e| NodeError::Mdns(e.to_string()))
}

#[cfg(not(feature = "mdns"))]
fn mdns(_: &NodeConfig, _: PeerId) -> Result<Option<Mdns>, NodeError> {
    Ok(None)
}

#[cfg(feature = "relay")]
fn autonat_client(config: &NodeConfig) -> Option<AutonatClient> {
    config.reach.autonat.then(|| {
        AutonatClient::new(
            rand::make_rng::<rand::rngs::StdRng>(),
            libp2p::autonat::v2::client::Config::default()
                .with_probe_interval(config.reach.autonat_probe_interval),
        )
    })
}

#[cfg(not(feature = "relay"))]
fn autonat_client(_: &NodeConfig) -> Option<AutonatClient> {
    None
}

#[cfg(feature = "relay")]
fn autonat_server(config: &NodeConfig) -> Option<AutonatServer> {
    config.reach.autonat.then(AutonatServer::default)
}

#[cfg(not(feature = "relay"))]
fn autonat_server(_: &NodeConfig) -> Option<AutonatServer> {
    None
}
