//! The layers between real nodes over TCP on 127.0.0.1.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use futures::{StreamExt as _, stream};
use p2plane::{
    BoxError, Error, Event, Message, Node, Request,
    layer::{
        InFlightLimitLayer, RateLimitLayer, RetryLayer, RetryPolicy, TimeoutLayer, ValidateLayer,
    },
    service_fn,
};
use tower::{Service, ServiceBuilder, ServiceExt as _};

fn stack(
    node: &Node<Echo>,
) -> impl Service<Request<Echo>, Response = Echo, Error = Error, Future: Send> + Clone + use<> {
    ServiceBuilder::new()
        .layer(ValidateLayer::new())
        .layer(RetryLayer::new(
            RetryPolicy::exponential(3).with_base_delay(Duration::from_millis(10)),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(node.client())
}

#[tokio::test]
async fn a_handler_that_fails_twice_transiently_succeeds_on_the_third_attempt() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    server
        .serve(service_fn(move |req: Request<Echo>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(Error::Busy { peer: req.peer() })
                } else {
                    Ok(req.into_body())
                }
            }
        }))
        .unwrap();
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let reply = stack(&node).oneshot(Request::new(peer, echo(1))).await;
    assert_eq!(reply, Ok(echo(1)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_dead_peer_with_failover_is_answered_by_another() {
    let dead = echo_node(config(TCP)).await;
    let alive = echo_node(config(TCP)).await;
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let mut events = node.events();
    let dead_peer = node.dial(first_addr(&dead).await).await.unwrap();
    let alive_peer = node.dial(first_addr(&alive).await).await.unwrap();
    // Wait until identify has told us that the live peer serves the protocol.
    wait_event(&mut events, "identify from the live peer", |e| match e {
        Event::PeerIdentified { peer, protocols } if *peer == alive_peer => {
            protocols.iter().any(|p| p == Echo::PROTOCOL).then_some(())
        }
        _ => None,
    })
    .await;
    dead.shutdown().await;
    wait_event(&mut events, "the dead peer to disconnect", |e| {
        matches!(e, Event::PeerDisconnected { peer } if *peer == dead_peer).then_some(())
    })
    .await;

    let mut client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::exponential(2).with_failover(node.peer_selector()),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(node.client());
    let reply = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(dead_peer, echo(8)))
        .await;
    assert_eq!(reply, Ok(answer(&echo(8), alive_peer)));
}

#[tokio::test]
async fn validation_rejects_at_the_sender_without_traffic_and_at_the_receiver_with_rejected() {
    // Sending side: the peer is not even known; a Dial error would mean something was tried.
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let stranger = p2plane::PeerId::random();
    let empty = Echo {
        seq: 1,
        text: String::new(),
    };
    let mut client = ServiceBuilder::new()
        .layer(ValidateLayer::with(non_empty_text))
        .service(node.client());
    let err = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(stranger, empty.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::Rejected {
            peer: None,
            reason: "empty text".into()
        }
    );
    assert!(node.connected_peers().await.unwrap().is_empty());

    // Receiving side: the server validates; its handler never runs; the caller gets Rejected.
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let handler = service_fn(move |req: Request<Echo>| {
        h.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(req.into_body()) }
    });
    server
        .serve(
            ServiceBuilder::new()
                .layer(ValidateLayer::with(non_empty_text))
                .service(handler),
        )
        .unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let err = node.client().request(peer, empty).await.unwrap_err();
    assert_eq!(
        err,
        Error::Rejected {
            peer: Some(peer),
            reason: "empty text".into()
        }
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    assert_eq!(node.client().request(peer, echo(2)).await, Ok(echo(2)));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_gets_busy_while_another_is_served() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let me = server.local_peer_id();
    let handler =
        service_fn(move |req: Request<Echo>| async move { Ok::<_, Error>(answer(req.body(), me)) });
    server
        .serve(
            ServiceBuilder::new()
                .layer(InFlightLimitLayer::new(4))
                .layer(RateLimitLayer::new(20, Duration::from_secs(1)))
                .service(handler),
        )
        .unwrap();
    let addr = first_addr(&server).await;
    let flooder = Node::<Echo>::new(config(TCP)).await.unwrap();
    let honest = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = flooder.dial(addr.clone()).await.unwrap();
    honest.dial(addr).await.unwrap();

    let flood_started = std::time::Instant::now();
    let flood = tokio::spawn({
        let client = flooder.client();
        async move {
            stream::iter(0..1000u64)
                .map(|i| {
                    let c = client.clone();
                    async move { c.request(peer, echo(i)).await }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
        }
    });
    // The honest client asks a few times while the flood runs; each is answered.
    for i in 0..5 {
        let reply = within("honest request", honest.client().request(peer, echo(i))).await;
        assert_eq!(reply, Ok(answer(&echo(i), peer)));
    }
    let results = within("the flood", flood).await.unwrap();
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Busy { .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        busy + ok,
        1000,
        "only Busy or answers: {:?}",
        results
            .iter()
            .find(|r| !matches!(r, Ok(_) | Err(Error::Busy { .. })))
    );
    assert!(busy > 0, "the flooder was never limited");
    // At most the burst (20) plus what the rate (20/s) earned while the flood ran, plus one
    // for rounding.
    let earned = (20.0 * flood_started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        ok <= 20 + earned + 1,
        "{ok} flood requests were served; the limit allowed {}",
        20 + earned + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_stack_with_tower_layers_and_buffer_is_shared_by_16_tasks() {
    let server = echo_node(config(TCP)).await;
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let client = ServiceBuilder::new()
        .buffer(64)
        .load_shed()
        .rate_limit(10_000, Duration::from_secs(1))
        .layer(ValidateLayer::new())
        .layer(RetryLayer::new(RetryPolicy::exponential(3)))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .concurrency_limit(16)
        .service(node.client());
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut served = 0;
            for i in 0..25 {
                let request = echo(t * 100 + i);
                // LoadShed may refuse when the buffer is full: that is its job; try again.
                loop {
                    match client.ready().await {
                        Ok(svc) => match svc.call(Request::new(peer, request.clone())).await {
                            Ok(reply) => {
                                assert_eq!(reply, answer(&request, peer));
                                served += 1;
                                break;
                            }
                            Err(e) if e.is::<tower::load_shed::error::Overloaded>() => {
                                tokio::task::yield_now().await
                            }
                            Err(e) => panic!("request failed: {e}"),
                        },
                        Err(e) => panic!("not ready: {e}"),
                    }
                }
            }
            served
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += within("a task", t).await.unwrap();
    }
    assert_eq!(total, 16 * 25);
}

#[tokio::test]
async fn a_server_side_timeout_reaches_the_caller_as_failed() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let slow = service_fn(|req: Request<Echo>| async move {
        futures::future::pending::<()>().await;
        Ok::<_, Error>(req.into_body())
    });
    server
        .serve(
            ServiceBuilder::new()
                .layer(TimeoutLayer::new(Duration::from_millis(50)))
                .service(slow),
        )
        .unwrap();
    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(first_addr(&server).await).await.unwrap();
    let err = node.client().request(peer, echo(1)).await.unwrap_err();
    assert_eq!(
        err,
        Error::Failed {
            peer,
            message: "the handler timed out".into()
        }
    );
}
