//! A small key-value store on P2PLane. Storage nodes keep values and announce them as DHT
//! providers; a value is also put in the DHT as a record. Clients find values through the
//! DHT, and fetch them from a provider by request/response.
//!
//! ```sh
//! cargo run -p kv-store -- serve --listen /ip4/127.0.0.1/tcp/7100
//! cargo run -p kv-store -- serve --peer /ip4/127.0.0.1/tcp/7100          # more storage nodes
//! cargo run -p kv-store -- put color blue --peer /ip4/127.0.0.1/tcp/7100
//! cargo run -p kv-store -- get color --peer /ip4/127.0.0.1/tcp/7100      # the DHT record
//! cargo run -p kv-store -- providers color --peer /ip4/127.0.0.1/tcp/7100 # who stores it, and its value
//! ```

use std::{
    collections::HashMap,
    error::Error,
    sync::{Arc, Mutex},
};

use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use p2plane::{
    DhtConfig, DhtMode, Event, Message, Multiaddr, Node, NodeConfig, PeerId, Quorum, Request,
    service_fn,
};
use serde::{Deserialize, Serialize};

/// The most bytes a key or value may have.
const MAX_LEN: usize = 64 * 1024;
/// The most values a storage node keeps.
const MAX_VALUES: usize = 100_000;

/// The store's request/response protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Kv {
    /// Store a value (the storage node then provides its key).
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Ask for a value.
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A value, or nothing.
    Value(Option<serde_bytes::ByteBuf>),
    /// Stored.
    Stored,
}

impl Message for Kv {
    const PROTOCOL: &'static str = "/p2plane-kv/1";

    fn validate(&self) -> Result<(), String> {
        let too_long = |b: &[u8]| b.is_empty() || b.len() > MAX_LEN;
        match self {
            Kv::Put { key, value } if too_long(key) || too_long(value) => {
                Err(format!("keys and values have 1 to {MAX_LEN} bytes"))
            }
            Kv::Get { key } if too_long(key) => Err(format!("keys have 1 to {MAX_LEN} bytes")),
            _ => Ok(()),
        }
    }
}

fn node_config(listen: Multiaddr) -> NodeConfig {
    NodeConfig::listen_on(listen)
        .with_private_addrs(true)
        .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)))
}

/// Starts a node, connects it to `peer` (if any) and joins the DHT through it.
async fn join(listen: Multiaddr, peer: Option<Multiaddr>) -> Result<Node<Kv>, Box<dyn Error>> {
    let node = Node::<Kv>::new(node_config(listen)).await?;
    if let Some(addr) = peer {
        let mut events = node.events();
        let id = node.dial(addr).await?;
        // The DHT learns the peer's addresses and protocols from identify.
        while let Some(event) = events.next().await {
            if matches!(event, Event::PeerIdentified { peer, .. } if peer == id) {
                break;
            }
        }
        node.dht().bootstrap().await?;
    }
    Ok(node)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn serve(node: Node<Kv>) -> Result<(), Box<dyn Error>> {
    let values: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let dht = node.dht();
    node.serve(
        p2plane::tower::ServiceBuilder::new()
            .layer(p2plane::ValidateLayer::new())
            .service(service_fn(move |req: Request<Kv>| {
                let (values, dht) = (Arc::clone(&values), dht.clone());
                async move {
                    match req.into_body() {
                        Kv::Put { key, value } => {
                            {
                                let mut values = values.lock().unwrap_or_else(|e| e.into_inner());
                                if values.len() >= MAX_VALUES && !values.contains_key(&key) {
                                    return Err(p2plane::Error::Rejected {
                                        peer: None,
                                        reason: "the store is full".into(),
                                    });
                                }
                                values.insert(key.clone(), value);
                            }
                            dht.start_providing(key).await.map_err(|e| {
                                p2plane::Error::Rejected {
                                    peer: None,
                                    reason: e.to_string(),
                                }
                            })?;
                            Ok(Kv::Stored)
                        }
                        Kv::Get { key } => {
                            let values = values.lock().unwrap_or_else(|e| e.into_inner());
                            Ok(Kv::Value(
                                values.get(&key).cloned().map(serde_bytes::ByteBuf::from),
                            ))
                        }
                        other => Err(p2plane::Error::Rejected {
                            peer: None,
                            reason: format!("{other:?} is an answer, not a request"),
                        }),
                    }
                }
            })),
    )?;
    for addr in node.listen_addrs().await? {
        println!("serving on {addr}");
    }
    println!("peer id {}", node.local_peer_id());
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}

async fn ask(node: &Node<Kv>, peer: PeerId, request: Kv) -> Result<Kv, Box<dyn Error>> {
    Ok(node.client().request(peer, request).await?)
}

/// A key-value store on P2PLane: storage nodes, DHT records and providers.
#[derive(Parser)]
#[command(name = "kv-store")]
struct Cli {
    /// A storage node to join through (needed by put).
    #[arg(long, global = true, value_name = "ADDR")]
    peer: Option<Multiaddr>,
    /// The address to listen on.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        default_value = "/ip4/127.0.0.1/tcp/0"
    )]
    listen: Multiaddr,
    #[command(subcommand)]
    command: Cmd,
}

/// What to do.
#[derive(Subcommand)]
enum Cmd {
    /// Run a storage node until Ctrl-C.
    Serve,
    /// Store KEY = VALUE at the --peer storage node and in the DHT.
    Put {
        /// The key (UTF-8).
        key: String,
        /// The value (UTF-8).
        value: String,
    },
    /// Read KEY's DHT record.
    Get {
        /// The key (UTF-8).
        key: String,
    },
    /// Find the storage nodes that provide KEY, and ask each for its value.
    Providers {
        /// The key (UTF-8).
        key: String,
    },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("kv-store: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let Cli {
        peer,
        listen,
        command,
    } = Cli::parse();
    match command {
        Cmd::Serve => serve(join(listen, peer).await?).await,
        Cmd::Put { key, value } => {
            let addr = peer.clone().ok_or("put needs --peer (a storage node)")?;
            let node = join(listen, peer).await?;
            let storage = node.dial(addr).await?;
            let (key, value) = (key.as_bytes().to_vec(), value.as_bytes().to_vec());
            let request = Kv::Put {
                key: key.clone(),
                value: value.clone(),
            };
            ask(&node, storage, request).await?;
            node.dht().put_record(key, value, Quorum::One).await?;
            println!("stored at {storage} and in the DHT");
            node.shutdown().await;
            Ok(())
        }
        Cmd::Get { key } => {
            let node = join(listen, peer).await?;
            let value = node.dht().get_record(key.as_bytes().to_vec()).await?;
            println!("{}", text(&value));
            node.shutdown().await;
            Ok(())
        }
        Cmd::Providers { key } => {
            let node = join(listen, peer).await?;
            let key = key.as_bytes().to_vec();
            let providers = node.dht().providers(key.clone()).await?;
            for provider in &providers {
                match ask(&node, *provider, Kv::Get { key: key.clone() }).await? {
                    Kv::Value(Some(value)) => println!("{provider} has {}", text(&value)),
                    _ => println!("{provider} has nothing"),
                }
            }
            if providers.is_empty() {
                println!("no providers");
            }
            node.shutdown().await;
            Ok(())
        }
    }
}
