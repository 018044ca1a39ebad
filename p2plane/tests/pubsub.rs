//! Typed publish/subscribe over TCP on loopback: delivery to every subscriber exactly once,
//! and validation that stops a bad message where it is first checked.

mod common;

use std::{collections::HashSet, time::Duration};

use common::{TCP, config, first_addr, wait_event, within};
use p2plane::{
    Event, Message, Node, NodeConfig, PeerId, PubsubConfig, PubsubError, Subscription, Topic,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Note {
    from: u32,
    text: String,
}

impl Message for Note {
    const PROTOCOL: &'static str = "/p2plane-test/note/1";
    fn validate(&self) -> Result<(), String> {
        if self.text.is_empty() {
            Err("empty note".into())
        } else {
            Ok(())
        }
    }
}

/// The board: notes must not be empty.
struct Board;
impl Topic for Board {
    const NAME: &'static str = "p2plane-test/board";
    type Message = Note;
}

/// The same topic seen by a careless node: the same shape, no validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AnyNote {
    from: u32,
    text: String,
}
impl Message for AnyNote {
    const PROTOCOL: &'static str = "/p2plane-test/any-note/1";
}
struct CarelessBoard;
impl Topic for CarelessBoard {
    const NAME: &'static str = Board::NAME;
    type Message = AnyNote;
}

fn pubsub_config() -> NodeConfig {
    config(TCP)
        .with_private_addrs(true)
        .with_dht(None)
        .with_pubsub(Some(PubsubConfig {
            heartbeat_interval: Duration::from_millis(100),
            ..PubsubConfig::default()
        }))
}

async fn node() -> Node<Note> {
    Node::<Note>::new(pubsub_config()).await.unwrap()
}

/// Waits until `node`'s mesh for `T` holds exactly `peers` (polled: gossipsub builds the
/// mesh on its heartbeat and reports no event for it).
async fn mesh_is<T: Topic>(node: &Node<Note>, peers: &HashSet<PeerId>) {
    within("the mesh to form", async {
        loop {
            let mesh: HashSet<_> = node.topic_peers::<T>().await.unwrap().into_iter().collect();
            if &mesh == peers {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_every_subscriber_receives_every_message_once() {
    const NODES: usize = 10;
    const EACH: u32 = 3;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(node().await);
    }
    let mut subscriptions: Vec<Subscription<Board>> = Vec::new();
    for node in &nodes {
        subscriptions.push(node.subscribe::<Board>().await.unwrap());
    }
    // A ring with a chord to node 0: every node has two or three neighbours, and messages
    // must be forwarded to reach most nodes.
    let addrs: Vec<_> = futures::future::join_all(nodes.iter().map(first_addr)).await;
    let mut neighbours = vec![HashSet::new(); NODES];
    for i in 0..NODES {
        let next = (i + 1) % NODES;
        nodes[i].dial(addrs[next].clone()).await.unwrap();
        neighbours[i].insert(nodes[next].local_peer_id());
        neighbours[next].insert(nodes[i].local_peer_id());
        if i % 3 == 1 {
            nodes[i].dial(addrs[0].clone()).await.unwrap();
            neighbours[i].insert(nodes[0].local_peer_id());
            neighbours[0].insert(nodes[i].local_peer_id());
        }
    }
    for (node, peers) in nodes.iter().zip(&neighbours) {
        mesh_is::<Board>(node, peers).await;
    }

    let mut sent = HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        for n in 0..EACH {
            let note = Note {
                from: i as u32,
                text: format!("note {n} from node {i}"),
            };
            node.publish::<Board>(&note).await.unwrap();
            sent.insert(note);
        }
    }
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        let expected: HashSet<_> = sent
            .iter()
            .filter(|n| n.from != i as u32)
            .cloned()
            .collect();
        let mut received = Vec::new();
        within("every note", async {
            while received.iter().collect::<HashSet<_>>().len() < expected.len() {
                let r = subscription.recv().await.expect("subscribed");
                assert_eq!(
                    r.author,
                    Some(nodes[r.message.from as usize].local_peer_id())
                );
                received.push(r.message);
            }
        })
        .await;
        let distinct: HashSet<_> = received.iter().cloned().collect();
        assert_eq!(distinct, expected, "node {i} received the others' notes");
        assert_eq!(
            received.len(),
            expected.len(),
            "node {i} received a note twice"
        );
        assert_eq!(subscription.dropped(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_fails_validation_goes_no_further() {
    // a — b — c: b validates; a and c do not.
    let (a, b, c) = (node().await, node().await, node().await);
    let _b_board = b.subscribe::<Board>().await.unwrap();
    let mut c_board = c.subscribe::<CarelessBoard>().await.unwrap();
    let mut b_events = b.events();
    let b_addr = first_addr(&b).await;
    a.dial(b_addr.clone()).await.unwrap();
    c.dial(b_addr).await.unwrap();
    mesh_is::<Board>(&b, &HashSet::from([c.local_peer_id()])).await;
    mesh_is::<CarelessBoard>(&c, &HashSet::from([b.local_peer_id()])).await;

    let bad = AnyNote {
        from: 0,
        text: String::new(),
    };
    // `a` learns of b's subscription shortly after connecting.
    within("a's first publish", async {
        loop {
            match a.publish::<CarelessBoard>(&bad).await {
                Ok(()) => return,
                Err(PubsubError::NoPeers) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("publish failed: {e}"),
            }
        }
    })
    .await;
    let good = AnyNote {
        from: 0,
        text: "fine".into(),
    };
    a.publish::<CarelessBoard>(&good).await.unwrap();

    let (peer, reason) = wait_event(&mut b_events, "b's rejection", |e| match e {
        Event::MessageRejected { peer, reason, .. } => Some((*peer, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(peer, a.local_peer_id());
    assert!(reason.contains("empty note"), "{reason}");
    // c gets the good note, and it is the first thing c gets: b did not forward the bad one.
    let first = within("c's note", c_board.recv()).await.unwrap();
    assert_eq!(first.message, good);
    assert_eq!(first.via, b.local_peer_id());
    assert_eq!(first.author, Some(a.local_peer_id()));

    // A node checks its own messages too, and sends nothing when they fail.
    let empty = Note {
        from: 1,
        text: String::new(),
    };
    assert_eq!(
        b.publish::<Board>(&empty).await,
        Err(PubsubError::Rejected("empty note".into()))
    );
}

#[tokio::test]
async fn without_pubsub_the_calls_say_so() {
    let node = Node::<Note>::new(config(TCP).with_dht(None)).await.unwrap();
    assert!(matches!(
        node.subscribe::<Board>().await,
        Err(PubsubError::Disabled)
    ));
    let note = Note {
        from: 0,
        text: "x".into(),
    };
    assert_eq!(
        node.publish::<Board>(&note).await,
        Err(PubsubError::Disabled)
    );
}
