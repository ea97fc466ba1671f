//! Shared service runtime: configuration loading, telemetry, and the directory and S3
//! [`BlobStore`](mailvault_format::store::BlobStore) implementations.

pub mod bus;
pub mod config;
pub mod handoff;
pub mod metrics;
pub mod nats;
pub mod otel;
pub mod plaintext;
pub mod secret_file;
pub mod shutdown;
pub mod storage;
