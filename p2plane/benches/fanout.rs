//! Fan-out benchmark: one node sends a 512 B request to each of N connected peers and waits
//! for every answer (what a Narwhal primary does every round), P2PLane against stock
//! rust-libp2p `request_response::cbor` on the same transports, in one run.
//!
//! ```sh
//! cargo bench -p p2plane --bench fanout             # N = 10, 100, 1000; 20 rounds each
//! cargo bench -p p2plane --bench fanout -- --quick  # N = 10, 100; 5 rounds
//! ```
//!
//! All nodes run in this process on one runtime of two workers (the machine's two cores):
//! the hub's work and all N peers' work share them, for both systems alike. Prints one JSON
//! object per transport and N: the median time to the last answer (ms), CPU per request
//! (µs, the whole process), and the ratio P2PLane / stock (lower is better for both).

use std::{
    collections::HashSet,
    convert::Infallible,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use libp2p::{
    StreamProtocol, Swarm,
    request_response::{self, ProtocolSupport, cbor},
    swarm::SwarmEvent,
};
use p2plane::{
    Message, Multiaddr, Node, NodeConfig, PeerId, ReachConfig, Request, service_fn,
    transport::{TransportConfig, build_swarm, identity},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Msg(#[serde(with = "serde_bytes")] Vec<u8>);

impl Message for Msg {
    const PROTOCOL: &'static str = "/p2plane-bench/fanout/1";
}

const SIZE: usize = 512;

/// Process CPU time (user + system, all threads) in seconds.
fn cpu_seconds() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("the process CPU clock is readable");
    t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
}

/// A node with what a fan-out needs: no DHT, no NAT traversal (stock has neither).
fn config(listen: &str) -> NodeConfig {
    let mut reach = ReachConfig::default();
    reach.autonat = false;
    reach.hole_punching = false;
    reach.auto_relays = 0;
    NodeConfig::listen_on(listen.parse().unwrap())
        .with_dht(None)
        .with_reach(reach)
}

struct P2planeFan {
    hub: Node<Msg>,
    leaves: Vec<Node<Msg>>,
    peers: Vec<PeerId>,
}

async fn p2plane_fan(listen: &str, n: usize) -> P2planeFan {
    let hub = Node::<Msg>::new(config(listen)).await.unwrap();
    let mut leaves = Vec::with_capacity(n);
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let leaf = Node::<Msg>::new(config(listen)).await.unwrap();
        leaf.serve(service_fn(|r: Request<Msg>| async move {
            Ok::<_, Infallible>(r.into_body())
        }))
        .unwrap();
        peers.push(
            hub.dial(leaf.listen_addrs().await.unwrap()[0].clone())
                .await
                .unwrap(),
        );
        leaves.push(leaf);
    }
    P2planeFan { hub, leaves, peers }
}

impl P2planeFan {
    async fn round(&self) -> Duration {
        let client = self.hub.client();
        let t = Instant::now();
        let calls = self.peers.iter().map(|&peer| {
            let client = client.clone();
            async move { client.request(peer, Msg(vec![7; SIZE])).await.unwrap() }
        });
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|a| a.0.len() == SIZE));
        t.elapsed()
    }

    async fn shutdown(self) {
        self.hub.shutdown().await;
        for leaf in self.leaves {
            leaf.shutdown().await;
        }
    }
}

type StockSwarm = Swarm<cbor::Behaviour<Msg, Msg>>;

fn stock_swarm() -> StockSwarm {
    let mut transport = TransportConfig::default();
    transport.lazy_negotiation = false;
    build_swarm(identity::generate(), &transport, |_| {
        cbor::Behaviour::new(
            [(
                StreamProtocol::new("/stock-fanout/1"),
                ProtocolSupport::Full,
            )],
            request_response::Config::default().with_max_concurrent_streams(4096),
        )
    })
    .unwrap()
}

