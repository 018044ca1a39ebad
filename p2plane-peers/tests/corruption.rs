//! Damaged store files give a typed error on open, never a panic; `open_or_recover` moves
//! the bad file aside and starts empty.

use std::{fs, path::Path};

use p2plane_core::{PeerId, PeerStore, PeerStoreError};
use p2plane_peers::{RedbConfig, RedbPeerStore};

/// A store file with some peers in it.
fn good_file(path: &Path) {
    let store = RedbPeerStore::open(path).unwrap();
    for i in 0..200u32 {
        let peer = PeerId::random();
        store.add_peer_with_addr(
            peer,
            format!("/ip4/10.0.{}.{}/tcp/4001", i / 256, i % 256)
                .parse()
                .unwrap(),
        );
        store.set_protocols(peer, vec!["/p2plane-test/echo/1.0.0".into()]);
    }
    store.flush().unwrap();
}

/// Opens `path` in a fresh thread so that a panic inside would be caught and reported
/// instead of passing unnoticed.
fn open_result(path: &Path) -> Result<usize, PeerStoreError> {
    let path = path.to_owned();
    std::thread::spawn(move || RedbPeerStore::open(&path).map(|s| s.get_peers().len()))
        .join()
        .expect("open must not panic")
}

#[test]
fn truncated_files_give_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    good_file(&good);
    let bytes = fs::read(&good).unwrap();
    let mut typed_errors = 0;
    for cut in [
        1,
        16,
        100,
        512,
        4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 4096,
        bytes.len() - 1,
    ] {
        let path = dir.path().join(format!("cut-{cut}.redb"));
        fs::write(&path, &bytes[..cut.min(bytes.len() - 1)]).unwrap();
        match open_result(&path) {
            Err(PeerStoreError::Corrupted(_) | PeerStoreError::Storage(_)) => typed_errors += 1,
            Err(other) => panic!("cut at {cut}: unexpected error {other:?}"),
            // redb may repair a file cut after its last commit; then the peers are all there.
            Ok(peers) => assert_eq!(peers, 200, "cut at {cut}: opened with missing peers"),
        }
    }
    assert!(
        typed_errors >= 5,
        "only {typed_errors} truncations were refused"
    );
}

#[test]
fn bit_flipped_files_give_a_typed_error_or_all_peers() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    good_file(&good);
    let bytes = fs::read(&good).unwrap();
    let mut refused = 0;
    let step = (bytes.len() / 64).max(1);
    for (n, offset) in (0..bytes.len()).step_by(step).enumerate() {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x5a;
        let path = dir.path().join(format!("flip-{n}.redb"));
        fs::write(&path, &damaged).unwrap();
        match open_result(&path) {
            Err(PeerStoreError::Corrupted(_) | PeerStoreError::Storage(_)) => refused += 1,
            Err(other) => panic!("flip at {offset}: unexpected error {other:?}"),
            // A flip in unused space changes nothing that is read.
            Ok(peers) => assert_eq!(peers, 200, "flip at {offset}: opened with missing peers"),
        }
    }
    assert!(refused > 0, "no bit flip was detected");
}

#[test]
fn open_or_recover_moves_a_bad_file_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    fs::write(&path, b"this is not a redb file, not even close").unwrap();
    assert!(RedbPeerStore::open(&path).is_err());
    let (store, aside) = RedbPeerStore::open_or_recover(&path, RedbConfig::default()).unwrap();
    assert!(store.get_peers().is_empty());
    let aside = aside.expect("the bad file was moved");
    assert_eq!(
        fs::read(&aside).unwrap(),
        b"this is not a redb file, not even close"
    );
}

#[test]
fn a_creation_interrupted_by_a_crash_leaves_nothing_that_blocks_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    // What a crash while creating the file leaves: a half-made file under the temporary name.
    fs::write(dir.path().join("peers.redb.creating"), [0u8; 1000]).unwrap();
    let store = RedbPeerStore::open(&path).expect("a fresh store despite the leftover");
    assert!(store.get_peers().is_empty());
    assert!(
        !dir.path().join("peers.redb.creating").exists(),
        "the leftover is cleaned up"
    );
    drop(store);
    assert!(RedbPeerStore::open(&path).is_ok());
}
