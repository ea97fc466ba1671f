//! The pipeline over the memory store with fake NATS seams.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use mailvault_format::{
    BlobStore, ChunkerParams, InitOptions, KdfParams, MemoryStore, PutOutcome, StoreError,
    VerifyOptions, verify,
};

use super::*;
use crate::edge::{Acker, BodyReader};
use mailvault_proto::ingest::v1::ItemBatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Ack,
    Nak,
    Term,
}

type Log = Arc<Mutex<Vec<(String, Settled)>>>;

#[derive(Debug)]
struct FakeAcker {
    id: String,
    log: Log,
}

#[async_trait]
impl Acker for FakeAcker {
    async fn ack(&self) -> Result<(), EdgeError> {
        self.log
            .lock()
            .expect("log")
            .push((self.id.clone(), Settled::Ack));
        Ok(())
    }
    async fn nak(&self, _delay: Duration) -> Result<(), EdgeError> {
        self.log
            .lock()
            .expect("log")
            .push((self.id.clone(), Settled::Nak));
        Ok(())
    }
    async fn term(&self) -> Result<(), EdgeError> {
        self.log
            .lock()
            .expect("log")
            .push((self.id.clone(), Settled::Term));
        Ok(())
    }
    async fn progress(&self) -> Result<(), EdgeError> {
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeBodies {
    objects: Mutex<HashMap<String, Bytes>>,
}

#[async_trait]
impl Bodies for FakeBodies {
    async fn open(&self, r: &ObjectRef) -> Result<BodyReader, BodyError> {
        let b = self
            .objects
            .lock()
            .expect("objects")
            .get(&r.name)
            .cloned()
            .ok_or_else(|| BodyError::NotFound(r.name.clone()))?;
        Ok(Box::new(std::io::Cursor::new(b)))
    }
    async fn delete(&self, r: &ObjectRef) -> Result<(), BodyError> {
        self.objects.lock().expect("objects").remove(&r.name);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeEvents {
    fail: AtomicBool,
    published: Mutex<Vec<Event>>,
}

#[async_trait]
impl EventSink for FakeEvents {
    async fn publish(&self, events: Vec<Event>) -> Result<(), EdgeError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(EdgeError("events down".into()));
        }
        self.published.lock().expect("events").extend(events);
        Ok(())
    }
}

/// A memory store whose puts fail while `down` is set (S3 outage).
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryStore,
    down: AtomicBool,
}

#[async_trait]
impl BlobStore for FlakyStore {
    async fn put(&self, name: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Transient {
                op: "put",
                name: name.into(),
                source: "connection refused".into(),
            });
        }
        self.inner.put(name, data).await
    }
    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        self.inner.get(name).await
    }
    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.inner.get_range(name, offset, len).await
    }
    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.inner.size(name).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name).await
    }
}

struct Fixture {
    store: Arc<FlakyStore>,
    bodies: Arc<FakeBodies>,
    events: Arc<FakeEvents>,
    log: Log,
    pipeline: Pipeline,
    next: u64,
}

fn init_opts() -> InitOptions {
    InitOptions {
        chunker: ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            mail_aware: true,
            min_segment: 64,
        },
        kdf: KdfParams::fast_insecure(),
        ..InitOptions::default()
    }
}

async fn fixture(cfg: PipelineConfig) -> Fixture {
    let store = Arc::new(FlakyStore::default());
    let repo = Repository::init(store.clone(), b"pw", init_opts())
        .await
        .expect("init");
    let bodies = Arc::new(FakeBodies::default());
    let events = Arc::new(FakeEvents::default());
    let pipeline = Pipeline::new(
        repo,
        cfg,
        bodies.clone(),
        events.clone(),
        Arc::new(Metrics::default()),
    )
    .expect("pipeline");
    Fixture {
        store,
        bodies,
        events,
        log: Log::default(),
        pipeline,
        next: 0,
    }
}

impl Fixture {
    fn delivery(&mut self, msg: &IngestMessage, attempt: u64) -> (String, Delivery) {
        self.next += 1;
        let id = format!("m{}", self.next);
        let d = Delivery {
            payload: msg.encode_to_vec().into(),
            attempt,
            id: id.clone(),
            trace: None,
            acker: Box::new(FakeAcker {
                id: id.clone(),
                log: self.log.clone(),
            }),
        };
        (id, d)
    }

