//! The client layers against scripted inner services, on tokio's paused clock: no sockets,
//! no real waiting, deterministic.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Echo, echo};
use p2plane::{
    Error, PeerId, Request,
    layer::{RetryLayer, RetryPolicy, TimeoutLayer, ValidateLayer},
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
        .layer(ValidateLayer::with(|req: &Request<Echo>| {
            if req.body().text.is_empty() {
                Err("empty text".to_owned())
            } else {
                Ok(())
            }
        }))
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
