//! Shared streams: fallback to peers that speak only the
//! one-request-per-stream form, and hostile bytes on a shared stream.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use common::*;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{StreamProtocol, swarm::SwarmEvent};
use p2plane::{
    CodecError, Event, InboundError, Message, Node,
    codec::{
        CborCodec, Codec as _, Envelope, FrameBuf, SharedFrame, read_frame, read_shared_frame,
    },
    transport::{TransportConfig, build_swarm, identity},
};

const LIMIT: usize = p2plane::codec::DEFAULT_MAX_MESSAGE_SIZE;

/// A peer built on plain libp2p that implements only what `docs/wire.md` specifies for one
/// request per stream: it does not know the shared form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_shared_form_is_reached_one_stream_per_request() {
    let mut swarm = build_swarm(identity::generate(), &TransportConfig::default(), |_| {
        libp2p_stream::Behaviour::new()
    })
    .unwrap();
    let mut incoming = swarm
        .behaviour()
        .new_control()
        .accept(StreamProtocol::new(Echo::PROTOCOL))
        .unwrap();
    swarm.listen_on(TCP.parse().unwrap()).unwrap();
    let addr = within("listen", async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await;
    let other_id = *swarm.local_peer_id();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    tokio::spawn(async move {
        let codec = CborCodec::default();
        while let Some((_, mut stream)) = incoming.next().await {
            let request: Echo = codec
                .decode(&read_frame(&mut stream, LIMIT).await.unwrap())
                .unwrap();
            let reply =
                FrameBuf::encode(&codec, &Envelope::Ok(answer(&request, other_id))).unwrap();
            stream.write_all(reply.as_bytes()).await.unwrap();
            stream.close().await.unwrap();
            s.fetch_add(1, Ordering::SeqCst);
        }
    });

    let node = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = node.dial(addr).await.unwrap();
    for i in 0..20 {
        assert_eq!(
            node.client().request(peer, echo(i)).await.unwrap(),
            answer(&echo(i), peer)
        );
    }
    assert_eq!(served.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_on_a_shared_stream_are_refused_and_the_node_keeps_serving() {
    let node = echo_node(config(TCP)).await;
    let mut events = node.events();
    let mut swarm = build_swarm(identity::generate(), &TransportConfig::default(), |_| {
        libp2p_stream::Behaviour::new()
    })
    .unwrap();
    let mut control = swarm.behaviour().new_control();
    swarm.dial(first_addr(&node).await).unwrap();
    let peer = within("connect", async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                swarm.select_next_some().await
            {
                return peer_id;
            }
        }
    })
    .await;
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let shared =
        StreamProtocol::try_from_owned(format!("{}/p2plane-mux/1", Echo::PROTOCOL)).unwrap();
    let codec = CborCodec::default();
    let mut stream = control.open_stream(peer, shared.clone()).await.unwrap();

    // An undecodable body with a valid id: refused for that id; the stream goes on.
    let mut garbage = vec![4u8, 7, 0xff, 0xfe, 0xfd];
    // An oversized frame (5 MiB announced and sent): refused for its id; the stream goes on.
    let big =
        FrameBuf::encode_with_id(&CborCodec::new(usize::MAX), 8, &vec![0u8; 5 << 20]).unwrap();
    garbage.extend_from_slice(big.as_bytes());
    // An honest request after both.
    garbage.extend_from_slice(
        FrameBuf::encode_with_id(&codec, 9, &echo(3))
            .unwrap()
            .as_bytes(),
    );
    stream.write_all(&garbage).await.unwrap();
    stream.flush().await.unwrap();
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 3 {
        match within("an answer", read_shared_frame(&mut stream, LIMIT))
            .await
            .unwrap()
        {
            SharedFrame::Frame { id, body } => {
                answers.insert(id, codec.decode::<Envelope<Echo>>(&body).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        matches!(answers[&7], Envelope::Rejected(_)),
        "{:?}",
        answers[&7]
    );
    assert!(
        matches!(answers[&8], Envelope::Rejected(_)),
        "{:?}",
        answers[&8]
    );
    assert_eq!(
        answers[&9],
        Envelope::Ok(answer(&echo(3), node.local_peer_id()))
    );
    for expected in ["decode", "too large"] {
        let error = wait_event(&mut events, expected, |e| match e {
            Event::InboundFailure { error, .. } => Some(error.clone()),
            _ => None,
        })
        .await;
        match expected {
            "decode" => assert!(matches!(error, InboundError::Decode(_)), "{error:?}"),
            _ => assert!(
                matches!(error, InboundError::Frame(CodecError::TooLarge { .. })),
                "{error:?}"
            ),
        }
    }

    // A frame without a valid id breaks the framing: the node closes that stream only.
    stream.write_all(&[0x02, 0xff, 0xff]).await.unwrap();
    stream.flush().await.unwrap();
    let mut rest = Vec::new();
    within("the stream to close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    let error = wait_event(&mut events, "bad id", |e| match e {
        Event::InboundFailure { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(error, InboundError::Frame(CodecError::BadLength(_))),
        "{error:?}"
    );

    // A new shared stream on the same connection works.
    let mut again = control.open_stream(peer, shared).await.unwrap();
    again
        .write_all(
            FrameBuf::encode_with_id(&codec, 1, &echo(4))
                .unwrap()
                .as_bytes(),
        )
        .await
        .unwrap();
    again.flush().await.unwrap();
    match within("answer", read_shared_frame(&mut again, LIMIT))
        .await
        .unwrap()
    {
        SharedFrame::Frame { id: 1, body } => {
            assert_eq!(
                codec.decode::<Envelope<Echo>>(&body).unwrap(),
                Envelope::Ok(answer(&echo(4), node.local_peer_id()))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A handler that panics is answered `Failed`, and the shared stream it came on goes on
/// serving (the server runs most handlers on the stream's own reader); the same over
/// streams of one request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_answered_failed_and_the_stream_keeps_serving() {
    for use_shared_streams in [true, false] {
        panicking_handler(use_shared_streams).await;
    }
}

async fn panicking_handler(use_shared_streams: bool) {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let me = server.local_peer_id();
    server
        .serve(p2plane::service_fn(
            move |req: p2plane::Request<Echo>| async move {
                if req.body().text == "panic" {
                    panic!("this handler panics on purpose");
                }
                Ok::<_, std::convert::Infallible>(answer(req.body(), me))
            },
        ))
        .unwrap();
    let mut client_config = config(TCP);
    client_config.use_shared_streams = use_shared_streams;
    let client = Node::<Echo>::new(client_config).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let c = client.client();
    for round in 0..3 {
        let bad = Echo {
            seq: round,
            text: "panic".to_owned(),
        };
        match within("the panicking request", c.request(peer, bad)).await {
            Err(p2plane::Error::Failed { message, .. }) => {
                assert!(message.contains("panicked"), "{message}")
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        let good = within("a request after it", c.request(peer, echo(round)))
            .await
            .expect("the stream still serves");
        assert_eq!(good, answer(&echo(round), me));
    }
}

/// A handler that cannot answer at once does not hold up the requests behind it on the
/// same shared stream: the first request here is answered only once the second has been
/// handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_handler_does_not_hold_up_the_next_request_on_its_stream() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let me = server.local_peer_id();
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    server
        .serve(p2plane::service_fn(move |req: p2plane::Request<Echo>| {
            let release = r.clone();
            async move {
                if req.body().text == "wait" {
                    release.notified().await;
                } else {
                    release.notify_one();
                }
                Ok::<_, std::convert::Infallible>(answer(req.body(), me))
            }
        }))
        .unwrap();
    let client = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let c = client.client();
    // Open the shared stream first, so that both requests below travel on it.
    within("a first request", c.request(peer, echo(0)))
        .await
        .unwrap();
    let waiting = Echo {
        seq: 1,
        text: "wait".to_owned(),
    };
    let expected = answer(&waiting, me);
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.request(peer, waiting).await }
    });
    // The second request wakes the first; sent until the first has been answered, in case
    // it overtakes the first on its way.
    let answered = within("the waiting request", async {
        let mut first = first;
        loop {
            c.request(peer, echo(2)).await.unwrap();
            tokio::select! {
                done = &mut first => return done.unwrap(),
                () = tokio::task::yield_now() => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(answered, expected);
}

/// At most 1,024 requests in flight on one outbound shared stream: with 1,100 requests
/// sent at once to a handler that holds every request, the server sees 1,024, and the rest
/// go out as answers free their slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_shared_stream_carries_at_most_1024_requests_at_once() {
    const SENT: u64 = 1_100;
    let server = Node::<Echo>::new(
        config(TCP)
            .with_dht(None)
            .with_max_concurrent_inbound(4_096),
    )
    .await
    .unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::watch::channel(0usize);
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let me = server.local_peer_id();
    server
        .serve(p2plane::service_fn(move |req: p2plane::Request<Echo>| {
            let (arrived_tx, mut release) = (arrived_tx.clone(), release.clone());
            async move {
                arrived_tx.send_modify(|n| *n += 1);
                let _ = release.wait_for(|go| *go).await;
                Ok::<_, std::convert::Infallible>(answer(req.body(), me))
            }
        }))
        .unwrap();
    let client = Node::<Echo>::new(config(TCP).with_dht(None)).await.unwrap();
    let peer = client.dial(first_addr(&server).await).await.unwrap();
    let calls = tokio::spawn({
        let client = client.client();
        futures::future::join_all((0..SENT).map(move |i| {
            let client = client.clone();
            async move { client.request(peer, echo(i)).await }
        }))
    });
    within(
        "1,024 requests to arrive",
        arrived.wait_for(|n| *n >= 1_024),
    )
    .await
    .unwrap();
    // Timer logic: give a 1,025th request time to arrive, were it not held back.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(*arrived.borrow(), 1_024);
    release_tx.send_replace(true);
    let replies = within("every answer", calls).await.unwrap();
    assert!(replies.iter().all(Result::is_ok));
    assert_eq!(*arrived.borrow(), SENT as usize);
}

/// A connection lost under a request the server has read is no clean close of the shared
/// stream: the request fails with `ConnectionClosed` (the remote may have acted) and is not
/// sent again behind the caller's back. Over yamux a lost connection reads like a server's
/// close; before the fix the call went round on a new stream: it failed with a dial error
/// (which says the server never saw it) or, when the peer could be dialled again, the handler
/// ran it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_with_its_connection_fails_and_is_not_sent_again() {
    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let me = server.local_peer_id();
    let seen = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (s, a) = (seen.clone(), arrived.clone());
    server
        .serve(p2plane::service_fn(move |req: p2plane::Request<Echo>| {
            let (seen, arrived) = (s.clone(), a.clone());
            async move {
                if req.body().text == "hold" {
                    seen.fetch_add(1, Ordering::SeqCst);
                    arrived.notify_one();
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::convert::Infallible>(answer(req.body(), me))
            }
        }))
        .unwrap();
    let client = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = within("dial", client.dial(first_addr(&server).await))
        .await
        .unwrap();
    let c = client.client();
    // Open the shared stream first, so that the held request travels on it.
    within("a first request", c.request(peer, echo(0)))
        .await
        .unwrap();
    let held = tokio::spawn({
        let c = c.clone();
        async move {
            c.request(
                peer,
                Echo {
                    seq: 1,
                    text: "hold".to_owned(),
                },
            )
            .await
        }
    });
    within("the held request at the server", arrived.notified()).await;
    assert!(server.disconnect(client.local_peer_id()).await.unwrap());
    let outcome = within("the held request's outcome", held).await.unwrap();
    assert_eq!(outcome, Err(p2plane::Error::ConnectionClosed { peer }));
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the request ran twice");
}