    async fn send(&mut self, msg: &IngestMessage) -> (String, Handled) {
        let (id, d) = self.delivery(msg, 1);
        let h = self.pipeline.handle(d).await.expect("handle");
        (id, h)
    }

    fn settled(&self, id: &str) -> Vec<Settled> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| *s)
            .collect()
    }

    fn batches(&self) -> Vec<EventBatch> {
        self.events
            .published
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e.subject == SUBJECT_BATCH)
            .map(|e| EventBatch::decode(e.payload.clone()).expect("event"))
            .collect()
    }

    fn stored_events(&self) -> Vec<ItemStored> {
        self.batches().into_iter().flat_map(|b| b.stored).collect()
    }
}

fn envelope(mailbox: &str, item: &str, body: Option<item_envelope::Body>) -> IngestMessage {
    let size = match &body {
        Some(item_envelope::Body::Inline(b)) => b.len() as u64,
        Some(item_envelope::Body::Object(r)) => r.size,
        None => 0,
    };
    IngestMessage {
        message: Some(ingest_message::Message::Item(ItemEnvelope {
            source: "ex1".into(),
            mailbox: mailbox.into(),
            folder_id: "f1".into(),
            folder_path: vec!["Inbox".into()],
            distinguished_folder: "inbox".into(),
            item_id: item.into(),
            change_key: "CQAAAB1".into(),
            item_class: "IPM.Note".into(),
            format: 1,
            body,
            size,
            collected_unix_ms: 1,
            is_read: false,
            properties: Default::default(),
        })),
    }
}

fn inline(mailbox: &str, item: &str, mime: &[u8]) -> IngestMessage {
    envelope(
        mailbox,
        item,
        Some(item_envelope::Body::Inline(Bytes::copy_from_slice(mime))),
    )
}

async fn read_back(p: &Pipeline, ev: &ItemStored) -> Vec<u8> {
    let id = BlobId::from_hex(&ev.manifest_id).expect("hex id");
    p.repo().read_item(&id).await.expect("read")
}

#[tokio::test]
async fn items_are_stored_byte_identical_and_acked_only_after_commit() {
    let mut f = fixture(PipelineConfig::default()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        messages: 20,
        ..Default::default()
    });
    let mut ids = Vec::new();
    for (i, it) in corpus.items.iter().enumerate() {
        let (id, h) = f
            .send(&inline(&it.mailbox, &format!("item{i}"), &it.mime))
            .await;
        assert_eq!(h, Handled::Pending);
        ids.push(id);
    }
    assert!(
        f.log.lock().expect("log").is_empty(),
        "nothing settled before commit"
    );
    assert!(f.events.published.lock().expect("events").is_empty());
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!(c.items, corpus.items.len());
    for id in &ids {
        assert_eq!(f.settled(id), vec![Settled::Ack]);
    }
    let events = f.stored_events();
    assert_eq!(events.len(), corpus.items.len());
    for (ev, it) in events.iter().zip(&corpus.items) {
        assert_eq!(read_back(&f.pipeline, ev).await, it.mime);
        assert!(ev.stored_unix_ms > 0);
    }
    let report = verify(f.pipeline.repo(), VerifyOptions { read_data: true })
        .await
        .expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[tokio::test]
async fn redelivered_and_fanned_out_items_are_stored_once() {
    let mut f = fixture(PipelineConfig::default()).await;
    let copies = mailvault_mailgen::fanout(7, 50, 200_000, false);
    let logical: usize = copies.iter().map(|c| c.mime.len()).sum();
    for (i, it) in copies.iter().enumerate() {
        f.send(&inline(&it.mailbox, &format!("x{i}"), &it.mime))
            .await;
    }
    f.pipeline.commit().await.expect("commit");
    let stored_after_first = f.store.inner.bytes_under("packs/");
    // The same versions again: redelivery after a crash.
    for (i, it) in copies.iter().enumerate() {
        f.send(&inline(&it.mailbox, &format!("x{i}"), &it.mime))
            .await;
    }
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!(c.duplicates, copies.len());
    assert_eq!(f.pipeline.repo().manifests().len(), copies.len());
    let stored = f.store.inner.bytes_under("packs/");
    assert!(
        stored - stored_after_first < 4096,
        "redelivery added {} bytes",
        stored - stored_after_first
    );
    println!(
        "fan-out to 50: logical {logical} B, stored {stored} B, ratio {:.3}",
        stored as f64 / logical as f64
    );
    // One message in 51 copies: its body and attachment stored once, plus headers and
    // manifests: well under two copies' worth.
    let one = copies[1].mime.len() as u64;
    assert!(
        stored < 2 * one,
        "stored {stored} of {logical}; one copy is {one}"
    );
}

