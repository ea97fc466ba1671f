//! The single-process mode: collector → in-process [`Bus`] → aggregator pipeline workers →
//! repository in a directory, events on the bus stream [`EVENTS_STREAM`]. The pipeline code is
//! the distributed deployment's; only the edges differ (see docs/architecture.md,
//! "Single-process mode").
//!
//! Guarantee 1 without a persistent bus: [`BusPublisher::publish_batch`] returns only once the
//! aggregator has settled (acked after the repository flush, or terminated with a quarantine
//! record) every message of the batch, so a folder's sync state is checkpointed only after its
//! items are durable in the repository. A killed process loses nothing: the next pass re-reads
//! from the last checkpoint and the repository dedupes what was already stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_aggregator::bus::{BusEvents, BusSource, DirBodies};
use mailvault_aggregator::edge::{Bodies, EventSink};
use mailvault_aggregator::{BatchPolicy, Pipeline, PipelineConfig, WorkerLimits, run_worker};
use mailvault_collector::RunSummary;
use mailvault_collector::checkpoint_file::FileCheckpointStore;
use mailvault_collector::ews::client::{EwsAuth, HttpEws, HttpEwsConfig};
use mailvault_collector::ews::{Mailbox, MailboxKind};
use mailvault_collector::pack::{PackLimits, pack};
use mailvault_collector::secret::Secret;
use mailvault_collector::sync::{
    Engine, OutMessage, PublishError, Publisher, SyncOptions, kind_of,
};
use mailvault_collector::throttle::Backoff;
use mailvault_format::{InitOptions, Repository};
use mailvault_proto::ingest::v1 as pb;
use mailvault_proto::ingest_wire::AGGREGATOR_FILTERS;
use mailvault_runtime::bus::{Bus, ConsumerConfig, Headers, MSG_ID_HEADER, StreamConfig};
use mailvault_runtime::handoff::Handoff;
use mailvault_runtime::storage::DirStore;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// The events stream the aggregator publishes to; attach the indexer's consumer here.
pub use mailvault_proto::events_wire::{
    STREAM as EVENTS_STREAM, STREAM_SUBJECTS as EVENTS_SUBJECTS,
};
/// The aggregator's durable consumer (items and changes).
pub use mailvault_proto::ingest_wire::AGGREGATOR_CONSUMER;
/// The ingest stream (same name and subjects as the JetStream deployment).
pub use mailvault_proto::ingest_wire::{STREAM as INGEST_STREAM, SUBJECTS as INGEST_SUBJECTS};
/// Collector quarantine and reconciliation records: logged and counted.
pub const RECORDS_CONSUMER: &str = "mailvault-local-records";
/// The "bucket" of bodies over the inline limit, kept as files under `state_dir/bodies/`.
pub const BODIES_BUCKET: &str = "ingest-bodies";

/// The EWS endpoint and account.
#[derive(Clone)]
pub struct LocalEws {
    /// `https://<server>/EWS/Exchange.asmx`
    pub url: String,
    pub username: String,
    pub password: String,
    /// NTLM (Exchange's default on the EWS virtual directory) or Basic.
    pub auth: EwsAuth,
    /// Send `ExchangeImpersonation` (account with the ApplicationImpersonation role).
    pub impersonation: bool,
    pub server_version: String,
    pub insecure_skip_verify: bool,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for LocalEws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEws")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("auth", &self.auth)
            .field("impersonation", &self.impersonation)
            .finish_non_exhaustive()
    }
}

impl LocalEws {
    pub fn new(url: &str, username: &str, password: &str) -> Self {
        LocalEws {
            url: url.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            auth: EwsAuth::default(),
            impersonation: true,
            server_version: "Exchange2013_SP1".into(),
            insecure_skip_verify: false,
            ca_file: None,
        }
    }
}

