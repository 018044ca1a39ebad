//! DHT simulation: N in-process nodes on the memory transport, each joining from three
//! earlier nodes it knows from its peer store; then lookups and record puts/gets from random
//! nodes. Prints one JSON object.
//!
//! ```sh
//! cargo bench -p p2plane --bench dht_sim                       # 1,000 nodes
//! cargo bench -p p2plane --bench dht_sim -- --nodes 200 --lookups 500
//! ```
//!
//! Flags: `--nodes N`, `--lookups L`, `--records R`, `--idle-timeout S` (connection idle
//! timeout, default 10 s), `--bootstrap-interval S` (periodic refresh, default off), `--join 0`
//! (nodes never join: what an idle node costs).
//!
//! Lookup hops are counted by replaying Kademlia's iterative lookup (alpha 3, k 20) over the
//! nodes' real routing tables; libp2p does not report hops, only requests per query.
//! Memory is the live heap (a counting allocator), after the join with connections open and
//! again at rest, once idle connections have closed.

use std::{
    alloc::System,
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::{PeerId, kad::KBucketKey};

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

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

/// The system allocator, counting the bytes live on the heap: what the nodes really hold,
/// which the process's resident size overstates (the allocator keeps freed pages).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live_heap_kib() -> f64 {
    let stats = ALLOCATOR.stats();
    // A realloc adds its growth to `bytes_allocated` (or its shrinkage to
    // `bytes_deallocated`), so these two alone give the live bytes.
    (stats.bytes_allocated as f64 - stats.bytes_deallocated as f64) / 1024.0
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
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Kademlia's iterative lookup replayed over the nodes' real routing tables: each round asks
/// the `ALPHA` closest peers not yet asked for the `K` closest to the target they know. The
/// answer is how many rounds pass before the target's address is known (0: it is in the
/// asker's own table), or `None` if the lookup runs out of peers to ask.
fn hops(tables: &HashMap<PeerId, Vec<PeerId>>, from: PeerId, target: PeerId) -> Option<u32> {
    const ALPHA: usize = 3;
    const K: usize = 20;
    let key = KBucketKey::from(target);
    let closest = |peers: &[PeerId]| {
        let mut peers = peers.to_vec();
        peers.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
        peers.truncate(K);
        peers
    };
    let mut known: BTreeMap<_, PeerId> = closest(&tables[&from])
        .into_iter()
        .map(|p| (key.distance(&KBucketKey::from(p)), p))
        .collect();
    let mut asked = HashSet::from([from]);
    for round in 0..64 {
        if known.values().any(|p| *p == target) {
            return Some(round);
        }
        let next: Vec<PeerId> = known
            .values()
            .filter(|p| !asked.contains(*p))
            .take(ALPHA)
            .copied()
            .collect();
        if next.is_empty() {
            return None;
        }
        for peer in next {
            asked.insert(peer);
            for p in closest(tables.get(&peer).map_or(&[][..], Vec::as_slice)) {
                known.insert(key.distance(&KBucketKey::from(p)), p);
            }
        }
    }
    None
}

fn main() {
    let n = arg("--nodes", 1000).max(4);
    let lookups = arg("--lookups", 1000);
    let records = arg("--records", 100);
    // `--join 0` leaves the nodes unconnected: what an idle node costs.
    let join = arg("--join", 1) != 0;
    let idle_secs = arg("--idle-timeout", 10) as u64;
    // Periodic bootstrap is off by default here: on 1,000 separate machines each node's
    // refresh every five minutes costs little, but squeezed onto two cores all of them at
    // once crowd out the joins and lookups being measured. `--bootstrap-interval S` turns it on.
    let bootstrap_secs = arg("--bootstrap-interval", 0) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dht = DhtConfig::default()
            .with_mode(DhtMode::Server)
            .with_bootstrap_interval(
                (bootstrap_secs > 0).then(|| Duration::from_secs(bootstrap_secs)),
            );
        let kad_protocol = dht.protocol.clone();
        let config = |store: Arc<dyn PeerStore>| {
            let mut transport = p2plane::TransportConfig::default();
            transport.idle_connection_timeout = Duration::from_secs(idle_secs);
            NodeConfig {
                transport,
                ..NodeConfig::listen_on("/memory/0".parse().unwrap())
            }
            .with_private_addrs(true)
            .with_peer_store(store)
            .with_dht(Some(dht.clone()))
        };
        let rss_before = resident_kib();
        let heap_before = live_heap_kib();
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
            if known > 0 && join {
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
        let heap_per_node_kib = (live_heap_kib() - heap_before) / n as f64;

        let mut fill = Vec::with_capacity(n);
        let mut connections = Vec::with_capacity(n);
        let mut tables = HashMap::with_capacity(n);
        for node in &nodes {
            let table = node.dht().routing_table_peers().await.unwrap();
            fill.push(table.len() as f64);
            tables.insert(node.local_peer_id(), table);
            connections.push(node.connected_peers().await.unwrap().len() as f64);
        }
        connections.sort_by(f64::total_cmp);
        fill.sort_by(|a, b| a.partial_cmp(b).unwrap());

        let pairs: Vec<_> = (0..lookups)
            .map(|_| {
                // A node never finds itself: Kademlia answers with other peers.
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                (a, nodes[b].local_peer_id())
            })
            .collect();
        let mut replayed: Vec<f64> = pairs
            .iter()
            .filter_map(|(a, target)| hops(&tables, nodes[*a].local_peer_id(), *target))
            .map(f64::from)
            .collect();
        replayed.sort_by(f64::total_cmp);
        let results: Vec<_> = stream::iter(pairs)
            .map(|(a, target)| {
                let dht = nodes[a].dht();
                async move {
                    let t = Instant::now();
                    let found = dht.lookup_peer(target).await;
                    (found, t.elapsed().as_secs_f64() * 1e3)
                }
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

        // At rest: once idle connections have closed, what each node holds for itself
        // (routing table, records, swarm) without the buffers of open connections.
        tokio::time::sleep(Duration::from_secs(idle_secs + 5)).await;
        let mut open_at_rest = 0;
        for node in &nodes {
            open_at_rest += node.connected_peers().await.unwrap().len();
        }
        let heap_at_rest_per_node_kib = (live_heap_kib() - heap_before) / n as f64;

        println!(
            "{}",
            serde_json::json!({
                "nodes": n,
                "join_seconds": join_seconds,
                "join_failures": join_failures,
                "routing_table_min": fill[0],
                "routing_table_p50": pct(&fill, 0.5),
                "connections_p50": pct(&connections, 0.5),
                "lookups": lookups,
                "lookup_success_rate": found.len() as f64 / lookups.max(1) as f64,
                "lookup_requests_p50": pct(&requests, 0.5),
                "lookup_requests_p99": pct(&requests, 0.99),
                "log2_n": (n as f64).log2(),
                "lookup_latency_ms_p50": pct(&latency, 0.5),
                "lookup_latency_ms_p99": pct(&latency, 0.99),
                "record_get_success_rate": records_found as f64 / records.max(1) as f64,
                "memory_per_node_kib": memory_per_node_kib,
                "heap_per_node_kib": heap_per_node_kib,
                "heap_at_rest_per_node_kib": heap_at_rest_per_node_kib,
                "connections_at_rest_mean": open_at_rest as f64 / n as f64,
                "lookup_hops_p50": pct(&replayed, 0.5),
                "lookup_hops_p99": pct(&replayed, 0.99),
                "lookup_hops_replay_success_rate": replayed.len() as f64 / lookups.max(1) as f64,
            })
        );
        for node in nodes {
            node.shutdown().await;
        }
    });
}
