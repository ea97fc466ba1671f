//! The JetStream edge: a durable pull consumer `mailvault-indexer` on `MAILVAULT_EVENTS`
//! (subjects `mailvault.events.stored` and `mailvault.events.changed`). Per batch: apply every
//! delivery to the index, commit the index, then ack — nothing is acked before it is durable in
//! the index. Deliveries come through [`Source`] so an in-process bus can feed the same loop.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_proto::events::v1::{ItemChangeRecorded, ItemStored};
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::history::ChangeInput;
use crate::stage::{Indexer, Work};

pub const STREAM: &str = "MAILVAULT_EVENTS";
pub const EVENTS_SUBJECTS: &str = "mailvault.events.>";
pub const SUBJECT_STORED: &str = "mailvault.events.stored";
pub const SUBJECT_CHANGED: &str = "mailvault.events.changed";
pub const CONSUMER: &str = "mailvault-indexer";
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
    pub acker: Box<dyn Acker>,
}

/// Where deliveries come from (JetStream, or an in-process bus with the same semantics).
#[async_trait]
pub trait Source: Send {
    /// Up to `max` deliveries; may return fewer (or none) after `wait`.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EdgeError>;
}

/// Counters of a consumer run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeReport {
    pub stored: u64,
    pub changed: u64,
    pub acked: u64,
    pub nakked: u64,
    pub terminated: u64,
    pub commits: u64,
}

#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// Events per index commit at most.
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

enum Outcome {
    Applied,
    Retry,
    Poison,
}

/// Which counter of the report a delivery adds to.
enum Counted {
    Stored,
    Changed,
    Neither,
}

/// Decodes a delivery and loads what applying it takes (reading the repository if needed).
/// `Err` is the outcome when there is nothing to apply.
async fn load(ix: &Indexer, d: &Delivery) -> (Result<Work, Outcome>, Counted) {
    match d.subject.as_str() {
        SUBJECT_STORED => match ItemStored::decode(d.payload.clone()) {
            Ok(e) => (
                ix.load_stored(&e).await.map_err(|e| failed(d, e)),
                Counted::Stored,
            ),
            Err(e) => {
                tracing::error!(subject = %d.subject, error = %e, "undecodable event; terminated");
                (Err(Outcome::Poison), Counted::Neither)
            }
        },
        SUBJECT_CHANGED => match ItemChangeRecorded::decode(d.payload.clone()) {
            Ok(e) => (
                ChangeInput::from_event(&e)
                    .map(Work::Change)
                    .map_err(|e| failed(d, e)),
                Counted::Changed,
            ),
            Err(e) => {
                tracing::error!(subject = %d.subject, error = %e, "undecodable event; terminated");
                (Err(Outcome::Poison), Counted::Neither)
            }
        },
        other => {
            tracing::error!(subject = %other, "event on an unexpected subject; terminated");
            (Err(Outcome::Poison), Counted::Neither)
        }
    }
}

/// Whether a delivery that failed is worth another attempt.
fn failed(d: &Delivery, e: crate::IndexError) -> Outcome {
    if e.is_retryable() && d.attempt < MAX_ATTEMPTS {
        tracing::warn!(error = %e, attempt = d.attempt, "event not applied; redelivery");
        Outcome::Retry
    } else {
        tracing::error!(error = %e, attempt = d.attempt, "event cannot be indexed; terminated");
        Outcome::Poison
    }
}

/// Deliveries loaded at once. Each reads its item from the repository first — over S3 a
/// few round trips — and one at a time left the indexer waiting on the network. Applying is
/// order-independent (an item's record is rebuilt from its whole event set under the writer
/// lock), so overlapping them is safe.
const LOAD_CONCURRENCY: usize = 16;
/// Loaded deliveries applied per blocking call, and such calls at once. Parsing runs outside
/// the writer lock, so the calls overlap. With 2 at once (32 each) the single-process indexer
/// got too small a share of the cores next to the collector and aggregator and lagged behind
/// them (backup 3.1 s instead of 2.1 s on the dev corpus); 4 keeps it level.
const APPLY_GROUP: usize = 16;
const APPLY_GROUPS_AT_ONCE: usize = 4;

