//! Who is calling and what they may touch: bearer tokens mapped to roles.
//!
//! Tokens are never stored: the token file holds their BLAKE3 hashes, so reading it does not
//! let anyone call the API. Roles:
//! - `admin`: everything;
//! - `operator`: search, get, restore and export in every mailbox;
//! - `auditor`: search and get in every mailbox, never restore or export;
//! - `user`: only their own mailbox, including journal copies addressed to them.
//!
//! A token may expire (`expires_unix`); revoking one is removing its entry. The server reads
//! the file again when it changes ([`TokenFile`]), so neither needs a restart. The file is
//! replaced atomically and kept `0600`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Where the call came from (`ip:port`), for the audit log; empty in-process.
    pub peer: String,
}

impl Principal {
    /// The same caller, calling from `peer`.
    pub fn from_peer(mut self, peer: String) -> Principal {
        self.peer = peer;
        self
    }

    /// The local operator of a single-process install: the person holding the repository
    /// passphrase can read everything anyway.
    pub fn local_admin() -> Principal {
        Principal {
            peer: String::new(),
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
    #[error("writing token file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
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
    /// When it was issued (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_unix: Option<i64>,
    /// From this moment on (unix seconds) the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<i64>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
        self.issue_expiring(name, role, mailbox, None)
    }

    /// Adds a token that is refused once `valid_for` has passed (never, with `None`).
    pub fn issue_expiring(
        &mut self,
        name: &str,
        role: Role,
        mailbox: Option<&str>,
        valid_for: Option<Duration>,
    ) -> String {
        let token = new_token();
        let now = now_unix();
        self.tokens.push(TokenEntry {
            name: name.into(),
            role,
            mailbox: mailbox.map(str::to_ascii_lowercase),
            hash: hash_token(&token),
            created_unix: Some(now),
            expires_unix: valid_for
                .map(|d| now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        });
        token
    }

    /// Removes every token named `name`; returns how many there were.
    pub fn revoke(&mut self, name: &str) -> usize {
        let before = self.tokens.len();
        self.tokens.retain(|e| e.name != name);
        before - self.tokens.len()
    }

    /// Writes the file atomically (a new file, synced, renamed over the old one), mode `0600`:
    /// a server reading it meanwhile sees the old or the new list, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        use std::io::Write as _;
        let werr = |source| TokenError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokens".into());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let write = || -> std::io::Result<()> {
            let mut f = opts.open(&tmp)?;
            f.write_all(self.to_toml().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // The rename is durable once the directory is.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The principal a bearer token belongs to, unless it expired. Compares every entry in
    /// constant time.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.authenticate_at(token, now_unix())
    }

    fn authenticate_at(&self, token: &str, now: i64) -> Option<Principal> {
        let want = hash_token(token);
        let mut found = None;
        for e in &self.tokens {
            if bool::from(e.hash.as_bytes().ct_eq(want.as_bytes()))
                && e.expires_unix.is_none_or(|t| now < t)
            {
                found = Some(Principal {
                    peer: String::new(),
                    name: e.name.clone(),
                    role: e.role,
                    mailbox: e.mailbox.as_ref().map(|m| m.to_ascii_lowercase()),
                });
            }
        }
        found
    }
}

/// The token file as a running server sees it: read again whenever it changes on disk, so an
/// issued token works and a revoked or expired one stops working without a restart. A file
/// that fails to load keeps the last good list in force (and says so in the log).
#[derive(Debug, Clone)]
pub struct TokenFile {
    current: Arc<RwLock<Arc<Tokens>>>,
}

impl TokenFile {
    /// A fixed list, never reloaded (tests, the single-process CLI).
    pub fn fixed(tokens: Tokens) -> TokenFile {
        TokenFile {
            current: Arc::new(RwLock::new(Arc::new(tokens))),
        }
    }

    /// Loads `path` and checks it for changes every `every` until `stop` is cancelled.
    pub fn watch(
        path: &Path,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<TokenFile, TokenError> {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        // Taken before the load: a change in between is seen on the first check.
        let mut seen = stamp(path);
        let file = TokenFile::fixed(Tokens::load(path)?);
        let path: PathBuf = path.to_owned();
        let current = file.current.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                match Tokens::load(&path) {
                    Ok(t) => {
                        tracing::info!(file = %path.display(), tokens = t.tokens.len(), "token file reloaded");
                        *current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(t);
                        seen = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token file changed but does not load; the previous tokens stay in force");
                        seen = now;
                    }
                }
            }
        });
        Ok(file)
    }

    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .authenticate(token)
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
    fn expired_and_revoked_tokens_are_refused_and_the_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let mut t = Tokens::default();
        let short = t.issue_expiring("short", Role::Operator, None, Some(Duration::from_secs(60)));
        let keep = t.issue("keep", Role::Auditor, None);
        let now = now_unix();
        assert!(t.authenticate_at(&short, now).is_some());
        assert!(t.authenticate_at(&short, now + 61).is_none(), "expired");
        t.save(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut loaded = Tokens::load(&path).expect("load");
        assert_eq!(loaded.tokens[0].expires_unix, t.tokens[0].expires_unix);
        assert_eq!(loaded.revoke("short"), 1);
        assert_eq!(loaded.revoke("short"), 0);
        loaded.save(&path).expect("save again");
        let loaded = Tokens::load(&path).expect("load");
        assert!(loaded.authenticate(&short).is_none(), "revoked");
        assert!(loaded.authenticate(&keep).is_some());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[tokio::test]
    async fn a_watched_file_takes_effect_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let mut t = Tokens::default();
        let a = t.issue("a", Role::Admin, None);
        t.save(&path).expect("save");
        let stop = tokio_util::sync::CancellationToken::new();
        let file = TokenFile::watch(&path, Duration::from_millis(20), stop.clone()).expect("watch");
        assert!(file.authenticate(&a).is_some());
        t.revoke("a");
        let b = t.issue("b-longer-name", Role::Admin, None);
        t.save(&path).expect("save");
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while file.authenticate(&b).is_none() {
            assert!(std::time::Instant::now() < end, "new token never accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            file.authenticate(&a).is_none(),
            "revoked token still accepted"
        );
        // A broken file keeps the last good list.
        std::fs::write(&path, "not = [valid").expect("break");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(file.authenticate(&b).is_some());
        stop.cancel();
    }

    #[test]
    fn auditors_never_restore_or_export() {
        let p = Principal {
            peer: String::new(),
            name: "a".into(),
            role: Role::Auditor,
            mailbox: None,
        };
        assert!(!p.may_restore_or_export());
        assert!(Principal::local_admin().may_restore_or_export());
    }
}