#[tokio::test]
async fn object_store_bodies_stream_through_and_are_deleted_after_ack() {
    let mut f = fixture(PipelineConfig {
        piece_bytes: 64 * 1024,
        ..PipelineConfig::default()
    })
    .await;
    let big = mailvault_mailgen::fanout(3, 1, 3_000_000, false);
    let mime = Bytes::from(big[1].mime.clone());
    f.bodies
        .objects
        .lock()
        .expect("objects")
        .insert("obj1".into(), mime.clone());
    let r = ObjectRef {
        bucket: "b".into(),
        name: "obj1".into(),
        size: mime.len() as u64,
    };
    let (id, h) = f
        .send(&envelope(
            "a@x",
            "big",
            Some(item_envelope::Body::Object(r)),
        ))
        .await;
    assert_eq!(h, Handled::Pending);
    assert!(
        f.bodies
            .objects
            .lock()
            .expect("objects")
            .contains_key("obj1")
    );
    f.pipeline.commit().await.expect("commit");
    assert_eq!(f.settled(&id), vec![Settled::Ack]);
    assert!(
        f.bodies.objects.lock().expect("objects").is_empty(),
        "deleted after ack"
    );
    let ev = &f.stored_events()[0];
    assert_eq!(read_back(&f.pipeline, ev).await, mime);
}

#[tokio::test]
async fn changes_are_recorded_as_history() {
    let mut f = fixture(PipelineConfig::default()).await;
    f.send(&inline("a@x", "i1", b"Subject: a\r\n\r\nbody\r\n"))
        .await;
    let change = ItemChange {
        source: "ex1".into(),
        mailbox: "a@x".into(),
        item_id: "i1".into(),
        change_key: "CQAAAB2".into(),
        kind: ChangeKind::ReadFlag as i32,
        is_read: true,
        observed_unix_ms: 42,
        ..Default::default()
    };
    let msg = IngestMessage {
        message: Some(ingest_message::Message::Change(change.clone())),
    };
    let (id, h) = f.send(&msg).await;
    assert_eq!(h, Handled::Pending);
    // Redelivered change: same record.
    let (id2, _) = f.send(&msg).await;
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!((c.items, c.changes, c.duplicates), (1, 2, 1));
    assert_eq!(f.settled(&id), vec![Settled::Ack]);
    assert_eq!(f.settled(&id2), vec![Settled::Ack]);
    let repo = f.pipeline.repo();
    let (meta, _) = history_record(&change);
    let rid = repo.manifest_id(&meta.mailbox, &meta.item_id, &meta.change_key);
    let m = repo.manifest(&rid).await.expect("history manifest");
    assert_eq!(m.item_class, HISTORY_ITEM_CLASS);
    assert_eq!(
        m.properties.get(RECORD_PROPERTY).map(String::as_str),
        Some(RECORD_ITEM_CHANGE)
    );
    let content = repo.read_item(&rid).await.expect("read");
    assert_eq!(
        ItemChange::decode(content.as_slice()).expect("decode"),
        change
    );
    assert_eq!(repo.manifests().len(), 2, "the item and one history record");
    let changed: Vec<_> = f.batches().into_iter().flat_map(|b| b.changed).collect();
    assert_eq!(changed.len(), 2);
    assert_eq!(
        changed[0].record_id, changed[1].record_id,
        "applied once downstream (idempotent by record id)"
    );
    assert_eq!(changed[0].record_id, rid.to_hex());
}

#[tokio::test]
async fn nothing_is_acked_while_the_store_is_down() {
    let mut f = fixture(PipelineConfig::default()).await;
    let (id, _) = f
        .send(&inline("a@x", "i1", b"Subject: a\r\n\r\nbody one\r\n"))
        .await;
    f.store.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let e = f.pipeline.commit().await.expect_err("store down");
        assert!(e.is_retryable(), "{e}");
    }
    // Work goes on being accepted into the writer meanwhile.
    let (id2, _) = f
        .send(&inline("a@x", "i2", b"Subject: b\r\n\r\nbody two\r\n"))
        .await;
    assert!(f.settled(&id).is_empty() && f.settled(&id2).is_empty());
    assert!(f.events.published.lock().expect("events").is_empty());
    f.store.down.store(false, Ordering::SeqCst);
    let c = f.pipeline.commit().await.expect("commit after outage");
    assert_eq!(c.items, 2);
    assert_eq!(f.settled(&id), vec![Settled::Ack]);
    assert_eq!(f.settled(&id2), vec![Settled::Ack]);
    for ev in f.stored_events() {
        assert!(!read_back(&f.pipeline, &ev).await.is_empty());
    }
}

