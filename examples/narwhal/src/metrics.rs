//! Reads the logs of a run and computes the figures as the reference's parser
//! (`benchmark/logs.py` of asonnino/narwhal) computes them:
//!
//! - consensus TPS = committed bytes / (last commit − first proposal) / tx size;
//! - consensus latency = mean over committed batches of (first commit − first proposal);
//! - end-to-end TPS = committed bytes / (last commit − first client start) / tx size;
//! - end-to-end latency = mean over committed sample transactions of (first commit of their
//!   batch − the client's send time).
//!
//! A batch counts once, at its earliest "Created" and earliest "Committed" line on any node.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::log::parse_timestamp;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Transaction size in bytes (from the clients' logs).
    pub tx_size: u64,
    /// Input rate in tx/s, all clients together.
    pub input_rate: u64,
    /// Batches committed.
    pub committed_batches: usize,
    /// Transaction bytes committed.
    pub committed_bytes: u64,
    /// From the first proposal to the last commit, in seconds.
    pub consensus_duration_s: f64,
    /// Consensus throughput in tx/s.
    pub consensus_tps: f64,
    /// Consensus throughput in bytes/s.
    pub consensus_bps: f64,
    /// Mean time from proposal to commit, in milliseconds.
    pub consensus_latency_ms: f64,
    /// From the first client start to the last commit, in seconds.
    pub end_to_end_duration_s: f64,
    /// End-to-end throughput in tx/s.
    pub end_to_end_tps: f64,
    /// End-to-end throughput in bytes/s.
    pub end_to_end_bps: f64,
    /// Mean time from a sample transaction's send to its batch's commit, in milliseconds.
    pub end_to_end_latency_ms: f64,
    /// Sample transactions that were committed (the latency's sample size).
    pub committed_samples: usize,
    /// Client bursts that missed their 50 ms slot ("rate too high").
    pub missed_bursts: usize,
}

/// Why logs could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A log file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A required line is missing or malformed.
    #[error("{0}")]
    Missing(String),
    /// A node logged a panic or an error (the reference's parser refuses such runs too).
    #[error("{0} logged a panic or an error")]
    Failed(String),
}

/// The logs of one run: client `i` sent to worker `i`.
#[derive(Debug, Default)]
pub struct Logs {
    /// `client-{i}.log` contents.
    pub clients: Vec<String>,
    /// `primary-{i}.log` contents.
    pub primaries: Vec<String>,
    /// `worker-{i}.log` contents.
    pub workers: Vec<String>,
}

impl Logs {
    /// Reads `client-*.log`, `primary-*.log` and `worker-*.log` from `dir`, in index order.
    pub fn read_dir(dir: &Path) -> Result<Self, ParseError> {
        let read = |kind: &str| -> Result<Vec<String>, ParseError> {
            let mut files = Vec::new();
            for i in 0.. {
                let path = dir.join(format!("{kind}-{i}.log"));
                if !path.exists() {
                    break;
                }
                files.push(
                    std::fs::read_to_string(&path)
                        .map_err(|source| ParseError::Io { path, source })?,
                );
            }
            Ok(files)
        };
        Ok(Self {
            clients: read("client")?,
            primaries: read("primary")?,
            workers: read("worker")?,
        })
    }
}

/// `(time in ms, message)` of each well-formed line.
fn lines(log: &str) -> impl Iterator<Item = (i64, &str)> {
    log.lines().filter_map(|line| {
        let rest = line.strip_prefix('[')?;
        let (stamp, rest) = rest.split_once(' ')?;
        let (_, message) = rest.split_once("] ")?;
        Some((parse_timestamp(stamp)?, message))
    })
}

fn check(name: &str, log: &str) -> Result<(), ParseError> {
    if log.contains("panicked") || log.contains("Error") {
        return Err(ParseError::Failed(name.to_owned()));
    }
    Ok(())
}

