//! The conformance suite every [`PeerStore`] should pass.
//!
//! Call [`run`] from a test of your store with a function that makes a fresh, empty store
//! and the store's peer capacity; call [`run_persistent`] too if the store keeps its
//! contents across reopening. Each check panics with a message naming the rule it found
//! broken.
//!
//! ```
//! use p2plane_peers::{MemoryPeerStore, conformance};
//!
//! conformance::run(|| MemoryPeerStore::new(50, 8), 50);
//! ```

use std::{
    sync::Arc,
    thread,
    time::{Duration, SystemTime},
};

use p2plane_core::{DialOutcome, Multiaddr, PeerId, PeerStore};

/// The most addresses per peer any conforming store may keep.
pub const MAX_ADDRS_PER_PEER_ALLOWED: usize = 64;

fn addr(i: u32) -> Multiaddr {
    format!(
        "/ip4/10.{}.{}.{}/tcp/4001",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
    .parse()
    .expect("valid address")
}

fn peer(seed: u8) -> PeerId {
    // Deterministic ids: an identity multihash of the seed.
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&[seed; 32]);
    PeerId::from_bytes(&bytes).expect("valid peer id")
}

/// Runs every check on fresh stores from `make`. `max_peers` is the capacity the stores
/// were made with (the suite checks they keep no more).
pub fn run<S: PeerStore>(make: impl Fn() -> S, max_peers: usize) {
    empty_store(&make());
    seed_methods(&make());
    addresses_are_most_recent_first_without_duplicates(&make());
    addresses_per_peer_are_bounded(&make());
    peers_are_bounded(&make(), max_peers);
    outcomes_count_failures_until_a_success(&make());
    protocols_are_replaced(&make());
    bans_expire_and_lift(&make());
    removal_forgets_everything(&make());
    concurrent_writers_lose_nothing(make());
}

/// Checks that what was flushed survives closing and reopening: `open` opens the same
/// storage each time it is called (the previous store is dropped first).
pub fn run_persistent<S: PeerStore>(open: impl Fn() -> S) {
    let (a, b) = (peer(1), peer(2));
    let until = SystemTime::now() + Duration::from_secs(3600);
    {
        let store = open();
        store.add_peer_with_addr(a, addr(1));
        store.add_peer_with_addr(a, addr(2));
        store.set_protocols(a, vec!["/x/1".into()]);
        store.record_outcome(a, DialOutcome::Success);
        store.add_peer_with_addr(b, addr(3));
        store.ban(b, until);
        store.flush().expect("flush succeeds");
    }
    let store = open();
    assert_eq!(
        store.addresses(&a),
        vec![addr(2), addr(1)],
        "addresses survive reopening, in order"
    );
    let record = store.record(&a).expect("record survives reopening");
    assert_eq!(record.protocols, vec!["/x/1".to_owned()]);
    assert!(
        record.last_success.is_some(),
        "dial outcomes survive reopening"
    );
    assert!(store.is_banned(&b), "bans survive reopening");
    assert!(store.remove_peer(&b));
    store.flush().expect("flush succeeds");
    drop(store);
    let store = open();
    assert!(store.record(&b).is_none(), "removals survive reopening");
}

fn empty_store(s: &impl PeerStore) {
    let p = peer(1);
    assert!(s.get_peers().is_empty(), "a new store knows no peers");
    assert!(s.addresses(&p).is_empty());
    assert!(s.record(&p).is_none());
    assert!(!s.is_banned(&p));
    assert!(!s.remove_peer(&p), "removing an unknown peer returns false");
    assert!(s.flush().is_ok());
}

fn seed_methods(s: &impl PeerStore) {
    let (a, b) = (peer(1), peer(2));
    s.add_peer_with_addr(a, addr(1));
    s.add_peer_with_addr(b, addr(2));
    let mut peers = s.get_peers();
    peers.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(peers, want, "get_peers returns every peer added");
    assert_eq!(s.addresses(&a), vec![addr(1)]);
    let seen = s.record(&a).expect("record").addresses[0].1;
    assert!(
        seen <= SystemTime::now() && seen > SystemTime::now() - Duration::from_secs(60),
        "last-seen time is now"
    );
}

