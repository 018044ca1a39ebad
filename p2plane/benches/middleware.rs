//! The cost of the recommended middleware stack per request.
//!
//! ```sh
//! cargo bench -p p2plane --bench middleware
//! ```
//!
//! - `inner/bare` and `inner/full_stack`: a service that answers at once, bare and wrapped in
//!   validate → retry → timeout. Their difference is what the layers cost per request.
//! - `loopback/bare_client` and `loopback/full_stack`: a real client over TCP on 127.0.0.1,
//!   bare and wrapped. The network dominates; the difference should be within noise.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use p2plane::{
    Error, Message, Node, NodeConfig, PeerId, Request, RetryLayer, RetryPolicy, TimeoutLayer,
    ValidateLayer, service_fn,
};
use serde::{Deserialize, Serialize};
use tower::{Service, ServiceBuilder, ServiceExt as _};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping(u64);

impl Message for Ping {
    const PROTOCOL: &'static str = "/p2plane-bench/ping/1.0.0";
}

fn full_stack<S>(inner: S) -> impl Service<Request<Ping>, Response = Ping, Error = Error>
where
    S: Service<Request<Ping>, Response = Ping, Error = Error> + Clone,
{
    ServiceBuilder::new()
        .layer(ValidateLayer::new())
        .layer(RetryLayer::new(RetryPolicy::exponential(3)))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(inner)
}

async fn one<S: Service<Request<Ping>, Response = Ping, Error = Error>>(
    svc: &mut S,
    request: &Request<Ping>,
) {
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(request.clone())
        .await
        .unwrap();
    std::hint::black_box(reply);
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let request = Request::new(PeerId::random(), Ping(7));
    let answer_at_once =
        service_fn(|r: Request<Ping>| std::future::ready(Ok::<_, Error>(r.into_body())));

    let mut group = c.benchmark_group("inner");
    let mut bare = answer_at_once;
    group.bench_function("bare", |b| {
        b.iter(|| runtime.block_on(one(&mut bare, &request)))
    });
    // One stack, reused: what a caller holding a client does.
    let mut stacked = full_stack(answer_at_once);
    group.bench_function("full_stack", |b| {
        b.iter(|| runtime.block_on(one(&mut stacked, &request)))
    });
    group.finish();

    let (server, client_node, peer) = runtime.block_on(async {
        let config = || NodeConfig::listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap());
        let server = Node::<Ping>::new(config()).await.unwrap();
        server
            .serve(service_fn(|r: Request<Ping>| async move {
                Ok::<_, Error>(r.into_body())
            }))
            .unwrap();
        let node = Node::<Ping>::new(config()).await.unwrap();
        let peer = node
            .dial(server.listen_addrs().await.unwrap()[0].clone())
            .await
            .unwrap();
        (server, node, peer)
    });
    let request = Request::new(peer, Ping(7));
    let mut group = c.benchmark_group("loopback");
    let mut bare = client_node.client();
    group.bench_function("bare_client", |b| {
        b.iter(|| runtime.block_on(one(&mut bare, &request)))
    });
    let mut stacked = full_stack(client_node.client());
    group.bench_function("full_stack", |b| {
        b.iter(|| runtime.block_on(one(&mut stacked, &request)))
    });
    group.finish();
    drop((server, client_node));
}

criterion_group!(benches, bench);
criterion_main!(benches);
