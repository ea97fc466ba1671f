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

/// Makes ring rustls' process-wide crypto provider. A workspace build enables two (ring here,
/// aws-lc-rs through tonic), and rustls then refuses to pick one and panics at the first TLS
/// connection or handshake. Idempotent: an error only means a provider is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
