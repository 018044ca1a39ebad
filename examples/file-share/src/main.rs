//! File sharing on P2PLane, from the command line.
//!
//! ```sh
//! # Provide files (prints each file's id); keeps running until Ctrl-C.
//! cargo run -p file-share -- provide ./video.mp4 ./notes.txt --listen /ip4/127.0.0.1/tcp/7200
//! # Fetch one by id, through the DHT, with a progress bar; run it again after an
//! # interruption and it resumes from the .part file.
//! cargo run -p file-share -- fetch <FILE ID> --out ./copy.mp4 --peer /ip4/127.0.0.1/tcp/7200
//! ```

use std::{error::Error, path::PathBuf};

use clap::{Parser, Subcommand};
use file_share::{FetchOptions, FileId, Library, ShareError, fetch, join, node_config};
use indicatif::{ProgressBar, ProgressStyle};
use p2plane::{Multiaddr, Node};

#[derive(Parser)]
#[command(
    about = "Share files over P2PLane: providers in the DHT, chunks streamed, hashes checked"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provide files until Ctrl-C.
    Provide {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to listen.
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
        listen: Multiaddr,
        /// A node to join the network through.
        #[arg(long)]
        peer: Option<Multiaddr>,
    },
    /// Fetch a file by id.
    Fetch {
        /// The file's id (its SHA-256, in hex).
        id: FileId,
        /// Where to write it (`<out>.part` while it arrives).
        #[arg(long)]
        out: PathBuf,
        /// A node to join the network through.
        #[arg(long)]
        peer: Multiaddr,
        /// Where to listen.
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
        listen: Multiaddr,
        /// Stop after this many bytes (to try resuming).
        #[arg(long)]
        stop_after: Option<u64>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    match Cli::parse().command {
        Command::Provide {
            files,
            listen,
            peer,
        } => {
            let node = Node::new(node_config(listen)).await?;
            println!("peer id {}", node.local_peer_id());
            for addr in node.listen_addrs().await? {
                println!("listening on {addr}");
            }
            let library = Library::serve(&node)?;
            if let Some(peer) = peer {
                join(&node, peer).await?;
            }
            for path in files {
                let id = library.add(&path).await?;
                println!("providing {id} {}", path.display());
            }
            tokio::signal::ctrl_c().await?;
            node.shutdown().await;
        }
        Command::Fetch {
            id,
            out,
            peer,
            listen,
            stop_after,
            quiet,
        } => {
            let node = Node::new(node_config(listen)).await?;
            join(&node, peer).await?;
            let bar = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(0).with_style(ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )?)
            };
            let progress = bar.clone();
            let options = FetchOptions {
                stop_after,
                on_progress: Some(Box::new(move |have, size| {
                    progress.set_length(size);
                    progress.set_position(have);
                })),
                ..FetchOptions::default()
            };
            let result = fetch(&node, id, &out, options).await;
            bar.finish_and_clear();
            node.shutdown().await;
            match result {
                Ok(fetched) => println!(
                    "fetched {} ({} bytes, {} resumed) into {}: SHA-256 checked",
                    fetched.name,
                    fetched.size,
                    fetched.resumed_from,
                    out.display()
                ),
                Err(ShareError::Interrupted { have }) => {
                    println!("stopped with {have} bytes; run again to resume");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
