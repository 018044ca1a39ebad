//! Committees of real nodes on loopback TCP, in one process: agreement, causal order, no
//! duplicates, equivocation, a crashed node, a late node.

use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use narwhal::{
    Authority, Certificate, Committed, Digest, Header, LocalCommittee, Parameters, Round, Vote,
    client::{self, ClientConfig},
    log::Logger,
    types::{BatchProtocol, CertificateProtocol, HeaderProtocol},
};
use p2plane::{Error, Node, NodeConfig, Request, tower::ServiceExt};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(90);

fn params() -> Parameters {
    Parameters {
        header_size: 1_000,
        max_header_delay: Duration::from_millis(50),
        gc_depth: 50,
        sync_retry_delay: Duration::from_millis(500),
        sync_retry_nodes: 3,
        batch_size: 4_000,
        max_batch_delay: Duration::from_millis(20),
        ..Parameters::default()
    }
}

struct Running {
    authority: Authority,
    commits: Arc<Mutex<Vec<Committed>>>,
    drain: JoinHandle<()>,
}

async fn start(local: &LocalCommittee, index: usize) -> Running {
    let (authority, mut receiver) = local.start(index).await.expect("authority starts");
    let commits = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&commits);
    let drain = tokio::spawn(async move {
        while let Some(c) = receiver.recv().await {
            sink.lock().unwrap().push(c);
        }
    });
    Running {
        authority,
        commits,
        drain,
    }
}

fn client_config() -> NodeConfig {
    NodeConfig {
        listen_addr: "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        allow_private_addrs: true,
        dht: None,
        ..NodeConfig::default()
    }
}

/// A client sending 400 tx/s of 64 B to worker `index` until aborted.
async fn load(local: &LocalCommittee, index: usize) -> JoinHandle<()> {
    let node = Node::<HeaderProtocol>::new(client_config()).await.unwrap();
    let authority = &local.committee().authorities()[index];
    node.dial(authority.address.clone()).await.unwrap();
    let config = ClientConfig {
        target: authority.peer_id,
        rate: 400,
        tx_size: 64,
        duration: Duration::from_secs(3600),
    };
    tokio::spawn(async move {
        let _ = client::run(&node, &config, &Logger::disabled()).await;
    })
}

/// Authorities `0..count` of `local`, each with a client sending it transactions.
async fn start_loaded(local: &LocalCommittee, count: usize) -> (Vec<Running>, Vec<JoinHandle<()>>) {
    let mut running = Vec::new();
    for i in 0..count {
        running.push(start(local, i).await);
    }
    let mut clients = Vec::new();
    for i in 0..count {
        clients.push(load(local, i).await);
    }
    (running, clients)
}

async fn committed_round_at_least(running: &Running, round: Round) {
    let mut committed = running.authority.progress().committed_round.clone();
    tokio::time::timeout(WAIT, committed.wait_for(|r| *r >= round))
        .await
        .unwrap_or_else(|_| panic!("no commit of round {round} within {WAIT:?}"))
        .expect("the authority runs");
}

/// Stops the clients and the authorities; returns each authority's committed sequence.
async fn stop(clients: Vec<JoinHandle<()>>, running: Vec<Running>) -> Vec<Vec<Committed>> {
    for c in clients {
        c.abort();
    }
    let mut sequences = Vec::new();
    for r in running {
        r.authority.shutdown().await;
        let _ = r.drain.await;
        sequences.push(std::mem::take(&mut *r.commits.lock().unwrap()));
    }
    sequences
}

