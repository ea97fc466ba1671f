//! Trace context on the indexer's side, end to end: event messages with known `traceparent`s
//! (as the aggregator publishes them) on a real nats-server, the indexer's JetStream consumer
//! with `[telemetry]` pointing at a real OpenTelemetry collector (rotel,
//! `ops/scripts/install-tools.sh otel`), whose debug log shows what it received. The
//! `indexer.commit` span of a commit of one message is that message's child; that of a commit
//! of several is a root linked to each; and the commit counter arrives under its `/metrics`
//! name.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use mailvault_harness::{NatsServer, OtelCollector, ReceivedSpan, poll};
use mailvault_indexer::consume::{self, ConsumeConfig, ConsumeReport, JsSource, SUBJECT_BATCH};
use mailvault_indexer::{Index, Indexer, Metrics};
use mailvault_proto::events::v1::EventBatch;
use mailvault_runtime::otel::{LogLines, Telemetry, TelemetryConfig};
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A trace id and a span id no other run uses.
fn fresh_ids(seed: &str) -> (String, String) {
    let h = blake3::hash(format!("{seed} {:?}", std::time::SystemTime::now()).as_bytes()).to_hex();
    (h[..32].to_owned(), h[32..48].to_owned())
}

/// One event batch message announcing `events`, with a `traceparent` header.
async fn publish(js: &jetstream::Context, events: &[Event], id: &str, traceparent: &str) {
    let mut b = EventBatch::default();
    for e in events {
        match e {
            Event::Stored(s) => b.stored.push(s.clone()),
            Event::Changed(c) => b.changed.push(c.clone()),
        }
    }
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h.insert("traceparent", traceparent);
    js.publish_with_headers(SUBJECT_BATCH, h, b.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

fn commit_spans(otel: &OtelCollector) -> Vec<ReceivedSpan> {
    otel.spans()
        .into_iter()
        .filter(|s| s.name == "indexer.commit")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_spans_continue_or_link_the_event_traces() {
    let started = Instant::now();
    let nats = NatsServer::start().expect("nats-server");
    let otel = OtelCollector::start().unwrap_or_else(|e| panic!("{e}"));
    let repo = repo().await;
    let events = populate(&repo, 5, 6).await;
    assert!(events.len() >= 3, "{} events", events.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::default());
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"))
        .with_metrics(metrics.clone());
    let m = metrics.clone();
    let instance = format!("otlp-indexer-test-{}", std::process::id());
    let telemetry = Telemetry::init(
        &TelemetryConfig {
            otlp_endpoint: Some(otel.otlp_endpoint()),
            export_interval: Duration::from_millis(500),
            service_instance: Some(instance.clone()),
            ..TelemetryConfig::default()
        },
        "mailvault-indexer",
        LogLines::Text,
        Some(Arc::new(move || m.samples())),
    )
    .expect("telemetry");

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let mut source = JsSource::new(&js, 1).await.expect("consumer");
    // Two messages waiting before the consumer starts: one commit takes both.
    let (half, rest) = events.split_at(events.len() / 2);
    let (last, rest) = rest.split_last().expect("events");
    let mut linked = Vec::new();
    for (i, part) in [half, rest].into_iter().enumerate() {
        let (trace, span) = fresh_ids(&format!("{instance} linked {i}"));
        publish(
            &js,
            part,
            &format!("b{i}"),
            &format!("00-{trace}-{span}-01"),
        )
        .await;
        linked.push((trace, span));
    }
    let (tx, mut rx) = watch::channel(ConsumeReport::default());
    let stop = CancellationToken::new();
    let cfg = ConsumeConfig {
        batch: 1000,
        wait: Duration::from_secs(1),
        idle: Duration::from_millis(500),
    };
    let consumer = {
        let (ix, stop) = (ix.clone(), stop.clone());
        tokio::spawn(async move { consume::run(&ix, &mut source, &cfg, stop, Some(tx)).await })
    };
    let wait_acked = |rx: &mut watch::Receiver<ConsumeReport>, n: u64| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| r.acked >= n))
                .await
                .expect("acked in time")
                .expect("consumer running")
                .commits
        }
    };
    assert_eq!(
        wait_acked(&mut rx, 2).await,
        1,
        "both messages in one commit"
    );
    let span = poll(
        "the linked commit span at the OpenTelemetry collector",
        Duration::from_secs(30),
        || commit_spans(&otel).into_iter().next(),
        || otel.output(),
    )
    .await;
    assert_eq!(span.parent_id, "", "a root span: {span:?}");
    for (trace, span_id) in &linked {
        assert_ne!(&span.trace_id, trace, "a trace of its own: {span:?}");
        assert!(
            span.text.contains(trace.as_str()) && span.text.contains(span_id.as_str()),
            "link to {trace}/{span_id} missing: {}",
            span.text
        );
    }

    // One message alone: the commit continues its trace.
    let (trace_id, parent_span) = fresh_ids(&format!("{instance} single"));
    publish(
        &js,
        std::slice::from_ref(last),
        "b2",
        &format!("00-{trace_id}-{parent_span}-01"),
    )
    .await;
    assert_eq!(wait_acked(&mut rx, 3).await, 2, "a commit of its own");
    let span = poll(
        "the child commit span at the OpenTelemetry collector",
        Duration::from_secs(30),
        || commit_spans(&otel).into_iter().nth(1),
        || otel.output(),
    )
    .await;
    assert_eq!(span.trace_id, trace_id, "{span:?}");
    assert_eq!(span.parent_id, parent_span, "{span:?}");

    // The commit counter, under its /metrics name.
    poll(
        "commits_total = 2 at the OpenTelemetry collector",
        Duration::from_secs(30),
        || {
            let (values, _) = otel.last_metric("mailvault_indexer_commits_total")?;
            (values == ["2"]).then_some(())
        },
        || otel.output(),
    )
    .await;
    assert_eq!(Metrics::get(&metrics.commits), 2);

    stop.cancel();
    consumer.await.expect("consumer task");
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("telemetry shutdown");
    eprintln!("indexer otlp test took {:?}", started.elapsed());
}
