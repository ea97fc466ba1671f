//! The JetStream edge: a durable pull consumer `mailvault-indexer` on `MAILVAULT_EVENTS`
//! (subject `mailvault.events.batch`, and the single-event subjects `mailvault.events.stored`
//! and `mailvault.events.changed` of earlier aggregators). Per batch: apply every entry of
//! every delivery to the index, commit the index, then ack — nothing is acked before it is
//! durable in the index. Deliveries come through [`Source`] so an in-process bus can feed the
//! same loop.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_proto::events::v1::{EventBatch, ItemChangeRecorded, ItemStored};
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::history::ChangeInput;
use crate::metrics::Metrics;
use crate::stage::{Indexer, Work};

/// `SUBJECT_BATCH`: what the aggregator publishes, an `EventBatch` per commit (or several).
/// `SUBJECT_STORED` / `SUBJECT_CHANGED`: one event per message, as aggregators published
/// before batches; still applied, so events already in the stream when the aggregators are
/// upgraded are not lost.
pub use mailvault_proto::events_wire::{
    STREAM, STREAM_SUBJECTS as EVENTS_SUBJECTS, SUBJECT_BATCH, SUBJECT_CHANGED, SUBJECT_STORED,
};
/// Every subject the indexer consumes.
pub const SUBJECTS: [&str; 3] = [SUBJECT_BATCH, SUBJECT_STORED, SUBJECT_CHANGED];
pub use mailvault_proto::events_wire::INDEXER_CONSUMER as CONSUMER;
/// Redelivery delay for a delivery that failed for a retryable reason.
const NAK_DELAY: Duration = Duration::from_secs(5);
/// A delivery failing permanently is terminated at this attempt (with an error log).
const MAX_ATTEMPTS: u64 = 5;

/// A failure talking to the bus. Worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct EdgeError {
    pub what: String,
    pub cause: String,
}

impl EdgeError {
    pub fn new(what: &str, cause: impl std::fmt::Display) -> Self {
        EdgeError {
            what: what.to_owned(),
            cause: cause.to_string(),
        }
    }
}

/// How one delivery is settled.
#[async_trait]
pub trait Acker: Send + Sync + std::fmt::Debug {
    async fn ack(&self) -> Result<(), EdgeError>;
    async fn nak(&self, delay: Duration) -> Result<(), EdgeError>;
    async fn term(&self) -> Result<(), EdgeError>;
}

/// One event message.
#[derive(Debug)]
pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    /// 1 on first delivery.
    pub attempt: u64,
    /// The span that published it (the aggregator's batch, from its `traceparent` header).
    pub trace: Option<mailvault_runtime::otel::SpanContext>,
    pub acker: Box<dyn Acker>,
}

/// Where deliveries come from (JetStream, or an in-process bus with the same semantics).
#[async_trait]
pub trait Source: Send {
    /// Up to `max` deliveries; may return fewer (or none) after `wait`.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EdgeError>;
}

/// Counters of a consumer run: `stored`, `changed` and `skipped` count entries (a batch
/// message holds many), `acked`, `nakked` and `terminated` count deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeReport {
    pub stored: u64,
    pub changed: u64,
    pub acked: u64,
    pub nakked: u64,
    pub terminated: u64,
    pub commits: u64,
    /// Entries of batch messages that can never be indexed: logged with their item and left
    /// out, while the rest of their message is acked (`reindex` rebuilds from the repository).
    pub skipped: u64,
}

#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// Entries (events) per index commit, about: deliveries are fetched to fill it, so a
    /// commit may exceed it by less than one batch message.
    pub batch: usize,
    /// How long events are gathered into one commit after the first one arrived.
    pub wait: Duration,
    /// Commit before `wait` once no event arrived for this long.
    pub idle: Duration,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        ConsumeConfig {
            batch: 2048,
            wait: Duration::from_secs(1),
            idle: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Retry,
    Poison,
}

/// Which counter of the report an entry adds to.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Stored,
    Changed,
}

/// One thing to index: an entry of an [`EventBatch`], or a whole single-event delivery.
enum Entry {
    Stored(ItemStored),
    Changed(ItemChangeRecorded),
}

