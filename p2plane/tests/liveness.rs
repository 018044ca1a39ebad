//! A peer that vanishes without closing its connection (its host lost power, a middlebox
//! dropped the flow): the connection is closed once two pings in a row fail, instead of
//! staying up and swallowing requests until their timeouts.
//!
//! The two nodes talk through a TCP relay on loopback that can be frozen: it keeps both
//! sockets open and stops forwarding, so no FIN or RST ever tells either side.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{TCP, answer, config, echo, echo_node, wait_event, within};
use futures::{FutureExt as _, StreamExt as _};
use p2plane::{Event, Request, tower::ServiceExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// Copies `from` to `to` until `frozen` is set, then swallows everything, keeping both open.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Relays one connection from a listener on 127.0.0.1 to port `target`; returns the
/// listener's port.
async fn relay(target: u16, frozen: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let outbound = TcpStream::connect(("127.0.0.1", target)).await.unwrap();
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        tokio::join!(
            pipe(in_read, out_write, Arc::clone(&frozen)),
            pipe(out_read, in_write, frozen),
        );
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_peer_vanished_is_closed_by_failed_pings() {
    let fast_pings =
        || config(TCP).with_ping(Duration::from_millis(200), Duration::from_millis(300));
    let a = echo_node(fast_pings()).await;
    let a_id = a.local_peer_id();
    let a_port = match common::first_addr(&a).await.iter().last() {
        Some(libp2p::multiaddr::Protocol::Tcp(port)) => port,
        other => panic!("not a TCP address: {other:?}"),
    };
    let frozen = Arc::new(AtomicBool::new(false));
    let relay_port = relay(a_port, Arc::clone(&frozen)).await;

    let b = echo_node(fast_pings()).await;
    let mut b_events = b.events();
    let via_relay = format!("/ip4/127.0.0.1/tcp/{relay_port}").parse().unwrap();
    assert_eq!(
        within("dial through the relay", b.dial(via_relay)).await,
        Ok(a_id)
    );
    let reply = within(
        "a request through the relay",
        b.client().oneshot(Request::new(a_id, echo(1))),
    )
    .await
    .unwrap();
    assert_eq!(reply, answer(&echo(1), a_id));
    let mut a_events = a.events();
    let b_id = b.local_peer_id();

    // While the relay forwards, pings succeed and the connection stays up: ten ping
    // intervals pass with a request in each, and nobody disconnects.
    for seq in 2..12 {
        let reply = within(
            "a request",
            b.client().oneshot(Request::new(a_id, echo(seq))),
        )
        .await
        .unwrap();
        assert_eq!(reply, answer(&echo(seq), a_id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while let Some(Some(event)) = b_events.next().now_or_never() {
        assert!(
            !matches!(event, Event::PeerDisconnected { .. }),
            "a healthy connection was closed: {event:?}"
        );
    }

    // The relay goes silent, as a vanished host does: no FIN, no RST, nothing.
    frozen.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    wait_event(&mut b_events, "b closing its connection to a", |e| {
        matches!(e, Event::PeerDisconnected { peer } if *peer == a_id).then_some(())
    })
    .await;
    let b_after = started.elapsed();
    wait_event(&mut a_events, "a closing its connection to b", |e| {
        matches!(e, Event::PeerDisconnected { peer } if *peer == b_id).then_some(())
    })
    .await;
    println!(
        "FIGURE liveness: pings every 200 ms, 300 ms timeout: b closed the dead connection \
         {b_after:?} after the relay froze, a after {:?}",
        started.elapsed()
    );
}
