//! Runs a Narwhal committee on P2PLane and measures it as the reference does.
//!
//! ```sh
//! cargo run --release -p narwhal                      # 4 nodes, 50,000 tx/s, 20 s
//! cargo run --release -p narwhal -- --rate 10000 --duration 10 --faults 1
//! cargo run --release -p narwhal -- --help            # every option and subcommand
//! ```

use clap::{Parser, Subcommand, ValueEnum};
use std::{
    error::Error,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use narwhal::{
    Committee, ConsensusRule, LocalCommittee, Parameters,
    authority::{Authority, AuthorityConfig, node_config},
    client::{self, ClientConfig},
    log::Logger,
    metrics::{Logs, summarize},
};
use p2plane::{Node, NodeConfig};
use tokio::time::Instant;

/// A Narwhal/Bullshark committee on P2PLane, measured as the reference measures it.
///
/// With no subcommand it runs `local`; `narwhal help [COMMAND]` describes each option.
#[derive(Parser)]
#[command(name = "narwhal", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    local: LocalArgs,
}

/// The subcommands.
#[derive(Subcommand)]
enum Cmd {
    /// Run a committee on loopback in this process, with clients, and print the reference's
    /// figures (the default).
    Local(LocalArgs),
    /// Write N key files and DIR/committee.json (127.0.0.1, ports P, P+1, ...).
    Keys(KeysArgs),
    /// Run one authority of a committee file until Ctrl-C.
    Node(NodeArgs),
    /// Send transactions to authority I's worker.
    Client(ClientArgs),
    /// Compute the figures from a run's logs.
    Summarize {
        /// The run's log directory.
        #[arg(long, value_name = "DIR")]
        logs: PathBuf,
    },
}

/// `local`: a whole committee and its clients in this process.
#[derive(clap::Args)]
struct LocalArgs {
    /// Committee size.
    #[arg(long, value_name = "N", default_value_t = 4)]
    nodes: usize,
    /// Authorities never started (the last F).
    #[arg(long, value_name = "F", default_value_t = 0)]
    faults: usize,
    /// Input rate in tx/s, all clients together.
    #[arg(long, value_name = "R", default_value_t = 50_000)]
    rate: u64,
    /// Transaction size in bytes.
    #[arg(long, value_name = "B", default_value_t = 512)]
    tx_size: usize,
    /// Seconds of load.
    #[arg(long, value_name = "S", default_value_t = 20)]
    duration: u64,
    /// Where logs go.
    #[arg(long, value_name = "DIR", default_value = "target/narwhal-logs")]
    logs: PathBuf,
    /// Also print the figures as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    params: ParamArgs,
}

