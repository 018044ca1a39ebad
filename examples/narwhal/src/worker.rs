//! The worker: batches client transactions, sends each batch to the other workers, and hands
//! its digest to the primary once 2f+1 workers (itself included) hold it. It also stores
//! the other workers' batches and serves missing ones.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream::FuturesUnordered};
use p2plane::{Error, Node, NodeError, Request, service_fn};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::{Instant, sleep_until},
};

use crate::{
    batch_store::{BatchStore, SharedStore},
    committee::{Committee, Parameters},
    log::Logger,
    net::{Reliable, reliable, send_until_gc},
    primary::CoreEvent,
    types::{
        AuthorityIndex, BatchProtocol, BatchSyncProtocol, Digest, HeaderProtocol, Round,
        Transactions, TxProtocol, sample_id,
    },
};

/// The most digests one batch-sync request may ask for (one header's payload, what a primary
/// asks for at most); more is refused outright.
pub(crate) const MAX_SYNC_DIGESTS: usize = crate::primary::MAX_HEADER_PAYLOAD;

/// What the worker needs from its authority.
pub(crate) struct WorkerContext {
    pub me: AuthorityIndex,
    pub committee: Arc<Committee>,
    pub params: Parameters,
    pub node: Node<HeaderProtocol>,
    pub store: SharedStore,
    pub log: Logger,
    pub gc: watch::Receiver<Round>,
    pub round: watch::Receiver<Round>,
    pub tasks: Arc<Semaphore>,
    pub primary: mpsc::Sender<CoreEvent>,
}

/// Serves the worker's protocols and starts its batch maker.
pub(crate) fn start(ctx: WorkerContext) -> Result<tokio::task::JoinHandle<()>, NodeError> {
    let (tx_sender, tx_receiver) = mpsc::channel::<Request<Transactions>>(64);

    // Client transactions: queued for the batch maker (a full queue holds the client back).
    ctx.node
        .serve_protocol::<TxProtocol, _>(service_fn(move |req: Request<Transactions>| {
            let sender = tx_sender.clone();
            async move {
                if let Some(Err(e)) = req.body().iter().find(Result::is_err) {
                    return Err(Error::Rejected {
                        peer: None,
                        reason: e.to_string(),
                    });
                }
                sender.send(req).await.map_err(|_| Error::Shutdown)
            }
        }))?;

    // Other workers' batches: stored, then acknowledged. Only committee members may fill
    // the store.
    let store = Arc::clone(&ctx.store);
    let round = ctx.round.clone();
    let committee = Arc::clone(&ctx.committee);
    ctx.node.serve_protocol::<BatchProtocol, _>(service_fn(
        move |req: Request<Transactions>| {
            let store = Arc::clone(&store);
            let round = *round.borrow();
            let member = committee.index_of(&req.peer()).is_some();
            async move {
                let peer = req.peer();
                if !member {
                    return Err(Error::Rejected {
                        peer: None,
                        reason: format!("{peer} is not in the committee"),
                    });
                }
                let batch = req.into_body();
                let digest = batch.digest();
                if BatchStore::lock(&store).insert(digest, batch, round) {
                    Ok(())
                } else {
                    Err(Error::Busy { peer })
                }
            }
        },
    ))?;

    // Batch sync: whatever is held of what is asked, up to a size bound.
    let store = Arc::clone(&ctx.store);
    let committee = Arc::clone(&ctx.committee);
    ctx.node.serve_stream::<BatchSyncProtocol, _>(service_fn(
        move |req: Request<Vec<Digest>>| {
            // Each batch is copied out of its shared handle only when the caller has room
            // for it.
            let answer = answer_sync(&store, &committee, req.peer(), req.body()).map(|held| {
                futures::stream::iter(held).map(|batch| Ok(Transactions::clone(&batch)))
            });
            async move { answer }
        },
    ))?;

    if let Some(authority) = ctx.committee.authority(ctx.me) {
        ctx.log.info(format_args!(
            "Worker {} successfully booted on {}",
            ctx.me,
            crate::committee::host(&authority.address)
        ));
    }
    Ok(tokio::spawn(batch_maker(ctx, tx_receiver)))
}

/// A batch-sync answer: only committee members are served (others could make this worker
/// copy its store out for them), at most [`MAX_SYNC_DIGESTS`] digests a request, and the
/// store's lock is held only while shared handles to the batches are taken.
fn answer_sync(
    store: &SharedStore,
    committee: &Committee,
    peer: p2plane::PeerId,
    wanted: &[Digest],
) -> Result<Vec<Arc<Transactions>>, Error> {
    if committee.index_of(&peer).is_none() {
        return Err(Error::Rejected {
            peer: None,
            reason: format!("{peer} is not in the committee"),
        });
    }
    if wanted.len() > MAX_SYNC_DIGESTS {
        return Err(Error::Rejected {
            peer: None,
            reason: format!(
                "{} digests asked; at most {MAX_SYNC_DIGESTS} a request",
                wanted.len()
            ),
        });
    }
    Ok(BatchStore::lock(store).held(wanted))
}

struct Pending {
    batch: Transactions,
    tx_bytes: usize,
    samples: Vec<u64>,
}

