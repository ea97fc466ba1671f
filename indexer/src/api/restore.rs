//! Where restores go: the collector serving the target Exchange applies them. The API hands a
//! job's items to a [`RestoreTarget`] and gets one result per item back.
//!
//! [`NatsRestoreTarget`] sends restore jobs over JetStream (docs/wire.md, "Restore jobs"); the
//! single-process mode implements the trait with the collector's restorer directly.

use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use mailvault_proto::restore::v1 as wire;
use prost::Message as _;
use tokio::sync::mpsc;

use super::service::ApiError;

/// Applies restore jobs.
#[async_trait]
pub trait RestoreTarget: Send + Sync + std::fmt::Debug {
    /// Applies the items of job `job_id` through the collector named `source`, sending one
    /// result per item to `results`. Returns once every item sent has a result, or with the
    /// reason it cannot finish.
    async fn run(
        &self,
        source: &str,
        job_id: &str,
        items: mpsc::Receiver<(wire::RestoreItem, Bytes)>,
        results: mpsc::Sender<wire::RestoreResult>,
    ) -> Result<(), ApiError>;
}

/// Restore jobs over JetStream.
#[derive(Clone)]
pub struct NatsRestoreTarget {
    client: async_nats::Client,
    js: jetstream::Context,
    objects: object_store::ObjectStore,
    inline_limit: usize,
    /// How long to wait for the next result before giving up on the collector.
    idle_timeout: Duration,
}

impl std::fmt::Debug for NatsRestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRestoreTarget")
            .field("inline_limit", &self.inline_limit)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what}: {e}"))
}

impl NatsRestoreTarget {
    /// Creates the restore stream and body bucket (with `replicas` copies) if missing.
    pub async fn connect(
        client: async_nats::Client,
        idle_timeout: Duration,
        replicas: usize,
    ) -> Result<NatsRestoreTarget, ApiError> {
        use mailvault_proto::restore_wire as names;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: names::STREAM.into(),
            subjects: vec![names::STREAM_SUBJECTS.into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("restore stream", e))?;
        let objects = match js.get_object_store(names::BODY_BUCKET).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: names::BODY_BUCKET.into(),
                    description: Some("mailvault restore bodies over the inline limit".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("restore object store", e))?,
        };
        Ok(NatsRestoreTarget {
            client,
            js,
            objects,
            inline_limit: names::DEFAULT_INLINE_LIMIT,
            idle_timeout,
        })
    }
}

#[async_trait]
impl RestoreTarget for NatsRestoreTarget {
    async fn run(
        &self,
        source: &str,
        job_id: &str,
        mut items: mpsc::Receiver<(wire::RestoreItem, Bytes)>,
        results: mpsc::Sender<wire::RestoreResult>,
    ) -> Result<(), ApiError> {
        use mailvault_proto::restore_wire as names;
        let reply = names::results_subject(job_id);
        let jobs = names::jobs_subject(source);
        // Subscribe before the first job is out, so no result can be missed.
        let mut sub = self
            .client
            .subscribe(reply.clone())
            .await
            .map_err(|e| unavailable("subscribing to restore results", e))?;
        let (mut sent, mut received, mut feeding) = (0u64, 0u64, true);
        // A redelivered job can be answered twice; each item counts once.
        let mut answered = std::collections::HashSet::new();
        loop {
            if !feeding && received >= sent {
                return Ok(());
            }
            tokio::select! {
                it = items.recv(), if feeding => match it {
                    Some((mut item, body)) => {
                        item.reply_subject = reply.clone();
                        item.size = body.len() as u64;
                        if body.len() > self.inline_limit {
                            let name = names::body_object_name(job_id, item.seq);
                            let mut reader: &[u8] = &body;
                            self.objects
                                .put(name.as_str(), &mut reader)
                                .await
                                .map_err(|e| unavailable(&format!("storing restore body {name}"), e))?;
                            item.body = Some(wire::restore_item::Body::Object(
                                mailvault_proto::ingest::v1::ObjectRef {
                                    bucket: names::BODY_BUCKET.into(),
                                    name,
                                    size: body.len() as u64,
                                },
                            ));
                        } else {
                            item.body = Some(wire::restore_item::Body::Inline(body));
                        }
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(names::MSG_ID_HEADER, names::job_msg_id(job_id, item.seq).as_str());
                        self.js
                            .publish_with_headers(jobs.clone(), headers, item.encode_to_vec().into())
                            .await
                            .map_err(|e| unavailable("publishing restore job", e))?
                            .await
                            .map_err(|e| unavailable("restore job not stored", e))?;
                        sent += 1;
                    }
                    None => feeding = false,
                },
                msg = tokio::time::timeout(self.idle_timeout, sub.next()), if received < sent || !feeding => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return Err(ApiError::Unavailable("restore results subscription closed".into())),
                        Err(_) => return Err(ApiError::Unavailable(format!(
                            "collector {source:?} sent no restore result for {:?} ({received} of {sent} items answered)",
                            self.idle_timeout
                        ))),
                    };
                    let r = wire::RestoreResult::decode(msg.payload.as_ref())
                        .map_err(|e| ApiError::Internal(format!("undecodable restore result on {reply}: {e}")))?;
                    if r.job_id != job_id || !answered.insert(r.seq) {
                        continue;
                    }
                    received += 1;
                    if results.send(r).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