#[tokio::test]
async fn nothing_is_acked_before_events_are_published() {
    let mut f = fixture(PipelineConfig::default()).await;
    let (id, _) = f
        .send(&inline("a@x", "i1", b"Subject: a\r\n\r\nbody\r\n"))
        .await;
    f.events.fail.store(true, Ordering::SeqCst);
    assert!(f.pipeline.commit().await.is_err());
    assert!(f.settled(&id).is_empty());
    assert!(
        f.pipeline.commit_due(Instant::now()),
        "the unfinished commit is due"
    );
    f.events.fail.store(false, Ordering::SeqCst);
    f.pipeline.commit().await.expect("commit");
    assert_eq!(f.settled(&id), vec![Settled::Ack]);
}

/// A batch commits in the background while the writer takes the next one; the next batch
/// dedupes against the first (same bytes in other mailboxes) and is settled after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_commit_overlaps_the_next_batch_and_settles_in_order() {
    let mut f = fixture(PipelineConfig::default()).await;
    let copies = mailvault_mailgen::fanout(11, 6, 100_000, false);
    let (first, second) = copies.split_at(3);
    let mut ids = Vec::new();
    for (i, it) in first.iter().enumerate() {
        ids.push(
            f.send(&inline(&it.mailbox, &format!("a{i}"), &it.mime))
                .await
                .0,
        );
    }
    assert_eq!(
        f.pipeline.commit_in_background().await.expect("start"),
        Committed::default()
    );
    assert!(f.pipeline.committing());
    assert_eq!(f.pipeline.held(), first.len());
    let stored_before = Metrics::get(&f.pipeline.metrics.new_raw_bytes_total);
    for (i, it) in second.iter().enumerate() {
        ids.push(
            f.send(&inline(&it.mailbox, &format!("b{i}"), &it.mime))
                .await
                .0,
        );
    }
    let new_in_second = Metrics::get(&f.pipeline.metrics.new_raw_bytes_total) - stored_before;
    let one = second[0].mime.len() as u64;
    assert!(
        new_in_second < one,
        "the second batch stored {new_in_second} new bytes; one copy is {one}"
    );
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!(c.items, copies.len(), "both batches reported");
    assert!(!f.pipeline.committing());
    assert_eq!(f.pipeline.held(), 0);
    for id in &ids {
        assert_eq!(f.settled(id), vec![Settled::Ack]);
    }
    let events = f.stored_events();
    assert_eq!(events.len(), copies.len());
    for (ev, it) in events.iter().zip(&copies) {
        assert_eq!(read_back(&f.pipeline, ev).await, it.mime);
    }
    let report = verify(f.pipeline.repo(), VerifyOptions { read_data: true })
        .await
        .expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A background commit that fails acks nothing, stalls the pipeline and is retried (with the
/// batch after it) once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_commit_stalls_and_is_retried() {
    let mut f = fixture(PipelineConfig::default()).await;
    let (id, _) = f
        .send(&inline("a@x", "i1", b"Subject: a\r\n\r\nbody one\r\n"))
        .await;
    f.store.down.store(true, Ordering::SeqCst);
    f.pipeline.commit_in_background().await.expect("start");
    let (id2, _) = f
        .send(&inline("a@x", "i2", b"Subject: b\r\n\r\nbody two\r\n"))
        .await;
    let e = loop {
        match f.pipeline.reap().await {
            Ok(c) => assert_eq!(c, Committed::default()),
            Err(e) => break e,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(e.is_retryable(), "{e}");
    assert!(f.pipeline.stalled() && f.pipeline.commit_due(Instant::now()));
    assert_eq!(f.pipeline.held(), 2);
    assert!(f.settled(&id).is_empty() && f.settled(&id2).is_empty());
    assert!(f.events.published.lock().expect("events").is_empty());
    // Starting another background commit first retries the stalled one: still down.
    assert!(f.pipeline.commit_in_background().await.is_err());
    f.store.down.store(false, Ordering::SeqCst);
    let c = f.pipeline.commit().await.expect("commit after outage");
    assert_eq!(c.items, 2);
    assert_eq!(f.settled(&id), vec![Settled::Ack]);
    assert_eq!(f.settled(&id2), vec![Settled::Ack]);
}

/// Several deliveries in one writer call: each gets its own outcome, in order.
#[tokio::test]
async fn a_group_of_deliveries_is_handled_in_one_go() {
    let mut f = fixture(PipelineConfig::default()).await;
    let mut ds = Vec::new();
    let (ok1, d) = f.delivery(&inline("a@x", "g1", b"Subject: 1\r\n\r\none\r\n"), 1);
    ds.push(d);
    let (bad, d) = f.delivery(&inline("", "g2", b"no mailbox"), 1);
    ds.push(d);
    let change = IngestMessage {
        message: Some(ingest_message::Message::Change(ItemChange {
            mailbox: "a@x".into(),
            item_id: "g1".into(),
            change_key: "CK2".into(),
            kind: ChangeKind::Delete as i32,
            observed_unix_ms: 7,
            ..Default::default()
        })),
    };
    let (ok2, d) = f.delivery(&change, 1);
    ds.push(d);
    let h = f.pipeline.handle_many(ds).await.expect("handle");
    assert_eq!(
        h,
        vec![Handled::Pending, Handled::Quarantined, Handled::Pending]
    );
    assert_eq!(f.settled(&bad), vec![Settled::Term]);
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!((c.items, c.changes), (1, 1));
    assert_eq!(f.settled(&ok1), vec![Settled::Ack]);
    assert_eq!(f.settled(&ok2), vec![Settled::Ack]);
}

#[tokio::test]
async fn poison_messages_are_quarantined() {
    let mut f = fixture(PipelineConfig {
        poison_after_attempts: 3,
        ..PipelineConfig::default()
    })
    .await;
    // Undecodable: quarantined at once.
    let (id, d) = {
        f.next += 1;
        let id = "garbage".to_owned();
        let d = Delivery {
            payload: Bytes::from_static(b"\xff\xff\xff\xff not protobuf"),
            attempt: 1,
            id: id.clone(),
            trace: None,
            acker: Box::new(FakeAcker {
                id: id.clone(),
                log: f.log.clone(),
            }),
        };
        (id, d)
    };
    assert_eq!(
        f.pipeline.handle(d).await.expect("handle"),
        Handled::Quarantined
    );
    assert_eq!(f.settled(&id), vec![Settled::Term]);
    // Missing body object: retried until the last attempt, then quarantined.
    let r = ObjectRef {
        bucket: "b".into(),
        name: "gone".into(),
        size: 10,
    };
    let msg = envelope("a@x", "i9", Some(item_envelope::Body::Object(r)));
    for attempt in 1..=3 {
        let (id, d) = f.delivery(&msg, attempt);
        let h = f.pipeline.handle(d).await.expect("handle");
        if attempt < 3 {
            assert_eq!(h, Handled::Nakked);
            assert_eq!(f.settled(&id), vec![Settled::Nak]);
        } else {
            assert_eq!(h, Handled::Quarantined);
            assert_eq!(f.settled(&id), vec![Settled::Term]);
        }
    }
    let q: Vec<Quarantined> = quarantined(&f).into_iter().map(|(_, q)| q).collect();
    assert_eq!(q.len(), 2);
    assert_eq!(q[1].item_id, "i9");
    assert!(q[1].cause.contains("not found"), "{}", q[1].cause);
    assert_eq!(Metrics::get(&f.pipeline.metrics.quarantined_total), 2);
    // The pipeline still works, and the aborted item left no manifest.
    f.send(&inline("a@x", "ok", b"Subject: ok\r\n\r\nfine\r\n"))
        .await;
    assert_eq!(f.pipeline.commit().await.expect("commit").items, 1);
    assert_eq!(f.pipeline.repo().manifests().len(), 1);
}

#[test]
fn batch_policy_flushes_on_count_bytes_or_age() {
    let p = BatchPolicy {
        max_items: 3,
        max_bytes: 100,
        max_delay: Duration::from_millis(50),
    };
    let t0 = Instant::now();
    assert!(!p.due(0, 0, None, t0));
    assert!(!p.due(2, 99, Some(t0), t0));
    assert!(p.due(3, 0, Some(t0), t0));
    assert!(p.due(1, 100, Some(t0), t0));
    assert!(p.due(1, 1, Some(t0), t0 + Duration::from_millis(50)));
}

#[tokio::test]
async fn a_large_commit_is_announced_in_several_batches_each_with_its_own_id() {
    let mut f = fixture(PipelineConfig::default()).await;
    let n = EVENTS_PER_MESSAGE * 2 + 7;
    for i in 0..n {
        let mime = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        let (_, h) = f
            .send(&inline(
                "a@contoso.com",
                &format!("item{i}"),
                mime.as_bytes(),
            ))
            .await;
        assert_eq!(h, Handled::Pending);
    }
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!(c.items, n);
    let published = f.events.published.lock().expect("events").clone();
    assert_eq!(published.len(), 3, "512 + 512 + 7 entries");
    let mut msg_ids: Vec<&str> = published.iter().map(|e| e.msg_id.as_str()).collect();
    msg_ids.sort_unstable();
    msg_ids.dedup();
    assert_eq!(msg_ids.len(), 3, "each batch de-duplicated on its own");
    let stored = f.stored_events();
    assert_eq!(stored.len(), n);
    let mut items: Vec<&str> = stored.iter().map(|e| e.item_id.as_str()).collect();
    items.sort_unstable();
    items.dedup();
    assert_eq!(items.len(), n, "every item announced once");
}

fn batch_of(items: Vec<IngestMessage>, changes: Vec<ItemChange>) -> IngestMessage {
    let items = items
        .into_iter()
        .map(|m| match m.message {
            Some(ingest_message::Message::Item(e)) => e,
            _ => panic!("not an item"),
        })
        .collect();
    IngestMessage {
        message: Some(ingest_message::Message::Batch(ItemBatch { items, changes })),
    }
}

fn read_flag(mailbox: &str, item: &str) -> ItemChange {
    ItemChange {
        mailbox: mailbox.into(),
        item_id: item.into(),
        change_key: "CK2".into(),
        kind: ChangeKind::ReadFlag as i32,
        is_read: true,
        observed_unix_ms: 9,
        ..Default::default()
    }
}

fn quarantined(f: &Fixture) -> Vec<(String, Quarantined)> {
    f.events
        .published
        .lock()
        .expect("events")
        .iter()
        .filter(|e| e.subject == SUBJECT_QUARANTINED)
        .map(|e| {
            let q = Quarantined::decode(e.payload.clone()).expect("q");
            (e.msg_id.clone(), q)
        })
        .collect()
}

#[tokio::test]
async fn an_item_batch_is_stored_entry_by_entry_and_acked_once_after_commit() {
    let mut f = fixture(PipelineConfig::default()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        messages: 6,
        ..Default::default()
    });
    let items: Vec<IngestMessage> = corpus
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| inline("a@x", &format!("b{i}"), &it.mime))
        .collect();
    let changes = vec![read_flag("a@x", "b0"), read_flag("a@x", "b1")];
    let (id, h) = f.send(&batch_of(items, changes)).await;
    assert_eq!(h, Handled::Pending);
    assert!(f.settled(&id).is_empty(), "nothing acked before the commit");
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!((c.items, c.changes), (corpus.items.len(), 2));
    assert_eq!(f.settled(&id), vec![Settled::Ack], "acked once");
    let stored = f.stored_events();
    assert_eq!(stored.len(), corpus.items.len());
    for (ev, it) in stored.iter().zip(&corpus.items) {
        assert_eq!(read_back(&f.pipeline, ev).await, it.mime, "{}", ev.item_id);
    }
    assert_eq!(
        f.batches().iter().map(|b| b.changed.len()).sum::<usize>(),
        2
    );
}

