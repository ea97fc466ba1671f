//! The consumer loop: against a real nats-server (durable consumer, ack after commit, poison
//! terminated), and with an in-process source that checks the ack-after-commit order.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use mailvault_harness::NatsServer;
use mailvault_indexer::Index;
use mailvault_indexer::Indexer;
use mailvault_indexer::consume::{
    self, Acker, ConsumeConfig, ConsumeReport, Delivery, EdgeError, JsSource, SUBJECT_BATCH,
    SUBJECT_CHANGED, SUBJECT_STORED, Source,
};
use mailvault_proto::events::v1::{EventBatch, ItemStored};
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn payload(e: &Event) -> (&'static str, String, Bytes) {
    match e {
        Event::Stored(s) => (
            SUBJECT_STORED,
            s.manifest_id.clone(),
            s.encode_to_vec().into(),
        ),
        Event::Changed(c) => (
            SUBJECT_CHANGED,
            c.record_id.clone(),
            c.encode_to_vec().into(),
        ),
    }
}

async fn wait_for(rx: &mut watch::Receiver<ConsumeReport>, done: impl Fn(&ConsumeReport) -> bool) {
    tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|r| done(r)))
        .await
        .expect("consumer progress in time")
        .expect("consumer running");
}

const NOT_PROTOBUF: &[u8] = b"\xff\xffnot protobuf";

