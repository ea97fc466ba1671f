//! The collector's side of trace context: with `[telemetry]` on, every message it publishes
//! names a span it exports, so the aggregator's spans (children of, or linked to, those
//! messages) join the collector's in the trace backend. A real pass — EWS simulator with
//! generated mail, real nats-server, a real OpenTelemetry collector (rotel,
//! `ops/scripts/install-tools.sh otel`) — and then, for each message on the ingest stream:
//! item envelopes carry the span id of an exported `batch` span and its trace id, the
//! mailbox's reconciliation carries its exported `mailbox` span, and all of one mailbox pass
//! is one trace.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::config;
use mailvault_collector::metrics::Metrics;
use mailvault_collector::nats::STREAM;
use mailvault_collector::{RunMode, run};
use mailvault_ews_sim::{SimConfig, Simulator};
use mailvault_harness::{NatsServer, OtelCollector, ReceivedSpan, parse_traceparent};
use mailvault_mailgen::GenConfig;
use mailvault_proto::ingest::v1 as pb;
use mailvault_runtime::otel::{LogLines, Telemetry, TelemetryConfig};
use prost::Message as _;

const DOMAIN: &str = "contoso.com";

/// One published message: its kind, mailbox and `traceparent`.
struct Published {
    kind: &'static str,
    mailbox: String,
    traceparent: String,
}

async fn published(nats: &NatsServer) -> Vec<Published> {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let stream = js.get_stream(STREAM).await.expect("ingest stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let total = consumer.cached_info().num_pending as usize;
    let mut out = Vec::new();
    let mut msgs = consumer
        .fetch()
        .max_messages(total)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    use futures::StreamExt as _;
    while let Some(m) = msgs.next().await {
        let m = m.expect("message");
        let tp = m
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| panic!("message on {} without traceparent", m.subject));
        let msg = pb::IngestMessage::decode(m.payload.clone()).expect("ingest message");
        let (kind, mailbox) = match msg.message.expect("a message") {
            pb::ingest_message::Message::Item(e) => ("item", e.mailbox),
            pb::ingest_message::Message::Batch(b) => match b.items.first() {
                Some(e) => ("item", e.mailbox.clone()),
                None => (
                    "change",
                    b.changes
                        .first()
                        .map(|c| c.mailbox.clone())
                        .unwrap_or_default(),
                ),
            },
            pb::ingest_message::Message::Reconciliation(r) => ("reconcile", r.mailbox),
            _ => ("other", String::new()),
        };
        out.push(Published {
            kind,
            mailbox,
            traceparent: tp,
        });
        if out.len() == total {
            break;
        }
    }
    assert_eq!(out.len(), total, "every message on the stream read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_name_spans_the_collector_exports() {
    let started = Instant::now();
    let nats = NatsServer::start().expect("nats-server");
    let otel = OtelCollector::start().expect("OpenTelemetry collector");
    let metrics = Arc::new(Metrics::default());
    let m = metrics.clone();
    let telemetry = Telemetry::init(
        &TelemetryConfig {
            otlp_endpoint: Some(otel.otlp_endpoint()),
            export_interval: Duration::from_millis(500),
            ..TelemetryConfig::default()
        },
        "mailvault-collector",
        LogLines::Text,
        Some(Arc::new(move || m.samples())),
    )
    .expect("telemetry");

    let gen_cfg = GenConfig {
        seed: 11,
        domain: DOMAIN.into(),
        users: 2,
        messages: 30,
        ..GenConfig::default()
    };
    let mut sim_cfg = SimConfig::new(DOMAIN);
    sim_cfg.generate = Some(gen_cfg);
    let sim = Simulator::start(sim_cfg).await.expect("simulator");
    let mailboxes = sim.mailboxes();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), &sim.url(), &nats.url(), &mailboxes);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = run(cfg, RunMode::Once, rx).await.expect("collector run");
    assert!(summary.is_clean(), "collector pass failed: {summary:#?}");
    // Flushes the spans still batched in the exporter.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("telemetry shutdown");

    let messages = published(&nats).await;
    let items = messages.iter().filter(|p| p.kind == "item").count();
    assert!(items > 0, "the pass published item messages");

    // The collector's log is complete once it holds every span a message names.
    let wanted: BTreeSet<String> = messages
        .iter()
        .map(|p| parse_traceparent(&p.traceparent).1)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans: BTreeMap<String, ReceivedSpan> = loop {
        let spans: BTreeMap<String, ReceivedSpan> = otel
            .spans()
            .into_iter()
            .map(|s| (s.span_id.clone(), s))
            .collect();
        if wanted.iter().all(|id| spans.contains_key(id)) {
            break spans;
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|id| !spans.contains_key(*id))
            .collect();
        assert!(
            Instant::now() < deadline,
            "{} of {} span ids named by messages never reached the collector (e.g. {:?}); it got {} spans:\n{}",
            missing.len(),
            wanted.len(),
            missing.first(),
            spans.len(),
            otel.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // trace id -> mailboxes whose messages are in it
    let mut traces: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for p in &messages {
        let (trace, span_id) = parse_traceparent(&p.traceparent);
        let s = &spans[&span_id];
        assert_eq!(s.trace_id, trace, "{} message: its span's trace", p.kind);
        traces.entry(trace).or_default().insert(&p.mailbox);
        let expected = match p.kind {
            "item" => "batch",
            "reconcile" => "mailbox",
            _ => continue,
        };
        assert_eq!(
            s.name, expected,
            "a {} message of {} names a `{expected}` span",
            p.kind, p.mailbox
        );
    }
    for (trace, mbs) in &traces {
        assert_eq!(
            mbs.len(),
            1,
            "trace {trace} holds one mailbox pass: {mbs:?}"
        );
    }
    let passes = messages.iter().filter(|p| p.kind == "reconcile").count();
    assert!(
        passes >= mailboxes.len(),
        "a reconciliation per mailbox pass"
    );
    assert_eq!(
        traces.len(),
        passes,
        "one trace per mailbox pass (its reconciliation's)"
    );
    eprintln!(
        "{} messages ({items} with items) over {} mailboxes, every one naming an exported span; {:?}",
        messages.len(),
        mailboxes.len(),
        started.elapsed()
    );
}
