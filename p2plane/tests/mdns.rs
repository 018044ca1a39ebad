//! Local discovery by mDNS. Multicast must not reach a real network, so the test runs itself
//! again inside a new, empty network namespace (`unshare -n`) holding one veth pair — two
//! "hosts" on one link — and is skipped, saying why, where namespaces cannot be created.

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
}
