//! A Narwhal DAG mempool with Bullshark consensus (Tusk as an option), built on P2PLane.
//!
//! After *Narwhal and Tusk* (EuroSys 2022) and *Bullshark* (CCS 2022), and measured as the
//! reference implementation (asonnino/narwhal) measures itself. Each authority runs one
//! primary and one worker on one P2PLane node; every protocol message is a typed P2PLane
//! request (see [`types`] for the protocols), and broadcasts and retries go through
//! P2PLane's client under its retry and timeout layers.
//!
//! - The **worker** batches client transactions, sends each batch to the other workers and
//!   hands its digest to the primary once 2f+1 workers hold it.
//! - The **primary** proposes a header per round (2f+1 parents from the round before, plus
//!   batch digests), votes at most once per author and round, turns 2f+1 votes into a
//!   certificate, and delivers certificates to consensus in causal order, fetching missing
//!   parents and batches (the author first, then `sync_retry_nodes` others).
//! - **Consensus** commits leaders of even rounds and their causal histories
//!   ([`consensus`]); everything below `last committed round − gc_depth` is dropped.
//!
//! A committee of four on loopback, in one process:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use narwhal::{LocalCommittee, Parameters};
//!
//! let local = LocalCommittee::new(4, Parameters::default(), None)?;
//! let mut running = Vec::new();
//! for i in 0..4 {
//!     running.push(local.start(i).await?);
//! }
//! let (_, commits) = &mut running[0];
//! let first = commits.recv().await.expect("the committee commits");
//! println!("committed {:?}", first.certificate);
//! # Ok(()) }
//! ```

pub mod authority;
mod batch_store;
pub mod client;
pub mod committee;
pub mod consensus;
pub mod log;
pub mod metrics;
mod net;
pub mod primary;
pub mod types;
mod worker;

use std::{path::PathBuf, sync::Arc};

use p2plane::transport::libp2p::identity::Keypair;
use p2plane::{Multiaddr, Node};
use tokio::sync::mpsc;

pub use authority::{Authority, AuthorityConfig, AuthorityError, node_config};
pub use committee::{Committee, CommitteeError, ConsensusRule, Parameters};
pub use primary::{Committed, Progress};
pub use types::{Certificate, Digest, Header, Round, Vote};

/// A committee on loopback TCP in one process, whose authorities start when asked (so a
/// test can start one late, or never).
#[derive(Debug)]
pub struct LocalCommittee {
    committee: Arc<Committee>,
    keypairs: Vec<Keypair>,
    params: Parameters,
    log_dir: Option<PathBuf>,
}

impl LocalCommittee {
    /// `nodes` fresh keys, each with a free loopback port (found by binding port 0).
    pub fn new(
        nodes: usize,
        params: Parameters,
        log_dir: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let keypairs: Vec<Keypair> = (0..nodes).map(|_| Keypair::generate_ed25519()).collect();
        let mut members = Vec::new();
        for keypair in &keypairs {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}")
                .parse()
                .expect("a valid multiaddr");
            members.push((keypair.public().to_peer_id(), addr));
        }
        let committee = Committee::new(members).map_err(std::io::Error::other)?;
        Ok(Self {
            committee: Arc::new(committee),
            keypairs,
            params,
            log_dir,
        })
    }

    /// The committee.
    pub fn committee(&self) -> &Arc<Committee> {
        &self.committee
    }

    /// Starts authority `index`: its node on its address, then its primary and worker.
    pub async fn start(
        &self,
        index: usize,
    ) -> Result<(Authority, mpsc::Receiver<Committed>), AuthorityError> {
        let keypair = self.keypairs[index].clone();
        let address = self.committee.authorities()[index].address.clone();
        let node = Node::new(node_config(keypair.clone(), address)).await?;
        Authority::start(
            node,
            AuthorityConfig {
                index: index as types::AuthorityIndex,
                keypair,
                committee: Arc::clone(&self.committee),
                params: self.params.clone(),
                log_dir: self.log_dir.clone(),
            },
        )
        .await
    }

    /// The key of authority `index` (a test can speak in its name).
    pub fn keypair(&self, index: usize) -> &Keypair {
        &self.keypairs[index]
    }
}
