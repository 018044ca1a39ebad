//! DHT abuse (issue 8, point 7). Hostile peers on plain libp2p (Kademlia and identify):
//! one, then twenty identities send 10,000 records straight to a node, naming made-up
//! publishers; one answers lookups with 20 fake peers; one claims hundreds of addresses in
//! identify. The quotas must hold, honest records stay retrievable, fakes stay out of the
//! routing table, and a peer's addresses stay capped.
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

/// A hostile peer: its id, the fake peers it hands out, and where to send it records to
/// put at the victim.
struct Attacker {
    id: PeerId,
    fakes: Vec<PeerId>,
    records: tokio::sync::mpsc::Sender<Vec<Record>>,
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
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Record>>(1);
    let (id, victim) = (*swarm.local_peer_id(), victim.0);
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        let mut pending = 0usize;
        loop {
            tokio::select! {
                batch = rx.recv(), if pending == 0 => {
                    let Some(batch) = batch else { return };
                    for record in batch {
                        swarm.behaviour_mut().kad.put_record_to(
                            record,
                            std::iter::once(victim),
                            kad::Quorum::One,
                        );
                        pending += 1;
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
                            result: kad::QueryResult::PutRecord(_),
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
        attacker.records.send(batch.to_vec()).await.unwrap();
    }
    // A batch is taken only once the one before is answered: the second empty one goes
    // in once the last real batch is done.
    for _ in 0..2 {
        attacker.records.send(Vec::new()).await.unwrap();
    }
}

fn spam(from: usize, n: usize) -> Vec<Record> {
    (from..from + n)
        .map(|i| {
            let mut record = Record::new(RecordKey::new(&format!("spam-{i}")), vec![7; 64]);
            // A made-up publisher on every record.
            record.publisher = Some(PeerId::random());
            record
        })
        .collect()
}

async fn dht_node(bootstrap: Option<Multiaddr>) -> Node<Echo> {
    let mut config = config(TCP)
        .with_private_addrs(true)
        .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)));
    if let Some(addr) = bootstrap {
        config = config.with_bootstrap(addr);
    }
    echo_node(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_spam_fake_peers_and_address_floods_are_contained() {
    let victim = dht_node(None).await;
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
    let honest_stored = victim.dht().store_stats().await.unwrap().records;

    // One peer, 10,000 records with made-up publishers; then twenty peers, 500 each.
    let target = (victim.local_peer_id(), victim_addr.clone());
    let one = hostile(target.clone(), 0, 0).await;
    send_records(&one, spam(0, 10_000)).await;
    let after_one = victim.dht().store_stats().await.unwrap();
    for k in 0..20 {
        let sybil = hostile(target.clone(), 0, 0).await;
        send_records(&sybil, spam(10_000 + k * 500, 500)).await;
    }
    let after_twenty = victim.dht().store_stats().await.unwrap();
    let mut retrievable = 0;
    for i in 0..20 {
        let got = honest[1].dht().get_record(format!("honest-{i}")).await;
        retrievable += usize::from(got.is_ok_and(|v| v == format!("value-{i}").into_bytes()));
    }
    println!(
        "FIGURE dht-record-spam: 1 peer sent 10,000 records (made-up publishers): the node \
         stored {} of them (quota {QUOTA} per sending peer); 20 peers sent 500 each: {} \
         stored from {} publishers, largest {} (store cap 1,024); honest records {retrievable}/20 \
         retrievable",
        after_one.largest_publisher,
        after_twenty.records - honest_stored,
        after_twenty.publishers,
        after_twenty.largest_publisher,
    );
    assert!(after_one.largest_publisher <= QUOTA, "{after_one:?}");
    assert!(after_one.records <= 20 + QUOTA, "{after_one:?}");
    assert!(after_twenty.largest_publisher <= QUOTA, "{after_twenty:?}");
    assert!(after_twenty.records <= 1024, "{after_twenty:?}");
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
    assert!(liar_addrs <= 16, "{liar_addrs} addresses kept");
    drop(liar);
}
