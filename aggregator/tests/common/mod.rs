//! Shared pieces of the end-to-end tests: a collector stand-in that publishes envelopes the way
//! `mailvault-collector` does (docs/wire.md; packed by its own packer), aggregator configs, and drain polling.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, object_store, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_aggregator::{Config, Metrics};
pub use mailvault_collector::pack::PackLimits;
use mailvault_collector::pack::pack;
use mailvault_collector::sync::OutMessage;
use mailvault_format::{
    BlobStore, ChunkerParams, InitOptions, KdfParams, Repository, VerifyOptions, verify,
};
use mailvault_proto::events::v1::EventBatch;
use mailvault_proto::events_wire;
use mailvault_proto::ingest::v1::{
    ChangeKind, IngestMessage, ItemChange, ItemEnvelope, ObjectRef, ingest_message, item_envelope,
};
use prost::Message as _;

pub const PASS: &[u8] = b"e2e passphrase";
pub const BUCKET: &str = "mailvault-ingest-bodies";
pub const INLINE_LIMIT: usize = 512 * 1024;
/// Items per GetItem call, as the collector's default.
const GET_ITEM_BATCH: usize = 32;

/// One item version as published.
#[derive(Debug, Clone)]
pub struct Item {
    pub mailbox: String,
    pub item_id: String,
    pub change_key: String,
    pub mime: Vec<u8>,
}

pub fn items_from(generated: &[mailvault_mailgen::GeneratedItem], prefix: &str) -> Vec<Item> {
    generated
        .iter()
        .enumerate()
        .map(|(i, g)| Item {
            mailbox: g.mailbox.clone(),
            item_id: format!("{prefix}{i}"),
            change_key: "CQAAABY1".into(),
            mime: g.mime.clone(),
        })
        .collect()
}

pub fn init_opts() -> InitOptions {
    InitOptions {
        chunker: ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
            mail_aware: true,
            min_segment: 256,
        },
        kdf: KdfParams::fast_insecure(),
        ..InitOptions::default()
    }
}

pub async fn init_repo(store: Arc<dyn BlobStore>) -> Repository {
    Repository::init(store, PASS, init_opts())
        .await
        .expect("init repository")
}

/// What the aggregator binary runs on in a test: a directory repository in `dir` (initialised,
/// passphrase file with a trailing newline, as editors leave it) and a config file naming it
/// and `nats_url`. `nats` and `repository` are extra lines of those sections, `rest` further
/// sections. Returns the store (to check what was written) and the config file.
pub async fn binary_setup(
    dir: &std::path::Path,
    nats_url: &str,
    nats: &str,
    repository: &str,
    rest: &str,
) -> (Arc<dyn BlobStore>, std::path::PathBuf) {
    let repo_dir = dir.join("repo");
    let store: Arc<dyn BlobStore> =
        Arc::new(mailvault_runtime::storage::DirStore::open(&repo_dir).expect("dir store"));
    init_repo(store.clone()).await;
    let pass_file = dir.join("passphrase");
    std::fs::write(&pass_file, [PASS, b"\n"].concat()).expect("passphrase file");
    let cfg_file = dir.join("aggregator.toml");
    std::fs::write(
        &cfg_file,
        format!(
            "[nats]\nurl = \"{nats_url}\"\n{nats}\n[repository]\nurl = \"{}\"\npassphrase_file = \"{}\"\n{repository}\n{rest}",
            repo_dir.display(),
            pass_file.display()
        ),
    )
    .expect("config file");
    (store, cfg_file)
}

/// The collector's stream and object bucket (same settings as `mailvault-collector`).
pub struct Collector {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub objects: object_store::ObjectStore,
}

fn key(s: &str) -> String {
    blake3::hash(s.to_lowercase().as_bytes()).to_hex()[..16].to_owned()
}

impl Collector {
    pub async fn connect(url: &str) -> Collector {
        Self::with_client(async_nats::connect(url).await.expect("connect")).await
    }