/// Agreement, no duplicates and causal order over the committed sequences; returns how
/// many batches the longest sequence committed.
fn check_sequences(sequences: &[Vec<Committed>]) -> usize {
    let digests: Vec<Vec<Digest>> = sequences
        .iter()
        .map(|s| s.iter().map(|c| c.digest).collect())
        .collect();
    for (i, a) in digests.iter().enumerate() {
        for (j, b) in digests.iter().enumerate().skip(i + 1) {
            let n = a.len().min(b.len());
            assert!(n > 0, "nodes {i} and {j} both committed something");
            assert_eq!(a[..n], b[..n], "nodes {i} and {j} disagree");
        }
    }
    let mut batches_committed = 0;
    for (i, sequence) in sequences.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut batches = HashSet::new();
        for c in sequence {
            assert!(seen.insert(c.digest), "node {i} committed {c:?} twice");
            for batch in &c.certificate.header.payload {
                assert!(
                    batches.insert(*batch),
                    "node {i} committed batch {batch:?} twice"
                );
            }
            if c.certificate.round() > 1 {
                for parent in &c.certificate.header.parents {
                    assert!(
                        seen.contains(parent),
                        "node {i} committed {c:?} before its parent {parent:?}"
                    );
                }
            }
        }
        batches_committed = batches_committed.max(batches.len());
    }
    batches_committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_honest_nodes_agree_and_commit_transactions() {
    let local = LocalCommittee::new(4, params(), None).unwrap();
    let (running, clients) = start_loaded(&local, 4).await;
    for r in &running {
        committed_round_at_least(r, 20).await;
    }
    let sequences = stop(clients, running).await;
    let batches = check_sequences(&sequences);
    assert!(batches > 0, "transactions were committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_node_crashed_rounds_advance_and_transactions_commit() {
    let local = LocalCommittee::new(4, params(), None).unwrap();
    // Authority 3 never starts; it leads every fourth even round.
    let (running, clients) = start_loaded(&local, 3).await;
    for r in &running {
        committed_round_at_least(r, 16).await;
    }
    let sequences = stop(clients, running).await;
    let batches = check_sequences(&sequences);
    assert!(batches > 0, "transactions were committed");
    let authors: BTreeSet<_> = sequences[0]
        .iter()
        .map(|c| c.certificate.origin())
        .collect();
    assert!(!authors.contains(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_late_catches_up_and_agrees() {
    let local = LocalCommittee::new(4, params(), None).unwrap();
    let (mut running, clients) = start_loaded(&local, 3).await;
    committed_round_at_least(&running[0], 12).await;
    let behind = *running[0].authority.progress().committed_round.borrow();
    let late = start(&local, 3).await;
    // The late node fetches the DAG it missed, commits the same history from round 2 on,
    // and keeps up.
    committed_round_at_least(&late, behind + 10).await;
    running.push(late);
    let sequences = stop(clients, running).await;
    check_sequences(&sequences);
    let late = &sequences[3];
    assert!(
        late.iter().any(|c| c.certificate.round() <= behind),
        "the late node committed the history it missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_headers_for_one_round_are_never_both_certified() {
    let local = LocalCommittee::new(4, params(), None).unwrap();
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(start(&local, i).await);
    }
    // Authority 3 is Byzantine: a plain P2PLane node with its key, sending two different
    // round-1 headers, each valid on its own.
    let keypair = local.keypair(3).clone();
    let byzantine = Node::<HeaderProtocol>::new(narwhal::node_config(
        keypair.clone(),
        local.committee().authorities()[3].address.clone(),
    ))
    .await
    .unwrap();
    let genesis: Vec<Digest> = Certificate::genesis(local.committee())
        .iter()
        .map(Certificate::digest)
        .collect();
    let a = Header::new(3, 1, vec![], genesis.iter().copied().collect(), &keypair);
    let b = Header::new(
        3,
        1,
        vec![],
        genesis[..3].iter().copied().collect(),
        &keypair,
    );
    assert_ne!(a.id, b.id);
    let peers: Vec<_> = (0..3)
        .map(|i| local.committee().authorities()[i].peer_id)
        .collect();
    for authority in &local.committee().authorities()[..3] {
        byzantine.dial(authority.address.clone()).await.unwrap();
    }
    let client = byzantine.client_for::<HeaderProtocol>();
    let send = |peer, header: &Header| {
        client
            .clone()
            .oneshot(Request::for_protocol::<HeaderProtocol>(
                peer,
                header.clone(),
            ))
    };
    // Nodes 0 and 1 see A first, node 2 sees B first; then each sees the other one.
    // The Byzantine author's own vote counts for both.
    let (mut votes_a, mut votes_b) = (1, 1);
    for (i, peer) in peers.iter().enumerate() {
        let (first, second) = if i < 2 { (&a, &b) } else { (&b, &a) };
        let vote = send(*peer, first)
            .await
            .expect("a first header gets a vote");
        vote.verify(local.committee()).unwrap();
        assert_eq!(vote.header_id, first.id);
        if first.id == a.id {
            votes_a += 1;
        } else {
            votes_b += 1;
        }
        match send(*peer, second).await {
            Err(Error::Rejected { reason, .. }) => {
                assert!(reason.contains("already voted"), "{reason}");
            }
            other => panic!("node {i} answered a second header of round 1 with {other:?}"),
        }
        // Asking again for the first is answered with the same vote (retries are safe).
        let again = send(*peer, first).await.unwrap();
        assert_eq!(again.header_id, first.id);
    }
    // Forgeries are refused with the reason: a header signed by another key, and a
    // certificate of A carrying the Byzantine's own vote alone.
    let mut forged = Header::new(3, 2, vec![], BTreeSet::new(), &keypair);
    forged.signature = local.keypair(0).sign(&forged.id.0).unwrap();
    match send(peers[0], &forged).await {
        Err(Error::Rejected { reason, .. }) => assert!(reason.contains("signature"), "{reason}"),
        other => panic!("a forged header was answered with {other:?}"),
    }
    let own = Vote::new(&a, 3, &keypair);
    let thin = Certificate {
        header: a.clone(),
        votes: vec![(3, own.signature.into())],
    };
    let certificates = byzantine.client_for::<CertificateProtocol>();
    match certificates
        .oneshot(Request::for_protocol::<CertificateProtocol>(peers[0], thin))
        .await
    {
        Err(Error::Rejected { reason, .. }) => assert!(reason.contains("2f+1"), "{reason}"),
        other => panic!("a certificate with one vote was answered with {other:?}"),
    }

    let quorum = local.committee().quorum_threshold();
    assert_eq!((votes_a, votes_b), (3, 2));
    assert!(!(votes_a >= quorum && votes_b >= quorum));
    byzantine.shutdown().await;

    // A peer outside the committee cannot fill a worker's batch store.
    let stranger = Node::<HeaderProtocol>::new(client_config()).await.unwrap();
    stranger
        .dial(local.committee().authorities()[0].address.clone())
        .await
        .unwrap();
    let batch = Request::for_protocol::<BatchProtocol>(peers[0], Default::default());
    match stranger.client_for::<BatchProtocol>().oneshot(batch).await {
        Err(Error::Rejected { reason, .. }) => assert!(reason.contains("committee"), "{reason}"),
        other => panic!("a stranger's batch was answered with {other:?}"),
    }
    stranger.shutdown().await;
    stop(Vec::new(), running).await;
}
