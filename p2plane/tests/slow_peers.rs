//! Slow and stalled peers (issue 8, point 5). Hostile peers on plain libp2p open streams
//! that announce a large request, send part of it and stall, and shared streams whose
//! answers they never read. The node must hold no more than its inbound byte budgets
//! (global and per peer), close the stalled streams at the read and write deadlines, and
//! keep answering an honest peer.
//!
//! Each test prints one `FIGURE` line (run with `-- --nocapture` to see it).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{attacker::*, *};
use futures::AsyncWriteExt as _;
use libp2p::StreamProtocol;
use p2plane::{
    Event, InboundError, Message, Node, Request,
    codec::{CborCodec, FrameBuf},
};
use tower::ServiceExt as _;

const MAX_MESSAGE: usize = 1 << 20;
const TOTAL_BUDGET: usize = 8 << 20;
const PEER_BUDGET: usize = 2 << 20;
const DEADLINE: Duration = Duration::from_secs(1);

async fn guarded_node() -> Node<Echo> {
    echo_node(
        config(TCP)
            .with_private_addrs(true)
            .with_max_message_size(MAX_MESSAGE)
            .with_inbound_budget(TOTAL_BUDGET, PEER_BUDGET)
            .with_stream_deadlines(DEADLINE, DEADLINE),
    )
    .await
}

