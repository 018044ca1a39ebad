//! Reach through NATs (issue 18) on the multi-host bed: host 1 is a public relay, hosts 2
//! and 3 sit behind home routers (network namespaces that translate with nftables). Host 2
//! serves through the relay; host 3 knows only the relay's circuit address for it. Each
//! scenario runs fresh nodes `attempts` times over TCP and prints a `FIGURE` line: requests
//! answered, the share of pairs that ended direct, and the time to the direct connection.
//!
//! Run inside `unshare -n` by the test itself; skipped, with a message, without the rights
//! to make namespaces (and failing under `CI=true`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use netbed::{Bed, Nat, Proc, in_netns, soak, text_field};

const BEDNODE: &str = env!("CARGO_BIN_EXE_bednode");
const NFDELAY: &str = env!("CARGO_BIN_EXE_nfdelay");
const PORT: u16 = 4000;

fn attempts() -> usize {
    if soak() { 20 } else { 3 }
}

fn start(bed: &mut Bed, host: usize, args: &[&str]) -> Proc {
    let mut cmd = bed.command(host, Path::new(BEDNODE));
    cmd.args(args);
    bed.spawn(cmd).expect("bednode starts")
}

/// A listen address on `ip` and `port` over `transport` (`tcp` or `quic`).
fn listen_addr(ip: &str, port: u16, transport: &str) -> String {
    match transport {
        "quic" => format!("/ip4/{ip}/udp/{port}/quic-v1"),
        _ => format!("/ip4/{ip}/tcp/{port}"),
    }
}

