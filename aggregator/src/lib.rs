//! The aggregator: a stateless JetStream consumer that stores collected items in the
//! repository. Run N replicas; they share one durable pull consumer.
//!
//! Layers, outside in: [`nats`] (the JetStream edge: consumer, acker, Object Store bodies,
//! event publisher) → [`pipeline`] (decode → writer on the blocking pool → batch → flush →
//! publish → ack; no NATS in it) → `mailvault_format::Writer`. [`run`] wires them up.

pub mod bus;
pub mod config;
pub mod edge;
pub mod metrics;
pub mod nats;
pub mod pipeline;
pub mod worker;

pub use config::Config;
pub use metrics::Metrics;
pub use nats::{RunReport, run, run_with_metrics, run_with_store};
pub use pipeline::{BatchPolicy, Pipeline, PipelineConfig};
pub use worker::{Source, WorkerLimits, run_worker};
