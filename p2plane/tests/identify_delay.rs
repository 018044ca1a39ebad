//! Identify and ping wait `NodeConfig::identify_delay` on a new connection, so that the
//! connection's first request does not compete with them; identification still follows.

mod common;

use std::time::{Duration, Instant};

use common::{TCP, answer, config, echo, echo_node, first_addr, wait_event, within};
use futures::{FutureExt as _, StreamExt as _};
use p2plane::{Event, Request, tower::ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_waits_for_the_delay_and_the_first_request_does_not() {
    const DELAY: Duration = Duration::from_secs(1);
    let delayed = || config(TCP).with_identify_delay(DELAY);
    let a = echo_node(delayed()).await;
    let a_id = a.local_peer_id();
    let b = echo_node(delayed()).await;
    let mut b_events = b.events();

    let dialed = Instant::now();
    assert_eq!(within("dial", b.dial(first_addr(&a).await)).await, Ok(a_id));
    let reply = within(
        "the first request",
        b.client().oneshot(Request::new(a_id, echo(1))),
    )
    .await
    .unwrap();
    assert_eq!(reply, answer(&echo(1), a_id));
    let answered = dialed.elapsed();
    // The answer came before the delay was up (a dial and one request take milliseconds;
    // the delay is a second), so before either side ran identify: b has heard nothing
    // from it yet.
    assert!(
        answered < DELAY,
        "the first answer took {answered:?}, longer than the {DELAY:?} delay: nothing to check"
    );
    while let Some(Some(event)) = b_events.next().now_or_never() {
        assert!(
            !matches!(event, Event::PeerIdentified { .. }),
            "identified {answered:?} after the dial, before the delay: {event:?}"
        );
    }

    // Identify runs once the delay has passed, and reports a's protocols.
    let protocols = wait_event(&mut b_events, "b identifying a", |e| match e {
        Event::PeerIdentified { peer, protocols } if *peer == a_id => Some(protocols.clone()),
        _ => None,
    })
    .await;
    let identified = dialed.elapsed();
    assert!(identified >= DELAY, "identified after {identified:?}");
    assert!(!protocols.is_empty());
    println!(
        "FIGURE identify delay {DELAY:?}: first answer {answered:?} after the dial, \
         identified after {identified:?}"
    );
}
