//! Prometheus metrics: libp2p's own (connections, identify, ping, Kademlia, gossipsub) and
//! P2PLane's (requests and streaming calls by protocol, direction and outcome, round-trip
//! latency (to the first item, for a stream), retries, inbound refusals, stream items, DHT
//! queries, peer-store size), served in the text format on an HTTP
//! address. Off unless [`NodeConfig::metrics_addr`](crate::NodeConfig::metrics_addr) is set.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use p2plane_core::{Error, PeerStore};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DhtLabels {
    query: &'static str,
    outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// P2PLane's own metrics; cheap to update from any task (atomics).
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ProtocolLabels, Histogram>,
    retries: Family<ProtocolLabels, Counter>,
    dht_queries: Family<DhtLabels, Counter>,
    peer_store_size: Gauge,
    stream_items: Family<ItemLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    protocol: &'static str,
    direction: &'static str,
}

/// The outcome label of a request's result.
pub(crate) fn outcome(result: &Result<(), &Error>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::Busy { .. }) => "busy",
        Err(Error::Rejected { .. }) => "rejected",
        Err(Error::Failed { .. }) => "failed",
        Err(Error::UnsupportedProtocol { .. }) => "unsupported",
        Err(Error::Dial { .. }) => "dial_failed",
        Err(Error::ConnectionClosed { .. } | Error::Io { .. }) => "connection",
        Err(Error::TooLarge { .. } | Error::Codec(_) | Error::Protocol { .. }) => "malformed",
        Err(Error::Shutdown) => "shutdown",
        Err(_) => "other",
    }
}

impl Metrics {
    /// Registers P2PLane's metrics (under `p2plane_`) in `registry`.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            retries: Family::default(),
            dht_queries: Family::default(),
            peer_store_size: Gauge::default(),
            stream_items: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("p2plane");
        sub.register(
            "requests",
            "Requests by protocol, direction and outcome",
            metrics.requests.clone(),
        );
        sub.register(
            "request_duration_seconds",
            "Outbound request round trips by protocol, including failures",
            metrics.latency.clone(),
        );
        sub.register(
            "retries",
            "Outbound attempts after the first (made by the retry layer)",
            metrics.retries.clone(),
        );
        sub.register(
            "dht_queries",
            "DHT queries by kind and outcome",
            metrics.dht_queries.clone(),
        );
        sub.register(
            "stream_items",
            "Items of streaming calls, sent (by handlers) and received (by callers), counted when each stream ends",
            metrics.stream_items.clone(),
        );
        sub.register(
            "peer_store_peers",
            "Peers in the peer store (at the last scrape)",
            metrics.peer_store_size.clone(),
        );
        metrics
    }

    /// An outbound attempt's outcome and round trip. Labels are the protocols' static
    /// names: nothing is allocated per request.
    pub(crate) fn outbound(
        &self,
        protocol: &'static str,
        attempt: u32,
        elapsed: Duration,
        result: Result<(), &Error>,
    ) {
        if attempt > 0 {
            self.retries
                .get_or_create(&ProtocolLabels { protocol })
                .inc();
        }
        self.latency
            .get_or_create(&ProtocolLabels { protocol })
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                direction: "outbound",
                outcome: outcome(&result),
            })
            .inc();
    }

    /// An inbound request's outcome: `ok`, `busy` (no permit), `rejected`, `failed`,
    /// `timeout` or `malformed`.
    pub(crate) fn inbound(&self, protocol: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                direction: "inbound",
                outcome,
            })
            .inc();
    }

    /// `n` items of one stream of `protocol`, `sent` or `received`.
    pub(crate) fn stream_items(&self, protocol: &'static str, direction: &'static str, n: u64) {
        self.stream_items
            .get_or_create(&ItemLabels {
                protocol,
                direction,
            })
            .inc_by(n);
    }

    #[cfg(feature = "dht")]
    pub(crate) fn dht_query(&self, query: &'static str, ok: bool) {
        self.dht_queries
            .get_or_create(&DhtLabels {
                query,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// The longest request head the endpoint reads (hyper's smallest read buffer).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a scraper may take to send a request's head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may stay open (a keep-alive scraper reconnects after).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed as they arrive.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` with hyper (HTTP/1.1) until `shutdown`: up to
/// [`MAX_CONNECTIONS`] connections at once, each in a task of its own, so a slow or idle
/// scraper does not hold up another; a request head is due within [`READ_TIMEOUT`] and a
/// connection lasts at most [`CONNECTION_TIMEOUT`].
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    own: Arc<Metrics>,
    store: Arc<dyn PeerStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        // Over the limit: closed at once (dropped).
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            continue;
        };
        let (registry, own, store) = (Arc::clone(&registry), Arc::clone(&own), Arc::clone(&store));
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                own.peer_store_size.set(store.get_peers().len() as i64);
                let response = respond(&request, &registry);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
                _ = shutdown.wait_for(|down| *down) => {}
            }
            drop(permit);
        });
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond<B>(request: &hyper::Request<B>, registry: &Registry) -> hyper::Response<Body> {
    let (status, content_type, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    hyper::StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (
                    hyper::StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".to_owned(),
                ),
            }
        } else {
            (
                hyper::StatusCode::NOT_FOUND,
                "text/plain",
                "try GET /metrics\n".to_owned(),
            )
        };
    let mut response = hyper::Response::new(Body::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Starts the metrics endpoint of a node with `config` on `addr`: registers libp2p's and
/// P2PLane's metrics, binds, and serves until `shutdown`. Returns libp2p's recorder (for the
/// event loop), P2PLane's metrics (for the handles), and the address bound.
pub(crate) async fn start(
    addr: SocketAddr,
    config: &crate::NodeConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(libp2p::metrics::Metrics, Arc<Metrics>, SocketAddr), crate::NodeError> {
    let mut registry = Registry::default();
    let libp2p = libp2p::metrics::Metrics::new(&mut registry);
    let own = Arc::new(Metrics::new(&mut registry));
    let failed =
        |e: std::io::Error| crate::NodeError::Metrics(format!("cannot listen on {addr}: {e}"));
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    tokio::spawn(serve(
        listener,
        Arc::new(registry),
        Arc::clone(&own),
        Arc::clone(&config.peer_store),
        shutdown,
    ));
    Ok((libp2p, own, bound))
}
