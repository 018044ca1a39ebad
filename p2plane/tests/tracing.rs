//! What a node reports through `tracing`: a span per request on both sides (direction,
//! peer, protocol, attempt, id), a span per DHT query, and nothing at `info` per request.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use common::{Echo, TCP, answer, config, echo, first_addr};
use p2plane::{
    Error, Message, Node, Request, RetryLayer, RetryPolicy, service_fn,
    tower::{ServiceBuilder, ServiceExt},
};
use tracing::{
    Level, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    Layer,
    layer::{Context, SubscriberExt as _},
    registry::LookupSpan,
};

#[derive(Debug, Clone, Default)]
struct Captured {
    name: &'static str,
    fields: HashMap<&'static str, String>,
}

struct Fields<'a>(&'a mut HashMap<&'static str, String>);
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Captured>>>,
    open: Arc<Mutex<HashMap<u64, usize>>>,
    info_events: Arc<Mutex<Vec<String>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut span = Captured {
            name: attrs.metadata().name(),
            ..Captured::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        let mut spans = self.spans.lock().unwrap();
        self.open.lock().unwrap().insert(id.into_u64(), spans.len());
        spans.push(span);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(&i) = self.open.lock().unwrap().get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.spans.lock().unwrap()[i].fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() <= Level::INFO {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            self.info_events
                .lock()
                .unwrap()
                .push(format!("{} {fields:?}", event.metadata().target()));
        }
    }
}

impl Capture {
    fn spans(&self, name: &str) -> Vec<Captured> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

// One thread, so the subscriber set for this test sees every task of both nodes.
#[tokio::test(flavor = "current_thread")]
async fn requests_and_dht_queries_have_spans_and_nothing_per_request_is_at_info() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let server = Node::<Echo>::new(config(TCP)).await.unwrap();
    let server_id = server.local_peer_id();
    // The first request is answered `Busy`, so the retry layer makes a second attempt.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    server
        .serve(service_fn(move |req: Request<Echo>| {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err(Error::Busy { peer: server_id })
                } else {
                    Ok(answer(req.body(), server_id))
                }
            }
        }))
        .unwrap();
    let client = Node::<Echo>::new(config(TCP)).await.unwrap();
    let peer = client.dial(first_addr(&server).await).await.unwrap();
    capture.info_events.lock().unwrap().clear();

    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::exponential(3)))
        .service(client.client());
    let reply = service.oneshot(Request::new(peer, echo(7))).await.unwrap();
    assert_eq!(reply, answer(&echo(7), server_id));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let requests = capture.spans("p2plane.request");
    let outbound: Vec<_> = requests
        .iter()
        .filter(|s| s.fields["direction"] == "outbound")
        .collect();
    let inbound: Vec<_> = requests
        .iter()
        .filter(|s| s.fields["direction"] == "inbound")
        .collect();
    assert_eq!(outbound.len(), 2, "{requests:?}");
    assert_eq!(inbound.len(), 2, "{requests:?}");
    for (attempt, span) in outbound.iter().enumerate() {
        assert_eq!(span.fields["peer"], server_id.to_string());
        assert_eq!(span.fields["protocol"], Echo::PROTOCOL);
        assert_eq!(span.fields["attempt"], attempt.to_string());
        assert!(
            span.fields.contains_key("id"),
            "shared streams record the id: {span:?}"
        );
    }
    for span in &inbound {
        assert_eq!(span.fields["peer"], client.local_peer_id().to_string());
        assert_eq!(span.fields["protocol"], Echo::PROTOCOL);
        assert!(span.fields.contains_key("id"));
    }
    let ids = |spans: &[&Captured]| {
        let mut ids: Vec<_> = spans.iter().map(|s| s.fields["id"].clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&outbound),
        ids(&inbound),
        "both sides name requests alike"
    );

    let error = client.dht().bootstrap().await.unwrap_err();
    let queries = capture.spans("p2plane.dht");
    assert_eq!(queries.len(), 1, "{queries:?}");
    assert_eq!(queries[0].fields["query"], "bootstrap");
    assert_eq!(queries[0].fields["outcome"], error.to_string());

    let info = capture.info_events.lock().unwrap().clone();
    assert!(
        info.is_empty(),
        "per-request events at info or above: {info:?}"
    );
}
