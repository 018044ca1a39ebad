//! Request/response benchmark: P2PLane against stock rust-libp2p `request_response::cbor`
//! (on the very same TCP+Noise+Yamux and QUIC transports), against `libp2p-stream` carrying
//! P2PLane's frames (the other way to get a stream per request), and against raw TCP, in one
//! run.
//!
//! ```sh
//! cargo bench -p p2plane --bench reqresp             # 5 interleaved rounds, medians
//! cargo bench -p p2plane --bench reqresp -- --quick  # 1 round, fewer requests
//! ```
//!
//! For profiling one path: `-- --profile-small` (P2PLane's 64-in-flight row alone;
//! `PROFILE_REQUESTS=N`, `PROFILE_TRANSPORT=quic`), `-- --profile-large` (1 MiB), and
//! `-- --setup-only` (the setup row, with the dial's share; `--in-task` runs the callers on
//! a runtime worker instead of the main thread).
//!
//! Prints one JSON object per row on stdout (`{"transport":..,"metric":..,"p2plane":..,
//! "stock":..,"ratio":..,"raw_tcp":..}`), then a table. `ratio` is p2plane / stock; for
//! requests/s and MB/s higher is better, for latencies lower is better.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::AsyncWriteExt as _;
use futures::{StreamExt as _, stream};
use libp2p::{
    StreamProtocol, Swarm,
    request_response::{self, ProtocolSupport, cbor},
    swarm::{NetworkBehaviour, SwarmEvent},
};
use p2plane::{
    Client, Message, Multiaddr, Node, NodeConfig, PeerId, Request,
    codec::{CborCodec, Codec as _, FrameBuf, read_frame},
    service_fn,
    transport::{TransportConfig, build_swarm, identity},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Message for Msg {
    const PROTOCOL: &'static str = "/p2plane-bench/1.0.0";
}

const MAX: usize = 8 * 1024 * 1024;
const SMALL: usize = 64;
const LARGE: usize = 1024 * 1024;

/// The server's rule, the same for every system: echo small messages, acknowledge large ones.
fn reply(m: Msg) -> Msg {
    if m.data.len() > 1024 {
        Msg {
            seq: m.seq,
            data: Vec::new(),
        }
    } else {
        m
    }
}

fn msg(seq: u64, size: usize) -> Msg {
    Msg {
        seq,
        data: vec![(seq % 251) as u8; size],
    }
}

/// A way to send one request and wait for its answer.
#[derive(Clone)]
enum Caller {
    P2plane(Client<Msg>, PeerId),
    Stock(mpsc::Sender<(Msg, oneshot::Sender<Msg>)>),
    /// libp2p-stream with P2PLane's framing: a stream per request, like P2PLane.
    LibStream(libp2p_stream::Control, PeerId, Arc<AtomicU64>),
}

impl Caller {
    async fn call(&self, m: Msg) -> Msg {
        match self {
            Caller::P2plane(client, peer) => {
                client.request(*peer, m).await.expect("p2plane request")
            }
            Caller::Stock(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send((m, reply)).await.expect("stock driver alive");
                rx.await.expect("stock request")
            }
            Caller::LibStream(control, peer, failures) => loop {
                // libp2p-stream drops inbound streams its one-slot queue cannot take; the
                // caller sees a reset stream. Count those and try again.
                match lib_stream_call(control.clone(), *peer, &m).await {
                    Some(reply) => return reply,
                    None => failures.fetch_add(1, Ordering::Relaxed),
                };
            },
        }
    }

    fn failures(&self) -> u64 {
        match self {
            Caller::LibStream(_, _, failures) => failures.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

async fn lib_stream_call(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    m: &Msg,
) -> Option<Msg> {
    let codec = CborCodec::new(MAX);
    let mut stream = control
        .open_stream(peer, StreamProtocol::new(LIB_STREAM))
        .await
        .ok()?;
    stream
        .write_all(FrameBuf::encode(&codec, m).unwrap().as_bytes())
        .await
        .ok()?;
    stream.close().await.ok()?;
    let bytes = read_frame(&mut stream, MAX).await.ok()?;
    codec.decode(&bytes).ok()
}

const LIB_STREAM: &str = "/lib-stream-bench/1.0.0";

async fn lib_stream_pair(listen: &str) -> (Caller, Vec<tokio::task::JoinHandle<()>>) {
    let swarm = || {
        build_swarm(identity::generate(), &TransportConfig::default(), |_| {
            libp2p_stream::Behaviour::new()
        })
        .unwrap()
    };
    let mut server = swarm();
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(StreamProtocol::new(LIB_STREAM))
        .unwrap();
    let addr = listen_on(&mut server, listen).await;
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let accept_task = tokio::spawn(async move {
        let codec = CborCodec::new(MAX);
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let Ok(bytes) = read_frame(&mut stream, MAX).await else {
                    return;
                };
                let Ok(m) = codec.decode::<Msg>(&bytes) else {
                    return;
                };
                let frame = FrameBuf::encode(&codec, &reply(m)).unwrap();
                let _ = stream.write_all(frame.as_bytes()).await;
                let _ = stream.close().await;
            });
        }
    });
    let mut client = swarm();
    let control = client.behaviour().new_control();
    let peer = connect(&mut client, addr).await;
    let client_task = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    (
        Caller::LibStream(control, peer, Arc::default()),
        vec![server_task, accept_task, client_task],
    )
}

async fn p2plane_pair(listen: &str) -> (Caller, Vec<Node<Msg>>) {
    let config = || NodeConfig::listen_on(listen.parse().unwrap()).with_max_message_size(MAX);
    let server = Node::<Msg>::new(config()).await.unwrap();
    server
        .serve(service_fn(|r: Request<Msg>| async move {
            Ok::<_, Infallible>(reply(r.into_body()))
        }))
        .unwrap();
    let client = Node::<Msg>::new(config()).await.unwrap();
    let peer = client
        .dial(server.listen_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    (Caller::P2plane(client.client(), peer), vec![server, client])
}

/// Listens on `listen` and returns the address once the listener is up.
async fn listen_on<B: NetworkBehaviour>(swarm: &mut Swarm<B>, listen: &str) -> Multiaddr {
    swarm.listen_on(listen.parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

/// Dials `addr` and returns the peer once connected.
async fn connect<B: NetworkBehaviour>(swarm: &mut Swarm<B>, addr: Multiaddr) -> PeerId {
    swarm.dial(addr).unwrap();
    loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            return peer_id;
        }
    }
}

type StockSwarm = libp2p::Swarm<cbor::Behaviour<Msg, Msg>>;

fn stock_swarm() -> StockSwarm {
    // The same transports as P2PLane's, with libp2p's default stream negotiation (V1).
    let mut transport = TransportConfig::default();
    transport.lazy_negotiation = false;
    build_swarm(identity::generate(), &transport, |_| {
        let codec = cbor::codec::Codec::default()
            .set_request_size_maximum(MAX as u64)
            .set_response_size_maximum(MAX as u64);
        cbor::Behaviour::with_codec(
            codec,
            [(
                StreamProtocol::new("/stock-bench/1.0.0"),
                ProtocolSupport::Full,
            )],
            request_response::Config::default().with_max_concurrent_streams(256),
        )
    })
    .unwrap()
}

/// A stock request-response server on a task of its own, and its address.
async fn stock_server(listen: &str) -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let mut server = stock_swarm();
    let addr = listen_on(&mut server, listen).await;
    let task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = server.select_next_some().await
            {
                let _ = server
                    .behaviour_mut()
                    .send_response(channel, reply(request));
            }
        }
    });
    (addr, task)
}