/// The entries of a delivery; `None` if it can never be applied (undecodable, or on a subject
/// this consumer does not know), which is logged here.
fn entries(d: &Delivery) -> Option<Vec<Entry>> {
    let decoded = match d.subject.as_str() {
        SUBJECT_BATCH => EventBatch::decode(d.payload.clone()).map(|b| {
            let mut out = Vec::with_capacity(b.stored.len() + b.changed.len());
            out.extend(b.stored.into_iter().map(Entry::Stored));
            out.extend(b.changed.into_iter().map(Entry::Changed));
            out
        }),
        SUBJECT_STORED => ItemStored::decode(d.payload.clone()).map(|e| vec![Entry::Stored(e)]),
        SUBJECT_CHANGED => {
            ItemChangeRecorded::decode(d.payload.clone()).map(|e| vec![Entry::Changed(e)])
        }
        other => {
            tracing::error!(subject = %other, "event on an unexpected subject; terminated");
            return None;
        }
    };
    match decoded {
        Ok(es) => Some(es),
        Err(e) => {
            tracing::error!(subject = %d.subject, error = %e, "undecodable event; terminated");
            None
        }
    }
}

/// Loads what applying an entry takes (reading the repository if needed). `Err` is the
/// outcome when there is nothing to apply.
async fn load(ix: &Indexer, e: Entry, attempt: u64) -> (Result<Work, Outcome>, Counted) {
    match e {
        Entry::Stored(e) => (
            ix.load_stored(&e)
                .await
                .map_err(|err| failed(attempt, Some((&e.mailbox, &e.item_id)), err)),
            Counted::Stored,
        ),
        Entry::Changed(e) => (
            ChangeInput::from_event(&e)
                .map(Work::Change)
                .map_err(|err| failed(attempt, Some((&e.mailbox, &e.item_id)), err)),
            Counted::Changed,
        ),
    }
}

/// Whether an entry that failed is worth another attempt of its delivery. `who` is the
/// entry's mailbox and item id where the error does not name them.
fn failed(attempt: u64, who: Option<(&str, &str)>, e: crate::IndexError) -> Outcome {
    let (mailbox, item_id) = who.unwrap_or_default();
    if e.is_retryable() && attempt < MAX_ATTEMPTS {
        tracing::warn!(error = %e, attempt, %mailbox, %item_id, "event not applied; redelivery");
        Outcome::Retry
    } else {
        tracing::error!(error = %e, attempt, %mailbox, %item_id, "event cannot be indexed");
        Outcome::Poison
    }
}

/// Entries loaded at once. Each reads its item from the repository first — over S3 a few
/// round trips — and one at a time left the indexer waiting on the network. Applying is
/// order-independent (an item's record is rebuilt from its whole event set under the writer
/// lock), so overlapping them is safe.
const LOAD_CONCURRENCY: usize = 16;
/// Loaded entries applied per blocking call, and such calls at once. Parsing runs outside
/// the writer lock, so the calls overlap. With 2 at once (32 each) the single-process indexer
/// got too small a share of the cores next to the collector and aggregator and lagged behind
/// them (backup 3.1 s instead of 2.1 s on the dev corpus); 4 keeps it level.
const APPLY_GROUP: usize = 16;
const APPLY_GROUPS_AT_ONCE: usize = 4;
/// Deliveries to fetch for about `entries` more entries, so that a commit holds about
/// `ConsumeConfig::batch` of them.
fn deliveries_for(entries: usize) -> usize {
    entries
        .div_ceil(mailvault_proto::events_wire::MAX_BATCH_ENTRIES)
        .max(1)
}

/// A delivery and how applying its entries went.
struct Slot {
    d: Delivery,
    outcome: Outcome,
    /// A batch of entries: one that can never be indexed is skipped (logged) and the rest
    /// acked; a single event that cannot be indexed is terminated, as before batches.
    batch: bool,
}

/// Applies a batch, commits, then settles every delivery: applied ones are acked only after
/// the commit succeeded; if the commit fails, everything is nakked.
pub async fn handle_batch(
    ix: &Indexer,
    batch: Vec<Delivery>,
    report: &mut ConsumeReport,
) -> Result<(), crate::IndexError> {
    let mut slots = Vec::with_capacity(batch.len());
    apply_all(ix, batch, report, &mut slots).await;
    commit_and_settle(ix, slots, report).await
}

