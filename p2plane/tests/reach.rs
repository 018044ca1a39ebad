//! Reach on loopback: a node listens through a relay, a peer that knows only the relay's
//! address reaches it through the circuit, and hole punching then gives them a direct
//! connection. WebSocket carries requests like TCP. (The NAT topologies, where a direct
//! dial is impossible, are the network test bed's.)

mod common;

use common::{TCP, config, echo, echo_node, first_addr, wait_event, within};
use p2plane::{
    Event, Multiaddr, Node, PeerId, ReachConfig, RelayServerConfig,
    transport::libp2p::multiaddr::Protocol,
};

use p2plane::transport::is_relayed as relayed;

/// The node's listen address through its relay, once the relay has accepted it.
async fn circuit_addr(node: &Node<common::Echo>) -> Multiaddr {
    // Subscribe first, then look: an address that came before is in the list, one that
    // comes after is an event.
    let mut events = node.events();
    if let Some(addr) = node.listen_addrs().await.unwrap().into_iter().find(relayed) {
        return addr;
    }
    wait_event(&mut events, "a circuit listen address", |e| match e {
        Event::Listening { addr } if relayed(addr) => Some(addr.clone()),
        _ => None,
    })
    .await
}

/// Sends each request to `peer`, one at a time, and checks each answer.
async fn ask_all(
    node: &Node<common::Echo>,
    peer: PeerId,
    what: &str,
    requests: impl IntoIterator<Item = common::Echo>,
) {
    for request in requests {
        let reply = within(what, node.client().request(peer, request.clone()))
            .await
            .unwrap_or_else(|e| panic!("{what}, request {}: {e}", request.seq));
        assert_eq!(reply, common::answer(&request, peer));
    }
}

/// A 1 KiB request.
fn kib(seq: u64) -> common::Echo {
    common::Echo {
        seq,
        text: "x".repeat(1024),
    }
}

/// A circuit carries at most this many bytes each way.
const CIRCUIT_BYTES: u64 = 16 * 1024;

