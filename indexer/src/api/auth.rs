//! Who is calling and what they may touch: bearer tokens mapped to roles.
//!
//! Tokens are never stored: the token file holds their BLAKE3 hashes, so reading it does not
//! let anyone call the API. Roles:
//! - `admin`: everything;
//! - `operator`: search, get, restore and export in every mailbox;
//! - `auditor`: search and get in every mailbox, never restore or export;
//! - `user`: only their own mailbox, including journal copies addressed to them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::Scope;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Auditor,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::User => "user",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The caller's own mailbox (lower-cased); required for `user`.
    pub mailbox: Option<String>,
}

impl Principal {
    /// The local operator of a single-process install: the person holding the repository
    /// passphrase can read everything anyway.
    pub fn local_admin() -> Principal {
        Principal {
            name: "local".into(),
            role: Role::Admin,
            mailbox: None,
        }
    }

    /// What this caller's searches are limited to.
    pub fn scope(&self) -> Scope {
        match (self.role, &self.mailbox) {
            (Role::User, Some(m)) => Scope::User(m.clone()),
            // A user without a mailbox sees nothing: scope to an address no mail can have.
            (Role::User, None) => Scope::User(String::from("\u{0}")),
            _ => Scope::All,
        }
    }

    /// Whether the caller may read `mailbox` as a whole (list its folders, restore it).
    pub fn owns_or_admin(&self, mailbox: &str) -> bool {
        match self.role {
            Role::User => self
                .mailbox
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(mailbox)),
            _ => true,
        }
    }

    /// Whether an indexed item (in `mailbox`, visible to `visible_to`) is the caller's.
    pub fn may_read_item(&self, mailbox: &str, visible_to: &[String]) -> bool {
        match self.role {
            Role::User => self.mailbox.as_deref().is_some_and(|m| {
                m.eq_ignore_ascii_case(mailbox)
                    || visible_to.iter().any(|v| v.eq_ignore_ascii_case(m))
            }),
            _ => true,
        }
    }

    /// Restore and export write or carry mail out; auditors only look.
    pub fn may_restore_or_export(&self) -> bool {
        !matches!(self.role, Role::Auditor)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path}: {cause}")]
    Invalid { path: String, cause: String },
}

/// One entry of the token file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// `blake3:<64 hex>` of the token.
    pub hash: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.as_bytes()).to_hex())
}

/// A new random token (256 bits, URL-safe).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("mvt_{}", hex::encode(bytes))
}

impl Tokens {
    pub fn parse(text: &str, path: &str) -> Result<Tokens, TokenError> {
        let t: Tokens = toml::from_str(text).map_err(|e| TokenError::Invalid {
            path: path.into(),
            cause: e.to_string(),
        })?;
        for e in &t.tokens {
            let bad = |cause: String| TokenError::Invalid {
                path: path.into(),
                cause: format!("token {:?}: {cause}", e.name),
            };
            let Some(hex) = e.hash.strip_prefix("blake3:") else {
                return Err(bad("hash must be `blake3:<64 hex>`".into()));
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("hash must be `blake3:<64 hex>`".into()));
            }
            if e.role == Role::User && e.mailbox.as_deref().is_none_or(str::is_empty) {
                return Err(bad("role `user` needs `mailbox`".into()));
            }
        }
        Ok(t)
    }

    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// Adds a token and returns it (the only time it is seen in clear).
    pub fn issue(&mut self, name: &str, role: Role, mailbox: Option<&str>) -> String {
        let token = new_token();
        self.tokens.push(TokenEntry {
            name: name.into(),
            role,
            mailbox: mailbox.map(str::to_ascii_lowercase),
            hash: hash_token(&token),
        });
        token
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The principal a bearer token belongs to. Compares every entry in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let want = hash_token(token);
        let mut found = None;
        for e in &self.tokens {
            if bool::from(e.hash.as_bytes().ct_eq(want.as_bytes())) {
                found = Some(Principal {
                    name: e.name.clone(),
                    role: e.role,
                    mailbox: e.mailbox.as_ref().map(|m| m.to_ascii_lowercase()),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_authenticate_and_others_do_not() {
        let mut t = Tokens::default();
        let admin = t.issue("root", Role::Admin, None);
        let alice = t.issue("alice", Role::User, Some("Alice@Contoso.com"));
        let text = t.to_toml();
        assert!(!text.contains(&admin), "the token file holds hashes only");
        let t = Tokens::parse(&text, "tokens.toml").expect("parse");
        assert_eq!(t.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
        let p = t.authenticate(&alice).expect("alice");
        assert_eq!(p.mailbox.as_deref(), Some("alice@contoso.com"));
        assert!(t.authenticate("mvt_wrong").is_none());
        assert!(p.may_read_item("alice@contoso.com", &[]));
        assert!(!p.may_read_item("bob@contoso.com", &[]));
        assert!(p.may_read_item("journal@contoso.com", &["alice@contoso.com".into()]));
        assert!(!p.owns_or_admin("bob@contoso.com"));
    }

    #[test]
    fn user_tokens_need_a_mailbox_and_hashes_are_checked() {
        let err = Tokens::parse(
            "[[tokens]]\nname='x'\nrole='user'\nhash='blake3:00'\n",
            "t.toml",
        )
        .expect_err("short hash");
        assert!(err.to_string().contains("blake3:<64 hex>"), "{err}");
        let h = hash_token("x");
        let err = Tokens::parse(
            &format!("[[tokens]]\nname='x'\nrole='user'\nhash='{h}'\n"),
            "t.toml",
        )
        .expect_err("no mailbox");
        assert!(err.to_string().contains("needs `mailbox`"), "{err}");
    }

    #[test]
    fn auditors_never_restore_or_export() {
        let p = Principal {
            name: "a".into(),
            role: Role::Auditor,
            mailbox: None,
        };
        assert!(!p.may_restore_or_export());
        assert!(Principal::local_admin().may_restore_or_export());
    }
}