/// `keys`: a committee's key files.
#[derive(clap::Args)]
struct KeysArgs {
    /// Committee size.
    #[arg(long, value_name = "N", default_value_t = 4)]
    nodes: usize,
    /// The first authority's port.
    #[arg(long, value_name = "P", default_value_t = 7100)]
    base_port: u16,
    /// Where the keys and the committee file go.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// `node`: one authority.
#[derive(clap::Args)]
struct NodeArgs {
    /// The committee file.
    #[arg(long, value_name = "FILE")]
    committee: PathBuf,
    /// This authority's key file.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Write the reference's logs here.
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    #[command(flatten)]
    params: ParamArgs,
}

/// `client`: load for one worker.
#[derive(clap::Args)]
struct ClientArgs {
    /// The committee file.
    #[arg(long, value_name = "FILE")]
    committee: PathBuf,
    /// The authority's index in the committee.
    #[arg(long, value_name = "I")]
    target: usize,
    /// Input rate in tx/s.
    #[arg(long, value_name = "R", default_value_t = 12_500)]
    rate: u64,
    /// Transaction size in bytes.
    #[arg(long, value_name = "B", default_value_t = 512)]
    tx_size: usize,
    /// Seconds of load.
    #[arg(long, value_name = "S", default_value_t = 20)]
    duration: u64,
    /// Write the client's log here (the reference's format).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

/// The protocol's parameters, as the reference names them; the defaults are its README's
/// local benchmark.
#[derive(clap::Args)]
struct ParamArgs {
    /// Header size that triggers a new header.
    #[arg(long, value_name = "B", default_value_t = 1000)]
    header_size: usize,
    /// Longest wait for a full header, in ms.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    max_header_delay: u64,
    /// Rounds kept behind the last commit.
    #[arg(long, value_name = "R", default_value_t = 50)]
    gc_depth: u64,
    /// Wait before asking again for missing parents, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    sync_retry_delay: u64,
    /// Authorities asked on a retry.
    #[arg(long, value_name = "N", default_value_t = 3)]
    sync_retry_nodes: usize,
    /// Batch size that seals a batch.
    #[arg(long, value_name = "B", default_value_t = 500_000)]
    batch_size: usize,
    /// Longest wait for a full batch, in ms.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    max_batch_delay: u64,
    /// The commit rule.
    #[arg(long, value_name = "RULE", value_enum, default_value_t = Rule::Bullshark)]
    consensus: Rule,
}

/// `--consensus`.
#[derive(Clone, Copy, ValueEnum)]
enum Rule {
    /// Bullshark's commit rule (the default).
    Bullshark,
    /// Tusk's commit rule.
    Tusk,
}

impl ParamArgs {
    fn params(&self) -> Parameters {
        let ms = Duration::from_millis;
        Parameters {
            header_size: self.header_size,
            max_header_delay: ms(self.max_header_delay),
            gc_depth: self.gc_depth,
            sync_retry_delay: ms(self.sync_retry_delay),
            sync_retry_nodes: self.sync_retry_nodes,
            batch_size: self.batch_size,
            max_batch_delay: ms(self.max_batch_delay),
            consensus: match self.consensus {
                Rule::Tusk => ConsensusRule::Tusk,
                Rule::Bullshark => ConsensusRule::Bullshark,
            },
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("narwhal: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Local(args)) => local(args).await,
        Some(Cmd::Keys(args)) => keys(args),
        Some(Cmd::Node(args)) => node(args).await,
        Some(Cmd::Client(args)) => run_client(args).await,
        Some(Cmd::Summarize { logs }) => {
            println!("{}", summarize(&Logs::read_dir(&logs)?)?);
            Ok(())
        }
        None => local(cli.local).await,
    }
}

fn client_node_config() -> NodeConfig {
    NodeConfig {
        listen_addr: "/ip4/127.0.0.1/tcp/0".parse().expect("valid"),
        allow_private_addrs: true,
        max_message_size: narwhal::authority::MAX_MESSAGE_SIZE,
        dht: None,
        ..NodeConfig::default()
    }
}

async fn local(args: LocalArgs) -> Result<(), Box<dyn Error>> {
    let params = args.params.params();
    let LocalArgs {
        nodes,
        faults,
        rate,
        tx_size,
        logs,
        json,
        ..
    } = args;
    let duration = Duration::from_secs(args.duration);
    if nodes == 0 || faults >= nodes || 3 * faults >= nodes {
        return Err(format!("{nodes} nodes cannot tolerate {faults} faults (n >= 3f+1)").into());
    }
    if logs.exists() {
        std::fs::remove_dir_all(&logs)?;
    }
    std::fs::create_dir_all(&logs)?;
    let alive = nodes - faults;

    println!(
        "Starting {nodes} authorities ({faults} faulty, never started) on loopback TCP; \
         {rate} tx/s of {tx_size} B for {}s; consensus {:?}; logs in {}",
        duration.as_secs(),
        params.consensus,
        logs.display()
    );
    let local = LocalCommittee::new(nodes, params, Some(logs.clone()))?;
    let mut authorities: Vec<Authority> = Vec::new();
    let committed_batches = Arc::new(AtomicU64::new(0));
    for i in 0..alive {
        let (authority, mut commits) = local.start(i).await?;
        let counter = Arc::clone(&committed_batches);
        tokio::spawn(async move {
            while let Some(c) = commits.recv().await {
                if i == 0 {
                    counter.fetch_add(c.certificate.header.payload.len() as u64, Ordering::Relaxed);
                }
            }
        });
        authorities.push(authority);
    }
    // Wait until every authority that runs is connected to every other, dialling again any
    // that is missing every second (each authority dials the others once as it starts; those
    // not up yet are dialled again only when a message goes to them).
    let online = Instant::now();
    let members: Vec<_> = local.committee().authorities()[..alive]
        .iter()
        .map(|a| (a.peer_id, a.address.clone()))
        .collect();
    let mut redial = Instant::now();
    loop {
        let mut missing = Vec::new();
        for (i, authority) in authorities.iter().enumerate() {
            let connected = authority.node().connected_peers().await?;
            for (peer, addr) in &members {
                if *peer != authority.node().local_peer_id() && !connected.contains(peer) {
                    missing.push((i, *peer, addr.clone()));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if online.elapsed() > Duration::from_secs(20) {
            let pairs: Vec<String> = missing
                .iter()
                .map(|(i, peer, addr)| format!("authority {i} to {peer} at {addr}"))
                .collect();
            return Err(format!(
                "the authorities did not connect within 20 s; missing: {}",
                pairs.join(", ")
            )
            .into());
        }
        if redial.elapsed() > Duration::from_secs(1) {
            redial = Instant::now();
            for (i, _, addr) in &missing {
                let node = authorities[*i].node().clone();
                let addr = addr.clone();
                tokio::spawn(async move {
                    let _ = node.dial(addr).await;
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One client per running worker, each on its own node; the rate is split as the
    // reference splits it (over all workers, so faults lower the input).
    let share = rate.div_ceil(nodes as u64);
    let mut clients = Vec::new();
    for i in 0..alive {
        let node = Node::<narwhal::types::HeaderProtocol>::new(client_node_config()).await?;
        let target = local.committee().authorities()[i].peer_id;
        node.dial(local.committee().authorities()[i].address.clone())
            .await?;
        let log = Logger::to_file(&logs.join(format!("client-{i}.log")), "narwhal::client")?;
        let config = ClientConfig {
            target,
            rate: share,
            tx_size,
            duration,
        };
        clients.push(tokio::spawn(async move {
            let report = client::run(&node, &config, &log).await;
            log.flush();
            node.shutdown().await;
            report
        }));
    }

    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let progress = authorities[0].progress();
        let batches = committed_batches.load(Ordering::Relaxed);
        println!(
            "[{:>3}s] round {:>4}, committed leader round {:>4}, {:>5} batches committed (+{})",
            start.elapsed().as_secs(),
            *progress.round.borrow(),
            *progress.committed_round.borrow(),
            batches,
            batches - last
        );
        last = batches;
    }
    let mut sent = 0;
    let mut late = 0;
    for client in clients {
        let report = client.await??;
        sent += report.sent;
        late += report.late_bursts;
    }
    for authority in authorities {
        authority.shutdown().await;
    }
    println!("Clients sent {sent} transactions ({late} bursts late). Parsing the logs...");
    let summary = summarize(&Logs::read_dir(&logs)?)?;
    println!("{summary}");
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

fn keys(args: KeysArgs) -> Result<(), Box<dyn Error>> {
    let KeysArgs {
        nodes,
        base_port,
        dir,
    } = args;
    std::fs::create_dir_all(&dir)?;
    let mut members = Vec::new();
    for i in 0..nodes {
        let keypair = p2plane::transport::identity::generate();
        p2plane::transport::identity::save(&keypair, dir.join(format!("key-{i}")))?;
        let port = base_port + i as u16;
        members.push((
            keypair.public().to_peer_id(),
            format!("/ip4/127.0.0.1/tcp/{port}").parse()?,
        ));
    }
    Committee::new(members)?.save(&dir.join("committee.json"))?;
    println!(
        "wrote {nodes} keys and {}",
        dir.join("committee.json").display()
    );
    Ok(())
}

async fn node(args: NodeArgs) -> Result<(), Box<dyn Error>> {
    let committee = Arc::new(Committee::load(&args.committee)?);
    let keypair = p2plane::transport::identity::load(&args.key)?;
    let log_dir = args.logs;
    let params = args.params.params();
    let me = committee
        .index_of(&keypair.public().to_peer_id())
        .ok_or("this key is not in the committee")?;
    let address = committee.authorities()[me as usize].address.clone();
    if let Some(dir) = &log_dir {
        std::fs::create_dir_all(dir)?;
    }
    let node = Node::new(node_config(keypair.clone(), address.clone())).await?;
    let (authority, mut commits) = Authority::start(
        node,
        AuthorityConfig {
            index: me,
            keypair,
            committee,
            params,
            log_dir,
        },
    )
    .await?;
    println!("authority {me} listening on {address}; Ctrl-C stops it");
    let counter = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&counter);
    tokio::spawn(async move {
        while commits.recv().await.is_some() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                authority.flush_logs();
                println!(
                    "round {}, committed leader round {}, {} certificates committed",
                    *authority.progress().round.borrow(),
                    *authority.progress().committed_round.borrow(),
                    counter.load(Ordering::Relaxed)
                );
            }
        }
    }
    authority.shutdown().await;
    Ok(())
}

async fn run_client(args: ClientArgs) -> Result<(), Box<dyn Error>> {
    let committee = Committee::load(&args.committee)?;
    let ClientArgs {
        target,
        rate,
        tx_size,
        log: log_path,
        ..
    } = args;
    let duration = Duration::from_secs(args.duration);
    let authority = committee
        .authorities()
        .get(target)
        .ok_or("--target: no such authority")?;
    let log = match &log_path {
        Some(path) => Logger::to_file(path, "narwhal::client")?,
        None => Logger::disabled(),
    };
    let node = Node::<narwhal::types::HeaderProtocol>::new(client_node_config()).await?;
    node.dial(authority.address.clone()).await?;
    let report = client::run(
        &node,
        &ClientConfig {
            target: authority.peer_id,
            rate,
            tx_size,
            duration,
        },
        &log,
    )
    .await?;
    log.flush();
    println!(
        "sent {} transactions ({} bursts late, {} failed)",
        report.sent, report.late_bursts, report.failed_bursts
    );
    node.shutdown().await;
    Ok(())
}