/// One single-process backup pass.
#[derive(Debug, Clone)]
pub struct LocalBackup {
    pub ews: LocalEws,
    /// SMTP addresses to back up (primary mailboxes).
    pub mailboxes: Vec<String>,
    /// The repository (a directory store).
    pub repository_dir: PathBuf,
    pub passphrase: Vec<u8>,
    /// Create the repository with these options if `repository_dir` holds none.
    pub init: Option<InitOptions>,
    /// The repository `repository_dir` holds, already open. The indexer of the same process
    /// should share it: it then sees every pack the aggregator writes at once, without
    /// re-reading index objects, and the pass does not derive the key again.
    pub repository: Option<Repository>,
    /// Hands every item the aggregator writes to the indexer of this process (give the same
    /// one to the indexer).
    pub handoff: Option<Arc<Handoff>>,
    /// Checkpoints (`checkpoints/`) and bodies in transit (`bodies/`); keep it between passes
    /// for incremental backups.
    pub state_dir: PathBuf,
    /// A bus to run on, e.g. one where the indexer already has a consumer on
    /// [`EVENTS_STREAM`]. Without one, a private bus is made and events nobody consumes are
    /// not retained.
    pub bus: Option<Bus>,
    /// Aggregator pipelines (one writer each).
    pub workers: usize,
    pub mailbox_concurrency: usize,
    /// Bodies larger than this travel as files, not in the bus.
    pub inline_limit: usize,
    /// Collector instance name carried in every message.
    pub source: String,
    /// Batch policy of each pipeline (short delay: the collector waits for each commit).
    pub batch: BatchPolicy,
    /// Capacity of the ingest stream (messages); publishing beyond waits.
    pub max_in_bus: usize,
}

