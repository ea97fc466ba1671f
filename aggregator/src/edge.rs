//! The seams between the pipeline and the outside world: a delivery with its acker, item bodies
//! kept elsewhere, and the event sink. The JetStream implementations live in [`crate::nats`];
//! tests use in-memory ones.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mailvault_proto::ingest::v1::ObjectRef;
use mailvault_runtime::otel::SpanContext;
use tokio::io::AsyncRead;

/// A failure talking to NATS (or a fake of it). Always worth retrying later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EdgeError(pub String);

impl EdgeError {
    pub fn new(what: &str, e: impl std::fmt::Display) -> Self {
        EdgeError(format!("{what}: {e}"))
    }
}

/// How the pipeline settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync + std::fmt::Debug {
    /// Done: the item is durable downstream.
    async fn ack(&self) -> Result<(), EdgeError>;
    /// Not now: redeliver after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), EdgeError>;
    /// Never: stop redelivering (poison; a quarantine record was published first).
    async fn term(&self) -> Result<(), EdgeError>;
    /// Still working: extend the ack deadline.
    async fn progress(&self) -> Result<(), EdgeError>;
}

/// One message handed to the pipeline.
#[derive(Debug)]
pub struct Delivery {
    /// The message; the pipeline takes it when it decodes the delivery (what stays held until
    /// the commit is only what is needed to settle it).
    pub payload: Bytes,
    /// 1 on first delivery.
    pub attempt: u64,
    /// Stable id of the message (stream sequence): names its quarantine record.
    pub id: String,
    /// The span that published it (its `traceparent` header), if it named a valid one.
    pub trace: Option<SpanContext>,
    pub acker: Box<dyn Acker>,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body object does not exist: retrying will not help.
    #[error("body object {0} not found")]
    NotFound(String),
    #[error("reading body object: {0}")]
    Unavailable(String),
}

/// A streamed body.
pub type BodyReader = Box<dyn AsyncRead + Send + Unpin>;

/// Where bodies too large for a message live (the JetStream Object Store).
#[async_trait]
pub trait Bodies: Send + Sync + std::fmt::Debug {
    async fn open(&self, r: &ObjectRef) -> Result<BodyReader, BodyError>;
    async fn delete(&self, r: &ObjectRef) -> Result<(), BodyError>;
}

/// One event to publish, de-duplicated downstream by `msg_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
    /// W3C `traceparent` header: the span that made it (the commit of its batch).
    pub traceparent: Option<String>,
}

/// Publishes events; returns once the stream has stored every one of them.
#[async_trait]
pub trait EventSink: Send + Sync + std::fmt::Debug {
    async fn publish(&self, events: Vec<Event>) -> Result<(), EdgeError>;
}
