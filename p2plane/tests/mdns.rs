//! Local discovery by mDNS. Multicast must not reach a real network, so the test runs itself
//! again inside a new, empty network namespace (`unshare -n`) holding one veth pair — two
//! "hosts" on one link — and is skipped, saying why, where namespaces cannot be created.
//! Besides discovery, it checks that a peer heard of by mDNS stays out of the DHT routing
//! table (issue 16, defect 11).

mod common;

use std::process::Command;

use common::{Echo, wait_event, within};
use p2plane::{Event, Node, NodeConfig, Request, tower::ServiceExt};

const INSIDE: &str = "P2PLANE_TEST_IN_NETNS";
const TEST: &str = "nodes_on_one_link_find_each_other_by_mdns";

fn sh(script: &str) {
    let status = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script} failed");
}

#[test]
fn nodes_on_one_link_find_each_other_by_mdns() {
    if std::env::var_os(INSIDE).is_none() {
        let probe = Command::new("unshare").args(["-n", "true"]).status();
        if !matches!(probe, Ok(s) if s.success()) {
            return common::skip(
                TEST,
                "cannot create a network namespace here (unshare -n needs CAP_SYS_ADMIN)",
            );
        }
        let status = Command::new("unshare")
            .args(["-n", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(INSIDE, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the test failed inside its namespace");
        return;
    }
    // Inside the namespace: nothing here can reach the host's networks.
    sh("ip link set lo up \
        && ip link add p2pl-a type veth peer name p2pl-b \
        && ip addr add 10.77.0.1/24 dev p2pl-a && ip addr add 10.77.0.2/24 dev p2pl-b \
        && ip link set p2pl-a up && ip link set p2pl-b up");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(discover());
}

async fn discover() {
    let config = |ip: &str| {
        NodeConfig::listen_on(format!("/ip4/{ip}/tcp/0").parse().unwrap())
            .with_dht(None)
            .with_mdns(true)
    };
    let a = common::echo_node(config("10.77.0.1")).await;
    let mut a_events = a.events();
    let b = Node::<Echo>::new(config("10.77.0.2")).await.unwrap();
    let mut b_events = b.events();
    let (a_id, b_id) = (a.local_peer_id(), b.local_peer_id());

    // b's event loop runs from inside `Node::new`, and mDNS answers within a millisecond on a
    // veth link: b may have found a before `b.events()` subscribed. What it found is in its peer
    // store, so look there first (after subscribing, so that nothing falls between the two).
    let known = b.peer_store().addresses(&a_id).into_iter().next();
    let addr = match known {
        Some(addr) => addr,
        None => {
            wait_event(&mut b_events, "b discovering a", |e| match e {
                Event::PeerDiscovered { peer, addr } if *peer == a_id => Some(addr.clone()),
                _ => None,
            })
            .await
        }
    };
    assert!(
        addr.to_string().starts_with("/ip4/10.77.0.1/tcp/"),
        "{addr}"
    );
    wait_event(&mut a_events, "a discovering b", |e| {
        matches!(e, Event::PeerDiscovered { peer, .. } if *peer == b_id).then_some(())
    })
    .await;
    // Discovery connects them: b asks a without ever being told its address.
    let reply = within(
        "an answer",
        b.client().oneshot(Request::new(a_id, common::echo(3))),
    )
    .await
    .unwrap();
    assert_eq!(reply, common::answer(&common::echo(3), a_id));

    not_in_the_routing_table_before_a_connection().await;
}

/// Issue 16, defect 11: a peer heard of by mDNS used to enter the DHT's routing table on
/// the announcement alone, before any connection proved it or showed that it speaks
/// Kademlia. A plain libp2p peer announcing itself by mDNS, speaking no Kademlia, must be
/// discovered and connected but stay out of the routing table.
async fn not_in_the_routing_table_before_a_connection() {
    use futures::StreamExt as _;
    use p2plane::{
        DhtConfig, DhtMode,
        transport::{TransportConfig, build_swarm, identity},
    };

    let victim = common::echo_node(
        NodeConfig::listen_on("/ip4/10.77.0.1/tcp/0".parse().unwrap())
            .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)))
            .with_mdns(true),
    )
    .await;
    let mut events = victim.events();
    let mut stranger = build_swarm(identity::generate(), &TransportConfig::default(), |key| {
        libp2p::mdns::tokio::Behaviour::new(
            libp2p::mdns::Config::default(),
            key.public().to_peer_id(),
        )
        .unwrap()
    })
    .unwrap();
    stranger
        .listen_on("/ip4/10.77.0.2/tcp/0".parse().unwrap())
        .unwrap();
    let stranger_id = *stranger.local_peer_id();
    let driver = tokio::spawn(async move {
        loop {
            let _ = stranger.select_next_some().await;
        }
    });
    wait_event(&mut events, "the victim discovering the stranger", |e| {
        matches!(e, Event::PeerDiscovered { peer, .. } if *peer == stranger_id).then_some(())
    })
    .await;
    let in_table = victim.dht().routing_table_peers().await.unwrap();
    assert!(
        !in_table.contains(&stranger_id),
        "an mDNS announcement put a peer in the routing table: {in_table:?}"
    );
    // The victim dials what it heard, and the connection proves the peer; it still speaks
    // no Kademlia, so it stays out of the table.
    wait_event(&mut events, "the victim connecting to the stranger", |e| {
        matches!(e, Event::PeerConnected { peer, .. } if *peer == stranger_id).then_some(())
    })
    .await;
    let in_table = victim.dht().routing_table_peers().await.unwrap();
    assert!(
        !in_table.contains(&stranger_id),
        "a peer without Kademlia entered the routing table: {in_table:?}"
    );
    driver.abort();
}
