//! `mailvault-aggregator`: consumes collected items from JetStream and stores them in the
//! repository. Stateless: run as many replicas as needed.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Stores items collected from Exchange in the mailvault repository.
///
/// Pulls from the JetStream stream `MAILVAULT_INGEST` through the durable consumer shared by
/// every replica, chunks, deduplicates, compresses, encrypts and packs each item into the
/// repository, and acknowledges a message only once its item is durable and the `ItemStored`
/// event is published. SIGTERM or ctrl-c: stop pulling, flush, publish, ack, exit within
/// `limits.shutdown_deadline`.
///
/// Configuration file (TOML, unknown keys rejected; sizes like "64 MiB", durations like "2s"):
///
///   [nats] url ("nats://127.0.0.1:4222"; tls://… for TLS), creds_file (NATS .creds),
///   ca_file (PEM CA for the server's certificate), stream ("MAILVAULT_INGEST"), consumer
///   ("mailvault-aggregator"), filter_subjects (items, changes, item batches), events_stream
///   ("MAILVAULT_EVENTS"), ack_wait ("60s"), max_ack_pending (2000), delete_bodies (true)
///
///   [repository] url (s3://bucket/prefix or a directory; required), passphrase_file
///   (required, never logged), refresh_interval ("5s": load other replicas' index objects)
///
///   [batch] max_items (500), max_bytes ("64 MiB"), max_delay ("2s"): flush when any is reached;
///   once nothing more arrives, pending items are flushed when the oldest is max_delay/4 old
///
///   [limits] workers (1), fetch_messages (64), fetch_bytes ("16 MiB"), piece_bytes ("1 MiB"),
///   max_sealed_bytes ("64 MiB"), nak_delay ("5s"), poison_after_attempts (5),
///   progress_every ("10s"), shutdown_deadline ("25s")
///
///   [metrics] listen (off when absent; e.g. "127.0.0.1:9464"): plain-HTTP endpoint with
///   GET /metrics (Prometheus text) and GET /healthz; see docs/telemetry.md
///
///   [telemetry] otlp_endpoint (off when absent; e.g. "http://otel-collector:4318": OTLP/HTTP
///   base URL, spans to /v1/traces, metrics to /v1/metrics), protocol ("http/protobuf"),
///   export_interval ("10s"), timeout ("10s"), ca_file (PEM CA of an https endpoint),
///   headers_file (`Name: value` lines sent with every export, e.g. a bearer token),
///   service_name ("mailvault-aggregator"), service_instance (host name), traces (true),
///   metrics (true); see docs/telemetry.md
#[derive(Debug, Parser)]
#[command(name = "mailvault-aggregator", version, verbatim_doc_comment)]
struct Args {
    /// Path of the TOML configuration file.
    #[arg(short, long, env = "MAILVAULT_AGGREGATOR_CONFIG")]
    config: PathBuf,
    /// Check the configuration and exit (`--check-config`, as the collector spells it, works too).
    #[arg(long, visible_alias = "check-config")]
    check: bool,
    /// Log as JSON lines (one object per event, for log collectors) instead of text.
    #[arg(long, env = "MAILVAULT_AGGREGATOR_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = mailvault_aggregator::Config::load(&args.config)?;
    if args.check {
        println!("configuration OK: {cfg:?}");
        return Ok(());
    }
    let metrics = std::sync::Arc::new(mailvault_aggregator::Metrics::default());
    let m = metrics.clone();
    let telemetry = mailvault_runtime::otel::Telemetry::init(
        &cfg.telemetry,
        "mailvault-aggregator",
        if args.log_json {
            mailvault_runtime::otel::LogLines::Json
        } else {
            mailvault_runtime::otel::LogLines::Text
        },
        Some(std::sync::Arc::new(move || m.samples())),
    )
    .context("starting telemetry")?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    // The workers give up on their batches at `shutdown_deadline`; a little later the process
    // ends whatever still waits (a NATS server that went away, a stuck store).
    mailvault_runtime::shutdown::on_signals(
        "mailvault-aggregator",
        cfg.limits.shutdown_deadline + std::time::Duration::from_secs(5),
        move || s.cancel(),
    );
    // Kept alive until main returns: dropping it stops the endpoint.
    let m = metrics.clone();
    let _endpoint = mailvault_runtime::metrics::serve(&cfg.metrics, move || m.render())
        .await
        .context("starting the metrics endpoint")?;
    let result = mailvault_aggregator::run_with_metrics(cfg, metrics, shutdown).await;
    if let Ok(report) = &result {
        tracing::info!(?report, "done");
    }
    // Last: the final counts and the last batches' spans go out before the process ends.
    if let Err(e) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        tracing::warn!(error = %e, "flushing telemetry");
    }
    result.context("aggregator failed")?;
    Ok(())
}
