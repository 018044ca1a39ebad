//! Runs a Narwhal committee on P2PLane and measures it as the reference does.
//!
//! ```sh
//! cargo run --release -p narwhal                      # 4 nodes, 50,000 tx/s, 20 s
//! cargo run --release -p narwhal -- --rate 10000 --duration 10 --faults 1
//! cargo run --release -p narwhal -- help              # every option and subcommand
//! ```

use std::{
    collections::HashMap,
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

const HELP: &str = "\
narwhal: a Narwhal/Bullshark committee on P2PLane

USAGE:
  narwhal [local] [OPTIONS]      run a committee on loopback in this process, with clients,
                                 and print the reference's figures (the default)
  narwhal keys --nodes N --base-port P --dir DIR
                                 write N key files and DIR/committee.json (127.0.0.1:P+i)
  narwhal node --committee FILE --key FILE [--logs DIR] [PARAMETERS]
                                 run one authority of a committee file until Ctrl-C
  narwhal client --committee FILE --target I [--rate R] [--tx-size B] [--duration S] [--log FILE]
                                 send transactions to authority I's worker
  narwhal summarize --logs DIR   compute the figures from a run's logs

OPTIONS (local):
  --nodes N            committee size (default 4)
  --faults F           authorities never started, the last F (default 0)
  --rate R             input rate in tx/s, all clients together (default 50000)
  --tx-size B          transaction size in bytes (default 512)
  --duration S         seconds of load (default 20)
  --logs DIR           where logs go (default target/narwhal-logs)
  --json               also print the figures as JSON

PARAMETERS (as the reference names them; defaults = its README's local benchmark):
  --header-size B (1000)  --max-header-delay MS (100)  --gc-depth R (50)
  --sync-retry-delay MS (10000)  --sync-retry-nodes N (3)
  --batch-size B (500000)  --max-batch-delay MS (100)  --consensus bullshark|tusk
";

struct Args {
    command: String,
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = std::env::args().skip(1).peekable();
        let command = match args.peek() {
            Some(a) if !a.starts_with("--") => args.next().unwrap_or_default(),
            _ => "local".to_owned(),
        };
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?} (see `narwhal help`)"));
            };
            if name == "json" {
                flags.push(name.to_owned());
                continue;
            }
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            values.insert(name.to_owned(), value);
        }
        Ok(Self {
            command,
            values,
            flags,
        })
    }

    fn get<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        match self.values.remove(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: cannot read {v:?}")),
            None => Ok(default),
        }
    }

    fn required(&mut self, name: &str) -> Result<String, String> {
        self.values
            .remove(name)
            .ok_or_else(|| format!("--{name} is required (see `narwhal help`)"))
    }

    fn params(&mut self) -> Result<Parameters, String> {
        let d = Parameters::default();
        let ms = |v: u64| Duration::from_millis(v);
        let consensus = match self.get("consensus", "bullshark".to_owned())?.as_str() {
            "bullshark" => ConsensusRule::Bullshark,
            "tusk" => ConsensusRule::Tusk,
            other => return Err(format!("--consensus: bullshark or tusk, not {other:?}")),
        };
        Ok(Parameters {
            header_size: self.get("header-size", d.header_size)?,
            max_header_delay: ms(self.get("max-header-delay", 100)?),
            gc_depth: self.get("gc-depth", d.gc_depth)?,
            sync_retry_delay: ms(self.get("sync-retry-delay", 10_000)?),
            sync_retry_nodes: self.get("sync-retry-nodes", d.sync_retry_nodes)?,
            batch_size: self.get("batch-size", d.batch_size)?,
            max_batch_delay: ms(self.get("max-batch-delay", 100)?),
            consensus,
        })
    }

    fn finish(self) -> Result<(), String> {
        match self.values.keys().next() {
            Some(name) => Err(format!("unknown option --{name} (see `narwhal help`)")),
            None => Ok(()),
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
    let mut args = Args::parse()?;
    match args.command.as_str() {
        "local" => local(args).await,
        "keys" => keys(args),
        "node" => node(args).await,
        "client" => run_client(args).await,
        "summarize" => {
            let dir = PathBuf::from(args.required("logs")?);
            args.finish()?;
            println!("{}", summarize(&Logs::read_dir(&dir)?)?);
            Ok(())
        }
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?} (see `narwhal help`)").into()),
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

async fn local(mut args: Args) -> Result<(), Box<dyn Error>> {
    let nodes: usize = args.get("nodes", 4)?;
    let faults: usize = args.get("faults", 0)?;
    let rate: u64 = args.get("rate", 50_000)?;
    let tx_size: usize = args.get("tx-size", 512)?;
    let duration = Duration::from_secs(args.get("duration", 20)?);
    let logs = PathBuf::from(args.get("logs", "target/narwhal-logs".to_owned())?);
    let json = args.flags.iter().any(|f| f == "json");
    let params = args.params()?;
    args.finish()?;
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

fn keys(mut args: Args) -> Result<(), Box<dyn Error>> {
    let nodes: usize = args.get("nodes", 4)?;
    let base_port: u16 = args.get("base-port", 7100)?;
    let dir = PathBuf::from(args.required("dir")?);
    args.finish()?;
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

async fn node(mut args: Args) -> Result<(), Box<dyn Error>> {
    let committee = Arc::new(Committee::load(&PathBuf::from(
        args.required("committee")?,
    ))?);
    let keypair = p2plane::transport::identity::load(args.required("key")?)?;
    let log_dir = args.values.remove("logs").map(PathBuf::from);
    let params = args.params()?;
    args.finish()?;
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

async fn run_client(mut args: Args) -> Result<(), Box<dyn Error>> {
    let committee = Committee::load(&PathBuf::from(args.required("committee")?))?;
    let target: usize = args
        .required("target")?
        .parse()
        .map_err(|_| "--target: an authority index")?;
    let rate: u64 = args.get("rate", 12_500)?;
    let tx_size: usize = args.get("tx-size", 512)?;
    let duration = Duration::from_secs(args.get("duration", 20)?);
    let log_path = args.values.remove("log").map(PathBuf::from);
    args.finish()?;
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
