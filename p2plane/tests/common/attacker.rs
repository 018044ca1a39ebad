//! A hostile peer on plain libp2p (libp2p-stream): it opens raw streams on a node's
//! protocols and writes bytes no P2PLane client would.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{StreamProtocol, swarm::SwarmEvent};
use p2plane::{
    Message, PeerId,
    transport::{TransportConfig, build_swarm, identity},
};

use super::{Echo, within};

pub struct Attacker {
    pub control: libp2p_stream::Control,
    pub node: PeerId,
    /// Connections the attacker saw open and close after the first one.
    pub connections: Arc<AtomicUsize>,
    pub closed: Arc<AtomicUsize>,
}

impl Attacker {
    /// Connects to `addr`; the swarm is driven by a task of its own.
    pub async fn connect(addr: p2plane::Multiaddr) -> Self {
        let mut swarm = build_swarm(identity::generate(), &TransportConfig::default(), |_| {
            libp2p_stream::Behaviour::new()
        })
        .unwrap();
        let control = swarm.behaviour().new_control();
        swarm.dial(addr).unwrap();
        let node = within("attacker connection", async {
            loop {
                if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                    swarm.select_next_some().await
                {
                    return peer_id;
                }
            }
        })
        .await;
        let (connections, closed) = (Arc::new(AtomicUsize::new(1)), Arc::new(AtomicUsize::new(0)));
        let (c, d) = (connections.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => c.fetch_add(1, Ordering::SeqCst),
                    SwarmEvent::ConnectionClosed { .. } => d.fetch_add(1, Ordering::SeqCst),
                    _ => 0,
                };
            }
        });
        Self {
            control,
            node,
            connections,
            closed,
        }
    }

    /// Opens a stream on the echo protocol, writes `bytes`, closes the write side and
    /// returns what the node answered (possibly nothing).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Vec<u8> {
        let protocol = StreamProtocol::new(Echo::PROTOCOL);
        let mut stream = self.control.open_stream(self.node, protocol).await.unwrap();
        // The node may close the stream before all is written; that is fine.
        let _ = stream.write_all(bytes).await;
        let _ = stream.close().await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    }
}

/// The process's resident memory in KiB. A reading that cannot be taken fails the test: a
/// 0 would make every "memory stayed bounded" check pass without checking.
pub fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("memory checks read VmRSS from /proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/self/status has a VmRSS line");
    assert!(kib > 0, "a resident size of 0 KiB is no reading");
    kib
}