#[tokio::test]
async fn a_bad_entry_of_a_batch_is_quarantined_and_the_rest_stored() {
    let mut f = fixture(PipelineConfig::default()).await;
    let items = vec![
        inline("a@x", "ok1", b"Subject: 1\r\n\r\none\r\n"),
        inline("a@x", "", b"no item id"),
        inline("a@x", "ok2", b"Subject: 2\r\n\r\ntwo\r\n"),
    ];
    let (id, h) = f.send(&batch_of(items, Vec::new())).await;
    assert_eq!(h, Handled::Pending);
    let q = quarantined(&f);
    assert_eq!(q.len(), 1);
    assert_eq!(
        q[0].0,
        format!("aggregator-quarantine-{id}-1"),
        "named by entry"
    );
    assert!(q[0].1.cause.contains("item id"), "{}", q[0].1.cause);
    assert_eq!(Metrics::get(&f.pipeline.metrics.quarantined_total), 1);
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!(c.items, 2);
    assert_eq!(f.settled(&id), vec![Settled::Ack]);
    // A batch that carries nothing is poison as a whole.
    let (empty, h) = f.send(&batch_of(Vec::new(), Vec::new())).await;
    assert_eq!(h, Handled::Quarantined);
    assert_eq!(f.settled(&empty), vec![Settled::Term]);
}

