//! Both stores pass the public conformance suite.

use p2plane_peers::{MemoryPeerStore, RedbConfig, RedbPeerStore, conformance};

fn small() -> RedbConfig {
    let mut config = RedbConfig::default();
    config.max_peers = 50;
    config
}

#[test]
fn memory_store_conforms() {
    conformance::run(|| MemoryPeerStore::new(50, 8), 50);
}

#[test]
fn redb_store_in_memory_conforms() {
    conformance::run(|| RedbPeerStore::in_memory(small()).unwrap(), 50);
}

#[test]
fn redb_store_on_disk_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run(
        || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            RedbPeerStore::open_with(dir.path().join(format!("peers-{n}.redb")), small()).unwrap()
        },
        50,
    );
    let path = dir.path().join("persistent.redb");
    conformance::run_persistent(|| RedbPeerStore::open(&path).unwrap());
}
