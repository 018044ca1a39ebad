//! DHT simulation: N in-process nodes on the memory transport, each joining from three
//! earlier nodes it knows from its peer store; then lookups and record puts/gets from random
//! nodes. Prints one JSON object.
//!
//! ```sh
//! cargo bench -p p2plane --bench dht_sim                       # 1,000 nodes
//! cargo bench -p p2plane --bench dht_sim -- --nodes 200 --lookups 500
//! ```

use std::{convert::Infallible, sync::Arc, time::Instant};

use futures::{StreamExt as _, stream};
use p2plane::{
    DhtConfig, DhtMode, Message, Node, NodeConfig, PeerStore, Quorum, Request,
    peers::MemoryPeerStore, service_fn,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping;
impl Message for Ping {
    const PROTOCOL: &'static str = "/p2plane-sim/ping/1.0.0";
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let n = arg("--nodes", 1000).max(4);
    let lookups = arg("--lookups", 1000);
    let records = arg("--records", 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dht = DhtConfig::default().with_mode(DhtMode::Server);
        let kad_protocol = dht.protocol.clone();
        let config = |store: Arc<dyn PeerStore>| {
            NodeConfig::listen_on("/memory/0".parse().unwrap())
                .with_private_addrs(true)
                .with_peer_store(store)
                .with_dht(Some(dht.clone()))
        };
        let rss_before = resident_kib();
        let start = Instant::now();
        let mut nodes: Vec<Node<Ping>> = Vec::with_capacity(n);
        let mut addrs: Vec<p2plane::Multiaddr> = Vec::with_capacity(n);
        let mut join_failures = 0;
        // Nodes join in batches of 16 that bootstrap together, each from three nodes of
        // earlier batches.
        while nodes.len() < n {
            let known = nodes.len();
            let batch = if known == 0 { 1 } else { (n - known).min(16) };
            let mut joining = Vec::with_capacity(batch);
            for _ in 0..batch {
                let store = Arc::new(MemoryPeerStore::default());
                for _ in 0..3.min(known) {
                    let j = rand::random_range(0..known);
                    let peer = nodes[j].local_peer_id();
                    store.add_peer_with_addr(peer, addrs[j].clone());
                    store.set_protocols(peer, vec![kad_protocol.clone()]);
                }
                let node = Node::<Ping>::new(config(store)).await.unwrap();
                node.serve(service_fn(|r: Request<Ping>| async move {
                    Ok::<_, Infallible>(r.into_body())
                }))
                .unwrap();
                joining.push(node);
            }
            if known > 0 {
                let joined = futures::future::join_all(joining.iter().map(|node| {
                    let dht = node.dht();
                    async move { dht.bootstrap().await }
                }))
                .await;
                join_failures += joined.iter().filter(|r| r.is_err()).count();
            }
            for node in joining {
                addrs.push(node.listen_addrs().await.unwrap()[0].clone());
                nodes.push(node);
            }
            if nodes.len() % 100 < batch {
                eprintln!(
                    "joined {} of {n} nodes in {:.1} s",
                    nodes.len(),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        let join_seconds = start.elapsed().as_secs_f64();
        let memory_per_node_kib = resident_kib().saturating_sub(rss_before) as f64 / n as f64;

        let mut fill = Vec::with_capacity(n);
        for node in &nodes {
            fill.push(node.dht().routing_table_size().await.unwrap() as f64);
        }
        fill.sort_by(|a, b| a.partial_cmp(b).unwrap());

        let pairs: Vec<_> = (0..lookups)
            .map(|_| {
                // A node never finds itself: Kademlia answers with other peers.
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                (nodes[a].dht(), nodes[b].local_peer_id())
            })
            .collect();
        let results: Vec<_> = stream::iter(pairs)
            .map(|(dht, target)| async move {
                let t = Instant::now();
                let found = dht.lookup_peer(target).await;
                (found, t.elapsed().as_secs_f64() * 1e3)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let found: Vec<_> = results
            .iter()
            .filter_map(|(r, ms)| r.as_ref().ok().map(|f| (f.requests, *ms)))
            .collect();
        let mut latency: Vec<f64> = found.iter().map(|(_, ms)| *ms).collect();
        latency.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut requests: Vec<f64> = found.iter().map(|(r, _)| f64::from(*r)).collect();
        requests.sort_by(|a, b| a.partial_cmp(b).unwrap());

        let mut records_found = 0;
        for i in 0..records {
            let key = format!("sim-{i}").into_bytes();
            let putter = &nodes[rand::random_range(0..n)];
            let _ = putter
                .dht()
                .put_record(key.clone(), vec![1; 32], Quorum::One)
                .await;
            let getter = &nodes[rand::random_range(0..n)];
            if getter.dht().get_record(key).await.is_ok() {
                records_found += 1;
            }
        }

        println!(
            "{}",
            serde_json::json!({
                "nodes": n,
                "join_seconds": join_seconds,
                "join_failures": join_failures,
                "routing_table_min": fill[0],
                "routing_table_p50": pct(&fill, 0.5),
                "lookups": lookups,
                "lookup_success_rate": found.len() as f64 / lookups.max(1) as f64,
                "lookup_requests_p50": pct(&requests, 0.5),
                "lookup_requests_p99": pct(&requests, 0.99),
                "log2_n": (n as f64).log2(),
                "lookup_latency_ms_p50": pct(&latency, 0.5),
                "lookup_latency_ms_p99": pct(&latency, 0.99),
                "record_get_success_rate": records_found as f64 / records.max(1) as f64,
                "memory_per_node_kib": memory_per_node_kib,
            })
        );
        for node in nodes {
            node.shutdown().await;
        }
    });
}