    pub async fn with_client(client: async_nats::Client) -> Collector {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: "MAILVAULT_INGEST".into(),
            subjects: vec!["mailvault.ingest.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("ingest stream");
        let objects = match js.get_object_store(BUCKET).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BUCKET.into(),
                    ..Default::default()
                })
                .await
                .expect("object store"),
        };
        Collector {
            client,
            js,
            objects,
        }
    }

    async fn publish(&self, subject: String, msg_id: String, m: &IngestMessage) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        self.js
            .publish_with_headers(subject, headers, Bytes::from(m.encode_to_vec()))
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Publishes `items` the way the collector does: by mailbox, in GetItem-sized groups, small items
    /// packed into `ItemBatch` messages by the collector's own packer, every publish awaited.
    /// Returns how many messages that made.
    pub async fn publish_items(&self, items: &[Item]) -> usize {
        self.publish_items_packed(items, PackLimits::default())
            .await
    }

    /// [`Collector::publish_items`] with other pack limits (1 entry: one message per item).
    pub async fn publish_items_packed(&self, items: &[Item], limits: PackLimits) -> usize {
        // The collector reads mailbox by mailbox (a generated corpus interleaves mailboxes, and
        // a pack never spans two).
        let mut items: Vec<&Item> = items.iter().collect();
        items.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
        let mut sent = 0;
        for group in items.chunks(GET_ITEM_BATCH) {
            let mut msgs = Vec::with_capacity(group.len());
            for it in group {
                msgs.push(self.envelope(it).await);
            }
            for m in pack(msgs, limits) {
                self.publish(m.subject, m.msg_id, &m.message).await;
                sent += 1;
            }
        }
        sent
    }

    /// Publishes every item as a message of its own (as collectors did before packing).
    pub async fn publish_items_one_by_one(&self, items: &[Item]) {
        for it in items {
            let m = self.envelope(it).await;
            self.publish(m.subject, m.msg_id, &m.message).await;
        }
    }

    /// Publishes one item as a message of its own with a W3C `traceparent` header, as the
    /// collector does (docs/wire.md).
    pub async fn publish_item_traced(&self, it: &Item, traceparent: &str) {
        let m = self.envelope(it).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", m.msg_id.as_str());
        headers.insert("traceparent", traceparent);
        self.js
            .publish_with_headers(m.subject, headers, Bytes::from(m.message.encode_to_vec()))
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Every event batch message in the events stream with its `traceparent` header (if any)
    /// and the manifest ids it announces as stored.
    pub async fn event_batches(&self) -> Vec<(Option<String>, Vec<String>)> {
        // The aggregator creates the stream when it starts.
        let Ok(mut s) = self.js.get_stream(events_wire::STREAM).await else {
            return Vec::new();
        };
        let (first, last) = {
            let state = &s.info().await.expect("info").state;
            (state.first_sequence, state.last_sequence)
        };
        let mut out = Vec::new();
        for seq in first..=last {
            let Ok(raw) = s.get_raw_message(seq).await else {
                continue;
            };
            if raw.subject.as_str() != events_wire::SUBJECT_BATCH {
                continue;
            }
            let tp = raw
                .headers
                .get("traceparent")
                .map(|v| v.as_str().to_owned());
            let b = EventBatch::decode(raw.payload).expect("decode EventBatch");
            out.push((tp, b.stored.into_iter().map(|e| e.manifest_id).collect()));
        }
        out
    }

    /// The message of one item; a body over the inline limit goes to the Object Store first.
    async fn envelope(&self, it: &Item) -> OutMessage {
        let body = if it.mime.len() > INLINE_LIMIT {
            let name = blake3::hash(&it.mime).to_hex().to_string();
            let mut r: &[u8] = &it.mime;
            self.objects
                .put(name.as_str(), &mut r)
                .await
                .expect("object put");
            item_envelope::Body::Object(ObjectRef {
                bucket: BUCKET.into(),
                name,
                size: it.mime.len() as u64,
            })
        } else {
            item_envelope::Body::Inline(Bytes::from(it.mime.clone()))
        };
        OutMessage {
            subject: format!("mailvault.ingest.item.{}", key(&it.mailbox)),
            msg_id: key(&format!(
                "item|{}|{}|{}",
                it.mailbox, it.item_id, it.change_key
            )),
            traceparent: None,
            message: IngestMessage {
                message: Some(ingest_message::Message::Item(ItemEnvelope {
                    source: "ex1".into(),
                    mailbox: it.mailbox.clone(),
                    folder_id: "inbox-id".into(),
                    folder_path: vec!["Inbox".into()],
                    distinguished_folder: "inbox".into(),
                    item_id: it.item_id.clone(),
                    change_key: it.change_key.clone(),
                    item_class: "IPM.Note".into(),
                    format: 1,
                    body: Some(body),
                    size: it.mime.len() as u64,
                    collected_unix_ms: 1_700_000_000_000,
                    is_read: false,
                    properties: Default::default(),
                })),
            },
        }
    }

    /// A read-flag change for each item; returns the changes.
    pub async fn publish_read_flags(&self, items: &[Item]) -> Vec<ItemChange> {
        let mut out = Vec::new();
        for it in items {
            let c = ItemChange {
                source: "ex1".into(),
                mailbox: it.mailbox.clone(),
                item_id: it.item_id.clone(),
                change_key: "CQAAABY2".into(),
                kind: ChangeKind::ReadFlag as i32,
                is_read: true,
                observed_unix_ms: 1_700_000_100_000,
                ..Default::default()
            };
            let m = IngestMessage {
                message: Some(ingest_message::Message::Change(c.clone())),
            };
            self.publish(
                format!("mailvault.ingest.change.{}", key(&it.mailbox)),
                key(&format!("change|{}|{}", it.mailbox, it.item_id)),
                &m,
            )
            .await;
            out.push(c);
        }
        out
    }

    /// (pending, ack pending) of the aggregators' consumer.
    pub async fn backlog(&self) -> Option<(u64, usize)> {
        let s = self.js.get_stream("MAILVAULT_INGEST").await.ok()?;
        let mut c: consumer::PullConsumer = s.get_consumer("mailvault-aggregator").await.ok()?;
        let info = c.info().await.ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }

    /// The stream sequence below which the aggregators' consumer has settled everything.
    pub async fn ack_floor(&self) -> Option<u64> {
        let s = self.js.get_stream("MAILVAULT_INGEST").await.ok()?;
        let mut c: consumer::PullConsumer = s.get_consumer("mailvault-aggregator").await.ok()?;
        let info = c.info().await.ok()?;
        Some(info.ack_floor.stream_sequence)
    }

    /// Waits until the consumer has delivered and settled everything.
    pub async fn wait_drained(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if self.backlog().await == Some((0, 0)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "not drained within {timeout:?}: {:?}",
                self.backlog().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn live_objects(&self) -> usize {
        let mut n = 0;
        let mut l = self.objects.list().await.expect("list");
        while let Some(o) = l.next().await {
            if !o.expect("object info").deleted {
                n += 1;
            }
        }
        n
    }

    /// The manifest and record ids announced by every event batch in the events stream, one
    /// entry per announcement (an id announced twice appears twice).
    pub async fn announced(&self) -> Vec<String> {
        let mut s = self
            .js
            .get_stream(events_wire::STREAM)
            .await
            .expect("events stream");
        let (first, last) = {
            let state = &s.info().await.expect("info").state;
            (state.first_sequence, state.last_sequence)
        };
        let mut out = Vec::new();
        for seq in first..=last {
            let raw = s.get_raw_message(seq).await.expect("event message");
            if raw.subject.as_str() != events_wire::SUBJECT_BATCH {
                continue;
            }
            let b = EventBatch::decode(raw.payload).expect("decode EventBatch");
            out.extend(b.stored.into_iter().map(|e| e.manifest_id));
            out.extend(b.changed.into_iter().map(|e| e.record_id));
        }
        out
    }
}

pub fn config(nats_url: &str) -> Config {
    let mut c = Config::for_repository("unused-in-process", "/nonexistent".into());
    c.nats.url = nats_url.into();
    c.nats.ack_wait = Duration::from_secs(10);
    c.limits.progress_every = Duration::from_secs(2);
    c.limits.shutdown_deadline = Duration::from_secs(10);
    c.limits.fetch_messages = 32;
    c.limits.nak_delay = Duration::from_millis(200);
    c.batch.max_delay = Duration::from_millis(200);
    c.repository.refresh_interval = Duration::from_secs(1);
    c.validate().expect("valid test config");
    c
}

/// An aggregator replica running in this process.
pub struct Replica {
    pub metrics: Arc<Metrics>,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<
        Result<mailvault_aggregator::RunReport, mailvault_aggregator::nats::RunError>,
    >,
}

impl Replica {
    pub fn start(cfg: Config, store: Arc<dyn BlobStore>) -> Replica {
        let metrics = Arc::new(Metrics::default());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(mailvault_aggregator::run_with_store(
            cfg,
            store,
            PASS,
            metrics.clone(),
            shutdown.clone(),
        ));
        Replica {
            metrics,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) -> mailvault_aggregator::RunReport {
        self.shutdown.cancel();
        self.task.await.expect("replica task").expect("replica run")
    }
}

/// Every item has its manifest and reads back byte-identical; verify is clean.
pub async fn check_repository(store: Arc<dyn BlobStore>, items: &[Item], extra_manifests: usize) {
    let repo = Repository::open(store, PASS).await.expect("open");
    for it in items {
        let id = repo.manifest_id(&it.mailbox, &it.item_id, &it.change_key);
        let got = repo
            .read_item(&id)
            .await
            .unwrap_or_else(|e| panic!("item {} of {}: {e}", it.item_id, it.mailbox));
        assert!(got == it.mime, "item {} differs", it.item_id);
    }
    assert_eq!(repo.manifests().len(), items.len() + extra_manifests);
    let report = verify(&repo, VerifyOptions { read_data: true })
        .await
        .expect("verify");
    assert!(report.is_clean(), "verify: {:?}", report.problems);
}

/// Chunks stored more than once (two replicas racing on the same new chunk).
pub async fn doubles(store: Arc<dyn BlobStore>, replicas: &[&Arc<Metrics>]) -> (u64, u64) {
    let repo = Repository::open(store, PASS).await.expect("open");
    let unique = (repo.blob_count() - repo.manifests().len()) as u64;
    let written: u64 = replicas
        .iter()
        .map(|m| Metrics::get(&m.new_chunks_total))
        .sum();
    (written.saturating_sub(unique), unique)
}
