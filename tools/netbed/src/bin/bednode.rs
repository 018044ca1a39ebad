//! The test bed's node, on P2PLane's public API only. Every run prints one line per figure.
//! `BEDNODE_LOG` (a tracing filter, such as `p2plane=debug,libp2p_dcutr=debug`) logs to
//! stderr.
//!
//! ```text
//! bednode serve --listen ADDR [--key FILE] [--peers FILE] [--bootstrap ADDR] [--dht]
//!               [--limit-loopback] [--relay ADDR] [--auto-relay] [--relay-server]
//!               [--max-inbound-per-ip N]
//!     An echo server (and, with --dht, a DHT server with a persistent peer store at
//!     --peers; with --relay-server, a relay for others). Prints `READY peer=ID addr=ADDR`;
//!     with --relay (a relay's address with its /p2p id), it listens through that relay and
//!     then prints `RELAYED addr=CIRCUIT` (with --auto-relay, it waits for the circuit
//!     address of a relay it chose among its peers); then `CONNECTED n=N` every second, and
//!     `REACHABILITY public=0|1 addrs=A,B` whenever AutoNAT's finding changes
//!     (`--autonat-ms` sets its probe interval).
//! bednode call --listen ADDR (--target ADDR | --target-peer ID --dht --bootstrap ADDR)
//!              --requests N [--concurrency C] [--retry] [--timeout-ms T]
//!              [--relay-first ADDR] [--upgrade-wait-ms W] [--dial-once]
//!     Sends N echo requests to the node at --target, C at a time, each attempt under a
//!     timeout, with or without the retry layer. Prints
//!     `RESULT ok=.. total=.. p50_ms=.. p99_ms=.. wire=.. connect_ms=.. first_ms=..` (wire:
//!     attempts sent; connect_ms: the dial; first_ms: the first answer, from the dial), after a
//!     `FAILED n=.. error=..` line for each distinct error that failed requests. With
//!     --upgrade-wait-ms it then waits up to that long more for a hole punch to the target
//!     and prints `UPGRADE direct=1 ms=..` (from the dial) or `UPGRADE direct=0 reason=..`; --relay-first connects to
//!     a relay first, as a running node would have (it learns its public address there).
//!     With --target-peer it knows only the server's id and joins the DHT through
//!     --bootstrap, which finds the server's addresses (a circuit through its relay, for
//!     one behind a NAT). With --dial-once it only dials, once, and prints `DIAL ok=1` or
//!     `DIAL ok=0 error=..` (otherwise it retries the dial for up to 30 s).
//! bednode dht --listen ADDR --bootstrap ADDR [--put N] [--get M] --rounds R
//!             [--interval-ms I] [--query-timeout-ms T] [--client]
//!     Joins the DHT (as a server, or a client that stores nothing for others), puts N
//!     records (`key-i` -> `value-i`), then every interval gets `key-0..M` (default N; 32 at
//!     a time) and prints `GETS round=.. ok=.. stale=.. total=.. p95_ms=.. table=ID,..`
//!     (the routing table's peers), R times.
//! bednode flood --net 10.77.9 --aliases A --target IP:PORT --connections C --dials D
//!               --secs S
//!     From A addresses `NET.1..A` (one /24, already on the host): C raw TCP connections
//!     that never start a handshake, plus D libp2p connections (full handshakes, one node
//!     per address). Prints `FLOOD raw_open=.. raw_refused=.. dials_ok=.. dials_refused=..`
//!     after S seconds: raw connections the node still held open, and those it closed.
//! ```

use std::{
    collections::HashMap,
    convert::Infallible,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use p2plane::{
    DhtConfig, DhtMode, Event, Message, Multiaddr, Node, NodeConfig, PeerId, Quorum, Request,
    RetryLayer, RetryPolicy, TimeoutLayer, service_fn,
    tower::{ServiceBuilder, ServiceExt as _},
};
use serde::{Deserialize, Serialize};

/// The echo protocol the bed's nodes speak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echo {
    seq: u64,
    text: String,
}

