//! A chat room on P2PLane's typed publish/subscribe (gossipsub). Run one process per
//! participant; lines typed on standard input go to everyone in the room.
//!
//! ```sh
//! cargo run -p chat -- --name alice --listen /ip4/127.0.0.1/tcp/7000
//! cargo run -p chat -- --name bob --peer /ip4/127.0.0.1/tcp/7000
//! ```

use std::{error::Error, time::Duration};

use clap::Parser;
use futures::StreamExt as _;
use p2plane::{
    Event, Message, Multiaddr, Node, NodeConfig, PubsubConfig, PubsubError, ReachConfig,
    RelayServerConfig, Topic, transport::libp2p::multiaddr::Protocol,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

/// One line said in the room.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    from: String,
    text: String,
}

impl Message for Line {
    const PROTOCOL: &'static str = "/p2plane-chat/line/1";

    // Every node checks every line before showing or forwarding it.
    fn validate(&self) -> Result<(), String> {
        if self.from.is_empty() || self.from.len() > 32 {
            return Err("a name has 1 to 32 bytes".into());
        }
        if self.text.trim().is_empty() || self.text.len() > 1000 {
            return Err("a line has 1 to 1000 bytes".into());
        }
        Ok(())
    }
}

/// The room.
struct Room;
impl Topic for Room {
    const NAME: &'static str = "p2plane-chat/room/1";
    type Message = Line;
}

/// A chat room on P2PLane pub/sub: type a line to send it to everyone in the room.
#[derive(Parser)]
#[command(name = "chat")]
struct Args {
    /// The name your lines are signed with.
    #[arg(long, value_name = "NAME", default_value = "anonymous")]
    name: String,
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "/ip4/127.0.0.1/tcp/0")]
    listen: Multiaddr,
    /// A peer to join through (repeat for more).
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<Multiaddr>,
    /// A relay to listen through, when behind a NAT (its address ends in `/p2p/<id>`); the
    /// address others can join through is printed once the relay accepts.
    #[arg(long, value_name = "ADDR")]
    relay: Option<Multiaddr>,
    /// Serve only as a relay for participants behind NATs (run it on a public address):
    /// it joins no room, and stops when its standard input closes.
    #[arg(long)]
    relay_server: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mut reach = ReachConfig::default();
    if let Some(relay) = args.relay {
        reach = reach.with_relay(relay);
    }
    if args.relay_server {
        reach = reach.with_relay_server(RelayServerConfig::default());
    }
    let config = NodeConfig::listen_on(args.listen)
        .with_private_addrs(true)
        .with_dht(None)
        .with_pubsub(Some(PubsubConfig::default()))
        .with_reach(reach);
    let node = Node::<Line>::new(config).await?;
    let mut events = node.events();
    println!("peer id {}", node.local_peer_id());
    for addr in node.listen_addrs().await? {
        println!("listening on {addr}");
    }
    if args.relay_server {
        let mut input = BufReader::new(tokio::io::stdin()).lines();
        while input.next_line().await?.is_some() {}
        node.shutdown().await;
        return Ok(());
    }
    let mut room = node.subscribe::<Room>().await?;
    for addr in args.peers {
        let peer = node.dial(addr).await?;
        println!("connected to {peer}");
    }

    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut in_room = 0;
    loop {
        tokio::select! {
            line = input.next_line() => {
                let Some(text) = line? else { break };
                let line = Line { from: args.name.clone(), text };
                match node.publish::<Room>(&line).await {
                    Ok(()) => {}
                    Err(PubsubError::NoPeers) => println!("(nobody else is in the room yet)"),
                    Err(e) => println!("(not sent: {e})"),
                }
            }
            received = room.recv() => {
                let Some(received) = received else { break };
                println!("{}: {}", received.message.from, received.message.text);
            }
            Some(event) = events.next() => {
                if let Event::Listening { addr } = event
                    && addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
                {
                    println!("reachable through the relay at {addr}");
                }
            }
            _ = tick.tick() => {
                let peers = node.topic_peers::<Room>().await?.len();
                if peers != in_room {
                    in_room = peers;
                    println!("peers in the room: {peers}");
                }
            }
        }
    }
    node.shutdown().await;
    Ok(())
}
