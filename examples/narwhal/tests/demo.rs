//! Runs the demo binary as the README does (shorter and lighter): it must finish, show
//! progress, and report the reference's figures with transactions committed.

use std::process::Command;

#[test]
fn the_demo_runs_and_reports_the_figures() {
    let logs = std::env::temp_dir().join(format!("narwhal-demo-test-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_narwhal"))
        .args(["--rate", "2000", "--duration", "3", "--logs"])
        .arg(&logs)
        .output()
        .expect("the demo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("committed leader round"),
        "progress lines: {stdout}"
    );
    let tps: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Consensus TPS: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no consensus TPS in: {stdout}"));
    assert!(tps > 0.0, "nothing committed: {stdout}");
    for file in ["primary-0.log", "worker-0.log", "client-0.log"] {
        assert!(logs.join(file).exists(), "{file} was written");
    }
    std::fs::remove_dir_all(&logs).unwrap();
}
