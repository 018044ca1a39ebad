//! Issue 16, defect 10: the key file was written in place, so a crash mid-write left a
//! truncated key. Its own test binary: failpoints are process-wide.

use std::fs;

use p2plane_transport::identity::{generate, load, load_or_create, save};

/// A crash (a failpoint) after the key's bytes are written but before they are published
/// leaves no key file and no temporary file; the next start creates a whole key.
#[test]
fn a_crash_before_publishing_leaves_no_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let scenario = fail::FailScenario::setup();
    fail::cfg("identity::save::before_link", "return").unwrap();
    assert!(save(&generate(), &path).is_err());
    scenario.teardown();
    assert!(!path.exists(), "a key file appeared before it was complete");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a temporary file was left"
    );
    let key = load_or_create(&path).unwrap();
    assert_eq!(
        load(&path).unwrap().public().to_peer_id(),
        key.public().to_peer_id()
    );
}
