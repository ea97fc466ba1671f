//! `mailvault-indexer`: builds the search index from the aggregators' events and serves the
//! gRPC API (search, get, restore, export) next to it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mailvault_indexer::api::{Role, Tokens};
use mailvault_indexer::config::Config;
use mailvault_indexer::service;
use tokio_util::sync::CancellationToken;

/// Builds the mailvault search index and serves the gRPC API.
///
/// `serve` (the default) consumes `ItemStored` / `ItemChangeRecorded` events from the JetStream
/// stream `MAILVAULT_EVENTS` (durable consumer `mailvault-indexer`; an event is acked only after
/// the index commit holding it), reloads the repository's index objects every
/// `repository.refresh_interval` so packs written by the aggregators become readable, and serves
/// the gRPC API `mailvault.api.v1.Archive` (plus health and reflection) until SIGTERM or ctrl-c;
/// then it stops serving, stops consuming, and flushes the audit log. Restores are sent as
/// restore jobs over JetStream to the collector named by the request's `target_source`, or the
/// `source` recorded in each item's manifest.
///
/// Configuration file (TOML, unknown keys rejected, durations like "5s"); every key can be
/// overridden as MAILVAULT_<SECTION>_<KEY> (e.g. MAILVAULT_NATS_URL, MAILVAULT_S3_ENDPOINT):
///
///   [nats] url ("nats://127.0.0.1:4222"; tls://… for TLS), creds_file (NATS .creds),
///   ca_file (PEM CA for the server's certificate), restore_timeout ("120s": a restore fails
///   when the collector sends no result for this long)
///
///   [repository] url (s3://bucket/prefix or a directory; required), passphrase_file
///   (required, never logged), refresh_interval ("5s")
///
///   [index] dir (required: the tantivy index directory), batch (2048 events per commit at
///   most), wait ("1s": events gathered this long after the first), idle ("100ms": commit
///   earlier once none arrived for this long)
///
///   [api] listen ("127.0.0.1:50051"), tokens_file (required; hashes only, see docs/api.md),
///   tls_cert + tls_key (PEM; without them the API is plain text)
///
///   [s3] endpoint, region, path_style, access_key_id, secret_access_key_file, … (see
///   docs/operations.md)
///
///   [metrics] listen (off when absent; e.g. "127.0.0.1:9464"): plain-HTTP endpoint with
///   GET /metrics (Prometheus text) and GET /healthz; see docs/telemetry.md
///
///   [telemetry] otlp_endpoint (off when absent; e.g. "http://otel-collector:4318": OTLP/HTTP
///   base URL, spans to /v1/traces, metrics to /v1/metrics), protocol ("http/protobuf"),
///   export_interval ("10s"), timeout ("10s"), ca_file (PEM CA of an https endpoint),
///   headers_file (`Name: value` lines sent with every export, e.g. a bearer token),
///   service_name ("mailvault-indexer"), service_instance (host name), traces (true),
///   metrics (true); see docs/telemetry.md
#[derive(Debug, Parser)]
#[command(name = "mailvault-indexer", version, verbatim_doc_comment)]
struct Args {
    /// Path of the TOML configuration file.
    #[arg(short, long, env = "MAILVAULT_INDEXER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Listen address of the gRPC API (overrides api.listen).
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Index directory (overrides index.dir).
    #[arg(long, global = true)]
    index_dir: Option<PathBuf>,
    /// PEM certificate chain for TLS (overrides api.tls_cert; needs --tls-key).
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (overrides api.tls_key; needs --tls-cert).
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// Check the configuration and exit (`--check-config`, as the collector spells it, works too).
    #[arg(long, visible_alias = "check-config")]
    check: bool,
    /// Log as JSON lines (one object per event, for log collectors) instead of text.
    #[arg(long, env = "MAILVAULT_INDEXER_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume events and serve the API (the default).
    Serve,
    /// Rebuild the index directory from the repository alone (stop `serve` first). The new
    /// index is built next to the old one and swapped in only when complete.
    Reindex,
    /// Issue a new API token: appends its hash to the tokens file and prints the token once.
    Token {
        /// Tokens file (created if missing).
        #[arg(long)]
        tokens_file: PathBuf,
        /// Name recorded in the audit log.
        #[arg(long)]
        name: String,
        /// admin, operator, auditor or user.
        #[arg(long)]
        role: String,
        /// Mailbox of a `user` token.
        #[arg(long)]
        mailbox: Option<String>,
        /// Refuse the token after this long (`90d`, `12h`); without it, it never expires.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Token {
        tokens_file,
        name,
        role,
        mailbox,
        expires_in,
    }) = &args.command
    {
        return issue_token(tokens_file, name, role, mailbox.as_deref(), *expires_in);
    }
    let cfg = load_config(&args)?;
    if args.check {
        println!("configuration OK: {cfg:?}");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let metrics = std::sync::Arc::new(mailvault_indexer::Metrics::default());
    let m = metrics.clone();
    let telemetry = {
        // The OTLP exporters run their requests on this runtime.
        let _rt = rt.enter();
        mailvault_runtime::otel::Telemetry::init(
            &cfg.telemetry,
            "mailvault-indexer",
            if args.log_json {
                mailvault_runtime::otel::LogLines::Json
            } else {
                mailvault_runtime::otel::LogLines::Text
            },
            Some(std::sync::Arc::new(move || m.samples())),
        )
        .context("starting telemetry")?
    };
    let result = match args.command {
        Some(Command::Reindex) => rt.block_on(reindex(cfg)),
        _ => rt.block_on(run(cfg, metrics)),
    };
    // Last: the final counts and spans go out while the runtime still runs their requests.
    telemetry.shutdown();
    result
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let Some(path) = &args.config else {
        bail!("--config (or MAILVAULT_INDEXER_CONFIG) is required");
    };
    let mut cfg = Config::load(path, std::env::vars()).map_err(anyhow::Error::msg)?;
    if let Some(l) = args.listen {
        cfg.api.listen = l;
    }
    if let Some(d) = &args.index_dir {
        cfg.index.dir = d.clone();
    }
    if let Some(c) = &args.tls_cert {
        cfg.api.tls_cert = Some(c.clone());
    }
    if let Some(k) = &args.tls_key {
        cfg.api.tls_key = Some(k.clone());
    }
    if cfg.api.tls_cert.is_some() != cfg.api.tls_key.is_some() {
        bail!("TLS needs both a certificate and a key (--tls-cert / --tls-key)");
    }
    Ok(cfg)
}

