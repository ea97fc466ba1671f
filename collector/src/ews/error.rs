//! Typed EWS errors. `kind()` drives retry decisions in the client and the sync engine.

use std::fmt;
use std::time::Duration;

/// Where an error happened, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorContext {
    pub operation: &'static str,
    pub mailbox: Option<String>,
    pub folder: Option<String>,
    pub item: Option<String>,
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            if self.operation.is_empty() {
                "EWS"
            } else {
                self.operation
            }
        )?;
        if let Some(m) = &self.mailbox {
            write!(f, " mailbox={m}")?;
        }
        if let Some(x) = &self.folder {
            write!(f, " folder={x}")?;
        }
        if let Some(x) = &self.item {
            write!(f, " item={x}")?;
        }
        Ok(())
    }
}

/// Coarse classes of [`EwsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Server asked us to slow down (`ErrorServerBusy`, HTTP 503/429). Retry after the back-off.
    Throttled,
    /// `ErrorInvalidSyncStateData`: the folder must be resynchronised from scratch.
    InvalidSyncState,
    /// The item or folder does not exist (any more).
    ItemNotFound,
    /// The service account may not read this mailbox, folder or item.
    AccessDenied,
    /// Network trouble or a transient server condition; retry with back-off.
    Transient,
    /// The request cannot succeed as sent.
    Permanent,
    /// The server answered something we cannot parse.
    MalformedResponse,
}

impl ErrorKind {
    /// Whether the same request may succeed when retried.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Transient)
    }

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::InvalidSyncState => "invalid_sync_state",
            Self::ItemNotFound => "item_not_found",
            Self::AccessDenied => "access_denied",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::MalformedResponse => "malformed_response",
        }
    }
}

/// An EWS failure, naming the mailbox/folder/item where known.
#[derive(Debug, thiserror::Error)]
pub enum EwsError {
    #[error("{context}: throttled by server ({code}), back off {back_off:?}")]
    Throttled {
        back_off: Option<Duration>,
        code: String,
        context: Box<ErrorContext>,
    },
    #[error("{context}: invalid sync state ({message})")]
    InvalidSyncState {
        message: String,
        context: Box<ErrorContext>,
    },
    #[error("{context}: not found ({code}: {message})")]
    ItemNotFound {
        code: String,
        message: String,
        context: Box<ErrorContext>,
    },
    #[error("{context}: access denied ({code}: {message})")]
    AccessDenied {
        code: String,
        message: String,
        context: Box<ErrorContext>,
    },
    #[error("{context}: transient failure: {message}")]
    Transient {
        message: String,
        context: Box<ErrorContext>,
    },
    #[error("{context}: request failed ({code}: {message})")]
    Permanent {
        code: String,
        message: String,
        context: Box<ErrorContext>,
    },
    #[error("{context}: malformed response: {message}")]
    MalformedResponse {
        message: String,
        context: Box<ErrorContext>,
    },
}

