//! Runs the chat binary twice, as two users would: what one types, the other prints.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

const WAIT: Duration = Duration::from_secs(30);

fn chat(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the chat binary starts");
    let stdout = child.stdout.take().expect("piped");
    (child, BufReader::new(stdout).lines())
}

/// Reads lines until one satisfies `want`; returns it.
async fn until(lines: &mut Lines<BufReader<ChildStdout>>, want: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("stdout readable")
                .expect("the process is still running");
            if want(&line) {
                return line;
            }
        }
    })
    .await
    .expect("the expected line within the time limit")
}

#[tokio::test]
async fn what_one_types_the_other_prints() {
    let (mut alice, mut alice_out) = chat(&["--name", "alice"]);
    let listening = until(&mut alice_out, |l| l.starts_with("listening on ")).await;
    let addr = listening.trim_start_matches("listening on ").to_owned();
    let (mut bob, mut bob_out) = chat(&["--name", "bob", "--peer", &addr]);
    until(&mut bob_out, |l| l == "peers in the room: 1").await;
    until(&mut alice_out, |l| l == "peers in the room: 1").await;

    let bob_in = bob.stdin.as_mut().expect("piped");
    bob_in.write_all(b"hello alice\n").await.unwrap();
    bob_in.flush().await.unwrap();
    until(&mut alice_out, |l| l == "bob: hello alice").await;

    let alice_in = alice.stdin.as_mut().expect("piped");
    alice_in.write_all(b"hi bob\n").await.unwrap();
    alice_in.flush().await.unwrap();
    until(&mut bob_out, |l| l == "alice: hi bob").await;

    // Closing standard input ends a participant cleanly.
    drop(bob.stdin.take());
    let status = tokio::time::timeout(WAIT, bob.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    until(&mut alice_out, |l| l == "peers in the room: 0").await;
    alice.kill().await.unwrap();
}
