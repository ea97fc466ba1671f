//! Wiring: config → EWS client, JetStream publisher, KV checkpoints → engine passes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use mailvault_proto::ingest::v1::MailboxReconciliation;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::ews::Ews;
use crate::ews::client::{HttpEws, HttpEwsConfig};
use crate::ews::{Mailbox, MailboxKind};
use crate::metrics::Metrics;
use crate::nats::{JetStreamPublisher, KvCheckpointStore, PublisherConfig};
use crate::pack::PackLimits;
use crate::restore::Restorer;
use crate::restore_nats::{RestoreEdgeConfig, RestoreService};
use crate::secret::Secret;
use crate::sync::{CheckpointStore, Engine, Publisher, SyncOptions};
use crate::throttle::Backoff;

/// What a pass (or the last pass of a daemon) did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub mailboxes: Vec<MailboxReconciliation>,
}

impl RunSummary {
    pub fn failed_mailboxes(&self) -> usize {
        self.mailboxes
            .iter()
            .filter(|m| !m.error.is_empty())
            .count()
    }

    pub fn failed_folders(&self) -> usize {
        self.mailboxes
            .iter()
            .flat_map(|m| &m.folders)
            .filter(|f| !f.error.is_empty())
            .count()
    }

    pub fn captured(&self) -> u64 {
        self.mailboxes
            .iter()
            .flat_map(|m| &m.folders)
            .map(|f| f.captured)
            .sum()
    }

    pub fn quarantined(&self) -> u64 {
        self.mailboxes
            .iter()
            .flat_map(|m| &m.folders)
            .map(|f| f.quarantined)
            .sum()
    }

    /// Whether everything was collected (quarantined items are reported, not failures).
    pub fn is_clean(&self) -> bool {
        self.failed_mailboxes() == 0 && self.failed_folders() == 0
    }
}

/// One pass over `mailboxes`, `concurrency` at a time; stops starting new mailboxes once
/// `shutdown` flips to true (a mailbox in progress finishes its current folder page safely: every
/// checkpoint written is already consistent).
pub async fn run_once<E: Ews, P: Publisher, C: CheckpointStore>(
    engine: &Engine<E, P, C>,
    targets: &[(String, MailboxKind)],
    concurrency: usize,
    shutdown: &watch::Receiver<bool>,
) -> RunSummary {
    let results: Vec<MailboxReconciliation> = futures::stream::iter(targets.iter())
        .take_while(|_| {
            let stop = *shutdown.borrow();
            async move { !stop }
        })
        .map(|(m, kind)| async move { engine.sync_kind(&Mailbox { smtp: m.clone() }, *kind).await })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    RunSummary { mailboxes: results }
}

/// How `run` repeats.
#[derive(Debug, Clone, Copy)]
pub enum RunMode {
    Once,
    Daemon { interval: Duration },
}

