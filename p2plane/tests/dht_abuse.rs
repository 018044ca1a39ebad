//! DHT abuse. Hostile peers on plain libp2p (Kademlia and identify): one, then twenty
//! identities send thousands of records straight to a node, naming themselves or made-up
//! publishers, and announce themselves as providers of thousands of keys; one answers
//! lookups with 20 fake peers; one claims hundreds of addresses in identify. The quotas
//! must hold exactly (neither more nor, for a peer that sent more, less), honest records
//! stay retrievable, the node's own providing keeps working, fakes stay out of the routing
//! table, and a peer's addresses stay capped.
//!
//! Prints `FIGURE` lines (run with `-- --nocapture`).

mod common;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, identify,
    kad::{self, Record, RecordKey},
    swarm::{NetworkBehaviour, SwarmEvent},
};
use p2plane::{
    DhtConfig, DhtMode, Node, PeerId, Quorum,
    transport::{TransportConfig, build_swarm, identity},
};

const KAD: &str = "/p2plane/kad/1.0.0";
const QUOTA: usize = 128;

#[derive(NetworkBehaviour)]
struct Hostile {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
}

/// What a hostile peer is told to send: records to put at the victim, or keys to announce
/// itself as a provider of.
enum Batch {
    Records(Vec<Record>),
    Provide(Vec<RecordKey>),
    /// A peer and the addresses the hostile peer will hand out for it in lookup answers.
    Know(PeerId, Vec<Multiaddr>),
}

/// A hostile peer: its id, the fake peers it hands out, and where to send it batches.
struct Attacker {
    id: PeerId,
    fakes: Vec<PeerId>,
    records: tokio::sync::mpsc::Sender<Batch>,
    /// Lookups (FIND_NODE) the victim sent it, each answered with the fakes.
    asked: Arc<AtomicUsize>,
}

/// A hostile peer connected to `victim`, with its swarm driven by its own task.
async fn hostile(victim: (PeerId, Multiaddr), fakes: usize, claimed_addrs: usize) -> Attacker {
    let mut swarm: Swarm<Hostile> =
        build_swarm(identity::generate(), &TransportConfig::default(), |key| {
            let me = key.public().to_peer_id();
            let mut config = kad::Config::new(StreamProtocol::new(KAD));
            config.set_query_timeout(Duration::from_secs(5));
            let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), config);
            kad.set_mode(Some(kad::Mode::Server));
            Hostile {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/ipfs/id/1.0.0".into(),
                    key.public(),
                )),
            }
        })
        .unwrap();
    // Fake peers near everything: unreachable addresses, made-up ids.
    let fakes: Vec<PeerId> = (0..fakes).map(|_| PeerId::random()).collect();
    for (i, fake) in fakes.iter().enumerate() {
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 1 + i).parse().unwrap();
        swarm.behaviour_mut().kad.add_address(fake, addr);
    }
    for i in 0..claimed_addrs {
        let addr: Multiaddr = format!("/ip4/127.0.{}.{}/tcp/9", i / 250, 1 + i % 250)
            .parse()
            .unwrap();
        swarm.add_external_address(addr);
    }
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    swarm
        .behaviour_mut()
        .kad
        .add_address(&victim.0, victim.1.clone());
    swarm.dial(victim.1).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(1);
    let (id, victim) = (*swarm.local_peer_id(), victim.0);
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        let mut pending = 0usize;
        loop {
            tokio::select! {
                batch = rx.recv(), if pending == 0 => {
                    match batch {
                        None => return,
                        Some(Batch::Records(records)) => {
                            for record in records {
                                swarm.behaviour_mut().kad.put_record_to(
                                    record,
                                    std::iter::once(victim),
                                    kad::Quorum::One,
                                );
                                pending += 1;
                            }
                        }
                        Some(Batch::Know(peer, addrs)) => {
                            for addr in addrs {
                                swarm.behaviour_mut().kad.add_address(&peer, addr);
                            }
                        }
                        Some(Batch::Provide(keys)) => {
                            for key in keys {
                                if swarm.behaviour_mut().kad.start_providing(key).is_ok() {
                                    pending += 1;
                                }
                            }
                        }
                    }
                }
                event = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(HostileEvent::Kad(kad::Event::InboundRequest {
                        request: kad::InboundRequest::FindNode { .. },
                    })) = &event
                    {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if let SwarmEvent::Behaviour(HostileEvent::Kad(
                        kad::Event::OutboundQueryProgressed {
                            result:
                                kad::QueryResult::PutRecord(_) | kad::QueryResult::StartProviding(_),
                            step,
                            ..
                        },
                    )) = event
                        && step.last
                    {
                        pending -= 1;
                    }
                }
            }
        }
    });
    Attacker {
        id,
        fakes,
        records: tx,
        asked,
    }
}