/// A stock server and a stock client, each driven by its own task as the rust-libp2p
/// examples do (commands in over a channel, replies matched by request id).
async fn stock_pair(listen: &str) -> (Caller, Vec<tokio::task::JoinHandle<()>>) {
    let (addr, server_task) = stock_server(listen).await;
    let mut client = stock_swarm();
    let peer = connect(&mut client, addr).await;
    let (tx, mut rx) = mpsc::channel::<(Msg, oneshot::Sender<Msg>)>(256);
    let client_task = tokio::spawn(async move {
        let mut pending = HashMap::new();
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some((m, reply)) => { pending.insert(client.behaviour_mut().send_request(&peer, m), reply); }
                    None => return,
                },
                event = client.select_next_some() => match event {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response }, ..
                    }) => { if let Some(r) = pending.remove(&request_id) { let _ = r.send(response); } }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => panic!("stock request failed: {error}"),
                    _ => {}
                },
            }
        }
    });
    (Caller::Stock(tx), vec![server_task, client_task])
}

/// Process CPU time (user + system, all threads) in seconds, from the kernel's per-process
/// CPU clock: nanoseconds, where `/proc/self/stat` counts 10 ms ticks (0.5 µs per request
/// over a 20,000-request run).
fn cpu_seconds() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

struct Sample {
    /// Calls that failed and were repeated (libp2p-stream only).
    failed_calls: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    rps_64: f64,
    cpu_us_per_req: f64,
    mb_s_1mib: f64,
}

