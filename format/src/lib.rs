//! The mailvault repository format.
pub mod store;
pub use store::{BlobStore, MemoryStore, PutOutcome, StoreError, StoreErrorKind};
