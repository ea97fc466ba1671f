//! The mailvault repository format: everything about how mail is stored, and nothing about
//! where it comes from or how it travels. Storage I/O goes through [`BlobStore`].
//!
//! The byte-level specification is `docs/format.md`. In short: items are cut into chunks
//! ([`chunker`], MIME-aware then FastCDC), each chunk is named by a keyed BLAKE3 hash
//! ([`crypto::Keys::chunk_id`]), compressed with zstd ([`compress`]), sealed with
//! AES-256-GCM-SIV and appended to a pack ([`pack`]); index objects locate blobs in packs
//! ([`index`]); one manifest blob per item version lists its chunks; key objects wrap the
//! master secret with argon2id ([`keys`]).
//!
//! ```no_run
//! # async fn demo() -> mailvault_format::Result<()> {
//! use std::sync::Arc;
//! use mailvault_format::{ItemManifest, MemoryStore, Repository, InitOptions};
//! let store = Arc::new(MemoryStore::new());
//! let repo = Repository::init(store, b"passphrase", InitOptions::default()).await?;
//! let mut w = repo.writer()?;
//! let meta = ItemManifest { mailbox: "a@example.org".into(), item_id: "AAMk1".into(), change_key: "CQAA1".into(), ..Default::default() };
//! w.add_item(meta, b"Subject: hi\r\n\r\nhello\r\n")?;
//! let durable = w.flush().await?; // acknowledge upstream only now
//! let bytes = repo.read_item(&durable[0].manifest_id).await?;
//! # Ok(()) }
//! ```

pub mod chunker;
pub mod compress;
pub mod crypto;
pub mod error;
pub mod id;
pub mod index;
pub mod keys;
pub mod pack;
pub mod repo;
pub mod store;
pub mod verify;

pub use chunker::ChunkerParams;
pub use error::{ErrorKind, FormatError, Result};
pub use id::BlobId;
pub use keys::KdfParams;
pub use mailvault_proto::storage::v1::ItemManifest;
pub use pack::SealPolicy;
pub use repo::{Flush, InitOptions, ItemReceipt, Repository, WriteStats, Writer};
pub use store::{BlobStore, MemoryStore, PutOutcome, StoreError, StoreErrorKind};
pub use verify::{Problem, VerifyOptions, VerifyReport, verify};
