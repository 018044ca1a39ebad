//! Runs the kv-store binary as a user would: two storage nodes, then put, get and providers
//! from separate client processes.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const WAIT: Duration = Duration::from_secs(60);

fn kv(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kv-store"));
    command.args(args).kill_on_drop(true);
    command
}

/// Starts a storage node; returns it with its address and peer id, read from its output.
async fn storage(args: &[&str]) -> (Child, String, String) {
    let mut child = kv(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut id) = (None, None);
    tokio::time::timeout(WAIT, async {
        while addr.is_none() || id.is_none() {
            let line = lines.next_line().await.unwrap().expect("the node runs");
            if let Some(a) = line.strip_prefix("serving on ") {
                addr.get_or_insert(a.to_owned());
            } else if let Some(i) = line.strip_prefix("peer id ") {
                id = Some(i.to_owned());
            }
        }
    })
    .await
    .expect("the storage node starts");
    (child, addr.unwrap(), id.unwrap())
}

async fn run(args: &[&str]) -> String {
    let output = tokio::time::timeout(WAIT, kv(args).output())
        .await
        .expect("the command finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_and_providers_across_processes() {
    let (_first, first_addr, first_id) = storage(&["serve"]).await;
    let (_second, second_addr, _) = storage(&["serve", "--peer", &first_addr]).await;

    let stored = run(&["put", "color", "blue", "--peer", &first_addr]).await;
    assert!(
        stored.contains(&format!("stored at {first_id}")),
        "{stored}"
    );

    // Through the other storage node: the DHT record, then the provider and its value.
    let value = run(&["get", "color", "--peer", &second_addr]).await;
    assert_eq!(value.trim(), "blue");
    let providers = run(&["providers", "color", "--peer", &second_addr]).await;
    assert_eq!(providers.trim(), format!("{first_id} has blue"));

    let output = kv(&["get", "nothing-here", "--peer", &second_addr])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
}
