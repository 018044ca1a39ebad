//! The client layers against scripted inner services, on tokio's paused clock: no sockets,
//! no real waiting, deterministic.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Echo, echo, non_empty_text};
use p2plane::{
    Error, PeerId, Request,
    layer::{
        InFlightLimitLayer, RateLimitLayer, RetryLayer, RetryPolicy, TimeoutLayer, TpsBudget,
        ValidateLayer,
    },
    service_fn,
};
use tokio::time::Instant;
use tower::{Layer as _, Service, ServiceBuilder, ServiceExt as _};

/// An inner service that fails with the scripted errors in turn, then answers, and records
/// when each attempt arrived.
#[derive(Clone)]
struct Script {
    failures: Arc<Mutex<Vec<Error>>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn new(mut failures: Vec<Error>) -> Self {
        failures.reverse();
        Self {
            failures: Arc::new(Mutex::new(failures)),
            attempts: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl Service<Request<Echo>, Response = Echo, Error = Error, Future: Send> + Clone + use<>
    {
        let this = self.clone();
        service_fn(move |req: Request<Echo>| {
            let this = this.clone();
            async move {
                this.attempts.lock().unwrap().push(Instant::now());
                match this.failures.lock().unwrap().pop() {
                    Some(e) => Err(e),
                    None => Ok(req.into_body()),
                }
            }
        })
    }

    fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }
}

fn peer() -> PeerId {
    PeerId::random()
}

#[tokio::test(start_paused = true)]
async fn timeout_is_typed_and_fires_at_the_deadline() {
    let p = peer();
    let slow = service_fn(|req: Request<Echo>| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, Error>(req.into_body())
    });
    let start = Instant::now();
    let result = TimeoutLayer::new(Duration::from_secs(2))
        .layer(slow)
        .oneshot(Request::new(p, echo(1)))
        .await;
    assert_eq!(result, Err(Error::Timeout { peer: p }));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_within_the_full_jitter_bounds() {
    let p = peer();
    let script = Script::new(vec![
        Error::Busy { peer: p },
        Error::Timeout { peer: p },
        Error::ConnectionClosed { peer: p },
    ]);
    let policy = RetryPolicy::exponential(5).with_base_delay(Duration::from_millis(100));
    let reply = RetryLayer::new(policy.clone())
        .layer(script.service())
        .oneshot(Request::new(p, echo(3)))
        .await;
    assert_eq!(reply, Ok(echo(3)));
    let at = script.attempts();
    assert_eq!(at.len(), 4);
    for (n, pair) in at.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        assert!(
            waited <= policy.backoff_bound(n as u32),
            "wait {n} was {waited:?}"
        );
    }
    assert_eq!(policy.backoff_bound(0), Duration::from_millis(100));
    assert_eq!(policy.backoff_bound(3), Duration::from_millis(800));
    assert_eq!(policy.backoff_bound(40), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_retries() {
    let p = peer();
    let script = Script::new(vec![Error::Busy { peer: p }; 10]);
    let reply = RetryLayer::new(RetryPolicy::exponential(3))
        .layer(script.service())
        .oneshot(Request::new(p, echo(1)))
        .await;
    assert_eq!(reply, Err(Error::Busy { peer: p }));
    assert_eq!(script.attempts().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let p = peer();
    for error in [
        Error::Rejected {
            peer: Some(p),
            reason: "no".into(),
        },
        Error::UnsupportedProtocol {
            peer: p,
            protocol: "/x".into(),
        },
        Error::Failed {
            peer: p,
            message: "boom".into(),
        },
    ] {
        let script = Script::new(vec![error.clone()]);
        let reply = RetryLayer::new(RetryPolicy::exponential(3))
            .layer(script.service())
            .oneshot(Request::new(p, echo(1)))
            .await;
        assert_eq!(reply, Err(error));
        assert_eq!(script.attempts().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_are_retried_only_when_the_remote_cannot_have_acted() {
    let p = peer();
    // A timeout: the remote may have acted, so no retry.
    let script = Script::new(vec![Error::Timeout { peer: p }]);
    let request = Request::new(p, echo(1)).non_idempotent();
    let reply = RetryLayer::new(RetryPolicy::exponential(3))
        .layer(script.service())
        .oneshot(request.clone())
        .await;
    assert_eq!(reply, Err(Error::Timeout { peer: p }));
    assert_eq!(script.attempts().len(), 1);
    // Busy: the handler did not run, so a retry is safe.
    let script = Script::new(vec![Error::Busy { peer: p }]);
    let reply = RetryLayer::new(RetryPolicy::exponential(3))
        .layer(script.service())
        .oneshot(request)
        .await;
    assert_eq!(reply, Ok(echo(1)));
    assert_eq!(script.attempts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn timeout_applies_per_attempt_under_retry() {
    let p = peer();
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    // The first attempt hangs; the second answers at once.
    let inner = service_fn(move |req: Request<Echo>| {
        let first = {
            let mut n = c.lock().unwrap();
            *n += 1;
            *n == 1
        };
        async move {
            if first {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, Error>(req.into_body())
        }
    });
    let mut stack = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::exponential(2).with_base_delay(Duration::from_millis(10)),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(inner);
    let start = Instant::now();
    let reply = stack
        .ready()
        .await
        .unwrap()
        .call(Request::new(p, echo(5)))
        .await;
    assert_eq!(reply, Ok(echo(5)));
    assert_eq!(*calls.lock().unwrap(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(1) && start.elapsed() <= Duration::from_millis(1010)
    );
}

#[tokio::test(start_paused = true)]
async fn validate_refuses_without_calling_the_inner_service() {
    let p = peer();
    let script = Script::new(vec![]);
    let mut stack = ServiceBuilder::new()
        .layer(ValidateLayer::with(non_empty_text))
        .service(script.service());
    let bad = Echo {
        seq: 1,
        text: String::new(),
    };
    let err = stack
        .ready()
        .await
        .unwrap()
        .call(Request::new(p, bad))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::Rejected {
            peer: None,
            reason: "empty text".into()
        }
    );
    assert!(script.attempts().is_empty());
    assert_eq!(
        stack
            .ready()
            .await
            .unwrap()
            .call(Request::new(p, echo(2)))
            .await,
        Ok(echo(2))
    );
    assert_eq!(script.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_retries_when_everything_fails() {
    let p = peer();
    let script = Script::new(vec![Error::Busy { peer: p }; 1000]);
    // No deposits count (0 %), a reserve of 1 retry per second over 10 s: 10 retries in all.
    let policy = RetryPolicy::exponential(3)
        .with_base_delay(Duration::from_millis(1))
        .with_budget(TpsBudget::new(Duration::from_secs(10), 1, 0.0));
    let layer = RetryLayer::new(policy);
    for i in 0..20 {
        let reply = layer
            .layer(script.service())
            .oneshot(Request::new(p, echo(i)))
            .await;
        assert_eq!(reply, Err(Error::Busy { peer: p }));
    }
    // Without the budget it would have been 20 * 4 = 80 attempts.
    assert_eq!(script.attempts().len(), 20 + 10);
}

#[tokio::test(start_paused = true)]
async fn failover_moves_the_retry_to_another_peer_without_waiting() {
    let (dead, alive) = (peer(), peer());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let inner = service_fn(move |req: Request<Echo>| {
        s.lock().unwrap().push(req.peer());
        let fail = req.peer() == dead;
        async move {
            if fail {
                Err(Error::Dial {
                    peer: Some(dead),
                    reason: "refused".into(),
                })
            } else {
                Ok(req.into_body())
            }
        }
    });
    let selector = move |protocol: &str, exclude: &[PeerId]| {
        assert_eq!(protocol, "/p2plane-test/echo/1.0.0");
        [dead, alive].into_iter().find(|p| !exclude.contains(p))
    };
    let policy = RetryPolicy::exponential(3).with_failover(selector);
    let start = Instant::now();
    let reply = RetryLayer::new(policy)
        .layer(inner)
        .oneshot(Request::new(dead, echo(1)))
        .await;
    assert_eq!(reply, Ok(echo(1)));
    assert_eq!(*seen.lock().unwrap(), vec![dead, alive]);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// A handler that waits until released, for limit tests.
fn gated() -> (
    impl Service<Request<Echo>, Response = Echo, Error = Error, Future: Send> + Clone,
    Arc<tokio::sync::Semaphore>,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let service = service_fn(move |req: Request<Echo>| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok::<_, Error>(req.into_body())
        }
    });
    (service, gate)
}

#[tokio::test(start_paused = true)]
async fn in_flight_limit_is_per_peer_and_released_when_requests_end() {
    let (a, b) = (peer(), peer());
    let (handler, gate) = gated();
    let service = InFlightLimitLayer::new(2).layer(handler);
    let first = tokio::spawn(service.clone().oneshot(Request::new(a, echo(1))));
    let second = tokio::spawn(service.clone().oneshot(Request::new(a, echo(2))));
    tokio::task::yield_now().await;
    // A third from the same peer is refused at once; another peer is not affected.
    assert_eq!(
        service.clone().oneshot(Request::new(a, echo(3))).await,
        Err(Error::Busy { peer: a })
    );
    let other = tokio::spawn(service.clone().oneshot(Request::new(b, echo(4))));
    gate.add_permits(3);
    assert_eq!(first.await.unwrap(), Ok(echo(1)));
    assert_eq!(second.await.unwrap(), Ok(echo(2)));
    assert_eq!(other.await.unwrap(), Ok(echo(4)));
    // Slots are free again.
    gate.add_permits(1);
    assert_eq!(
        service.clone().oneshot(Request::new(a, echo(5))).await,
        Ok(echo(5))
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_is_a_token_bucket_per_peer() {
    let (a, b) = (peer(), peer());
    let script = Script::new(vec![]);
    let service = RateLimitLayer::new(2, Duration::from_secs(1)).layer(script.service());
    let call = |p, i| service.clone().oneshot(Request::new(p, echo(i)));
    assert!(call(a, 1).await.is_ok());
    assert!(call(a, 2).await.is_ok());
    assert_eq!(call(a, 3).await, Err(Error::Busy { peer: a }));
    assert!(call(b, 4).await.is_ok(), "another peer has its own bucket");
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(call(a, 5).await.is_ok(), "half a second earns one request");
    assert_eq!(call(a, 6).await, Err(Error::Busy { peer: a }));
    assert_eq!(script.attempts().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn one_limit_layer_shared_by_two_protocols_limits_a_peer_across_both() {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Other(u8);
    let p = peer();
    let shared = RateLimitLayer::new(2, Duration::from_secs(60));
    let echo_handler = shared.layer(service_fn(|r: Request<Echo>| async move {
        Ok::<_, Error>(r.into_body())
    }));
    let other_handler = shared.layer(service_fn(|r: Request<Other>| async move {
        Ok::<_, Error>(r.into_body().0)
    }));
    assert!(
        echo_handler
            .clone()
            .oneshot(Request::new(p, echo(1)))
            .await
            .is_ok()
    );
    let other = |n| Request::for_protocol::<OtherProtocol>(p, Other(n));
    assert_eq!(other_handler.clone().oneshot(other(2)).await, Ok(2));
    // The peer's two requests used the shared budget: both protocols now answer Busy.
    assert_eq!(
        echo_handler.clone().oneshot(Request::new(p, echo(3))).await,
        Err(Error::Busy { peer: p })
    );
    assert_eq!(
        other_handler.clone().oneshot(other(4)).await,
        Err(Error::Busy { peer: p })
    );

    struct OtherProtocol;
    impl p2plane::Protocol for OtherProtocol {
        const NAME: &'static str = "/p2plane-test/other/1.0.0";
        type Request = Other;
        type Response = u8;
    }
}
