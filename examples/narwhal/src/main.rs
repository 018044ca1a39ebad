//! Runs a Narwhal committee on P2PLane and measures it as the reference does.
//!
//! ```sh
//! cargo run --release -p narwhal                      # 4 nodes, 50,000 tx/s, 20 s
//! cargo run --release -p narwhal -- --rate 10000 --duration 10 --faults 1
//! cargo run --release -p narwhal -- --help            # every option and subcommand
//! ```

use clap::{
    Arg, ArgAction, ArgMatches, Command,
    builder::{IntoResettable, ValueParser},
    value_parser,
};
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

/// The command line: `local` (the default, also with no subcommand), `keys`, `node`,
/// `client` and `summarize`; `narwhal help [COMMAND]` or `--help` describes each option.
fn cli() -> Command {
    let local = || {
        [
            opt("nodes", "N", "committee size", "4", value_parser!(usize)),
            opt(
                "faults",
                "F",
                "authorities never started (the last F)",
                "0",
                value_parser!(usize),
            ),
            opt(
                "rate",
                "R",
                "input rate in tx/s, all clients together",
                "50000",
                value_parser!(u64),
            ),
            opt(
                "tx-size",
                "B",
                "transaction size in bytes",
                "512",
                value_parser!(usize),
            ),
            opt("duration", "S", "seconds of load", "20", value_parser!(u64)),
            opt(
                "logs",
                "DIR",
                "where logs go",
                "target/narwhal-logs",
                value_parser!(PathBuf),
            ),
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("also print the figures as JSON"),
        ]
    };
    Command::new("narwhal")
        .about("A Narwhal/Bullshark committee on P2PLane, measured as the reference measures it")
        .args_conflicts_with_subcommands(true)
        .args(local())
        .args(parameters())
        .subcommand(
            Command::new("local")
                .about(
                    "Run a committee on loopback in this process, with clients, and print the \
                     reference's figures (the default)",
                )
                .args(local())
                .args(parameters()),
        )
        .subcommand(
            Command::new("keys")
                .about("Write N key files and DIR/committee.json (127.0.0.1, ports P, P+1, ...)")
                .arg(opt(
                    "nodes",
                    "N",
                    "committee size",
                    "4",
                    value_parser!(usize),
                ))
                .arg(opt(
                    "base-port",
                    "P",
                    "the first authority's port",
                    "7100",
                    value_parser!(u16),
                ))
                .arg(required(
                    "dir",
                    "DIR",
                    "where the keys and the committee file go",
                )),
        )
        .subcommand(
            Command::new("node")
                .about("Run one authority of a committee file until Ctrl-C")
                .arg(required("committee", "FILE", "the committee file"))
                .arg(required("key", "FILE", "this authority's key file"))
                .arg(
                    Arg::new("logs")
                        .long("logs")
                        .value_name("DIR")
                        .value_parser(value_parser!(PathBuf))
                        .help("write the reference's logs here"),
                )
                .args(parameters()),
        )
        .subcommand(
            Command::new("client")
                .about("Send transactions to authority I's worker")
                .arg(required("committee", "FILE", "the committee file"))
                .arg(
                    Arg::new("target")
                        .long("target")
                        .value_name("I")
                        .required(true)
                        .value_parser(value_parser!(usize))
                        .help("the authority's index in the committee"),
                )
                .arg(opt(
                    "rate",
                    "R",
                    "input rate in tx/s",
                    "12500",
                    value_parser!(u64),
                ))
                .arg(opt(
                    "tx-size",
                    "B",
                    "transaction size in bytes",
                    "512",
                    value_parser!(usize),
                ))
                .arg(opt(
                    "duration",
                    "S",
                    "seconds of load",
                    "20",
                    value_parser!(u64),
                ))
                .arg(
                    Arg::new("log")
                        .long("log")
                        .value_name("FILE")
                        .value_parser(value_parser!(PathBuf))
                        .help("write the client's log here (the reference's format)"),
                ),
        )
        .subcommand(
            Command::new("summarize")
                .about("Compute the figures from a run's logs")
                .arg(required("logs", "DIR", "the run's log directory")),
        )
}