/// Applies every entry of `batch` and appends its deliveries to `slots`; returns the number
/// of entries.
async fn apply_all(
    ix: &Indexer,
    batch: Vec<Delivery>,
    report: &mut ConsumeReport,
    slots: &mut Vec<Slot>,
) -> usize {
    use futures::StreamExt as _;
    let mut work = Vec::new();
    for d in batch {
        let idx = slots.len();
        let batch = d.subject == SUBJECT_BATCH;
        match entries(&d) {
            Some(es) => {
                work.extend(es.into_iter().map(|e| (idx, d.attempt, e)));
                slots.push(Slot {
                    d,
                    outcome: Outcome::Applied,
                    batch,
                });
            }
            None => slots.push(Slot {
                d,
                outcome: Outcome::Poison,
                batch,
            }),
        }
    }
    let n = work.len();
    let mut applied = futures::stream::iter(work)
        .map(|(idx, attempt, e)| async move {
            let (loaded, counted) = load(ix, e, attempt).await;
            (idx, attempt, loaded, counted)
        })
        .buffered(LOAD_CONCURRENCY)
        .chunks(APPLY_GROUP)
        .map(|group| async move {
            let mut work = Vec::with_capacity(group.len());
            let mut rest = Vec::with_capacity(group.len());
            for (idx, attempt, loaded, counted) in group {
                match loaded {
                    Ok(w) => {
                        work.push(w);
                        rest.push((idx, attempt, None, counted));
                    }
                    Err(o) => rest.push((idx, attempt, Some(o), counted)),
                }
            }
            let mut results = ix.apply_all(work).await.into_iter();
            rest.into_iter()
                .map(|(idx, attempt, o, counted)| {
                    let o = o.unwrap_or_else(|| match results.next() {
                        Some(Ok(())) => Outcome::Applied,
                        Some(Err(e)) => failed(attempt, None, e),
                        None => Outcome::Retry,
                    });
                    (idx, o, counted)
                })
                .collect::<Vec<_>>()
        })
        .buffered(APPLY_GROUPS_AT_ONCE);
    while let Some(group) = applied.next().await {
        for (idx, o, counted) in group {
            match counted {
                Counted::Stored => report.stored += 1,
                Counted::Changed => report.changed += 1,
            }
            let m = &ix.metrics;
            match (o, counted) {
                (Outcome::Applied, Counted::Stored) => Metrics::add(&m.events_stored_applied, 1),
                (Outcome::Applied, Counted::Changed) => Metrics::add(&m.events_changed_applied, 1),
                (Outcome::Retry, _) => Metrics::add(&m.events_retried, 1),
                (Outcome::Poison, _) => {}
            }
            let slot = &mut slots[idx];
            match (o, slot.batch) {
                (Outcome::Applied, _) => {}
                (Outcome::Retry, _) => {
                    if slot.outcome == Outcome::Applied {
                        slot.outcome = Outcome::Retry;
                    }
                }
                (Outcome::Poison, true) => {
                    report.skipped += 1;
                    Metrics::add(&ix.metrics.events_skipped, 1);
                }
                (Outcome::Poison, false) => slot.outcome = Outcome::Poison,
            }
        }
    }
    n
}

/// Settles this many deliveries at once: each JetStream ack is a round trip.
const SETTLE_CONCURRENCY: usize = 64;

async fn commit_and_settle(
    ix: &Indexer,
    slots: Vec<Slot>,
    report: &mut ConsumeReport,
) -> Result<(), crate::IndexError> {
    use tracing::Instrument as _;
    // One span per index commit: the child of the one event message it commits, or linked to
    // every message's span (the aggregator batches that announced them).
    let parents: Vec<_> = slots.iter().filter_map(|s| s.d.trace.clone()).collect();
    let span = tracing::info_span!("indexer.commit", deliveries = slots.len());
    mailvault_runtime::otel::connect_batch(&span, &parents);
    commit_and_settle_in(ix, slots, report)
        .instrument(span)
        .await
}

async fn commit_and_settle_in(
    ix: &Indexer,
    slots: Vec<Slot>,
    report: &mut ConsumeReport,
) -> Result<(), crate::IndexError> {
    let started = std::time::Instant::now();
    let committed = ix.commit().await;
    if committed.is_ok() {
        report.commits += 1;
        ix.metrics.observe_commit(started.elapsed());
    } else {
        Metrics::add(&ix.metrics.commit_errors, 1);
    }
    let settles = slots.into_iter().map(|Slot { d, outcome: o, .. }| {
        let kind = match (&committed, o) {
            (Ok(()), Outcome::Applied) => Settle::Ack,
            (_, Outcome::Poison) => Settle::Term,
            _ => Settle::Nak,
        };
        async move {
            let r = match kind {
                Settle::Ack => d.acker.ack().await,
                Settle::Term => d.acker.term().await,
                Settle::Nak => d.acker.nak(NAK_DELAY).await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "settling a delivery failed; it will be redelivered");
            }
            kind
        }
    });
    let kinds: Vec<Settle> = futures::stream::iter(settles)
        .buffer_unordered(SETTLE_CONCURRENCY)
        .collect()
        .await;
    for k in kinds {
        match k {
            Settle::Ack => report.acked += 1,
            Settle::Term => {
                report.terminated += 1;
                Metrics::add(&ix.metrics.deliveries_terminated, 1);
            }
            Settle::Nak => report.nakked += 1,
        }
    }
    committed
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Term,
    Nak,
}

