//! Request flood (issue 8, point 4): one peer sends as fast as it can beside five honest
//! peers at 10 requests/s each. The server limits every peer to 100 requests/s and 16 in
//! flight (the per-peer layers); over the limits a request is answered `Busy` at once.
//! Honest peers must keep their success rate and latency; the attacker's goodput must stay
//! at its limit.
//!
//! Prints one `FIGURE` line (run with `-- --nocapture`).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{attacker::resident_kib, *};
use futures::{StreamExt as _, stream};
use p2plane::{
    Error, Node, Request,
    layer::{InFlightLimitLayer, RateLimitLayer},
    service_fn,
};
use tower::{ServiceBuilder, ServiceExt as _};

const LIMIT_PER_SECOND: u64 = 100;
const HONEST: usize = 5;
const HONEST_RATE: u64 = 10;
const SECONDS: u64 = 5;

async fn limited_server() -> Node<Echo> {
    let node = Node::<Echo>::new(config(TCP)).await.expect("node starts");
    let me = node.local_peer_id();
    let handler = ServiceBuilder::new()
        .layer(InFlightLimitLayer::new(16))
        .layer(RateLimitLayer::new(
            LIMIT_PER_SECOND as u32,
            Duration::from_secs(1),
        ))
        .service(service_fn(move |req: Request<Echo>| async move {
            Ok::<_, Error>(answer(req.body(), me))
        }));
    node.serve(handler).expect("serves");
    node
}

/// Five honest peers, each sending `HONEST_RATE` requests a second for `SECONDS`; returns
/// successes, total and latencies.
async fn honest_peers(server: p2plane::Multiaddr) -> (usize, usize, Vec<Duration>) {
    let runs = (0..HONEST).map(|_| {
        let server = server.clone();
        async move {
            let node = echo_node(config(TCP)).await;
            let peer = node.dial(server).await.expect("honest peer connects");
            let mut ticks = tokio::time::interval(Duration::from_millis(1000 / HONEST_RATE));
            let mut outcomes = Vec::new();
            for seq in 0..HONEST_RATE * SECONDS {
                ticks.tick().await;
                let started = Instant::now();
                let reply = node.client().oneshot(Request::new(peer, echo(seq))).await;
                outcomes.push((reply.is_ok(), started.elapsed()));
            }
            node.shutdown().await;
            outcomes
        }
    });
    let all: Vec<(bool, Duration)> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    let ok = all.iter().filter(|(ok, _)| *ok).count();
    let mut latencies: Vec<Duration> = all.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    (ok, all.len(), latencies)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_gets_its_limit_and_honest_peers_keep_their_service() {
    // Baseline: the honest peers alone.
    let server = limited_server().await;
    let addr = first_addr(&server).await;
    let (base_ok, base_total, base_latencies) = honest_peers(addr.clone()).await;
    assert_eq!(base_ok, base_total);
    let base_p99 = p99(&base_latencies);

    // The same beside a flood: 256 requests in flight at all times.
    let attacker = echo_node(config(TCP)).await;
    let target = attacker
        .dial(addr.clone())
        .await
        .expect("attacker connects");
    let (sent, good, busy) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rss_before = resident_kib();
    let flood = {
        let (client, sent, good, busy, stop) = (
            attacker.client(),
            sent.clone(),
            good.clone(),
            busy.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            stream::iter(0u64..)
                .take_while(|_| futures::future::ready(!stop.load(Ordering::Relaxed)))
                .for_each_concurrent(256, |seq| {
                    let (client, sent, good, busy) =
                        (client.clone(), sent.clone(), good.clone(), busy.clone());
                    async move {
                        sent.fetch_add(1, Ordering::Relaxed);
                        match client.oneshot(Request::new(target, echo(seq))).await {
                            Ok(_) => good.fetch_add(1, Ordering::Relaxed),
                            Err(Error::Busy { .. }) => busy.fetch_add(1, Ordering::Relaxed),
                            Err(_) => 0,
                        };
                    }
                })
                .await;
        })
    };
    let started = Instant::now();
    let (ok, total, latencies) = honest_peers(addr).await;
    let elapsed = started.elapsed().as_secs_f64();
    let rss_grown_mib = resident_kib().saturating_sub(rss_before) / 1024;
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    let (sent, good, busy) = (
        sent.load(Ordering::Relaxed) as f64,
        good.load(Ordering::Relaxed) as f64,
        busy.load(Ordering::Relaxed) as f64,
    );
    let flood_p99 = p99(&latencies);
    let success = 100.0 * ok as f64 / total as f64;
    let goodput = good / elapsed;
    println!(
        "FIGURE request-flood: attacker {:.0} req/s ({:.0} busy/s), goodput {goodput:.0}/s \
         (limit {LIMIT_PER_SECOND}/s + a burst of {LIMIT_PER_SECOND}); {HONEST} honest peers at \
         {HONEST_RATE}/s: {ok}/{total} ok ({success:.1}%), p99 {flood_p99:?} (alone: \
         {base_p99:?}); RSS +{rss_grown_mib} MiB",
        sent / elapsed,
        busy / elapsed,
    );
    assert!(sent / elapsed >= 10_000.0, "the flood reached 10,000 req/s");
    assert!(success >= 99.0);
    // The bucket starts full: one burst of LIMIT on top of the rate.
    let allowed = LIMIT_PER_SECOND as f64 * (1.0 + 1.0 / elapsed) * 1.1;
    assert!(goodput <= allowed, "goodput {goodput}/s");
    assert!(
        flood_p99 <= (base_p99 * 2).max(Duration::from_millis(5)),
        "honest p99 {flood_p99:?} against {base_p99:?} alone"
    );
    assert!(rss_grown_mib < 64, "RSS grew by {rss_grown_mib} MiB");
}
