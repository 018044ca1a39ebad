//! Starting a node: the swarm, its listener, the first dials, the metrics endpoint, and the
//! event loop's task.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use libp2p::{Swarm, swarm::SwarmEvent};
use p2plane_codec::CborCodec;
use p2plane_core::PeerStore;
use p2plane_transport::identity;
use tokio::sync::{broadcast, mpsc, watch};

use super::{Behaviour, EventLoop};
use crate::{
    Identity, NodeConfig, NodeError, budget::Budget, error::error_chain, event::Event, gate::Gate,
    node_state::NodeState, peer_table::PeerTable, rpc::shared_stream::SharedStreams, streams,
    unverified::Unverified,
};

/// How many commands may queue for the event loop before callers wait.
const COMMAND_QUEUE: usize = 256;
/// How many events are buffered for subscribers.
const EVENT_BUFFER: usize = 1024;
/// How long `Node::new` waits for its listener to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

impl EventLoop {
    /// Builds the swarm `config` describes, waits for its listener, dials the peers it
    /// knows and its bootstrap address, starts the metrics endpoint, and spawns the event
    /// loop. Returns what the node's handles share.
    pub(crate) async fn start(config: NodeConfig) -> Result<NodeState, NodeError> {
        #[cfg(feature = "relay")]
        config.reach.check()?;
        let keypair = match &config.identity {
            Identity::Generate => identity::generate(),
            Identity::KeyFile(path) => identity::load_or_create(path)?,
            Identity::Keypair(k) => k.clone(),
        };
        let local_peer_id = keypair.public().to_peer_id();
        let streams = streams::Behaviour::new();
        let control = streams.control();
        let shared_streams = Arc::new(SharedStreams::default());
        let unverified = Arc::new(Unverified::default());
        let gate = Gate::new(
            Arc::clone(&config.peer_store),
            config.allowed_peers.clone(),
            Arc::clone(&unverified),
        );
        let behaviour = Behaviour::new(&config, &keypair, gate, streams)?;
        #[cfg(feature = "relay")]
        let mut swarm = p2plane_transport::build_swarm_with_relay_client(
            keypair,
            &config.transport,
            move |_, relay_client| Behaviour {
                relay_client: Some(relay_client).into(),
                ..behaviour
            },
        )?;
        #[cfg(not(feature = "relay"))]
        let mut swarm =
            p2plane_transport::build_swarm(keypair, &config.transport, move |_| behaviour)?;
        let first_addr = listen(&mut swarm, &config).await?;
        tracing::info!(peer = %local_peer_id, addr = %first_addr, "node started");

        seed_dht(&mut swarm, &config);
        // Known peers first: a restarted node does not depend on the bootstrap node.
        redial_known_peers(
            &mut swarm,
            config.peer_store.as_ref(),
            config.redial_on_start,
        );
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        if let Some(addr) = &config.bootstrap_addr
            && let Err(e) = swarm.dial(addr.clone())
        {
            let _ = events.send(Event::DialFailed {
                peer: None,
                reason: error_chain(&e),
            });
        }
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        #[cfg(feature = "relay")]
        let reach = super::reach::ReachState::start(&mut swarm, &config, &first_addr, &commands_tx);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        #[cfg(feature = "metrics")]
        let (libp2p_metrics, metrics, metrics_addr) = match config.metrics_addr {
            Some(addr) => {
                let (libp2p, own, bound) =
                    crate::metrics::start(addr, &config, shutdown_rx.clone()).await?;
                (Some(libp2p), Some(own), Some(bound))
            }
            None => (None, None, None),
        };
        #[cfg(not(feature = "metrics"))]
        let metrics = None;
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let peers = Arc::new(PeerTable::default());
        let served_streams = Arc::default();
        let event_loop = EventLoop {
            served_streams: Arc::clone(&served_streams),
            swarm,
            commands: commands_rx,
            events: events.clone(),
            shutdown: shutdown_tx,
            stopped: stopped_tx,
            pending_dials: HashMap::new(),
            peers: Arc::clone(&peers),
            shared_streams: Arc::clone(&shared_streams),
            store: Arc::clone(&config.peer_store),
            unverified: Arc::clone(&unverified),
            allow_private_addrs: config.allow_private_addrs,
            #[cfg(feature = "dht")]
            dht: p2plane_dht::DhtState::new(config.dht.as_ref().and_then(|d| d.validator.clone())),
            #[cfg(feature = "dht")]
            kad_protocol: config
                .dht
                .as_ref()
                .map(p2plane_dht::DhtConfig::stream_protocol),
            #[cfg(feature = "pubsub")]
            pubsub: crate::pubsub::PubsubState::new(config.max_message_size, &commands_tx),
            #[cfg(feature = "metrics")]
            metrics: libp2p_metrics,
            #[cfg(feature = "relay")]
            reach,
        };
        tokio::spawn(event_loop.run());

        Ok(NodeState {
            commands: commands_tx,
            control,
            codec: CborCodec::new(config.max_message_size),
            events,
            shutdown: shutdown_rx,
            stopped: stopped_rx,
            local_peer_id,
            peers,
            shared_streams,
            unverified,
            budget: Arc::new(Budget::new(
                config.max_inbound_bytes,
                config.max_inbound_bytes_per_peer,
            )),
            metrics,
            #[cfg(feature = "metrics")]
            metrics_addr,
            outbound_streams: Arc::new(tokio::sync::Semaphore::new(config.streams.max_outbound)),
            served_streams,
            config,
        })
    }
}