/// Applies a batch, commits, then settles every delivery: applied ones are acked only after
/// the commit succeeded; if the commit fails, everything is nakked.
pub async fn handle_batch(
    ix: &Indexer,
    batch: Vec<Delivery>,
    report: &mut ConsumeReport,
) -> Result<(), crate::IndexError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    apply_all(ix, batch, report, &mut outcomes).await;
    commit_and_settle(ix, outcomes, report).await
}

async fn apply_all(
    ix: &Indexer,
    batch: Vec<Delivery>,
    report: &mut ConsumeReport,
    outcomes: &mut Vec<(Delivery, Outcome)>,
) {
    use futures::StreamExt as _;
    let mut applied = futures::stream::iter(batch)
        .map(|d| async move {
            let (loaded, counted) = load(ix, &d).await;
            (d, loaded, counted)
        })
        .buffered(LOAD_CONCURRENCY)
        .chunks(APPLY_GROUP)
        .map(|group| async move {
            let mut work = Vec::with_capacity(group.len());
            let mut rest = Vec::with_capacity(group.len());
            for (d, loaded, counted) in group {
                match loaded {
                    Ok(w) => {
                        work.push(w);
                        rest.push((d, None, counted));
                    }
                    Err(o) => rest.push((d, Some(o), counted)),
                }
            }
            let mut results = ix.apply_all(work).await.into_iter();
            rest.into_iter()
                .map(|(d, o, counted)| {
                    let o = o.unwrap_or_else(|| match results.next() {
                        Some(Ok(())) => Outcome::Applied,
                        Some(Err(e)) => failed(&d, e),
                        None => Outcome::Retry,
                    });
                    (d, o, counted)
                })
                .collect::<Vec<_>>()
        })
        .buffered(APPLY_GROUPS_AT_ONCE);
    while let Some(group) = applied.next().await {
        for (d, o, counted) in group {
            match counted {
                Counted::Stored => report.stored += 1,
                Counted::Changed => report.changed += 1,
                Counted::Neither => {}
            }
            outcomes.push((d, o));
        }
    }
}

/// Settles this many deliveries at once: each JetStream ack is a round trip.
const SETTLE_CONCURRENCY: usize = 64;

async fn commit_and_settle(
    ix: &Indexer,
    outcomes: Vec<(Delivery, Outcome)>,
    report: &mut ConsumeReport,
) -> Result<(), crate::IndexError> {
    let committed = ix.commit().await;
    if committed.is_ok() {
        report.commits += 1;
    }
    let settles = outcomes.into_iter().map(|(d, o)| {
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
            Settle::Term => report.terminated += 1,
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
    let mut report = ConsumeReport::default();
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            () = shutdown.cancelled() => break,
            b = source.next_batch(cfg.batch, cfg.wait) => b,
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
        let mut outcomes = Vec::with_capacity(batch.len());
        apply_all(ix, batch, &mut report, &mut outcomes).await;
        while outcomes.len() < cfg.batch && !shutdown.is_cancelled() {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let more = tokio::select! {
                () = shutdown.cancelled() => break,
                b = source.next_batch(cfg.batch - outcomes.len(), left.min(cfg.idle)) => b,
            };
            match more {
                Ok(b) if !b.is_empty() => apply_all(ix, b, &mut report, &mut outcomes).await,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "fetching events failed; committing what we have");
                    break;
                }
            }
        }
        if let Err(e) = commit_and_settle(ix, outcomes, &mut report).await {
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
    /// Creates (if missing) the events stream and the durable consumer.
    pub async fn new(js: &jetstream::Context) -> Result<JsSource, EdgeError> {
        let s = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![EVENTS_SUBJECTS.into()],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| EdgeError::new("events stream", e))?;
        let consumer = s
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    description: Some("mailvault indexer".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    // Room for a whole commit batch (index.batch ≤ 10 000) in flight.
                    max_ack_pending: 10_000,
                    max_deliver: -1,
                    filter_subjects: vec![SUBJECT_STORED.into(), SUBJECT_CHANGED.into()],
                    ..Default::default()
                },
            )
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
                acker: Box::new(JsAcker(m)),
            });
        }
        Ok(out)
    }
}