/// Sends `records` through `attacker` in batches of 100, each batch once the previous is
/// answered.
async fn send_records(attacker: &Attacker, records: Vec<Record>) {
    for batch in records.chunks(100) {
        attacker
            .records
            .send(Batch::Records(batch.to_vec()))
            .await
            .unwrap();
    }
    done(attacker).await;
}

/// Has `attacker` announce itself as a provider of `keys`, in batches of 100.
async fn send_provides(attacker: &Attacker, keys: Vec<RecordKey>) {
    for batch in keys.chunks(100) {
        attacker
            .records
            .send(Batch::Provide(batch.to_vec()))
            .await
            .unwrap();
    }
    done(attacker).await;
}

/// Returns once the attacker's last batch is answered: a batch is taken only once the one
/// before is, so the second empty one goes in once the last real batch is done.
async fn done(attacker: &Attacker) {
    for _ in 0..2 {
        attacker
            .records
            .send(Batch::Records(Vec::new()))
            .await
            .unwrap();
    }
}

/// Records naming made-up publishers (`claimed`), or naming the sender itself.
fn spam(from: usize, n: usize, claimed: bool) -> Vec<Record> {
    (from..from + n)
        .map(|i| {
            let mut record = Record::new(RecordKey::new(&format!("spam-{i}")), vec![7; 64]);
            record.publisher = claimed.then(PeerId::random);
            record
        })
        .collect()
}

fn provider_keys(from: usize, n: usize) -> Vec<RecordKey> {
    (from..from + n)
        .map(|i| RecordKey::new(&format!("provided-{i}")))
        .collect()
}

/// Honest DHT operations and how many succeeded.
#[derive(Debug)]
struct Traffic {
    ops: usize,
    ok: usize,
}

/// Honest DHT operations, one after another, for as long as `flooding` holds: gets of the
/// records `honest-0` .. `honest-19` through `dhts[3]` (a DHT client) and, with `write`, puts through
/// `dhts[2]` and provider announcements through `dhts[0]` in turn. Each has 20 s.
async fn honest_traffic(
    dhts: &[p2plane::Dht],
    flooding: &std::sync::atomic::AtomicBool,
    write: bool,
) -> Traffic {
    let mut traffic = Traffic { ops: 0, ok: 0 };
    while flooding.load(Ordering::SeqCst) {
        let n = traffic.ops;
        let kind = if write { n % 3 } else { 0 };
        let outcome = match kind {
            0 => {
                let i = n % 20;
                let got = tokio::time::timeout(WAIT, dhts[3].get_record(format!("honest-{i}")));
                match got.await {
                    Ok(Ok(value)) if value == format!("value-{i}").into_bytes() => Ok(()),
                    other => Err(format!("get: {other:?}")),
                }
            }
            1 => {
                let put = dhts[2].put_record(format!("during-{n}"), "v", Quorum::One);
                match tokio::time::timeout(WAIT, put).await {
                    Ok(Ok(())) => Ok(()),
                    other => Err(format!("put: {other:?}")),
                }
            }
            _ => {
                let provide = dhts[0].start_providing(format!("during-{n}"));
                match tokio::time::timeout(WAIT, provide).await {
                    Ok(Ok(())) => Ok(()),
                    other => Err(format!("provide: {other:?}")),
                }
            }
        };
        traffic.ops += 1;
        match outcome {
            Ok(()) => traffic.ok += 1,
            Err(e) => eprintln!("honest operation {n} failed: {e}"),
        }
    }
    traffic
}

async fn dht_node(bootstrap: Option<Multiaddr>) -> Node<Echo> {
    echo_node(dht_config(bootstrap)).await
}