/// Listens on `config.listen_addr` and returns the first address once the listener is up
/// (events before it are not needed by anyone: nothing else runs yet).
async fn listen(
    swarm: &mut Swarm<Behaviour>,
    config: &NodeConfig,
) -> Result<libp2p::Multiaddr, NodeError> {
    let listen_error = |reason: String| NodeError::Listen {
        addr: config.listen_addr.clone(),
        reason,
    };
    let listener = swarm
        .listen_on(config.listen_addr.clone())
        .map_err(|e| listen_error(error_chain(&e)))?;
    tokio::time::timeout(LISTEN_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } if listener_id == listener => {
                    return Ok(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if listener_id == listener => {
                    return Err(listen_error(match reason {
                        Ok(()) => "listener closed".to_owned(),
                        Err(e) => error_chain(&e),
                    }));
                }
                SwarmEvent::ListenerError { listener_id, error } if listener_id == listener => {
                    return Err(listen_error(error_chain(&error)));
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| listen_error("timed out waiting for the listener".to_owned()))?
}

/// The DHT starts from the peers the store knows to speak it.
#[cfg(feature = "dht")]
fn seed_dht(swarm: &mut Swarm<Behaviour>, config: &NodeConfig) {
    let (Some(dht), Some(kad)) = (&config.dht, swarm.behaviour_mut().kad.as_mut()) else {
        return;
    };
    let name = dht.protocol.as_str();
    let store = config.peer_store.as_ref();
    for peer in store.get_peers() {
        let Some(record) = store.record(&peer) else {
            continue;
        };
        if record.protocols.iter().any(|p| p == name) {
            for (addr, _) in record.addresses {
                kad.add_address(&peer, addr);
            }
        }
    }
}

#[cfg(not(feature = "dht"))]
fn seed_dht(_: &mut Swarm<Behaviour>, _: &NodeConfig) {}

/// Dials up to `limit` peers the store knows, most recently successful first, skipping
/// banned peers and peers without addresses. Their outcomes are recorded as usual.
fn redial_known_peers(swarm: &mut Swarm<Behaviour>, store: &dyn PeerStore, limit: usize) {
    let now = SystemTime::now();
    let mut known: Vec<_> = store
        .get_peers()
        .into_iter()
        .filter_map(|peer| store.record(&peer).map(|record| (peer, record)))
        .filter(|(_, record)| !record.is_banned_at(now) && !record.addresses.is_empty())
        .collect();
    // Most recently successful first; never-successful peers last, most recently seen first.
    known.sort_by_key(|(_, r)| {
        std::cmp::Reverse((r.last_success, r.addresses.first().map(|(_, seen)| *seen)))
    });
    for (peer, record) in known.into_iter().take(limit) {
        let addrs = record.addresses.into_iter().map(|(a, _)| a).collect();
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        if let Err(e) = swarm.dial(opts) {
            tracing::debug!(%peer, error = %error_chain(&e), "redial failed");
        }
    }
}
