//! Reads Exchange over EWS and publishes items to JetStream.
//!
//! Stages, each testable without a network: [`ews`] (SOAP requests, namespace-aware streaming
//! parsers, the HTTP client), [`throttle`] (concurrency limits and back-off), [`sync`] (the
//! incremental engine over the `Ews`/`Publisher`/`CheckpointStore` traits), [`pack`] (small
//! messages packed into one), [`nats`] (the JetStream publisher and KV checkpoint store), [`config`].

pub mod checkpoint_file;
pub mod config;
pub mod ews;
pub mod filter;
pub mod metrics;
pub mod nats;
pub mod pack;
pub mod restore;
pub mod restore_nats;
pub mod secret;
pub mod sync;
pub mod throttle;

mod run;

pub use run::{RunMode, RunSummary, run, run_once, run_with_metrics};