impl Message for Echo {
    const PROTOCOL: &'static str = "/p2plane-bed/echo/1";
}

struct Args(HashMap<String, Option<String>>);

impl Args {
    fn parse(raw: &[String]) -> Self {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < raw.len() {
            let key = raw[i].trim_start_matches("--").to_owned();
            let value = raw.get(i + 1).filter(|v| !v.starts_with("--")).cloned();
            i += 1 + usize::from(value.is_some());
            map.insert(key, value);
        }
        Self(map)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_deref())
    }

    fn flag(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn addr(&self, key: &str) -> Result<Multiaddr, String> {
        self.get(key)
            .ok_or_else(|| format!("--{key} is required"))?
            .parse()
            .map_err(|e| format!("--{key}: {e}"))
    }

    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        self.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("--{key}: {e}"))
        })
    }
}

fn base_config(args: &Args) -> Result<NodeConfig, String> {
    let mut config = NodeConfig::listen_on(args.addr("listen")?).with_private_addrs(true);
    if let Some(key) = args.get("key") {
        config = config.with_key_file(key);
    }
    if let Ok(addr) = args.addr("bootstrap") {
        config = config.with_bootstrap(addr);
    }
    if let Some(path) = args.get("peers") {
        let store = p2plane::peers::RedbPeerStore::open(path).map_err(|e| e.to_string())?;
        config = config.with_peer_store(Arc::new(store));
    }
    let mut reach = p2plane::ReachConfig::default();
    if let Ok(relay) = args.addr("relay") {
        reach = reach.with_relay(relay);
    }
    if args.flag("relay-server") {
        reach = reach.with_relay_server(p2plane::RelayServerConfig::default());
    }
    if let Some(ms) = args.get("autonat-ms") {
        let ms = ms.parse().map_err(|e| format!("--autonat-ms: {e}"))?;
        reach = reach.with_autonat_probe_interval(Duration::from_millis(ms));
    }
    config = config.with_reach(reach);
    let mut limits = p2plane::Limits::default();
    limits.limit_loopback = args.flag("limit-loopback");
    if let Some(n) = args.get("max-inbound-per-ip") {
        limits.max_inbound_per_ip = n
            .parse()
            .map_err(|e| format!("--max-inbound-per-ip: {e}"))?;
    }
    config = config.with_limits(limits);
    let dht = args.flag("dht").then(|| {
        let mut dht = DhtConfig::default()
            .with_mode(DhtMode::Server)
            .with_replication(std::num::NonZeroUsize::new(5).expect("5 > 0"))
            .with_query_timeout(Duration::from_millis(
                args.num("query-timeout-ms", 10_000).unwrap_or(10_000),
            ));
        dht.bootstrap_interval = Some(Duration::from_secs(10));
        dht
    });
    Ok(config.with_dht(dht))
}

async fn serve(args: &Args) -> Result<(), String> {
    let node = Node::<Echo>::new(base_config(args)?)
        .await
        .map_err(|e| e.to_string())?;
    let me = node.local_peer_id();
    node.serve(service_fn(move |req: Request<Echo>| async move {
        let body = req.into_body();
        Ok::<_, Infallible>(Echo {
            seq: body.seq,
            text: format!("{} from {me}", body.text),
        })
    }))
    .map_err(|e| e.to_string())?;
    let mut events = node.events();
    let addr = listen_addr(&node).await?;
    println!("READY peer={me} addr={addr}");
    if args.get("relay").is_some() || args.flag("auto-relay") {
        let relayed = p2plane::transport::is_relayed;
        let known = node
            .listen_addrs()
            .await
            .ok()
            .and_then(|a| a.into_iter().find(relayed));
        let circuit = match known {
            Some(a) => a,
            None => tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(event) = events.next().await {
                    if let Event::Listening { addr } = event
                        && relayed(&addr)
                    {
                        return Some(addr);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .ok_or("no reservation on the relay")?,
        };
        println!("RELAYED addr={circuit}");
    }
    // What AutoNAT finds, as it finds it.
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::Reachability { public, addrs } = event {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!(
                    "REACHABILITY public={} addrs={}",
                    u8::from(public),
                    addrs.join(",")
                );
            }
        }
    });
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = node.connected_peers().await.map_or(0, |p| p.len());
        println!("CONNECTED n={n}");
    }
}

