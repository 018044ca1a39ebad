//! Interoperability with js-libp2p (`interop/js`, from the npm registry), both ways:
//! identify, ping, a Kademlia query on P2PLane's DHT protocol name, a request on a
//! P2PLane protocol in the framing of `docs/wire.md`, and (js calling P2PLane) a streaming
//! call whose 1000 items js reads under its own small window; over TCP and over WebSocket. Skipped,
//! with a message, where Node.js or the npm packages are not available.

mod common;

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use common::{TCP, first_addr, skip, wait_event, within};
use p2plane::{DhtConfig, DhtMode, Event, Message, Node, NodeConfig, Request, service_fn};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shout {
    text: String,
}

impl Message for Shout {
    const PROTOCOL: &'static str = "/p2plane-interop/echo/1.0.0";
}

/// Streams the numbers `from..to`.
struct Count;
impl p2plane::Streaming for Count {
    const NAME: &'static str = "/p2plane-interop/count/1.0.0";
    type Request = (u64, u64);
    type Upload = ();
    type Item = u64;
}

const JS_TIMEOUT: Duration = Duration::from_secs(120);

/// The js directory with its packages installed, or why that cannot be.
fn js_dir() -> Result<&'static Path, &'static str> {
    static READY: OnceLock<Result<PathBuf, &'static str>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/js");
            let node = std::process::Command::new("node").arg("--version").output();
            if !matches!(node, Ok(o) if o.status.success()) {
                return Err("Node.js (`node`) is not installed");
            }
            if !dir.join("node_modules").exists() {
                let install = std::process::Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir)
                    .status();
                if !matches!(install, Ok(s) if s.success()) {
                    return Err("`npm install` in interop/js failed (no registry?)");
                }
            }
            Ok(dir)
        })
        .as_deref()
        .map_err(|e| *e)
}

/// A WebSocket listen address on loopback.
const WS: &str = "/ip4/127.0.0.1/tcp/0/ws";

fn config(listen: &str) -> NodeConfig {
    NodeConfig::listen_on(listen.parse().unwrap())
        .with_private_addrs(true)
        .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_dials_p2plane() {
    js_dials_p2plane("js_libp2p_dials_p2plane", TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_dials_p2plane_over_websocket() {
    js_dials_p2plane("js_libp2p_dials_p2plane_over_websocket", WS).await;
}

async fn js_dials_p2plane(test: &str, listen: &str) {
    let dir = match js_dir() {
        Ok(dir) => dir,
        Err(reason) => return skip(test, reason),
    };
    let node = Node::<Shout>::new(config(listen)).await.unwrap();
    node.serve(service_fn(|req: Request<Shout>| async move {
        Ok::<_, Infallible>(Shout {
            text: format!("p2plane heard {}", req.body().text),
        })
    }))
    .unwrap();
    node.serve_stream::<Count, _>(service_fn(|req: Request<(u64, u64)>| async move {
        let (from, to) = *req.body();
        Ok::<_, Infallible>(futures::stream::iter((from..to).map(Ok::<_, Infallible>)))
    }))
    .unwrap();
    let addr = first_addr(&node).await;

    let output = tokio::time::timeout(
        JS_TIMEOUT,
        Command::new("node")
            .arg(dir.join("peer.mjs"))
            .args(["dial", &addr.to_string(), &node.local_peer_id().to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the js peer finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "js peer failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "identify ok agent=p2plane/0.1.0 echo=true kad=true",
            "ping ok",
            "kad ok",
            r#"echo ok {"Ok":{"text":"p2plane heard hello from js"}}"#,
            "stream ok n=1000 sum=499500 first=0 last=999 credit=true",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2plane_dials_js_libp2p() {
    p2plane_dials_js("p2plane_dials_js_libp2p", "serve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2plane_dials_js_libp2p_over_websocket() {
    p2plane_dials_js("p2plane_dials_js_libp2p_over_websocket", "serve-ws").await;
}

/// `mode`: `serve` (TCP) or `serve-ws` (WebSocket).
async fn p2plane_dials_js(test: &str, mode: &str) {
    let dir = match js_dir() {
        Ok(dir) => dir,
        Err(reason) => return skip(test, reason),
    };
    let mut js = Command::new("node")
        .arg(dir.join("peer.mjs"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(js.stdout.take().unwrap()).lines();
    let (mut addr, mut peer) = (None, None);
    tokio::time::timeout(JS_TIMEOUT, async {
        while addr.is_none() || peer.is_none() {
            let line = lines.next_line().await.unwrap().expect("the js peer runs");
            if let Some(a) = line.strip_prefix("listening ") {
                addr = Some(a.parse::<p2plane::Multiaddr>().unwrap());
            } else if let Some(p) = line.strip_prefix("peer ") {
                peer = Some(p.parse::<p2plane::PeerId>().unwrap());
            }
        }
    })
    .await
    .expect("the js peer starts");
    let (addr, js_peer) = (addr.unwrap(), peer.unwrap());
    if mode == "serve-ws" {
        assert!(addr.to_string().contains("/ws/"), "{addr} is not WebSocket");
    }

    let node = Node::<Shout>::new(config(TCP)).await.unwrap();
    let mut events = node.events();
    assert_eq!(node.dial(addr).await.unwrap(), js_peer);
    // identify: js-libp2p tells us what it serves.
    let protocols = wait_event(&mut events, "the js peer's identify", |e| match e {
        Event::PeerIdentified { peer, protocols } if *peer == js_peer => Some(protocols.clone()),
        _ => None,
    })
    .await;
    assert!(
        protocols.iter().any(|p| p == Shout::PROTOCOL),
        "{protocols:?}"
    );
    assert!(
        protocols.iter().any(|p| p == "/ipfs/ping/1.0.0"),
        "{protocols:?}"
    );
    assert!(
        protocols.iter().any(|p| p == "/p2plane/kad/1.0.0"),
        "{protocols:?}"
    );

    // Kademlia: the js peer answers a lookup on P2PLane's DHT protocol.
    let closest = within(
        "a DHT lookup",
        node.dht().closest_peers(b"interop".to_vec()),
    )
    .await
    .unwrap();
    assert!(closest.iter().any(|(p, _)| *p == js_peer), "{closest:?}");

    // A request on a P2PLane protocol (js-libp2p has no shared streams, so P2PLane falls
    // back to a stream per request).
    let reply = within(
        "the js answer",
        node.client().request(
            js_peer,
            Shout {
                text: "hello from p2plane".into(),
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(reply.text, "js heard hello from p2plane");

    drop(js.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), js.wait()).await;
}
