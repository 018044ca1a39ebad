//! Streaming benchmark: items per second and MB/s on one P2PLane response stream, against
//! `libp2p-stream` carrying the very same frames on the same transport (no flow control of its
//! own: the transport's alone), and against P2PLane's own unary requests, in one run.
//!
//! ```sh
//! cargo bench -p p2plane --bench streams             # 3 interleaved rounds, medians
//! cargo bench -p p2plane --bench streams -- --quick  # 1 round, fewer items
//! ```
//!
//! Prints one JSON object per row on stdout (`{"transport":..,"metric":..,"p2plane_stream":..,
//! "libp2p_stream":..,"p2plane_unary":..,"vs_libp2p_stream":..,"vs_unary":..}`).
//! Rows: 64 B items per second (unary: 64 B requests per second, 64 in flight), CPU µs per
//! 64 B item (both peers, the whole process), MB/s of 64 KiB items (unary: 1 MiB requests one
//! at a time, the README's figure), and CPU ms per MB of 64 KiB items.

use std::{convert::Infallible, time::Instant};

use futures::{AsyncWriteExt as _, StreamExt as _, io::BufReader, stream};
use libp2p::{StreamProtocol, Swarm, swarm::SwarmEvent};
use p2plane::{
    Message, Multiaddr, Node, NodeConfig, PeerId, Request, Streaming,
    codec::{CborCodec, Codec as _, FrameBuf, StreamFrame, read_frame},
    service_fn,
    transport::{TransportConfig, build_swarm, identity},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

/// `n` items of `size` bytes.
struct Items;
impl Streaming for Items {
    const NAME: &'static str = "/p2plane-bench/items/1";
    type Request = (u64, usize);
    type Upload = ();
    type Item = Blob;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl Message for Msg {
    const PROTOCOL: &'static str = "/p2plane-bench/unary/1";
}

const MAX: usize = 8 * 1024 * 1024;
const SMALL: usize = 64;
const LARGE_ITEM: usize = 64 * 1024;
const LARGE_REQUEST: usize = 1024 * 1024;
const LIB_STREAM: &str = "/p2plane-bench/lib-stream/1";

/// Process CPU time (user + system, all threads) in seconds.
fn cpu_seconds() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("the process CPU clock is readable");
    t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
}

/// Items per second, and CPU seconds per item.
#[derive(Clone, Copy)]
struct Rate {
    per_s: f64,
    cpu_per: f64,
}

async fn timed<F: std::future::Future<Output = u64>>(f: F) -> Rate {
    let (cpu0, t) = (cpu_seconds(), Instant::now());
    let n = f.await;
    let (elapsed, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    Rate {
        per_s: n as f64 / elapsed,
        cpu_per: cpu / n as f64,
    }
}

fn blobs(n: u64, size: usize) -> impl futures::Stream<Item = Blob> + Send {
    stream::iter(0..n).map(move |i| Blob(vec![(i % 251) as u8; size]))
}

struct P2plane {
    client: Node<Msg>,
    server: Node<Msg>,
    peer: PeerId,
}

async fn p2plane_pair(listen: &str) -> P2plane {
    let config = || NodeConfig::listen_on(listen.parse().unwrap()).with_max_message_size(MAX);
    let server = Node::<Msg>::new(config()).await.unwrap();
    server
        .serve(service_fn(|r: Request<Msg>| async move {
            let m = r.into_body();
            let data = if m.data.len() > 1024 {
                Vec::new()
            } else {
                m.data
            };
            Ok::<_, Infallible>(Msg { seq: m.seq, data })
        }))
        .unwrap();
    server
        .serve_stream::<Items, _>(service_fn(|r: Request<(u64, usize)>| async move {
            let (n, size) = *r.body();
            Ok::<_, Infallible>(blobs(n, size).map(Ok))
        }))
        .unwrap();
    let client = Node::<Msg>::new(config()).await.unwrap();
    let peer = client
        .dial(server.listen_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    P2plane {
        client,
        server,
        peer,
    }
}

impl P2plane {
    async fn stream(&self, n: u64, size: usize) -> Rate {
        timed(async {
            let items = self
                .client
                .stream_client::<Items>()
                .request(self.peer, (n, size))
                .await
                .unwrap();
            let got = items
                .fold(0u64, |k, item| {
                    assert_eq!(item.unwrap().0.len(), size);
                    futures::future::ready(k + 1)
                })
                .await;
            assert_eq!(got, n);
            got
        })
        .await
    }

    async fn unary_small(&self, n: u64) -> Rate {
        let client = self.client.client();
        timed(async {
            stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    async move {
                        let m = Msg {
                            seq: i,
                            data: vec![1; SMALL],
                        };
                        client.request(self.peer, m).await.unwrap()
                    }
                })
                .buffer_unordered(64)
                .count()
                .await as u64
        })
        .await
    }

    async fn unary_large(&self, n: u64) -> Rate {
        let client = self.client.client();
        timed(async {
            for i in 0..n {
                let m = Msg {
                    seq: i,
                    data: vec![1; LARGE_REQUEST],
                };
                client.request(self.peer, m).await.unwrap();
            }
            n
        })
        .await
    }

    async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

/// libp2p-stream on the same transports: the server writes the same `StreamFrame::Item`
/// frames, gathered into 64 KiB writes as P2PLane's writer does; the client reads and decodes
/// them. Flow control is the transport's only.
struct LibStream {
    control: libp2p_stream::Control,
    peer: PeerId,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn listen_on<B: libp2p::swarm::NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    listen: &str,
) -> Multiaddr {
    swarm.listen_on(listen.parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

async fn lib_stream_pair(listen: &str) -> LibStream {
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
                let Ok((n, size)) = codec.decode::<(u64, usize)>(&bytes) else {
                    return;
                };
                let mut batch = Vec::with_capacity(64 * 1024);
                let mut items = std::pin::pin!(blobs(n, size));
                while let Some(blob) = items.next().await {
                    let frame = FrameBuf::encode(&codec, &StreamFrame::Item(&blob)).unwrap();
                    batch.extend_from_slice(frame.as_bytes());
                    if batch.len() >= 64 * 1024 {
                        if stream.write_all(&batch).await.is_err() {
                            return;
                        }
                        batch.clear();
                    }
                }
                let end = FrameBuf::encode(&codec, &StreamFrame::<()>::End).unwrap();
                batch.extend_from_slice(end.as_bytes());
                let _ = stream.write_all(&batch).await;
                let _ = stream.close().await;
            });
        }
    });
    let mut client = swarm();
    let control = client.behaviour().new_control();
    client.dial(addr).unwrap();
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = client.select_next_some().await {
            break peer_id;
        }
    };
    let client_task = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    LibStream {
        control,
        peer,
        tasks: vec![server_task, accept_task, client_task],
    }
}