/// One entry that may store later holds back the whole delivery: it is nakked, what was
/// stored stays stored, and the redelivery acks it (the entry quarantined at the last attempt).
#[tokio::test]
async fn a_batch_with_a_failing_entry_is_nakked_and_settled_on_redelivery() {
    let mut f = fixture(PipelineConfig {
        poison_after_attempts: 2,
        ..PipelineConfig::default()
    })
    .await;
    let gone = ObjectRef {
        bucket: "b".into(),
        name: "gone".into(),
        size: 10,
    };
    let msg = batch_of(
        vec![
            inline("a@x", "r1", b"Subject: 1\r\n\r\none\r\n"),
            envelope("a@x", "big", Some(item_envelope::Body::Object(gone))),
            inline("a@x", "r2", b"Subject: 2\r\n\r\ntwo\r\n"),
        ],
        Vec::new(),
    );
    let (first, d) = f.delivery(&msg, 1);
    assert_eq!(f.pipeline.handle(d).await.expect("handle"), Handled::Nakked);
    assert_eq!(f.settled(&first), vec![Settled::Nak]);
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!(c.items, 2, "the good entries are stored meanwhile");
    assert_eq!(f.settled(&first), vec![Settled::Nak], "and not acked");
    let (second, d) = f.delivery(&msg, 2);
    assert_eq!(
        f.pipeline.handle(d).await.expect("handle"),
        Handled::Pending
    );
    let c = f.pipeline.commit().await.expect("commit");
    assert_eq!((c.items, c.duplicates), (2, 2));
    assert_eq!(f.settled(&second), vec![Settled::Ack]);
    let q = quarantined(&f);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1.item_id, "big");
    assert_eq!(f.pipeline.repo().manifests().len(), 2);
}

