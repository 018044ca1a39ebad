//! The node and its peer store over TCP on 127.0.0.1: restarts without the bootstrap node,
//! bans, dial backoff.

mod common;

use std::{convert::Infallible, sync::Arc, time::Duration};

use common::*;
use p2plane::{
    Error, Event, Node, NodeConfig, PeerId, PeerStore, Protocol, Request,
    peers::{MemoryPeerStore, RedbPeerStore},
    service_fn,
};

/// Peer exchange for the test network: the bootstrap node answers with the peers it knows
/// and their addresses, from its peer store.
struct WhoElse;
impl Protocol for WhoElse {
    const NAME: &'static str = "/p2plane-test/who-else/1.0.0";
    type Request = ();
    type Response = Vec<(Vec<u8>, Vec<String>)>;
}

fn serve_who_else(node: &Node<Echo>) {
    let store = node.peer_store();
    node.serve_protocol::<WhoElse, _>(service_fn(move |req: Request<()>| {
        let store = Arc::clone(&store);
        async move {
            let known = store
                .get_peers()
                .into_iter()
                .filter(|p| *p != req.peer())
                .map(|p| {
                    (
                        p.to_bytes(),
                        store
                            .addresses(&p)
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                    )
                })
                .collect();
            Ok::<_, Infallible>(known)
        }
    }))
    .unwrap();
}

fn private(config: NodeConfig) -> NodeConfig {
    config.with_private_addrs(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_finds_its_peers_without_the_bootstrap_node() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = echo_node(private(config(TCP))).await;
    serve_who_else(&bootstrap);
    let bootstrap_addr = first_addr(&bootstrap).await;
    let mut bootstrap_events = bootstrap.events();

    // Five nodes join through the bootstrap node; the first keeps a persistent store.
    let key = dir.path().join("node0.key");
    let store_path = dir.path().join("node0.peers");
    let mut nodes = Vec::new();
    for i in 0..5 {
        let mut config = private(config(TCP)).with_bootstrap(bootstrap_addr.clone());
        if i == 0 {
            config = config
                .with_key_file(&key)
                .with_peer_store(Arc::new(RedbPeerStore::open(&store_path).unwrap()));
        }
        nodes.push(echo_node(config).await);
    }
    // The bootstrap node has heard from all five (identify brings their listen addresses).
    let mut identified = std::collections::HashSet::new();
    while identified.len() < 5 {
        let peer = wait_event(
            &mut bootstrap_events,
            "a node identified by the bootstrap node",
            |e| match e {
                Event::PeerIdentified { peer, .. } => Some(*peer),
                _ => None,
            },
        )
        .await;
        identified.insert(peer);
    }
    // Each node asks the bootstrap node who else is there and connects to them.
    let bootstrap_peer = bootstrap.local_peer_id();
    for node in &nodes {
        let known = node
            .client_for::<WhoElse>()
            .request(bootstrap_peer, ())
            .await
            .unwrap();
        assert_eq!(known.len(), 4, "the bootstrap node knows the other four");
        for (peer, addrs) in known {
            let peer = PeerId::from_bytes(&peer).unwrap();
            let addr = addrs.first().expect("an address").parse().unwrap();
            assert_eq!(within("dial", node.dial(addr)).await.unwrap(), peer);
        }
    }
    let first = nodes.remove(0);
    let first_id = first.local_peer_id();
    assert_eq!(first.connected_peers().await.unwrap().len(), 5);

    // The bootstrap node goes away; the first node stops (flushing its store) and restarts
    // with the same key and store and no bootstrap address.
    bootstrap.shutdown().await;
    let mut watchers = Vec::new();
    for node in &nodes {
        watchers.push((node.clone(), node.events()));
    }
    first.shutdown().await;
    drop(first);
    let restarted = echo_node(
        private(config(TCP))
            .with_key_file(&key)
            .with_peer_store(Arc::new(RedbPeerStore::open(&store_path).unwrap())),
    )
    .await;
    assert_eq!(restarted.local_peer_id(), first_id);

    // Its old peers see it come back: at least three of the four (all four, in practice).
    let mut back = 0;
    for (node, events) in &mut watchers {
        wait_event(events, "the restarted node to reconnect", |e| {
            matches!(e, Event::PeerConnected { peer, inbound: true, .. } if *peer == first_id)
                .then_some(())
        })
        .await;
        // And it serves their requests.
        let reply = node.client().request(first_id, echo(42)).await.unwrap();
        assert_eq!(reply, answer(&echo(42), first_id));
        back += 1;
    }
    assert!(back >= 3);
}

#[tokio::test]
async fn banned_peers_are_refused_inbound_and_outbound() {
    let a = echo_node(private(config(TCP))).await;
    let b = echo_node(private(config(TCP))).await;
    let (a_addr, b_addr) = (first_addr(&a).await, first_addr(&b).await);
    let mut a_events = a.events();
    let b_id = b.dial(a_addr.clone()).await.unwrap();
    assert_eq!(b_id, a.local_peer_id());
    wait_event(&mut a_events, "A to see B connect", |e| {
        matches!(e, Event::PeerConnected { peer, .. } if *peer == b.local_peer_id()).then_some(())
    })
    .await;

    a.ban(b.local_peer_id(), Duration::from_secs(3600))
        .await
        .unwrap();
    wait_event(&mut a_events, "the banned peer to be disconnected", |e| {
        matches!(e, Event::PeerDisconnected { peer } if *peer == b.local_peer_id()).then_some(())
    })
    .await;
    assert!(a.peer_store().is_banned(&b.local_peer_id()));

    // Outbound: A will not dial B, by address or for a request.
    let err = a.dial(b_addr).await.unwrap_err();
    assert!(
        matches!(&err, Error::Dial { reason, .. } if reason.contains("banned")),
        "{err:?}"
    );
    let err = a
        .client()
        .request(b.local_peer_id(), echo(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Dial { reason, .. } if reason.contains("banned")),
        "{err:?}"
    );

    // Inbound: B's requests to A do not get through.
    let result = b.client().request(a.local_peer_id(), echo(2)).await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        !a.connected_peers()
            .await
            .unwrap()
            .contains(&b.local_peer_id())
    );
}

