//! The pipeline core, with no NATS in it: decode an [`IngestMessage`], feed its body into the
//! repository [`Writer`] on the blocking pool, batch, flush, publish events, and only then
//! settle the deliveries (guarantee 1: nothing is acknowledged before it is durable).
//!
//! Stages of one batch, each retried where it stopped:
//! `handle` (items finished into the writer) → `flush` (packs + index durable) → publish
//! `ItemStored` / `ItemChangeRecorded` → ack → delete Object Store bodies.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mailvault_format::{BlobId, ErrorKind, FormatError, ItemManifest, Repository, Writer};
use mailvault_proto::events::v1::{ItemChangeRecorded, ItemStored, Quarantined};
use mailvault_proto::ingest::v1::{
    ChangeKind, IngestMessage, ItemChange, ItemEnvelope, ObjectRef, ingest_message, item_envelope,
};
use prost::Message as _;
use tokio::io::AsyncReadExt as _;

use crate::edge::{Bodies, BodyError, Delivery, EdgeError, Event, EventSink};
use crate::metrics::Metrics;

/// Subjects of the events the aggregator publishes (stream `MAILVAULT_EVENTS`).
pub const SUBJECT_STORED: &str = "mailvault.events.stored";
pub const SUBJECT_CHANGED: &str = "mailvault.events.changed";
pub const SUBJECT_QUARANTINED: &str = "mailvault.events.quarantined";

/// `item_class` of item-history records (docs/wire.md).
pub const HISTORY_ITEM_CLASS: &str = "MailVault.History.ItemChange";
/// Property naming what a manifest-kind blob holds; absent on item versions.
pub const RECORD_PROPERTY: &str = "mailvault.record";
pub const RECORD_ITEM_CHANGE: &str = "item-change.v1";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// When a batch of finished items is flushed: whichever limit is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_items: usize,
    pub max_bytes: u64,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_items: 500,
            max_bytes: 64 << 20,
            max_delay: Duration::from_secs(2),
        }
    }
}

impl BatchPolicy {
    /// Whether `items` pending items of `bytes` bytes, the oldest finished at `oldest`, are due.
    pub fn due(&self, items: usize, bytes: u64, oldest: Option<Instant>, now: Instant) -> bool {
        if items == 0 {
            return false;
        }
        items >= self.max_items
            || bytes >= self.max_bytes
            || oldest.is_some_and(|t| now.saturating_duration_since(t) >= self.max_delay)
    }
}

/// Settings of one pipeline (one writer).
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub batch: BatchPolicy,
    /// Body bytes handed to the writer per blocking call (and read per Object Store read).
    pub piece_bytes: usize,
    /// Sealed packs held in memory before they are uploaded (also mid-item).
    pub max_sealed_bytes: u64,
    /// Redelivery delay after a retryable error.
    pub nak_delay: Duration,
    /// A message failing permanently is quarantined at this delivery attempt.
    pub poison_after_attempts: u64,
    /// Progress is sent at least this often while one item is being read.
    pub progress_every: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch: BatchPolicy::default(),
            piece_bytes: 1 << 20,
            max_sealed_bytes: 64 << 20,
            nak_delay: Duration::from_secs(5),
            poison_after_attempts: 5,
            progress_every: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The repository or store failed in a way that may pass (S3 down): retry, ack nothing.
    #[error("repository: {0}")]
    Format(#[from] FormatError),
    #[error("publishing events: {0}")]
    Edge(#[from] EdgeError),
    /// A blocking task panicked and took the writer with it: the process must restart
    /// (nothing it held was acknowledged).
    #[error("writer lost: {0}")]
    WriterLost(String),
}

impl PipelineError {
    /// Whether the pipeline can go on after retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Format(e) => e.kind() == ErrorKind::Retryable,
            PipelineError::Edge(_) => true,
            PipelineError::WriterLost(_) => false,
        }
    }
}

/// What became of one delivery handed to [`Pipeline::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Finished into the writer; settled after the next successful commit.
    Pending,
    /// Sent back for redelivery (retryable trouble, or a permanent one before the last attempt).
    Nakked,
    /// Poison: quarantine record published, message terminated.
    Quarantined,
}

