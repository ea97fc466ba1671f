//! The pipeline core, with no NATS in it: decode an [`IngestMessage`], feed its body into the
//! repository [`Writer`] on the blocking pool, batch, flush, publish events, and only then
//! settle the deliveries (guarantee 1: nothing is acknowledged before it is durable).
//!
//! Stages of one batch, each retried where it stopped:
//! `handle` (items finished into the writer) → cut (the writer's finished items and sealed
//! packs become a [`Flush`]) → upload packs + index object → publish `ItemStored` /
//! `ItemChangeRecorded` → ack → delete Object Store bodies.
//!
//! Overlap: [`Pipeline::commit_in_background`] runs everything after the cut on a task of its
//! own while the writer takes the next batch, so the CPU-bound writer does not wait for S3 and
//! NATS round trips. At most one cut batch exists at a time (running, or stalled after an
//! error and then retried in the foreground by [`Pipeline::commit`]); a later batch is only
//! cut once the earlier one is settled, because its items may reference chunks stored in the
//! earlier batch's packs (the writer dedupes against them).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mailvault_format::{
    BlobId, ErrorKind, Flush, FormatError, ItemManifest, ItemReceipt, Repository, Writer,
};
use mailvault_proto::events::v1::{EventBatch, ItemChangeRecorded, ItemStored, Quarantined};
use mailvault_proto::ingest::v1::{
    ChangeKind, IngestMessage, ItemChange, ItemEnvelope, ObjectRef, ingest_message, item_envelope,
};
use mailvault_runtime::handoff::Handoff;
use prost::Message as _;
use tokio::io::AsyncReadExt as _;
use tracing::Instrument as _;

use crate::edge::{Bodies, BodyError, BodyReader, Delivery, EdgeError, Event, EventSink};
use crate::metrics::Metrics;

