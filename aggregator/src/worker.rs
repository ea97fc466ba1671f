//! The worker loop, independent of where deliveries come from: JetStream ([`crate::nats`]) and
//! the in-process bus ([`crate::bus`]) both run [`run_worker`] over their [`Source`].
//!
//! Loop: start a commit when due (it runs in the background while the writer takes the next
//! batch; a failed one is retried in the foreground, which pauses the pipeline) → pull a batch
//! (waiting at most until the oldest pending item's batch deadline) → hand the deliveries that
//! have arrived to the pipeline as a group → tick. Shutdown: stop pulling → nak what was pulled
//! but not started → commit (flush, publish, ack) under a deadline → what is still unacked is
//! left to redelivery.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::edge::{Delivery, EdgeError};
use crate::pipeline::{Committed, Pipeline, PipelineError};

/// The deliveries of one pull request, as they arrive; ends when the request is complete or
/// expired. An `Err` item ends the batch (logged, not fatal).
pub type Pull = BoxStream<'static, Result<Delivery, EdgeError>>;

/// Where deliveries come from.
#[async_trait]
pub trait Source: Send {
    /// Starts a pull of up to `max_messages` (about `max_bytes`) that ends after `expires`.
    /// Dropping the stream before it ended must not lose anything: what was not yielded yet
    /// is redelivered by the source.
    async fn pull(
        &mut self,
        max_messages: usize,
        max_bytes: usize,
        expires: Duration,
    ) -> Result<Pull, EdgeError>;

    /// How long a shutdown waits for deliveries still on their way to the source when it
    /// hands back what it holds: none for an in-process bus, a moment for a network source.
    fn in_flight_wait(&self) -> Duration {
        Duration::ZERO
    }
}

/// The worker's knobs (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    pub fetch_messages: usize,
    pub fetch_bytes: u64,
    pub progress_every: Duration,
    pub shutdown_deadline: Duration,
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub items: usize,
    pub changes: usize,
    pub duplicates: usize,
    /// Deliveries still unsettled when the shutdown deadline passed (redelivered to others).
    pub abandoned: usize,
}

impl RunReport {
    pub(crate) fn add(&mut self, c: Committed) {
        self.items += c.items;
        self.changes += c.changes;
        self.duplicates += c.duplicates;
    }

    /// Sums the reports of several workers.
    pub fn merge(&mut self, r: RunReport) {
        self.items += r.items;
        self.changes += r.changes;
        self.duplicates += r.duplicates;
        self.abandoned += r.abandoned;
    }
}

/// Commits, retrying retryable failures with back-off (the pipeline pauses meanwhile: an S3
/// outage stalls, it never acks early). Once `shutdown` is cancelled it gives up after
/// `grace` with `Ok(None)`, leaving the unacked deliveries to redelivery.
pub(crate) async fn commit_with_retry(
    p: &mut Pipeline,
    shutdown: &CancellationToken,
    grace: Duration,
    progress_every: Duration,
) -> Result<Option<Committed>, PipelineError> {
    let mut backoff = Duration::from_millis(100);
    let mut last_progress = Instant::now();
    let mut deadline: Option<Instant> = None;
    loop {
        match p.commit().await {
            Ok(c) => return Ok(Some(c)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, held = p.held(), "commit failed; retrying");
                if shutdown.is_cancelled() {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + grace);
                    if Instant::now() + backoff >= d {
                        return Ok(None);
                    }
                }
                if last_progress.elapsed() >= progress_every {
                    p.keep_alive().await;
                    last_progress = Instant::now();
                }
                tokio::select! {
                    () = shutdown.cancelled(), if deadline.is_none() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Shortest pull wait: how long "nothing arrives" must last before the source counts as dry.
const IDLE_PROBE: Duration = Duration::from_millis(20);

/// Deliveries handed to the pipeline at once, at most (those already arrived; a group never
/// waits for more).
const MAX_GROUP: usize = 256;
/// Payload bytes of one group, at most.
const MAX_GROUP_BYTES: usize = 16 << 20;

/// Starts a background commit; if that fails retryably (the previous batch could not be
/// made durable), falls back to committing in the foreground with retries, which pauses the
/// pipeline until the store is back.
async fn start_commit(
    p: &mut Pipeline,
    shutdown: &CancellationToken,
    grace: Duration,
    progress_every: Duration,
) -> Result<Option<Committed>, PipelineError> {
    match p.commit_in_background().await {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, held = p.held(), "commit failed; retrying");
            commit_with_retry(p, shutdown, grace, progress_every).await
        }
        Err(e) => Err(e),
    }
}

/// Collects a finished background commit (never waits for a running one); a failed one is
/// retried in the foreground.
async fn reap(
    p: &mut Pipeline,
    shutdown: &CancellationToken,
    grace: Duration,
    progress_every: Duration,
) -> Result<Option<Committed>, PipelineError> {
    match p.reap().await {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, held = p.held(), "commit failed; retrying");
            commit_with_retry(p, shutdown, grace, progress_every).await
        }
        Err(e) => Err(e),
    }
}

