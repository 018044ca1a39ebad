//! A writer process killed with SIGKILL at random moments, or crashed at chosen points
//! between the steps of a commit (failpoints of the `fail` crate: before the transaction,
//! after its rows are written but before it commits, and after it commits but before the
//! store reports it), loses nothing it had reported durable; the file always reopens, and
//! what survives is a prefix of what was written (no torn transaction).

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

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
/// until killed or a failpoint (set by `FAILPOINTS`) fires; a panic aborts the process, as
/// a crash would.
#[test]
#[ignore = "the writer half of this file's crash tests, which run it"]
fn crash_writer_child() {
    let path = std::env::var(STORE_ENV).expect("run by the crash test");
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let _scenario = fail::FailScenario::setup();
    let start: u64 = std::env::var(START_ENV)
        .expect("start")
        .parse()
        .expect("number");
    let store = RedbPeerStore::open_with(path, config()).expect("the store opens in the child");
    let mut out = std::io::stdout().lock();
    for i in start..start + 1_000_000 {
        store.add_peer_with_addr(peer(i), addr(i));
        if i % 10 == 9 {
            store.flush().expect("flush");
            writeln!(out, "durable {i}").unwrap();
            out.flush().unwrap();
        }
    }
}

/// Starts the writer child on the store at `path`, writing from peer `start` on.
fn writer(path: &Path, start: u64, failpoints: Option<String>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_writer_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(STORE_ENV, path)
    .env(START_ENV, start.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    cmd.spawn().unwrap()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.redb");
    let mut durable: BTreeSet<u64> = BTreeSet::new();
    let mut next = 0u64;
    let mut kills_after_writes = 0;
    for round in 0..50 {
        let mut child = writer(&path, next, None);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(1024);
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("durable ") {
                    let n = n.parse::<u64>().unwrap();
                    last = Some(n);
                    let _ = tx.try_send(n);
                }
            }
            last
        });
        if round % 5 == 0 {
            // Kill while the child starts and opens the store.
            std::thread::sleep(Duration::from_millis(rand::random_range(0..5)));
        } else {
            // Kill while it writes: once it has reported a first flush, after a random delay.
            rx.recv_timeout(Duration::from_secs(20))
                .expect("the child reports a flush");
            std::thread::sleep(Duration::from_millis(rand::random_range(0..30)));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let reported = reader.join().unwrap();
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
        for skip in [0, 2, 9] {
            let path = dir.path().join(format!("{cases}.redb"));
            let mut child = writer(&path, 0, Some(format!("{point}={skip}*off->panic")));
            let durable = BufReader::new(child.stdout.take().unwrap())
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    l.strip_prefix("durable ")
                        .map(|n| n.parse::<u64>().unwrap())
                })
                .last();
            let status = child.wait().unwrap();
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
