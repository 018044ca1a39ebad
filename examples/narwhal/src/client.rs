//! The load generator: sends transactions of a set size at a set rate to one worker, in
//! bursts every 50 ms as the reference's benchmark client does, and logs the lines the
//! reference's parser reads.

use std::time::Duration;

use p2plane::{Error, Node, PeerId, Protocol, Request, tower::ServiceExt};
use tokio::time::{Instant, MissedTickBehavior, interval};

use crate::{
    log::Logger,
    types::{Transactions, TxProtocol},
};

/// Bursts per second (one every 50 ms), as in the reference client.
pub const BURSTS_PER_SECOND: u64 = 20;

/// What one client does.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The worker (its authority's peer id).
    pub target: PeerId,
    /// Transactions per second from this client.
    pub rate: u64,
    /// Bytes per transaction (at least 9: a tag byte and an 8-byte id).
    pub tx_size: usize,
    /// How long to send.
    pub duration: Duration,
}

/// What a client sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientReport {
    /// Transactions the worker acknowledged.
    pub sent: u64,
    /// Bursts that took longer than their 50 ms slot.
    pub late_bursts: u64,
    /// Bursts the worker did not acknowledge.
    pub failed_bursts: u64,
}

/// Sends transactions to `config.target` from `node` until `config.duration` has passed.
/// One transaction per burst is a sample (first byte 0, then its id), logged when sent.
pub async fn run<P: Protocol>(
    node: &Node<P>,
    config: &ClientConfig,
    log: &Logger,
) -> Result<ClientReport, Error> {
    let tx_size = config.tx_size.max(9);
    let burst = (config.rate / BURSTS_PER_SECOND).max(1);
    log.info(format_args!("Transactions size: {tx_size} B"));
    log.info(format_args!("Transactions rate: {} tx/s", config.rate));
    let client = node.client_for::<TxProtocol>();
    let mut report = ClientReport::default();
    let mut ticks = interval(Duration::from_millis(1000 / BURSTS_PER_SECOND));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut counter: u64 = 0;
    let mut other: u64 = rand::random();
    let mut tx = vec![0u8; tx_size];
    log.info(format_args!("Start sending transactions"));
    let start = Instant::now();
    while start.elapsed() < config.duration {
        ticks.tick().await;
        let began = Instant::now();
        let mut txs = Transactions(Vec::with_capacity(burst as usize * (tx_size + 4)));
        for x in 0..burst {
            if x == counter % burst {
                log.info(format_args!("Sending sample transaction {counter}"));
                tx[0] = 0;
                tx[1..9].copy_from_slice(&counter.to_be_bytes());
            } else {
                other = other.wrapping_add(1);
                tx[0] = 1;
                tx[1..9].copy_from_slice(&other.to_be_bytes());
            }
            txs.push(&tx);
        }
        let request = Request::for_protocol::<TxProtocol>(config.target, txs);
        match client.clone().oneshot(request).await {
            Ok(()) => report.sent += burst,
            Err(Error::Shutdown) => return Err(Error::Shutdown),
            Err(e) => {
                report.failed_bursts += 1;
                log.warn(format_args!("Failed to send transactions: {e}"));
            }
        }
        if began.elapsed() > Duration::from_millis(1000 / BURSTS_PER_SECOND) {
            report.late_bursts += 1;
            log.warn(format_args!("Transaction rate too high for this client"));
        }
        counter += 1;
    }
    Ok(report)
}
