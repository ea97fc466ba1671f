//! The NATS edge: [`JetStreamPublisher`] (stream `MAILVAULT_INGEST`, bounded in-flight async
//! publishes with `Nats-Msg-Id`, large bodies through the Object Store) and
//! [`KvCheckpointStore`] (KV bucket `mailvault-checkpoints`). See docs/wire.md.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use mailvault_proto::ingest::v1 as pb;
use prost::Message as _;
use std::sync::Arc;

use crate::ews::ItemId;
use crate::metrics::Metrics;
use crate::pack::{PackLimits, pack};
use crate::sync::{
    CheckpointError, CheckpointStore, MailboxCheckpoint, OutMessage, PublishError, Publisher,
    kind_of, mailbox_key,
};

/// Header naming the message kind (`item`, `change`, `quarantine`, `reconcile`, `items`).
pub use mailvault_proto::ingest_wire::KIND_HEADER;
pub use mailvault_proto::ingest_wire::{
    BODY_BUCKET as OBJECT_BUCKET, CHECKPOINT_BUCKET as KV_BUCKET, STREAM, SUBJECTS,
};

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub stream: String,
    pub object_bucket: String,
    /// Bodies larger than this go to the object store.
    pub inline_limit: usize,
    /// Most publishes awaiting their ack at once.
    pub max_in_flight: usize,
    pub duplicate_window: Duration,
    /// How small items and changes are packed into `ItemBatch` messages.
    pub pack: PackLimits,
    /// Copies JetStream keeps of the stream and the object bucket when it creates them (3 on
    /// a NATS cluster: a server lost loses nothing acknowledged).
    pub replicas: usize,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            stream: STREAM.into(),
            object_bucket: OBJECT_BUCKET.into(),
            inline_limit: 512 * 1024,
            max_in_flight: 256,
            duplicate_window: Duration::from_secs(120),
            pack: PackLimits::default(),
            replicas: 1,
        }
    }
}

fn perr(what: &str, e: impl std::fmt::Display) -> PublishError {
    PublishError(format!("{what}: {e}"))
}

/// Publishes ingest messages to JetStream.
pub struct JetStreamPublisher {
    js: jetstream::Context,
    objects: object_store::ObjectStore,
    cfg: PublisherConfig,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for JetStreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamPublisher")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl JetStreamPublisher {
    /// Creates the stream and the object store bucket if they are missing. Existing ones are
    /// left as they are: an operator's changes (more replicas, limits) are never undone.
    pub async fn new(
        client: async_nats::Client,
        cfg: PublisherConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PublishError> {
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![SUBJECTS.into()],
            storage: stream::StorageType::File,
            duplicate_window: cfg.duplicate_window,
            num_replicas: cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| perr("creating stream", e))?;
        let objects = match js.get_object_store(&cfg.object_bucket).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: cfg.object_bucket.clone(),
                    description: Some("mailvault item bodies over the inline limit".into()),
                    num_replicas: cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| perr("creating object store", e))?,
        };
        Ok(Self {
            js,
            objects,
            cfg,
            metrics,
        })
    }

    /// Moves a large inline body into the object store and returns the reference. The object
    /// is named by the item version (its `Nats-Msg-Id`), not by content: the aggregator deletes
    /// a body once its item is durable, and a content-addressed body shared by fifty mailboxes'
    /// copies would vanish under the forty-nine still in flight. A retry of the same version
    /// finds its object already there.
    async fn offload(&self, version: &str, body: &Bytes) -> Result<pb::ObjectRef, PublishError> {
        let name = version.to_owned();
        let exists = matches!(self.objects.info(&name).await, Ok(info) if info.size == body.len() && !info.deleted);
        if !exists {
            let mut reader: &[u8] = body;
            self.objects
                .put(name.as_str(), &mut reader)
                .await
                .map_err(|e| perr("object store put", e))?;
            Metrics::add(&self.metrics.object_store_uploads, 1);
        }
        Ok(pb::ObjectRef {
            bucket: self.cfg.object_bucket.clone(),
            name,
            size: body.len() as u64,
        })
    }
}

