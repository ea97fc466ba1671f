//! The `mailvault-indexer` service wired up: repository, index, JetStream event consumer,
//! periodic repository refresh, restore jobs over NATS, and the gRPC API — what the binary runs,
//! as a library function so tests run exactly the same wiring in-process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailvault_format::Repository;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::api::{
    Api, AuditLog, GrpcArchive, NatsRestoreTarget, RestoreTarget, TlsFiles, TokenFile, grpc,
};
use crate::config::Config;
use crate::consume::{self, ConsumeReport, JsSource};
use crate::{Index, Indexer, Metrics};

/// How often the token file is checked for changes.
const TOKEN_FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("reading repository.passphrase_file {path}: {source}")]
    Passphrase {
        path: String,
        source: std::io::Error,
    },
    #[error("opening store {url}: {cause}")]
    Store { url: String, cause: String },
    #[error("opening repository {url}: {cause}")]
    Repository { url: String, cause: String },
    #[error("opening index {dir}: {cause}")]
    Index { dir: String, cause: String },
    #[error("loading api.tokens_file: {0}")]
    Tokens(String),
    #[error("NATS at {url}: {what}: {cause}")]
    Nats {
        url: String,
        what: &'static str,
        cause: String,
    },
    #[error("gRPC API: {0}")]
    Serve(#[from] grpc::ServeError),
    #[error("flushing the audit log: {0}")]
    Audit(String),
    #[error("{what} task failed: {cause}")]
    Join { what: &'static str, cause: String },
}

/// What a service run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceReport {
    pub consumer: ConsumeReport,
}

/// Reads the passphrase file (trailing newline ignored), opens the store and the repository.
pub async fn open_repository(cfg: &Config) -> Result<Repository, ServiceError> {
    let pass = mailvault_runtime::secret_file::read_secret_file(&cfg.repository.passphrase_file)
        .map_err(|source| ServiceError::Passphrase {
            path: cfg.repository.passphrase_file.display().to_string(),
            source,
        })?;
    let pass = pass.as_slice();
    let url = &cfg.repository.url;
    let store = mailvault_runtime::storage::open_store(url, cfg.s3.clone())
        .await
        .map_err(|e| ServiceError::Store {
            url: url.clone(),
            cause: e.to_string(),
        })?;
    Repository::open(store, pass)
        .await
        .map_err(|e| ServiceError::Repository {
            url: url.clone(),
            cause: e.to_string(),
        })
}

/// Opens (or creates) the tantivy index in `dir` on the blocking pool.
pub async fn open_index(dir: &Path) -> Result<Index, ServiceError> {
    let d = dir.to_owned();
    let err = |cause: String| ServiceError::Index {
        dir: dir.display().to_string(),
        cause,
    };
    tokio::task::spawn_blocking(move || Index::open(&d))
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))
}

/// Runs the service until `shutdown` is cancelled (or the gRPC server fails): consumes events
/// into the index, refreshes the repository view every `repository.refresh_interval`, and
/// serves the API. `ready` receives the bound API address once the server accepts calls.
/// At the end the consumer is stopped and the audit log flushed.
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<SocketAddr>>,
) -> Result<ServiceReport, ServiceError> {
    run_with_metrics(cfg, Arc::default(), shutdown, ready).await
}

