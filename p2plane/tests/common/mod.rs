//! Helpers shared by the integration tests: real nodes on 127.0.0.1, waiting on events
//! with timeouts, never on sleeps.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod attacker;

use std::{convert::Infallible, future::Future, time::Duration};

use futures::StreamExt as _;
use p2plane::{Event, Events, Message, Multiaddr, Node, NodeConfig, PeerId, Request, service_fn};
use serde::{Deserialize, Serialize};

pub const TCP: &str = "/ip4/127.0.0.1/tcp/0";
pub const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Echo {
    pub seq: u64,
    pub text: String,
}

impl Message for Echo {
    const PROTOCOL: &'static str = "/p2plane-test/echo/1.0.0";
}

pub fn echo(seq: u64) -> Echo {
    Echo {
        seq,
        text: format!("request {seq}"),
    }
}

/// The answer the echo handler gives: a visibly different value, so a test cannot pass on
/// a request returned unchanged.
pub fn answer(request: &Echo, server: PeerId) -> Echo {
    Echo {
        seq: request.seq * 2 + 1,
        text: format!("{} answered by {server}", request.text),
    }
}

/// A validator for the tests: the text must not be empty.
pub fn non_empty_text(request: &Request<Echo>) -> Result<(), String> {
    if request.body().text.is_empty() {
        Err("empty text".to_owned())
    } else {
        Ok(())
    }
}

pub fn config(addr: &str) -> NodeConfig {
    NodeConfig::listen_on(addr.parse().unwrap())
}

/// A node serving the echo handler.
pub async fn echo_node(config: NodeConfig) -> Node<Echo> {
    let node = Node::<Echo>::new(config).await.expect("node starts");
    let me = node.local_peer_id();
    node.serve(service_fn(move |req: Request<Echo>| async move {
        Ok::<_, Infallible>(answer(req.body(), me))
    }))
    .expect("serves");
    node
}

pub async fn first_addr<P: p2plane::Protocol>(node: &Node<P>) -> Multiaddr {
    node.listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("a listen address")
}

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A test that cannot run on this machine (no Node.js, no network namespaces): under
/// `CI=true` it fails with `reason`, since CI installs what every test needs; elsewhere it
/// writes one line saying what was skipped and why. The line goes straight to the process's
/// stderr, past the test harness's capture, so a skip never reads as a plain pass.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run here: {reason} (under CI=true every test must run)");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
}

/// Waits for the first event that `pick` accepts.
pub async fn wait_event<T>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let event = events.next().await.expect("event stream open");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
}
