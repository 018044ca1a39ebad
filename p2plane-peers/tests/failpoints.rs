//! Crashes at chosen points between the steps of a commit (failpoints of the `fail` crate:
//! before the transaction, after its rows are written but before it commits, and after it
//! commits but before the store reports it): every reopen succeeds, nothing reported durable
//! is lost, and what survives is a prefix of what was written (no torn transaction).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use p2plane_core::{Multiaddr, PeerId, PeerStore};
use p2plane_peers::{RedbConfig, RedbPeerStore};

const STORE_ENV: &str = "P2PLANE_FAILPOINT_STORE";

fn config() -> RedbConfig {
    let mut c = RedbConfig::default();
    c.max_peers = 1_000_000;
    c.commit_interval = Duration::from_millis(2);
    c
}

fn peer(i: u64) -> PeerId {
    let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    bytes.extend_from_slice(&i.to_be_bytes());
    bytes.extend_from_slice(&[7; 24]);
    PeerId::from_bytes(&bytes).unwrap()
}

fn addr(i: u64) -> Multiaddr {
    format!("/ip4/10.2.{}.{}/tcp/4001", (i >> 8) & 255, i & 255)
        .parse()
        .unwrap()
}

/// The child: writes peers, flushing every 10 and reporting each flush, until a failpoint
/// (set by `FAILPOINTS`) fires; its panic aborts the process, as a crash would.
#[test]
#[ignore = "the writer half of `crashes_between_commit_steps_lose_nothing_reported_durable`"]
fn failpoint_writer_child() {
    let path = std::env::var(STORE_ENV).expect("run by the failpoint test");
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let _scenario = fail::FailScenario::setup();
    let store = RedbPeerStore::open_with(path, config()).expect("the store opens");
    let mut out = std::io::stdout().lock();
    for i in 0..100_000u64 {
        store.add_peer_with_addr(peer(i), addr(i));
        if i % 10 == 9 {
            store.flush().expect("flush");
            writeln!(out, "durable {i}").unwrap();
            out.flush().unwrap();
        }
    }
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
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "failpoint_writer_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(STORE_ENV, &path)
                .env("FAILPOINTS", format!("{point}={skip}*off->panic"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
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
