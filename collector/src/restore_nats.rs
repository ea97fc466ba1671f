//! The NATS edge of restore jobs (docs/wire.md, "Restore jobs"): a durable pull consumer
//! `mailvault-restore-<source>` on `mailvault.restore.jobs.<source>` (stream
//! `MAILVAULT_RESTORE`), bodies over the inline limit from the Object Store bucket
//! `mailvault-restore-bodies`, one [`RestoreResult`] per job message published (JetStream,
//! `Nats-Msg-Id` = `restore-result-<job>-<seq>`) to the item's reply subject. A job message is
//! acked only after its result is stored in JetStream; then its body object is deleted.
//!
//! Names come from [`mailvault_proto::restore_wire`], shared with the sending side.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, object_store, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_proto::restore::v1::{Outcome, RestoreItem, RestoreResult, restore_item};
use mailvault_proto::restore_wire;
use prost::Message as _;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::ews::EwsWrite;
use crate::restore::{ItemLabel, Restorer};

/// The most memory a body's claimed size reserves up front; larger bodies grow as they are
/// read (a job that claims 1 TiB must not make the collector allocate it).
const CLAIMED_SIZE_GUESS_MAX: usize = 8 << 20;

/// Settings of the restore edge.
#[derive(Debug, Clone)]
pub struct RestoreEdgeConfig {
    /// The collector's source name: it serves `mailvault.restore.jobs.<source>`.
    pub source: String,
    /// Redelivery after this long without an ack or progress.
    pub ack_wait: Duration,
    /// `Progress` is sent this often while one item is being restored.
    pub progress_every: Duration,
    /// A body that cannot be read from the Object Store is retried (nak with delay) until this
    /// delivery attempt; then the item is reported `FAILED`.
    pub max_body_attempts: u64,
    /// Delay of a nak (body unreadable, result not publishable).
    pub retry_delay: Duration,
    pub duplicate_window: Duration,
    /// Copies of the restore stream and body bucket when this creates them.
    pub replicas: usize,
}

impl RestoreEdgeConfig {
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            ack_wait: Duration::from_secs(300),
            progress_every: Duration::from_secs(20),
            max_body_attempts: 5,
            retry_delay: Duration::from_secs(2),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// A NATS-side failure of the restore edge (not of an item: those are results).
#[derive(Debug, thiserror::Error)]
#[error("restore edge (source {source_name}): {what}: {cause}")]
pub struct RestoreEdgeError {
    pub source_name: String,
    pub what: &'static str,
    pub cause: String,
}

/// What [`RestoreService::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Results stored, by outcome name (`OUTCOME_CREATED`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// Undecodable job messages (terminated, logged).
    pub poison: u64,
    /// Deliveries handed back for a retry (body unreadable, result not publishable).
    pub retried: u64,
}

impl RestoreStats {
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes.get(o.as_str_name()).copied().unwrap_or(0)
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The result was stored and the job message acked.
    Done(Outcome),
    /// Handed back (nak with delay) for another attempt.
    Retry,
    /// Undecodable: terminated.
    Poison,
}

