//! Does a persistent peer store slow the node down? Request latency while 10,000 peer-store
//! updates per second go to the serving node's store, with `RedbPeerStore` and with
//! `MemoryPeerStore`, in the same run; and what one inline redb commit would cost.
//!
//! ```sh
//! cargo bench -p p2plane --bench peer_store
//! ```
//!
//! Prints JSON lines, then a summary with the p99 ratio (target: within 1.5x).

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use p2plane::{
    Message, Multiaddr, Node, NodeConfig, PeerId, PeerStore, Request,
    peers::{MemoryPeerStore, RedbConfig, RedbPeerStore},
    service_fn,
};
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping(u64);
impl Message for Ping {
    const PROTOCOL: &'static str = "/p2plane-bench/ping/1.0.0";
}

const UPDATES_PER_SECOND: u64 = 10_000;
const REQUESTS: usize = 5_000;
const ROUNDS: usize = 3;

fn peers(n: u64) -> Vec<(PeerId, Multiaddr)> {
    (0..n)
        .map(|i| {
            (
                PeerId::random(),
                format!("/ip4/10.2.{}.{}/tcp/4001", (i >> 8) & 255, i & 255)
                    .parse()
                    .unwrap(),
            )
        })
        .collect()
}

/// p50 and p99 of request latency, in µs, while `store` takes 10,000 updates per second.
async fn measure(store: Arc<dyn PeerStore>) -> (f64, f64, u64) {
    let config = || NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap());
    let server = Node::<Ping>::new(config().with_peer_store(Arc::clone(&store)))
        .await
        .unwrap();
    server
        .serve(service_fn(|r: Request<Ping>| async move {
            Ok::<_, Infallible>(r.into_body())
        }))
        .unwrap();
    let client = Node::<Ping>::new(config()).await.unwrap();
    let peer = client
        .dial(server.listen_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();

    let writer_store = Arc::clone(&store);
    let writer = tokio::spawn(async move {
        let book = peers(1_000);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let per_tick = UPDATES_PER_SECOND / 1_000;
        let mut written = 0u64;
        loop {
            tick.tick().await;
            for _ in 0..per_tick {
                let (p, a) = &book[(written % 1_000) as usize];
                writer_store.add_peer_with_addr(*p, a.clone());
                written += 1;
            }
        }
    });
    let api = client.client();
    for i in 0..200 {
        api.request(peer, Ping(i)).await.unwrap();
    }
    let start = Instant::now();
    let mut rtts = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let t = Instant::now();
        api.request(peer, Ping(i as u64)).await.unwrap();
        rtts.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    writer.abort();
    server.shutdown().await;
    client.shutdown().await;
    rtts.sort();
    let pct =
        |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)].as_secs_f64() * 1e6;
    (
        pct(0.5),
        pct(0.99),
        (UPDATES_PER_SECOND as f64 * elapsed.as_secs_f64()) as u64,
    )
}

/// What committing one update inline (as a naive store would, on the event loop) costs.
fn inline_commit_us(path: &std::path::Path) -> (f64, f64) {
    const T: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("t");
    let db = Database::create(path).unwrap();
    let mut times = Vec::new();
    for i in 0..200u32 {
        let t = Instant::now();
        let txn = db.begin_write().unwrap();
        txn.open_table(T)
            .unwrap()
            .insert(i.to_be_bytes().as_slice(), [7u8; 64].as_slice())
            .unwrap();
        txn.commit().unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (
        times[100].as_secs_f64() * 1e6,
        times[198].as_secs_f64() * 1e6,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut memory, mut redb) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        for round in 0..ROUNDS {
            let m = measure(Arc::new(MemoryPeerStore::default())).await;
            let store = RedbPeerStore::open_with(dir.path().join(format!("peers-{round}.redb")), RedbConfig::default()).unwrap();
            let r = measure(Arc::new(store)).await;
            for (kind, (p50, p99, updates)) in [("memory", m), ("redb", r)] {
                println!("{}", serde_json::json!({"store": kind, "round": round, "rtt_p50_us": p50, "rtt_p99_us": p99, "updates": updates}));
            }
            memory.push(m);
            redb.push(r);
        }
    });
    let (commit_p50, commit_p99) = inline_commit_us(&dir.path().join("inline.redb"));
    let m99 = median(memory.iter().map(|m| m.1).collect());
    let r99 = median(redb.iter().map(|r| r.1).collect());
    let m50 = median(memory.iter().map(|m| m.0).collect());
    let r50 = median(redb.iter().map(|r| r.0).collect());
    println!(
        "{}",
        serde_json::json!({
            "summary": true, "rounds": ROUNDS, "updates_per_second": UPDATES_PER_SECOND,
            "memory_p50_us": m50, "redb_p50_us": r50, "memory_p99_us": m99, "redb_p99_us": r99,
            "p99_ratio_redb_over_memory": r99 / m99,
            "inline_redb_commit_p50_us": commit_p50, "inline_redb_commit_p99_us": commit_p99,
        })
    );
    println!();
    println!("| store | p50 µs | p99 µs |");
    println!("|---|---:|---:|");
    println!("| MemoryPeerStore | {m50:.1} | {m99:.1} |");
    println!("| RedbPeerStore | {r50:.1} | {r99:.1} |");
    println!("p99 ratio redb/memory: {:.2} (target <= 1.5)", r99 / m99);
    println!("one inline redb commit (fsync): p50 {commit_p50:.0} µs, p99 {commit_p99:.0} µs");
}
