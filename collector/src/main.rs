//! `mailvault-collector`: reads Exchange mailboxes over EWS and publishes them to JetStream.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mailvault_collector::config::Config;
use mailvault_collector::metrics::Metrics;
use mailvault_collector::{RunMode, run_with_metrics};

/// Mail-level backup collector for Microsoft Exchange (EWS → NATS JetStream).
///
/// Reads every configured mailbox incrementally (SyncFolderHierarchy / SyncFolderItems), fetches
/// MIME with GetItem and publishes protobuf envelopes to the `MAILVAULT_INGEST` stream. Sync
/// states are checkpointed in the `mailvault-checkpoints` KV bucket only after JetStream
/// acknowledged every item of a batch.
#[derive(Debug, Parser)]
#[command(name = "mailvault-collector", version)]
struct Cli {
    /// Configuration file (TOML). Keys: `source`, `mailboxes`, `mailboxes_csv`,
    /// `public_folders_via`, `[ews]` (url, username, password_file,
    /// auth = "ntlm" (default) | "basic", impersonation, server_version, ca_file,
    /// insecure_skip_verify, request_timeout_secs, include_non_ipm, include_archives), `[filters]` (include/exclude_mailboxes,
    /// include/exclude_folders, include/exclude_item_classes), `[limits]`
    /// (per_server_concurrency, per_account_concurrency, mailbox_concurrency, folder_concurrency,
    /// max_changes,
    /// get_item_batch, get_item_max_bytes, max_retries, backoff_base_ms, backoff_max_ms, inline_limit_bytes,
    /// max_in_flight_publishes, pack_max_entries, pack_max_bytes), `[nats]` (url, creds_file, ca_file, stream, kv_bucket,
    /// object_bucket), `[metrics]` (listen, e.g. "127.0.0.1:9464": plain-HTTP GET /metrics
    /// and /healthz; off when absent; docs/telemetry.md), `[telemetry]` (otlp_endpoint, e.g.
    /// "http://otel-collector:4318": OTLP/HTTP push of spans and metrics, off when absent;
    /// protocol "http/protobuf", export_interval "10s", timeout "10s", ca_file, headers_file (`Name: value`
    /// lines sent with every export), service_name
    /// "mailvault-collector", service_instance (host name), traces, metrics; docs/telemetry.md).
    #[arg(short, long, env = "MAILVAULT_COLLECTOR_CONFIG")]
    config: PathBuf,

    /// Make one pass over all mailboxes and exit. Exit code 0: everything collected (quarantined
    /// items are reported, not failures); 2: some mailbox or folder failed; 1: startup error.
    #[arg(long, conflicts_with = "interval")]
    once: bool,

    /// Daemon mode: time between passes (e.g. `5m`, `30s`). SIGTERM or Ctrl-C stops it: no new
    /// mailbox is started, those in progress finish and are checkpointed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    interval: Duration,

    /// Only validate the configuration and exit (`--check`, as the aggregator and the indexer
    /// spell it, works too).
    #[arg(long, visible_alias = "check")]
    check_config: bool,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if cli.check_config {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let metrics = std::sync::Arc::new(Metrics::default());
    let m = metrics.clone();
    let telemetry = match mailvault_runtime::otel::Telemetry::init(
        &config.telemetry,
        "mailvault-collector",
        if cli.log_json {
            mailvault_runtime::otel::LogLines::Json
        } else {
            mailvault_runtime::otel::LogLines::Text
        },
        Some(std::sync::Arc::new(move || m.samples())),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: starting telemetry: {e}");
            return ExitCode::from(1);
        }
    };
    let code = run(cli, config, metrics).await;
    // Last: the final counts and spans go out before the process ends.
    if let Err(e) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        eprintln!("warning: flushing telemetry: {e}");
    }
    code
}

async fn run(cli: Cli, config: Config, metrics: std::sync::Arc<Metrics>) -> ExitCode {
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Ctrl-C (SIGINT) and SIGTERM (what Kubernetes and systemd send) both stop the run the same
    // way: the current batches finish and are checkpointed, then the process exits.
    // A second signal, or the drain outliving `limits.shutdown_deadline_ms` (Exchange or NATS
    // hanging), ends the process at once: un-checkpointed folders are read again next run.
    mailvault_runtime::shutdown::on_signals(
        "mailvault-collector",
        std::time::Duration::from_millis(config.limits.shutdown_deadline_ms),
        move || {
            let _ = tx.send(true);
        },
    );
    let mode = if cli.once {
        RunMode::Once
    } else {
        RunMode::Daemon {
            interval: cli.interval,
        }
    };
    // Kept alive until main returns: dropping it stops the endpoint. The address was checked
    // with the rest of the configuration.
    let m = metrics.clone();
    let _endpoint =
        match mailvault_runtime::metrics::serve(&config.metrics, move || m.render()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: starting the metrics endpoint: {e}");
                return ExitCode::from(1);
            }
        };
    match run_with_metrics(config, mode, rx, metrics).await {
        Ok(summary) => {
            for m in &summary.mailboxes {
                let captured: u64 = m.folders.iter().map(|f| f.captured).sum();
                let quarantined: u64 = m.folders.iter().map(|f| f.quarantined).sum();
                println!(
                    "{} ({}): folders={} captured={} quarantined={}{}",
                    m.mailbox,
                    m.mailbox_kind,
                    m.folders.len(),
                    captured,
                    quarantined,
                    if m.error.is_empty() {
                        String::new()
                    } else {
                        format!(" error={}", m.error)
                    }
                );
            }
            if summary.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
