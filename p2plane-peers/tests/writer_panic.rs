//! Issue 16, defect 7: a panic in the redb peer store's writer thread (inside the storage
//! engine, say) left `flush()` and the store's drop (the node's shutdown) waiting forever.
//! Its own test binary: failpoints are process-wide.

use std::{sync::mpsc, thread, time::Duration};

use p2plane_core::{PeerStore, PeerStoreError};
use p2plane_peers::RedbPeerStore;

/// How long a call may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(20);

#[test]
fn a_panicking_writer_thread_fails_flush_and_lets_the_store_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbPeerStore::open(dir.path().join("peers.redb")).unwrap();
    let scenario = fail::FailScenario::setup();
    fail::cfg("peers::commit::before", "panic(injected writer panic)").unwrap();

    let peer = libp2p_identity::PeerId::random();
    store.add_peer_with_addr(peer, "/ip4/192.0.2.1/tcp/4001".parse().unwrap());
    let (done, result) = mpsc::sync_channel(2);
    let flushing = thread::spawn(move || {
        let flushed = store.flush();
        let _ = done.send(flushed);
        // Closing the store (as a node's shutdown does) must not hang either.
        drop(store);
        let _ = done.send(Ok(()));
    });
    let flushed = result.recv_timeout(HANG).expect("flush() returned");
    assert!(
        matches!(&flushed, Err(PeerStoreError::Storage(message)) if message.contains("panicked")),
        "{flushed:?}"
    );
    let closed = result.recv_timeout(HANG).expect("the store closed");
    assert!(closed.is_ok());
    flushing.join().unwrap();
    scenario.teardown();
}