#[tokio::test]
async fn failed_dials_back_off_and_outcomes_are_recorded() {
    let store = Arc::new(MemoryPeerStore::default());
    let node = Node::<Echo>::new(private(config(TCP)).with_peer_store(store.clone()))
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = PeerId::random();
    store.add_peer_with_addr(gone, format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap());

    let first = node.client().request(gone, echo(1)).await.unwrap_err();
    assert!(matches!(first, Error::Dial { .. }), "{first:?}");
    let record = store.record(&gone).unwrap();
    assert_eq!(record.failures, 1);
    // A second request at once is refused locally: the peer is in backoff.
    let second = node.client().request(gone, echo(2)).await.unwrap_err();
    assert!(
        matches!(&second, Error::Dial { reason, .. } if reason.contains("backing off")),
        "{second:?}"
    );
    assert_eq!(
        store.record(&gone).unwrap().failures,
        1,
        "a refusal of our own is not a failure"
    );

    // A successful dial records success and the address.
    let server = echo_node(config(TCP)).await;
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let record = store.record(&peer).unwrap();
    assert!(record.last_success.is_some() && record.failures == 0);
    assert!(!record.addresses.is_empty());
}

#[tokio::test]
async fn private_addresses_are_kept_only_when_allowed() {
    let server = echo_node(config(TCP)).await;
    let store = Arc::new(MemoryPeerStore::default());
    let node = Node::<Echo>::new(config(TCP).with_peer_store(store.clone()))
        .await
        .unwrap();
    let mut events = node.events();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    wait_event(&mut events, "identify", |e| {
        matches!(e, Event::PeerIdentified { peer: p, .. } if *p == peer).then_some(())
    })
    .await;
    let record = store
        .record(&peer)
        .expect("the outcome and protocols are recorded");
    assert!(
        record.addresses.is_empty(),
        "loopback addresses were kept: {:?}",
        record.addresses
    );
    assert!(
        record
            .protocols
            .iter()
            .any(|p| p == <Echo as p2plane::Message>::PROTOCOL)
    );
}
