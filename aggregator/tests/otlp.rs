//! Trace context and OTLP push end to end, the production path on loopback: a real aggregator
//! pipeline (nats-server, memory store) with `[telemetry]` pointing at a real OpenTelemetry
//! collector (rotel, OTLP/HTTP receiver), whose debug log shows what it received. Tools:
//! `ops/scripts/install-tools.sh otel`.
//!
//! Messages with known `traceparent`s, as the collector publishes them, must come out as
//! (a) event batches on the events stream whose `traceparent` names the batch span: the same
//! trace for a batch of one delivery (its child), a trace of its own for a batch of several;
//! (b) those `aggregator.batch` spans at the collector, with the message's span as parent, or
//! linked to every message's span; (c) `mailvault_aggregator_items_stored_total` at the
//! collector with the number stored, from this service instance.
//!
//! It stops at the collector's receiver: no collector installable here exports to Prometheus,
//! and Debian's Prometheus has no OTLP receiver (see mailvault_harness::OtelCollector).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mailvault_aggregator::Metrics;
use mailvault_format::{BlobStore, MemoryStore};
use mailvault_harness::{NatsServer, OtelCollector, ReceivedSpan, parse_traceparent, poll};
use mailvault_runtime::otel::{LogLines, Telemetry, TelemetryConfig};

/// The span the collector received with this span id, once it has.
fn received_span(otel: &OtelCollector, span_id: &str) -> Option<ReceivedSpan> {
    otel.spans().into_iter().find(|s| s.span_id == span_id)
}

/// A trace id and a span id no other run uses.
fn fresh_ids(seed: &str) -> (String, String) {
    let h = blake3::hash(format!("{seed} {:?}", std::time::SystemTime::now()).as_bytes()).to_hex();
    (h[..32].to_owned(), h[32..48].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_context_and_metrics_reach_the_otel_collector() {
    let started = Instant::now();
    let nats = NatsServer::start().expect("nats-server");
    let otel = OtelCollector::start().unwrap_or_else(|e| panic!("{e}"));

    let metrics = Arc::new(Metrics::default());
    let m = metrics.clone();
    let instance = format!("otlp-test-{}", std::process::id());
    let telemetry = Telemetry::init(
        &TelemetryConfig {
            otlp_endpoint: Some(otel.otlp_endpoint()),
            export_interval: Duration::from_millis(500),
            service_instance: Some(instance.clone()),
            ..TelemetryConfig::default()
        },
        "mailvault-aggregator",
        LogLines::Text,
        Some(Arc::new(move || m.samples())),
    )
    .expect("telemetry");

    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    init_repo(store.clone()).await;
    let collector = Collector::connect(&nats.url()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 11,
        messages: 4,
        ..Default::default()
    });
    let items = items_from(&corpus.items, "otlp");
    assert!(items.len() >= 4, "{} items", items.len());

    // Three messages waiting before the aggregator starts: its first pull takes them together,
    // and a batch of several deliveries links to each.
    let mut linked = Vec::new();
    for (i, it) in items[..3].iter().enumerate() {
        let (trace, span) = fresh_ids(&format!("{instance} linked {i}"));
        collector
            .publish_item_traced(it, &format!("00-{trace}-{span}-01"))
            .await;
        linked.push((trace, span));
    }
    let mut cfg = config(&nats.url());
    // Room for the three to arrive before the batch is cut, even on a busy machine.
    cfg.batch.max_delay = Duration::from_secs(2);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(mailvault_aggregator::run_with_store(
        cfg,
        store.clone(),
        PASS,
        metrics.clone(),
        shutdown.clone(),
    ));
    let batches = poll(
        "event batches announcing the three items",
        Duration::from_secs(60),
        || {
            let b = tokio::runtime::Handle::current().block_on(collector.event_batches());
            (b.iter().map(|(_, stored)| stored.len()).sum::<usize>() >= 3).then_some(b)
        },
        || format!("aggregator metrics: {:?}", metrics.snapshot()),
    )
    .await;
    assert_eq!(batches.len(), 1, "one batch of three: {batches:?}");
    // (a) A batch of several: the event names a span of a trace of its own.
    let tp = batches[0]
        .0
        .clone()
        .expect("the event batch has a traceparent header");
    let (batch_trace, batch_span) = parse_traceparent(&tp);
    for (trace, _) in &linked {
        assert_ne!(&batch_trace, trace, "a new trace, not one of the messages'");
    }
    // (b) The collector got that span: a root, linked to every message's span.
    let span = poll(
        "the linked batch span at the OpenTelemetry collector",
        Duration::from_secs(30),
        || received_span(&otel, &batch_span),
        || otel.output(),
    )
    .await;
    assert_eq!(span.name, "aggregator.batch", "{span:?}");
    assert_eq!(span.trace_id, batch_trace, "{span:?}");
    assert_eq!(span.parent_id, "", "a root span: {span:?}");
    for (trace, span_id) in &linked {
        assert!(
            span.text.contains(trace.as_str()) && span.text.contains(span_id.as_str()),
            "link to {trace}/{span_id} missing: {}",
            span.text
        );
    }

    // One message alone: its batch span is its child, and the event continues its trace.
    let (trace_id, parent_span) = fresh_ids(&format!("{instance} single"));
    collector
        .publish_item_traced(&items[3], &format!("00-{trace_id}-{parent_span}-01"))
        .await;
    let tp = poll(
        "the event batch announcing the fourth item",
        Duration::from_secs(60),
        || {
            let b = tokio::runtime::Handle::current().block_on(collector.event_batches());
            b.get(1).cloned()
        },
        || format!("aggregator metrics: {:?}", metrics.snapshot()),
    )
    .await
    .0
    .expect("the event batch has a traceparent header");
    // (a) Same trace, a span of its own.
    let (event_trace, batch_span) = parse_traceparent(&tp);
    assert_eq!(
        event_trace, trace_id,
        "the event continues the item's trace"
    );
    assert_ne!(batch_span, parent_span, "the event names the batch span");
    // (b) The collector got it as the message span's child.
    let span = poll(
        "the child batch span at the OpenTelemetry collector",
        Duration::from_secs(30),
        || received_span(&otel, &batch_span),
        || otel.output(),
    )
    .await;
    assert_eq!(span.name, "aggregator.batch", "{span:?}");
    assert_eq!(span.trace_id, trace_id, "{span:?}");
    assert_eq!(span.parent_id, parent_span, "{span:?}");

    // (c) The pipeline's own counter, exported under its /metrics name by this instance,
    // reached the collector with the number stored.
    let exported = poll(
        "items_stored_total = 4 at the OpenTelemetry collector",
        Duration::from_secs(30),
        || {
            let (values, _) = otel.last_metric("mailvault_aggregator_items_stored_total")?;
            (values == ["4"]).then(|| otel.log())
        },
        || otel.output(),
    )
    .await;
    assert!(
        exported.contains(&format!("service.instance.id: Str({instance})"))
            && exported.contains("service.name: Str(mailvault-aggregator)"),
        "resource attributes: {exported}"
    );
    assert_eq!(Metrics::get(&metrics.items_stored_total), 4);

    shutdown.cancel();
    task.await.expect("replica task").expect("replica run");
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("telemetry shutdown");
    check_repository(store, &items[..4], 0).await;
    eprintln!("otlp test took {:?}", started.elapsed());
}