/// Runs one pipeline over `source` until `shutdown`.
pub async fn run_worker<S: Source>(
    mut source: S,
    mut p: Pipeline,
    limits: WorkerLimits,
    shutdown: CancellationToken,
) -> Result<RunReport, PipelineError> {
    let mut report = RunReport::default();
    let progress_every = limits.progress_every;
    let grace = limits.shutdown_deadline;
    while !shutdown.is_cancelled() {
        if p.backlogged() || p.stalled() {
            // During an outage this blocks (stops pulling) until S3 is back or shutdown.
            if let Some(c) = commit_with_retry(&mut p, &shutdown, grace, progress_every).await? {
                report.add(c);
            }
        } else if p.commit_due(Instant::now()) {
            if let Some(c) = start_commit(&mut p, &shutdown, grace, progress_every).await? {
                report.add(c);
            }
        } else if let Some(c) = reap(&mut p, &shutdown, grace, progress_every).await? {
            report.add(c);
        }
        let wait = if p.committing() {
            // Come back soon to acknowledge the batch committing in the background.
            Duration::from_millis(50)
        } else {
            // Until the pending items may be committed early if nothing arrives meanwhile
            // (or, once that age has passed, a short probe of whether anything still does).
            let now = Instant::now();
            let until = |d: Instant| d.saturating_duration_since(now);
            p.next_deadline()
                .map_or(Duration::from_secs(1), until)
                .min(p.next_idle_deadline().map_or(Duration::MAX, until))
                .clamp(IDLE_PROBE, Duration::from_secs(1))
        };
        let batch = source
            .pull(limits.fetch_messages, limits.fetch_bytes as usize, wait)
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pull request failed");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let mut ended = false;
        let mut received = 0usize;
        while !ended {
            // Both sources are cancel-safe (a message is taken only when yielded); what the
            // pull still holds is handed back below, so shutdown need not wait out `expires`.
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                m = batch.next() => m,
            };
            let mut group = match next {
                Some(Ok(d)) => vec![d],
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull batch ended");
                    break;
                }
                None => break,
            };
            received += 1;
            // Whatever else has arrived already joins the group (one writer hand-off for all).
            let mut bytes = group[0].payload.len();
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match batch.next().now_or_never() {
                    Some(Some(Ok(d))) => {
                        bytes += d.payload.len();
                        received += 1;
                        group.push(d);
                    }
                    Some(Some(Err(e))) => {
                        tracing::debug!(error = %e, "pull batch ended");
                        ended = true;
                        break;
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if shutdown.is_cancelled() {
                // Pulled but not started: hand it straight back to the other replicas.
                for d in group {
                    if let Err(e) = d.acker.nak(Duration::ZERO).await {
                        tracing::debug!(error = %e, "nak at shutdown");
                    }
                }
                continue;
            }
            p.handle_many(group).await?;
            if p.backlogged() {
                if let Some(c) = commit_with_retry(&mut p, &shutdown, grace, progress_every).await?
                {
                    report.add(c);
                }
            } else if p.commit_due(Instant::now()) {
                // A large pull need not finish before its first items are committed.
                if let Some(c) = start_commit(&mut p, &shutdown, grace, progress_every).await? {
                    report.add(c);
                }
            } else if let Some(c) = reap(&mut p, &shutdown, grace, progress_every).await? {
                report.add(c);
            }
        }
        if shutdown.is_cancelled() {
            // What the server already sent to this pull (some of it may still be in the
            // socket) would be dropped with it and come back only after `ack_wait`: take it
            // and flush it with the rest at the final commit below.
            let wait = source.in_flight_wait();
            let mut late = Vec::new();
            loop {
                let next = if wait.is_zero() {
                    batch.next().now_or_never().flatten()
                } else {
                    tokio::time::timeout(wait, batch.next())
                        .await
                        .ok()
                        .flatten()
                };
                let Some(Ok(d)) = next else { break };
                late.push(d);
            }
            if !late.is_empty() {
                p.handle_many(late).await?;
            }
        }
        if received == 0 && !shutdown.is_cancelled() && p.idle_commit_due(Instant::now()) {
            // The source ran dry: commit what is pending now instead of waiting out
            // `max_delay` with nothing else to do (the acks would only come later).
            if let Some(c) = start_commit(&mut p, &shutdown, grace, progress_every).await? {
                report.add(c);
            }
        }
        if let Err(e) = p.tick().await {
            if !e.is_retryable() {
                return Err(e);
            }
            tracing::warn!(error = %e, "uploading sealed packs failed; retried at commit");
        }
    }
    // Shutdown: hand back what the source has buffered but not yielded yet (a continuous
    // pull holds some), so the other replicas get it now rather than after `ack_wait`. What
    // a server delivered just before may still be on its way (on a loaded machine, several
    // milliseconds): each round waits up to the source's `in_flight_wait` for it.
    let wait = source.in_flight_wait();
    for _ in 0..4 {
        let Ok(mut rest) = source
            .pull(limits.fetch_messages, limits.fetch_bytes as usize, wait)
            .await
        else {
            break;
        };
        let mut handed_back = 0;
        loop {
            let next = if wait.is_zero() {
                rest.next().now_or_never().flatten()
            } else {
                rest.next().await
            };
            let Some(Ok(d)) = next else { break };
            handed_back += 1;
            if let Err(e) = d.acker.nak(Duration::ZERO).await {
                tracing::debug!(error = %e, "nak at shutdown");
            }
        }
        if handed_back == 0 {
            break;
        }
    }
    // Everything handled is flushed, published and acked — or left to redelivery.
    match commit_with_retry(&mut p, &shutdown, grace, progress_every).await? {
        Some(c) => report.add(c),
        None => report.abandoned = p.held(),
    }
    Ok(report)
}
