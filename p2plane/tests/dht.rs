//! The DHT over TCP on 127.0.0.1: 30 nodes join through one, find each other by `PeerId`,
//! share records and providers, and refuse records the validator rejects.

mod common;

use common::*;
use futures::{StreamExt as _, stream};
use p2plane::{DhtConfig, DhtError, DhtMode, Event, Node, NodeConfig, Quorum};

fn dht_config() -> NodeConfig {
    dht_config_with(DhtConfig::default())
}

fn dht_config_with(dht: DhtConfig) -> NodeConfig {
    config(TCP).with_private_addrs(true).with_dht(Some(
        dht.with_mode(DhtMode::Server)
            .with_validator(|key, _value| {
                if key.starts_with(b"bad/") {
                    Err("the bad/ namespace is refused".to_owned())
                } else {
                    Ok(())
                }
            }),
    ))
}

/// A node that has joined the DHT through `bootstrap`.
async fn join(bootstrap: &p2plane::Multiaddr, config: NodeConfig) -> Node<Echo> {
    let node = echo_node(config).await;
    let mut events = node.events();
    let boot = within("dial the bootstrap node", node.dial(bootstrap.clone()))
        .await
        .unwrap();
    // Identify tells us the bootstrap node speaks Kademlia, and where it listens.
    wait_event(&mut events, "identify from the bootstrap node", |e| {
        matches!(e, Event::PeerIdentified { peer, .. } if *peer == boot).then_some(())
    })
    .await;
    within("bootstrap", node.dht().bootstrap()).await.unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_discover_each_other_and_share_records_and_providers() {
    let first = echo_node(dht_config()).await;
    let bootstrap = first_addr(&first).await;
    let mut nodes = vec![first];
    for _ in 1..30 {
        nodes.push(join(&bootstrap, dht_config()).await);
    }
    // A second refresh round, now that everyone is there.
    for node in &nodes[1..] {
        within("refresh", node.dht().bootstrap()).await.unwrap();
    }

    // Every routing table holds more than the bootstrap node.
    for (i, node) in nodes.iter().enumerate() {
        let size = node.dht().routing_table_size().await.unwrap();
        assert!(size > 1, "node {i} knows only {size} peers");
    }

    // Every node finds every other node by PeerId.
    let ids: Vec<_> = nodes.iter().map(|n| n.local_peer_id()).collect();
    let lookups: Vec<_> = nodes
        .iter()
        .flat_map(|n| {
            ids.iter()
                .filter(move |id| **id != n.local_peer_id())
                .map(move |id| (n.dht(), *id))
        })
        .collect();
    assert_eq!(lookups.len(), 30 * 29);
    let results: Vec<_> = stream::iter(lookups)
        .map(|(dht, id)| async move { (id, dht.find_peer(id).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    for (id, found) in results {
        let addrs = found.unwrap_or_else(|e| panic!("{id} not found: {e}"));
        assert!(!addrs.is_empty());
    }

    // A record put on one node is read from every other.
    within(
        "put",
        nodes[5].dht().put_record(
            b"greeting".to_vec(),
            b"hello from 5".to_vec(),
            Quorum::Majority,
        ),
    )
    .await
    .unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let value = within("get", node.dht().get_record(b"greeting".to_vec())).await;
        assert_eq!(value.as_deref(), Ok(&b"hello from 5"[..]), "node {i}");
    }
    assert_eq!(
        nodes[9].dht().get_record(b"missing".to_vec()).await,
        Err(DhtError::NotFound)
    );

    // Providers are found.
    within(
        "provide",
        nodes[7].dht().start_providing(b"file-42".to_vec()),
    )
    .await
    .unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let providers = within("providers", node.dht().providers(b"file-42".to_vec()))
            .await
            .unwrap();
        assert!(providers.contains(&ids[7]), "node {i}: {providers:?}");
    }

    // A record the validator rejects is refused with a typed error.
    let refused = nodes[3]
        .dht()
        .put_record(b"bad/x".to_vec(), b"v".to_vec(), Quorum::One)
        .await;
    assert!(matches!(refused, Err(DhtError::Rejected(_))), "{refused:?}");
}

#[tokio::test]
async fn a_node_without_a_dht_says_so() {
    let node = Node::<Echo>::new(config(TCP).with_dht(None)).await.unwrap();
    assert_eq!(node.dht().bootstrap().await, Err(DhtError::Disabled));
    assert_eq!(node.dht().routing_table_size().await, Ok(0));
}

#[tokio::test]
async fn bootstrap_without_peers_is_a_typed_error() {
    let node = Node::<Echo>::new(dht_config()).await.unwrap();
    assert_eq!(node.dht().bootstrap().await, Err(DhtError::NoKnownPeers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_third_of_the_nodes_leaving() {
    let replication = std::num::NonZeroUsize::new(5).unwrap();
    let config = || dht_config_with(DhtConfig::default().with_replication(replication));
    let first = echo_node(config()).await;
    let bootstrap = first_addr(&first).await;
    let mut nodes = vec![first];
    for _ in 1..30 {
        nodes.push(join(&bootstrap, config()).await);
    }
    for node in &nodes[1..] {
        within("refresh", node.dht().bootstrap()).await.unwrap();
    }
    // 100 records, each put by one of the nodes that will stay and stored on 5 nodes.
    for i in 0..100usize {
        let key = format!("record-{i}").into_bytes();
        let put = within(
            "put",
            nodes[i % 20]
                .dht()
                .put_record(key, vec![i as u8; 8], Quorum::All),
        )
        .await;
        assert!(
            put.is_ok() || matches!(put, Err(DhtError::QuorumFailed { .. })),
            "{put:?}"
        );
    }
    // A third of the network leaves.
    for node in nodes.drain(20..) {
        node.shutdown().await;
    }
    let mut found = 0;
    for i in 0..100usize {
        let getter = &nodes[(i * 7 + 3) % 20];
        match within(
            "get",
            getter.dht().get_record(format!("record-{i}").into_bytes()),
        )
        .await
        {
            Ok(value) => {
                assert_eq!(value, vec![i as u8; 8]);
                found += 1;
            }
            Err(e) => eprintln!("record-{i}: {e}"),
        }
    }
    eprintln!("{found} of 100 records found after a third of the nodes left");
    assert!(
        found >= 99,
        "only {found} of 100 records were found after the churn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_a_peer_never_met_through_the_dht() {
    let a = echo_node(dht_config()).await;
    let a_addr = first_addr(&a).await;
    let c = join(&a_addr, dht_config()).await;
    // B knows only A: it dials A and learns that A speaks Kademlia, but looks nothing up.
    let b = echo_node(dht_config()).await;
    let mut events = b.events();
    let a_id = b.dial(a_addr).await.unwrap();
    wait_event(&mut events, "identify from A", |e| {
        matches!(e, Event::PeerIdentified { peer, .. } if *peer == a_id).then_some(())
    })
    .await;
    let c_id = c.local_peer_id();
    assert!(!b.connected_peers().await.unwrap().contains(&c_id));
    assert!(b.peer_store().addresses(&c_id).is_empty());

    let reply = within("request to C", b.client().request(c_id, echo(5))).await;
    assert_eq!(reply, Ok(answer(&echo(5), c_id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_still_holds_the_records_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let persistent = || {
        dht_config_with(DhtConfig::default().with_record_store(dir.path().join("records.redb")))
            .with_key_file(dir.path().join("key"))
    };
    let first = echo_node(dht_config()).await;
    let first_addr = first_addr(&first).await;
    let mut first_events = first.events();
    let keeper = join(&first_addr, persistent()).await;
    let keeper_id = keeper.local_peer_id();
    // Once `first` has identified the keeper, the keeper is in its routing table.
    wait_event(&mut first_events, "identify from the keeper", |e| {
        matches!(e, Event::PeerIdentified { peer, .. } if *peer == keeper_id).then_some(())
    })
    .await;
    // `first` puts a record; the keeper, its only peer, confirms storing it.
    within(
        "put",
        first
            .dht()
            .put_record(b"kept".to_vec(), b"across restarts".to_vec(), Quorum::One),
    )
    .await
    .unwrap();
    keeper.shutdown().await;
    first.shutdown().await;

    // Alone, with no peer to ask, the restarted keeper answers from its own store.
    let keeper = echo_node(persistent()).await;
    assert_eq!(keeper.local_peer_id(), keeper_id);
    let value = within("get", keeper.dht().get_record(b"kept".to_vec()))
        .await
        .unwrap();
    assert_eq!(value, b"across restarts");
    keeper.shutdown().await;
}

#[tokio::test]
async fn a_damaged_record_store_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.redb");
    std::fs::write(&path, b"this is not a redb file").unwrap();
    let config = dht_config_with(DhtConfig::default().with_record_store(&path));
    match Node::<Echo>::new(config).await {
        Err(p2plane::NodeError::RecordStore(DhtError::Store(reason))) => {
            assert!(reason.contains("record store file"), "{reason}");
        }
        other => panic!("expected a record store error, got {other:?}"),
    }
}

/// Issue 16, defect 3: a record the remote refused (store cap, quota, validator) was still
/// acknowledged to the putter, so quorums were over-counted. Now a putter counts only the
/// nodes that stored the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_counts_only_nodes_that_stored_the_record() {
    // B stores one record at most, and refuses the `bad/` namespace; A has no validator.
    let b = echo_node(dht_config_with(
        DhtConfig::default().with_store_limits(1, 1024),
    ))
    .await;
    let a_config = config(TCP)
        .with_private_addrs(true)
        .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)));
    let a = join(&first_addr(&b).await, a_config).await;

    within("first put", a.dht().put_record("first", "1", Quorum::One))
        .await
        .expect("B stores the first record");
    let second = within("second put", a.dht().put_record("second", "2", Quorum::One)).await;
    assert!(
        matches!(second, Err(DhtError::QuorumFailed { success: 0, .. })),
        "B is full, yet the put was counted: {second:?}"
    );
    let refused = within("refused put", a.dht().put_record("bad/x", "3", Quorum::One)).await;
    assert!(
        matches!(refused, Err(DhtError::QuorumFailed { success: 0, .. })),
        "B's validator refused it, yet the put was counted: {refused:?}"
    );
    assert_eq!(b.dht().store_stats().await.unwrap().records, 1);
    assert_eq!(
        within("get", b.dht().get_record("first")).await.unwrap(),
        b"1".to_vec()
    );
}
