//! The primary: proposes headers, votes, assembles certificates, keeps the DAG in causal
//! order, fetches what is missing, and feeds consensus. One task owns all of its state
//! (`Core`); request handlers and helper tasks talk to it through bounded channels.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use p2plane::transport::libp2p::identity::{Keypair, PeerId};
use p2plane::{Error, Node, NodeError, Protocol, Request, service_fn};
use rand::seq::IndexedRandom as _;
use serde_bytes::ByteBuf;
use tokio::{
    sync::{Semaphore, mpsc, oneshot, watch},
    time::{Instant, sleep, sleep_until},
};

use crate::{
    batch_store::{BatchStore, SharedStore},
    committee::{Committee, ConsensusRule, Parameters},
    consensus::Consensus,
    log::Logger,
    net::{Reliable, ReliableStream, reliable, reliable_stream, send_until_gc, stream_until_gc},
    types::{
        AuthorityIndex, BatchSyncProtocol, Certificate, CertificateProtocol,
        CertificateSyncProtocol, Digest, Header, HeaderProtocol, Round, Transactions, Vote,
    },
};

/// Headers waiting for parents or batches before a vote; beyond, new ones are refused.
const MAX_WAITING_HEADERS: usize = 1_000;
/// Certificates waiting for their parents; beyond, new ones are dropped (and fetched again
/// when referenced later).
const MAX_WAITING_CERTIFICATES: usize = 20_000;
/// Certificates in one sync answer.
const MAX_SYNC_CERTIFICATES: usize = 1_000;
/// Certificates are kept this many times `gc_depth` below the garbage-collection round, so
/// that a node that fell behind can still fetch them.
const RETENTION_FACTOR: u64 = 10;
/// Attempts of one fetch: the author, then twice `sync_retry_nodes` others.
const FETCH_ATTEMPTS: usize = 3;

/// A certificate committed by consensus, in commit order.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The certificate's digest.
    pub digest: Digest,
    /// The certificate.
    pub certificate: Arc<Certificate>,
}

/// What request handlers and the worker tell the core.
pub(crate) enum CoreEvent {
    Header(Header, oneshot::Sender<Result<Vote, String>>),
    Certificate(Certificate),
    CertificateRequest(Vec<Digest>, oneshot::Sender<Vec<Certificate>>),
    OurBatch(Digest),
}

/// What the core's own helper tasks tell it. Each task sends at most
/// [`FETCH_ATTEMPTS`] + 1 messages and holds a task permit meanwhile, and the channel has
/// room for that many per permit, so a helper never waits on the core.
enum Internal {
    Vote(Vote),
    Fetched {
        certificates: Vec<Certificate>,
        requested: Option<Vec<Digest>>,
    },
    BatchesReady(Digest),
}

/// Progress the rest of the process may watch.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The round of the next header this primary proposes.
    pub round: watch::Receiver<Round>,
    /// The last round garbage collection keeps.
    pub gc_round: watch::Receiver<Round>,
    /// The round of the last committed leader.
    pub committed_round: watch::Receiver<Round>,
}

struct Aggregator {
    header: Header,
    votes: Vec<(AuthorityIndex, ByteBuf)>,
    done: bool,
}

pub(crate) struct PrimaryContext {
    pub me: AuthorityIndex,
    pub keypair: Keypair,
    pub committee: Arc<Committee>,
    pub params: Parameters,
    pub node: Node<HeaderProtocol>,
    pub store: SharedStore,
    pub log: Logger,
    pub commits: mpsc::Sender<Committed>,
    pub tasks: Arc<Semaphore>,
}

pub(crate) struct Channels {
    pub events: mpsc::Sender<CoreEvent>,
    events_rx: mpsc::Receiver<CoreEvent>,
    pub gc: watch::Receiver<Round>,
    pub round: watch::Receiver<Round>,
    gc_tx: watch::Sender<Round>,
    round_tx: watch::Sender<Round>,
    committed_tx: watch::Sender<Round>,
    pub progress: Progress,
}