/// What one successful [`Pipeline::commit`] settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub items: usize,
    pub changes: usize,
    pub duplicates: usize,
}

struct Pending {
    delivery: Delivery,
    manifest_id: BlobId,
    event: Event,
    body: Option<ObjectRef>,
    is_change: bool,
    duplicate: bool,
    bytes: u64,
}

/// One writer and the deliveries waiting on it.
pub struct Pipeline {
    repo: Repository,
    writer: Option<Writer>,
    cfg: PipelineConfig,
    bodies: Arc<dyn Bodies>,
    events: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    /// Finished into the writer, not yet durable.
    pending: Vec<Pending>,
    pending_bytes: u64,
    oldest: Option<Instant>,
    /// Durable; their events are not all published yet.
    flushed: Vec<Pending>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("pending", &self.pending.len())
            .field("flushed", &self.flushed.len())
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

enum Failure {
    Retryable(String),
    Permanent(String),
}

impl From<FormatError> for Failure {
    fn from(e: FormatError) -> Self {
        match e.kind() {
            ErrorKind::Retryable => Failure::Retryable(e.to_string()),
            _ => Failure::Permanent(e.to_string()),
        }
    }
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::NotFound(_) => Failure::Permanent(e.to_string()),
            BodyError::Unavailable(_) => Failure::Retryable(e.to_string()),
        }
    }
}

/// Who a delivery is about, for quarantine records and logs.
#[derive(Default)]
struct Subject {
    mailbox: String,
    folder: String,
    item_id: String,
}

fn change_kind_name(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::ReadFlag => "read_flag",
        ChangeKind::Move => "move",
        ChangeKind::Delete => "delete",
        ChangeKind::Unspecified => "unspecified",
    }
}

/// The manifest-kind record that stores a change as item history: identity
/// `(mailbox, item_id, "~history:<kind>:<change_key>:<observed ms>")` — `~` and `:` never occur
/// in EWS change keys (base64), so it cannot collide with an item version, and a redelivered
/// change maps to the same record. Its content is the `ItemChange` protobuf itself.
pub fn history_record(c: &ItemChange) -> (ItemManifest, Vec<u8>) {
    let kind = change_kind_name(c.kind());
    let mut properties = std::collections::HashMap::new();
    properties.insert(RECORD_PROPERTY.to_owned(), RECORD_ITEM_CHANGE.to_owned());
    properties.insert("mailvault.change.kind".to_owned(), kind.to_owned());
    properties.insert(
        "mailvault.change.change_key".to_owned(),
        c.change_key.clone(),
    );
    let meta = ItemManifest {
        mailbox: c.mailbox.clone(),
        item_id: c.item_id.clone(),
        change_key: format!("~history:{kind}:{}:{}", c.change_key, c.observed_unix_ms),
        folder_id: c.folder_id.clone(),
        folder_path: c.folder_path.clone(),
        item_class: HISTORY_ITEM_CLASS.to_owned(),
        collected_unix_ms: c.observed_unix_ms,
        source: c.source.clone(),
        is_read: c.is_read,
        properties,
        ..Default::default()
    };
    (meta, c.encode_to_vec())
}

fn manifest_of(env: &ItemEnvelope) -> ItemManifest {
    ItemManifest {
        mailbox: env.mailbox.clone(),
        item_id: env.item_id.clone(),
        change_key: env.change_key.clone(),
        folder_id: env.folder_id.clone(),
        folder_path: env.folder_path.clone(),
        distinguished_folder: env.distinguished_folder.clone(),
        item_class: env.item_class.clone(),
        format: env.format,
        collected_unix_ms: env.collected_unix_ms,
        source: env.source.clone(),
        is_read: env.is_read,
        properties: env.properties.clone(),
        ..Default::default()
    }
}

