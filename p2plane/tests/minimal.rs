//! The smallest build: `cargo test -p p2plane --no-default-features --features tcp --test
//! minimal` (CI runs it so). Uses only what every feature set has: a node, TCP, typed
//! request/response, the memory peer store. Also runs, unchanged, with every feature on.

use p2plane::{Message, Node, NodeConfig, Request, service_fn};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping(u64);

impl Message for Ping {
    const PROTOCOL: &'static str = "/p2plane-test/minimal/1";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimal_build_serves_requests_over_tcp() {
    let addr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let server = Node::<Ping>::new(NodeConfig::listen_on(addr))
        .await
        .unwrap();
    server
        .serve(service_fn(|request: Request<Ping>| async move {
            Ok::<_, std::convert::Infallible>(Ping(request.body().0 + 1))
        }))
        .unwrap();
    let listen = server.listen_addrs().await.unwrap().remove(0);
    let client = Node::<Ping>::new(NodeConfig::listen_on(
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let peer = tokio::time::timeout(std::time::Duration::from_secs(20), client.dial(listen))
        .await
        .expect("dial in time")
        .unwrap();
    for i in 0..100 {
        let reply = client.client().request(peer, Ping(i)).await.unwrap();
        assert_eq!(reply, Ping(i + 1));
    }
}