pub(crate) fn channels() -> Channels {
    let (events, events_rx) = mpsc::channel(1_024);
    let (gc_tx, gc) = watch::channel(0);
    let (round_tx, round) = watch::channel(1);
    let (committed_tx, committed) = watch::channel(0);
    Channels {
        events,
        events_rx,
        progress: Progress {
            round: round.clone(),
            gc_round: gc.clone(),
            committed_round: committed,
        },
        gc,
        round,
        gc_tx,
        round_tx,
        committed_tx,
    }
}

/// Serves the primary's protocols and starts its core.
/// The most batch digests a header may carry.
pub const MAX_HEADER_PAYLOAD: usize = 10_000;

/// The checks on a header that need no DAG: sizes, author, id, signature.
fn check_header(header: &Header, committee: &Committee) -> Result<(), String> {
    if header.payload.len() > MAX_HEADER_PAYLOAD {
        return Err(format!(
            "{header} carries {} batch digests, more than {MAX_HEADER_PAYLOAD}",
            header.payload.len()
        ));
    }
    if header.parents.len() > committee.size() {
        return Err(format!(
            "{header} has {} parents in a committee of {}",
            header.parents.len(),
            committee.size()
        ));
    }
    header.verify(committee).map_err(|e| e.to_string())
}

pub(crate) fn start(
    ctx: PrimaryContext,
    channels: Channels,
) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    // Signatures are checked in the handlers' tasks, off the core.
    let events = channels.events.clone();
    let committee = Arc::clone(&ctx.committee);
    ctx.node
        .serve_protocol::<HeaderProtocol, _>(service_fn(move |req: Request<Header>| {
            let events = events.clone();
            let committee = Arc::clone(&committee);
            async move {
                check_header(req.body(), &committee)
                    .map_err(|reason| Error::Rejected { peer: None, reason })?;
                let (reply, answer) = oneshot::channel();
                events
                    .send(CoreEvent::Header(req.into_body(), reply))
                    .await
                    .map_err(|_| Error::Shutdown)?;
                match answer.await {
                    Ok(Ok(vote)) => Ok(vote),
                    Ok(Err(reason)) => Err(Error::Rejected { peer: None, reason }),
                    Err(_) => Err(Error::Shutdown),
                }
            }
        }))?;
    let events = channels.events.clone();
    let committee = Arc::clone(&ctx.committee);
    ctx.node
        .serve_protocol::<CertificateProtocol, _>(service_fn(
            move |req: Request<Certificate>| {
                let events = events.clone();
                let committee = Arc::clone(&committee);
                async move {
                    let certificate = req.body();
                    check_header(&certificate.header, &committee)
                        .and_then(|()| certificate.verify(&committee).map_err(|e| e.to_string()))
                        .map_err(|reason| Error::Rejected { peer: None, reason })?;
                    events
                        .send(CoreEvent::Certificate(req.into_body()))
                        .await
                        .map_err(|_| Error::Shutdown)
                }
            },
        ))?;
    let events = channels.events.clone();
    ctx.node
        .serve_stream::<CertificateSyncProtocol, _>(service_fn(
            move |req: Request<Vec<Digest>>| {
                let events = events.clone();
                async move {
                    let mut digests = req.into_body();
                    digests.truncate(MAX_SYNC_CERTIFICATES);
                    let (reply, answer) = oneshot::channel();
                    events
                        .send(CoreEvent::CertificateRequest(digests, reply))
                        .await
                        .map_err(|_| Error::Shutdown)?;
                    let held = answer.await.map_err(|_| Error::Shutdown)?;
                    Ok::<_, Error>(futures::stream::iter(held.into_iter().map(Ok)))
                }
            },
        ))?;

    let core = Core::new(ctx, &channels);
    Ok(tokio::spawn(core.run(channels.events_rx)))
}

