//! The in-process edge for the single-process mode: the same [`Source`]/[`Acker`]/
//! [`EventSink`]/[`Bodies`] seams as [`crate::nats`], over [`mailvault_runtime::bus`] and a
//! local directory for large bodies.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use mailvault_proto::ingest::v1::ObjectRef;
use mailvault_runtime::bus::{self, Bus, Consumer, Headers, MSG_ID_HEADER};

use crate::edge::{Acker, Bodies, BodyError, BodyReader, Delivery, EdgeError, Event, EventSink};
use crate::worker::{Pull, Source};

/// Settles a bus delivery.
#[derive(Debug)]
pub struct BusAcker(pub bus::AckHandle);

#[async_trait]
impl Acker for BusAcker {
    async fn ack(&self) -> Result<(), EdgeError> {
        self.0.ack();
        Ok(())
    }
    async fn nak(&self, delay: Duration) -> Result<(), EdgeError> {
        self.0.nak(delay);
        Ok(())
    }
    async fn term(&self) -> Result<(), EdgeError> {
        self.0.term();
        Ok(())
    }
    async fn progress(&self) -> Result<(), EdgeError> {
        self.0.progress();
        Ok(())
    }
}

/// A pipeline delivery from a bus delivery (id `<stream>-<seq>`, like JetStream's).
pub fn delivery(d: bus::Delivered) -> Delivery {
    Delivery {
        id: format!("{}-{}", d.message.stream, d.message.seq),
        payload: d.message.payload,
        attempt: d.attempt,
        // The in-process bus carries no headers.
        trace: None,
        acker: Box::new(BusAcker(d.acker)),
    }
}

/// A durable bus consumer as a [`Source`]. The wait for the first message happens inside the
/// returned stream, so the worker's shutdown select can interrupt it (the bus fetch is
/// cancel-safe).
#[derive(Debug, Clone)]
pub struct BusSource(pub Consumer);

#[async_trait]
impl Source for BusSource {
    async fn pull(
        &mut self,
        max_messages: usize,
        max_bytes: usize,
        expires: Duration,
    ) -> Result<Pull, EdgeError> {
        let c = self.0.clone();
        let fetch = async move { c.fetch(max_messages, max_bytes, expires).await };
        Ok(futures::stream::once(fetch)
            .flat_map(|v| futures::stream::iter(v.into_iter().map(|d| Ok(delivery(d)))))
            .boxed())
    }
}

/// Publishes events to the bus (stream `MAILVAULT_EVENTS`), `Nats-Msg-Id` de-duplicated;
/// waits while the stream is full.
#[derive(Debug, Clone)]
pub struct BusEvents(pub Bus);

#[async_trait]
impl EventSink for BusEvents {
    async fn publish(&self, events: Vec<Event>) -> Result<(), EdgeError> {
        for e in events {
            let mut h = Headers::new();
            h.insert(MSG_ID_HEADER.to_owned(), e.msg_id);
            self.0
                .publish(&e.subject, h, e.payload)
                .await
                .map_err(|err| EdgeError::new(&format!("publishing {}", e.subject), err))?;
        }
        Ok(())
    }
}

/// Bodies over the inline limit as files `<root>/<bucket>/<name>` (the single-process
/// collector's publisher writes them there first).
#[derive(Debug, Clone)]
pub struct DirBodies {
    pub root: PathBuf,
}

impl DirBodies {
    /// The file of a body; `None` if bucket or name could escape the root.
    pub fn path(&self, bucket: &str, name: &str) -> Option<PathBuf> {
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (ok(bucket) && ok(name)).then(|| self.root.join(bucket).join(name))
    }

    fn path_of(&self, r: &ObjectRef) -> Result<PathBuf, BodyError> {
        self.path(&r.bucket, &r.name)
            .ok_or_else(|| BodyError::NotFound(format!("{}/{} (invalid name)", r.bucket, r.name)))
    }
}

