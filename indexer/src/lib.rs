//! The mailvault indexer core: turns stored item versions and item-history records into a
//! local tantivy index with as-of (point in time) search, journal-report unwrapping and
//! per-user visibility, and consumes the aggregator's events from JetStream.
//!
//! Modules, by what they own:
//! * [`extract`] — MIME → document fields (mail-parser).
//! * [`journal`] — Exchange envelope journal reports → the original message, `visible_to`.
//! * [`history`] — an item's versions and changes over time → validity segments.
//! * [`index`] — the tantivy index: [`Index`] (open, apply, commit, search, browse).
//! * [`query`] — the search language → tantivy queries.
//! * [`order`] — the search order (newest first, ties by manifest id) as a collector.
//! * [`stage`] — [`Indexer`] (events + repository → index), [`reindex`] and [`catch_up`].
//! * [`applied`] — which repository records the index holds (what [`catch_up`] compares).
//! * [`config`] — the service configuration of the `mailvault-indexer` binary.
//! * [`consume`] — the JetStream edge (durable pull consumer, ack after commit).
//! * [`service`] — the `mailvault-indexer` service wired up (what the binary runs).
//! * [`metrics`] — the counters served at `/metrics`.
//! * [`api`] — the gRPC API served next to the index: auth, audit, search, get, restore, export.
//!
//! See `docs/indexer.md`.

pub mod api;
pub mod applied;
pub mod config;
pub mod consume;
pub mod error;
pub mod extract;
pub mod history;
pub mod index;
pub mod journal;
pub mod metrics;
pub(crate) mod order;
pub mod query;
pub mod service;
pub mod stage;

pub use error::IndexError;
pub use history::{ChangeInput, ChangeKind, ItemStoredInput};
pub use index::{FolderInfo, Hit, Index, MailboxInfo, Scope, SearchOptions, SearchPage};
pub use metrics::Metrics;
pub use stage::{Indexer, ReindexReport, catch_up, reindex, reindex_with};
