//! `nfdelay QUEUE DELAY_MS JITTER_MS LOSS_PCT MAX_SECS`: holds each packet that netfilter
//! queues to NFQUEUE number `QUEUE` for `DELAY_MS ± JITTER_MS` (so packets may be
//! reordered), drops `LOSS_PCT` percent of them, and stops after `MAX_SECS`. The kernel
//! here has no `netem`; this is its delay. Route packets to it with, for example,
//! `nft add rule inet bed out oifname "eth0" queue num 0 bypass`: with `bypass`, traffic
//! flows undelayed when the daemon is not running.
//!
//! Prints `READY` once bound, and `NFDELAY packets=N dropped=M` when it stops.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io::{ErrorKind, Write as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use nfq::{Message, Queue, Verdict};

struct Held {
    due: Instant,
    seq: u64,
    message: Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// xorshift64*: enough randomness for jitter and loss, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Option<(u16, f64, f64, f64, u64)> = (|| {
        Some((
            args.first()?.parse().ok()?,
            args.get(1)?.parse().ok()?,
            args.get(2)?.parse().ok()?,
            args.get(3)?.parse().ok()?,
            args.get(4)?.parse().ok()?,
        ))
    })();
    let Some((queue_num, delay_ms, jitter_ms, loss_pct, max_secs)) = parsed else {
        eprintln!("usage: nfdelay QUEUE DELAY_MS JITTER_MS LOSS_PCT MAX_SECS");
        return ExitCode::from(2);
    };
    match run(queue_num, delay_ms, jitter_ms, loss_pct, max_secs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nfdelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    queue_num: u16,
    delay_ms: f64,
    jitter_ms: f64,
    loss_pct: f64,
    max_secs: u64,
) -> std::io::Result<()> {
    let mut queue = Queue::open()?;
    queue.bind(queue_num)?;
    queue.set_copy_range(queue_num, 64)?;
    queue.set_queue_max_len(queue_num, 65_536)?;
    queue.set_fail_open(queue_num, true)?;
    queue.set_nonblocking(true);
    println!("READY");
    std::io::stdout().flush()?;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let stop = Instant::now() + Duration::from_secs(max_secs);
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let (mut packets, mut dropped, mut seq) = (0u64, 0u64, 0u64);
    while Instant::now() < stop {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    packets += 1;
                    if rng.unit() * 100.0 < loss_pct {
                        dropped += 1;
                        message.set_verdict(Verdict::Drop);
                        queue.verdict(message)?;
                        continue;
                    }
                    let jitter = (rng.unit() * 2.0 - 1.0) * jitter_ms;
                    let wait = Duration::from_secs_f64((delay_ms + jitter).max(0.0) / 1000.0);
                    seq += 1;
                    held.push(Reverse(Held {
                        due: Instant::now() + wait,
                        seq,
                        message,
                    }));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(h)| h.due <= now) {
            let Reverse(mut h) = held.pop().expect("peeked");
            h.message.set_verdict(Verdict::Accept);
            queue.verdict(h.message)?;
        }
        // Wake for the next packet due, or to look for new ones at least every 0.5 ms.
        let next = held
            .peek()
            .map_or(Duration::from_micros(500), |Reverse(h)| {
                h.due.saturating_duration_since(now)
            })
            .min(Duration::from_micros(500));
        std::thread::sleep(next);
    }
    // Let the held packets go before leaving.
    while let Some(Reverse(mut h)) = held.pop() {
        h.message.set_verdict(Verdict::Accept);
        queue.verdict(h.message)?;
    }
    println!("NFDELAY packets={packets} dropped={dropped}");
    Ok(())
}
