//! The Prometheus endpoint of running nodes: scraped over HTTP, its counters move with the
//! traffic.

mod common;

use std::net::SocketAddr;

use common::{Echo, TCP, config, echo, echo_node, first_addr};
use p2plane::{Message, Request, tower::ServiceExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample `name{labels}` in a scrape, if present.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_counters_that_move() {
    let with_metrics = || config(TCP).with_metrics("127.0.0.1:0".parse().unwrap());
    let server = echo_node(with_metrics()).await;
    let client = echo_node(with_metrics()).await;
    let (server_metrics, client_metrics) = (
        server.metrics_addr().expect("metrics on"),
        client.metrics_addr().expect("metrics on"),
    );
    assert_ne!(server_metrics.port(), 0);

    let (status, before) = get(client_metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let outbound_ok = format!(
        "p2plane_requests_total{{protocol=\"{}\",direction=\"outbound\",outcome=\"ok\"}}",
        Echo::PROTOCOL
    );
    assert_eq!(sample(&before, &outbound_ok), None);

    let peer = client.dial(first_addr(&server).await).await.unwrap();
    for i in 0..5 {
        client
            .client()
            .oneshot(Request::new(peer, echo(i)))
            .await
            .unwrap();
    }
    let _ = client.dht().bootstrap().await;

    let (_, after) = get(client_metrics, "/metrics").await;
    assert_eq!(sample(&after, &outbound_ok), Some(5.0), "{after}");
    let latency = format!(
        "p2plane_request_duration_seconds_count{{protocol=\"{}\"}}",
        Echo::PROTOCOL
    );
    assert_eq!(sample(&after, &latency), Some(5.0));
    assert!(
        sample(
            &after,
            "p2plane_dht_queries_total{query=\"bootstrap\",outcome=\"error\"}"
        )
        .is_some(),
        "{after}"
    );
    assert!(sample(&after, "p2plane_peer_store_peers").is_some());
    // libp2p's own metrics are there too.
    assert!(
        after.contains("libp2p_swarm_connections_established"),
        "{after}"
    );

    let (_, served) = get(server_metrics, "/metrics").await;
    let inbound_ok = format!(
        "p2plane_requests_total{{protocol=\"{}\",direction=\"inbound\",outcome=\"ok\"}}",
        Echo::PROTOCOL
    );
    assert_eq!(sample(&served, &inbound_ok), Some(5.0), "{served}");

    let (status, _) = get(client_metrics, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// A relay counts the reservations and circuits it serves (libp2p's relay metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_counts_its_reservations() {
    use p2plane::{Event, ReachConfig, RelayServerConfig, transport::libp2p::multiaddr::Protocol};
    let relay = echo_node(
        config(TCP)
            .with_private_addrs(true)
            .with_metrics("127.0.0.1:0".parse().unwrap())
            .with_reach(ReachConfig::default().with_relay_server(RelayServerConfig::default())),
    )
    .await;
    let relay_addr = first_addr(&relay)
        .await
        .with(Protocol::P2p(relay.local_peer_id()));
    let accepted = "libp2p_relay_events_total{event=\"ReservationReqAccepted\"}";
    let metrics = relay.metrics_addr().expect("metrics on");
    let (_, before) = get(metrics, "/metrics").await;
    assert_eq!(sample(&before, accepted), None, "{before}");
    let listener = p2plane::Node::<Echo>::new(
        config(TCP)
            .with_private_addrs(true)
            .with_reach(ReachConfig::default().with_relay(relay_addr)),
    )
    .await
    .unwrap();
    let mut events = listener.events();
    let relayed = |addrs: Vec<p2plane::Multiaddr>| addrs.iter().any(p2plane::transport::is_relayed);
    if !relayed(listener.listen_addrs().await.unwrap()) {
        common::wait_event(&mut events, "the reservation", |e| {
            matches!(e, Event::RelayReservation { .. }).then_some(())
        })
        .await;
    }
    // The relay counts the reservation when its event loop takes the event, which may come
    // just after the listener hears the answer.
    let after = common::within("the counted reservation", async {
        loop {
            let (_, after) = get(metrics, "/metrics").await;
            if sample(&after, accepted).is_some() {
                return after;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(sample(&after, accepted), Some(1.0), "{after}");
}

#[tokio::test]
async fn without_the_setting_nothing_is_served() {
    let node = echo_node(config(TCP)).await;
    assert_eq!(node.metrics_addr(), None);
}

/// Issue 16, defect 13: the endpoint served one connection at a time, so a scraper that
/// opened a connection and sent nothing held every other scrape up. Now a held connection
/// stays open while another scrape is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_connection_does_not_stop_another_scrape() {
    let node = echo_node(config(TCP).with_metrics("127.0.0.1:0".parse().unwrap())).await;
    let addr = node.metrics_addr().expect("metrics on");
    // Half a request head, then nothing.
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"GET /metr").await.unwrap();
    let (status, body) = common::within("a second scrape", get(addr, "/metrics")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("p2plane_"), "{body}");
    // The held connection was not closed to make room: it is still open, nothing read.
    let mut byte = [0u8; 1];
    match held.try_read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the held connection was closed or answered first: {other:?}"),
    }
    // Many at once are served too (up to the connection limit).
    let scrapes = futures::future::join_all((0..8).map(|_| get(addr, "/metrics"))).await;
    assert!(
        scrapes
            .iter()
            .all(|(status, _)| status == "HTTP/1.1 200 OK")
    );
}

/// Streams the numbers `0..n`.
struct Count;
impl p2plane::Streaming for Count {
    const NAME: &'static str = "/p2plane-test/metrics-count/1";
    type Request = u64;
    type Upload = ();
    type Item = u64;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_and_their_items_are_counted() {
    use futures::StreamExt as _;
    let with_metrics = || config(TCP).with_metrics("127.0.0.1:0".parse().unwrap());
    let server = echo_node(with_metrics()).await;
    server
        .serve_stream::<Count, _>(p2plane::service_fn(|req: Request<u64>| async move {
            let n = *req.body();
            Ok::<_, std::convert::Infallible>(futures::stream::iter((0..n).map(Ok)))
        }))
        .unwrap();
    let client = echo_node(with_metrics()).await;
    let peer = client.dial(first_addr(&server).await).await.unwrap();
    for n in [10, 20, 30] {
        let items = client
            .stream_client::<Count>()
            .request(peer, n)
            .await
            .unwrap();
        assert_eq!(items.count().await as u64, n);
    }
    let calls = |direction: &str| {
        format!(
            "p2plane_requests_total{{protocol=\"{}\",direction=\"{direction}\",outcome=\"ok\"}}",
            <Count as p2plane::Streaming>::NAME
        )
    };
    let items = |direction: &str| {
        format!(
            "p2plane_stream_items_total{{protocol=\"{}\",direction=\"{direction}\"}}",
            <Count as p2plane::Streaming>::NAME
        )
    };
    let (_, client_scrape) = get(client.metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(sample(&client_scrape, &calls("outbound")), Some(3.0));
    assert_eq!(sample(&client_scrape, &items("received")), Some(60.0));
    // The server counts a stream before it writes the stream's end, so its counts are in
    // by the time the caller has read that end.
    let (_, server_scrape) = get(server.metrics_addr().unwrap(), "/metrics").await;
    assert_eq!(sample(&server_scrape, &calls("inbound")), Some(3.0));
    assert_eq!(sample(&server_scrape, &items("sent")), Some(60.0));
}
