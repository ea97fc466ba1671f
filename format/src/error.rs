//! Errors of the format library. Each names the object or item it concerns and the cause.

use crate::store::{StoreError, StoreErrorKind};

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Storage trouble that may pass: retry later (and do not acknowledge upstream).
    Retryable,
    /// Stored bytes fail authentication or do not parse: damage or tampering.
    Corrupt,
    NotFound,
    /// No key object opens with the given passphrase.
    Auth,
    /// A request that can never succeed as made.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{object} is damaged: {cause}")]
    Corrupt { object: String, cause: String },
    #[error("wrong passphrase: none of the {keys} key object(s) opens with it")]
    WrongPassphrase { keys: usize },
    #[error("no key objects found: is this a mailvault repository? (run `mailvault init`)")]
    NoKeys,
    #[error("a repository already exists here (object `config` found)")]
    AlreadyInitialized,
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Invalid(String),
}

impl FormatError {
    pub fn corrupt(object: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        FormatError::Corrupt {
            object: object.into(),
            cause: cause.to_string(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            FormatError::Store(e) => match e.kind() {
                StoreErrorKind::Transient => ErrorKind::Retryable,
                StoreErrorKind::NotFound => ErrorKind::NotFound,
                StoreErrorKind::Permanent => ErrorKind::Permanent,
            },
            FormatError::Corrupt { .. } => ErrorKind::Corrupt,
            FormatError::WrongPassphrase { .. } | FormatError::NoKeys => ErrorKind::Auth,
            FormatError::NotFound { .. } => ErrorKind::NotFound,
            FormatError::AlreadyInitialized | FormatError::Invalid(_) => ErrorKind::Permanent,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
