//! Typed request/response between real nodes over TCP and QUIC on 127.0.0.1.

mod common;

use std::{convert::Infallible, sync::Arc};

use common::*;
use futures::{StreamExt as _, stream};
use p2plane::{Error, Event, Message, Node, NodeConfig, Request, service_fn};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tower::{Service, ServiceExt as _};

async fn thousand_requests(listen: &str, use_shared_streams: bool) {
    let server = echo_node(config(listen)).await;
    let mut client_config = config(listen);
    client_config.use_shared_streams = use_shared_streams;
    let node = Node::<Echo>::new(client_config).await.unwrap();
    let peer = within("dial", node.dial(first_addr(&server).await))
        .await
        .unwrap();
    assert_eq!(peer, server.local_peer_id());
    let mut client = node.client();

    // Sequentially, through the tower::Service interface.
    for seq in 0..1000 {
        let request = echo(seq);
        let reply = client
            .ready()
            .await
            .unwrap()
            .call(Request::new(peer, request.clone()))
            .await
            .unwrap();
        assert_eq!(reply, answer(&request, peer));
    }

    // 64 at a time.
    let replies: Vec<_> = stream::iter(1000..2000u64)
        .map(|seq| {
            let client = node.client();
            async move { (seq, client.request(peer, echo(seq)).await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(replies.len(), 1000);
    for (seq, reply) in replies {
        assert_eq!(reply.unwrap(), answer(&echo(seq), peer));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_thousand_requests_sequential_and_64_in_flight() {
    thousand_requests(TCP, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_thousand_requests_one_stream_per_request() {
    thousand_requests(TCP, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_thousand_requests_sequential_and_64_in_flight() {
    thousand_requests(QUIC, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_thousand_requests_one_stream_per_request() {
    thousand_requests(QUIC, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_all_to_all() {
    let mut nodes = Vec::new();
    for _ in 0..10 {
        nodes.push(echo_node(config(TCP)).await);
    }
    let mut addrs = Vec::new();
    for n in &nodes {
        addrs.push(first_addr(n).await);
    }
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for (j, addr) in addrs.iter().enumerate() {
            if i == j {
                continue;
            }
            let (node, addr) = (node.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                let peer = node.dial(addr).await.unwrap();
                let request = echo((i * 10 + j) as u64);
                let reply = node.client().request(peer, request.clone()).await.unwrap();
                assert_eq!(reply, answer(&request, peer));
            }));
        }
    }
    assert_eq!(tasks.len(), 90);
    for t in tasks {
        within("an all-to-all request", t).await.unwrap();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Other(u8);
impl Message for Other {
    const PROTOCOL: &'static str = "/p2plane-test/other/1.0.0";
}

async fn unsupported_protocol(listen: &str) {
    let server = echo_node(config(listen)).await;
    let node = Node::<Echo>::new(config(listen)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let err = node
        .client_for::<Other>()
        .request(peer, Other(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::UnsupportedProtocol {
            peer,
            protocol: Other::PROTOCOL.into()
        }
    );
    assert!(!err.is_transient());
    // The connection is still good for the protocol the server does speak.
    assert!(node.client().request(peer, echo(1)).await.is_ok());
}

#[tokio::test]
async fn unsupported_protocol_is_a_typed_error_over_tcp() {
    unsupported_protocol(TCP).await;
}

#[tokio::test]
async fn unsupported_protocol_is_a_typed_error_over_quic() {
    unsupported_protocol(QUIC).await;
}

#[tokio::test]
async fn oversized_request_fails_at_the_sender_before_anything_is_sent() {
    let server = echo_node(config(TCP)).await;
    let node = Node::<Echo>::new(config(TCP).with_max_message_size(1024))
        .await
        .unwrap();
    let peer = server.local_peer_id();
    // The node knows no address for the peer and is not connected: had it tried to send,
    // the error would be a dial error.
    let big = Echo {
        seq: 0,
        text: "x".repeat(2000),
    };
    let err = node.client().request(peer, big).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 1024, len, response: false } if len > 2000),
        "{err:?}"
    );
    assert!(node.connected_peers().await.unwrap().is_empty());
}

#[tokio::test]
async fn oversized_response_is_a_typed_error_at_the_caller() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    server
        .serve(service_fn(|_: Request<Echo>| async {
            Ok::<_, Infallible>(Echo {
                seq: 0,
                text: "y".repeat(4000),
            })
        }))
        .unwrap();
    let node = Node::<Echo>::new(config(TCP).with_max_message_size(1024))
        .await
        .unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let err = node.client().request(peer, echo(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: 1024,
                response: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn handler_error_reaches_the_caller() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    server
        .serve(service_fn(|req: Request<Echo>| async move {
            if req.body().seq == 13 {
                Err("unlucky number")
            } else {
                Ok(req.into_body())
            }
        }))
        .unwrap();
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let err = node.client().request(peer, echo(13)).await.unwrap_err();
    assert_eq!(
        err,
        Error::Failed {
            peer,
            message: "unlucky number".into()
        }
    );
    assert_eq!(
        node.client().request(peer, echo(12)).await.unwrap(),
        echo(12)
    );
}

#[tokio::test]
async fn dial_to_a_dead_address_is_a_typed_error() {
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let mut events = node.events();
    let err = within(
        "dial",
        node.dial(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Dial { peer: None, .. }), "{err:?}");
    assert!(err.is_transient());
    wait_event(&mut events, "dial failure event", |e| {
        matches!(e, Event::DialFailed { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn request_to_an_unknown_peer_is_a_dial_error() {
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let stranger = p2plane::PeerId::random();
    let err = within("request", node.client().request(stranger, echo(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Dial { peer: Some(p), .. } if p == stranger),
        "{err:?}"
    );
}

/// A server whose handler reports each request it starts and then waits until released.
async fn stuck_server(config: NodeConfig) -> (Node<Echo>, Arc<Notify>, mpsc::Receiver<u64>) {
    let server = Node::<Echo>::new(config).await.unwrap();
    let release = Arc::new(Notify::new());
    let (entered_tx, entered) = mpsc::channel(16);
    let r = release.clone();
    server
        .serve(service_fn(move |req: Request<Echo>| {
            let (r, entered_tx) = (r.clone(), entered_tx.clone());
            async move {
                entered_tx.send(req.body().seq).await.unwrap();
                r.notified().await;
                Ok::<_, Infallible>(req.into_body())
            }
        }))
        .unwrap();
    (server, release, entered)
}

#[tokio::test]
async fn shutdown_resolves_pending_calls() {
    let (server, _release, mut entered) = stuck_server(config(TCP)).await;
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let pending = tokio::spawn({
        let client = node.client();
        async move { client.request(peer, echo(1)).await }
    });
    assert_eq!(within("request in handler", entered.recv()).await, Some(1));
    node.shutdown().await;
    assert_eq!(
        within("pending call", pending).await.unwrap(),
        Err(Error::Shutdown)
    );
    assert_eq!(
        node.client().request(peer, echo(2)).await,
        Err(Error::Shutdown)
    );
    assert_eq!(node.connected_peers().await, Err(Error::Shutdown));
}

#[tokio::test]
async fn dropping_the_last_handle_shuts_the_node_down() {
    let node = echo_node(config(TCP)).await;
    let mut events = node.events();
    drop(node);
    // The event stream ends once the event loop and servers have stopped.
    within("event stream to end", async {
        while events.next().await.is_some() {}
    })
    .await;
}

#[tokio::test]
async fn a_full_server_answers_busy() {
    let (server, release, mut entered) =
        stuck_server(config(TCP).with_max_concurrent_inbound(1)).await;
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let first = tokio::spawn({
        let client = node.client();
        async move { client.request(peer, echo(1)).await }
    });
    assert_eq!(
        within("first request in handler", entered.recv()).await,
        Some(1)
    );
    let err = within("second request", node.client().request(peer, echo(2)))
        .await
        .unwrap_err();
    assert_eq!(err, Error::Busy { peer });
    assert!(err.is_transient() && !err.remote_may_have_acted());
    release.notify_one();
    assert_eq!(
        within("first request", first).await.unwrap().unwrap(),
        echo(1)
    );
}

#[tokio::test]
async fn same_key_file_same_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let first = Node::<Echo>::new(config(TCP).with_key_file(&key))
        .await
        .unwrap();
    let id = first.local_peer_id();
    first.shutdown().await;
    drop(first);
    let second = Node::<Echo>::new(config(TCP).with_key_file(&key))
        .await
        .unwrap();
    assert_eq!(second.local_peer_id(), id);
    let other = Node::<Echo>::new(config(TCP)).await.unwrap();
    assert_ne!(other.local_peer_id(), id);
}

#[tokio::test]
async fn listen_failure_is_a_typed_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Node::<Echo>::new(config(&format!("/ip4/127.0.0.1/tcp/{port}")))
        .await
        .unwrap_err();
    assert!(matches!(err, p2plane::NodeError::Listen { .. }), "{err}");
}

#[tokio::test]
async fn serving_a_protocol_twice_is_refused() {
    let node = echo_node(config(TCP)).await;
    let again = node.serve(service_fn(|req: Request<Echo>| async move {
        Ok::<_, Infallible>(req.into_body())
    }));
    assert!(matches!(
        again,
        Err(p2plane::NodeError::AlreadyServing { .. })
    ));
}