/// Hostile payloads on the ingest subjects: arbitrary bytes, and real messages cut, flipped
/// and spliced. Decoding never panics, and every delivery becomes something (entries to store
/// or a quarantine with a cause): none is dropped without a trace. `MAILVAULT_FUZZ_CASES`
/// widens the run.
mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn units_of(payload: Vec<u8>) -> Vec<Unit> {
        let mut d = Delivery {
            payload: payload.into(),
            attempt: 1,
            id: "m1".into(),
            trace: None,
            acker: Box::new(FakeAcker {
                id: "m1".into(),
                log: Log::default(),
            }),
        };
        prepare(&mut d)
    }

    fn check(units: &[Unit]) -> Result<(), TestCaseError> {
        prop_assert!(!units.is_empty(), "a delivery became nothing");
        for u in units {
            if let Unit::Reject { cause, .. } = u {
                prop_assert!(!cause.is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(mailvault_harness::fuzz_cases(256)))]

        #[test]
        fn arbitrary_payloads_are_stored_or_quarantined(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check(&units_of(bytes))?;
        }

        #[test]
        fn mangled_messages_are_stored_or_quarantined(
            which in 0usize..3,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..8),
        ) {
            let msg = match which {
                0 => inline("alice@contoso.com", "AAMk1", b"Subject: hi\r\n\r\nbody\r\n"),
                1 => batch_of(
                    vec![inline("bob@contoso.com", "AAMk2", b"Subject: x\r\n\r\ny\r\n")],
                    vec![read_flag("bob@contoso.com", "AAMk3")],
                ),
                _ => envelope("carol@contoso.com", "AAMk4", None),
            };
            let mut bytes = msg.encode_to_vec();
            for (at, b, cut) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at % bytes.len();
                if cut {
                    bytes.truncate(at);
                } else {
                    bytes[at] = b;
                }
            }
            check(&units_of(bytes))?;
        }
    }
}