async fn batch_maker(ctx: WorkerContext, mut requests: mpsc::Receiver<Request<Transactions>>) {
    let client = reliable::<_, BatchProtocol>(&ctx.node, Duration::from_secs(10), 20);
    let mut pending = Pending {
        batch: Transactions(Vec::with_capacity(ctx.params.batch_size + 1024)),
        tx_bytes: 0,
        samples: Vec::new(),
    };
    let mut deadline = Instant::now() + ctx.params.max_batch_delay;
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { break };
                for tx in request.body().iter().flatten() {
                    pending.batch.push(tx);
                    pending.tx_bytes += tx.len();
                    if let Some(id) = sample_id(tx) {
                        pending.samples.push(id);
                    }
                    if pending.tx_bytes >= ctx.params.batch_size {
                        seal(&ctx, &client, &mut pending).await;
                        deadline = Instant::now() + ctx.params.max_batch_delay;
                    }
                }
            }
            () = sleep_until(deadline) => {
                if pending.tx_bytes > 0 {
                    seal(&ctx, &client, &mut pending).await;
                }
                deadline = Instant::now() + ctx.params.max_batch_delay;
            }
        }
    }
}

/// Seals the pending batch: logs it as the reference does, stores it, and sends it to the
/// other workers; a task counts their acknowledgements and tells the primary at 2f+1.
async fn seal(ctx: &WorkerContext, client: &Reliable<BatchProtocol>, pending: &mut Pending) {
    let capacity = ctx.params.batch_size + 1024;
    let batch = std::mem::replace(
        &mut pending.batch,
        Transactions(Vec::with_capacity(capacity)),
    );
    let digest = batch.digest();
    ctx.log.info(format_args!(
        "Batch {digest} contains {} B",
        pending.tx_bytes
    ));
    for id in pending.samples.drain(..) {
        ctx.log
            .info(format_args!("Batch {digest} contains sample tx {id}"));
    }
    pending.tx_bytes = 0;
    let round = *ctx.round.borrow();
    let stored = BatchStore::lock(&ctx.store).insert(digest, batch.clone(), round);
    if !stored {
        ctx.log
            .warn(format_args!("batch store full: dropping batch {digest}"));
        return;
    }

    let Ok(permit) = Arc::clone(&ctx.tasks).acquire_owned().await else {
        return;
    };
    let me = ctx.me;
    let peers: Vec<_> = ctx
        .committee
        .authorities()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as AuthorityIndex != me)
        .map(|(_, a)| a.peer_id)
        .collect();
    let quorum = ctx.committee.quorum_threshold();
    let primary = ctx.primary.clone();
    let gc = ctx.gc.clone();
    let log = ctx.log.clone();
    let client = client.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut stake = 1;
        let mut delivered = false;
        if stake >= quorum {
            delivered = primary.send(CoreEvent::OurBatch(digest)).await.is_ok();
        }
        let Some(first) = peers.first() else { return };
        let request = Request::for_protocol::<BatchProtocol>(*first, batch);
        let mut acks: FuturesUnordered<_> = peers
            .iter()
            .map(|peer| {
                send_until_gc(
                    client.clone(),
                    request.clone().with_peer(*peer),
                    gc.clone(),
                    round,
                )
            })
            .collect();
        drop(request);
        while let Some(result) = acks.next().await {
            if let Some(Ok(())) = result {
                stake += 1;
            }
            if !delivered && stake >= quorum {
                delivered = primary.send(CoreEvent::OurBatch(digest)).await.is_ok();
            }
        }
        if !delivered {
            log.warn(format_args!(
                "batch {digest} reached only {stake} of {quorum} workers"
            ));
        }
    });
}

#[cfg(test)]
mod tests {
    use p2plane::transport::libp2p::identity::Keypair;

    use super::*;

    /// Issue 16, defect 12: batch sync answered anyone, any number of digests, and copied
    /// batches while holding the store's lock.
    #[test]
    fn batch_sync_serves_members_only_and_bounded_requests() {
        let members: Vec<_> = (0..4)
            .map(|_| {
                (
                    Keypair::generate_ed25519().public().to_peer_id(),
                    "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                )
            })
            .collect();
        let member = members[1].0;
        let committee = Committee::new(members).unwrap();
        let store = SharedStore::default();
        let batch = Transactions(vec![7; 100]);
        let digest = batch.digest();
        assert!(BatchStore::lock(&store).insert(digest, batch.clone(), 1));

        let answer = answer_sync(&store, &committee, member, &[digest]).unwrap();
        assert_eq!(answer.len(), 1);
        assert_eq!(*answer[0], batch);
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            answer_sync(&store, &committee, stranger, &[digest]),
            Err(Error::Rejected { .. })
        ));
        let flood = vec![digest; MAX_SYNC_DIGESTS + 1];
        assert!(matches!(
            answer_sync(&store, &committee, member, &flood),
            Err(Error::Rejected { reason, .. }) if reason.contains("at most")
        ));
        assert_eq!(
            answer_sync(&store, &committee, member, &flood[..MAX_SYNC_DIGESTS])
                .unwrap()
                .len(),
            MAX_SYNC_DIGESTS
        );
    }
}