/// Creates the restore stream if missing (idempotent; the sender may call it too).
pub async fn ensure_restore_stream(
    js: &jetstream::Context,
    duplicate_window: Duration,
    replicas: usize,
) -> Result<stream::Stream, async_nats::jetstream::context::CreateStreamError> {
    js.get_or_create_stream(stream::Config {
        name: restore_wire::STREAM.into(),
        subjects: vec![restore_wire::STREAM_SUBJECTS.into()],
        storage: stream::StorageType::File,
        duplicate_window,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
}

/// Opens (creating if missing) the restore body bucket.
pub async fn restore_body_store(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<object_store::ObjectStore, String> {
    match js.get_object_store(restore_wire::BODY_BUCKET).await {
        Ok(o) => Ok(o),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: restore_wire::BODY_BUCKET.into(),
                description: Some("mailvault restore bodies over the inline limit".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Serves restore jobs for one source.
pub struct RestoreService<E: ?Sized> {
    js: jetstream::Context,
    consumer: consumer::Consumer<consumer::pull::Config>,
    objects: object_store::ObjectStore,
    restorer: Arc<Restorer<E>>,
    cfg: RestoreEdgeConfig,
}

impl<E: ?Sized> std::fmt::Debug for RestoreService<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreService")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

enum BodyError {
    /// Worth another delivery (Object Store unavailable, …).
    Retry(String),
    /// Will never work (wrong bucket, no body).
    Permanent(String),
}

impl<E: EwsWrite + ?Sized> RestoreService<E> {
    /// Creates (idempotently) the stream, the body bucket and the durable consumer.
    pub async fn new(
        client: async_nats::Client,
        cfg: RestoreEdgeConfig,
        restorer: Arc<Restorer<E>>,
    ) -> Result<Self, RestoreEdgeError> {
        let err = |what, cause: String| RestoreEdgeError {
            source_name: cfg.source.clone(),
            what,
            cause,
        };
        if cfg.source.is_empty() || cfg.source.contains(['.', '*', '>', ' ']) {
            return Err(err(
                "config",
                format!("source {:?} is not a NATS subject token", cfg.source),
            ));
        }
        let js = jetstream::new(client);
        let stream = ensure_restore_stream(&js, cfg.duplicate_window, cfg.replicas)
            .await
            .map_err(|e| err("creating the restore stream", e.to_string()))?;
        let objects = restore_body_store(&js, cfg.replicas)
            .await
            .map_err(|e| err("opening the restore body bucket", e))?;
        let name = restore_wire::consumer_name(&cfg.source);
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("mailvault collector {} restore jobs", cfg.source)),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: cfg.ack_wait,
                    max_deliver: -1,
                    filter_subject: restore_wire::jobs_subject(&cfg.source),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err("creating the restore consumer", e.to_string()))?;
        Ok(Self {
            js,
            consumer,
            objects,
            restorer,
            cfg,
        })
    }

    fn err(&self, what: &'static str, cause: impl std::fmt::Display) -> RestoreEdgeError {
        RestoreEdgeError {
            source_name: self.cfg.source.clone(),
            what,
            cause: cause.to_string(),
        }
    }

    /// Serves jobs, one item at a time, until `shutdown` becomes true. The item in progress is
    /// finished; pulled-but-unstarted ones are handed back.
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RestoreStats, RestoreEdgeError> {
        let mut stats = RestoreStats::default();
        info!(source = %self.cfg.source, "serving restore jobs");
        while !*shutdown.borrow() {
            let batch = self
                .consumer
                .batch()
                .max_messages(16)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "restore pull request failed");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|s| *s), if !*shutdown.borrow() => continue,
                    m = batch.next() => m,
                };
                let Some(Ok(m)) = next else { break };
                if *shutdown.borrow() {
                    if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
                        debug!(error = %e, "nak at shutdown");
                    }
                    continue;
                }
                match self.handle(m).await {
                    Ok(Handled::Done(o)) => {
                        *stats
                            .outcomes
                            .entry(o.as_str_name().to_owned())
                            .or_default() += 1;
                    }
                    Ok(Handled::Retry) => stats.retried += 1,
                    Ok(Handled::Poison) => stats.poison += 1,
                    Err(e) => {
                        warn!(error = %e, "restore delivery left for redelivery");
                        stats.retried += 1;
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Handles one job message: body, restore, result published, ack, body deleted.
    pub async fn handle(&self, m: jetstream::Message) -> Result<Handled, RestoreEdgeError> {
        let attempt = m.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
        let item = match RestoreItem::decode(m.payload.clone()) {
            Ok(i) => i,
            Err(e) => {
                error!(subject = %m.subject, error = %e, "undecodable restore job message; terminated");
                m.ack_with(AckKind::Term)
                    .await
                    .map_err(|e| self.err("terminating a poison message", e))?;
                return Ok(Handled::Poison);
            }
        };
        let label = ItemLabel::of(&item);
        let result = match self.body(&item).await {
            Ok(body) => {
                let fut = self.restorer.apply(&item, body);
                tokio::pin!(fut);
                let mut tick = tokio::time::interval(self.cfg.progress_every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        r = &mut fut => break r,
                        _ = tick.tick() => {
                            if let Err(e) = m.ack_with(AckKind::Progress).await {
                                debug!(error = %e, "restore progress");
                            }
                        }
                    }
                }
            }
            Err(BodyError::Retry(cause)) if attempt < self.cfg.max_body_attempts => {
                warn!(item = %label, attempt, cause, "restore body unreadable; retrying");
                m.ack_with(AckKind::Nak(Some(self.cfg.retry_delay)))
                    .await
                    .map_err(|e| self.err("nak", e))?;
                return Ok(Handled::Retry);
            }
            Err(BodyError::Retry(cause) | BodyError::Permanent(cause)) => RestoreResult {
                job_id: item.job_id.clone(),
                seq: item.seq,
                outcome: Outcome::Failed as i32,
                error: format!("{label}: reading the body failed: {cause}"),
                source_item_id: item.source_item_id.clone(),
                target_mailbox: item.target_mailbox.clone(),
                ..RestoreResult::default()
            },
        };
        let outcome = result.outcome();
        if let Err(e) = self.publish_result(&item, &result).await {
            // Not stored: the job comes back (a redelivered item finds its copy, see wire.md).
            let _ = m.ack_with(AckKind::Nak(Some(self.cfg.retry_delay))).await;
            return Err(e);
        }
        m.double_ack()
            .await
            .map_err(|e| self.err("acking a restore job", e))?;
        if let Some(restore_item::Body::Object(o)) = &item.body
            && let Err(e) = self.objects.delete(&o.name).await
        {
            debug!(object = %o.name, error = %e, "deleting a restore body");
        }
        Ok(Handled::Done(outcome))
    }

    async fn publish_result(
        &self,
        item: &RestoreItem,
        result: &RestoreResult,
    ) -> Result<(), RestoreEdgeError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            restore_wire::MSG_ID_HEADER,
            restore_wire::result_msg_id(&item.job_id, item.seq).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                restore_wire::reply_subject(item),
                headers,
                Bytes::from(result.encode_to_vec()),
            )
            .await
            .map_err(|e| self.err("publishing a restore result", e))?;
        ack.await
            .map_err(|e| self.err("storing a restore result", e))?;
        Ok(())
    }

    async fn body(&self, item: &RestoreItem) -> Result<Bytes, BodyError> {
        match &item.body {
            Some(restore_item::Body::Inline(b)) => Ok(b.clone()),
            Some(restore_item::Body::Object(o)) => {
                if !o.bucket.is_empty() && o.bucket != restore_wire::BODY_BUCKET {
                    return Err(BodyError::Permanent(format!(
                        "body object is in bucket {:?}, restore bodies live in {:?}",
                        o.bucket,
                        restore_wire::BODY_BUCKET
                    )));
                }
                let mut obj = self
                    .objects
                    .get(&o.name)
                    .await
                    .map_err(|e| BodyError::Retry(format!("object {}: {e}", o.name)))?;
                // The claimed size comes from the job: trust it for a first guess only.
                let guess = usize::try_from(o.size)
                    .unwrap_or(0)
                    .min(CLAIMED_SIZE_GUESS_MAX);
                let mut buf = Vec::with_capacity(guess);
                obj.read_to_end(&mut buf)
                    .await
                    .map_err(|e| BodyError::Retry(format!("object {}: {e}", o.name)))?;
                if o.size != 0 && buf.len() as u64 != o.size {
                    return Err(BodyError::Permanent(format!(
                        "object {} holds {} bytes, the job says {}",
                        o.name,
                        buf.len(),
                        o.size
                    )));
                }
                Ok(Bytes::from(buf))
            }
            None => Err(BodyError::Permanent("the job carries no body".into())),
        }
    }
}