struct Counts {
    sequential: u64,
    in_flight_total: u64,
    large: u64,
}

async fn measure(caller: &Caller, n: &Counts) -> Sample {
    // Warm up.
    for i in 0..50 {
        caller.call(msg(i, SMALL)).await;
    }
    let mut rtts = Vec::with_capacity(n.sequential as usize);
    for i in 0..n.sequential {
        let t = Instant::now();
        let r = caller.call(msg(i, SMALL)).await;
        rtts.push(t.elapsed());
        assert_eq!(r.seq, i);
    }
    rtts.sort();
    let pct =
        |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)].as_secs_f64() * 1e6;

    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let done = stream::iter(0..n.in_flight_total)
        .map(|i| {
            let c = caller.clone();
            async move { c.call(msg(i, SMALL)).await }
        })
        .buffer_unordered(64)
        .count()
        .await;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(done as u64, n.in_flight_total);

    let t = Instant::now();
    for i in 0..n.large {
        caller.call(msg(i, LARGE)).await;
    }
    let large_elapsed = t.elapsed().as_secs_f64();

    Sample {
        failed_calls: caller.failures() as f64,
        rtt_p50_us: pct(0.50),
        rtt_p99_us: pct(0.99),
        rps_64: n.in_flight_total as f64 / elapsed,
        cpu_us_per_req: cpu / n.in_flight_total as f64 * 1e6,
        mb_s_1mib: (n.large as f64 * LARGE as f64) / large_elapsed / 1e6,
    }
}

/// Raw TCP on loopback, length-prefixed frames, same request sizes: the ceiling.
async fn raw_tcp(n: &Counts) -> Sample {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        sock.set_nodelay(true).unwrap();
        let (mut r, mut w) = sock.into_split();
        let mut buf = Vec::new();
        loop {
            let Ok(len) = r.read_u32().await else { return };
            buf.resize(len as usize, 0);
            r.read_exact(&mut buf).await.unwrap();
            let answer: &[u8] = if len > 1024 { &[] } else { &buf };
            w.write_u32(answer.len() as u32).await.unwrap();
            w.write_all(answer).await.unwrap();
        }
    });
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (mut r, mut w) = sock.into_split();
    let small = vec![7u8; SMALL];
    let frame = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let small_frame = frame(&small);
    let mut buf = Vec::new();
    let mut rtts = Vec::new();
    for _ in 0..n.sequential {
        let t = Instant::now();
        w.write_all(&small_frame).await.unwrap();
        let len = r.read_u32().await.unwrap();
        buf.resize(len as usize, 0);
        r.read_exact(&mut buf).await.unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let pct =
        |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)].as_secs_f64() * 1e6;
    // 64 in flight: a window of 64 outstanding requests, answered in order.
    let window = std::sync::Arc::new(Semaphore::new(64));
    let total = n.in_flight_total;
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let writer = {
        let window = window.clone();
        let small_frame = small_frame.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                window.acquire().await.unwrap().forget();
                w.write_all(&small_frame).await.unwrap();
            }
            w
        })
    };
    for _ in 0..total {
        let len = r.read_u32().await.unwrap();
        buf.resize(len as usize, 0);
        r.read_exact(&mut buf).await.unwrap();
        window.add_permits(1);
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let mut w = writer.await.unwrap();
    let large_frame = frame(&vec![1u8; LARGE]);
    let t = Instant::now();
    for _ in 0..n.large {
        w.write_all(&large_frame).await.unwrap();
        let len = r.read_u32().await.unwrap();
        buf.resize(len as usize, 0);
        r.read_exact(&mut buf).await.unwrap();
    }
    let large_elapsed = t.elapsed().as_secs_f64();
    Sample {
        failed_calls: 0.0,
        rtt_p50_us: pct(0.5),
        rtt_p99_us: pct(0.99),
        rps_64: total as f64 / elapsed,
        cpu_us_per_req: cpu / total as f64 * 1e6,
        mb_s_1mib: (n.large as f64 * LARGE as f64) / large_elapsed / 1e6,
    }
}