#[async_trait]
impl Publisher for JetStreamPublisher {
    async fn publish_batch(&self, mut msgs: Vec<OutMessage>) -> Result<(), PublishError> {
        for m in &mut msgs {
            if let Some(pb::ingest_message::Message::Item(env)) = &mut m.message.message
                && let Some(pb::item_envelope::Body::Inline(body)) = &env.body
                && body.len() > self.cfg.inline_limit
            {
                let r = self.offload(&m.msg_id, body).await?;
                env.body = Some(pb::item_envelope::Body::Object(r));
            }
        }
        let mut in_flight = FuturesUnordered::new();
        for m in pack(msgs, self.cfg.pack) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", m.msg_id.as_str());
            headers.insert(KIND_HEADER, kind_of(&m.message));
            if let Some(tp) = &m.traceparent {
                headers.insert("traceparent", tp.as_str());
            }
            let payload = Bytes::from(m.message.encode_to_vec());
            let ack = self
                .js
                .publish_with_headers(m.subject, headers, payload)
                .await
                .map_err(|e| perr("publish", e))?;
            in_flight.push(ack.into_future());
            while in_flight.len() >= self.cfg.max_in_flight.max(1) {
                if let Some(r) = in_flight.next().await {
                    r.map_err(|e| perr("publish ack", e))?;
                }
            }
        }
        while let Some(r) = in_flight.next().await {
            r.map_err(|e| perr("publish ack", e))?;
        }
        Ok(())
    }
}

use std::future::IntoFuture as _;

/// Checkpoints in a JetStream KV bucket. Keys are hex hashes, so any mailbox or folder id is
/// KV-safe: `mb.<mailbox>` (hierarchy checkpoint, JSON), `f.<mailbox+folder>` (SyncState),
/// `v.<mailbox+item+changekey>` (collected item versions).
#[derive(Debug, Clone)]
pub struct KvCheckpointStore {
    kv: kv::Store,
}

fn cerr(what: &str, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError(format!("{what}: {e}"))
}

fn hkey(prefix: &str, parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}.{}", hex::encode(&h.finalize().as_bytes()[..20]))
}

impl KvCheckpointStore {
    /// Opens (or creates, with `replicas` copies) the bucket.
    pub async fn new(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, CheckpointError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| cerr("creating KV bucket", e))?,
        };
        Ok(Self { kv })
    }

    fn folder_key(mailbox: &str, folder: &str) -> String {
        hkey("f", &[&mailbox.to_lowercase(), folder])
    }
}

#[async_trait]
impl CheckpointStore for KvCheckpointStore {
    async fn get_mailbox(
        &self,
        mailbox: &str,
    ) -> Result<Option<MailboxCheckpoint>, CheckpointError> {
        let key = format!("mb.{}", mailbox_key(mailbox));
        match self.kv.get(key).await.map_err(|e| cerr("get", e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| cerr("decoding mailbox checkpoint", e)),
        }
    }

    async fn put_mailbox(
        &self,
        mailbox: &str,
        cp: &MailboxCheckpoint,
    ) -> Result<(), CheckpointError> {
        let key = format!("mb.{}", mailbox_key(mailbox));
        let mut cp = cp.clone();
        cp.version = 1;
        let v = serde_json::to_vec(&cp).map_err(|e| cerr("encoding", e))?;
        self.kv
            .put(key, v.into())
            .await
            .map_err(|e| cerr("put", e))?;
        Ok(())
    }

    async fn get_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
    ) -> Result<Option<String>, CheckpointError> {
        let v = self
            .kv
            .get(Self::folder_key(mailbox, folder_id))
            .await
            .map_err(|e| cerr("get", e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned())
            .filter(|s| !s.is_empty()))
    }

    async fn put_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
        sync_state: &str,
    ) -> Result<(), CheckpointError> {
        self.kv
            .put(
                Self::folder_key(mailbox, folder_id),
                Bytes::copy_from_slice(sync_state.as_bytes()),
            )
            .await
            .map_err(|e| cerr("put", e))?;
        Ok(())
    }

    async fn delete_folder(&self, mailbox: &str, folder_id: &str) -> Result<(), CheckpointError> {
        self.kv
            .delete(Self::folder_key(mailbox, folder_id))
            .await
            .map_err(|e| cerr("delete", e))
    }

    async fn has_version(&self, mailbox: &str, id: &ItemId) -> Result<bool, CheckpointError> {
        let key = hkey("v", &[&mailbox.to_lowercase(), &id.id, &id.change_key]);
        Ok(self
            .kv
            .get(key)
            .await
            .map_err(|e| cerr("get", e))?
            .is_some())
    }

    async fn record_versions(&self, mailbox: &str, ids: &[ItemId]) -> Result<(), CheckpointError> {
        let mb = mailbox.to_lowercase();
        let mut puts: FuturesUnordered<_> = ids
            .iter()
            .map(|id| {
                let key = hkey("v", &[&mb, &id.id, &id.change_key]);
                self.kv.put(key, Bytes::from_static(b"1"))
            })
            .collect();
        while let Some(r) = puts.next().await {
            r.map_err(|e| cerr("put", e))?;
        }
        Ok(())
    }
}