struct Core {
    me: AuthorityIndex,
    keypair: Keypair,
    committee: Arc<Committee>,
    params: Parameters,
    node: Node<HeaderProtocol>,
    store: SharedStore,
    log: Logger,
    commits: mpsc::Sender<Committed>,
    tasks: Arc<Semaphore>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    gc_tx: watch::Sender<Round>,
    round_tx: watch::Sender<Round>,
    committed_tx: watch::Sender<Round>,
    gc: watch::Receiver<Round>,
    headers: Reliable<HeaderProtocol>,
    certificates: Reliable<CertificateProtocol>,
    cert_sync: ReliableStream<CertificateSyncProtocol>,
    batch_sync: ReliableStream<BatchSyncProtocol>,

    /// Stored certificates (causally complete: every parent is stored too).
    certs: HashMap<Digest, Arc<Certificate>>,
    by_round: BTreeMap<Round, BTreeMap<AuthorityIndex, Digest>>,
    /// The header each author had this node's vote for, per round, and the vote.
    last_voted: BTreeMap<Round, HashMap<AuthorityIndex, (Digest, Vote)>>,
    waiting_headers: Vec<(Header, oneshot::Sender<Result<Vote, String>>)>,
    waiting_certs: HashMap<Digest, Certificate>,
    waiting_on: HashMap<Digest, Vec<Digest>>,
    fetching: HashSet<Digest>,
    batch_fetching: HashSet<Digest>,
    current: Option<Aggregator>,
    gc_round: Round,

    round: Round,
    pending_digests: Vec<Digest>,
    deadline: Instant,

    consensus: Consensus,
}

impl Core {
    fn new(ctx: PrimaryContext, channels: &Channels) -> Self {
        let (internal_tx, internal_rx) =
            mpsc::channel((FETCH_ATTEMPTS + 1) * ctx.tasks.available_permits().max(1));
        let headers = reliable(&ctx.node, Duration::from_secs(5), 20);
        let certificates = reliable(&ctx.node, Duration::from_secs(5), 20);
        let cert_sync = reliable_stream(&ctx.node, Duration::from_secs(5), 2);
        let batch_sync = reliable_stream(&ctx.node, Duration::from_secs(10), 2);
        let consensus = Consensus::new(
            Arc::clone(&ctx.committee),
            ctx.params.gc_depth,
            ctx.params.consensus,
        );
        let mut certs = HashMap::new();
        let mut genesis = BTreeMap::new();
        for certificate in Certificate::genesis(&ctx.committee) {
            genesis.insert(certificate.origin(), certificate.digest());
            certs.insert(certificate.digest(), Arc::new(certificate));
        }
        Self {
            me: ctx.me,
            keypair: ctx.keypair,
            committee: ctx.committee,
            deadline: Instant::now() + ctx.params.max_header_delay,
            params: ctx.params,
            node: ctx.node,
            store: ctx.store,
            log: ctx.log,
            commits: ctx.commits,
            tasks: ctx.tasks,
            internal_tx,
            internal_rx,
            gc_tx: channels.gc_tx.clone(),
            round_tx: channels.round_tx.clone(),
            committed_tx: channels.committed_tx.clone(),
            gc: channels.gc.clone(),
            headers,
            certificates,
            cert_sync,
            batch_sync,
            certs,
            by_round: BTreeMap::from([(0, genesis)]),
            last_voted: BTreeMap::new(),
            waiting_headers: Vec::new(),
            waiting_certs: HashMap::new(),
            waiting_on: HashMap::new(),
            fetching: HashSet::new(),
            batch_fetching: HashSet::new(),
            current: None,
            gc_round: 0,
            round: 1,
            pending_digests: Vec::new(),
            consensus,
        }
    }