/// A relay: serves circuits of at most [`CIRCUIT_BYTES`], is in no DHT.
async fn relay() -> (Node<common::Echo>, Multiaddr) {
    let mut limits = RelayServerConfig::default();
    limits.max_circuit_bytes = CIRCUIT_BYTES;
    let node = echo_node(
        config(TCP)
            .with_private_addrs(true)
            .with_dht(None)
            .with_reach(ReachConfig::default().with_relay_server(limits)),
    )
    .await;
    let addr = first_addr(&node)
        .await
        .with(Protocol::P2p(node.local_peer_id()));
    (node, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_relay_is_reached_through_it_then_directly() {
    let (relay, relay_addr) = relay().await;

    // The listener reserves a slot on the relay and listens through it.
    let listener = echo_node(
        config(TCP)
            .with_private_addrs(true)
            .with_dht(None)
            .with_reach(ReachConfig::default().with_relay(relay_addr.clone())),
    )
    .await;
    let circuit = circuit_addr(&listener).await;
    assert!(
        circuit.to_string().starts_with(&relay_addr.to_string()),
        "{circuit} is not through {relay_addr}"
    );

    // A peer that knows only the relay's address dials the listener through the circuit.
    let dialer = echo_node(config(TCP).with_private_addrs(true).with_dht(None)).await;
    let mut dialer_events = dialer.events();
    // As a running node would, it has been connected to the relay long enough to learn
    // (from identify) the address the relay sees it at: hole punching sends those.
    let relay_id = within("the dial to the relay", dialer.dial(relay_addr.clone()))
        .await
        .unwrap();
    wait_event(&mut dialer_events, "the relay identified", |e| match e {
        Event::PeerIdentified { peer, .. } if *peer == relay_id => Some(()),
        _ => None,
    })
    .await;
    // The circuit address ends with the listener's id: `<relay>/p2p-circuit/p2p/<listener>`.
    assert_eq!(
        circuit.iter().last(),
        Some(Protocol::P2p(listener.local_peer_id()))
    );
    let peer = within("the relayed dial", dialer.dial(circuit))
        .await
        .unwrap();
    assert_eq!(peer, listener.local_peer_id());
    ask_all(&dialer, peer, "a request over the relay", [echo(1)]).await;

    // Hole punching (DCUtR) opens a direct connection; requests keep being answered.
    let upgraded = wait_event(&mut dialer_events, "the direct upgrade", |e| match e {
        Event::DirectUpgrade { peer: p } if *p == peer => Some(Ok(())),
        Event::DirectUpgradeFailed { peer: p, reason } if *p == peer => Some(Err(reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(upgraded, Ok(()), "hole punch on loopback failed");
    // Requests now go over the direct connection: four times what the circuit may carry
    // passes without one failure (on the circuit, the relay would cut it mid-way).
    ask_all(
        &dialer,
        peer,
        "a request after the upgrade",
        (2..66).map(kib),
    )
    .await;
    // With the relay gone, only the direct connection can carry the requests.
    relay.shutdown().await;
    ask_all(
        &dialer,
        peer,
        "a request without the relay",
        (66..80).map(echo),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_over_websocket() {
    let server = echo_node(config("/ip4/127.0.0.1/tcp/0/ws").with_dht(None)).await;
    let addr = first_addr(&server).await;
    assert!(
        addr.iter().any(|p| matches!(p, Protocol::Ws(_))),
        "{addr} is not a WebSocket address"
    );
    let client = echo_node(config(TCP).with_dht(None)).await;
    let peer = within("the WebSocket dial", client.dial(addr))
        .await
        .unwrap();
    ask_all(&client, peer, "a request over WebSocket", (0..50).map(echo)).await;
}

/// A relay, a listener behind it and a dialer connected to the listener through the relay,
/// neither trying to hole-punch; `private_addrs`: whether they keep private (here: loopback)
/// addresses. Returns the nodes, the listener's id and the dialer's events from before the
/// dial.
async fn relayed_pair(
    private_addrs: bool,
) -> (
    Node<common::Echo>,
    Node<common::Echo>,
    Node<common::Echo>,
    PeerId,
    p2plane::Events,
) {
    relayed_pair_with(private_addrs, None).await
}

/// [`relayed_pair`], with pub/sub on both ends when `pubsub` is set.
async fn relayed_pair_with(
    private_addrs: bool,
    pubsub: Option<p2plane::PubsubConfig>,
) -> (
    Node<common::Echo>,
    Node<common::Echo>,
    Node<common::Echo>,
    PeerId,
    p2plane::Events,
) {
    let (relay, relay_addr) = relay().await;
    let end = |reach: ReachConfig| {
        config(TCP)
            .with_private_addrs(private_addrs)
            .with_dht(None)
            .with_pubsub(pubsub.clone())
            .with_reach(reach.with_hole_punching(false))
    };
    let listener = echo_node(end(ReachConfig::default().with_relay(relay_addr))).await;
    let circuit = circuit_addr(&listener).await;
    let dialer = echo_node(end(ReachConfig::default())).await;
    let events = dialer.events();
    let peer = within("the relayed dial", dialer.dial(circuit))
        .await
        .unwrap();
    (relay, listener, dialer, peer, events)
}

/// A topic of echo messages.
struct Chat;
impl p2plane::Topic for Chat {
    const NAME: &'static str = "p2plane-test/chat";
    type Message = common::Echo;
}

/// Pub/sub works over a relayed connection: the two ends, which cannot reach each other
/// otherwise (no hole punching, no private addresses kept), form a mesh through the circuit
/// and each receives what the other publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_works_over_a_relayed_connection() {
    let pubsub = p2plane::PubsubConfig {
        heartbeat_interval: std::time::Duration::from_millis(100),
        ..p2plane::PubsubConfig::default()
    };
    let (_relay, listener, dialer, listener_id, _) = relayed_pair_with(false, Some(pubsub)).await;
    let mut heard_by_listener = listener.subscribe::<Chat>().await.unwrap();
    let mut heard_by_dialer = dialer.subscribe::<Chat>().await.unwrap();
    let dialer_id = dialer.local_peer_id();
    // The mesh forms on the heartbeat, through the circuit.
    within("the mesh through the relay", async {
        loop {
            let a = listener.topic_peers::<Chat>().await.unwrap();
            let b = dialer.topic_peers::<Chat>().await.unwrap();
            if a.contains(&dialer_id) && b.contains(&listener_id) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        dialer
            .connected_peers()
            .await
            .unwrap()
            .contains(&listener_id),
        "the dialer lost its relayed connection"
    );
    dialer.publish::<Chat>(&echo(1)).await.unwrap();
    listener.publish::<Chat>(&echo(2)).await.unwrap();
    let got = within("the dialer's message", heard_by_listener.recv())
        .await
        .expect("subscribed");
    assert_eq!((got.message, got.author), (echo(1), Some(dialer_id)));
    let got = within("the listener's message", heard_by_dialer.recv())
        .await
        .expect("subscribed");
    assert_eq!((got.message, got.author), (echo(2), Some(listener_id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hole_punching_requests_go_through_the_relay_within_its_limits() {
    // Neither end keeps private addresses: neither can learn the other's loopback address
    // and dial it directly, so the circuit is the only path, as behind NATs.
    let (_relay, _listener, dialer, peer, mut dialer_events) = relayed_pair(false).await;
    ask_all(&dialer, peer, "a request over the relay", [echo(1)]).await;
    // 1 KiB requests, one at a time, four times what a circuit may carry: the relay ends
    // the circuit once it has carried CIRCUIT_BYTES. What happens next depends on whether
    // the dialer still holds an address for the listener (it keeps no private addresses,
    // and this relay's is one): it dials a new circuit, or the request fails with a typed
    // dial or connection error. Never a hang (`within`), never a request lost silently.
    let (mut answered, mut failed) = (0u64, 0u64);
    for seq in 0..4 * CIRCUIT_BYTES / 1024 {
        let request = kib(seq);
        match within(
            "a request near the circuit's limit",
            dialer.client().request(peer, request.clone()),
        )
        .await
        {
            Ok(reply) => {
                assert_eq!(reply, common::answer(&request, peer));
                answered += 1;
            }
            Err(p2plane::Error::Dial { .. } | p2plane::Error::ConnectionClosed { .. }) => {
                failed += 1;
            }
            Err(e) => panic!("request {seq}: {e}"),
        }
    }
    let mut cut = false;
    while let Some(Some(event)) =
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut dialer_events))
    {
        cut |= matches!(event, Event::PeerDisconnected { peer: p } if p == peer);
    }
    assert!(
        cut,
        "the relay never cut the circuit ({answered} KiB answered)"
    );
    assert!(answered >= 4, "{answered} answered, {failed} failed");
}

/// A relay that ends a circuit after [`CIRCUIT_BYTES`] cuts the connection under requests
/// in flight: with the retry layer, each of them is sent again (on a new connection) and
/// answered. None is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_with_their_relayed_connection_are_retried_and_answered() {
    use futures::StreamExt as _;
    use p2plane::{
        Request, RetryLayer, RetryPolicy,
        tower::{ServiceBuilder, ServiceExt as _},
    };
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    let (_relay, _listener, dialer, peer, mut events) = relayed_pair(true).await;
    // Every attempt that leaves the retry layer is counted.
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = {
        let attempts = Arc::clone(&attempts);
        move |req: Request<common::Echo>| {
            attempts.fetch_add(1, Ordering::Relaxed);
            req
        }
    };
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::exponential(5)
                .with_base_delay(std::time::Duration::from_millis(20))
                .without_budget(),
        ))
        .map_request(counted)
        .service(dialer.client());
    // Four times what the circuit carries, eight requests always in flight.
    let requests = 4 * CIRCUIT_BYTES / 1024;
    let replies: Vec<_> = within(
        "requests across the cut",
        futures::stream::iter(0..requests)
            .map(|seq| {
                let client = client.clone();
                async move {
                    let request = kib(seq);
                    let reply = client.oneshot(Request::new(peer, request.clone())).await;
                    (request, reply)
                }
            })
            .buffer_unordered(8)
            .collect(),
    )
    .await;
    for (request, reply) in replies {
        let reply = reply.unwrap_or_else(|e| panic!("request {} lost: {e}", request.seq));
        assert_eq!(reply, common::answer(&request, peer));
    }
    let mut cut = false;
    while let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
        cut |= matches!(event, Event::PeerDisconnected { peer: p } if p == peer);
    }
    let sent = attempts.load(Ordering::Relaxed);
    assert!(cut, "the relay never cut the circuit");
    assert!(
        sent > requests,
        "no request was in flight when the circuit was cut ({sent} attempts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_address_without_its_peer_id_is_refused() {
    let refused = |addr: &str| {
        let addr: Multiaddr = addr.parse().unwrap();
        let config = config(TCP).with_reach(ReachConfig::default().with_relay(addr.clone()));
        async move {
            match Node::<common::Echo>::new(config).await {
                Err(p2plane::NodeError::Relay { addr: refused, .. }) => assert_eq!(refused, addr),
                Err(e) => panic!("{addr}: the wrong error: {e}"),
                Ok(_) => panic!("{addr}: the node started"),
            }
        }
    };
    refused("/ip4/127.0.0.1/tcp/4001").await;
    refused(
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq\
         /p2p-circuit/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_lost_with_its_relay_is_made_again_when_the_relay_returns() {
    // The relay comes back with the same key on the same port.
    let key = p2plane::transport::identity::generate();
    let relay_config = |listen: &str| p2plane::NodeConfig {
        identity: p2plane::Identity::Keypair(key.clone()),
        ..config(listen)
            .with_private_addrs(true)
            .with_dht(None)
            .with_reach(ReachConfig::default().with_relay_server(RelayServerConfig::default()))
    };
    let relay = echo_node(relay_config(TCP)).await;
    let relay_listen = first_addr(&relay).await;
    let relay_addr = relay_listen
        .clone()
        .with(Protocol::P2p(relay.local_peer_id()));

    let listener = echo_node(
        config(TCP)
            .with_private_addrs(true)
            .with_dht(None)
            .with_reach(
                ReachConfig::default()
                    .with_hole_punching(false)
                    .with_relay(relay_addr.clone()),
            ),
    )
    .await;
    let circuit = circuit_addr(&listener).await;
    let mut events = listener.events();

    // The relay goes away: the listener is told, and a peer cannot reach it through the
    // relay (a typed error, not a hang).
    relay.shutdown().await;
    wait_event(&mut events, "the lost reservation", |e| match e {
        Event::RelayReservationFailed { relay, .. } if *relay == relay_addr => Some(()),
        _ => None,
    })
    .await;
    let dialer = echo_node(config(TCP).with_private_addrs(true).with_dht(None)).await;
    let refused = within(
        "a dial through the missing relay",
        dialer.dial(circuit.clone()),
    )
    .await;
    assert!(
        refused.is_err(),
        "dialled through a relay that is gone: {refused:?}"
    );

    // The relay returns: the listener reserves again by itself, and is reached.
    let _relay = echo_node(relay_config(&relay_listen.to_string())).await;
    wait_event(&mut events, "the renewed reservation", |e| match e {
        Event::RelayReservation { relay } if *relay == relay_addr_peer(&relay_addr) => Some(()),
        _ => None,
    })
    .await;
    let peer = within("a dial through the returned relay", dialer.dial(circuit))
        .await
        .unwrap();
    ask_all(
        &dialer,
        peer,
        "a request through the returned relay",
        (0..10).map(echo),
    )
    .await;
}

/// The peer id at the end of a relay's address.
fn relay_addr_peer(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => panic!("{addr} has no /p2p"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_confirms_an_address_that_peers_can_dial() {
    let quick = || {
        ReachConfig::default().with_autonat_probe_interval(std::time::Duration::from_millis(100))
    };
    let server = echo_node(config(TCP).with_dht(None).with_reach(quick())).await;
    let server_addr = first_addr(&server).await;
    let node = echo_node(config(TCP).with_dht(None).with_reach(quick())).await;
    let listen = first_addr(&node).await;
    let mut events = node.events();
    within("the dial", node.dial(server_addr)).await.unwrap();
    // The server observes this node at its listen address (TCP dials reuse the listening
    // port), dials it back, and the address is confirmed.
    let addrs = wait_event(&mut events, "the reachability report", |e| match e {
        Event::Reachability {
            public: true,
            addrs,
        } => Some(addrs.clone()),
        _ => None,
    })
    .await;
    assert!(addrs.contains(&listen), "{addrs:?} lacks {listen}");
}
