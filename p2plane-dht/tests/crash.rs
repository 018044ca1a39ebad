//! The persistent record store under crashes: a writer process killed with SIGKILL at
//! random moments, and crashes at failpoints between the steps of a commit. Every reopen
//! succeeds, nothing reported durable (by `flush`) is lost, and what survives is a prefix of
//! what was written (no torn transaction).

use std::{path::Path, time::Duration};

use crashkit::{FAILPOINT_SKIPS, Reporter, Writer, crash_at};

use libp2p::{
    PeerId,
    kad::{Record, RecordKey, store::MemoryStoreConfig, store::RecordStore as _},
};
use p2plane_dht::{DhtStore, PublisherQuota};

const STORE_ENV: &str = "P2PLANE_DHT_CRASH_STORE";

fn open(path: &Path) -> DhtStore {
    let config = MemoryStoreConfig {
        max_records: 1_000_000,
        ..Default::default()
    };
    let quota = PublisherQuota {
        records: 1_000_000,
        bytes: 1 << 30,
        provider_records: 1_000_000,
    };
    DhtStore::open(path, PeerId::random(), config, quota).expect("the store opens")
}

fn key(i: u64) -> RecordKey {
    RecordKey::new(&format!("key-{i}"))
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}").into_bytes()
}

/// The child: puts records, flushing every 10 and reporting each flush, until killed or a
/// failpoint (set by `FAILPOINTS`) fires.
#[test]
#[ignore = "the writer half of this file's crash tests"]
fn record_writer_child() {
    let mut report = Reporter::start();
    let path = std::env::var(STORE_ENV).expect("run by a crash test");
    let mut store = open(Path::new(&path));
    let start = (0..).find(|&i| store.get(&key(i)).is_none()).unwrap();
    for i in start..start + 100_000 {
        store.put(Record::new(key(i), value(i))).expect("put");
        if i % 10 == 9 {
            store.flush().expect("flush");
            report.durable(i);
        }
    }
}

fn spawn_child(path: &Path, failpoints: Option<String>) -> Writer {
    let env = [(STORE_ENV, path.display().to_string())];
    Writer::spawn("record_writer_child", &env, failpoints)
}

/// Reopens the store and returns how many records survive, checking they are a prefix.
fn surviving_prefix(path: &Path, what: &str) -> u64 {
    let store = open(path);
    let present: Vec<u64> = (0..200_000)
        .take_while(|&i| i < 1000 || store.get(&key(i)).is_some())
        .filter(|&i| store.get(&key(i)).is_some_and(|r| r.value == value(i)))
        .collect();
    let prefix = present.len() as u64;
    assert_eq!(
        present,
        (0..prefix).collect::<Vec<_>>(),
        "{what}: a prefix survives"
    );
    prefix
}

#[test]
fn sigkill_at_random_moments_loses_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.redb");
    let mut durable = 0u64;
    let mut kills_after_writes = 0;
    for round in 0..30u64 {
        let child = spawn_child(&path, None);
        if round % 5 != 0 {
            child.first_flush(Duration::from_secs(20));
        }
        std::thread::sleep(Duration::from_millis(round * 7 % 23));
        if let Some(last) = child.kill() {
            durable = durable.max(last + 1);
            kills_after_writes += 1;
        }
        let prefix = surviving_prefix(&path, &format!("round {round}"));
        assert!(
            prefix >= durable,
            "round {round}: {durable} durable, {prefix} present"
        );
    }
    println!(
        "FIGURE record-store kill -9: 30 kills ({kills_after_writes} during writes), 30/30 \
         reopened, {durable} records reported durable, 0 lost"
    );
    assert!(kills_after_writes >= 20);
}

#[test]
fn crashes_between_commit_steps_lose_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut case = 0;
    for point in [
        "dht::commit::before",
        "dht::commit::inserted",
        "dht::commit::after",
    ] {
        for skip in FAILPOINT_SKIPS {
            let path = dir.path().join(format!("{case}.redb"));
            let (status, durable) = spawn_child(&path, Some(crash_at(point, skip))).wait_crash();
            assert!(!status.success(), "{point}: the child crashed");
            let what = format!("{point} at commit {}", skip + 1);
            let prefix = surviving_prefix(&path, &what);
            if let Some(last) = durable {
                assert!(prefix > last, "{what}: durable {last} lost");
            }
            println!(
                "FIGURE record-store failpoint {what}: reopened, {} reported durable, {prefix} \
                 present (a prefix), 0 lost",
                durable.map_or(0, |d| d + 1)
            );
            case += 1;
        }
    }
}