/// [`run`] counting into `metrics` (which the binary serves at `/metrics`).
pub async fn run_with_metrics(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<SocketAddr>>,
) -> Result<ServiceReport, ServiceError> {
    let repo = open_repository(&cfg).await?;
    let index = open_index(&cfg.index.dir).await?;
    match &cfg.index.journal_mailboxes {
        Some(m) => {
            tracing::info!(mailboxes = ?m, "journal reports unwrapped in these mailboxes only")
        }
        None => tracing::warn!(
            "[index] journal_mailboxes is not set: journal reports are unwrapped in every \
             mailbox, so a crafted message can make itself visible to whoever it names; set it \
             to the journaling recipients"
        ),
    }
    index.set_journal_mailboxes(cfg.index.journal_mailboxes.clone());
    // Issued, revoked and expired tokens take effect without a restart.
    let tokens = TokenFile::watch(
        &cfg.api.tokens_file,
        TOKEN_FILE_CHECK_EVERY,
        shutdown.clone(),
    )
    .map_err(|e| ServiceError::Tokens(e.to_string()))?;
    let nats = |what: &'static str| {
        let url = mailvault_runtime::nats::redact_url(&cfg.nats.url);
        move |e: String| ServiceError::Nats {
            url,
            what,
            cause: e,
        }
    };
    let auth = mailvault_runtime::nats::NatsAuth {
        creds_file: cfg.nats.creds_file.clone(),
        nkey_file: cfg.nats.nkey_file.clone(),
        ca_file: cfg.nats.ca_file.clone(),
        allow_plaintext: cfg.nats.allow_plaintext,
    };
    let client = mailvault_runtime::nats::connect(
        mailvault_runtime::nats::Component::Indexer,
        "mailvault-indexer",
        &cfg.nats.url,
        &auth,
    )
    .await
    .map_err(|e| nats("connect")(e.to_string()))?;
    let js = async_nats::jetstream::new(client.clone());
    let mut source = JsSource::new(&js, cfg.nats.replicas)
        .await
        .map_err(|e| nats("events consumer")(e.to_string()))?;
    let restore: Arc<dyn RestoreTarget> = Arc::new(
        NatsRestoreTarget::connect(client.clone(), cfg.nats.restore_timeout, cfg.nats.replicas)
            .await
            .map_err(|e| nats("restore jobs")(e.to_string()))?,
    );

    // Packs written by the aggregators become readable only after a refresh.
    let refresher = tokio::spawn(refresh_loop(
        repo.clone(),
        cfg.repository.refresh_interval,
        shutdown.clone(),
    ));
    let backlog = {
        let metrics = metrics.clone();
        mailvault_runtime::nats::spawn_backlog_probe(
            source.consumer(),
            mailvault_runtime::nats::BACKLOG_PROBE_EVERY,
            move |n| {
                metrics
                    .backlog_messages
                    .store(n, std::sync::atomic::Ordering::Relaxed)
            },
        )
    };
    let indexer = Indexer::new(repo.clone(), index.clone()).with_metrics(metrics.clone());
    // Events acked by an earlier run whose index commit never happened, or that left the
    // stream before this index existed, are in the repository: apply what the index lacks.
    crate::stage::catch_up(&indexer)
        .await
        .map_err(|e| ServiceError::Index {
            dir: cfg.index.dir.display().to_string(),
            cause: format!("catching up with the repository: {e}"),
        })?;
    let consume_cfg = cfg.consume();
    let consumer = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            consume::run(&indexer, &mut source, &consume_cfg, shutdown, None).await
        })
    };

    let audit = AuditLog::start(repo.clone());
    let api = Api::new(index, repo, audit.clone(), Some(restore))
        .with_metrics(metrics)
        .with_stream_limits(cfg.api.stream_limits());
    let tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let served = match grpc::bind(cfg.api.listen).await {
        Ok((listener, addr)) => {
            if tls.is_none() {
                tracing::warn!(%addr, "API listening in PLAIN TEXT (no TLS configured); bind it to loopback or a private network");
            }
            tracing::info!(%addr, tls = tls.is_some(), index = %cfg.index.dir.display(), "mailvault-indexer serving");
            if let Some(r) = ready {
                let _ = r.send(addr);
            }
            grpc::serve(
                listener,
                GrpcArchive::with_token_file(api, tokens),
                tls,
                shutdown.clone().cancelled_owned(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    // Whatever ended the server, stop everything else.
    shutdown.cancel();
    let consumer = consumer.await.map_err(|e| ServiceError::Join {
        what: "event consumer",
        cause: e.to_string(),
    })?;
    tracing::info!(report = ?consumer, "event consumer stopped");
    refresher.abort();
    backlog.abort();
    let flushed = tokio::time::timeout(Duration::from_secs(20), audit.flush()).await;
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flushing the NATS connection");
    }
    served?;
    match flushed {
        Ok(r) => r.map_err(|e| ServiceError::Audit(e.to_string()))?,
        Err(_) => return Err(ServiceError::Audit("not finished within 20 s".into())),
    }
    tracing::info!("mailvault-indexer stopped");
    Ok(ServiceReport { consumer })
}

async fn refresh_loop(repo: Repository, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = repo.refresh().await {
            tracing::warn!(error = %e, "repository index refresh failed");
        }
    }
}