fn dht_config(bootstrap: Option<Multiaddr>) -> p2plane::NodeConfig {
    let mut config = config(TCP)
        .with_private_addrs(true)
        .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)));
    if let Some(addr) = bootstrap {
        config = config.with_bootstrap(addr);
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_spam_fake_peers_and_address_floods_are_contained() {
    // A peer store that keeps 64 addresses per peer, so that what caps a peer's addresses
    // below is identify's cap of 16 per message, not the store's.
    let victim = echo_node(dht_config(None).with_peer_store(std::sync::Arc::new(
        p2plane::peers::MemoryPeerStore::new(10_000, 64),
    )))
    .await;
    let victim_addr = first_addr(&victim).await;
    let mut honest = Vec::new();
    for _ in 0..3 {
        honest.push(dht_node(Some(victim_addr.clone())).await);
    }
    within("routing tables to fill", async {
        for node in &honest {
            while node.dht().routing_table_size().await.unwrap() < 3 {
                let _ = node.dht().bootstrap().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    for i in 0..20 {
        honest[0]
            .dht()
            .put_record(format!("honest-{i}"), format!("value-{i}"), Quorum::One)
            .await
            .expect("honest put");
    }
    // A put with quorum one returns at the first store; the victim's may follow.
    let honest_stored = within("the victim to store the honest records", async {
        loop {
            let stored = victim.dht().store_stats().await.unwrap().records;
            if stored >= 20 {
                return stored;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(honest_stored, 20, "the honest records are stored");

    // One peer: 2,000 records naming itself, then 2,000 naming made-up publishers, then
    // announcing itself as provider of 2,000 keys.
    let target = (victim.local_peer_id(), victim_addr.clone());
    // Honest nodes only read during this flood: their puts and provides would move the
    // exact figures asserted below. The reader is a DHT client, so that its gets are
    // lookups over the network, not reads of a store the puts filled.
    let reader = echo_node(
        config(TCP)
            .with_private_addrs(true)
            .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Client)))
            .with_bootstrap(victim_addr.clone()),
    )
    .await;
    within("the reader's routing table to fill", async {
        while reader.dht().routing_table_size().await.unwrap() < 4 {
            let _ = reader.dht().bootstrap().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut dhts: Vec<_> = honest.iter().map(|node| node.dht()).collect();
    dhts.push(reader.dht());
    let one = hostile(target.clone(), 0, 0).await;
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = async {
        send_records(&one, spam(0, 2_000, false)).await;
        let own_spam = victim.dht().store_stats().await.unwrap();
        send_records(&one, spam(2_000, 2_000, true)).await;
        let claimed_spam = victim.dht().store_stats().await.unwrap();
        send_provides(&one, provider_keys(0, 2_000)).await;
        let after_one = victim.dht().store_stats().await.unwrap();
        flooding.store(false, Ordering::SeqCst);
        (own_spam, claimed_spam, after_one)
    };
    let ((own_spam, claimed_spam, after_one), one_peer) =
        tokio::join!(flood, honest_traffic(&dhts, &flooding, false));
    // The node's own providing still works during the flood.
    victim
        .dht()
        .start_providing("victim's own file")
        .await
        .expect("the victim provides");
    // Twenty more peers, one after another, 300 records and 300 provider announcements
    // each, while the honest nodes go on getting, putting and providing.
    flooding.store(true, Ordering::SeqCst);
    let flood = {
        let (flooding, target) = (flooding.clone(), target.clone());
        async move {
            for k in 0..20 {
                let sybil = hostile(target.clone(), 0, 0).await;
                send_records(&sybil, spam(10_000 + k * 300, 300, false)).await;
                send_provides(&sybil, provider_keys(10_000 + k * 300, 300)).await;
            }
            flooding.store(false, Ordering::SeqCst);
        }
    };
    let ((), twenty) = tokio::join!(flood, honest_traffic(&dhts, &flooding, true));
    let after_twenty = victim.dht().store_stats().await.unwrap();
    println!(
        "FIGURE dht-honest-during-flood: while one peer sent its 6,000: honest gets \
         {}/{}; while twenty peers, one after another, sent theirs: honest gets, puts and \
         provides {}/{}",
        one_peer.ok, one_peer.ops, twenty.ok, twenty.ops
    );
    for traffic in [&one_peer, &twenty] {
        assert!(
            traffic.ok * 100 >= traffic.ops * 99,
            "honest DHT operations: {traffic:?}"
        );
    }
    // An honest node provides a key during (after) the floods; another finds it.
    honest[0]
        .dht()
        .start_providing("honest file")
        .await
        .expect("the honest node provides");
    let found = honest[1].dht().providers("honest file").await.unwrap();
    let mut retrievable = 0;
    for i in 0..20 {
        let got = dhts[1].get_record(format!("honest-{i}")).await;
        retrievable += usize::from(got.is_ok_and(|v| v == format!("value-{i}").into_bytes()));
    }
    println!(
        "FIGURE dht-record-spam: 1 peer sent 2,000 records naming itself: {} stored (quota \
         {QUOTA}); 2,000 naming made-up publishers: {} stored (half the store); 2,000 provider \
         announcements: {} stored (quota {QUOTA}); 20 more peers, 300 records and 300 \
         announcements each: {} records in all (cap 1,024), largest publisher {}, {} provider \
         records, largest provider {}; honest records {retrievable}/20 retrievable; the \
         victim's own and an honest node's providing worked ({} providers found)",
        own_spam.records - honest_stored,
        claimed_spam.replicated,
        after_one.largest_provider,
        after_twenty.records,
        after_twenty.largest_publisher,
        after_twenty.provider_records,
        after_twenty.largest_provider,
        found.len(),
    );
    // Exact figures: a quota that stored less than it allows is as wrong as one that
    // stored more.
    assert_eq!(own_spam.records - honest_stored, QUOTA, "{own_spam:?}");
    assert_eq!(claimed_spam.replicated, 512, "{claimed_spam:?}");
    assert_eq!(
        claimed_spam.records,
        honest_stored + QUOTA + 512,
        "{claimed_spam:?}"
    );
    assert_eq!(after_one.largest_provider, QUOTA, "{after_one:?}");
    assert_eq!(after_one.own_provider_records, 0, "{after_one:?}");
    assert_eq!(after_twenty.records, 1024, "{after_twenty:?}");
    assert_eq!(after_twenty.largest_publisher, QUOTA, "{after_twenty:?}");
    assert_eq!(after_twenty.largest_provider, QUOTA, "{after_twenty:?}");
    assert_eq!(after_twenty.own_provider_records, 1, "{after_twenty:?}");
    assert!(found.contains(&honest[0].local_peer_id()), "{found:?}");
    assert_eq!(retrievable, 20);

    // A peer that answers lookups with 20 fake peers, and claims 300 addresses.
    let liar = hostile(target, 20, 300).await;
    within("the liar to be identified", async {
        while victim.peer_store().addresses(&liar.id).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Lookups aimed at the fakes' ids: the liar is asked for them and names them.
    for fake in liar.fakes.iter().take(5) {
        let _ = victim.dht().closest_peers(*fake).await;
    }
    let table: HashSet<PeerId> = victim
        .dht()
        .routing_table_peers()
        .await
        .unwrap()
        .into_iter()
        .collect();
    let fakes_in_table = liar.fakes.iter().filter(|f| table.contains(f)).count();
    let liar_addrs = victim.peer_store().addresses(&liar.id).len();
    println!(
        "FIGURE dht-poisoning: after 5 lookups through a peer answering with 20 fake peers, \
         asked {} times, {fakes_in_table} fakes in the routing table ({} entries); a peer \
         claiming 300 addresses: {liar_addrs} kept",
        liar.asked.load(Ordering::Relaxed),
        table.len()
    );
    assert!(
        liar.asked.load(Ordering::Relaxed) > 0,
        "the victim's lookups asked the liar"
    );
    assert_eq!(fakes_in_table, 0);
    assert_eq!(
        liar_addrs, 16,
        "identify takes 16 addresses of the 300 claimed"
    );
    drop(liar);
}

/// A lookup answer that names a real peer with made-up addresses beside its real one: the
/// request reaches the peer through the real address, and only that address, proved by the
/// connection, enters the victim's peer store (before issue 16, every address of the answer
/// was stored as if verified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_from_a_lookup_enter_the_peer_store_only_once_proved() {
    let victim = dht_node(None).await;
    let victim_addr = first_addr(&victim).await;
    let target = dht_node(None).await;
    let target_addr = first_addr(&target).await;
    let target_id = target.local_peer_id();
    let liar = hostile((victim.local_peer_id(), victim_addr), 0, 0).await;
    within("the liar in the victim's routing table", async {
        while victim.dht().routing_table_size().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Made-up addresses that accept TCP and then say nothing: a dial to one neither
    // succeeds nor fails while the real one connects, so the lookup's answer keeps them (a
    // refused address would be dropped from the answer by Kademlia itself).
    let mut silent = Vec::new();
    let mut bogus: Vec<Multiaddr> = Vec::new();
    for _ in 0..12 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        bogus.push(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap());
        silent.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        }));
    }
    let mut told = vec![target_addr.clone()];
    told.extend(bogus.iter().cloned());
    liar.records
        .send(Batch::Know(target_id, told))
        .await
        .unwrap();
    done(&liar).await;
    assert!(victim.peer_store().addresses(&target_id).is_empty());

    let reply = within(
        "a request to a peer only the liar knows",
        victim.client().request(target_id, echo(1)),
    )
    .await;
    assert_eq!(reply, Ok(answer(&echo(1), target_id)));
    let stored = victim.peer_store().addresses(&target_id);
    let bogus_stored = stored
        .iter()
        .filter(|a| {
            let bare: Multiaddr = a
                .iter()
                .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                .collect();
            bogus.contains(&bare)
        })
        .count();
    println!(
        "FIGURE dht-lookup-addresses: a lookup answer gave 13 addresses (12 made up): \
         {} stored, {bogus_stored} of them made up",
        stored.len()
    );
    assert_eq!(bogus_stored, 0, "made-up addresses were stored: {stored:?}");
    let proved = target_addr.with_p2p(target_id).unwrap();
    assert_eq!(stored, vec![proved], "the proved address is stored");
    for task in silent {
        task.abort();
    }
}
