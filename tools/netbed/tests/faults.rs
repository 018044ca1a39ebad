//! Network faults on a multi-host test bed (issue 8, points 1, 3 and 6): each test re-runs
//! itself inside `unshare -n`, builds hosts in network namespaces joined by a bridge, runs
//! `bednode` processes on them, injects faults, and prints `FIGURE` lines.
//!
//! The CI variants are short; `NETBED_SOAK=1` runs the full sizes (see
//! `docs/reliability.md`). Without the rights to create namespaces, each test says it is
//! skipped and passes.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use netbed::{Bed, Proc, reexec_in_empty_netns};

const BEDNODE: &str = env!("CARGO_BIN_EXE_bednode");
const NFDELAY: &str = env!("CARGO_BIN_EXE_nfdelay");
const PORT: u16 = 4000;

fn soak() -> bool {
    std::env::var_os("NETBED_SOAK").is_some()
}

/// Runs `body` inside an empty network namespace, or says why it is skipped.
fn in_netns(name: &str, body: impl FnOnce()) {
    match reexec_in_empty_netns(name) {
        Ok(None) => body(),
        Ok(Some(passed)) => assert!(passed, "{name} failed inside its network namespace"),
        Err(skip) => println!("{name}: {}", skip.0),
    }
}

fn addr(host: usize) -> String {
    format!("/ip4/{}/tcp/{PORT}", Bed::ip(host))
}

/// Starts an echo server on `host` and waits until it listens.
fn server(bed: &mut Bed, host: usize, extra: &[&str]) -> Proc {
    let mut cmd = bed.command(host, Path::new(BEDNODE));
    cmd.args(["serve", "--listen", &addr(host)]).args(extra);
    let mut proc = bed.spawn(cmd).expect("bednode starts");
    proc.line_starting("READY", Duration::from_secs(30))
        .expect("the server is ready");
    proc
}

/// Parses `key=value` pairs of a result line.
fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn loss_and_latency_with_and_without_retry() {
    in_netns("loss_and_latency_with_and_without_retry", || {
        let mut bed = Bed::new(2).expect("test bed");
        let _server = server(&mut bed, 1, &[]);
        let (delays, losses, requests): (&[u32], &[u32], u32) = if soak() {
            (&[0, 50, 200], &[0, 5, 10, 20], 200)
        } else {
            (&[0, 50, 200], &[0, 10], 200)
        };
        let mut target_cell = None;
        for &delay in delays {
            // Each host's packets wait `delay` on the way out: a round trip gains 2 x delay.
            for host in 1..=2 {
                bed.delay(host, Path::new(NFDELAY), delay, 0, 3600)
                    .expect("nfdelay");
            }
            for &loss in losses {
                bed.set_loss(loss).expect("loss rules");
                let timeout_ms = (1000 + 4 * 2 * delay).to_string();
                for retry in [false, true] {
                    let mut cmd = bed.command(2, Path::new(BEDNODE));
                    cmd.args(["call", "--listen", &addr(2), "--target", &addr(1)])
                        .args(["--requests", &requests.to_string()])
                        .args(["--timeout-ms", &timeout_ms]);
                    if retry {
                        cmd.arg("--retry");
                    }
                    let started = Instant::now();
                    let mut proc = bed.spawn(cmd).expect("client starts");
                    let line = proc
                        .line_starting("RESULT", Duration::from_secs(300))
                        .expect("the client reports");
                    let ok = field(&line, "ok");
                    let wire = field(&line, "wire");
                    let success = 100.0 * ok / f64::from(requests);
                    let amplification = wire / f64::from(requests);
                    println!(
                        "FIGURE loss-latency: delay {delay} ms each way, loss {loss}% each \
                         packet, retry {}: success {success:.1}%, p50 {} ms, p99 {} ms, \
                         wire/logical {amplification:.2} ({:.1} s)",
                        if retry { "on" } else { "off" },
                        field(&line, "p50_ms"),
                        field(&line, "p99_ms"),
                        started.elapsed().as_secs_f64()
                    );
                    if delay == 50 && loss == 10 && retry {
                        target_cell = Some((success, amplification));
                    }
                }
            }
        }
        let (success, amplification) = target_cell.expect("the 50 ms / 10% cell ran");
        assert!(success >= 99.0, "50 ms, 10% loss, retry: {success}%");
        assert!(
            amplification <= 1.3,
            "50 ms, 10% loss, retry: {amplification} wire requests per request"
        );
    });
}

#[test]
fn bed_refuses_to_run_outside_an_empty_namespace() {
    // The machine's own namespace has more than `lo` (or this runs inside one already):
    // either way a bed built here must not reach outside addresses.
    let links = Command::new("ip").args(["-o", "link"]).output();
    let Ok(links) = links else {
        println!("skipped: no `ip`");
        return;
    };
    let only_lo = String::from_utf8_lossy(&links.stdout)
        .lines()
        .all(|l| l.contains(": lo:"));
    if !only_lo {
        assert!(Bed::new(1).is_err());
    }
}
