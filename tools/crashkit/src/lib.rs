//! Crash tests of a store, shared by `p2plane-peers` and `p2plane-dht`.
//!
//! A crash test runs its writer in a child process: the test binary itself, running one
//! `#[ignore]`d test by name. The child writes, flushes, and after each flush prints what it
//! now holds durable ([`Reporter::durable`]); the parent kills it with SIGKILL at a moment
//! of its choosing ([`Writer::kill`]), or lets a failpoint crash it between the steps of a
//! commit ([`Writer::wait_crash`]), then reopens the store and checks that everything the
//! child reported durable is there.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! // In the parent test:
//! let writer = crashkit::Writer::spawn("writer_child", &[("STORE", "/tmp/s.redb".into())], None);
//! writer.first_flush(Duration::from_secs(20));
//! let durable = writer.kill(); // the last number the child reported durable, if any
//! # let _ = durable;
//! ```

use std::{
    io::{BufRead as _, BufReader, StdoutLock, Write as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

const DURABLE: &str = "durable ";

/// Where commit failpoints fire: at the first pass, the third and the tenth.
pub const FAILPOINT_SKIPS: [u32; 3] = [0, 2, 9];

/// The `FAILPOINTS` value that crashes the child at `point` after `skip` passes.
pub fn crash_at(point: &str, skip: u32) -> String {
    format!("{point}={skip}*off->panic")
}

/// The child's side: aborts the process on a panic (as a crash would), sets up the
/// failpoints named by `FAILPOINTS`, and reports flushes on standard output. Keep it alive
/// for the whole child test.
pub struct Reporter {
    out: StdoutLock<'static>,
    _failpoints: fail::FailScenario<'static>,
}

impl Reporter {
    /// Sets up the child.
    pub fn start() -> Self {
        std::panic::set_hook(Box::new(|_| std::process::abort()));
        Self {
            _failpoints: fail::FailScenario::setup(),
            out: std::io::stdout().lock(),
        }
    }

    /// Reports that everything up to and including number `last` is durable.
    pub fn durable(&mut self, last: u64) {
        // A parent gone is the end of the test: nothing to report to.
        let _ = writeln!(self.out, "{DURABLE}{last}").and_then(|()| self.out.flush());
    }
}

/// The parent's handle on a writer child.
pub struct Writer {
    child: Child,
    reader: JoinHandle<Option<u64>>,
    flushes: mpsc::Receiver<u64>,
}

impl Writer {
    /// Runs test `test` of the current test binary (an ignored one) as the child, with
    /// `env` set and, if given, the failpoints `failpoints` (see [`crash_at`]).
    pub fn spawn(test: &str, env: &[(&str, String)], failpoints: Option<String>) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = Command::new(exe);
        cmd.args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        match failpoints {
            Some(f) => cmd.env("FAILPOINTS", f),
            None => cmd.env_remove("FAILPOINTS"),
        };
        let mut child = cmd.spawn().expect("the writer child starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, flushes) = mpsc::sync_channel(1024);
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix(DURABLE).and_then(|n| n.parse().ok()) {
                    last = Some(n);
                    let _ = tx.try_send(n);
                }
            }
            last
        });
        Self {
            child,
            reader,
            flushes,
        }
    }

    /// Waits until the child has reported its first flush. Panics after `timeout`.
    pub fn first_flush(&self, timeout: Duration) {
        self.flushes
            .recv_timeout(timeout)
            .expect("the child reports a flush");
    }

    /// Kills the child with SIGKILL and returns the last number it reported durable.
    pub fn kill(mut self) -> Option<u64> {
        self.child.kill().expect("kill the child"); // SIGKILL on Unix
        self.child.wait().expect("reap the child");
        self.reader.join().expect("the reader thread")
    }

    /// Waits for the child to end by itself (a failpoint crashing it) and returns how it
    /// ended and the last number it reported durable.
    pub fn wait_crash(mut self) -> (ExitStatus, Option<u64>) {
        let last = self.reader.join().expect("the reader thread");
        (self.child.wait().expect("reap the child"), last)
    }
}