/// Publishes one event and waits until the stream has it.
async fn publish(
    js: &jetstream::Context,
    subject: &'static str,
    msg_id: Option<&str>,
    body: Bytes,
) {
    let mut h = async_nats::HeaderMap::new();
    if let Some(id) = msg_id {
        h.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers(subject, h, body)
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// The JetStream tests' commit settings.
fn short_batches() -> ConsumeConfig {
    ConsumeConfig {
        batch: 40,
        wait: Duration::from_millis(200),
        idle: Duration::from_millis(200),
    }
}

/// Runs the consumer loop over `source` until `done` holds for its report; returns the report.
async fn consume_until(
    ix: &Indexer,
    mut source: impl Source + 'static,
    cfg: ConsumeConfig,
    done: impl Fn(&ConsumeReport) -> bool,
) -> ConsumeReport {
    let (tx, mut rx) = watch::channel(ConsumeReport::default());
    let stop = CancellationToken::new();
    let task = {
        let ix = ix.clone();
        let stop = stop.clone();
        tokio::spawn(async move { consume::run(&ix, &mut source, &cfg, stop, Some(tx)).await })
    };
    wait_for(&mut rx, done).await;
    stop.cancel();
    task.await.expect("consumer task")
}

fn stored_count(events: &[Event]) -> u64 {
    events
        .iter()
        .filter(|e| matches!(e, Event::Stored(_)))
        .count() as u64
}

/// Every stored version is a document, and the deletes among the changes were applied.
fn assert_indexed(ix: &Indexer, stored: u64) {
    assert_eq!(ix.index.doc_count(), stored);
    let deleted = ix.index.search("is:deleted", &Default::default());
    assert!(deleted.expect("search").total > 0, "changes applied");
}

/// Nothing left pending or unacknowledged on the server.
async fn assert_nothing_pending(js: &jetstream::Context) {
    let stream = js.get_stream(consume::STREAM).await.expect("stream");
    let mut c: jetstream::consumer::PullConsumer = stream
        .get_consumer(consume::CONSUMER)
        .await
        .expect("consumer");
    let info = c.info().await.expect("info");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

/// A nats-server, a repository with the items and changes of 25 generated messages (and their
/// events), and the indexer's consumer on the server.
async fn jetstream_setup(
    seed: u64,
) -> (
    NatsServer,
    mailvault_format::Repository,
    Vec<Event>,
    jetstream::Context,
    JsSource,
) {
    let nats = NatsServer::start().expect("nats-server");
    let repo = repo().await;
    let events = populate(&repo, seed, 25).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let source = JsSource::new(&js, 1).await.expect("consumer");
    (nats, repo, events, js, source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_events_are_indexed_then_acked() {
    let (_nats, repo, events, js, source) = jetstream_setup(41).await;
    // Every event twice (a re-publish after the duplicate window), plus one poison message.
    for round in 0..2 {
        for e in &events {
            let (subject, id, body) = payload(e);
            publish(&js, subject, Some(&format!("{id}-{round}")), body).await;
        }
    }
    publish(&js, SUBJECT_STORED, None, NOT_PROTOBUF.into()).await;
    let total = events.len() as u64 * 2;

    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"));
    let report = consume_until(&ix, source, short_batches(), move |r| {
        r.acked >= total && r.terminated >= 1
    })
    .await;
    assert_eq!(report.acked, total);
    assert_eq!(report.terminated, 1);
    assert_eq!(report.nakked, 0);

    let stored = stored_count(&events);
    assert_indexed(&ix, stored);
    assert_nothing_pending(&js).await;
    // A restarted indexer on the same index directory finds everything already there.
    drop(ix);
    let again = Index::open(dir.path()).expect("reopen");
    assert_eq!(again.doc_count(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_event_batches_are_indexed_and_a_bad_entry_is_skipped() {
    let (_nats, repo, events, js, source) = jetstream_setup(43).await;
    // The aggregator's shape: stored and changed entries of a commit in one message, here 10
    // per message; the first also carries an entry that can never be indexed.
    let mut batches: Vec<EventBatch> = events
        .chunks(10)
        .map(|group| {
            let mut b = EventBatch::default();
            for e in group {
                match e {
                    Event::Stored(s) => b.stored.push(s.clone()),
                    Event::Changed(c) => b.changed.push(c.clone()),
                }
            }
            b
        })
        .collect();
    batches[0].stored.push(ItemStored {
        manifest_id: "not a blob id".into(),
        mailbox: "broken@contoso.com".into(),
        item_id: "bad-entry".into(),
        ..Default::default()
    });
    for (i, b) in batches.iter().enumerate() {
        let id = format!("batch-{i}");
        publish(&js, SUBJECT_BATCH, Some(&id), b.encode_to_vec().into()).await;
    }
    publish(&js, SUBJECT_BATCH, None, NOT_PROTOBUF.into()).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"));
    let messages = batches.len() as u64;
    let report = consume_until(&ix, source, short_batches(), move |r| {
        r.acked >= messages && r.terminated >= 1
    })
    .await;
    let stored = stored_count(&events);
    let changed = events.len() as u64 - stored;
    assert_eq!(
        (report.acked, report.terminated, report.nakked),
        (messages, 1, 0),
        "every batch acked, the undecodable one terminated"
    );
    assert_eq!(report.skipped, 1, "only the bad entry is left out");
    assert_eq!((report.stored, report.changed), (stored + 1, changed));
    assert_indexed(&ix, stored);
    assert_nothing_pending(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_before_event_batches_gets_the_batch_subject() {
    let nats = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    // What an earlier indexer created.
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: consume::STREAM.into(),
            subjects: vec!["mailvault.events.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(consume::CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            filter_subjects: vec![SUBJECT_STORED.into(), SUBJECT_CHANGED.into()],
            ..Default::default()
        })
        .await
        .expect("old consumer");
    JsSource::new(&js, 1).await.expect("consumer");
    let mut c: jetstream::consumer::PullConsumer = stream
        .get_consumer(consume::CONSUMER)
        .await
        .expect("consumer");
    let filters = c.info().await.expect("info").config.filter_subjects.clone();
    assert!(
        filters.iter().any(|f| f == SUBJECT_BATCH),
        "filter after start: {filters:?}"
    );
}

/// Records the order of commits and acks: an ack must find its item already committed.
#[derive(Debug)]
struct CheckingAcker {
    index: Index,
    manifest_id: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Acker for CheckingAcker {
    async fn ack(&self) -> Result<(), EdgeError> {
        if let Some(id) = &self.manifest_id {
            // A fresh reader on the committed state only.
            let seen = self.index.get(id).map_err(|e| EdgeError::new("get", e))?;
            assert!(seen.is_some(), "acked {id} before its commit");
        }
        self.log.lock().expect("log").push("ack".into());
        Ok(())
    }
    async fn nak(&self, _: Duration) -> Result<(), EdgeError> {
        self.log.lock().expect("log").push("nak".into());
        Ok(())
    }
    async fn term(&self) -> Result<(), EdgeError> {
        self.log.lock().expect("log").push("term".into());
        Ok(())
    }
}

/// A fresh index over `messages` generated items, and one delivery per event, each acked
/// through a [`CheckingAcker`] that logs into `log`.
struct Checked {
    _dir: tempfile::TempDir,
    ix: Indexer,
    events: Vec<Event>,
    log: Arc<Mutex<Vec<String>>>,
    deliveries: Vec<Delivery>,
}

async fn checked(seed: u64, messages: usize) -> Checked {
    let repo = repo().await;
    let events = populate(&repo, seed, messages).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let deliveries = checked_deliveries(&ix, &events, &log);
    Checked {
        _dir: dir,
        ix,
        events,
        log,
        deliveries,
    }
}

fn checked_deliveries(
    ix: &Indexer,
    events: &[Event],
    log: &Arc<Mutex<Vec<String>>>,
) -> Vec<Delivery> {
    events
        .iter()
        .map(|e| {
            let (subject, id, payload) = payload(e);
            Delivery {
                subject: subject.into(),
                payload,
                attempt: 1,
                trace: None,
                acker: Box::new(CheckingAcker {
                    index: ix.index.clone(),
                    manifest_id: (subject == SUBJECT_STORED).then_some(id),
                    log: log.clone(),
                }),
            }
        })
        .collect()
}

struct VecSource(Vec<Vec<Delivery>>);

#[async_trait]
impl Source for VecSource {
    async fn next_batch(&mut self, _: usize, _: Duration) -> Result<Vec<Delivery>, EdgeError> {
        if self.0.is_empty() {
            // Nothing more: behave like an idle bus (give the runtime back).
            tokio::task::yield_now().await;
            return Ok(Vec::new());
        }
        Ok(self.0.remove(0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_source_acks_only_after_commit() {
    let Checked {
        _dir,
        ix,
        log,
        deliveries,
        ..
    } = checked(42, 6).await;
    let n = deliveries.len();
    let mut batches = Vec::new();
    let mut it = deliveries.into_iter().peekable();
    while it.peek().is_some() {
        batches.push(it.by_ref().take(7).collect::<Vec<_>>());
    }
    let nb = batches.len() as u64;
    // Two pulls of 7 fill one commit batch of 14.
    let cfg = ConsumeConfig {
        batch: 14,
        wait: Duration::from_secs(30),
        idle: Duration::from_secs(30),
    };
    let report = consume_until(&ix, VecSource(batches), cfg, |r| r.acked >= n as u64).await;
    assert_eq!(report.commits, nb.div_ceil(2));
    assert_eq!(log.lock().expect("log").len(), n);
    assert!(log.lock().expect("log").iter().all(|s| s == "ack"));
}

/// Hands out its batches, then behaves like an idle bus: waits as long as it is asked to. The
/// first time it is asked to wait, the producer finishes (`input_done` is cancelled).
struct EndingSource {
    batches: Vec<Vec<Delivery>>,
    input_done: CancellationToken,
}

#[async_trait]
impl Source for EndingSource {
    async fn next_batch(&mut self, _: usize, wait: Duration) -> Result<Vec<Delivery>, EdgeError> {
        if !self.batches.is_empty() {
            return Ok(self.batches.remove(0));
        }
        if !wait.is_zero() {
            self.input_done.cancel();
            tokio::time::sleep(wait).await;
        }
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_producer_is_committed_without_waiting_for_idle() {
    let Checked {
        _dir,
        ix,
        events,
        log,
        deliveries,
    } = checked(43, 12).await;
    let n = deliveries.len() as u64;
    // An hour of idle and gathering: the commit can only come from the producer's end.
    let cfg = ConsumeConfig {
        batch: 10_000,
        wait: Duration::from_secs(3600),
        idle: Duration::from_secs(3600),
    };
    let input_done = CancellationToken::new();
    let source = EndingSource {
        batches: vec![deliveries],
        input_done: input_done.clone(),
    };
    let (tx, mut rx) = watch::channel(ConsumeReport::default());
    let stop = CancellationToken::new();
    let task = {
        let (ix, stop) = (ix.clone(), stop.clone());
        let mut source = source;
        tokio::spawn(async move {
            consume::run_until_drained(&ix, &mut source, &cfg, stop, input_done, Some(tx)).await
        })
    };
    wait_for(&mut rx, |r| r.acked >= n).await;
    stop.cancel();
    let report = task.await.expect("consumer task");
    assert_eq!(report.commits, 1);
    assert_eq!(report.stored, stored_count(&events));
    assert_indexed(&ix, stored_count(&events));
    assert!(log.lock().expect("log").iter().all(|s| s == "ack"));
}
