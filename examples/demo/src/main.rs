//! Starts a few P2PLane nodes on loopback, connects them, and has every node ask every
//! other node a question through the recommended middleware stack. Prints what happens.
//!
//! ```sh
//! cargo run -p demo            # 4 nodes
//! cargo run -p demo -- 8       # 8 nodes
//! ```

use std::{
    convert::Infallible,
    error::Error,
    time::{Duration, Instant},
};

use clap::Parser;
use p2plane::{
    Message, Node, NodeConfig, Request, RetryLayer, RetryPolicy, TimeoutLayer, ValidateLayer,
    service_fn,
    tower::{Service, ServiceBuilder, ServiceExt},
};
use serde::{Deserialize, Serialize};

/// The one message type of the demo: a question and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Chat {
    Question { from: String, text: String },
    Answer { from: String, text: String },
}

impl Message for Chat {
    const PROTOCOL: &'static str = "/p2plane-demo/chat/1.0.0";

    fn validate(&self) -> Result<(), String> {
        match self {
            Chat::Question { text, .. } | Chat::Answer { text, .. } if text.is_empty() => {
                Err("empty text".into())
            }
            _ => Ok(()),
        }
    }
}

/// Starts NODES nodes on loopback that find each other and exchange typed requests.
#[derive(Parser)]
#[command(name = "demo")]
struct Args {
    /// How many nodes to start (at least 2).
    #[arg(value_name = "NODES", default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..))]
    nodes: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let count = Args::parse().nodes as usize;

    let mut nodes = Vec::new();
    for i in 0..count {
        let config = NodeConfig {
            listen_addr: "/ip4/127.0.0.1/tcp/0".parse()?,
            bootstrap_addr: None,
            ..Default::default()
        };
        let node = Node::<Chat>::new(config).await?;
        let name = format!("node-{i}");
        let me = name.clone();
        node.serve(service_fn(move |req: Request<Chat>| {
            let me = me.clone();
            async move {
                let text = match req.body() {
                    Chat::Question { from, text } => format!("{me} heard {from:?} ask {text:?}"),
                    Chat::Answer { .. } => "that was an answer, not a question".to_owned(),
                };
                Ok::<_, Infallible>(Chat::Answer { from: me, text })
            }
        }))?;
        let addr = node.listen_addrs().await?.remove(0);
        println!("{name} is {} listening on {addr}", node.local_peer_id());
        nodes.push((name, node, addr));
    }

    let start = Instant::now();
    let mut asked = 0;
    for (name, node, _) in &nodes {
        let mut client = ServiceBuilder::new()
            .layer(ValidateLayer::new())
            .layer(RetryLayer::new(RetryPolicy::exponential(3)))
            .layer(TimeoutLayer::new(Duration::from_secs(5)))
            .service(node.client());
        for (other, _, addr) in &nodes {
            if other == name {
                continue;
            }
            let peer = node.dial(addr.clone()).await?;
            let question = Chat::Question {
                from: name.clone(),
                text: format!("hello {other}"),
            };
            let reply = client
                .ready()
                .await?
                .call(Request::new(peer, question))
                .await?;
            if let Chat::Answer { from, text } = reply {
                println!("{name} -> {other}: {from} answered: {text}");
            }
            asked += 1;
        }
        // Validation refuses a bad message before anything is sent.
        let (_, _, addr) = nodes
            .iter()
            .find(|(n, ..)| n != name)
            .expect("two nodes or more");
        let peer = node.dial(addr.clone()).await?;
        let empty = Chat::Question {
            from: name.clone(),
            text: String::new(),
        };
        match client.ready().await?.call(Request::new(peer, empty)).await {
            Err(e) => println!("{name}: an empty question was refused locally: {e}"),
            Ok(r) => return Err(format!("an empty question was answered: {r:?}").into()),
        }
    }
    println!(
        "{asked} requests answered across {count} nodes in {:?}",
        start.elapsed()
    );
    for (_, node, _) in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