#[async_trait]
impl Bodies for DirBodies {
    async fn open(&self, r: &ObjectRef) -> Result<BodyReader, BodyError> {
        let p = self.path_of(r)?;
        match tokio::fs::File::open(&p).await {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(BodyError::NotFound(format!("{}/{}", r.bucket, r.name)))
            }
            Err(e) => Err(BodyError::Unavailable(format!("{}: {e}", p.display()))),
        }
    }

    async fn delete(&self, r: &ObjectRef) -> Result<(), BodyError> {
        let p = self.path_of(r)?;
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BodyError::Unavailable(format!(
                "deleting {}: {e}",
                p.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use mailvault_format::{InitOptions, KdfParams, MemoryStore, Repository};
    use mailvault_proto::events::v1::EventBatch;
    use mailvault_proto::ingest::v1::{IngestMessage, ItemEnvelope, ingest_message, item_envelope};
    use mailvault_runtime::bus::{ConsumerConfig, StreamConfig};
    use prost::Message as _;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::pipeline::{Pipeline, PipelineConfig, SUBJECT_BATCH, SUBJECT_QUARANTINED};
    use crate::worker::{WorkerLimits, run_worker};

    fn item(id: &str, mime: &[u8]) -> Bytes {
        IngestMessage {
            message: Some(ingest_message::Message::Item(ItemEnvelope {
                mailbox: "a@contoso.com".into(),
                item_id: id.into(),
                change_key: "CK1".into(),
                item_class: "IPM.Note".into(),
                size: mime.len() as u64,
                body: Some(item_envelope::Body::Inline(Bytes::copy_from_slice(mime))),
                ..Default::default()
            })),
        }
        .encode_to_vec()
        .into()
    }

    /// The shared worker loop over the bus: items are stored and acked, poison is termed with
    /// a `Quarantined` event, and the consumer ends idle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_over_the_bus_stores_acks_and_quarantines() {
        let bus = Bus::new();
        bus.get_or_create_stream(StreamConfig::new("IN", &["mailvault.ingest.>"]))
            .expect("stream");
        bus.get_or_create_stream(StreamConfig::new("EV", &["mailvault.events.>"]))
            .expect("stream");
        let consumer = bus
            .get_or_create_consumer("IN", ConsumerConfig::new("agg", &[]))
            .expect("consumer");
        let events = bus
            .get_or_create_consumer("EV", ConsumerConfig::new("idx", &[]))
            .expect("consumer");
        let repo = Repository::init(
            Arc::new(MemoryStore::default()),
            b"pw",
            InitOptions {
                kdf: KdfParams::fast_insecure(),
                ..InitOptions::default()
            },
        )
        .await
        .expect("repo");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = PipelineConfig::default();
        cfg.batch.max_delay = Duration::from_millis(20);
        let shutdown = CancellationToken::new();
        let mut workers = Vec::new();
        for _ in 0..2 {
            let p = Pipeline::new(
                repo.clone(),
                cfg.clone(),
                Arc::new(DirBodies {
                    root: dir.path().to_owned(),
                }),
                Arc::new(BusEvents(bus.clone())),
                Arc::default(),
            )
            .expect("pipeline");
            let limits = WorkerLimits {
                fetch_messages: 8,
                fetch_bytes: 1 << 20,
                progress_every: Duration::from_secs(10),
                shutdown_deadline: Duration::from_secs(5),
            };
            workers.push(tokio::spawn(run_worker(
                BusSource(consumer.clone()),
                p,
                limits,
                shutdown.clone(),
            )));
        }
        for i in 0..20 {
            let mime = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
            bus.publish(
                &format!("mailvault.ingest.item.k{}", i % 3),
                Headers::new(),
                item(&format!("i{i}"), mime.as_bytes()),
            )
            .await
            .expect("publish");
        }
        bus.publish(
            "mailvault.ingest.item.k0",
            Headers::new(),
            Bytes::from_static(b"\xff\xff not protobuf"),
        )
        .await
        .expect("publish");
        consumer.wait_idle().await;
        shutdown.cancel();
        let mut items = 0;
        for w in workers {
            items += w.await.expect("join").expect("worker").items;
        }
        assert_eq!(items, 20);
        let i = consumer.info();
        assert_eq!((i.acked, i.termed), (20, 1));
        assert_eq!(bus.stream_info("IN").expect("info").messages, 0);
        let got = events.fetch(100, 1 << 20, Duration::ZERO).await;
        let count = |s: &str| got.iter().filter(|d| d.message.subject == s).count();
        assert_eq!(count(SUBJECT_QUARANTINED), 1);
        let mut stored: Vec<String> = got
            .iter()
            .filter(|d| d.message.subject == SUBJECT_BATCH)
            .flat_map(|d| {
                EventBatch::decode(d.message.payload.clone())
                    .expect("event batch")
                    .stored
            })
            .map(|e| e.item_id)
            .collect();
        stored.sort();
        stored.dedup();
        assert_eq!(stored.len(), 20, "every stored item announced");
        assert!(
            got.iter()
                .all(|d| d.message.headers.contains_key(MSG_ID_HEADER))
        );
        let repo2 = repo.clone();
        for i in 0..20 {
            let id = repo2.manifest_id("a@contoso.com", &format!("i{i}"), "CK1");
            let body = repo2.read_item(&id).await.expect("read");
            assert_eq!(
                body,
                format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes()
            );
        }
    }
}
