//! Chat across two home-router NATs (issue 18), on the network test bed: a public relay on
//! host 1, alice behind a NAT on host 2 listening through it, bob behind another NAT on
//! host 3 joining at alice's relayed address. What one types, the other prints.
//!
//! The same by hand, in three network namespaces set up as `tools/netbed` does:
//!
//! ```text
//! chat --listen /ip4/10.77.0.1/tcp/4000 --relay-server --name relay
//! chat --listen /ip4/192.168.2.2/tcp/4000 --relay /ip4/10.77.0.1/tcp/4000/p2p/<relay id> --name alice
//! chat --listen /ip4/192.168.3.2/tcp/4000 --peer <the address alice prints> --name bob
//! ```

use std::{
    io::{BufReader, Write as _},
    path::Path,
    process::{ChildStdin, Stdio},
    time::Duration,
};

use netbed::{Bed, Nat, Proc, in_netns};

const CHAT: &str = env!("CARGO_BIN_EXE_chat");
const WAIT: Duration = Duration::from_secs(60);

/// Starts the chat binary on `host` with `args`; its standard input stays open.
fn chat(bed: &Bed, host: usize, args: &[&str]) -> (Proc, ChildStdin) {
    let mut cmd = bed.command(host, Path::new(CHAT));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("the chat binary starts");
    let stdin = child.stdin.take().expect("piped");
    let out = BufReader::new(child.stdout.take().expect("piped"));
    (Proc { child, out }, stdin)
}

fn say(stdin: &mut ChildStdin, line: &str) {
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
}

#[test]
fn two_users_behind_nats_chat_through_a_relay() {
    in_netns("two_users_behind_nats_chat_through_a_relay", || {
        let mut bed = Bed::new(3).expect("test bed");
        bed.put_behind_nat(2, Nat::PortPreserving).expect("NAT 2");
        bed.put_behind_nat(3, Nat::PortPreserving).expect("NAT 3");

        let relay_listen = format!("/ip4/{}/tcp/4000", Bed::ip(1));
        let (mut relay, _relay_in) = chat(
            &bed,
            1,
            &[
                "--listen",
                &relay_listen,
                "--relay-server",
                "--name",
                "relay",
            ],
        );
        let id = relay
            .line_starting("peer id ", WAIT)
            .expect("the relay prints its id");
        let relay_addr = format!("{relay_listen}/p2p/{}", id.trim_start_matches("peer id "));

        let alice_listen = format!("/ip4/{}/tcp/4000", Bed::lan_ip(2));
        let (mut alice, mut alice_in) = chat(
            &bed,
            2,
            &[
                "--listen",
                &alice_listen,
                "--relay",
                &relay_addr,
                "--name",
                "alice",
            ],
        );
        let reachable = alice
            .line_starting("reachable through the relay at ", WAIT)
            .expect("alice gets a relayed address");
        let circuit = reachable
            .trim_start_matches("reachable through the relay at ")
            .to_owned();

        let bob_listen = format!("/ip4/{}/tcp/4000", Bed::lan_ip(3));
        let (mut bob, mut bob_in) = chat(
            &bed,
            3,
            &["--listen", &bob_listen, "--peer", &circuit, "--name", "bob"],
        );
        bob.line_starting("peers in the room: 1", WAIT)
            .expect("bob joins alice's room");
        alice
            .line_starting("peers in the room: 1", WAIT)
            .expect("alice sees bob");

        say(&mut bob_in, "hello alice");
        alice
            .line_starting("bob: hello alice", WAIT)
            .expect("alice reads bob's line");
        say(&mut alice_in, "hi bob");
        bob.line_starting("alice: hi bob", WAIT)
            .expect("bob reads alice's line");
    });
}