/// One attempt: a fresh server behind its NAT on host 2 and a fresh caller on host 3.
/// Each attempt's nodes get ports of their own (`n` counts attempts): fresh nodes, as on a
/// real network, not a restart on the port of one just killed.
fn attempt(bed: &mut Bed, relay: &str, pair: &Pair, n: u16, requests: u32) -> Outcome {
    let transport = pair.transport;
    let listen = listen_addr(&Bed::lan_ip(2), PORT + 1 + n, transport);
    let mut server_args = vec!["serve", "--listen", &listen];
    match pair.relay_choice {
        RelayChoice::Configured => server_args.extend(["--relay", relay]),
        RelayChoice::AmongPeers => {
            server_args.extend(["--bootstrap", relay, "--auto-relay", "--autonat-ms", "200"]);
        }
    }
    let mut server = start(bed, 2, &server_args);
    let relayed = server
        .line_starting("RELAYED", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{transport}, attempt {n}: no reservation on the relay"));
    let circuit = text_field(&relayed, "addr").to_owned();
    let caller_ip = match pair.caller_nat {
        Some(_) => Bed::lan_ip(3),
        None => Bed::ip(3),
    };
    let listen = listen_addr(&caller_ip, PORT + 1 + n, transport);
    let requests_arg = requests.to_string();
    let mut caller_args = vec![
        "call",
        "--listen",
        &listen,
        "--target",
        &circuit,
        "--relay-first",
        relay,
        "--requests",
        &requests_arg,
        "--concurrency",
        "4",
        "--timeout-ms",
        "5000",
        "--upgrade-wait-ms",
        "10000",
    ];
    if pair.retry {
        caller_args.push("--retry");
    }
    let mut caller = start(bed, 3, &caller_args);
    let (before, result) = caller.lines_until("RESULT", Duration::from_secs(120));
    let result = result.expect("the caller reports");
    for failed in before.iter().filter(|l| l.starts_with("FAILED")) {
        println!("{transport}, attempt {n}: {failed}");
    }
    let upgrade = caller
        .line_starting("UPGRADE", Duration::from_secs(60))
        .expect("the caller reports the hole punch");
    let ok: f64 = text_field(&result, "ok").parse().unwrap();
    let total: f64 = text_field(&result, "total").parse().unwrap();
    let first_answer = text_field(&result, "first_ms").parse::<f64>().ok();
    let direct = (text_field(&upgrade, "direct") == "1")
        .then(|| text_field(&upgrade, "ms").parse::<f64>().unwrap());
    if direct.is_none() {
        println!("{transport}, attempt {n}: {upgrade}");
    }
    drop(caller);
    drop(server);
    Outcome {
        answered: ok,
        sent: total,
        first_answer,
        direct,
    }
}

/// What one attempt measured.
struct Outcome {
    answered: f64,
    sent: f64,
    /// From the dial to the first answer, ms.
    first_answer: Option<f64>,
    /// From the dial to the direct connection, ms, if there was one.
    direct: Option<f64>,
}

/// The `p`th percentile of `sorted`, as text.
fn pct(sorted: &[f64], p: usize) -> String {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .map_or("-".to_owned(), |ms| format!("{ms:.1}"))
}

/// How the server behind its NAT comes to listen through the relay.
#[derive(Clone, Copy)]
enum RelayChoice {
    /// It is configured with the relay's address.
    Configured,
    /// It only connects to the relay, learns from AutoNAT that it is private, and chooses
    /// the relay among its peers.
    AmongPeers,
}

/// Faults on every link: each host's packets wait `delay_ms` on the way out, and `loss`
/// percent of the packets crossing the switch are dropped.
#[derive(Clone, Copy)]
struct Faults {
    delay_ms: u32,
    loss: u32,
}

/// A pair of nodes and the network between them: the server sits behind a
/// port-preserving NAT on host 2; the caller on host 3, behind `caller_nat` or public.
struct Pair {
    /// What the figure's line calls it.
    name: &'static str,
    /// The caller's NAT; `None`: the caller has a public address.
    caller_nat: Option<Nat>,
    /// `tcp` or `quic`.
    transport: &'static str,
    faults: Option<Faults>,
    relay_choice: RelayChoice,
    /// Whether the caller retries failed requests (the retry layer's usual rules).
    retry: bool,
}

impl Pair {
    fn new(name: &'static str, caller_nat: Option<Nat>, transport: &'static str) -> Self {
        Self {
            name,
            caller_nat,
            transport,
            faults: None,
            relay_choice: RelayChoice::Configured,
            retry: false,
        }
    }
}

/// Runs [`attempts`] fresh pairs; returns the share of requests answered (%), how many
/// pairs ended direct, and the times to the direct connection (ms).
fn scenario(pair: &Pair) -> (f64, usize, Vec<f64>) {
    let transport = pair.transport;
    let mut bed = Bed::new(3).expect("test bed");
    bed.put_behind_nat(2, Nat::PortPreserving)
        .expect("NAT for host 2");
    if let Some(nat) = pair.caller_nat {
        bed.put_behind_nat(3, nat).expect("NAT for host 3");
    }
    if let Some(Faults { delay_ms, loss }) = pair.faults {
        for host in 1..=3 {
            bed.delay(host, Path::new(NFDELAY), delay_ms, 0, 3600)
                .expect("nfdelay");
        }
        bed.set_loss(loss).expect("loss rules");
    }
    let relay_listen = listen_addr(&Bed::ip(1), PORT, transport);
    // Every node behind a NAT comes from its router's one address; the nodes a test kills
    // leave QUIC connections behind until their idle timeout, so the relay admits more
    // connections per address than the default 8.
    let mut relay = start(
        &mut bed,
        1,
        &[
            "serve",
            "--listen",
            &relay_listen,
            "--relay-server",
            "--max-inbound-per-ip",
            "256",
        ],
    );
    let ready = relay
        .line_starting("READY", Duration::from_secs(30))
        .expect("the relay is ready");
    let relay_addr = format!("{relay_listen}/p2p/{}", text_field(&ready, "peer"));
    let (mut answered, mut sent, mut first, mut direct) = (0.0, 0.0, Vec::new(), Vec::new());
    let started = Instant::now();
    for n in 0..attempts() {
        let outcome = attempt(&mut bed, &relay_addr, pair, n as u16, 50);
        answered += outcome.answered;
        sent += outcome.sent;
        first.extend(outcome.first_answer);
        direct.extend(outcome.direct);
    }
    first.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    println!(
        "FIGURE nat {} {transport}: {} attempts, requests answered {:.1}%, first answer p50 {} ms \
         p95 {} ms, direct {}/{}, time to direct p50 {} ms p95 {} ms ({:.1} s)",
        pair.name,
        attempts(),
        100.0 * answered / sent,
        pct(&first, 50),
        pct(&first, 95),
        direct.len(),
        attempts(),
        pct(&direct, 50),
        pct(&direct, 95),
        started.elapsed().as_secs_f64()
    );
    drop(relay);
    (100.0 * answered / sent, direct.len(), direct)
}

/// Every request answered, and at least 95 % of the pairs direct (`NETBED_SOAK=1` runs 20
/// pairs); of the three pairs a CI run tries, one may stay relayed.
fn assert_mostly_direct(transport: &str, answered: f64, direct: usize) {
    assert_eq!(answered, 100.0, "{transport}: every request is answered");
    let needed = (attempts() * 95).div_ceil(100).min(attempts() - 1);
    assert!(
        direct >= needed,
        "{transport}: {direct} of {} pairs ended direct",
        attempts()
    );
}

#[test]
fn port_preserving_nats_connect_directly_after_a_hole_punch() {
    in_netns(
        "port_preserving_nats_connect_directly_after_a_hole_punch",
        || {
            for transport in ["tcp", "quic"] {
                let (answered, direct, _) = scenario(&Pair::new(
                    "port-preserving <-> port-preserving",
                    Some(Nat::PortPreserving),
                    transport,
                ));
                assert_mostly_direct(transport, answered, direct);
            }
        },
    );
}

#[test]
fn a_public_node_reaches_a_natted_one_directly_after_a_hole_punch() {
    in_netns(
        "a_public_node_reaches_a_natted_one_directly_after_a_hole_punch",
        || {
            for transport in ["tcp", "quic"] {
                let (answered, direct, _) =
                    scenario(&Pair::new("public <-> port-preserving", None, transport));
                assert_mostly_direct(transport, answered, direct);
            }
        },
    );
}

#[test]
fn a_symmetric_nat_is_answered_through_the_relay() {
    in_netns("a_symmetric_nat_is_answered_through_the_relay", || {
        for transport in ["tcp", "quic"] {
            let (answered, direct, _) = scenario(&Pair::new(
                "port-preserving <-> symmetric",
                Some(Nat::Symmetric),
                transport,
            ));
            assert_eq!(
                answered, 100.0,
                "{transport}: every request is answered through the relay"
            );
            println!("FIGURE nat symmetric {transport}: {direct} direct (none expected)");
        }
    });
}

#[test]
fn behind_nats_with_delay_and_loss_every_request_is_answered() {
    in_netns(
        "behind_nats_with_delay_and_loss_every_request_is_answered",
        || {
            let faults = Faults {
                delay_ms: 50,
                loss: 10,
            };
            for transport in ["tcp", "quic"] {
                // Under loss a request's first attempt can time out: the caller retries,
                // as an application on a lossy network would.
                let (answered, direct, _) = scenario(&Pair {
                    faults: Some(faults),
                    retry: true,
                    ..Pair::new(
                        "port-preserving <-> port-preserving, 50 ms each way, 10 % loss",
                        Some(Nat::PortPreserving),
                        transport,
                    )
                });
                assert_eq!(answered, 100.0, "{transport}: every request is answered");
                println!(
                    "FIGURE nat faults {transport}: {direct} of {} direct",
                    attempts()
                );
            }
        },
    );
}

#[test]
fn a_private_node_chooses_a_relay_among_its_peers_and_is_reached_through_it() {
    in_netns(
        "a_private_node_chooses_a_relay_among_its_peers_and_is_reached_through_it",
        || {
            let (answered, direct, _) = scenario(&Pair {
                relay_choice: RelayChoice::AmongPeers,
                ..Pair::new(
                    "port-preserving <-> port-preserving, relay chosen among the peers",
                    Some(Nat::PortPreserving),
                    "tcp",
                )
            });
            assert_eq!(answered, 100.0, "every request is answered");
            println!("FIGURE nat auto relay: {direct} of {} direct", attempts());
        },
    );
}

#[test]
fn with_the_relay_down_a_natted_peer_is_refused_then_reached_once_it_is_back() {
    in_netns(
        "with_the_relay_down_a_natted_peer_is_refused_then_reached_once_it_is_back",
        || {
            for transport in ["tcp", "quic"] {
                relay_down_then_back(transport);
            }
        },
    );
}

fn relay_down_then_back(transport: &str) {
    let dir = tempfile::tempdir().expect("a directory for the relay's key");
    let key = dir.path().join("relay.key");
    let key = key.to_str().expect("a UTF-8 path");
    let mut bed = Bed::new(3).expect("test bed");
    bed.put_behind_nat(2, Nat::PortPreserving)
        .expect("NAT for host 2");
    bed.put_behind_nat(3, Nat::PortPreserving)
        .expect("NAT for host 3");
    let relay_listen = listen_addr(&Bed::ip(1), PORT, transport);
    let relay_args = [
        "serve",
        "--listen",
        &relay_listen,
        "--key",
        key,
        "--relay-server",
    ];
    let mut relay = start(&mut bed, 1, &relay_args);
    let ready = relay
        .line_starting("READY", Duration::from_secs(30))
        .expect("the relay is ready");
    let relay_addr = format!("{relay_listen}/p2p/{}", text_field(&ready, "peer"));
    let listen = listen_addr(&Bed::lan_ip(2), PORT, transport);
    let mut server = start(
        &mut bed,
        2,
        &["serve", "--listen", &listen, "--relay", &relay_addr],
    );
    let relayed = server
        .line_starting("RELAYED", Duration::from_secs(60))
        .expect("the server listens through the relay");
    let circuit = text_field(&relayed, "addr").to_owned();
    // Each round, with fresh callers on fresh ports: the relay goes down, then comes back.
    let (mut refused, mut back, mut first) = (0, Vec::new(), Vec::new());
    let mut relay = Some(relay);
    for n in 0..attempts() as u16 {
        // The relay goes down: the only path between the two NATs is gone, and a dial
        // fails with an error instead of hanging.
        drop(relay.take());
        // A fresh caller behind host 3's NAT, on a port of its own, calling the circuit.
        let caller = |bed: &mut Bed, port: u16, args: &[&str]| {
            let listen = listen_addr(&Bed::lan_ip(3), port, transport);
            let mut all = vec!["call", "--listen", &listen, "--target", &circuit];
            all.extend(args);
            start(bed, 3, &all)
        };
        let mut caller_down = caller(&mut bed, PORT + 1 + 2 * n, &["--dial-once"]);
        let dial = caller_down
            .line_starting("DIAL", Duration::from_secs(60))
            .expect("the caller reports its dial");
        assert_eq!(
            text_field(&dial, "ok"),
            "0",
            "{transport}: dialled through a relay that is down: {dial}"
        );
        if n == 0 {
            println!("FIGURE nat relay down {transport}: {dial}");
        }
        refused += 1;
        drop(caller_down);

        // The relay returns with the same key and address: the server reserves again by
        // itself, and a caller that retries its dial is answered.
        let started = Instant::now();
        let mut restarted = start(&mut bed, 1, &relay_args);
        restarted
            .line_starting("READY", Duration::from_secs(30))
            .expect("the relay is back");
        relay = Some(restarted);
        let mut caller = caller(&mut bed, PORT + 2 + 2 * n, &["--requests", "20"]);
        let result = caller
            .line_starting("RESULT", Duration::from_secs(120))
            .expect("the caller reports");
        assert_eq!(text_field(&result, "ok"), "20", "{transport}: {result}");
        back.push(started.elapsed().as_secs_f64() * 1000.0);
        first.extend(text_field(&result, "first_ms").parse::<f64>().ok());
    }
    back.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    println!(
        "FIGURE nat relay down, then back {transport}: {} rounds, refused with a typed error {refused}, \
         answered 20/20 after the restart in every round, restart to last answer p50 {} ms p95 {} ms, \
         dial to first answer p50 {} ms p95 {} ms",
        attempts(),
        pct(&back, 50),
        pct(&back, 95),
        pct(&first, 50),
        pct(&first, 95),
    );
    drop(server);
}

/// A node behind a NAT listens through its relay; a peer behind another NAT that knows only
/// its id finds it through the DHT (the relay is a DHT node too): the circuit address
/// reached the DHT by identify, pushed when the relay accepted the reservation.
#[test]
fn a_natted_node_is_reached_by_its_id_through_the_dht() {
    in_netns("a_natted_node_is_reached_by_its_id_through_the_dht", || {
        let mut bed = Bed::new(3).expect("test bed");
        bed.put_behind_nat(2, Nat::PortPreserving)
            .expect("NAT for host 2");
        bed.put_behind_nat(3, Nat::PortPreserving)
            .expect("NAT for host 3");
        let relay_listen = listen_addr(&Bed::ip(1), PORT, "tcp");
        let mut relay = start(
            &mut bed,
            1,
            &[
                "serve",
                "--listen",
                &relay_listen,
                "--relay-server",
                "--dht",
            ],
        );
        let ready = relay
            .line_starting("READY", Duration::from_secs(30))
            .expect("the relay is ready");
        let relay_addr = format!("{relay_listen}/p2p/{}", text_field(&ready, "peer"));
        let listen = listen_addr(&Bed::lan_ip(2), PORT, "tcp");
        let mut server = start(
            &mut bed,
            2,
            &[
                "serve",
                "--listen",
                &listen,
                "--relay",
                &relay_addr,
                "--dht",
                "--bootstrap",
                &relay_addr,
            ],
        );
        let server_id = text_field(
            &server
                .line_starting("READY", Duration::from_secs(30))
                .expect("the server is ready"),
            "peer",
        )
        .to_owned();
        server
            .line_starting("RELAYED", Duration::from_secs(60))
            .expect("the server listens through the relay");
        let caller_listen = listen_addr(&Bed::lan_ip(3), PORT, "tcp");
        let mut caller = start(
            &mut bed,
            3,
            &[
                "call",
                "--listen",
                &caller_listen,
                "--target-peer",
                &server_id,
                "--dht",
                "--bootstrap",
                &relay_addr,
                "--requests",
                "20",
                "--timeout-ms",
                "15000",
            ],
        );
        let (before, result) = caller.lines_until("RESULT", Duration::from_secs(120));
        let result = result.expect("the caller reports");
        println!("FIGURE nat by id through the DHT: {result} {before:?}");
        assert_eq!(text_field(&result, "ok"), "20", "{result} {before:?}");
    });
}

#[test]
fn autonat_tells_a_natted_node_it_is_private_and_a_public_one_it_is_public() {
    in_netns(
        "autonat_tells_a_natted_node_it_is_private_and_a_public_one_it_is_public",
        || {
            let mut bed = Bed::new(3).expect("test bed");
            bed.put_behind_nat(2, Nat::PortPreserving)
                .expect("NAT for host 2");
            let server_listen = listen_addr(&Bed::ip(1), PORT, "tcp");
            let mut server = start(&mut bed, 1, &["serve", "--listen", &server_listen]);
            let ready = server
                .line_starting("READY", Duration::from_secs(30))
                .expect("the AutoNAT server is ready");
            let server_addr = format!("{server_listen}/p2p/{}", text_field(&ready, "peer"));
            // The first report of each node, or (`want`) the first with that finding.
            let probe = |bed: &mut Bed, host: usize, ip: String, want: &str| {
                let listen = listen_addr(&ip, PORT, "tcp");
                let mut node = start(
                    bed,
                    host,
                    &[
                        "serve",
                        "--listen",
                        &listen,
                        "--bootstrap",
                        &server_addr,
                        "--autonat-ms",
                        "200",
                    ],
                );
                let line = node
                    .line_starting(want, Duration::from_secs(60))
                    .expect("a reachability report");
                (node, line)
            };
            let (_natted, private) = probe(&mut bed, 2, Bed::lan_ip(2), "REACHABILITY");
            println!("FIGURE nat autonat behind a NAT: {private}");
            assert_eq!(text_field(&private, "public"), "0", "{private}");
            let (_public, public) = probe(&mut bed, 3, Bed::ip(3), "REACHABILITY public=1");
            println!("FIGURE nat autonat public: {public}");
            assert_eq!(text_field(&public, "public"), "1", "{public}");
            assert!(
                text_field(&public, "addrs").contains(&Bed::ip(3)),
                "{public}"
            );
        },
    );
}
