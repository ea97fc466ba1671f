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