/// Fresh clients per round for the connection-setup row.
const SETUP_TRIALS: usize = 10;

fn median_us(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e6
}

/// Medians of a round of connection setups: to the first answer, and to the end of the dial.
struct Setup {
    answer_us: f64,
    dial_us: f64,
}

impl Setup {
    fn of(dials: Vec<Duration>, answers: Vec<Duration>) -> Self {
        Self {
            answer_us: median_us(answers),
            dial_us: median_us(dials),
        }
    }
}

/// From dialing a server to holding its first answer, for fresh P2PLane nodes (created
/// before the clock starts).
async fn setup_p2plane(listen: &str) -> Setup {
    let config = || NodeConfig::listen_on(listen.parse().unwrap());
    let server = Node::<Msg>::new(config()).await.unwrap();
    server
        .serve(service_fn(|r: Request<Msg>| async move {
            Ok::<_, Infallible>(reply(r.into_body()))
        }))
        .unwrap();
    let addr = server.listen_addrs().await.unwrap()[0].clone();
    let (mut dials, mut times) = (Vec::new(), Vec::new());
    for i in 0..SETUP_TRIALS {
        let node = Node::<Msg>::new(config()).await.unwrap();
        let start = Instant::now();
        let peer = node.dial(addr.clone()).await.unwrap();
        dials.push(start.elapsed());
        node.client()
            .request(peer, msg(i as u64, SMALL))
            .await
            .unwrap();
        times.push(start.elapsed());
        node.shutdown().await;
    }
    server.shutdown().await;
    Setup::of(dials, times)
}

