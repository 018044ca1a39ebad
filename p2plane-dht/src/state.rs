use std::{
    collections::{HashMap, HashSet},
    num::NonZeroUsize,
};

use futures::channel::oneshot;
use libp2p::{
    Multiaddr, PeerId,
    kad::{
        self, GetClosestPeersError, GetProvidersOk, GetRecordOk, QueryId, QueryResult, RecordKey,
    },
};

use crate::{error::DhtError, store::RecordValidator};

/// How many nodes must confirm a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// One.
    One,
    /// More than half of the replication factor.
    Majority,
    /// All of the replication factor.
    All,
    /// This many.
    N(NonZeroUsize),
}

impl From<Quorum> for kad::Quorum {
    fn from(q: Quorum) -> Self {
        match q {
            Quorum::One => kad::Quorum::One,
            Quorum::Majority => kad::Quorum::Majority,
            Quorum::All => kad::Quorum::All,
            Quorum::N(n) => kad::Quorum::N(n),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, DhtError>>;

/// A peer found through the DHT, and what finding it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPeer {
    /// Its addresses.
    pub addresses: Vec<Multiaddr>,
    /// Kademlia requests the lookup sent.
    pub requests: u32,
}

/// What a DHT handle asks of the event loop.
#[derive(Debug)]
pub enum DhtCommand {
    /// Refreshes the routing table (a lookup of ourselves and of random keys).
    Bootstrap(Reply<()>),
    /// The peers closest to `key`, with their addresses.
    ClosestPeers(Vec<u8>, Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
    /// The addresses of `peer`, found through the DHT, with what the lookup cost.
    FindPeer(PeerId, Reply<FoundPeer>),
    /// Stores a record on the nodes closest to its key.
    PutRecord(Vec<u8>, Vec<u8>, Quorum, Reply<()>),
    /// Finds a record.
    GetRecord(Vec<u8>, Reply<Vec<u8>>),
    /// Announces that this node provides `key`.
    StartProviding(Vec<u8>, Reply<()>),
    /// Finds the nodes that provide `key`.
    GetProviders(Vec<u8>, Reply<HashSet<PeerId>>),
    /// How many peers the routing table holds.
    RoutingTableSize(oneshot::Sender<usize>),
    /// The peers the routing table holds.
    RoutingTablePeers(oneshot::Sender<Vec<PeerId>>),
    /// What the local record store holds.
    StoreStats(oneshot::Sender<crate::store::StoreStats>),
}

impl DhtCommand {
    /// Answers the command with [`DhtError::Disabled`] (the node has no DHT).
    pub fn refuse(self) {
        match self {
            DhtCommand::Bootstrap(r)
            | DhtCommand::PutRecord(_, _, _, r)
            | DhtCommand::StartProviding(_, r) => {
                let _ = r.send(Err(DhtError::Disabled));
            }
            DhtCommand::ClosestPeers(_, r) => {
                let _ = r.send(Err(DhtError::Disabled));
            }
            DhtCommand::FindPeer(_, r) => {
                let _ = r.send(Err(DhtError::Disabled));
            }
            DhtCommand::GetRecord(_, r) => {
                let _ = r.send(Err(DhtError::Disabled));
            }
            DhtCommand::GetProviders(_, r) => {
                let _ = r.send(Err(DhtError::Disabled));
            }
            DhtCommand::RoutingTableSize(r) => {
                let _ = r.send(0);
            }
            DhtCommand::RoutingTablePeers(r) => {
                let _ = r.send(Vec::new());
            }
            DhtCommand::StoreStats(r) => {
                let _ = r.send(crate::store::StoreStats::default());
            }
        }
    }
}

enum Pending {
    Bootstrap(Reply<()>),
    Closest(Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
    FindPeer(PeerId, Reply<FoundPeer>),
    Put(Reply<()>),
    Get(Reply<Vec<u8>>),
    StartProviding(Reply<()>),
    Providers(Reply<HashSet<PeerId>>, HashSet<PeerId>),
}

/// The DHT's state machine: pending queries by id, and the record validator. The node's
/// event loop calls [`DhtState::on_command`] and [`DhtState::on_event`]; nothing here
/// waits.
pub struct DhtState {
    pending: HashMap<QueryId, Pending>,
    validator: Option<RecordValidator>,
}

impl std::fmt::Debug for DhtState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtState")
            .field("pending", &self.pending.len())
            .finish()
    }
}

type Kad = kad::Behaviour<crate::store::DhtStore>;

impl DhtState {
    /// A state machine that checks records with `validator`.
    pub fn new(validator: Option<RecordValidator>) -> Self {
        Self {
            pending: HashMap::new(),
            validator,
        }
    }

    fn check(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.validator.as_ref().map_or(Ok(()), |v| v(key, value))
    }

    /// Starts the query a handle asked for.
    pub fn on_command(&mut self, kad: &mut Kad, command: DhtCommand) {
        match command {
            DhtCommand::Bootstrap(reply) => match kad.bootstrap() {
                Ok(id) => {
                    self.pending.insert(id, Pending::Bootstrap(reply));
                }
                Err(_) => {
                    let _ = reply.send(Err(DhtError::NoKnownPeers));
                }
            },
            DhtCommand::ClosestPeers(key, reply) => {
                let id = kad.get_closest_peers(key);
                self.pending.insert(id, Pending::Closest(reply));
            }
            DhtCommand::FindPeer(peer, reply) => {
                let id = kad.get_closest_peers(peer);
                self.pending.insert(id, Pending::FindPeer(peer, reply));
            }
            DhtCommand::PutRecord(key, value, quorum, reply) => {
                if let Err(reason) = self.check(&key, &value) {
                    let _ = reply.send(Err(DhtError::Rejected(reason)));
                    return;
                }
                match kad.put_record(kad::Record::new(key, value), quorum.into()) {
                    Ok(id) => {
                        self.pending.insert(id, Pending::Put(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::Store(e.to_string())));
                    }
                }
            }
            DhtCommand::GetRecord(key, reply) => {
                let id = kad.get_record(RecordKey::new(&key));
                self.pending.insert(id, Pending::Get(reply));
            }
            DhtCommand::StartProviding(key, reply) => {
                match kad.start_providing(RecordKey::new(&key)) {
                    Ok(id) => {
                        self.pending.insert(id, Pending::StartProviding(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::Store(e.to_string())));
                    }
                }
            }
            DhtCommand::GetProviders(key, reply) => {
                let id = kad.get_providers(RecordKey::new(&key));
                self.pending
                    .insert(id, Pending::Providers(reply, HashSet::new()));
            }
            DhtCommand::RoutingTableSize(reply) => {
                let _ = reply.send(kad.kbuckets().map(|b| b.num_entries()).sum());
            }
            DhtCommand::RoutingTablePeers(reply) => {
                let peers = kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let _ = reply.send(peers);
            }
            DhtCommand::StoreStats(reply) => {
                let _ = reply.send(kad.store_mut().stats());
            }
        }
    }

    /// Feeds a Kademlia event: answers finished queries. (Inbound records are checked by the
    /// store as Kademlia stores them; see [`crate::Kademlia`].)
    pub fn on_event(&mut self, kad: &mut Kad, event: kad::Event) {
        if let kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            stats,
        } = event
        {
            self.on_progress(kad, id, result, step.last, stats.num_requests());
        }
    }

    fn on_progress(
        &mut self,
        kad: &mut Kad,
        id: QueryId,
        result: QueryResult,
        last: bool,
        requests: u32,
    ) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        // `Some(p)` keeps waiting for further progress of the same query.
        let keep = match (pending, result) {
            (Pending::Bootstrap(reply), QueryResult::Bootstrap(result)) => {
                if last || result.is_err() {
                    let _ = reply.send(result.map(|_| ()).map_err(|_| DhtError::Timeout));
                    None
                } else {
                    Some(Pending::Bootstrap(reply))
                }
            }
            (Pending::Closest(reply), QueryResult::GetClosestPeers(result)) => {
                let peers = match result {
                    Ok(ok) => Ok(ok.peers),
                    Err(GetClosestPeersError::Timeout { peers, .. }) if !peers.is_empty() => {
                        Ok(peers)
                    }
                    Err(_) => Err(DhtError::Timeout),
                };
                let _ = reply
                    .send(peers.map(|p| p.into_iter().map(|i| (i.peer_id, i.addrs)).collect()));
                None
            }
            (Pending::FindPeer(target, reply), QueryResult::GetClosestPeers(result)) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let found = peers
                    .into_iter()
                    .find(|p| p.peer_id == target)
                    .map(|p| p.addrs);
                let found = found.filter(|a| !a.is_empty()).map(|addresses| FoundPeer {
                    addresses,
                    requests,
                });
                let _ = reply.send(found.ok_or(DhtError::NotFound));
                None
            }
            (Pending::Put(reply), QueryResult::PutRecord(result)) => {
                let _ = reply.send(result.map(|_| ()).map_err(|e| match e {
                    kad::PutRecordError::QuorumFailed {
                        success, quorum, ..
                    } => DhtError::QuorumFailed {
                        success: success.len(),
                        quorum: quorum.get(),
                    },
                    _ => DhtError::Timeout,
                }));
                None
            }
            (Pending::Get(reply), QueryResult::GetRecord(result)) => match result {
                Ok(GetRecordOk::FoundRecord(found)) => {
                    let record = found.record;
                    if self.check(record.key.as_ref(), &record.value).is_ok() {
                        let _ = reply.send(Ok(record.value));
                        if let Some(mut query) = kad.query_mut(&id) {
                            query.finish();
                        }
                        None
                    } else if last {
                        let _ = reply.send(Err(DhtError::NotFound));
                        None
                    } else {
                        Some(Pending::Get(reply))
                    }
                }
                Ok(GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {
                    let _ = reply.send(Err(DhtError::NotFound));
                    None
                }
                Err(kad::GetRecordError::NotFound { .. }) => {
                    let _ = reply.send(Err(DhtError::NotFound));
                    None
                }
                Err(_) => {
                    let _ = reply.send(Err(DhtError::Timeout));
                    None
                }
            },
            (Pending::StartProviding(reply), QueryResult::StartProviding(result)) => {
                let _ = reply.send(result.map(|_| ()).map_err(|_| DhtError::Timeout));
                None
            }
            (Pending::Providers(reply, mut found), QueryResult::GetProviders(result)) => {
                match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        found.extend(providers);
                        if last {
                            let _ = reply.send(Ok(found));
                            None
                        } else {
                            Some(Pending::Providers(reply, found))
                        }
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {
                        let _ = reply.send(if found.is_empty() {
                            Err(DhtError::NotFound)
                        } else {
                            Ok(found)
                        });
                        None
                    }
                    Err(_) => {
                        let _ = reply.send(if found.is_empty() {
                            Err(DhtError::Timeout)
                        } else {
                            Ok(found)
                        });
                        None
                    }
                }
            }
            // Progress of a query we did not start from a handle (periodic bootstrap,
            // republishing) or that does not match: nothing to answer.
            (other, _) => (!last).then_some(other),
        };
        if let Some(pending) = keep {
            self.pending.insert(id, pending);
        }
    }
}
