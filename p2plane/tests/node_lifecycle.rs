//! Node events, connection limits and the thread-safety of handles.

mod common;

use common::*;
use p2plane::{Client, Error, Event, Limits, Node, Request};

#[tokio::test]
async fn connection_events_and_connected_peers() {
    let a = echo_node(config(TCP)).await;
    let b = echo_node(config(TCP)).await;
    let mut a_events = a.events();
    let mut b_events = b.events();
    let peer = b.dial(first_addr(&a).await).await.unwrap();
    assert_eq!(peer, a.local_peer_id());

    let inbound = wait_event(&mut a_events, "a sees b connect", |e| match e {
        Event::PeerConnected { peer, inbound, .. } => Some((*peer, *inbound)),
        _ => None,
    })
    .await;
    assert_eq!(inbound, (b.local_peer_id(), true));
    let outbound = wait_event(&mut b_events, "b sees a connect", |e| match e {
        Event::PeerConnected { peer, inbound, .. } => Some((*peer, *inbound)),
        _ => None,
    })
    .await;
    assert_eq!(outbound, (a.local_peer_id(), false));
    assert_eq!(b.connected_peers().await.unwrap(), vec![a.local_peer_id()]);

    a.shutdown().await;
    let gone = wait_event(&mut b_events, "b sees a leave", |e| match e {
        Event::PeerDisconnected { peer } => Some(*peer),
        _ => None,
    })
    .await;
    assert_eq!(gone, a.local_peer_id());
    assert!(b.connected_peers().await.unwrap().is_empty());
}

#[tokio::test]
async fn listening_is_reported_and_addresses_are_real() {
    let node = echo_node(config(TCP)).await;
    let addrs = node.listen_addrs().await.unwrap();
    assert_eq!(addrs.len(), 1);
    let text = addrs[0].to_string();
    assert!(
        text.starts_with("/ip4/127.0.0.1/tcp/") && !text.ends_with("/tcp/0"),
        "{text}"
    );
}

#[tokio::test]
async fn connection_limits_refuse_extra_connections() {
    let server = echo_node(config(TCP)).await;
    let addr = first_addr(&server).await;
    let mut limits = Limits::default();
    limits.max_established_per_peer = 1;
    let node = Node::<Echo>::new(config(TCP).with_limits(limits))
        .await
        .unwrap();
    let peer = node.dial(addr.clone()).await.unwrap();
    // A second connection to the same peer is over the limit and refused.
    let second = within("second dial", node.dial(addr)).await.unwrap_err();
    assert!(
        matches!(&second, Error::Dial { reason, .. } if reason.contains("denied") || reason.contains("Denied")),
        "{second:?}"
    );
    // The first connection still serves.
    assert_eq!(node.connected_peers().await.unwrap(), vec![peer]);
    assert_eq!(
        node.client().request(peer, echo(4)).await.unwrap(),
        answer(&echo(4), peer)
    );
}

#[tokio::test]
async fn the_memory_transport_connects_in_process_nodes() {
    let server = echo_node(config("/memory/0")).await;
    let node = Node::<Echo>::new(config("/memory/0")).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    assert_eq!(
        node.client().request(peer, echo(9)).await.unwrap(),
        answer(&echo(9), peer)
    );
}

/// Handles and their futures can move between threads (checked when this file compiles).
#[allow(dead_code)]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    fn check(node: Node<Echo>, mut client: Client<Echo>, peer: p2plane::PeerId) {
        send_sync(&node);
        send_sync(&client);
        send(&node.dial("/memory/1".parse().unwrap()));
        send(&node.shutdown());
        send(&client.request(peer, echo(0)));
        send(&tower::Service::call(
            &mut client,
            Request::new(peer, echo(0)),
        ));
        send_sync(&node.events());
    }
    let _ = check;
}