impl EwsError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Throttled { .. } => ErrorKind::Throttled,
            Self::InvalidSyncState { .. } => ErrorKind::InvalidSyncState,
            Self::ItemNotFound { .. } => ErrorKind::ItemNotFound,
            Self::AccessDenied { .. } => ErrorKind::AccessDenied,
            Self::Transient { .. } => ErrorKind::Transient,
            Self::Permanent { .. } => ErrorKind::Permanent,
            Self::MalformedResponse { .. } => ErrorKind::MalformedResponse,
        }
    }

    /// The back-off the server asked for, if any.
    pub fn back_off(&self) -> Option<Duration> {
        match self {
            Self::Throttled { back_off, .. } => *back_off,
            _ => None,
        }
    }

    pub fn context_mut(&mut self) -> &mut ErrorContext {
        match self {
            Self::Throttled { context, .. }
            | Self::InvalidSyncState { context, .. }
            | Self::ItemNotFound { context, .. }
            | Self::AccessDenied { context, .. }
            | Self::Transient { context, .. }
            | Self::Permanent { context, .. }
            | Self::MalformedResponse { context, .. } => context.as_mut(),
        }
    }

    pub fn context(&self) -> &ErrorContext {
        match self {
            Self::Throttled { context, .. }
            | Self::InvalidSyncState { context, .. }
            | Self::ItemNotFound { context, .. }
            | Self::AccessDenied { context, .. }
            | Self::Transient { context, .. }
            | Self::Permanent { context, .. }
            | Self::MalformedResponse { context, .. } => context.as_ref(),
        }
    }

    /// Fills in context fields that are still unknown.
    #[must_use]
    pub fn with_context(mut self, ctx: &ErrorContext) -> Self {
        let c = self.context_mut();
        if c.operation.is_empty() {
            c.operation = ctx.operation;
        }
        if c.mailbox.is_none() {
            c.mailbox.clone_from(&ctx.mailbox);
        }
        if c.folder.is_none() {
            c.folder.clone_from(&ctx.folder);
        }
        if c.item.is_none() {
            c.item.clone_from(&ctx.item);
        }
        self
    }

    /// Maps an EWS `ResponseCode` to a typed error.
    pub fn from_response_code(
        code: &str,
        message: &str,
        back_off: Option<Duration>,
        context: ErrorContext,
    ) -> Self {
        let context = Box::new(context);
        let code_s = code.to_owned();
        let message = message.to_owned();
        match code {
            "ErrorServerBusy"
            | "ErrorExceededConnectionCount"
            | "ErrorTooManyObjectsOpened"
            | "ErrorExceededSubscriptionCount" => Self::Throttled {
                back_off,
                code: code_s,
                context,
            },
            "ErrorInvalidSyncStateData" | "ErrorInvalidSyncStateDataException" => {
                Self::InvalidSyncState { message, context }
            }
            "ErrorItemNotFound" | "ErrorFolderNotFound" | "ErrorMessageNotFound" => {
                Self::ItemNotFound {
                    code: code_s,
                    message,
                    context,
                }
            }
            "ErrorAccessDenied"
            | "ErrorImpersonateUserDenied"
            | "ErrorImpersonationDenied"
            | "ErrorImpersonationFailed"
            | "ErrorNonExistentMailbox"
            | "ErrorMailboxConfiguration"
            | "ErrorAccountDisabled"
            | "ErrorPasswordExpired" => Self::AccessDenied {
                code: code_s,
                message,
                context,
            },
            "ErrorMailboxStoreUnavailable"
            | "ErrorMailboxMoveInProgress"
            | "ErrorInternalServerTransientError"
            | "ErrorConnectionFailed"
            | "ErrorTimeoutExpired"
            | "ErrorADUnavailable"
            | "ErrorMailboxFailover"
            | "ErrorRequestTimeout"
            | "ErrorBatchProcessingStopped" => Self::Transient {
                message: format!("{code}: {message}"),
                context,
            },
            _ => Self::Permanent {
                code: code_s,
                message,
                context,
            },
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::MalformedResponse {
            message: message.into(),
            context: Box::default(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            context: Box::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let c = ErrorContext::default;
        let k = |code| EwsError::from_response_code(code, "", None, c()).kind();
        assert_eq!(k("ErrorServerBusy"), ErrorKind::Throttled);
        assert_eq!(k("ErrorInvalidSyncStateData"), ErrorKind::InvalidSyncState);
        assert_eq!(k("ErrorItemNotFound"), ErrorKind::ItemNotFound);
        assert_eq!(k("ErrorAccessDenied"), ErrorKind::AccessDenied);
        assert_eq!(k("ErrorMailboxStoreUnavailable"), ErrorKind::Transient);
        assert_eq!(k("ErrorSchemaValidation"), ErrorKind::Permanent);
    }

    #[test]
    fn display_names_the_context() {
        let e = EwsError::from_response_code(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
            None,
            ErrorContext {
                operation: "GetItem",
                mailbox: Some("alice@example.com".into()),
                folder: Some("inbox".into()),
                item: Some("AAMk1".into()),
            },
        );
        let s = e.to_string();
        assert!(s.contains("alice@example.com") && s.contains("AAMk1") && s.contains("GetItem"));
    }
}
