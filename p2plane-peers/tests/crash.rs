//! A writer process killed with SIGKILL at random moments, or crashed at chosen points
//! between the steps of a commit (failpoints of the `fail` crate: before the transaction,
//! after its rows are written but before it commits, and after it commits but before the
//! store reports it), loses nothing it had reported durable; the file always reopens, and
//! what survives is a prefix of what was written (no torn transaction).

use std::{collections::BTreeSet, path::Path, time::Duration};

use crashkit::{FAILPOINT_SKIPS, Reporter, Writer, crash_at};

use p2plane_core::{Multiaddr, PeerId, PeerStore};
use p2plane_peers::{RedbConfig, RedbPeerStore};

const STORE_ENV: &str = "P2PLANE_CRASH_STORE";
const START_ENV: &str = "P2PLANE_CRASH_START";

fn config() -> RedbConfig {
    let mut c = RedbConfig::default();
    c.max_peers = 1_000_000;
    c.commit_interval = Duration::from_millis(5);
    c
}

fn peer(i: u64) -> PeerId {
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&i.to_be_bytes());
    bytes.extend_from_slice(&[9; 24]);
    PeerId::from_bytes(&bytes).unwrap()
}

fn addr(i: u64) -> Multiaddr {
    format!(
        "/ip4/10.1.{}.{}/tcp/{}",
        (i >> 8) & 255,
        i & 255,
        1000 + i % 50_000
    )
    .parse()
    .unwrap()
}

/// The child: writes peers from `START` on, flushing every 10 and reporting each flush,
/// until killed or a failpoint (set by `FAILPOINTS`) fires.
#[test]
#[ignore = "the writer half of this file's crash tests, which run it"]
fn crash_writer_child() {
    let mut report = Reporter::start();
    let path = std::env::var(STORE_ENV).expect("run by the crash test");
    let start: u64 = std::env::var(START_ENV)
        .expect("start")
        .parse()
        .expect("number");
    let store = RedbPeerStore::open_with(path, config()).expect("the store opens in the child");
    for i in start..start + 1_000_000 {
        store.add_peer_with_addr(peer(i), addr(i));
        if i % 10 == 9 {
            store.flush().expect("flush");
            report.durable(i);
        }
    }
}

/// Starts the writer child on the store at `path`, writing from peer `start` on.
fn writer(path: &Path, start: u64, failpoints: Option<String>) -> Writer {
    let env = [
        (STORE_ENV, path.display().to_string()),
        (START_ENV, start.to_string()),
    ];
    Writer::spawn("crash_writer_child", &env, failpoints)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    let mut durable: BTreeSet<u64> = BTreeSet::new();
    let mut next = 0u64;
    let mut kills_after_writes = 0;
    for round in 0..50 {
        let child = writer(&path, next, None);
        if round % 5 == 0 {
            // Kill while the child starts and opens the store.
            std::thread::sleep(Duration::from_millis(rand::random_range(0..5)));
        } else {
            // Kill while it writes: once it has reported a first flush, after a random delay.
            child.first_flush(Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(rand::random_range(0..30)));
        }
        let reported = child.kill();
        if let Some(last) = reported {
            durable.extend(next..=last);
            next = last + 1;
            kills_after_writes += 1;
        }

        let store = RedbPeerStore::open_with(&path, config())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        for &i in &durable {
            assert_eq!(
                store.addresses(&peer(i)).first(),
                Some(&addr(i)),
                "round {round}: durable peer {i} lost"
            );
        }
    }
    assert!(
        kills_after_writes >= 40,
        "only {kills_after_writes} of 50 kills came after writes started"
    );
    assert!(!durable.is_empty());
}

#[test]
fn crashes_between_commit_steps_lose_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for point in [
        "peers::commit::before",
        "peers::commit::inserted",
        "peers::commit::after",
    ] {
        for skip in FAILPOINT_SKIPS {
            let path = dir.path().join(format!("{cases}.redb"));
            let (status, durable) = writer(&path, 0, Some(crash_at(point, skip))).wait_crash();
            assert!(!status.success(), "{point} after {skip}: the child crashed");

            let store = RedbPeerStore::open_with(&path, config())
                .unwrap_or_else(|e| panic!("{point} after {skip}: reopen failed: {e}"));
            let present: Vec<u64> = (0..200)
                .filter(|&i| store.addresses(&peer(i)).first() == Some(&addr(i)))
                .collect();
            let prefix = present.len() as u64;
            assert_eq!(
                present,
                (0..prefix).collect::<Vec<_>>(),
                "{point} after {skip}: a prefix survives"
            );
            if skip > 0 {
                assert!(
                    durable.is_some(),
                    "{point} after {skip}: writes were reported"
                );
            }
            if let Some(last) = durable {
                assert!(prefix > last, "{point} after {skip}: durable {last} lost");
            }
            println!(
                "FIGURE peer-store failpoint {point} at commit {}: reopened, {} reported \
                 durable, {prefix} present (a prefix), 0 lost",
                skip + 1,
                durable.map_or(0, |d| d + 1),
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 9);
}