/// Runs the collector until done (`Once`) or until `shutdown` becomes true (`Daemon`).
pub async fn run(
    config: Config,
    mode: RunMode,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunSummary> {
    run_with_metrics(config, mode, shutdown, Arc::default()).await
}

/// [`run`] counting into `metrics` (which the binary serves at `/metrics`).
pub async fn run_with_metrics(
    config: Config,
    mode: RunMode,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunSummary> {
    config.validate()?;
    let password = Secret::from_file(&config.ews.password_file)
        .with_context(|| format!("reading {}", config.ews.password_file.display()))?;
    let l = &config.limits;
    let ews = HttpEws::new(
        HttpEwsConfig {
            url: config.ews.url.clone(),
            username: config.ews.username.clone(),
            password,
            auth: config.ews.auth,
            server_version: config.ews.server_version.clone(),
            impersonation: config.ews.impersonation,
            ca_file: config.ews.ca_file.clone(),
            insecure_skip_verify: config.ews.insecure_skip_verify,
            request_timeout: config.request_timeout(),
            per_server_concurrency: l.per_server_concurrency,
            per_account_concurrency: l.per_account_concurrency,
            backoff: Backoff {
                base: Duration::from_millis(l.backoff_base_ms),
                max: Duration::from_millis(l.backoff_max_ms),
                max_retries: l.max_retries,
            },
        },
        metrics.clone(),
    )?;
    let client = mailvault_runtime::nats::connect(
        mailvault_runtime::nats::Component::Collector,
        &format!("mailvault-collector/{}", config.source),
        &config.nats.url,
        &mailvault_runtime::nats::NatsAuth {
            creds_file: config.nats.creds_file.clone(),
            nkey_file: config.nats.nkey_file.clone(),
            ca_file: config.nats.ca_file.clone(),
            allow_plaintext: config.nats.allow_plaintext,
        },
    )
    .await?;
    let publisher = JetStreamPublisher::new(
        client.clone(),
        PublisherConfig {
            stream: config.nats.stream.clone(),
            object_bucket: config.nats.object_bucket.clone(),
            inline_limit: l.inline_limit_bytes,
            max_in_flight: l.max_in_flight_publishes,
            pack: PackLimits {
                max_entries: l.pack_max_entries,
                max_bytes: l.pack_max_bytes,
            },
            replicas: config.nats.replicas,
            ..PublisherConfig::default()
        },
        metrics.clone(),
    )
    .await?;
    let store =
        KvCheckpointStore::new(client.clone(), &config.nats.kv_bucket, config.nats.replicas)
            .await?;
    let ews = Arc::new(ews);
    // Restore jobs are served while the collector runs continuously.
    let restore_task = match mode {
        RunMode::Daemon { .. } if config.restore.enabled => {
            let service = RestoreService::new(
                client.clone(),
                RestoreEdgeConfig {
                    replicas: config.nats.replicas,
                    ..RestoreEdgeConfig::new(&config.source)
                },
                Arc::new(Restorer::new(ews.clone())),
            )
            .await?;
            let rx = shutdown.clone();
            Some(tokio::spawn(async move { service.run(rx).await }))
        }
        _ => None,
    };
    let engine = Engine {
        ews: ews.clone(),
        publisher: Arc::new(publisher),
        store: Arc::new(store),
        opts: SyncOptions {
            source: config.source.clone(),
            max_changes: l.max_changes,
            get_item_batch: l.get_item_batch,
            get_item_max_bytes: l.get_item_max_bytes,
            include_non_ipm: config.ews.include_non_ipm,
            folder_concurrency: l.folder_concurrency,
            filters: config.filters(),
        },
        metrics: metrics.clone(),
    };
    let mut last;
    loop {
        // Re-read the CSV every pass so new mailboxes are picked up by the daemon.
        let targets = config.targets()?;
        info!(targets = targets.len(), "collector pass starting");
        last = run_once(&engine, &targets, l.mailbox_concurrency, &shutdown).await;
        info!(
            captured = last.captured(),
            quarantined = last.quarantined(),
            failed_mailboxes = last.failed_mailboxes(),
            failed_folders = last.failed_folders(),
            "collector pass finished"
        );
        for (name, _, v) in metrics.snapshot() {
            info!(metric = name, value = v);
        }
        match mode {
            RunMode::Once => break,
            RunMode::Daemon { interval } => {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    r = shutdown.wait_for(|s| *s) => {
                        if r.is_err() { warn!("shutdown channel closed"); }
                        break;
                    }
                }
                if *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    if let Some(task) = restore_task {
        match task.await {
            Ok(Ok(stats)) => info!(?stats, "restore jobs stopped"),
            Ok(Err(e)) => warn!(error = %e, "restore jobs stopped with an error"),
            Err(e) => warn!(error = %e, "restore task failed"),
        }
    }
    if let Err(e) = client.drain().await {
        warn!(error = %e, "draining NATS connection");
    }
    Ok(last)
}
