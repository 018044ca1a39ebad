//! One authority: a P2PLane node carrying a primary and its worker.

use std::{path::PathBuf, sync::Arc, time::Duration};

use p2plane::transport::libp2p::identity::Keypair;
use p2plane::{Identity, Multiaddr, Node, NodeConfig, NodeError};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

use crate::{
    batch_store::BatchStore,
    committee::{Committee, Parameters},
    log::Logger,
    primary::{self, Committed, Progress},
    types::{AuthorityIndex, HeaderProtocol},
    worker,
};

/// Helper tasks (sends, fetches) one authority runs at once.
pub const MAX_TASKS: usize = 1_024;
/// Committed certificates buffered for the application.
pub const COMMIT_BUFFER: usize = 10_000;
/// The largest message: a batch plus a client submission, with room to spare.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Why an authority could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The node's key is not the committee's key at the given index.
    #[error("this node ({peer}) is not authority {index} of the committee")]
    NotInCommittee {
        /// The node's peer id.
        peer: String,
        /// The index asked for.
        index: AuthorityIndex,
    },
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A log file could not be created.
    #[error("log file: {0}")]
    Log(#[from] std::io::Error),
}

/// How to start an authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// Its index in the committee.
    pub index: AuthorityIndex,
    /// Its key: the one its node runs with.
    pub keypair: Keypair,
    /// The committee.
    pub committee: Arc<Committee>,
    /// The protocol's parameters.
    pub params: Parameters,
    /// Where to write `primary-{index}.log` and `worker-{index}.log`, or nowhere.
    pub log_dir: Option<PathBuf>,
}

/// A node configuration fit for an authority: its key, `listen` address, loopback and
/// private addresses allowed (committees often share a LAN), large messages, no DHT (the
/// committee is known).
pub fn node_config(keypair: Keypair, listen: Multiaddr) -> NodeConfig {
    NodeConfig {
        listen_addr: listen,
        identity: Identity::Keypair(keypair),
        max_message_size: MAX_MESSAGE_SIZE,
        request_timeout: Duration::from_secs(10),
        inbound_timeout: Duration::from_secs(10),
        max_concurrent_inbound: 1_024,
        allow_private_addrs: true,
        dht: None,
        ..NodeConfig::default()
    }
}

/// A running authority.
#[derive(Debug)]
pub struct Authority {
    node: Node<HeaderProtocol>,
    progress: Progress,
    tasks: Vec<JoinHandle<()>>,
    loggers: Vec<Logger>,
}

impl Authority {
    /// Starts the primary and worker of `config.index` on `node` (already listening, with
    /// the authority's key). Returns it with the stream of committed certificates, which the
    /// caller must keep reading: the primary waits when [`COMMIT_BUFFER`] are unread.
    pub async fn start(
        node: Node<HeaderProtocol>,
        config: AuthorityConfig,
    ) -> Result<(Self, mpsc::Receiver<Committed>), AuthorityError> {
        let committee = config.committee;
        let me = config.index;
        if committee.index_of(&node.local_peer_id()) != Some(me) {
            return Err(AuthorityError::NotInCommittee {
                peer: node.local_peer_id().to_string(),
                index: me,
            });
        }
        let (primary_log, worker_log) = match &config.log_dir {
            Some(dir) => (
                Logger::to_file(&dir.join(format!("primary-{me}.log")), "narwhal::primary")?,
                Logger::to_file(&dir.join(format!("worker-{me}.log")), "narwhal::worker")?,
            ),
            None => (Logger::disabled(), Logger::disabled()),
        };
        let store = Arc::new(std::sync::Mutex::new(BatchStore::default()));
        let tasks = Arc::new(Semaphore::new(MAX_TASKS));
        let (commits_tx, commits) = mpsc::channel(COMMIT_BUFFER);
        let channels = primary::channels();
        let progress = channels.progress.clone();

        let worker = worker::start(worker::WorkerContext {
            me,
            committee: Arc::clone(&committee),
            params: config.params.clone(),
            node: node.clone(),
            store: Arc::clone(&store),
            log: worker_log.clone(),
            gc: channels.gc.clone(),
            round: channels.round.clone(),
            tasks: Arc::clone(&tasks),
            primary: channels.events.clone(),
        })?;
        let primary = primary::start(
            primary::PrimaryContext {
                me,
                keypair: config.keypair,
                committee: Arc::clone(&committee),
                params: config.params,
                node: node.clone(),
                store,
                log: primary_log.clone(),
                commits: commits_tx,
                tasks,
            },
            channels,
        )?;

        // The committee is the peer store; connect to everyone who is up (the others are
        // dialled again whenever a message goes to them).
        let store = node.peer_store();
        for (i, authority) in committee.authorities().iter().enumerate() {
            if i as AuthorityIndex != me {
                store.add_peer_with_addr(authority.peer_id, authority.address.clone());
            }
        }
        for (i, authority) in committee.authorities().iter().enumerate() {
            if i as AuthorityIndex != me {
                let node = node.clone();
                let addr = authority.address.clone();
                tokio::spawn(async move {
                    let _ = node.dial(addr).await;
                });
            }
        }
        Ok((
            Self {
                node,
                progress,
                tasks: vec![worker, primary],
                loggers: vec![primary_log, worker_log],
            },
            commits,
        ))
    }

    /// The authority's node.
    pub fn node(&self) -> &Node<HeaderProtocol> {
        &self.node
    }

    /// Its rounds: proposed, garbage-collected, committed.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Writes buffered log lines.
    pub fn flush_logs(&self) {
        for logger in &self.loggers {
            logger.flush();
        }
    }

    /// Stops the authority: its node shuts down, its tasks end, its logs are flushed.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        for logger in &self.loggers {
            logger.flush();
        }
    }
}
