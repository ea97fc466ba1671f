//! The JetStream edge: the shared durable pull consumer, the acker, Object Store bodies and the
//! event publisher, and the worker loop with its shutdown protocol:
//! stop pulling → nak what was pulled but not started → commit (flush, publish, ack) under a
//! deadline → flush the NATS connection.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, object_store, stream};
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use mailvault_format::{BlobStore, Repository};
use mailvault_proto::ingest::v1::ObjectRef;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::edge::{Acker, Bodies, BodyError, BodyReader, Delivery, EdgeError, Event, EventSink};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError};
pub use crate::worker::RunReport;
use crate::worker::{Pull, Source, WorkerLimits, run_worker};

pub use mailvault_proto::events_wire::STREAM_SUBJECTS as EVENTS_SUBJECTS;
/// Subjects of the ingest stream when the aggregator has to create it (same as the collector).
pub use mailvault_proto::ingest_wire::SUBJECTS as INGEST_SUBJECTS;
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Most event publishes awaiting their ack at once.
const MAX_PUBLISHES_IN_FLIGHT: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("opening repository: {0}")]
    Repository(#[from] mailvault_format::FormatError),
    #[error("pipeline: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("reading passphrase file: {0}")]
    Passphrase(std::io::Error),
    #[error("opening store: {0}")]
    Store(String),
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Nats(format!("{what}: {e}"))
}

/// Settles one delivery. It holds only the reply subject, not the message: a pending delivery
/// waits for its batch's commit (up to `batch.max_items` of them), and a payload kept alive
/// that long would pin the client's read buffers it was sliced from.
struct JsAcker(jetstream::message::Acker);

impl std::fmt::Debug for JsAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsAcker").finish_non_exhaustive()
    }
}

fn ack_err(e: impl std::fmt::Display) -> EdgeError {
    EdgeError::new("ack", e)
}

#[async_trait]
impl Acker for JsAcker {
    async fn ack(&self) -> Result<(), EdgeError> {
        self.0.ack().await.map_err(ack_err)
    }
    async fn nak(&self, delay: Duration) -> Result<(), EdgeError> {
        self.0
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(ack_err)
    }
    async fn term(&self) -> Result<(), EdgeError> {
        self.0.ack_with(AckKind::Term).await.map_err(ack_err)
    }
    async fn progress(&self) -> Result<(), EdgeError> {
        self.0.ack_with(AckKind::Progress).await.map_err(ack_err)
    }
}

fn delivery(stream: &str, m: jetstream::Message) -> Delivery {
    // The delivery info lives in the reply subject, which `split` moves into the acker.
    let (attempt, seq) = m
        .info()
        .map(|i| (i.delivered.max(1) as u64, i.stream_sequence))
        .unwrap_or((1, 0));
    let (message, acker) = m.split();
    Delivery {
        payload: message.payload,
        attempt,
        id: format!("{stream}-{seq}"),
        trace: mailvault_runtime::otel::remote_context(message.headers.as_ref()),
        acker: Box::new(JsAcker(acker)),
    }
}

/// Bodies in JetStream Object Store buckets.
pub struct JsBodies {
    js: jetstream::Context,
    stores: Mutex<HashMap<String, object_store::ObjectStore>>,
    delete: bool,
}

impl std::fmt::Debug for JsBodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsBodies")
            .field("delete", &self.delete)
            .finish_non_exhaustive()
    }
}

impl JsBodies {
    pub fn new(js: jetstream::Context, delete: bool) -> Self {
        JsBodies {
            js,
            stores: Mutex::default(),
            delete,
        }
    }

    async fn bucket(&self, name: &str) -> Result<object_store::ObjectStore, BodyError> {
        if let Some(s) = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(s.clone());
        }
        let s = self.js.get_object_store(name).await.map_err(|e| {
            if e.kind() == jetstream::context::ObjectStoreErrorKind::InvalidBucketName {
                BodyError::NotFound(format!("bucket {name}"))
            } else {
                BodyError::Unavailable(format!("bucket {name}: {e}"))
            }
        })?;
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), s.clone());
        Ok(s)
    }
}

#[async_trait]
impl Bodies for JsBodies {
    async fn open(&self, r: &ObjectRef) -> Result<BodyReader, BodyError> {
        let store = self.bucket(&r.bucket).await?;
        match store.get(&r.name).await {
            Ok(o) => Ok(Box::new(o)),
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                Err(BodyError::NotFound(format!("{}/{}", r.bucket, r.name)))
            }
            Err(e) => Err(BodyError::Unavailable(format!(
                "{}/{}: {e}",
                r.bucket, r.name
            ))),
        }
    }

    async fn delete(&self, r: &ObjectRef) -> Result<(), BodyError> {
        if !self.delete {
            return Ok(());
        }
        let store = self.bucket(&r.bucket).await?;
        store
            .delete(&r.name)
            .await
            .map_err(|e| BodyError::Unavailable(format!("deleting {}/{}: {e}", r.bucket, r.name)))
    }
}