impl LocalBackup {
    pub fn new(
        ews: LocalEws,
        mailboxes: Vec<String>,
        repository_dir: PathBuf,
        passphrase: Vec<u8>,
        state_dir: PathBuf,
    ) -> Self {
        LocalBackup {
            ews,
            mailboxes,
            repository_dir,
            passphrase,
            init: None,
            repository: None,
            handoff: None,
            state_dir,
            bus: None,
            workers: 2,
            mailbox_concurrency: 4,
            inline_limit: 512 * 1024,
            source: "mailvault-local".into(),
            // The collector waits for each batch to settle before it checkpoints, so a long
            // linger here is pure latency on its critical path.
            batch: BatchPolicy {
                max_items: 500,
                max_bytes: 64 << 20,
                max_delay: Duration::from_millis(10),
            },
            max_in_bus: 4096,
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct BackupReport {
    /// Item versions the collector captured (published).
    pub captured: u64,
    /// Item versions stored (new or already present).
    pub items: usize,
    /// Change events recorded as item history.
    pub changes: usize,
    /// Item versions that were already in the repository (not read again).
    pub duplicates: usize,
    /// Item bytes fed to the repository writer.
    pub bytes_logical: u64,
    /// Bytes of new chunks before compression (after deduplication).
    pub bytes_new_raw: u64,
    /// Growth of the repository directory.
    pub bytes_stored: u64,
    /// Items the collector could not collect (per-item records were logged).
    pub quarantined_collector: u64,
    /// Messages the aggregator terminated as poison (a `Quarantined` event was published).
    pub quarantined_aggregator: u64,
    pub failed_mailboxes: usize,
    pub failed_folders: usize,
    pub duration: Duration,
    /// Per-mailbox reconciliations.
    pub summary: RunSummary,
}

impl BackupReport {
    pub fn quarantined(&self) -> u64 {
        self.quarantined_collector + self.quarantined_aggregator
    }
}

/// Publishes collector batches to the bus and returns when every message is settled
/// downstream. Bodies over the inline limit are written to [`DirBodies`] first.
#[derive(Debug, Clone)]
pub struct BusPublisher {
    pub bus: Bus,
    pub bodies: DirBodies,
    pub inline_limit: usize,
    /// How small items and changes are packed into one message.
    pub pack: PackLimits,
    tmp: Arc<AtomicU64>,
}

impl BusPublisher {
    pub fn new(bus: Bus, bodies: DirBodies, inline_limit: usize) -> Self {
        BusPublisher {
            bus,
            bodies,
            inline_limit,
            pack: PackLimits::default(),
            tmp: Arc::default(),
        }
    }

    async fn offload(&self, name: &str, body: &Bytes) -> Result<pb::ObjectRef, PublishError> {
        let path = self
            .bodies
            .path(BODIES_BUCKET, name)
            .ok_or_else(|| PublishError(format!("body name {name:?} is not file-safe")))?;
        let n = self.tmp.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        let size = body.len() as u64;
        tokio::task::spawn_blocking(move || write_file(&path, &body, n))
            .await
            .map_err(|e| PublishError(format!("body write task: {e}")))?
            .map_err(|e| PublishError(format!("writing body {name}: {e}")))?;
        Ok(pb::ObjectRef {
            bucket: BODIES_BUCKET.into(),
            name: name.to_owned(),
            size,
        })
    }
}

fn write_file(path: &Path, data: &[u8], n: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("body path without parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.{n}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl Publisher for BusPublisher {
    async fn publish_batch(&self, mut msgs: Vec<OutMessage>) -> Result<(), PublishError> {
        for m in &mut msgs {
            if let Some(pb::ingest_message::Message::Item(env)) = &mut m.message.message
                && let Some(pb::item_envelope::Body::Inline(body)) = &env.body
                && body.len() > self.inline_limit
            {
                let r = self.offload(&m.msg_id, body).await?;
                env.body = Some(pb::item_envelope::Body::Object(r));
            }
        }
        let msgs = pack(msgs, self.pack);
        let mut seqs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let mut h = Headers::new();
            h.insert(MSG_ID_HEADER.into(), m.msg_id.clone());
            h.insert(
                mailvault_proto::ingest_wire::KIND_HEADER.into(),
                kind_of(&m.message).into(),
            );
            if let Some(tp) = &m.traceparent {
                h.insert("traceparent".into(), tp.clone());
            }
            let ack = self
                .bus
                .publish(&m.subject, h, Bytes::from(m.message.encode_to_vec()))
                .await
                .map_err(|e| PublishError(format!("publishing {}: {e}", m.subject)))?;
            seqs.push(ack.seq);
        }
        // The collector checkpoints after this returns: wait until it is durable downstream.
        for seq in seqs {
            self.bus
                .wait_settled(INGEST_STREAM, seq)
                .await
                .map_err(|e| PublishError(format!("waiting for settlement: {e}")))?;
        }
        Ok(())
    }
}

/// Creates the ingest and events streams on `bus` (idempotent).
pub fn ensure_streams(bus: &Bus, max_in_bus: usize) -> anyhow::Result<()> {
    let mut ingest = StreamConfig::new(INGEST_STREAM, &[INGEST_SUBJECTS]);
    ingest.max_msgs = max_in_bus.max(1);
    bus.get_or_create_stream(ingest)?;
    bus.get_or_create_stream(StreamConfig::new(EVENTS_STREAM, &[EVENTS_SUBJECTS]))?;
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

async fn open_repository(opts: &LocalBackup) -> anyhow::Result<Repository> {
    std::fs::create_dir_all(&opts.repository_dir)
        .with_context(|| format!("creating {}", opts.repository_dir.display()))?;
    let store: Arc<dyn mailvault_format::BlobStore> = Arc::new(
        DirStore::open(&opts.repository_dir)
            .with_context(|| format!("opening store {}", opts.repository_dir.display()))?,
    );
    match Repository::open(store.clone(), &opts.passphrase).await {
        Ok(r) => Ok(r),
        Err(mailvault_format::FormatError::NoKeys) if opts.init.is_some() => {
            let init = opts.init.clone().unwrap_or_default();
            Repository::init(store, &opts.passphrase, init)
                .await
                .with_context(|| format!("initialising {}", opts.repository_dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", opts.repository_dir.display())),
    }
}

/// Logs collector quarantine records (and counts them) so they are visible, and settles
/// reconciliation records.
async fn drain_records(consumer: mailvault_runtime::bus::Consumer, stop: CancellationToken) {
    loop {
        let got = tokio::select! {
            () = stop.cancelled() => return,
            g = consumer.fetch(256, 16 << 20, Duration::from_secs(1)) => g,
        };
        for d in got {
            match pb::IngestMessage::decode(d.message.payload.clone()) {
                Ok(pb::IngestMessage {
                    message: Some(pb::ingest_message::Message::Quarantine(q)),
                }) => tracing::warn!(
                    mailbox = %q.mailbox,
                    item_id = %q.item_id,
                    stage = %q.stage,
                    cause = %q.cause,
                    "collector quarantined an item"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(seq = d.message.seq, error = %e, "undecodable record"),
            }
            d.acker.ack();
        }
    }
}

/// One backup pass in this process. Returns when the collector pass is done and every
/// message it published has been settled by the aggregator (durable in the repository, or
/// quarantined).
pub async fn backup_once(opts: LocalBackup) -> anyhow::Result<BackupReport> {
    let started = Instant::now();
    let bus = opts.bus.clone().unwrap_or_default();
    ensure_streams(&bus, opts.max_in_bus)?;
    let mut cc = ConsumerConfig::new(AGGREGATOR_CONSUMER, &AGGREGATOR_FILTERS);
    cc.max_ack_pending = opts.max_in_bus.max(1);
    let consumer = bus.get_or_create_consumer(INGEST_STREAM, cc)?;
    let records = bus.get_or_create_consumer(
        INGEST_STREAM,
        ConsumerConfig::new(
            RECORDS_CONSUMER,
            &[
                "mailvault.ingest.quarantine.>",
                "mailvault.ingest.reconcile.>",
            ],
        ),
    )?;

    let repo = match &opts.repository {
        Some(r) => r.clone(),
        None => open_repository(&opts).await?,
    };
    let size_before = dir_size(&opts.repository_dir);
    let bodies = DirBodies {
        root: opts.state_dir.join("bodies"),
    };
    let checkpoints = FileCheckpointStore::open(opts.state_dir.join("checkpoints"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Aggregator workers.
    let metrics = Arc::new(mailvault_aggregator::Metrics::default());
    let shutdown = CancellationToken::new();
    let pipeline_cfg = PipelineConfig {
        batch: opts.batch,
        ..PipelineConfig::default()
    };
    let limits = WorkerLimits {
        fetch_messages: 64,
        fetch_bytes: 16 << 20,
        progress_every: pipeline_cfg.progress_every,
        shutdown_deadline: Duration::from_secs(25),
    };
    let events: Arc<dyn EventSink> = Arc::new(BusEvents(bus.clone()));
    let bodies_dyn: Arc<dyn Bodies> = Arc::new(bodies.clone());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.workers.max(1) {
        let mut p = Pipeline::new(
            repo.clone(),
            pipeline_cfg.clone(),
            bodies_dyn.clone(),
            events.clone(),
            metrics.clone(),
        )?;
        if let Some(h) = &opts.handoff {
            p = p.with_handoff(h.clone());
        }
        workers.spawn(run_worker(
            BusSource(consumer.clone()),
            p,
            limits,
            shutdown.clone(),
        ));
    }
    // In a JoinSet so that aborting this future (a killed pass) aborts it too.
    let mut records_task = tokio::task::JoinSet::new();
    records_task.spawn(drain_records(records, shutdown.clone()));

    // The collector.
    let cmetrics = Arc::new(mailvault_collector::metrics::Metrics::default());
    let ews = HttpEws::new(
        HttpEwsConfig {
            url: opts.ews.url.clone(),
            username: opts.ews.username.clone(),
            password: Secret::new(opts.ews.password.clone()),
            auth: opts.ews.auth,
            server_version: opts.ews.server_version.clone(),
            impersonation: opts.ews.impersonation,
            ca_file: opts.ews.ca_file.clone(),
            insecure_skip_verify: opts.ews.insecure_skip_verify,
            request_timeout: Duration::from_secs(120),
            per_server_concurrency: 8,
            // Eight requests of a mailbox at once (the collector's default is 2): one big
            // mailbox left both cores idle between round trips. Exchange's EWSMaxConcurrency
            // is 10 to 27 per account, depending on the version and policy.
            per_account_concurrency: 8,
            backoff: Backoff::default(),
        },
        cmetrics.clone(),
    )
    .with_context(|| format!("EWS client for {}", opts.ews.url))?;
    let engine = Engine {
        ews: Arc::new(ews),
        publisher: Arc::new(BusPublisher::new(
            bus.clone(),
            bodies.clone(),
            opts.inline_limit,
        )),
        store: Arc::new(checkpoints),
        opts: SyncOptions {
            source: opts.source.clone(),
            // Sixteen folders at once, though only eight requests: a folder spends most of its
            // time waiting for its batch's commit, not on EWS (on the dev corpus, 8 → 16 made
            // the pass 1.23-1.39 s → 1.06-1.18 s; 32 gained nothing more).
            folder_concurrency: 16,
            ..SyncOptions::default()
        },
        metrics: cmetrics,
    };
    let targets: Vec<(String, MailboxKind)> = opts
        .mailboxes
        .iter()
        .map(|m| (m.clone(), MailboxKind::Primary))
        .collect();
    let engine = Arc::new(engine);
    let concurrency = opts.mailbox_concurrency.max(1);

    // A worker that dies would leave the collector waiting for settlements forever: race them.
    // (This is `mailvault_collector::run_once` over owned targets, so the future is `Send`.)
    let collect = async {
        let mailboxes: Vec<_> = futures::stream::iter(targets)
            .map(|(m, kind)| {
                let engine = engine.clone();
                async move { engine.sync_kind(&Mailbox { smtp: m }, kind).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        consumer.wait_idle().await;
        RunSummary { mailboxes }
    };
    let mut worker_report = mailvault_aggregator::RunReport::default();
    let mut failure: Option<anyhow::Error> = None;
    let summary = tokio::select! {
        s = collect => Some(s),
        r = workers.join_next() => {
            failure = Some(match r {
                Some(Ok(Ok(_))) | None => anyhow::anyhow!("aggregator worker stopped early"),
                Some(Ok(Err(e))) => anyhow::Error::new(e).context("aggregator worker failed"),
                Some(Err(e)) => anyhow::anyhow!("aggregator worker panicked: {e}"),
            });
            None
        }
    };
    shutdown.cancel();
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(r)) => worker_report.merge(r),
            Ok(Err(e)) => {
                failure.get_or_insert_with(|| anyhow::Error::new(e).context("aggregator worker"));
            }
            Err(e) => {
                failure.get_or_insert_with(|| anyhow::anyhow!("aggregator worker panicked: {e}"));
            }
        }
    }
    records_task.join_all().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let summary = summary.unwrap_or_default();
    use mailvault_aggregator::Metrics as M;
    let report = BackupReport {
        captured: summary.captured(),
        items: worker_report.items,
        changes: worker_report.changes,
        duplicates: worker_report.duplicates,
        bytes_logical: M::get(&metrics.logical_bytes_total),
        bytes_new_raw: M::get(&metrics.new_raw_bytes_total),
        bytes_stored: dir_size(&opts.repository_dir).saturating_sub(size_before),
        quarantined_collector: summary.quarantined(),
        quarantined_aggregator: M::get(&metrics.quarantined_total),
        failed_mailboxes: summary.failed_mailboxes(),
        failed_folders: summary.failed_folders(),
        duration: started.elapsed(),
        summary,
    };
    tracing::info!(
        captured = report.captured,
        items = report.items,
        changes = report.changes,
        duplicates = report.duplicates,
        quarantined = report.quarantined(),
        secs = report.duration.as_secs_f64(),
        "local backup pass finished"
    );
    Ok(report)
}

/// Per-mailbox counts of a report, for logs: mailbox → (captured, quarantined).
pub fn per_mailbox(report: &BackupReport) -> BTreeMap<String, (u64, u64)> {
    report
        .summary
        .mailboxes
        .iter()
        .map(|m| {
            let c = m.folders.iter().map(|f| f.captured).sum();
            let q = m.folders.iter().map(|f| f.quarantined).sum();
            (m.mailbox.clone(), (c, q))
        })
        .collect()
}