    async fn run(mut self, mut events: mpsc::Receiver<CoreEvent>) {
        self.log_parameters();
        loop {
            tokio::select! {
                biased;
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal).await,
                event = events.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                () = sleep_until(self.deadline) => {}
            }
            self.try_propose().await;
        }
        self.log.flush();
    }

    fn log_parameters(&self) {
        let p = &self.params;
        if let Some(address) = self.committee.authority(self.me).map(|a| &a.address) {
            self.log.info(format_args!(
                "Primary {} successfully booted on {}",
                self.me,
                crate::committee::host(address)
            ));
        }
        // The reference's parameter lines, which its log parser reads.
        let ms = |d: Duration| d.as_millis();
        for (name, value, unit) in [
            ("Header size", p.header_size as u128, "B"),
            ("Max header delay", ms(p.max_header_delay), "ms"),
            ("Garbage collection depth", u128::from(p.gc_depth), "rounds"),
            ("Sync retry delay", ms(p.sync_retry_delay), "ms"),
            ("Sync retry nodes", p.sync_retry_nodes as u128, "nodes"),
            ("Batch size", p.batch_size as u128, "B"),
            ("Max batch delay", ms(p.max_batch_delay), "ms"),
        ] {
            self.log.info(format_args!("{name} set to {value} {unit}"));
        }
    }

    async fn on_event(&mut self, event: CoreEvent) {
        match event {
            CoreEvent::Header(header, reply) => self.on_header(header, reply).await,
            CoreEvent::Certificate(certificate) => {
                self.on_certificate(certificate).await;
            }
            CoreEvent::CertificateRequest(digests, reply) => {
                let found = digests
                    .iter()
                    .filter_map(|d| self.certs.get(d))
                    .filter(|c| c.round() > 0)
                    .map(|c| Certificate::clone(c))
                    .collect();
                let _ = reply.send(found);
            }
            CoreEvent::OurBatch(digest) => self.pending_digests.push(digest),
        }
    }

    async fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Vote(vote) => self.on_vote(vote).await,
            Internal::Fetched {
                certificates,
                requested,
            } => {
                for certificate in certificates {
                    self.on_certificate(certificate).await;
                }
                if let Some(requested) = requested {
                    for digest in &requested {
                        self.fetching.remove(digest);
                    }
                    // Fetch again what waiting certificates still lack (from random nodes).
                    let still: Vec<Digest> = requested
                        .into_iter()
                        .filter(|d| !self.certs.contains_key(d) && self.waiting_on.contains_key(d))
                        .collect();
                    let round = still
                        .iter()
                        .flat_map(|d| &self.waiting_on[d])
                        .filter_map(|w| self.waiting_certs.get(w))
                        .map(|c| c.round() - 1)
                        .min();
                    if let Some(round) = round {
                        self.start_fetch(Fetch::Certificates(still, round, self.me))
                            .await;
                    }
                }
            }
            Internal::BatchesReady(header_id) => {
                self.batch_fetching.remove(&header_id);
                self.wake_headers().await;
            }
        }
    }

    // ---------------------------------------------------------------- proposing

    async fn try_propose(&mut self) {
        let quorum = self.committee.quorum_threshold();
        let parent_round = self.round - 1;
        let Some(parents) = self.by_round.get(&parent_round) else {
            return;
        };
        if parents.len() < quorum {
            return;
        }
        let now = Instant::now();
        let timer = now >= self.deadline;
        let enough = self.pending_digests.len() * 32 >= self.params.header_size;
        if !(timer || (enough && self.advance(parent_round))) {
            return;
        }
        let parents: BTreeSet<Digest> = parents.values().copied().collect();
        let payload = std::mem::take(&mut self.pending_digests);
        let header = Header::new(self.me, self.round, payload, parents, &self.keypair);
        for digest in &header.payload {
            self.log.info(format_args!("Created {header} -> {digest}"));
        }
        self.deadline = now + self.params.max_header_delay;
        self.round += 1;
        self.round_tx.send_replace(self.round);
        self.propose(header).await;
    }

    /// Bullshark's wait for the leader (Tusk never waits): in an even round, for the
    /// leader's certificate among the parents; in an odd one, until the parents carry f+1
    /// votes for the previous leader or 2f+1 without it.
    fn advance(&self, parent_round: Round) -> bool {
        if self.params.consensus == ConsensusRule::Tusk || parent_round == 0 {
            return true;
        }
        let parents = &self.by_round[&parent_round];
        let leader_round = parent_round - parent_round % 2;
        let leader = self
            .by_round
            .get(&leader_round)
            .and_then(|r| r.get(&self.committee.leader(leader_round)));
        if parent_round.is_multiple_of(2) {
            return leader.is_some();
        }
        let Some(leader) = leader else {
            return true;
        };
        let votes = parents
            .values()
            .filter(|d| self.certs[*d].header.parents.contains(leader))
            .count();
        votes >= self.committee.validity_threshold()
            || parents.len() - votes >= self.committee.quorum_threshold()
    }

    async fn propose(&mut self, header: Header) {
        let vote = Vote::new(&header, self.me, &self.keypair);
        self.last_voted
            .entry(header.round)
            .or_default()
            .insert(self.me, (header.id, vote.clone()));
        self.current = Some(Aggregator {
            header: header.clone(),
            votes: vec![(self.me, ByteBuf::from(vote.signature))],
            done: false,
        });
        let round = header.round;
        let committee = Arc::clone(&self.committee);
        self.broadcast(&self.headers, header, round, move |vote: Vote| {
            vote.verify(&committee)
                .is_ok()
                .then_some(Internal::Vote(vote))
        })
        .await;
        self.try_certify().await;
    }

    /// Sends `body` to every other authority, each send in a task of its own (under a task
    /// permit), retried until answered or garbage-collected; `answer` turns a response into
    /// something for the core, or nothing.
    async fn broadcast<Q: Protocol>(
        &self,
        client: &Reliable<Q>,
        body: Q::Request,
        round: Round,
        answer: impl Fn(Q::Response) -> Option<Internal> + Clone + Send + 'static,
    ) {
        let request = Request::for_protocol::<Q>(self.node.local_peer_id(), body);
        for peer in self.others() {
            let Ok(permit) = Arc::clone(&self.tasks).acquire_owned().await else {
                return;
            };
            let (client, gc) = (client.clone(), self.gc.clone());
            let request = request.clone().with_peer(peer);
            let internal = self.internal_tx.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(Ok(response)) = send_until_gc(client, request, gc, round).await
                    && let Some(message) = answer(response)
                {
                    let _ = internal.send(message).await;
                }
            });
        }
    }

    async fn on_vote(&mut self, vote: Vote) {
        let Some(current) = &mut self.current else {
            return;
        };
        let header = &current.header;
        if current.done
            || vote.header_id != header.id
            || vote.round != header.round
            || vote.origin != self.me
            || current.votes.iter().any(|(a, _)| *a == vote.author)
        {
            return;
        }
        current
            .votes
            .push((vote.author, ByteBuf::from(vote.signature)));
        self.try_certify().await;
    }

    async fn try_certify(&mut self) {
        let quorum = self.committee.quorum_threshold();
        let Some(current) = &mut self.current else {
            return;
        };
        if current.done || current.votes.len() < quorum {
            return;
        }
        current.done = true;
        let certificate = Certificate {
            header: current.header.clone(),
            votes: current.votes.clone(),
        };
        let round = certificate.round();
        self.broadcast(&self.certificates, certificate.clone(), round, |()| None)
            .await;
        self.on_certificate(certificate).await;
    }

    fn others(&self) -> Vec<PeerId> {
        self.committee
            .authorities()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as AuthorityIndex != self.me)
            .map(|(_, a)| a.peer_id)
            .collect()
    }

    // ---------------------------------------------------------------- voting

    async fn on_header(&mut self, header: Header, reply: oneshot::Sender<Result<Vote, String>>) {
        let check = if header.author == self.me {
            Err("a header in this node's name that it did not make".to_owned())
        } else if header.round < self.gc_round {
            Err(format!("{header} is below the garbage-collection round"))
        } else {
            Ok(())
        };
        if let Err(reason) = check {
            let _ = reply.send(Err(reason));
            return;
        }
        if let Some(fetch) = self.try_vote(header, reply) {
            self.start_fetch(fetch).await;
        }
    }

    /// Votes for `header` if every rule holds, refuses it if one fails, or parks it until
    /// missing parents or batches arrive. Returns the fetch to start, if any.
    fn try_vote(
        &mut self,
        header: Header,
        reply: oneshot::Sender<Result<Vote, String>>,
    ) -> Option<Fetch> {
        if let Some((id, vote)) = self
            .last_voted
            .get(&header.round)
            .and_then(|m| m.get(&header.author))
        {
            let answer = if *id == header.id {
                Ok(vote.clone())
            } else {
                Err(format!("already voted for another header of {header}"))
            };
            let _ = reply.send(answer);
            return None;
        }
        let missing = self.missing_parents(&header);
        if !missing.is_empty() {
            let fetch = Fetch::Certificates(missing, header.round - 1, header.author);
            self.park(header, reply);
            return Some(fetch);
        }
        let mut authors = HashSet::new();
        for parent in &header.parents {
            let parent = &self.certs[parent];
            if parent.round() + 1 != header.round {
                let _ = reply.send(Err(format!(
                    "{header} has a parent from round {}",
                    parent.round()
                )));
                return None;
            }
            authors.insert(parent.origin());
        }
        if authors.len() < self.committee.quorum_threshold() {
            let _ = reply.send(Err(format!(
                "{header} has parents from {} authorities, fewer than 2f+1",
                authors.len()
            )));
            return None;
        }
        let missing = BatchStore::lock(&self.store).missing(&header.payload);
        if !missing.is_empty() {
            let fetch = Fetch::Batches(header.id, header.round, missing, header.author);
            self.park(header, reply);
            return Some(fetch);
        }
        let vote = Vote::new(&header, self.me, &self.keypair);
        self.last_voted
            .entry(header.round)
            .or_default()
            .insert(header.author, (header.id, vote.clone()));
        let _ = reply.send(Ok(vote));
        None
    }

    /// The parents of `header` not stored yet.
    fn missing_parents(&self, header: &Header) -> Vec<Digest> {
        header
            .parents
            .iter()
            .filter(|d| !self.certs.contains_key(d))
            .copied()
            .collect()
    }

    fn park(&mut self, header: Header, reply: oneshot::Sender<Result<Vote, String>>) {
        if self.waiting_headers.len() >= MAX_WAITING_HEADERS {
            let _ = reply.send(Err("too many headers waiting for data".to_owned()));
        } else {
            self.waiting_headers.push((header, reply));
        }
    }

    /// Looks at every parked header again (after a certificate was stored or batches
    /// arrived).
    async fn wake_headers(&mut self) {
        let waiting = std::mem::take(&mut self.waiting_headers);
        let mut fetches = Vec::new();
        for (header, reply) in waiting {
            if reply.is_closed() {
                continue;
            }
            if header.round < self.gc_round {
                let _ = reply.send(Err(format!("{header} fell below the GC round")));
                continue;
            }
            fetches.extend(self.try_vote(header, reply));
        }
        for fetch in fetches {
            self.start_fetch(fetch).await;
        }
    }

    // ---------------------------------------------------------------- certificates

    /// Takes a verified certificate (checked by the handler, the fetch task, or made here).
    async fn on_certificate(&mut self, certificate: Certificate) {
        let digest = certificate.digest();
        if certificate.round() < self.gc_round
            || self.certs.contains_key(&digest)
            || self.waiting_certs.contains_key(&digest)
        {
            return;
        }
        let missing = self.missing_parents(&certificate.header);
        if !missing.is_empty() {
            if self.waiting_certs.len() >= MAX_WAITING_CERTIFICATES {
                return;
            }
            for parent in &missing {
                self.waiting_on.entry(*parent).or_default().push(digest);
            }
            let fetch = Fetch::Certificates(missing, certificate.round() - 1, certificate.origin());
            self.waiting_certs.insert(digest, certificate);
            self.start_fetch(fetch).await;
            return;
        }
        self.store_certificates(certificate).await;
        self.wake_headers().await;
    }

    /// Stores `certificate` (whose parents are all stored), hands it to consensus, and then
    /// does the same for every waiting certificate it completes.
    async fn store_certificates(&mut self, certificate: Certificate) {
        let quorum = self.committee.quorum_threshold();
        let mut queue = vec![certificate];
        while let Some(certificate) = queue.pop() {
            let digest = certificate.digest();
            let (round, origin) = (certificate.round(), certificate.origin());
            let slot = self.by_round.entry(round).or_default();
            if self.certs.contains_key(&digest) || slot.contains_key(&origin) {
                continue;
            }
            slot.insert(origin, digest);
            let arrived = slot.len();
            let certificate = Arc::new(certificate);
            self.certs.insert(digest, Arc::clone(&certificate));
            // A node that fell behind joins the newest complete round.
            if round >= self.round && arrived >= quorum {
                self.round = round + 1;
                self.round_tx.send_replace(self.round);
            }
            let committed = self.consensus.process(certificate);
            self.on_committed(committed).await;
            for waiter in self.waiting_on.remove(&digest).unwrap_or_default() {
                let ready = self
                    .waiting_certs
                    .get(&waiter)
                    .is_some_and(|c| c.header.parents.iter().all(|p| self.certs.contains_key(p)));
                if ready && let Some(c) = self.waiting_certs.remove(&waiter) {
                    queue.push(c);
                }
            }
        }
    }

    async fn on_committed(&mut self, committed: Vec<Arc<Certificate>>) {
        if committed.is_empty() {
            return;
        }
        for certificate in committed {
            for digest in &certificate.header.payload {
                self.log
                    .info(format_args!("Committed {} -> {digest}", certificate.header));
            }
            let committed = Committed {
                digest: certificate.digest(),
                certificate,
            };
            // The receiver is the application; if it is gone, nobody reads commits.
            let _ = self.commits.send(committed).await;
        }
        let last = self.consensus.last_committed_round();
        self.committed_tx.send_replace(last);
        let gc_round = last.saturating_sub(self.params.gc_depth);
        if gc_round > self.gc_round {
            self.gc_round = gc_round;
            self.gc_tx.send_replace(gc_round);
            self.collect_garbage();
        }
    }

    fn collect_garbage(&mut self) {
        let gc_round = self.gc_round;
        self.last_voted = self.last_voted.split_off(&gc_round);
        self.waiting_certs.retain(|_, c| c.round() >= gc_round);
        let waiting = &self.waiting_certs;
        self.waiting_on.retain(|_, waiters| {
            waiters.retain(|w| waiting.contains_key(w));
            !waiters.is_empty()
        });
        let floor = gc_round.saturating_sub(RETENTION_FACTOR * self.params.gc_depth);
        let kept = self.by_round.split_off(&floor);
        for digests in std::mem::replace(&mut self.by_round, kept).into_values() {
            for digest in digests.values() {
                self.certs.remove(digest);
            }
        }
        BatchStore::lock(&self.store).collect_garbage(gc_round);
    }

    // ---------------------------------------------------------------- synchronisation

    async fn start_fetch(&mut self, fetch: Fetch) {
        match fetch {
            Fetch::Certificates(missing, round, author) => {
                let wanted: Vec<Digest> = missing
                    .into_iter()
                    .filter(|d| self.fetching.insert(*d))
                    .collect();
                if wanted.is_empty() {
                    return;
                }
                let Ok(permit) = Arc::clone(&self.tasks).acquire_owned().await else {
                    return;
                };
                let targets = self.targets(author);
                let committee = Arc::clone(&self.committee);
                let client = self.cert_sync.clone();
                let internal = self.internal_tx.clone();
                let retry_delay = self.params.sync_retry_delay;
                let gc = self.gc.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut left: HashSet<Digest> = wanted.iter().copied().collect();
                    for (attempt, peers) in targets.into_iter().enumerate() {
                        if attempt > 0 {
                            sleep(retry_delay).await;
                        }
                        let mut found = Vec::new();
                        for peer in peers {
                            let request = Request::for_stream::<CertificateSyncProtocol>(
                                peer,
                                left.iter().copied().collect(),
                            );
                            // Each certificate is checked as it arrives.
                            let take = |c: Certificate| {
                                if left.contains(&c.digest())
                                    && check_header(&c.header, &committee).is_ok()
                                    && c.verify(&committee).is_ok()
                                {
                                    left.remove(&c.digest());
                                    found.push(c);
                                }
                            };
                            stream_until_gc(client.clone(), request, gc.clone(), round, take).await;
                            if left.is_empty() {
                                break;
                            }
                        }
                        if !found.is_empty() {
                            let _ = internal
                                .send(Internal::Fetched {
                                    certificates: found,
                                    requested: None,
                                })
                                .await;
                        }
                        if left.is_empty() {
                            break;
                        }
                    }
                    let _ = internal
                        .send(Internal::Fetched {
                            certificates: Vec::new(),
                            requested: Some(wanted),
                        })
                        .await;
                });
            }
            Fetch::Batches(header_id, round, missing, author) => {
                if !self.batch_fetching.insert(header_id) {
                    return;
                }
                let Ok(permit) = Arc::clone(&self.tasks).acquire_owned().await else {
                    return;
                };
                let targets = self.targets(author);
                let client = self.batch_sync.clone();
                let internal = self.internal_tx.clone();
                let retry_delay = self.params.sync_retry_delay;
                let gc = self.gc.clone();
                let store = Arc::clone(&self.store);
                let stamp = *self.round_tx.borrow();
                tokio::spawn(async move {
                    let _permit = permit;
                    'attempts: for (attempt, peers) in targets.into_iter().enumerate() {
                        if attempt > 0 {
                            sleep(retry_delay).await;
                        }
                        for peer in peers {
                            let left = BatchStore::lock(&store).missing(&missing);
                            if left.is_empty() {
                                break 'attempts;
                            }
                            let request = Request::for_stream::<BatchSyncProtocol>(peer, left);
                            // Each batch is stored as it arrives.
                            let take = |batch: Transactions| {
                                let digest = batch.digest();
                                if missing.contains(&digest) {
                                    BatchStore::lock(&store).insert(digest, batch, stamp);
                                }
                            };
                            stream_until_gc(client.clone(), request, gc.clone(), round, take).await;
                        }
                    }
                    let _ = internal.send(Internal::BatchesReady(header_id)).await;
                });
            }
        }
    }

    /// Whom to ask, attempt by attempt: the author first (unless it is this node), then
    /// `sync_retry_nodes` random others.
    fn targets(&self, author: AuthorityIndex) -> Vec<Vec<PeerId>> {
        let others: Vec<PeerId> = self.others();
        let mut rng = rand::rng();
        let mut attempts = Vec::new();
        if author != self.me
            && let Some(a) = self.committee.authority(author)
        {
            attempts.push(vec![a.peer_id]);
        }
        while attempts.len() < FETCH_ATTEMPTS {
            attempts.push(
                others
                    .sample(&mut rng, self.params.sync_retry_nodes)
                    .copied()
                    .collect(),
            );
        }
        attempts
    }
}

/// A fetch to start.
enum Fetch {
    /// Missing certificates of a round, first from an author.
    Certificates(Vec<Digest>, Round, AuthorityIndex),
    /// Missing batches of a header (id, round), first from its author.
    Batches(Digest, Round, Vec<Digest>, AuthorityIndex),
}