/// Publishes events with `Nats-Msg-Id`, waiting for every stream ack.
#[derive(Debug, Clone)]
pub struct JsEvents {
    js: jetstream::Context,
}

impl JsEvents {
    pub fn new(js: jetstream::Context) -> Self {
        JsEvents { js }
    }
}

#[async_trait]
impl EventSink for JsEvents {
    async fn publish(&self, events: Vec<Event>) -> Result<(), EdgeError> {
        let mut in_flight = FuturesUnordered::new();
        for e in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.msg_id.as_str());
            if let Some(tp) = &e.traceparent {
                headers.insert(mailvault_runtime::otel::TRACEPARENT, tp.as_str());
            }
            let ack = self
                .js
                .publish_with_headers(e.subject, headers, e.payload)
                .await
                .map_err(|e| EdgeError::new("publish", e))?;
            in_flight.push(ack.into_future());
            while in_flight.len() >= MAX_PUBLISHES_IN_FLIGHT {
                if let Some(r) = in_flight.next().await {
                    r.map_err(|e| EdgeError::new("publish ack", e))?;
                }
            }
        }
        while let Some(r) = in_flight.next().await {
            r.map_err(|e| EdgeError::new("publish ack", e))?;
        }
        Ok(())
    }
}

/// Creates (if missing) the ingest and events streams and the shared durable consumer.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &Config,
) -> Result<consumer::Consumer<consumer::pull::Config>, RunError> {
    let n = &cfg.nats;
    let ingest = js
        .get_or_create_stream(stream::Config {
            name: n.stream.clone(),
            subjects: vec![INGEST_SUBJECTS.into()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: n.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("ingest stream", e))?;
    js.get_or_create_stream(stream::Config {
        name: n.events_stream.clone(),
        subjects: vec![EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: n.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_err("events stream", e))?;
    // Created or updated: a consumer made by an older aggregator must get today's filter
    // (item batches arrive on a subject of their own).
    ingest
        .create_consumer(consumer::pull::Config {
            durable_name: Some(n.consumer.clone()),
            description: Some("mailvault aggregators (shared by every replica)".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: n.ack_wait,
            max_ack_pending: n.max_ack_pending,
            // Poison messages are terminated by the aggregator itself, with a record.
            max_deliver: -1,
            filter_subjects: n.filter_subjects.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("consumer", e))
}

/// Connects to NATS and runs until `shutdown`, opening the repository in `store`.
pub async fn run_with_store(
    cfg: Config,
    store: Arc<dyn BlobStore>,
    passphrase: &[u8],
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<RunReport, RunError> {
    let client = mailvault_runtime::nats::connect(
        mailvault_runtime::nats::Component::Aggregator,
        "mailvault-aggregator",
        &cfg.nats.url,
        &cfg.nats.auth(),
    )
    .await
    .map_err(|e| RunError::Nats(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let consumer = ensure_consumer(&js, &cfg).await?;
    let repo = Repository::open(store, passphrase).await?;
    tracing::info!(?repo, workers = cfg.limits.workers, "aggregator running");
    let bodies: Arc<dyn Bodies> = Arc::new(JsBodies::new(js.clone(), cfg.nats.delete_bodies));
    let events: Arc<dyn EventSink> = Arc::new(JsEvents::new(js.clone()));

    let refresher = tokio::spawn(refresh_loop(
        repo.clone(),
        cfg.repository.refresh_interval,
        metrics.clone(),
        shutdown.clone(),
    ));
    let backlog = {
        let metrics = metrics.clone();
        mailvault_runtime::nats::spawn_backlog_probe(
            consumer.clone(),
            mailvault_runtime::nats::BACKLOG_PROBE_EVERY,
            move |n| {
                metrics
                    .backlog_messages
                    .store(n, std::sync::atomic::Ordering::Relaxed)
            },
        )
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..cfg.limits.workers {
        let p = Pipeline::new(
            repo.clone(),
            cfg.pipeline(),
            bodies.clone(),
            events.clone(),
            metrics.clone(),
        )?;
        workers.spawn(worker(cfg.clone(), consumer.clone(), p, shutdown.clone()));
    }
    let mut report = RunReport::default();
    let mut first_err = None;
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(r)) => report.merge(r),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "worker failed");
                // One fatal worker stops the process: unacked work goes to other replicas.
                shutdown.cancel();
                first_err.get_or_insert(e);
            }
            Err(e) => {
                shutdown.cancel();
                first_err
                    .get_or_insert(RunError::Pipeline(PipelineError::WriterLost(e.to_string())));
            }
        }
    }
    refresher.abort();
    backlog.abort();
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flushing NATS connection");
    }
    tracing::info!(?report, "aggregator stopped");
    match first_err {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

async fn refresh_loop(
    repo: Repository,
    every: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match repo.refresh().await {
            Ok(()) => Metrics::add(&metrics.refreshes_total, 1),
            Err(e) => tracing::warn!(error = %e, "index refresh failed"),
        }
    }
}

/// The JetStream [`Source`]: one continuous pull on the shared durable consumer. async-nats
/// sends the next pull request when half of the previous one has arrived, so messages keep
/// coming while the writer works; a pull request per [`Source::pull`] call left the writer idle
/// for a request round trip each time (measured: about a quarter of the drain time).
struct JsSource {
    consumer: consumer::Consumer<consumer::pull::Config>,
    stream: String,
    /// Created on first use with the first call's sizes; dropped after an error and created
    /// again by the next call. Messages it buffered but did not yield are not lost: they are
    /// redelivered after `ack_wait` (see also [`Source::pull`]'s contract).
    messages: Arc<tokio::sync::Mutex<Option<consumer::pull::Stream>>>,
}

/// How long one pull request of the continuous pull stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat of the continuous pull (a missed one surfaces as an error).
const PULL_HEARTBEAT: Duration = Duration::from_secs(10);

#[async_trait]
impl Source for JsSource {
    async fn pull(
        &mut self,
        max_messages: usize,
        max_bytes: usize,
        expires: Duration,
    ) -> Result<Pull, EdgeError> {
        let mut messages = self.messages.clone().lock_owned().await;
        if messages.is_none() {
            let s = self
                .consumer
                .stream()
                .max_messages_per_batch(max_messages)
                .max_bytes_per_batch(max_bytes)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await
                .map_err(|e| EdgeError::new("pull request", e))?;
            *messages = Some(s);
        }
        let stream = self.stream.clone();
        let deadline = tokio::time::Instant::now() + expires;
        // Up to `max_messages`, or what arrives until `expires`; the continuous pull goes on
        // underneath (waiting on it is cancel-safe: a message is only taken when yielded).
        Ok(
            futures::stream::unfold((messages, 0usize), move |(mut messages, taken)| {
                let stream = stream.clone();
                async move {
                    if taken >= max_messages {
                        return None;
                    }
                    let s = messages.as_mut()?;
                    match tokio::time::timeout_at(deadline, s.next()).await {
                        Ok(Some(Ok(m))) => Some((Ok(delivery(&stream, m)), (messages, taken + 1))),
                        Ok(Some(Err(e))) => {
                            *messages = None;
                            Some((Err(EdgeError::new("pull", e)), (messages, max_messages)))
                        }
                        Ok(None) => {
                            *messages = None;
                            None
                        }
                        Err(_) => None,
                    }
                }
            })
            .boxed(),
        )
    }

    fn in_flight_wait(&self) -> Duration {
        // Deliveries the server sent just before the shutdown may still be in the socket.
        Duration::from_millis(200)
    }
}

async fn worker(
    cfg: Config,
    consumer: consumer::Consumer<consumer::pull::Config>,
    p: Pipeline,
    shutdown: CancellationToken,
) -> Result<RunReport, RunError> {
    let source = JsSource {
        consumer,
        stream: cfg.nats.stream.clone(),
        messages: Arc::default(),
    };
    Ok(run_worker(source, p, worker_limits(&cfg), shutdown).await?)
}

/// The worker knobs of a config.
pub fn worker_limits(cfg: &Config) -> WorkerLimits {
    WorkerLimits {
        fetch_messages: cfg.limits.fetch_messages,
        fetch_bytes: cfg.limits.fetch_bytes,
        progress_every: cfg.limits.progress_every,
        shutdown_deadline: cfg.limits.shutdown_deadline,
    }
}

/// Opens the configured store, reads the passphrase and runs until `shutdown`.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<RunReport, RunError> {
    run_with_metrics(cfg, Arc::new(Metrics::default()), shutdown).await
}

/// [`run`] counting into `metrics` (which the binary serves at `/metrics`).
pub async fn run_with_metrics(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<RunReport, RunError> {
    let pass = mailvault_runtime::secret_file::read_secret_file(&cfg.repository.passphrase_file)
        .map_err(RunError::Passphrase)?;
    let store = open_store(&cfg).await?;
    run_with_store(cfg, store, &pass, metrics, shutdown).await
}

async fn open_store(cfg: &Config) -> Result<Arc<dyn BlobStore>, RunError> {
    mailvault_runtime::storage::open_store(&cfg.repository.url, cfg.s3.clone())
        .await
        .map_err(|e| RunError::Store(e.to_string()))
}