/// An honest peer sends `n` requests, one after another; returns successes and the
/// p99 latency.
async fn honest_calls(node_addr: p2plane::Multiaddr, n: u64) -> (u64, Duration) {
    let honest = echo_node(config(TCP)).await;
    let server = honest.dial(node_addr).await.expect("honest peer connects");
    let mut ok = 0;
    let mut latencies = Vec::new();
    for seq in 0..n {
        let started = Instant::now();
        let reply = honest
            .client()
            .oneshot(Request::new(server, echo(seq)))
            .await;
        latencies.push(started.elapsed());
        if reply.is_ok_and(|r| r == answer(&echo(seq), server)) {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies.sort();
    (ok, latencies[latencies.len() * 99 / 100])
}

/// Counts the node's inbound failures by kind until the stream of events ends.
fn count_failures(node: &Node<Echo>) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let mut events = node.events();
    let (over, read_late, write_late) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let counters = (over.clone(), read_late.clone(), write_late.clone());
    tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some(event) = events.next().await {
            if let Event::InboundFailure { error, .. } = event {
                match error {
                    InboundError::OverBudget { .. } => &over,
                    InboundError::Timeout => &read_late,
                    InboundError::WriteTimeout => &write_late,
                    _ => continue,
                }
                .fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    counters
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// What one slowloris run saw.
struct Slowloris {
    peak: usize,
    over_budget: usize,
    closed_late: usize,
    honest_ok: u64,
    honest_p99: Duration,
}

const ATTACKERS: usize = 3;
const STREAMS: usize = 40;
const SENT: usize = 256 * 1024;

/// `ATTACKERS` peers each open `STREAMS` streams that announce a request just under the
/// message limit, send `SENT` bytes of it and stall with the stream open, while an honest
/// peer sends 100 requests.
async fn slowloris(node: Node<Echo>) -> Slowloris {
    let addr = first_addr(&node).await;
    let (over, read_late, _) = count_failures(&node);
    let release = Arc::new(tokio::sync::Notify::new());
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let attacker = Attacker::connect(addr.clone()).await;
        for _ in 0..STREAMS {
            let (control, node, release) =
                (attacker.control.clone(), attacker.node, release.clone());
            tokio::spawn(async move {
                let mut control = control;
                let Ok(mut stream) = control
                    .open_stream(node, StreamProtocol::new(Echo::PROTOCOL))
                    .await
                else {
                    return;
                };
                let mut bytes = vec![0xff, 0xff, 0x3f]; // 1 MiB - 1, as a varint
                bytes.resize(3 + SENT, 0);
                // The node may stop reading (over budget) or close the stream: either way
                // the attacker holds it open until the run ends.
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                release.notified().await;
            });
        }
        attackers.push(attacker);
    }
    let (honest_ok, honest_p99) = honest_calls(addr, 100).await;
    // The stalled streams are closed at the read deadline, and their bytes released.
    wait_until("the stalled streams to be closed", || {
        read_late.load(Ordering::SeqCst) > 0 && node.inbound_bytes() == 0
    })
    .await;
    release.notify_waiters();
    drop(attackers);
    node.shutdown().await;
    Slowloris {
        // The node's high-water mark, taken at every charge: no brief peak is missed.
        peak: node.inbound_bytes_peak(),
        over_budget: over.load(Ordering::SeqCst),
        closed_late: read_late.load(Ordering::SeqCst),
        honest_ok,
        honest_p99,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_stay_within_the_budgets_and_are_closed_at_the_read_deadline() {
    // The same attack on a node without budgets (but with the same deadlines), for scale.
    let unbounded = slowloris(
        echo_node(
            config(TCP)
                .with_max_message_size(MAX_MESSAGE)
                .with_inbound_budget(usize::MAX, usize::MAX)
                .with_stream_deadlines(DEADLINE, DEADLINE),
        )
        .await,
    )
    .await;
    let guarded = slowloris(guarded_node().await).await;
    println!(
        "FIGURE slowloris: {ATTACKERS} peers x {STREAMS} streams announcing 1 MiB, {} KiB sent \
         and stalled: peak held {} KiB with budgets of {} KiB total / {} KiB per peer \
         ({} KiB without); over budget {}, closed at the {DEADLINE:?} read deadline {}; \
         honest {}/100, p99 {:?} ({:?} without budgets)",
        SENT / 1024,
        guarded.peak / 1024,
        TOTAL_BUDGET / 1024,
        PEER_BUDGET / 1024,
        unbounded.peak / 1024,
        guarded.over_budget,
        guarded.closed_late,
        guarded.honest_ok,
        guarded.honest_p99,
        unbounded.honest_p99,
    );
    assert!(
        guarded.peak <= ATTACKERS * PEER_BUDGET + MAX_MESSAGE,
        "held {} bytes",
        guarded.peak
    );
    assert!(
        guarded.peak >= PEER_BUDGET,
        "the attack reached the budget: {}",
        guarded.peak
    );
    assert!(
        unbounded.peak > 4 * TOTAL_BUDGET,
        "without budgets the attack holds far more: {}",
        unbounded.peak
    );
    assert!(guarded.over_budget > 0, "requests over budget were refused");
    assert!(guarded.closed_late > 0, "stalled streams were closed");
    assert_eq!(guarded.honest_ok, 100, "every honest request was answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_answers_is_cut_off_at_the_write_deadline() {
    const REQUESTS: u64 = 200;
    let node = guarded_node().await;
    let addr = first_addr(&node).await;
    let (over, _, write_late) = count_failures(&node);

    // Requests with 64 KiB of text on one shared stream; the attacker never reads.
    let attacker = Attacker::connect(addr.clone()).await;
    let mut stream = attacker
        .control
        .clone()
        .open_stream(
            attacker.node,
            StreamProtocol::try_from_owned(format!("{}/p2plane-mux/1", Echo::PROTOCOL)).unwrap(),
        )
        .await
        .expect("the node accepts the shared stream");
    let codec = CborCodec::new(MAX_MESSAGE);
    let big = Echo {
        seq: 1,
        text: "x".repeat(64 * 1024),
    };
    let sender = tokio::spawn(async move {
        for id in 0..REQUESTS {
            let frame = FrameBuf::encode_with_id(&codec, id, &big).unwrap();
            if stream.write_all(frame.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stream.flush().await;
        stream
    });
    let (ok, p99) = honest_calls(addr, 50).await;
    wait_until("the never-reading stream to be cut off", || {
        write_late.load(Ordering::SeqCst) > 0 && node.inbound_bytes() == 0
    })
    .await;
    let peak = node.inbound_bytes_peak();
    let stream = sender.await.unwrap();
    println!(
        "FIGURE never-reads: {REQUESTS} requests of 64 KiB, answers never read: peak held {} KiB \
         (per-peer budget {} KiB), over budget {}, cut off at write deadline {}, honest {ok}/50, \
         p99 {p99:?}",
        peak / 1024,
        PEER_BUDGET / 1024,
        over.load(Ordering::SeqCst),
        write_late.load(Ordering::SeqCst),
    );
    assert!(peak <= PEER_BUDGET, "held {peak} bytes for one peer");
    assert_eq!(ok, 50, "every honest request was answered");
    drop((stream, attacker));
}