fn addresses_are_most_recent_first_without_duplicates(s: &impl PeerStore) {
    let p = peer(1);
    for i in [1, 2, 3, 2] {
        s.add_peer_with_addr(p, addr(i));
    }
    assert_eq!(
        s.addresses(&p),
        vec![addr(2), addr(3), addr(1)],
        "most recent first, no duplicates"
    );
}

fn addresses_per_peer_are_bounded(s: &impl PeerStore) {
    let p = peer(1);
    for i in 0..1000 {
        s.add_peer_with_addr(p, addr(i));
    }
    let kept = s.addresses(&p);
    assert!(
        !kept.is_empty() && kept.len() <= MAX_ADDRS_PER_PEER_ALLOWED,
        "{} addresses kept",
        kept.len()
    );
    assert_eq!(kept[0], addr(999), "the newest address is kept");
}

fn peers_are_bounded(s: &impl PeerStore, max_peers: usize) {
    let extra = max_peers + 10;
    for i in 0..extra {
        let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        bytes.extend_from_slice(&(i as u64).to_be_bytes());
        bytes.extend_from_slice(&[7; 24]);
        let p = PeerId::from_bytes(&bytes).expect("valid peer id");
        s.add_peer_with_addr(p, addr(i as u32));
    }
    let kept = s.get_peers().len();
    assert!(kept <= max_peers, "{kept} peers kept, capacity {max_peers}");
    assert!(kept > 0);
}

fn outcomes_count_failures_until_a_success(s: &impl PeerStore) {
    let p = peer(1);
    s.record_outcome(p, DialOutcome::Failure);
    s.record_outcome(p, DialOutcome::Failure);
    let r = s.record(&p).expect("outcomes create a record");
    assert_eq!(r.failures, 2);
    assert!(r.last_failure.is_some() && r.last_success.is_none());
    s.record_outcome(p, DialOutcome::Success);
    let r = s.record(&p).expect("record");
    assert_eq!(r.failures, 0, "a success clears the failure count");
    assert!(r.last_success.is_some() && r.last_failure.is_some());
}

fn protocols_are_replaced(s: &impl PeerStore) {
    let p = peer(1);
    s.set_protocols(p, vec!["/a/1".into(), "/b/1".into()]);
    s.set_protocols(p, vec!["/c/1".into()]);
    assert_eq!(
        s.record(&p).expect("record").protocols,
        vec!["/c/1".to_owned()]
    );
}

fn bans_expire_and_lift(s: &impl PeerStore) {
    let (a, b) = (peer(1), peer(2));
    s.ban(a, SystemTime::now() + Duration::from_secs(3600));
    assert!(s.is_banned(&a), "a ban in force");
    s.unban(&a);
    assert!(!s.is_banned(&a), "unban lifts it");
    s.ban(b, SystemTime::now() - Duration::from_secs(1));
    assert!(!s.is_banned(&b), "an expired ban does not count");
}

fn removal_forgets_everything(s: &impl PeerStore) {
    let p = peer(1);
    s.add_peer_with_addr(p, addr(1));
    s.ban(p, SystemTime::now() + Duration::from_secs(60));
    assert!(s.remove_peer(&p));
    assert!(s.record(&p).is_none() && s.addresses(&p).is_empty() && !s.is_banned(&p));
    assert!(!s.get_peers().contains(&p));
}

fn concurrent_writers_lose_nothing<S: PeerStore>(s: S) {
    let s = Arc::new(s);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for i in 0..5u8 {
                    s.add_peer_with_addr(peer(t * 10 + i), addr(u32::from(t) * 10 + u32::from(i)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    assert_eq!(
        s.get_peers().len(),
        20,
        "writes from several threads are all kept"
    );
    assert!(s.flush().is_ok());
}
