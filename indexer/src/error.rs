//! Typed errors: each names the item or the input and the cause.

use crate::query::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("opening index at {dir}: {cause}")]
    Open { dir: String, cause: String },
    #[error("tantivy, while {what}: {source}")]
    Tantivy {
        what: String,
        #[source]
        source: tantivy::TantivyError,
    },
    #[error("stored record of item {item} is unreadable: {cause}")]
    Record { item: String, cause: String },
    #[error("query: {0}")]
    Query(#[from] QueryError),
    #[error("bad manifest id {0:?}: not 64 hex digits")]
    BadManifestId(String),
    #[error("repository, reading {what}: {source}")]
    Repository {
        what: String,
        #[source]
        source: mailvault_format::FormatError,
    },
    #[error("unknown change kind {kind:?} for item {item}")]
    ChangeKind { item: String, kind: String },
    #[error("history record {record} has an undecodable ItemChange: {cause}")]
    HistoryRecord { record: String, cause: String },
    #[error("recording what the index applied in {path}: {cause}")]
    Applied { path: String, cause: String },
    #[error("item {item}: the body of version {manifest} is needed to rewrite it: {cause}")]
    BodyUnavailable {
        item: String,
        manifest: String,
        cause: String,
    },
    #[error("index writer lock poisoned")]
    Poisoned,
    #[error("blocking task failed: {0}")]
    Join(String),
}

impl IndexError {
    pub(crate) fn tantivy(what: impl Into<String>) -> impl FnOnce(tantivy::TantivyError) -> Self {
        let what = what.into();
        move |source| IndexError::Tantivy { what, source }
    }

    /// Worth retrying later (the repository may not see a new object yet, storage hiccup).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IndexError::Repository { .. }
                | IndexError::Tantivy { .. }
                | IndexError::BodyUnavailable { .. }
        )
    }
}