async fn listen_on(swarm: &mut StockSwarm, listen: &str) -> Multiaddr {
    swarm.listen_on(listen.parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

/// A stock hub driven by its own task: on each command it sends one request to every
/// peer and answers with the time to the last response.
struct StockFan {
    rounds: mpsc::Sender<oneshot::Sender<Duration>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn stock_fan(listen: &str, n: usize) -> StockFan {
    let mut tasks = Vec::with_capacity(n + 1);
    let mut hub = stock_swarm();
    let mut peers = HashSet::new();
    for _ in 0..n {
        let mut leaf = stock_swarm();
        let addr = listen_on(&mut leaf, listen).await;
        tasks.push(tokio::spawn(async move {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = leaf.select_next_some().await
                {
                    let _ = leaf.behaviour_mut().send_response(channel, request);
                }
            }
        }));
        hub.dial(addr).unwrap();
        let peer = loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = hub.select_next_some().await
            {
                break peer_id;
            }
        };
        peers.insert(peer);
    }
    let (rounds, mut commands) = mpsc::channel::<oneshot::Sender<Duration>>(1);
    tasks.push(tokio::spawn(async move {
        let peers: Vec<PeerId> = peers.into_iter().collect();
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(reply) = command else { return };
                    let t = Instant::now();
                    for peer in &peers {
                        hub.behaviour_mut().send_request(peer, Msg(vec![7; SIZE]));
                    }
                    let mut left = peers.len();
                    while left > 0 {
                        match hub.select_next_some().await {
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Response { response, .. },
                                ..
                            }) => {
                                assert_eq!(response.0.len(), SIZE);
                                left -= 1;
                            }
                            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                                panic!("stock request failed: {error}")
                            }
                            _ => {}
                        }
                    }
                    let _ = reply.send(t.elapsed());
                }
                _ = hub.select_next_some() => {}
            }
        }
    }));
    StockFan { rounds, tasks }
}

impl StockFan {
    async fn round(&self) -> Duration {
        let (reply, elapsed) = oneshot::channel();
        self.rounds.send(reply).await.unwrap();
        elapsed.await.unwrap()
    }
}

impl Drop for StockFan {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (sizes, rounds): (&[usize], usize) = if quick {
        (&[10, 100], 5)
    } else {
        (&[10, 100, 1000], 20)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for (transport, listen) in [
        ("tcp", "/ip4/127.0.0.1/tcp/0"),
        ("quic", "/ip4/127.0.0.1/udp/0/quic-v1"),
    ] {
        for &n in sizes {
            runtime.block_on(async {
                let p2plane = p2plane_fan(listen, n).await;
                let stock = stock_fan(listen, n).await;
                // Warm up (first streams, buffers) on both.
                p2plane.round().await;
                stock.round().await;
                let (mut times, mut cpus) = ([Vec::new(), Vec::new()], [0.0, 0.0]);
                // Interleaved rounds, so that both see the same machine.
                for _ in 0..rounds {
                    let c = cpu_seconds();
                    times[0].push(p2plane.round().await.as_secs_f64() * 1e3);
                    cpus[0] += cpu_seconds() - c;
                    let c = cpu_seconds();
                    times[1].push(stock.round().await.as_secs_f64() * 1e3);
                    cpus[1] += cpu_seconds() - c;
                }
                let requests = (rounds * n) as f64;
                let [p, s] = [0, 1].map(|i| median(times[i].clone()));
                let [pc, sc] = [0, 1].map(|i| cpus[i] / requests * 1e6);
                let row = serde_json::json!({
                    "transport": transport,
                    "peers": n,
                    "last_answer_ms_p50": {"p2plane": round3(p), "stock": round3(s), "ratio": round3(p / s)},
                    "cpu_us_per_request": {"p2plane": round3(pc), "stock": round3(sc), "ratio": round3(pc / sc)},
                    "rounds": rounds,
                });
                println!("{row}");
                drop(stock);
                p2plane.shutdown().await;
            });
        }
    }
}