/// Runs until `shutdown`. Events are gathered for up to `cfg.wait` after the first one (or
/// until `cfg.batch` of them, or until none came for `cfg.idle`) and committed together: one
/// index commit per batch, not per pull, however the events trickle in. `progress` (if given) receives the report after
/// every commit.
pub async fn run(
    ix: &Indexer,
    source: &mut dyn Source,
    cfg: &ConsumeConfig,
    shutdown: CancellationToken,
    progress: Option<watch::Sender<ConsumeReport>>,
) -> ConsumeReport {
    run_until_drained(
        ix,
        source,
        cfg,
        shutdown,
        CancellationToken::new(),
        progress,
    )
    .await
}

/// [`run`] for a producer that ends: once `input_done` is cancelled no more events will be
/// published, so a commit no longer waits `cfg.idle` for more (a single-process pass ended
/// with that idle wait on both cores); it commits as soon as the stream has nothing left.
pub async fn run_until_drained(
    ix: &Indexer,
    source: &mut dyn Source,
    cfg: &ConsumeConfig,
    shutdown: CancellationToken,
    input_done: CancellationToken,
    progress: Option<watch::Sender<ConsumeReport>>,
) -> ConsumeReport {
    let mut report = ConsumeReport::default();
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            () = shutdown.cancelled() => break,
            b = source.next_batch(deliveries_for(cfg.batch), cfg.wait) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetching events failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let until = tokio::time::Instant::now() + cfg.wait;
        let mut slots = Vec::with_capacity(batch.len());
        let mut entries = apply_all(ix, batch, &mut report, &mut slots).await;
        while entries < cfg.batch && !shutdown.is_cancelled() {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let idle = if input_done.is_cancelled() {
                Duration::ZERO
            } else {
                left.min(cfg.idle)
            };
            let more = tokio::select! {
                () = shutdown.cancelled() => break,
                // The producer finished while we waited: look again without waiting.
                () = input_done.cancelled(), if !idle.is_zero() => continue,
                b = source.next_batch(deliveries_for(cfg.batch - entries), idle) => b,
            };
            match more {
                Ok(b) if !b.is_empty() => {
                    entries += apply_all(ix, b, &mut report, &mut slots).await
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "fetching events failed; committing what we have");
                    break;
                }
            }
        }
        if let Err(e) = commit_and_settle(ix, slots, &mut report).await {
            tracing::error!(error = %e, "index commit failed; batch nakked");
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if let Some(p) = &progress {
            p.send_replace(report);
        }
    }
    report
}

#[derive(Debug)]
struct JsAcker(jetstream::Message);

#[async_trait]
impl Acker for JsAcker {
    async fn ack(&self) -> Result<(), EdgeError> {
        // Double ack: returns once the server recorded it.
        self.0
            .double_ack()
            .await
            .map_err(|e| EdgeError::new("ack", e))
    }
    async fn nak(&self, delay: Duration) -> Result<(), EdgeError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| EdgeError::new("nak", e))
    }
    async fn term(&self) -> Result<(), EdgeError> {
        self.0
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| EdgeError::new("term", e))
    }
}

/// The durable pull consumer on JetStream.
#[derive(Debug)]
pub struct JsSource {
    consumer: consumer::Consumer<consumer::pull::Config>,
}

impl JsSource {
    /// The durable consumer, e.g. to watch its backlog.
    pub fn consumer(&self) -> consumer::Consumer<consumer::pull::Config> {
        self.consumer.clone()
    }

    /// Creates (if missing, with `replicas` copies) the events stream, and the durable
    /// consumer.
    pub async fn new(js: &jetstream::Context, replicas: usize) -> Result<JsSource, EdgeError> {
        let s = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![EVENTS_SUBJECTS.into()],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| EdgeError::new("events stream", e))?;
        // Create or update: an indexer consumer made before event batches filtered only the
        // single-event subjects, and would never receive a batch.
        let consumer = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                description: Some("mailvault indexer".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                // Room for a whole commit batch (index.batch ≤ 10 000) in flight.
                max_ack_pending: 10_000,
                max_deliver: -1,
                filter_subjects: SUBJECTS.iter().map(|&s| s.into()).collect(),
                ..Default::default()
            })
            .await
            .map_err(|e| EdgeError::new("consumer", e))?;
        Ok(JsSource { consumer })
    }
}

#[async_trait]
impl Source for JsSource {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EdgeError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| EdgeError::new("pull", e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "pull batch ended");
                    break;
                }
            };
            let attempt = m.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
            out.push(Delivery {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                attempt,
                trace: mailvault_runtime::otel::remote_context(m.headers.as_ref()),
                acker: Box::new(JsAcker(m)),
            });
        }
        Ok(out)
    }
}