fn issue_token(
    path: &Path,
    name: &str,
    role: &str,
    mailbox: Option<&str>,
    expires_in: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let role: Role = toml::Value::String(role.to_owned())
        .try_into()
        .with_context(|| format!("role {role:?}: expected admin, operator, auditor or user"))?;
    let mut tokens = if path.exists() {
        Tokens::load(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        Tokens::default()
    };
    if role == Role::User && mailbox.is_none_or(str::is_empty) {
        bail!("role user needs --mailbox");
    }
    let token = tokens.issue_expiring(name, role, mailbox, expires_in);
    tokens.save(path)?;
    // The only time the token is shown; a running server picks the file up by itself.
    println!("{token}");
    Ok(())
}

async fn run(
    cfg: Config,
    metrics: std::sync::Arc<mailvault_indexer::Metrics>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    mailvault_runtime::shutdown::on_signals(
        "mailvault-indexer",
        cfg.index.shutdown_deadline,
        move || s.cancel(),
    );
    // Kept alive until run returns: dropping it stops the endpoint.
    let m = metrics.clone();
    let _endpoint = mailvault_runtime::metrics::serve(&cfg.metrics, move || m.render())
        .await
        .context("starting the metrics endpoint")?;
    let report = service::run_with_metrics(cfg, metrics, shutdown, None)
        .await
        .context("mailvault-indexer failed")?;
    tracing::info!(?report, "done");
    Ok(())
}

async fn reindex(cfg: Config) -> anyhow::Result<()> {
    let repo = service::open_repository(&cfg).await?;
    let dir = &cfg.index.dir;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "index".into());
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let fresh = parent.join(format!(".{name}.reindex-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let started = std::time::Instant::now();
    let report =
        mailvault_indexer::reindex_with(&repo, &fresh, cfg.index.journal_mailboxes.clone())
            .await
            .with_context(|| format!("rebuilding the index in {}", fresh.display()))?;
    for f in &report.failures {
        tracing::error!(failure = %f, "not indexed");
    }
    if !report.failures.is_empty() {
        bail!(
            "{} manifests could not be indexed (logged above); the old index is left in place, \
             the incomplete new one is in {}",
            report.failures.len(),
            fresh.display()
        );
    }
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(&fresh, dir)
        .with_context(|| format!("moving the new index to {}", dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    println!(
        "reindexed {} versions and {} changes into {} in {:.1?}",
        report.versions,
        report.changes,
        dir.display(),
        started.elapsed()
    );
    Ok(())
}