/// The same for stock request-response: dial, then the request once connected.
async fn setup_stock(listen: &str) -> Setup {
    let (addr, server_task) = stock_server(listen).await;
    let (mut dials, mut times) = (Vec::new(), Vec::new());
    for i in 0..SETUP_TRIALS {
        let mut client = stock_swarm();
        let start = Instant::now();
        let peer = connect(&mut client, addr.clone()).await;
        dials.push(start.elapsed());
        client
            .behaviour_mut()
            .send_request(&peer, msg(i as u64, SMALL));
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => break,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("stock: {error}"),
                _ => {}
            }
        }
        times.push(start.elapsed());
    }
    server_task.abort();
    Setup::of(dials, times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Both peers share one runtime of two workers: the machine's two cores.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `body` on a P2PLane client and server, for a profiler: over TCP, or over QUIC with
/// `PROFILE_TRANSPORT=quic`.
fn profile(body: impl AsyncFnOnce(&Caller)) {
    let listen = match std::env::var("PROFILE_TRANSPORT").as_deref() {
        Ok("quic") => "/ip4/127.0.0.1/udp/0/quic-v1",
        _ => "/ip4/127.0.0.1/tcp/0",
    };
    runtime().block_on(async {
        let (caller, nodes) = p2plane_pair(listen).await;
        body(&caller).await;
        for n in nodes {
            n.shutdown().await;
        }
    });
}

fn main() {
    if std::env::args().any(|a| a == "--profile-large") {
        // Only P2PLane's 1 MiB transfers, for a profiler.
        profile(async |caller| {
            let t = Instant::now();
            for i in 0..400 {
                caller.call(msg(i, LARGE)).await;
            }
            println!(
                "{:.1} MB/s",
                400.0 * LARGE as f64 / t.elapsed().as_secs_f64() / 1e6
            );
        });
        return;
    }
    if std::env::args().any(|a| a == "--profile-small") {
        // Only P2PLane's 64-in-flight small requests, for a profiler.
        profile(async |caller| {
            let counts = Counts {
                sequential: 10,
                // Fewer under callgrind: `PROFILE_REQUESTS=20000`.
                in_flight_total: std::env::var("PROFILE_REQUESTS")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(300_000),
                large: 0,
            };
            let s = measure(caller, &counts).await;
            println!(
                "{:.0} req/s, {:.2} µs CPU per request",
                s.rps_64, s.cpu_us_per_req
            );
        });
        return;
    }
    if std::env::args().any(|a| a == "--setup-only") {
        // Only the connection-setup row, 15 interleaved rounds, for comparing changes to it,
        // with the dial's share.
        let in_task = std::env::args().any(|a| a == "--in-task");
        let runtime = runtime();
        runtime.block_on(async {
            for (transport, listen) in [
                ("tcp", "/ip4/127.0.0.1/tcp/0"),
                ("quic", "/ip4/127.0.0.1/udp/0/quic-v1"),
            ] {
                let mut rounds = Vec::new();
                for _ in 0..15 {
                    // `--in-task`: the caller on a runtime worker instead of the main thread.
                    rounds.push(if in_task {
                        let stock = tokio::spawn(setup_stock(listen)).await.unwrap();
                        (tokio::spawn(setup_p2plane(listen)).await.unwrap(), stock)
                    } else {
                        let stock = setup_stock(listen).await;
                        (setup_p2plane(listen).await, stock)
                    });
                }
                let m = |f: fn(&(Setup, Setup)) -> f64| median(rounds.iter().map(f).collect());
                let (ours, stock) = (m(|r| r.0.answer_us), m(|r| r.1.answer_us));
                println!(
                    "{transport}: setup to first answer {ours:.0} µs, stock {stock:.0} µs ({:.2}x); \
                     dial {:.0} µs, stock {:.0} µs",
                    ours / stock,
                    m(|r| r.0.dial_us),
                    m(|r| r.1.dial_us),
                );
            }
        });
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let counts = if quick {
        Counts {
            sequential: 300,
            in_flight_total: 3_000,
            large: 10,
        }
    } else {
        Counts {
            sequential: 2_000,
            in_flight_total: 20_000,
            large: 50,
        }
    };
    let runtime = runtime();
    runtime.block_on(async {
        let mut rows = Vec::new();
        let raw: Vec<Sample> = {
            let mut v = Vec::new();
            for _ in 0..rounds {
                v.push(raw_tcp(&counts).await);
            }
            v
        };
        for (transport, listen) in [("tcp", "/ip4/127.0.0.1/tcp/0"), ("quic", "/ip4/127.0.0.1/udp/0/quic-v1")] {
            let (mut ours, mut stock, mut lib) = (Vec::new(), Vec::new(), Vec::new());
            let (mut setup_ours, mut setup_stock_us) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                setup_stock_us.push(setup_stock(listen).await.answer_us);
                setup_ours.push(setup_p2plane(listen).await.answer_us);
                let (caller, tasks) = lib_stream_pair(listen).await;
                lib.push(measure(&caller, &counts).await);
                tasks.into_iter().for_each(|t| t.abort());
                // Interleaved, each on fresh connections.
                let (caller, tasks) = stock_pair(listen).await;
                stock.push(measure(&caller, &counts).await);
                drop(caller);
                tasks.into_iter().for_each(|t| t.abort());
                let (caller, nodes) = p2plane_pair(listen).await;
                ours.push(measure(&caller, &counts).await);
                for n in nodes {
                    n.shutdown().await;
                }
            }
            type Metric = (&'static str, fn(&Sample) -> f64);
            let metrics: [Metric; 6] = [
                ("failed_calls", |s| s.failed_calls),
                ("rtt_p50_us", |s| s.rtt_p50_us),
                ("rtt_p99_us", |s| s.rtt_p99_us),
                ("req_per_s_64_in_flight", |s| s.rps_64),
                ("cpu_us_per_req", |s| s.cpu_us_per_req),
                ("mb_per_s_1mib", |s| s.mb_s_1mib),
            ];
            for (name, get) in metrics {
                let o = median(ours.iter().map(get).collect());
                let s = median(stock.iter().map(get).collect());
                let r = median(raw.iter().map(get).collect());
                let l = median(lib.iter().map(get).collect());
                rows.push((transport, name, o, s, r, l));
            }
            // Not measured for raw TCP and libp2p-stream (0 in their columns).
            rows.push((transport, "setup_to_first_response_us", median(setup_ours), median(setup_stock_us), 0.0, 0.0));
        }
        for (transport, metric, o, s, r, l) in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "transport": transport, "metric": metric, "p2plane": round(*o), "stock": round(*s),
                    "ratio": round(o / s), "raw_tcp": round(*r), "libp2p_stream": round(*l), "rounds": rounds,
                })
            );
        }
        println!();
        println!("| transport | metric | p2plane | stock libp2p | p2plane/stock | libp2p-stream | raw TCP |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        for (transport, metric, o, s, r, l) in &rows {
            let ratio = if *s == 0.0 { "-".to_owned() } else { format!("{:.2}", o / s) };
            println!("| {transport} | {metric} | {o:.1} | {s:.1} | {ratio} | {l:.1} | {r:.1} |");
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
