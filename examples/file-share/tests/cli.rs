//! Runs the file-share binary as a user would: a provider process, then fetches from another
//! process, the first one stopped part-way and the second resuming it.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

const WAIT: Duration = Duration::from_secs(60);

fn share(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_file-share"));
    command.args(args).kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provide_then_fetch_in_two_steps() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data.bin");
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&source, &data).unwrap();

    let mut provider = share(&[
        "provide",
        source.to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(provider.stdout.take().unwrap()).lines();
    let (mut addr, mut id) = (None, None);
    tokio::time::timeout(WAIT, async {
        while addr.is_none() || id.is_none() {
            let line = lines.next_line().await.unwrap().expect("the provider runs");
            if let Some(a) = line.strip_prefix("listening on ") {
                addr.get_or_insert(a.to_owned());
            } else if let Some(rest) = line.strip_prefix("providing ") {
                id = rest.split_whitespace().next().map(str::to_owned);
            }
        }
    })
    .await
    .expect("the provider starts");
    let (addr, id) = (addr.unwrap(), id.unwrap());
    let out = dir.path().join("copy.bin");
    let out = out.to_str().unwrap();
    let run = |extra: &'static [&'static str]| {
        let mut args = vec![
            "fetch",
            id.as_str(),
            "--out",
            out,
            "--peer",
            addr.as_str(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        share(&args).output()
    };
    let first = tokio::time::timeout(WAIT, run(&["--stop-after", "500000"]))
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("run again to resume"));
    let second = tokio::time::timeout(WAIT, run(&[])).await.unwrap().unwrap();
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        said.contains("SHA-256 checked") && !said.contains(" 0 resumed"),
        "{said}"
    );
    assert_eq!(std::fs::read(out).unwrap(), data);
    provider.kill().await.unwrap();
}