impl Pipeline {
    pub fn new(
        repo: Repository,
        cfg: PipelineConfig,
        bodies: Arc<dyn Bodies>,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FormatError> {
        let writer = repo.writer()?;
        Ok(Pipeline {
            repo,
            writer: Some(writer),
            cfg,
            bodies,
            events,
            metrics,
            pending: Vec::new(),
            pending_bytes: 0,
            oldest: None,
            flushed: Vec::new(),
        })
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Deliveries held (not yet settled).
    pub fn held(&self) -> usize {
        self.pending.len() + self.flushed.len()
    }

    /// Bytes of finished, not yet durable items.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Whether the batch policy wants a commit now (or a previous commit is unfinished).
    pub fn commit_due(&self, now: Instant) -> bool {
        !self.flushed.is_empty()
            || self
                .cfg
                .batch
                .due(self.pending.len(), self.pending_bytes, self.oldest, now)
    }

    /// Sealed packs beyond the memory bound could not be uploaded: stop taking work and retry
    /// [`Pipeline::commit`] until it succeeds.
    pub fn backlogged(&self) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|w| w.sealed_bytes() > self.cfg.max_sealed_bytes)
    }

    /// When the oldest pending item reaches the batch delay.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.cfg.batch.max_delay)
    }

    /// Runs `f` on the writer on the blocking pool.
    async fn on_writer<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Writer) -> R + Send + 'static,
    ) -> Result<R, PipelineError> {
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| PipelineError::WriterLost("writer missing".into()))?;
        let (w, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut w);
            (w, r)
        })
        .await
        .map_err(|e| PipelineError::WriterLost(e.to_string()))?;
        self.writer = Some(w);
        Ok(r)
    }

    fn writer(&mut self) -> Result<&mut Writer, PipelineError> {
        self.writer
            .as_mut()
            .ok_or_else(|| PipelineError::WriterLost("writer missing".into()))
    }

    /// Uploads sealed packs once they exceed the memory bound.
    async fn upload_if_needed(&mut self) -> Result<(), FormatError> {
        let max = self.cfg.max_sealed_bytes;
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if w.sealed_bytes() > max {
            w.upload_sealed().await?;
        }
        Ok(())
    }

    /// Takes one delivery as far as the writer. Only a lost writer is an error; everything
    /// about the message itself ends in [`Handled`].
    pub async fn handle(&mut self, d: Delivery) -> Result<Handled, PipelineError> {
        let msg = match IngestMessage::decode(d.payload.clone()) {
            Ok(m) => m,
            Err(e) => {
                // Deterministic: no later attempt decodes it either.
                return self
                    .quarantine(d, "decode", Subject::default(), format!("undecodable: {e}"))
                    .await;
            }
        };
        match msg.message {
            Some(ingest_message::Message::Item(env)) => self.item(d, env).await,
                        Some(ingest_message::Message::Change(c)) => self.change(d, c).await,
            // The consumer's subject filter leaves these to their own consumers; one arriving
            // here means the filter is misconfigured, which must be visible, not swallowed.
            Some(
                ingest_message::Message::Quarantine(_) | ingest_message::Message::Reconciliation(_),
            ) => {
                self.quarantine(
                    d,
                    "route",
                    Subject::default(),
                    "collector quarantine/reconciliation record reached the aggregator: check the consumer's subject filter".into(),
                )
                .await
            }
            None => {
                self.quarantine(
                    d,
                    "decode",
                    Subject::default(),
                    "message carries no item and no change (empty or unknown kind)".into(),
                )
                .await
            }
        }
    }

    async fn item(&mut self, d: Delivery, env: ItemEnvelope) -> Result<Handled, PipelineError> {
        let subject = Subject {
            mailbox: env.mailbox.clone(),
            folder: env.folder_path.join("/"),
            item_id: env.item_id.clone(),
        };
        if env.mailbox.is_empty() || env.item_id.is_empty() {
            return self
                .quarantine(
                    d,
                    "validate",
                    subject,
                    "envelope without mailbox or item id".into(),
                )
                .await;
        }
        let meta = manifest_of(&env);
        let event_base = ItemStored {
            manifest_id: String::new(),
            mailbox: env.mailbox.clone(),
            item_id: env.item_id.clone(),
            change_key: env.change_key.clone(),
            folder_path: env.folder_path.clone(),
            item_class: env.item_class.clone(),
            size: env.size,
            stored_unix_ms: 0,
        };
        let (receipt, object) = match env.body {
            Some(item_envelope::Body::Object(r)) => {
                match self.item_from_object(&d, meta, &r).await? {
                    Ok(receipt) => (receipt, Some(r)),
                    Err(f) => return self.fail(d, "body", subject, f).await,
                }
            }
            body => {
                let data = match body {
                    Some(item_envelope::Body::Inline(b)) => b,
                    _ => Bytes::new(),
                };
                let piece = self.cfg.piece_bytes.max(1);
                let r = self
                    .on_writer(move |w| {
                        w.begin_item(meta)?;
                        if !w.current_is_duplicate() {
                            for p in data.chunks(piece) {
                                w.write(p)?;
                            }
                        }
                        w.finish_item()
                    })
                    .await?;
                match r {
                    Ok(r) => (r, None),
                    Err(e) => {
                        self.writer()?.abort_item();
                        return self.fail(d, "write", subject, e.into()).await;
                    }
                }
            }
        };
        if let Err(e) = self.upload_if_needed().await {
            // The item is finished in the writer; the upload is retried by the next commit.
            tracing::warn!(error = %e, "uploading sealed packs failed; retried at commit");
        }
        let mut event = event_base;
        event.manifest_id = receipt.manifest_id.to_hex();
        let bytes = receipt.size;
        Metrics::add(&self.metrics.logical_bytes_total, bytes);
        Metrics::add(&self.metrics.new_raw_bytes_total, receipt.new_raw_bytes);
        Metrics::add(
            &self.metrics.new_chunks_total,
            u64::from(receipt.new_chunks),
        );
        self.push_pending(Pending {
            event: Event {
                subject: SUBJECT_STORED.into(),
                msg_id: receipt.manifest_id.to_hex(),
                payload: Bytes::new(),
            },
            delivery: d,
            manifest_id: receipt.manifest_id,
            body: object,
            is_change: false,
            duplicate: receipt.already_stored,
            bytes,
        });
        // The payload is encoded at publish time (it carries the stored time).
        if let Some(p) = self.pending.last_mut() {
            p.event.payload = event.encode_to_vec().into();
        }
        Ok(Handled::Pending)
    }

    /// Streams an Object Store body into the writer, one piece at a time.
    async fn item_from_object(
        &mut self,
        d: &Delivery,
        meta: ItemManifest,
        r: &ObjectRef,
    ) -> Result<Result<mailvault_format::ItemReceipt, Failure>, PipelineError> {
        let dup = self
            .on_writer(move |w| w.begin_item(meta).map(|()| w.current_is_duplicate()))
            .await?;
        let dup = match dup {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.into())),
        };
        if !dup {
            let fed = self.feed_object(d, r).await?;
            if let Err(f) = fed {
                self.writer()?.abort_item();
                return Ok(Err(f));
            }
        }
        match self.on_writer(|w| w.finish_item()).await? {
            Ok(r) => Ok(Ok(r)),
            Err(e) => {
                self.writer()?.abort_item();
                Ok(Err(e.into()))
            }
        }
    }

    async fn feed_object(
        &mut self,
        d: &Delivery,
        r: &ObjectRef,
    ) -> Result<Result<(), Failure>, PipelineError> {
        let mut reader = match self.bodies.open(r).await {
            Ok(rd) => rd,
            Err(e) => return Ok(Err(e.into())),
        };
        let piece = self.cfg.piece_bytes.max(4096);
        let mut buf = Vec::with_capacity(piece);
        let mut total = 0u64;
        let mut last_progress = Instant::now();
        loop {
            buf.clear();
            let n = match (&mut reader).take(piece as u64).read_to_end(&mut buf).await {
                Ok(n) => n,
                Err(e) => return Ok(Err(Failure::Retryable(format!("reading body: {e}")))),
            };
            if n == 0 {
                break;
            }
            total += n as u64;
            let (b, res) = self
                .on_writer(move |w| {
                    let res = w.write(&buf);
                    (buf, res)
                })
                .await?;
            buf = b;
            if let Err(e) = res {
                return Ok(Err(e.into()));
            }
            if let Err(e) = self.upload_if_needed().await {
                return Ok(Err(e.into()));
            }
            if last_progress.elapsed() >= self.cfg.progress_every {
                last_progress = Instant::now();
                if let Err(e) = d.acker.progress().await {
                    tracing::warn!(error = %e, "progress failed");
                }
            }
        }
        if r.size != 0 && total != r.size {
            return Ok(Err(Failure::Permanent(format!(
                "body object {} has {total} bytes, reference says {}",
                r.name, r.size
            ))));
        }
        Ok(Ok(()))
    }

    async fn change(&mut self, d: Delivery, c: ItemChange) -> Result<Handled, PipelineError> {
        let subject = Subject {
            mailbox: c.mailbox.clone(),
            folder: c.folder_path.join("/"),
            item_id: c.item_id.clone(),
        };
        if c.mailbox.is_empty() || c.item_id.is_empty() {
            return self
                .quarantine(
                    d,
                    "validate",
                    subject,
                    "change without mailbox or item id".into(),
                )
                .await;
        }
        let (meta, content) = history_record(&c);
        let r = self
            .on_writer(move |w| {
                w.begin_item(meta)?;
                if !w.current_is_duplicate() {
                    w.write(&content)?;
                }
                w.finish_item()
            })
            .await?;
        let receipt = match r {
            Ok(r) => r,
            Err(e) => {
                self.writer()?.abort_item();
                return self.fail(d, "write", subject, e.into()).await;
            }
        };
        let event = ItemChangeRecorded {
            record_id: receipt.manifest_id.to_hex(),
            mailbox: c.mailbox.clone(),
            item_id: c.item_id.clone(),
            change_key: c.change_key.clone(),
            kind: change_kind_name(c.kind()).into(),
            folder_id: c.folder_id.clone(),
            folder_path: c.folder_path.clone(),
            is_read: c.is_read,
            observed_unix_ms: c.observed_unix_ms,
            stored_unix_ms: 0,
        };
        self.push_pending(Pending {
            event: Event {
                subject: SUBJECT_CHANGED.into(),
                msg_id: receipt.manifest_id.to_hex(),
                payload: event.encode_to_vec().into(),
            },
            delivery: d,
            manifest_id: receipt.manifest_id,
            body: None,
            is_change: true,
            duplicate: receipt.already_stored,
            bytes: receipt.size,
        });
        Ok(Handled::Pending)
    }

    fn push_pending(&mut self, p: Pending) {
        self.pending_bytes += p.bytes;
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(p);
    }

    async fn fail(
        &mut self,
        d: Delivery,
        stage: &str,
        subject: Subject,
        f: Failure,
    ) -> Result<Handled, PipelineError> {
        match f {
            Failure::Retryable(cause) => {
                tracing::warn!(stage, mailbox = %subject.mailbox, item = %subject.item_id, %cause, "retryable; nak");
                self.nak(&d).await;
                Ok(Handled::Nakked)
            }
            Failure::Permanent(cause) if d.attempt < self.cfg.poison_after_attempts => {
                tracing::warn!(stage, attempt = d.attempt, mailbox = %subject.mailbox, item = %subject.item_id, %cause, "failed; will retry before quarantining");
                self.nak(&d).await;
                Ok(Handled::Nakked)
            }
            Failure::Permanent(cause) => self.quarantine(d, stage, subject, cause).await,
        }
    }

    async fn nak(&self, d: &Delivery) {
        Metrics::add(&self.metrics.naks_total, 1);
        if let Err(e) = d.acker.nak(self.cfg.nak_delay).await {
            // The ack deadline redelivers it anyway.
            tracing::warn!(error = %e, "nak failed");
        }
    }

    /// Publishes a quarantine record, then terminates the message. If the record cannot be
    /// published, the message is nakked instead: nothing is dropped silently (guarantee 7).
    async fn quarantine(
        &mut self,
        d: Delivery,
        stage: &str,
        s: Subject,
        cause: String,
    ) -> Result<Handled, PipelineError> {
        tracing::error!(stage, mailbox = %s.mailbox, item = %s.item_id, %cause, "quarantined");
        let q = Quarantined {
            stage: format!("aggregator.{stage}"),
            mailbox: s.mailbox,
            folder: s.folder,
            item_id: s.item_id,
            cause,
            unix_ms: now_ms(),
        };
        let ev = Event {
            subject: SUBJECT_QUARANTINED.into(),
            msg_id: format!("aggregator-quarantine-{}", d.id),
            payload: q.encode_to_vec().into(),
        };
        if let Err(e) = self.events.publish(vec![ev]).await {
            tracing::warn!(error = %e, "publishing quarantine record failed; nak");
            self.nak(&d).await;
            return Ok(Handled::Nakked);
        }
        if let Err(e) = d.acker.term().await {
            tracing::warn!(error = %e, "term failed; the message will come back and be quarantined again");
        }
        Metrics::add(&self.metrics.quarantined_total, 1);
        Ok(Handled::Quarantined)
    }

    /// Seals the open pack if it is old enough and uploads what is sealed beyond the bound.
    pub async fn tick(&mut self) -> Result<(), PipelineError> {
        self.writer()?.seal_if_due();
        self.upload_if_needed().await?;
        Ok(())
    }

    /// Makes every pending item durable, publishes their events, acks them and deletes their
    /// bodies. On error nothing is acked that is not durable; call again to resume.
    pub async fn commit(&mut self) -> Result<Committed, PipelineError> {
        if !self.pending.is_empty() {
            let started = Instant::now();
            let receipts = match self.writer()?.flush().await {
                Ok(r) => r,
                Err(e) => {
                    Metrics::add(&self.metrics.flush_errors_total, 1);
                    return Err(e.into());
                }
            };
            self.metrics.observe_flush(started.elapsed());
            Metrics::add(&self.metrics.flushes_total, 1);
            let durable: HashSet<BlobId> = receipts.iter().map(|r| r.manifest_id).collect();
            let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| durable.contains(&p.manifest_id));
            if !still.is_empty() {
                // Cannot happen (every finished item gets a receipt); keep them, never ack them.
                tracing::error!(count = still.len(), "items without receipt after flush");
            }
            self.pending = still;
            self.pending_bytes = self.pending.iter().map(|p| p.bytes).sum();
            self.oldest = if self.pending.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            self.flushed.extend(done);
        }
        if self.flushed.is_empty() {
            return Ok(Committed::default());
        }
        let stored = now_ms();
        let events: Vec<Event> = self
            .flushed
            .iter()
            .map(|p| {
                let mut e = p.event.clone();
                e.payload = stamp(&e, stored);
                e
            })
            .collect();
        if let Err(e) = self.events.publish(events).await {
            Metrics::add(&self.metrics.flush_errors_total, 1);
            return Err(e.into());
        }
        let mut c = Committed::default();
        let mut bodies = BTreeMap::new();
        for p in std::mem::take(&mut self.flushed) {
            if let Err(e) = p.delivery.acker.ack().await {
                // Durable and announced; a redelivery is a cheap duplicate.
                tracing::warn!(error = %e, "ack failed");
            }
            if p.is_change {
                c.changes += 1;
            } else {
                c.items += 1;
            }
            c.duplicates += usize::from(p.duplicate);
            if let Some(r) = p.body {
                bodies.insert((r.bucket.clone(), r.name.clone()), r);
            }
        }
        Metrics::add(&self.metrics.items_stored_total, c.items as u64);
        Metrics::add(&self.metrics.changes_recorded_total, c.changes as u64);
        Metrics::add(&self.metrics.items_duplicate_total, c.duplicates as u64);
        for r in bodies.into_values() {
            match self.bodies.delete(&r).await {
                Ok(()) => Metrics::add(&self.metrics.bodies_deleted_total, 1),
                Err(e) => tracing::warn!(error = %e, object = %r.name, "deleting body failed"),
            }
        }
        Ok(c)
    }

    /// Extends the ack deadline of every held delivery (while a commit is being retried).
    pub async fn keep_alive(&self) {
        for p in self.pending.iter().chain(&self.flushed) {
            if let Err(e) = p.delivery.acker.progress().await {
                tracing::debug!(error = %e, "progress failed");
            }
        }
    }
}

/// Sets `stored_unix_ms` in an event payload.
fn stamp(e: &Event, stored: i64) -> Bytes {
    if e.subject == SUBJECT_STORED {
        if let Ok(mut m) = ItemStored::decode(e.payload.clone()) {
            m.stored_unix_ms = stored;
            return m.encode_to_vec().into();
        }
    } else if e.subject == SUBJECT_CHANGED
        && let Ok(mut m) = ItemChangeRecorded::decode(e.payload.clone())
    {
        m.stored_unix_ms = stored;
        return m.encode_to_vec().into();
    }
    e.payload.clone()
}

#[cfg(test)]
mod tests;