/// The protocol's parameters, as the reference names them; the defaults are its README's
/// local benchmark.
fn parameters() -> [Arg; 8] {
    [
        opt(
            "header-size",
            "B",
            "header size that triggers a new header",
            "1000",
            value_parser!(usize),
        ),
        opt(
            "max-header-delay",
            "MS",
            "longest wait for a full header",
            "100",
            value_parser!(u64),
        ),
        opt(
            "gc-depth",
            "R",
            "rounds kept behind the last commit",
            "50",
            value_parser!(u64),
        ),
        opt(
            "sync-retry-delay",
            "MS",
            "wait before asking again for missing parents",
            "10000",
            value_parser!(u64),
        ),
        opt(
            "sync-retry-nodes",
            "N",
            "authorities asked on a retry",
            "3",
            value_parser!(usize),
        ),
        opt(
            "batch-size",
            "B",
            "batch size that seals a batch",
            "500000",
            value_parser!(usize),
        ),
        opt(
            "max-batch-delay",
            "MS",
            "longest wait for a full batch",
            "100",
            value_parser!(u64),
        ),
        Arg::new("consensus")
            .long("consensus")
            .value_name("RULE")
            .value_parser(["bullshark", "tusk"])
            .default_value("bullshark")
            .help("the commit rule"),
    ]
}

/// An option `--name VALUE` with a default.
fn opt(
    name: &'static str,
    value: &'static str,
    help: &'static str,
    default: &'static str,
    parser: impl IntoResettable<ValueParser>,
) -> Arg {
    Arg::new(name)
        .long(name)
        .value_name(value)
        .value_parser(parser)
        .default_value(default)
        .help(help)
}

/// An option `--name VALUE` that must be given.
fn required(name: &'static str, value: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .value_name(value)
        .required(true)
        .value_parser(value_parser!(PathBuf))
        .help(help)
}

/// Reads the values clap parsed and checked.
struct Args(ArgMatches);

impl Args {
    /// The value of option `name` (clap has checked its type and supplied its default).
    fn get<T: Clone + Send + Sync + 'static>(&self, name: &str) -> Result<T, String> {
        self.0
            .get_one::<T>(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is missing"))
    }

    fn optional<T: Clone + Send + Sync + 'static>(&self, name: &str) -> Option<T> {
        self.0.get_one::<T>(name).cloned()
    }

    fn params(&self) -> Result<Parameters, String> {
        let ms = |v: u64| Duration::from_millis(v);
        Ok(Parameters {
            header_size: self.get("header-size")?,
            max_header_delay: ms(self.get("max-header-delay")?),
            gc_depth: self.get("gc-depth")?,
            sync_retry_delay: ms(self.get("sync-retry-delay")?),
            sync_retry_nodes: self.get("sync-retry-nodes")?,
            batch_size: self.get("batch-size")?,
            max_batch_delay: ms(self.get("max-batch-delay")?),
            consensus: match self.get::<String>("consensus")?.as_str() {
                "tusk" => ConsensusRule::Tusk,
                _ => ConsensusRule::Bullshark,
            },
        })
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
    let matches = cli().get_matches();
    match matches.subcommand() {
        Some(("local", m)) => local(Args(m.clone())).await,
        Some(("keys", m)) => keys(Args(m.clone())),
        Some(("node", m)) => node(Args(m.clone())).await,
        Some(("client", m)) => run_client(Args(m.clone())).await,
        Some(("summarize", m)) => {
            let dir: PathBuf = Args(m.clone()).get("logs")?;
            println!("{}", summarize(&Logs::read_dir(&dir)?)?);
            Ok(())
        }
        _ => local(Args(matches)).await,
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

async fn local(args: Args) -> Result<(), Box<dyn Error>> {
    let nodes: usize = args.get("nodes")?;
    let faults: usize = args.get("faults")?;
    let rate: u64 = args.get("rate")?;
    let tx_size: usize = args.get("tx-size")?;
    let duration = Duration::from_secs(args.get("duration")?);
    let logs: PathBuf = args.get("logs")?;
    let json = args.0.get_flag("json");
    let params = args.params()?;
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
    // Wait until every authority that runs is connected to every other.
    let online = Instant::now();
    for authority in &authorities {
        while authority.node().connected_peers().await?.len() + 1 < alive {
            if online.elapsed() > Duration::from_secs(20) {
                return Err("the authorities did not connect within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

fn keys(args: Args) -> Result<(), Box<dyn Error>> {
    let nodes: usize = args.get("nodes")?;
    let base_port: u16 = args.get("base-port")?;
    let dir: PathBuf = args.get("dir")?;
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

async fn node(args: Args) -> Result<(), Box<dyn Error>> {
    let committee = Arc::new(Committee::load(&args.get::<PathBuf>("committee")?)?);
    let keypair = p2plane::transport::identity::load(args.get::<PathBuf>("key")?)?;
    let log_dir: Option<PathBuf> = args.optional("logs");
    let params = args.params()?;
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

async fn run_client(args: Args) -> Result<(), Box<dyn Error>> {
    let committee = Committee::load(&args.get::<PathBuf>("committee")?)?;
    let target: usize = args.get("target")?;
    let rate: u64 = args.get("rate")?;
    let tx_size: usize = args.get("tx-size")?;
    let duration = Duration::from_secs(args.get("duration")?);
    let log_path: Option<PathBuf> = args.optional("log");
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