/// Computes the [`Summary`] of a run from its logs.
pub fn summarize(logs: &Logs) -> Result<Summary, ParseError> {
    let mut tx_size = None;
    let mut input_rate = 0;
    let mut starts = Vec::new();
    let mut missed_bursts = 0;
    let mut sent_samples: Vec<HashMap<u64, i64>> = Vec::new();
    for (i, log) in logs.clients.iter().enumerate() {
        check(&format!("client {i}"), log)?;
        let mut samples = HashMap::new();
        for (time, message) in lines(log) {
            if let Some(size) = message
                .strip_prefix("Transactions size: ")
                .and_then(|s| s.strip_suffix(" B"))
            {
                tx_size = size.parse().ok();
            } else if let Some(rate) = message
                .strip_prefix("Transactions rate: ")
                .and_then(|s| s.strip_suffix(" tx/s"))
            {
                input_rate += rate.parse::<u64>().unwrap_or(0);
            } else if message.starts_with("Start ") {
                starts.push(time);
            } else if let Some(id) = message.strip_prefix("Sending sample transaction ") {
                if let Ok(id) = id.parse() {
                    samples.insert(id, time);
                }
            } else if message.contains("rate too high") {
                missed_bursts += 1;
            }
        }
        sent_samples.push(samples);
    }
    let tx_size: u64 =
        tx_size.ok_or_else(|| ParseError::Missing("no client logged its tx size".into()))?;
    let start = *starts
        .iter()
        .min()
        .ok_or_else(|| ParseError::Missing("no client logged its start".into()))?;

    let mut proposals: HashMap<&str, i64> = HashMap::new();
    let mut commits: HashMap<&str, i64> = HashMap::new();
    for (i, log) in logs.primaries.iter().enumerate() {
        check(&format!("primary {i}"), log)?;
        for (time, message) in lines(log) {
            let (table, rest) = if let Some(rest) = message.strip_prefix("Created B") {
                (&mut proposals, rest)
            } else if let Some(rest) = message.strip_prefix("Committed B") {
                (&mut commits, rest)
            } else {
                continue;
            };
            if let Some((_, digest)) = rest.split_once(" -> ") {
                table
                    .entry(digest)
                    .and_modify(|t| *t = (*t).min(time))
                    .or_insert(time);
            }
        }
    }

    let mut sizes: HashMap<&str, u64> = HashMap::new();
    let mut received_samples: Vec<HashMap<u64, &str>> = Vec::new();
    for (i, log) in logs.workers.iter().enumerate() {
        check(&format!("worker {i}"), log)?;
        let mut samples = HashMap::new();
        for (_, message) in lines(log) {
            let Some(rest) = message.strip_prefix("Batch ") else {
                continue;
            };
            let Some((digest, what)) = rest.split_once(" contains ") else {
                continue;
            };
            if let Some(id) = what.strip_prefix("sample tx ") {
                if let Ok(id) = id.parse() {
                    samples.insert(id, digest);
                }
            } else if let Some(bytes) = what.strip_suffix(" B")
                && let Ok(bytes) = bytes.parse()
            {
                sizes.insert(digest, bytes);
            }
        }
        received_samples.push(samples);
    }

    let committed: Vec<(&str, i64)> = commits
        .iter()
        .filter(|(d, _)| sizes.contains_key(*d))
        .map(|(d, t)| (*d, *t))
        .collect();
    let committed_bytes: u64 = committed.iter().map(|(d, _)| sizes[d]).sum();
    let last_commit = committed.iter().map(|(_, t)| *t).max().unwrap_or(start);
    let first_proposal = proposals.values().copied().min().unwrap_or(start);
    let consensus_duration_s = (last_commit - first_proposal).max(1) as f64 / 1000.0;
    let end_to_end_duration_s = (last_commit - start).max(1) as f64 / 1000.0;
    let latencies: Vec<i64> = committed
        .iter()
        .filter_map(|(d, t)| proposals.get(d).map(|p| t - p))
        .collect();
    let mut e2e = Vec::new();
    for (sent, received) in sent_samples.iter().zip(&received_samples) {
        for (id, digest) in received {
            if let (Some(commit), Some(send)) = (commits.get(digest), sent.get(id)) {
                e2e.push(commit - send);
            }
        }
    }
    let mean = |v: &[i64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<i64>() as f64 / v.len() as f64
        }
    };
    let consensus_bps = committed_bytes as f64 / consensus_duration_s;
    let end_to_end_bps = committed_bytes as f64 / end_to_end_duration_s;
    Ok(Summary {
        tx_size,
        input_rate,
        committed_batches: committed.len(),
        committed_bytes,
        consensus_duration_s,
        consensus_tps: consensus_bps / tx_size as f64,
        consensus_bps,
        consensus_latency_ms: mean(&latencies),
        end_to_end_duration_s,
        end_to_end_tps: end_to_end_bps / tx_size as f64,
        end_to_end_bps,
        end_to_end_latency_ms: mean(&e2e),
        committed_samples: e2e.len(),
        missed_bursts,
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, " + RESULTS:")?;
        writeln!(
            f,
            " Consensus TPS: {:.0} tx/s ({:.0} B/s)",
            self.consensus_tps, self.consensus_bps
        )?;
        writeln!(f, " Consensus latency: {:.0} ms", self.consensus_latency_ms)?;
        writeln!(
            f,
            " End-to-end TPS: {:.0} tx/s ({:.0} B/s)",
            self.end_to_end_tps, self.end_to_end_bps
        )?;
        writeln!(
            f,
            " End-to-end latency: {:.0} ms ({} samples)",
            self.end_to_end_latency_ms, self.committed_samples
        )?;
        write!(
            f,
            " Committed: {} batches, {} B in {:.1} s; input {} tx/s of {} B; {} late bursts",
            self.committed_batches,
            self.committed_bytes,
            self.end_to_end_duration_s,
            self.input_rate,
            self.tx_size,
            self.missed_bursts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_reference_formulas() {
        let client = "\
[2026-01-01T00:00:00.000Z INFO  narwhal::client] Transactions size: 512 B
[2026-01-01T00:00:00.000Z INFO  narwhal::client] Transactions rate: 1000 tx/s
[2026-01-01T00:00:00.000Z INFO  narwhal::client] Start sending transactions
[2026-01-01T00:00:00.100Z INFO  narwhal::client] Sending sample transaction 0
";
        let worker = "\
[2026-01-01T00:00:00.200Z INFO  narwhal::worker] Batch AAA= contains 5120 B
[2026-01-01T00:00:00.200Z INFO  narwhal::worker] Batch AAA= contains sample tx 0
[2026-01-01T00:00:00.300Z INFO  narwhal::worker] Batch BBB= contains 1024 B
";
        let primary0 = "\
[2026-01-01T00:00:01.000Z INFO  narwhal::primary] Created B1(0) -> AAA=
[2026-01-01T00:00:01.500Z INFO  narwhal::primary] Committed B1(0) -> AAA=
";
        let primary1 = "\
[2026-01-01T00:00:01.400Z INFO  narwhal::primary] Committed B1(0) -> AAA=
[2026-01-01T00:00:01.200Z INFO  narwhal::primary] Created B1(1) -> BBB=
";
        let logs = Logs {
            clients: vec![client.into()],
            primaries: vec![primary0.into(), primary1.into()],
            workers: vec![worker.into()],
        };
        let s = summarize(&logs).unwrap();
        // Only AAA committed (first commit at 1.400): 5120 B over 0.4 s from the first
        // proposal (1.000).
        assert_eq!(s.committed_batches, 1);
        assert_eq!(s.committed_bytes, 5120);
        assert!((s.consensus_tps - 5120.0 / 0.4 / 512.0).abs() < 1e-9);
        assert!((s.consensus_latency_ms - 400.0).abs() < 1e-9);
        assert!((s.end_to_end_tps - 5120.0 / 1.4 / 512.0).abs() < 1e-9);
        assert!((s.end_to_end_latency_ms - 1300.0).abs() < 1e-9);
        assert_eq!(s.input_rate, 1000);

        let failed = Logs {
            primaries: vec!["thread 'main' panicked at x".into()],
            ..logs
        };
        assert!(matches!(summarize(&failed), Err(ParseError::Failed(_))));
    }
}
