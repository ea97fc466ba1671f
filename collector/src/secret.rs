//! Secrets read from files, never printed.

use std::fmt;
use std::sync::Arc;

/// A secret string whose `Debug`/`Display` are redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(Arc::from(s.into()))
    }

    /// The secret value; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file, trimming one trailing newline.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let raw = mailvault_runtime::secret_file::read_secret_file(path)?;
        let s = String::from_utf8(raw)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(Self::new(s.trim_end_matches(['\r', '\n'])))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
