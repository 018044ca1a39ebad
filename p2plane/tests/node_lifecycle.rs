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

/// `Limits::max_established`: connections beyond the total are refused, whoever asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_connection_limit_refuses_the_next_peer() {
    let mut limits = Limits::default();
    limits.max_established = 2;
    let server = echo_node(config(TCP).with_limits(limits)).await;
    let addr = first_addr(&server).await;
    let mut clients = Vec::new();
    for i in 0..2 {
        let client = echo_node(config(TCP)).await;
        let peer = within("a dial", client.dial(addr.clone())).await.unwrap();
        assert_eq!(
            within("a request", client.client().request(peer, echo(i)))
                .await
                .unwrap(),
            answer(&echo(i), peer)
        );
        clients.push(client);
    }
    let third = echo_node(config(TCP)).await;
    // The server refuses the established connection; the dialer sees the dial fail or the
    // connection close at once, and no request gets through.
    let refused = within("the third peer", async {
        match third.dial(addr.clone()).await {
            Err(e) => Err(e),
            Ok(peer) => third.client().request(peer, echo(3)).await.map(|_| ()),
        }
    })
    .await;
    assert!(refused.is_err(), "a third connection was served");
    assert_eq!(server.connected_peers().await.unwrap().len(), 2);
}

/// `Limits::max_pending_incoming`: with the slots held by connections that never finish
/// their handshake, a further connection is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_connection_limit_closes_further_handshakes() {
    use tokio::io::AsyncReadExt as _;
    let mut limits = Limits::default();
    limits.max_pending_incoming = 2;
    let server = echo_node(config(TCP).with_limits(limits)).await;
    let addr = first_addr(&server).await;
    let port = addr
        .iter()
        .find_map(|p| match p {
            p2plane::transport::libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    // Two silent sockets hold both slots (the handshake timeout is 10 s).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    // Let the node accept them (a connection is pending from its accept on): a third is
    // closed by the node without a byte, long before any handshake timeout.
    let mut third = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = within("the third connection to be closed", third.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third pending connection was kept: {read:?}"
    );
    // The held ones are still open (pending, not refused).
    for socket in &held {
        let mut byte = [0u8; 1];
        assert!(
            matches!(socket.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a held handshake was closed early"
        );
    }
}

/// `Node::disconnect` closes the connections to a peer without banning it: the next request
/// dials again and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_the_connections_and_the_next_request_dials_again() {
    let server = echo_node(config(TCP).with_dht(None)).await;
    // Loopback addresses are private: kept only when asked to, so the node can dial back.
    let node = Node::<Echo>::new(config(TCP).with_dht(None).with_private_addrs(true))
        .await
        .unwrap();
    let mut events = node.events();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    assert_eq!(
        node.client().request(peer, echo(1)).await.unwrap(),
        answer(&echo(1), peer)
    );
    assert!(node.disconnect(peer).await.unwrap(), "was connected");
    wait_event(&mut events, "the disconnection", |e| {
        matches!(e, p2plane::Event::PeerDisconnected { peer: p } if *p == peer).then_some(())
    })
    .await;
    assert!(!node.connected_peers().await.unwrap().contains(&peer));
    assert!(
        !node.disconnect(peer).await.unwrap(),
        "nothing left to close"
    );
    let reply = within(
        "a request after the disconnection",
        node.client().request(peer, echo(2)),
    )
    .await;
    assert_eq!(reply.unwrap(), answer(&echo(2), peer));
    assert!(node.connected_peers().await.unwrap().contains(&peer));
}