async fn listen_addr(node: &Node<Echo>) -> Result<Multiaddr, String> {
    for _ in 0..100 {
        if let Some(addr) = node
            .listen_addrs()
            .await
            .ok()
            .and_then(|a| a.into_iter().next())
        {
            return Ok(addr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no listen address".to_owned())
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

async fn call(args: &Args) -> Result<(), String> {
    let config = base_config(args)?;
    let config = if args.flag("dht") {
        config
    } else {
        config.with_dht(None)
    };
    let node = Node::<Echo>::new(config).await.map_err(|e| e.to_string())?;
    let mut events = node.events();
    // `--target-peer ID`: only the peer's id; the DHT (joined through --bootstrap) finds
    // where to reach it when the first request goes out.
    if let Some(peer) = args.get("target-peer") {
        let peer: PeerId = peer.parse().map_err(|e| format!("--target-peer: {e}"))?;
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = events.next().await {
                if matches!(event, Event::PeerIdentified { .. }) {
                    return;
                }
            }
        })
        .await
        .map_err(|_| "no peer identified through --bootstrap")?;
        let sent = send_requests(args, &node, peer, Instant::now(), 0.0).await;
        node.shutdown().await;
        return sent;
    }
    let target = args.addr("target")?;
    if let Ok(relay) = args.addr("relay-first") {
        let relay_id = node.dial(relay).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = events.next().await {
                if matches!(event, Event::PeerIdentified { peer, .. } if peer == relay_id) {
                    return;
                }
            }
        })
        .await
        .map_err(|_| "the relay was not identified")?;
    }
    let connecting = Instant::now();
    if args.flag("dial-once") {
        // One dial, its outcome printed: `DIAL ok=1` or `DIAL ok=0 error=..`.
        match node.dial(target.clone()).await {
            Ok(_) => println!("DIAL ok=1"),
            Err(e) => println!("DIAL ok=0 error={}", e.to_string().replace(' ', "_")),
        }
        node.shutdown().await;
        return Ok(());
    }
    // The hole punch is timed when it happens, while the requests run.
    let upgrade_wait = Duration::from_millis(args.num("upgrade-wait-ms", 0)?);
    let upgrade = (!upgrade_wait.is_zero()).then(|| {
        let mut events = node.events();
        // A failed hole punch may still be followed by a direct connection (the node then
        // dials the peer's direct addresses): wait for the upgrade until the wait ends.
        let failure = Arc::new(std::sync::Mutex::new(None));
        let failed = Arc::clone(&failure);
        let watcher = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::DirectUpgrade { .. } => return Ok(connecting.elapsed()),
                    Event::DirectUpgradeFailed { reason, .. } => {
                        *failed.lock().expect("not poisoned") = Some(reason);
                    }
                    _ => {}
                }
            }
            Err("event stream ended".to_owned())
        });
        (watcher, failure)
    });
    let server: PeerId = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match node.dial(target.clone()).await {
                Ok(peer) => return peer,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .map_err(|_| "could not connect to the target".to_owned())?;
    let connect_ms = connecting.elapsed().as_secs_f64() * 1000.0;
    send_requests(args, &node, server, connecting, connect_ms).await?;
    if let Some((watcher, failure)) = upgrade {
        let outcome = tokio::time::timeout(upgrade_wait, watcher)
            .await
            .map_err(|_| match failure.lock().expect("not poisoned").take() {
                Some(reason) => format!("hole punch failed: {reason}"),
                None => "no hole punch within the wait".to_owned(),
            })
            .and_then(|joined| joined.map_err(|e| e.to_string()))
            .and_then(|outcome| outcome);
        match outcome {
            Ok(took) => println!("UPGRADE direct=1 ms={:.1}", took.as_secs_f64() * 1000.0),
            Err(reason) => println!("UPGRADE direct=0 reason={}", reason.replace(' ', "_")),
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Sends `--requests` echo requests to `server` and prints `FAILED` lines and `RESULT`.
async fn send_requests(
    args: &Args,
    node: &Node<Echo>,
    server: PeerId,
    connecting: Instant,
    connect_ms: f64,
) -> Result<(), String> {
    let requests = args.num("requests", 200)?;
    let concurrency = args.num("concurrency", 20)? as usize;
    let timeout = Duration::from_millis(args.num("timeout-ms", 1000)?);
    let wire = Arc::new(AtomicU64::new(0));
    let counted = {
        let wire = wire.clone();
        move |req: Request<Echo>| {
            wire.fetch_add(1, Ordering::Relaxed);
            req
        }
    };
    let retry = args.flag("retry").then(|| {
        RetryLayer::new(
            RetryPolicy::exponential(5)
                .with_base_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(1)),
        )
    });
    let client = ServiceBuilder::new()
        .option_layer(retry)
        .map_request(counted)
        .layer(TimeoutLayer::new(timeout))
        .service(node.client());
    // When the first answer came, from the start of the dial.
    let first_answer = Arc::new(std::sync::OnceLock::new());
    let outcomes: Vec<(Result<(), String>, Duration)> = stream::iter(0..requests)
        .map(|seq| {
            let client = client.clone();
            let first_answer = Arc::clone(&first_answer);
            async move {
                let started = Instant::now();
                let request = Echo {
                    seq,
                    text: format!("request {seq}"),
                };
                let outcome = match client.oneshot(Request::new(server, request)).await {
                    Ok(r) if r.seq == seq && r.text.starts_with("request ") => {
                        first_answer.get_or_init(|| connecting.elapsed());
                        Ok(())
                    }
                    Ok(r) => Err(format!("wrong answer {}", r.seq)),
                    Err(e) => Err(e.to_string()),
                };
                (outcome, started.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let ok = outcomes.iter().filter(|(ok, _)| ok.is_ok()).count();
    let mut errors: HashMap<&str, usize> = HashMap::new();
    for (outcome, _) in &outcomes {
        if let Err(e) = outcome {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    for (error, count) in &errors {
        println!("FAILED n={count} error={}", error.replace(' ', "_"));
    }
    let mut latencies: Vec<Duration> = outcomes.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let first_ms = first_answer.get().map_or("-".to_owned(), |d| {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    });
    println!(
        "RESULT ok={ok} total={requests} p50_ms={:.1} p99_ms={:.1} wire={} connect_ms={connect_ms:.1} first_ms={first_ms}",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        wire.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn flood(args: &Args) -> Result<(), String> {
    use tokio::io::AsyncReadExt as _;
    let net = args.get("net").ok_or("--net is required")?.to_owned();
    let aliases = args.num("aliases", 50)?.max(1);
    let target: std::net::SocketAddr = args
        .get("target")
        .ok_or("--target is required")?
        .parse()
        .map_err(|e| format!("--target: {e}"))?;
    let connections = args.num("connections", 2000)?;
    let dials = args.num("dials", 200)?;
    let secs = Duration::from_secs(args.num("secs", 10)?);
    let source = |i: u64| -> std::net::IpAddr {
        format!("{net}.{}", i % aliases + 1)
            .parse()
            .expect("an address")
    };
    let (open, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut raw = Vec::new();
    for i in 0..connections {
        let (ip, open, refused) = (source(i), open.clone(), refused.clone());
        raw.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind((ip, 0).into()).ok()?;
            let Ok(mut stream) = socket.connect(target).await else {
                refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            open.fetch_add(1, Ordering::Relaxed);
            // Never speak; count the connection closed when the node closes it.
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
            open.fetch_sub(1, Ordering::Relaxed);
            refused.fetch_add(1, Ordering::Relaxed);
            Some(())
        }));
    }
    let target_addr: Multiaddr = format!("/ip4/{}/tcp/{}", target.ip(), target.port())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let (dials_ok, dials_refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut nodes = Vec::new();
    for i in 0..aliases.min(dials) {
        let listen: Multiaddr = format!("/ip4/{}/tcp/0", source(i)).parse().expect("addr");
        let node = Node::<Echo>::new(
            NodeConfig::listen_on(listen)
                .with_private_addrs(true)
                .with_dht(None),
        )
        .await
        .map_err(|e| e.to_string())?;
        nodes.push(node);
    }
    let per_node = dials.div_ceil(nodes.len().max(1) as u64);
    let dialers: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (node, target, ok, no) = (
                node.clone(),
                target_addr.clone(),
                dials_ok.clone(),
                dials_refused.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..per_node {
                    match node.dial(target.clone()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => no.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    println!("STARTED");
    tokio::time::sleep(secs).await;
    println!(
        "FLOOD raw_open={} raw_refused={} dials_ok={} dials_refused={}",
        open.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        dials_ok.load(Ordering::Relaxed),
        dials_refused.load(Ordering::Relaxed),
    );
    raw.iter().for_each(|t| t.abort());
    dialers.iter().for_each(|t| t.abort());
    Ok(())
}

async fn dht(args: &Args) -> Result<(), String> {
    let mut args_dht = Args(args.0.clone());
    args_dht.0.insert("dht".to_owned(), None);
    let mut config = base_config(&args_dht)?;
    if args.flag("client")
        && let Some(dht) = config.dht.take()
    {
        config = config.with_dht(Some(dht.with_mode(DhtMode::Client)));
    }
    let node = Node::<Echo>::new(config).await.map_err(|e| e.to_string())?;
    let dht = node.dht();
    let records = args.num("put", 0)?;
    let wanted = args.num("get", records)?;
    let rounds = args.num("rounds", 1)?;
    let interval = Duration::from_millis(args.num("interval-ms", 1000)?);
    // Joined once the routing table holds more than the bootstrap peer.
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let _ = dht.bootstrap().await;
            if dht.routing_table_size().await.unwrap_or(0) > 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if joined.is_err() {
        return Err("the routing table did not grow past the bootstrap peer".to_owned());
    }
    let mut put_ok = 0;
    for i in 0..records {
        let put = dht
            .put_record(
                format!("key-{i}").into_bytes(),
                format!("value-{i}").into_bytes(),
                Quorum::One,
            )
            .await;
        put_ok += u64::from(put.is_ok());
    }
    println!(
        "PUT ok={put_ok} total={records} table={}",
        dht.routing_table_size().await.unwrap_or(0)
    );
    for round in 0..rounds {
        let started = Instant::now();
        let gets: Vec<(Option<bool>, Duration)> = stream::iter(0..wanted)
            .map(|i| {
                let dht = dht.clone();
                async move {
                    let t = Instant::now();
                    let got = dht.get_record(format!("key-{i}").into_bytes()).await;
                    let fresh = got.ok().map(|v| v == format!("value-{i}").into_bytes());
                    (fresh, t.elapsed())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let ok = gets.iter().filter(|(g, _)| *g == Some(true)).count();
        let stale = gets.iter().filter(|(g, _)| *g == Some(false)).count();
        let mut latencies: Vec<Duration> = gets.iter().map(|(_, d)| *d).collect();
        latencies.sort();
        let table: Vec<String> = dht
            .routing_table_peers()
            .await
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        println!(
            "GETS round={round} ok={ok} stale={stale} total={wanted} p95_ms={:.1} table={}",
            percentile(&latencies, 95),
            table.join(",")
        );
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // `BEDNODE_LOG=p2plane=debug` (a tracing filter) logs to stderr, which the bed passes on.
    if let Ok(filter) = std::env::var("BEDNODE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = raw.split_first() else {
        eprintln!("usage: bednode serve|call|dht --listen ADDR ... (see the source's docs)");
        return ExitCode::from(2);
    };
    let args = Args::parse(rest);
    let outcome = match mode.as_str() {
        "serve" => serve(&args).await,
        "call" => call(&args).await,
        "dht" => dht(&args).await,
        "flood" => flood(&args).await,
        other => Err(format!("unknown mode {other}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bednode: {e}");
            ExitCode::FAILURE
        }
    }
}