/// Entries per batch message, at most, and about this many payload bytes: a larger commit is
/// announced in several messages, each far below NATS's default 1 MiB payload limit.
use mailvault_proto::events_wire::MAX_BATCH_ENTRIES as EVENTS_PER_MESSAGE;
/// Subjects of the events the aggregator publishes (stream `MAILVAULT_EVENTS`): what a commit
/// made durable, as [`EventBatch`]es, and quarantine records.
pub use mailvault_proto::events_wire::{SUBJECT_BATCH, SUBJECT_QUARANTINED};
const EVENT_BYTES_PER_MESSAGE: usize = 256 << 10;

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

    /// Shortest age of the oldest pending item at which a commit may start early because
    /// nothing more is arriving: a quarter of `max_delay`. Waiting out all of `max_delay` then
    /// only delays the acks (the drain of a backlog ended with an idle `max_delay`), while
    /// committing at once under a trickle would write an index object per message.
    pub fn idle_gap(&self) -> Duration {
        self.max_delay / 4
    }

    /// Whether pending items may be committed now that the source has run dry.
    pub fn idle_due(&self, items: usize, oldest: Option<Instant>, now: Instant) -> bool {
        items > 0 && oldest.is_some_and(|t| now.saturating_duration_since(t) >= self.idle_gap())
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

impl std::ops::AddAssign for Committed {
    fn add_assign(&mut self, o: Committed) {
        self.items += o.items;
        self.changes += o.changes;
        self.duplicates += o.duplicates;
    }
}

struct Pending {
    /// The delivery this entry came in, held by the last finished entry of it (a batch
    /// delivery is acked once, when all its entries are durable); `None` for the others and
    /// for entries of a delivery that was nakked after they were stored.
    delivery: Option<Delivery>,
    manifest_id: BlobId,
    /// Encoded at publish time, when the stored time is known.
    event: EventDraft,
    body: Option<ObjectRef>,
    is_change: bool,
    duplicate: bool,
    bytes: u64,
}

/// Items cut off the writer, and how far their commit got (each stage is retried where it
/// stopped; a republished event is de-duplicated downstream by its `Nats-Msg-Id`).
struct Batch {
    flush: Flush,
    items: Vec<Pending>,
    published: bool,
    /// `aggregator.batch`: child of the delivery's span for a batch of one delivery, linked
    /// to each delivery's span otherwise; its context goes out with the batch's events.
    span: tracing::Span,
}

type Running = tokio::task::JoinHandle<(Batch, Result<Committed, PipelineError>)>;

/// One writer and the deliveries waiting on it.
pub struct Pipeline {
    repo: Repository,
    writer: Option<Writer>,
    cfg: PipelineConfig,
    bodies: Arc<dyn Bodies>,
    events: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    /// Finished into the writer, not cut yet.
    pending: Vec<Pending>,
    pending_bytes: u64,
    oldest: Option<Instant>,
    /// The cut batch committing in the background, and how many deliveries it holds.
    running: Option<(Running, usize)>,
    /// The cut batch whose commit failed: retried (in the foreground) before anything else.
    stalled: Option<Batch>,
    /// Settled by batches since the last report (kept across a failed call, never lost).
    settled: Committed,
    /// The two piece buffers of [`Pipeline::feed_object`], kept between bodies.
    piece_bufs: Vec<Vec<u8>>,
    /// Where written items are offered to an indexer in this process (single-process mode).
    handoff: Option<Arc<Handoff>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("pending", &self.pending.len())
            .field("running", &self.running.as_ref().map(|r| r.1))
            .field("stalled", &self.stalled.as_ref().map(|b| b.items.len()))
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

enum Failure {
    Retryable(String),
    /// Quarantined at the last attempt (`poison_after_attempts`), retried before.
    Permanent(String),
    /// No attempt can ever store it: quarantined at once.
    Poison(String),
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

/// The event announcing a stored delivery (its id is filled in once the writer has it).
enum EventDraft {
    Stored(ItemStored),
    Changed(ItemChangeRecorded),
}

/// One entry of a delivery, decoded and checked: what the writer is to do with it. A single
/// item or change is one entry; an `ItemBatch` has one per item and change.
enum Unit {
    /// The bytes are at hand (inline body, or the record of a change): written together with
    /// the other such entries of a group in one blocking call.
    Write {
        subject: Subject,
        meta: ItemManifest,
        data: Bytes,
        event: EventDraft,
    },
    /// The body is in the Object Store: streamed in piece by piece.
    Object {
        subject: Subject,
        meta: ItemManifest,
        body: ObjectRef,
        event: ItemStored,
    },
    /// No attempt can ever store it: quarantined.
    Reject {
        stage: &'static str,
        subject: Subject,
        cause: String,
    },
}

/// (index of the delivery in its group, index of the entry in its delivery)
type EntryKey = (usize, usize);

/// What became of one entry.
// Nearly every outcome is `Finished`: boxing it would allocate once per item for nothing.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// Finished into the writer.
    Finished(Pending),
    Failed {
        stage: &'static str,
        subject: Subject,
        failure: Failure,
    },
}

/// The messages announcing `items`, stamped with the time they became durable. A message's
/// `Nats-Msg-Id` is a hash of the ids it announces, so a batch published again after a failed
/// publish or ack is de-duplicated downstream (a redelivered item that lands in another batch
/// is not; applying it again is idempotent by manifest id).
fn batch_events(items: &[Pending], stored_unix_ms: i64, traceparent: Option<String>) -> Vec<Event> {
    let seal = |batch: &mut EventBatch, ids: &mut blake3::Hasher, out: &mut Vec<Event>| {
        let b = std::mem::take(batch);
        if b.stored.is_empty() && b.changed.is_empty() {
            return;
        }
        let id = std::mem::take(ids).finalize();
        out.push(Event {
            subject: SUBJECT_BATCH.into(),
            msg_id: format!("batch-{}", &id.to_hex()[..32]),
            payload: b.encode_to_vec().into(),
            traceparent: traceparent.clone(),
        });
    };
    let mut out = Vec::new();
    let mut batch = EventBatch::default();
    let mut ids = blake3::Hasher::new();
    let mut bytes = 0usize;
    for p in items {
        match &p.event {
            EventDraft::Stored(e) => {
                let mut e = e.clone();
                e.stored_unix_ms = stored_unix_ms;
                bytes += e.encoded_len();
                batch.stored.push(e);
            }
            EventDraft::Changed(e) => {
                let mut e = e.clone();
                e.stored_unix_ms = stored_unix_ms;
                bytes += e.encoded_len();
                batch.changed.push(e);
            }
        }
        ids.update(&p.manifest_id.0);
        if batch.stored.len() + batch.changed.len() >= EVENTS_PER_MESSAGE
            || bytes >= EVENT_BYTES_PER_MESSAGE
        {
            seal(&mut batch, &mut ids, &mut out);
            bytes = 0;
        }
    }
    seal(&mut batch, &mut ids, &mut out);
    out
}

fn reject(stage: &'static str, cause: String) -> Vec<Unit> {
    vec![Unit::Reject {
        stage,
        subject: Subject::default(),
        cause,
    }]
}

/// Decodes a delivery into its entries.
fn prepare(d: &mut Delivery) -> Vec<Unit> {
    // Taken, not cloned: the delivery is held until its batch commits, and the inline body
    // sliced from this payload must be freed as soon as the writer has stored it.
    let payload = std::mem::take(&mut d.payload);
    let msg = match IngestMessage::decode(payload) {
        Ok(m) => m,
        // Deterministic: no later attempt decodes it either.
        Err(e) => return reject("decode", format!("undecodable: {e}")),
    };
    match msg.message {
        Some(ingest_message::Message::Item(env)) => vec![prepare_item(env)],
        Some(ingest_message::Message::Change(c)) => vec![prepare_change(c)],
        Some(ingest_message::Message::Batch(b)) if b.items.is_empty() && b.changes.is_empty() => {
            reject("decode", "item batch without entries".into())
        }
        Some(ingest_message::Message::Batch(b)) => b
            .items
            .into_iter()
            .map(prepare_item)
            .chain(b.changes.into_iter().map(prepare_change))
            .collect(),
        // The consumer's subject filter leaves these to their own consumers; one arriving
        // here means the filter is misconfigured, which must be visible, not swallowed.
        Some(
            ingest_message::Message::Quarantine(_) | ingest_message::Message::Reconciliation(_),
        ) => reject(
            "route",
            "collector quarantine/reconciliation record reached the aggregator: check the consumer's subject filter".into(),
        ),
        None => reject(
            "decode",
            "message carries no item and no change (empty or unknown kind)".into(),
        ),
    }
}

fn prepare_item(env: ItemEnvelope) -> Unit {
    let subject = Subject {
        mailbox: env.mailbox.clone(),
        folder: env.folder_path.join("/"),
        item_id: env.item_id.clone(),
    };
    if env.mailbox.is_empty() || env.item_id.is_empty() {
        return Unit::Reject {
            stage: "validate",
            subject,
            cause: "envelope without mailbox or item id".into(),
        };
    }
    let meta = manifest_of(&env);
    let event = ItemStored {
        manifest_id: String::new(),
        mailbox: env.mailbox.clone(),
        item_id: env.item_id.clone(),
        change_key: env.change_key.clone(),
        folder_path: env.folder_path.clone(),
        item_class: env.item_class.clone(),
        size: env.size,
        stored_unix_ms: 0,
    };
    match env.body {
        Some(item_envelope::Body::Object(body)) => Unit::Object {
            subject,
            meta,
            body,
            event,
        },
        Some(item_envelope::Body::Inline(data)) => Unit::Write {
            subject,
            meta,
            data,
            event: EventDraft::Stored(event),
        },
        None => Unit::Write {
            subject,
            meta,
            data: Bytes::new(),
            event: EventDraft::Stored(event),
        },
    }
}

fn prepare_change(c: ItemChange) -> Unit {
    let subject = Subject {
        mailbox: c.mailbox.clone(),
        folder: c.folder_path.join("/"),
        item_id: c.item_id.clone(),
    };
    if c.mailbox.is_empty() || c.item_id.is_empty() {
        return Unit::Reject {
            stage: "validate",
            subject,
            cause: "change without mailbox or item id".into(),
        };
    }
    let (meta, content) = history_record(&c);
    let event = ItemChangeRecorded {
        record_id: String::new(),
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
    Unit::Write {
        subject,
        meta,
        data: content.into(),
        event: EventDraft::Changed(event),
    }
}

/// The quarantine record of entry `entry` of `d` (`None`: the delivery's only entry), named
/// so that a redelivery publishes the same record again, which the stream de-duplicates.
fn quarantine_event(
    d: &Delivery,
    entry: Option<usize>,
    stage: &str,
    s: Subject,
    cause: String,
) -> Event {
    tracing::error!(stage, mailbox = %s.mailbox, item = %s.item_id, %cause, "quarantined");
    let q = Quarantined {
        stage: format!("aggregator.{stage}"),
        mailbox: s.mailbox,
        folder: s.folder,
        item_id: s.item_id,
        cause,
        unix_ms: now_ms(),
    };
    Event {
        subject: SUBJECT_QUARANTINED.into(),
        msg_id: match entry {
            None => format!("aggregator-quarantine-{}", d.id),
            Some(k) => format!("aggregator-quarantine-{}-{k}", d.id),
        },
        payload: q.encode_to_vec().into(),
        // The record belongs to the trace of the message it is about.
        traceparent: d
            .trace
            .as_ref()
            .map(mailvault_runtime::otel::traceparent_of),
    }
}

/// Stores one item whose bytes are at hand; on error the item is aborted (no manifest).
fn write_one(
    w: &mut Writer,
    meta: ItemManifest,
    data: &[u8],
    piece: usize,
) -> Result<ItemReceipt, FormatError> {
    let r = (|| {
        w.begin_item(meta)?;
        if !w.current_is_duplicate() {
            for p in data.chunks(piece) {
                w.write(p)?;
            }
        }
        w.finish_item()
    })();
    if r.is_err() {
        w.abort_item();
    }
    r
}

/// Reads up to `piece` bytes of a body into `buf` (fewer only at its end).
async fn read_piece(
    reader: &mut BodyReader,
    buf: &mut Vec<u8>,
    piece: usize,
) -> std::io::Result<usize> {
    buf.clear();
    // Room for the whole piece up front (a no-op for a reused buffer): growing by doubling
    // would copy the piece several times.
    buf.reserve(piece);
    (&mut *reader).take(piece as u64).read_to_end(buf).await
}

/// Makes a cut batch durable, announces it and acks it, resuming at the stage that failed
/// last time. Runs on the worker or on a task of its own ([`Pipeline::commit_in_background`]).
async fn commit_batch(
    b: &mut Batch,
    events: &dyn EventSink,
    bodies: &dyn Bodies,
    metrics: &Metrics,
) -> Result<Committed, PipelineError> {
    if !b.flush.is_done() {
        let started = Instant::now();
        if let Err(e) = b.flush.run().await {
            Metrics::add(&metrics.flush_errors_total, 1);
            return Err(e.into());
        }
        metrics.observe_flush(started.elapsed());
        Metrics::add(&metrics.flushes_total, 1);
    }
    if b.items.is_empty() {
        return Ok(Committed::default());
    }
    if !b.published {
        let traceparent = mailvault_runtime::otel::traceparent(&b.span);
        if let Err(e) = events
            .publish(batch_events(&b.items, now_ms(), traceparent))
            .await
        {
            Metrics::add(&metrics.flush_errors_total, 1);
            return Err(e.into());
        }
        b.published = true;
    }
    let mut c = Committed::default();
    let mut objects = BTreeMap::new();
    for p in std::mem::take(&mut b.items) {
        if let Some(d) = &p.delivery
            && let Err(e) = d.acker.ack().await
        {
            // Durable and announced; a redelivery is a cheap duplicate.
            tracing::warn!(error = %e, id = %d.id, "ack failed");
        }
        if p.is_change {
            c.changes += 1;
        } else {
            c.items += 1;
        }
        c.duplicates += usize::from(p.duplicate);
        if let Some(r) = p.body {
            objects.insert((r.bucket.clone(), r.name.clone()), r);
        }
    }
    Metrics::add(&metrics.items_stored_total, c.items as u64);
    Metrics::add(&metrics.changes_recorded_total, c.changes as u64);
    Metrics::add(&metrics.items_duplicate_total, c.duplicates as u64);
    for r in objects.into_values() {
        match bodies.delete(&r).await {
            Ok(()) => Metrics::add(&metrics.bodies_deleted_total, 1),
            Err(e) => tracing::warn!(error = %e, object = %r.name, "deleting body failed"),
        }
    }
    Ok(c)
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
            running: None,
            stalled: None,
            settled: Committed::default(),
            piece_bufs: Vec::new(),
            handoff: None,
        })
    }

    /// Offers every item written from an inline body to an indexer in the same process, so it
    /// need not read it back from the repository (see [`Handoff`]).
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Deliveries held (not yet settled), including a batch committing in the background.
    pub fn held(&self) -> usize {
        self.pending.len()
            + self.running.as_ref().map_or(0, |r| r.1)
            + self.stalled.as_ref().map_or(0, |b| b.items.len())
    }

    /// Bytes of finished, not yet durable items.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Whether the batch policy wants a commit now (or a previous commit is unfinished).
    pub fn commit_due(&self, now: Instant) -> bool {
        self.stalled.is_some()
            || self
                .cfg
                .batch
                .due(self.pending.len(), self.pending_bytes, self.oldest, now)
    }

    /// Whether the source having run dry makes a commit worth starting now (see
    /// [`BatchPolicy::idle_gap`]); never while another batch is still committing.
    pub fn idle_commit_due(&self, now: Instant) -> bool {
        self.running.is_none()
            && self
                .cfg
                .batch
                .idle_due(self.pending.len(), self.oldest, now)
    }

    /// When pending items may be committed early once the source runs dry.
    pub fn next_idle_deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.cfg.batch.idle_gap())
    }

    /// Whether a batch is committing in the background.
    pub fn committing(&self) -> bool {
        self.running.is_some()
    }

    /// Whether a commit failed and must be retried before more work is taken.
    pub fn stalled(&self) -> bool {
        self.stalled.is_some()
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
        let mut h = self.handle_many(vec![d]).await?;
        h.pop()
            .ok_or_else(|| PipelineError::WriterLost("no outcome for a delivery".into()))
    }

    /// Takes a group of deliveries as far as the writer, in order; returns one [`Handled`]
    /// each. Consecutive entries whose bytes are at hand (across deliveries, and the entries
    /// of an item batch) go to the writer in one blocking call: a hand-off to the blocking
    /// pool and back costs two thread wake-ups, which per small item cost more than storing it.
    pub async fn handle_many(
        &mut self,
        mut ds: Vec<Delivery>,
    ) -> Result<Vec<Handled>, PipelineError> {
        // Outcomes by delivery, each with its entry's index in the delivery (entries that need
        // no writer come out before those waiting in `run`).
        let mut outcomes: Vec<Vec<(usize, Outcome)>> = Vec::with_capacity(ds.len());
        let mut units = Vec::with_capacity(ds.len());
        for (i, d) in ds.iter_mut().enumerate() {
            let us = prepare(d);
            outcomes.push(Vec::with_capacity(us.len()));
            units.extend(us.into_iter().enumerate().map(|(k, u)| ((i, k), u)));
        }
        let mut run = Vec::new();
        for ((i, k), u) in units {
            match u {
                Unit::Write {
                    subject,
                    meta,
                    data,
                    event,
                } => run.push(((i, k), subject, meta, data, event)),
                Unit::Object {
                    subject,
                    meta,
                    body,
                    event,
                } => {
                    for ((j, kj), o) in self.write_run(std::mem::take(&mut run)).await? {
                        outcomes[j].push((kj, o));
                    }
                    let o = match self.item_from_object(&ds[i], meta, &body).await? {
                        Ok(receipt) => Outcome::Finished(self.finished(
                            EventDraft::Stored(event),
                            &receipt,
                            Some(body),
                        )),
                        Err(failure) => Outcome::Failed {
                            stage: "body",
                            subject,
                            failure,
                        },
                    };
                    outcomes[i].push((k, o));
                }
                Unit::Reject {
                    stage,
                    subject,
                    cause,
                } => outcomes[i].push((
                    k,
                    Outcome::Failed {
                        stage,
                        subject,
                        failure: Failure::Poison(cause),
                    },
                )),
            }
        }
        for ((j, kj), o) in self.write_run(run).await? {
            outcomes[j].push((kj, o));
        }
        if let Err(e) = self.upload_if_needed().await {
            // The items are finished in the writer; the upload is retried by the next commit.
            tracing::warn!(error = %e, "uploading sealed packs failed; retried at commit");
        }
        let mut out = Vec::with_capacity(ds.len());
        for (d, os) in ds.into_iter().zip(outcomes) {
            out.push(self.settle(d, os).await);
        }
        Ok(out)
    }

    /// Writes entries whose bytes are at hand, all in one blocking call; returns each one's
    /// outcome with its key (delivery index, entry index).
    async fn write_run(
        &mut self,
        run: Vec<(EntryKey, Subject, ItemManifest, Bytes, EventDraft)>,
    ) -> Result<Vec<(EntryKey, Outcome)>, PipelineError> {
        if run.is_empty() {
            return Ok(Vec::new());
        }
        let piece = self.cfg.piece_bytes.max(1);
        let mut rest = Vec::with_capacity(run.len());
        let mut jobs = Vec::with_capacity(run.len());
        for (i, subject, meta, data, event) in run {
            // Stored items only: a change record is small and the indexer wants its manifest's
            // properties, which only the repository's copy has.
            let offer = (self.handoff.is_some() && matches!(event, EventDraft::Stored(_)))
                .then(|| (meta.clone(), data.clone()));
            rest.push((i, subject, event, offer));
            jobs.push((meta, data));
        }
        let results = self
            .on_writer(move |w| {
                jobs.into_iter()
                    .map(|(meta, data)| write_one(w, meta, &data, piece))
                    .collect::<Vec<_>>()
            })
            .await?;
        let mut out = Vec::with_capacity(rest.len());
        for ((i, subject, event, offer), r) in rest.into_iter().zip(results) {
            out.push((
                i,
                match r {
                    Ok(receipt) => {
                        if let (Some(h), Some((mut meta, data))) = (&self.handoff, offer) {
                            // The writer fills in the size; the rest is what the manifest holds
                            // apart from the chunk list, which the indexer does not read.
                            meta.size = receipt.size;
                            h.put(receipt.manifest_id, meta, data);
                        }
                        Outcome::Finished(self.finished(event, &receipt, None))
                    }
                    Err(e) => Outcome::Failed {
                        stage: "write",
                        subject,
                        failure: e.into(),
                    },
                },
            ));
        }
        Ok(out)
    }

    /// An entry finished into the writer, to be settled after the next commit.
    fn finished(
        &mut self,
        event: EventDraft,
        receipt: &ItemReceipt,
        body: Option<ObjectRef>,
    ) -> Pending {
        let id = receipt.manifest_id.to_hex();
        let (event, is_change) = match event {
            EventDraft::Stored(mut e) => {
                e.manifest_id = id;
                Metrics::add(&self.metrics.logical_bytes_total, receipt.size);
                Metrics::add(&self.metrics.new_raw_bytes_total, receipt.new_raw_bytes);
                Metrics::add(
                    &self.metrics.new_chunks_total,
                    u64::from(receipt.new_chunks),
                );
                (EventDraft::Stored(e), false)
            }
            EventDraft::Changed(mut e) => {
                e.record_id = id;
                (EventDraft::Changed(e), true)
            }
        };
        Pending {
            event,
            delivery: None,
            manifest_id: receipt.manifest_id,
            body,
            is_change,
            duplicate: receipt.already_stored,
            bytes: receipt.size,
        }
    }

    /// Decides a delivery's fate from its entries' outcomes.
    /// - Any entry worth another attempt: nak the delivery (entries already stored stay
    ///   stored and are committed; the redelivery finds them stored).
    /// - Entries that will never store: a quarantine record each, then the rest is settled
    ///   as usual; a delivery with nothing stored is terminated. A record that cannot be
    ///   published naks the delivery instead: nothing is dropped silently (guarantee 7).
    /// - Otherwise the delivery is acked once every entry is durable (it rides on the last).
    async fn settle(&mut self, d: Delivery, mut outcomes: Vec<(usize, Outcome)>) -> Handled {
        outcomes.sort_by_key(|(k, _)| *k);
        let several = outcomes.len() > 1;
        let mut finished = Vec::with_capacity(outcomes.len());
        let mut poison = Vec::new();
        let mut retry = false;
        for (k, o) in outcomes {
            let (stage, s, failure) = match o {
                Outcome::Finished(p) => {
                    finished.push(p);
                    continue;
                }
                Outcome::Failed {
                    stage,
                    subject,
                    failure,
                } => (stage, subject, failure),
            };
            match failure {
                Failure::Retryable(cause) => {
                    tracing::warn!(stage, mailbox = %s.mailbox, item = %s.item_id, %cause, "retryable; nak");
                    retry = true;
                }
                Failure::Permanent(cause) if d.attempt < self.cfg.poison_after_attempts => {
                    tracing::warn!(stage, attempt = d.attempt, mailbox = %s.mailbox, item = %s.item_id, %cause, "failed; will retry before quarantining");
                    retry = true;
                }
                Failure::Permanent(cause) | Failure::Poison(cause) => {
                    poison.push(quarantine_event(&d, several.then_some(k), stage, s, cause));
                }
            }
        }
        if !retry && !poison.is_empty() {
            let n = poison.len() as u64;
            match self.events.publish(poison).await {
                Ok(()) => Metrics::add(&self.metrics.quarantined_total, n),
                Err(e) => {
                    tracing::warn!(error = %e, "publishing quarantine record failed; nak");
                    retry = true;
                }
            }
        }
        if retry {
            self.nak(&d).await;
            for p in finished {
                self.push_pending(p);
            }
            return Handled::Nakked;
        }
        match finished.last_mut() {
            Some(last) => last.delivery = Some(d),
            None => {
                if let Err(e) = d.acker.term().await {
                    tracing::warn!(error = %e, "term failed; the message will come back and be quarantined again");
                }
                return Handled::Quarantined;
            }
        }
        for p in finished {
            self.push_pending(p);
        }
        Handled::Pending
    }

    /// Streams an Object Store body into the writer, one piece at a time.
    async fn item_from_object(
        &mut self,
        d: &Delivery,
        meta: ItemManifest,
        r: &ObjectRef,
    ) -> Result<Result<ItemReceipt, Failure>, PipelineError> {
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
        // Two pieces in memory: the writer stores one while the next is read, so the
        // network round trips of the Object Store overlap with chunking and compression.
        // The two buffers are kept from one body to the next: a fresh megabyte per buffer
        // and body costs page faults and page clearing on every large item.
        let mut cur = self.piece_bufs.pop().unwrap_or_default();
        let mut next = self.piece_bufs.pop().unwrap_or_default();
        let res = self
            .feed_pieces(d, r, &mut reader, &mut cur, &mut next, piece)
            .await;
        self.piece_bufs.push(cur);
        self.piece_bufs.push(next);
        res
    }

    /// Reads the body into `cur` and `next` alternately, handing each filled piece to the
    /// writer while the following one is read. The buffers are returned in `cur` and `next`
    /// (their contents are garbage afterwards); one lost to a failed writer task is simply
    /// allocated again.
    async fn feed_pieces(
        &mut self,
        d: &Delivery,
        r: &ObjectRef,
        reader: &mut BodyReader,
        cur: &mut Vec<u8>,
        next: &mut Vec<u8>,
        piece: usize,
    ) -> Result<Result<(), Failure>, PipelineError> {
        let mut n = match read_piece(reader, cur, piece).await {
            Ok(n) => n,
            Err(e) => return Ok(Err(Failure::Retryable(format!("reading body: {e}")))),
        };
        let mut total = 0u64;
        let mut last_progress = Instant::now();
        while n > 0 {
            total += n as u64;
            let buf = std::mem::take(cur);
            let write = self.on_writer(move |w| {
                let res = w.write(&buf);
                (buf, res)
            });
            let read = read_piece(reader, next, piece);
            let (written, read) = tokio::join!(write, read);
            let (b, res) = written?;
            *cur = b;
            if let Err(e) = res {
                return Ok(Err(e.into()));
            }
            n = match read {
                Ok(n) => n,
                Err(e) => return Ok(Err(Failure::Retryable(format!("reading body: {e}")))),
            };
            std::mem::swap(cur, next);
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

    fn push_pending(&mut self, p: Pending) {
        self.pending_bytes += p.bytes;
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(p);
    }

    async fn nak(&self, d: &Delivery) {
        Metrics::add(&self.metrics.naks_total, 1);
        if let Err(e) = d.acker.nak(self.cfg.nak_delay).await {
            // The ack deadline redelivers it anyway.
            tracing::warn!(error = %e, "nak failed");
        }
    }

    /// Seals the open pack if it is old enough and uploads what is sealed beyond the bound.
    pub async fn tick(&mut self) -> Result<(), PipelineError> {
        self.writer()?.seal_if_due();
        self.upload_if_needed().await?;
        Ok(())
    }

    /// Cuts the pending items off the writer as a batch (nothing to cut: `None`).
    async fn cut(&mut self) -> Result<Option<Batch>, PipelineError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let flush = self.writer()?.cut()?;
        let durable: HashSet<BlobId> = flush.receipts().iter().map(|r| r.manifest_id).collect();
        let (items, orphans): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| durable.contains(&p.manifest_id));
        self.pending_bytes = 0;
        self.oldest = None;
        if !orphans.is_empty() {
            // Cannot happen (every finished item gets a receipt). Never ack what has none:
            // hand it back so that a redelivery stores it.
            tracing::error!(count = orphans.len(), "items without receipt at cut; nak");
            for d in orphans.iter().filter_map(|p| p.delivery.as_ref()) {
                self.nak(d).await;
            }
        }
        let parents: Vec<_> = items
            .iter()
            .filter_map(|p| p.delivery.as_ref()?.trace.clone())
            .collect();
        let span = tracing::info_span!(
            "aggregator.batch",
            items = items.len(),
            deliveries = items.iter().filter(|p| p.delivery.is_some()).count(),
        );
        mailvault_runtime::otel::connect_batch(&span, &parents);
        Ok(Some(Batch {
            flush,
            items,
            published: false,
            span,
        }))
    }

    /// Settles the batch cut earlier: waits for its background commit, or retries it if it
    /// stalled. On error it stays stalled (nothing of it acked) and is retried next time.
    async fn settle_cut(&mut self) -> Result<(), PipelineError> {
        if let Some((task, _)) = self.running.take() {
            let (b, r) = task
                .await
                .map_err(|e| PipelineError::WriterLost(format!("commit task: {e}")))?;
            match r {
                Ok(c) => self.settled += c,
                Err(e) => {
                    self.stalled = Some(b);
                    return Err(e);
                }
            }
        }
        if let Some(mut b) = self.stalled.take() {
            let span = b.span.clone();
            match commit_batch(&mut b, &*self.events, &*self.bodies, &self.metrics)
                .instrument(span)
                .await
            {
                Ok(c) => self.settled += c,
                Err(e) => {
                    self.stalled = Some(b);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Makes every pending item durable, publishes their events, acks them and deletes their
    /// bodies, waiting for all of it (and for a batch committing in the background first). On
    /// error nothing is acked that is not durable; call again to resume.
    pub async fn commit(&mut self) -> Result<Committed, PipelineError> {
        self.settle_cut().await?;
        if let Some(mut b) = self.cut().await? {
            let span = b.span.clone();
            match commit_batch(&mut b, &*self.events, &*self.bodies, &self.metrics)
                .instrument(span)
                .await
            {
                Ok(c) => self.settled += c,
                Err(e) => {
                    self.stalled = Some(b);
                    return Err(e);
                }
            }
        }
        Ok(std::mem::take(&mut self.settled))
    }

    /// Cuts the pending items off the writer and commits them on a task of their own, so the
    /// writer can take the next batch meanwhile. A batch cut earlier is settled first (waiting
    /// for it if it is still running): one batch at a time, in order. Returns what batches
    /// settled since the last call. On a retryable error, retry with [`Pipeline::commit`].
    pub async fn commit_in_background(&mut self) -> Result<Committed, PipelineError> {
        self.settle_cut().await?;
        if let Some(mut b) = self.cut().await? {
            let held = b.items.len();
            let (events, bodies, metrics) = (
                self.events.clone(),
                self.bodies.clone(),
                self.metrics.clone(),
            );
            let span = b.span.clone();
            let task = tokio::spawn(
                async move {
                    let r = commit_batch(&mut b, &*events, &*bodies, &metrics).await;
                    (b, r)
                }
                .instrument(span),
            );
            self.running = Some((task, held));
        }
        Ok(std::mem::take(&mut self.settled))
    }

    /// Collects the background commit if it has finished; never waits for it.
    pub async fn reap(&mut self) -> Result<Committed, PipelineError> {
        if self.running.as_ref().is_some_and(|r| r.0.is_finished()) {
            self.settle_cut().await?;
        }
        Ok(std::mem::take(&mut self.settled))
    }

    /// Extends the ack deadline of every held delivery (while a commit is being retried).
    pub async fn keep_alive(&self) {
        let stalled = self.stalled.iter().flat_map(|b| &b.items);
        let held = self.pending.iter().chain(stalled);
        for d in held.filter_map(|p| p.delivery.as_ref()) {
            if let Err(e) = d.acker.progress().await {
                tracing::debug!(error = %e, "progress failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