impl LibStream {
    async fn stream(&mut self, n: u64, size: usize) -> Rate {
        let codec = CborCodec::new(MAX);
        let mut control = self.control.clone();
        let peer = self.peer;
        timed(async move {
            let mut stream = control
                .open_stream(peer, StreamProtocol::new(LIB_STREAM))
                .await
                .unwrap();
            let request = FrameBuf::encode(&codec, &(n, size)).unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut io = BufReader::with_capacity(64 * 1024, stream);
            let mut got = 0;
            loop {
                let bytes = read_frame(&mut io, MAX + 16).await.unwrap();
                match codec.decode::<StreamFrame<Blob>>(&bytes).unwrap() {
                    StreamFrame::Item(blob) => {
                        assert_eq!(blob.0.len(), size);
                        got += 1;
                    }
                    StreamFrame::End => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(got, n);
            got
        })
        .await
    }
}

impl Drop for LibStream {
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

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

#[derive(Default)]
struct Rows {
    small: [Vec<f64>; 3],
    small_cpu: [Vec<f64>; 3],
    large: [Vec<f64>; 3],
    large_cpu: [Vec<f64>; 3],
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, small_n, large_n, unary_small_n, unary_large_n) = if quick {
        (1, 100_000, 512, 20_000, 32)
    } else {
        (3, 500_000, 2048, 50_000, 128)
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
        let mut rows = Rows::default();
        runtime.block_on(async {
            let p2plane = p2plane_pair(listen).await;
            let mut lib = lib_stream_pair(listen).await;
            // Warm up both.
            p2plane.stream(1000, SMALL).await;
            lib.stream(1000, SMALL).await;
            for _ in 0..rounds {
                let r = [
                    p2plane.stream(small_n, SMALL).await,
                    lib.stream(small_n, SMALL).await,
                    p2plane.unary_small(unary_small_n).await,
                ];
                for (i, r) in r.iter().enumerate() {
                    rows.small[i].push(r.per_s);
                    rows.small_cpu[i].push(r.cpu_per * 1e6);
                }
                let r = [
                    p2plane.stream(large_n, LARGE_ITEM).await,
                    lib.stream(large_n, LARGE_ITEM).await,
                    p2plane.unary_large(unary_large_n).await,
                ];
                let sizes = [LARGE_ITEM, LARGE_ITEM, LARGE_REQUEST];
                for (i, r) in r.iter().enumerate() {
                    let mb = sizes[i] as f64 / 1e6;
                    rows.large[i].push(r.per_s * mb);
                    rows.large_cpu[i].push(r.cpu_per / mb * 1e3);
                }
            }
            p2plane.shutdown().await;
        });
        let table: [(&str, &[Vec<f64>; 3]); 4] = [
            ("items_per_s_64B", &rows.small),
            ("cpu_us_per_item_64B", &rows.small_cpu),
            ("mb_s_64KiB_items", &rows.large),
            ("cpu_ms_per_mb_64KiB_items", &rows.large_cpu),
        ];
        for (metric, values) in table {
            let [p, l, u] = [0, 1, 2].map(|i| median(values[i].clone()));
            let row = serde_json::json!({
                "transport": transport,
                "metric": metric,
                "p2plane_stream": round(p),
                "libp2p_stream": round(l),
                "p2plane_unary": round(u),
                "vs_libp2p_stream": round(p / l),
                "vs_unary": round(p / u),
                "rounds": rounds,
            });
            println!("{row}");
        }
    }
}
