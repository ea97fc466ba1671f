//! Protobuf contracts of mailvault, generated at build time from `proto/mailvault/**.proto`.
//!
//! Packages are versioned (`.v1`); changes within a version are additive only, so every stored
//! record and every message on the wire stays readable by newer code.

#![allow(missing_debug_implementations, clippy::all)]

/// Records stored (encrypted) in the repository: pack headers, index files, item manifests,
/// repository config, key objects.
pub mod storage {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.storage.v1.rs"));
    }
}

/// Messages the collector publishes to JetStream.
pub mod ingest {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.ingest.v1.rs"));
    }
}

/// Events the aggregator publishes after an item is durable.
pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.events.v1.rs"));
    }
}

/// The gRPC API served by the indexer (feature `api`).
#[cfg(feature = "api")]
pub mod api {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailvault.api.v1.rs"));

        /// Encoded file descriptor set of the API, for gRPC reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/mailvault.api.v1.bin"));
    }
}
