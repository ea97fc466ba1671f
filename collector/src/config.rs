//! Collector configuration: TOML, strict (`deny_unknown_fields`), defaults for everything but the
//! endpoints, secrets by file reference, validated at startup with every problem reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ews::client::EwsAuth;
use crate::filter::{Filter, Filters};

/// Top-level configuration (`collector.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this collector instance, carried in every message (`source`).
    #[serde(default = "default_source")]
    pub source: String,
    pub ews: EwsConfig,
    /// Mailboxes to collect (SMTP addresses).
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// CSV file with one mailbox per line (first column; `#` comments and a header line
    /// starting with `mailbox`/`smtp`/`email` are ignored).
    #[serde(default)]
    pub mailboxes_csv: Option<PathBuf>,
    /// Collect public folders, reached through this mailbox (impersonated / anchor mailbox).
    #[serde(default)]
    pub public_folders_via: Option<String>,
    #[serde(default)]
    pub filters: FilterConfig,
    #[serde(default)]
    pub limits: Limits,
    pub nats: NatsConfig,
    #[serde(default)]
    pub restore: RestoreSettings,
    /// `[metrics] listen = "127.0.0.1:9464"`: serve `/metrics` and `/healthz` there (off when
    /// absent).
    #[serde(default)]
    pub metrics: mailvault_runtime::metrics::MetricsConfig,
    /// `[telemetry] otlp_endpoint = "http://otel-collector:4318"`: push spans and metrics over
    /// OTLP (off when absent).
    #[serde(default)]
    pub telemetry: mailvault_runtime::otel::TelemetryConfig,
}

/// Restore jobs (docs/wire.md, "Restore jobs"): served while the collector runs as a daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSettings {
    /// Consume `mailvault.restore.jobs.<source>` and write restores into Exchange.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for RestoreSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn default_source() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "collector".into())
}

/// EWS endpoint and credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EwsConfig {
    /// `https://<server>/EWS/Exchange.asmx`
    pub url: String,
    /// `DOMAIN\user`, `user@domain` or `user`.
    pub username: String,
    /// File holding the password (never the password itself).
    pub password_file: PathBuf,
    /// `ntlm` (default: Windows authentication, what Exchange's EWS virtual directory has on
    /// out of the box) or `basic` (must be enabled on the virtual directory; HTTPS only).
    #[serde(default)]
    pub auth: EwsAuth,
    /// Send ExchangeImpersonation (service account with ApplicationImpersonation).
    #[serde(default = "yes")]
    pub impersonation: bool,
    #[serde(default = "default_version")]
    pub server_version: String,
    /// Extra PEM CA bundle to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate. Labs only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default = "default_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Also sync folders outside the IPM subtree.
    #[serde(default)]
    pub include_non_ipm: bool,
    /// Also collect each mailbox's in-place archive (below `archivemsgfolderroot`).
    #[serde(default)]
    pub include_archives: bool,
    /// Accept `http://` to a server off this machine (the password or NTLM exchange and every
    /// mail in clear on the network).
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn yes() -> bool {
    true
}
fn default_version() -> String {
    "Exchange2013_SP1".into()
}
fn default_timeout_secs() -> u64 {
    300
}

/// Include/exclude glob lists (`*` wildcard, case-insensitive).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub include_mailboxes: Vec<String>,
    #[serde(default)]
    pub exclude_mailboxes: Vec<String>,
    /// Folder paths below the mailbox root, e.g. `Inbox/Projects*`.
    #[serde(default)]
    pub include_folders: Vec<String>,
    #[serde(default)]
    pub exclude_folders: Vec<String>,
    /// Item classes, e.g. `IPM.Note*`.
    #[serde(default)]
    pub include_item_classes: Vec<String>,
    #[serde(default)]
    pub exclude_item_classes: Vec<String>,
}

/// Concurrency, batching and retry limits. Every field has a default; set only what differs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent EWS requests to the server (stay below EWSMaxConcurrency).
    pub per_server_concurrency: usize,
    /// Concurrent EWS requests per (impersonated) account.
    pub per_account_concurrency: usize,
    /// Mailboxes processed at once.
    pub mailbox_concurrency: usize,
    /// Folders of one mailbox synced at once (their EWS requests still share
    /// `per_account_concurrency`).
    pub folder_concurrency: usize,
    /// SyncFolderItems MaxChangesReturned (1..=512).
    pub max_changes: u32,
    /// Item ids per GetItem call.
    pub get_item_batch: usize,
    /// Server-reported item bytes per GetItem call (a batch is cut when the sum of the items'
    /// `Size` would exceed this; an item larger than this is fetched alone).
    pub get_item_max_bytes: u64,
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Bodies over this many bytes go to the JetStream object store.
    pub inline_limit_bytes: usize,
    /// Publishes awaiting their JetStream ack at once.
    pub max_in_flight_publishes: usize,
    /// Items (inline bodies) and changes of one mailbox packed into one message, at most;
    /// 1 publishes every item as a message of its own.
    pub pack_max_entries: usize,
    /// Encoded bytes of one packed message, at most (≤ 900 KiB, below NATS's 1 MiB payload).
    pub pack_max_bytes: usize,
    /// After SIGTERM the process ends within this long, also when NATS or Exchange hang
    /// (folders not yet checkpointed are read again on the next run).
    pub shutdown_deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_server_concurrency: 8,
            per_account_concurrency: 2,
            mailbox_concurrency: 4,
            folder_concurrency: 4,
            max_changes: 512,
            get_item_batch: 32,
            get_item_max_bytes: 16 * 1024 * 1024,
            max_retries: 8,
            backoff_base_ms: 500,
            backoff_max_ms: 120_000,
            inline_limit_bytes: 512 * 1024,
            max_in_flight_publishes: 256,
            pack_max_entries: 64,
            pack_max_bytes: 512 * 1024,
            shutdown_deadline_ms: 25_000,
        }
    }
}

/// NATS connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// File with this collector's NKey seed (`mailvault nats users`). Never logged.
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default = "default_kv")]
    pub kv_bucket: String,
    #[serde(default = "default_objects")]
    pub object_bucket: String,
    /// Accept `nats://` without TLS to a server off this machine.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Copies JetStream keeps of what this creates (stream, buckets): 1 on a single server,
    /// 3 on a cluster. Existing streams are never changed.
    #[serde(default = "one_replica")]
    pub replicas: usize,
}

fn one_replica() -> usize {
    1
}

fn default_stream() -> String {
    crate::nats::STREAM.into()
}
fn default_kv() -> String {
    crate::nats::KV_BUCKET.into()
}
fn default_objects() -> String {
    crate::nats::OBJECT_BUCKET.into()
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        toml::from_str(text).map_err(|e| ConfigErrors(vec![e.to_string()]))
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("reading {}: {e}", path.display())]))?;
        let cfg = Self::from_toml(&text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything that can be checked offline; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut p = Vec::new();
        if !(self.ews.url.starts_with("https://") || self.ews.url.starts_with("http://")) {
            p.push(format!(
                "ews.url must be an http(s) URL, got {:?}",
                self.ews.url
            ));
        } else if let Err(e) = mailvault_runtime::plaintext::check(
            &self.ews.url,
            "the EWS credentials and mail",
            "[ews] allow_plaintext = true",
            self.ews.allow_plaintext,
        ) {
            p.push(format!("ews.url: {e}"));
        }
        if self.ews.username.is_empty() {
            p.push("ews.username is empty".into());
        }
        if !self.ews.password_file.is_file() {
            p.push(format!(
                "ews.password_file {} is not a readable file",
                self.ews.password_file.display()
            ));
        }
        for (name, f) in [
            ("ews.ca_file", &self.ews.ca_file),
            ("nats.ca_file", &self.nats.ca_file),
            ("nats.creds_file", &self.nats.creds_file),
            ("mailboxes_csv", &self.mailboxes_csv),
        ] {
            if let Some(f) = f
                && !f.is_file()
            {
                p.push(format!("{name} {} is not a readable file", f.display()));
            }
        }
        if self.restore.enabled
            && (self.source.is_empty()
                || self
                    .source
                    .contains(|c: char| matches!(c, '.' | '*' | '>') || c.is_whitespace()))
        {
            p.push(format!(
                "source {:?} must be a NATS subject token (no '.', '*', '>', spaces) while restore.enabled: restore jobs arrive on mailvault.restore.jobs.<source>",
                self.source
            ));
        }
        if self.mailboxes.is_empty() && self.mailboxes_csv.is_none() {
            p.push("no mailboxes: set `mailboxes` or `mailboxes_csv`".into());
        }
        for m in self.mailboxes.iter().chain(&self.public_folders_via) {
            if !m.contains('@') {
                p.push(format!("mailbox {m:?} is not an SMTP address"));
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.per_server_concurrency", l.per_server_concurrency),
            ("limits.per_account_concurrency", l.per_account_concurrency),
            ("limits.mailbox_concurrency", l.mailbox_concurrency),
            ("limits.folder_concurrency", l.folder_concurrency),
            ("limits.get_item_batch", l.get_item_batch),
            ("limits.max_in_flight_publishes", l.max_in_flight_publishes),
            ("limits.pack_max_entries", l.pack_max_entries),
        ] {
            if v == 0 {
                p.push(format!("{name} must be at least 1"));
            }
        }
        if !(1..=5).contains(&self.nats.replicas) {
            p.push("nats.replicas must be 1..=5 (JetStream keeps at most 5 copies)".into());
        }
        if !(1..=512).contains(&l.max_changes) {
            p.push(format!(
                "limits.max_changes must be 1..=512, got {}",
                l.max_changes
            ));
        }
        if l.inline_limit_bytes > 900 * 1024 {
            p.push(
                "limits.inline_limit_bytes must stay below NATS's 1 MiB max payload (≤ 900 KiB)"
                    .into(),
            );
        }
        if l.pack_max_bytes > 900 * 1024 {
            p.push(
                "limits.pack_max_bytes must stay below NATS's 1 MiB max payload (≤ 900 KiB)".into(),
            );
        }
        self.metrics.problems(&mut p);
        self.telemetry.problems(&mut p);
        if l.backoff_base_ms == 0 || l.backoff_max_ms < l.backoff_base_ms {
            p.push("limits.backoff_base_ms must be > 0 and ≤ backoff_max_ms".into());
        }
        if !(self.nats.url.starts_with("nats://")
            || self.nats.url.starts_with("tls://")
            || self.nats.url.contains(':'))
        {
            p.push(format!(
                "nats.url {:?} does not look like a NATS URL",
                self.nats.url
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(p))
        }
    }

    /// The configured filters.
    pub fn filters(&self) -> Filters {
        let f = &self.filters;
        Filters {
            mailboxes: Filter::new(&f.include_mailboxes, &f.exclude_mailboxes),
            folders: Filter::new(&f.include_folders, &f.exclude_folders),
            item_classes: Filter::new(&f.include_item_classes, &f.exclude_item_classes),
        }
    }

    /// Mailboxes from the list and the CSV file, deduplicated, filtered.
    pub fn mailbox_list(&self) -> Result<Vec<String>, ConfigErrors> {
        let mut out: Vec<String> = self.mailboxes.clone();
        if let Some(path) = &self.mailboxes_csv {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigErrors(vec![format!("reading {}: {e}", path.display())]))?;
            out.extend(parse_mailbox_csv(&text));
        }
        let filters = self.filters();
        let mut seen = std::collections::HashSet::new();
        out.retain(|m| filters.mailboxes.allows(m) && seen.insert(m.to_lowercase()));
        Ok(out)
    }

    /// What one pass collects: every mailbox, its archive if configured, and public folders.
    pub fn targets(&self) -> Result<Vec<(String, crate::ews::MailboxKind)>, ConfigErrors> {
        use crate::ews::MailboxKind;
        let mut out = Vec::new();
        for m in self.mailbox_list()? {
            if self.ews.include_archives {
                out.push((m.clone(), MailboxKind::Archive));
            }
            out.push((m, MailboxKind::Primary));
        }
        if let Some(via) = &self.public_folders_via {
            out.push((via.clone(), MailboxKind::PublicFolders));
        }
        Ok(out)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.ews.request_timeout_secs.max(1))
    }
}

/// First column of each non-comment line; a header line is skipped.
pub fn parse_mailbox_csv(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split([',', ';']).next())
        .map(|c| c.trim().trim_matches('"').to_owned())
        .filter(|c| c.contains('@'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_section_is_optional_and_validated() {
        let with = |extra: &str| {
            Config::from_toml(&format!(
                "mailboxes=[\"a@x\"]\n[ews]\nurl=\"https://x\"\nusername=\"u\"\npassword_file=\"/x\"\n[nats]\nurl=\"nats://h:1\"\n{extra}"
            ))
        };
        let c = with("").expect("no section");
        assert_eq!(c.telemetry.otlp_endpoint, None);
        let c = with("[telemetry]\notlp_endpoint=\"http://otel:4318\"\nservice_instance=\"c1\"")
            .expect("section");
        assert_eq!(c.telemetry.service_instance.as_deref(), Some("c1"));
        let e = with("[telemetry]\notlp_endpoint=\"otel\"")
            .expect("parses")
            .validate()
            .expect_err("no scheme")
            .to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        assert!(with("[telemetry]\nendpoint=\"x\"").is_err(), "unknown key");
    }

    #[test]
    fn auth_scheme_is_ntlm_or_basic() {
        let with = |auth: &str| {
            Config::from_toml(&format!(
                "mailboxes=[\"a@x\"]\n[ews]\nurl=\"https://x\"\nusername=\"u\"\npassword_file=\"/x\"\nauth=\"{auth}\"\n[nats]\nurl=\"nats://h:1\""
            ))
        };
        assert_eq!(with("basic").expect("basic").ews.auth, EwsAuth::Basic);
        assert_eq!(with("ntlm").expect("ntlm").ews.auth, EwsAuth::Ntlm);
        let err = with("kerberos").expect_err("unknown scheme").to_string();
        assert!(err.contains("kerberos") && err.contains("ntlm"), "{err}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::from_toml(
            r#"
            mailboxes = ["alice@example.com"]
            [ews]
            url = "https://mail.example.com/EWS/Exchange.asmx"
            username = "svc"
            password_file = "/nonexistent"
            [nats]
            url = "nats://127.0.0.1:4222"
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.ews.server_version, "Exchange2013_SP1");
        assert_eq!(cfg.ews.auth, EwsAuth::Ntlm);
        assert!(cfg.ews.impersonation);
        assert_eq!(cfg.limits.max_changes, 512);
        assert_eq!(cfg.limits.inline_limit_bytes, 512 * 1024);
        assert_eq!(cfg.nats.stream, "MAILVAULT_INGEST");
        // Password file missing: reported.
        let err = cfg.validate().expect_err("missing password file");
        assert_eq!(err.0.len(), 1, "{err}");
    }

    #[test]
    fn unknown_fields_rejected_and_all_problems_reported() {
        assert!(
            Config::from_toml("bogus = 1\n[ews]\nurl=\"x\"\nusername=\"\"\npassword_file=\"/x\"\n[nats]\nurl=\"x\"")
                .is_err()
        );
        let cfg = Config::from_toml(
            "mailboxes=[\"nope\"]\n[ews]\nurl=\"ftp://x\"\nusername=\"\"\npassword_file=\"/x\"\n[limits]\nper_server_concurrency=0\nper_account_concurrency=1\nmailbox_concurrency=1\nmax_changes=1000\nget_item_batch=1\nmax_retries=1\nbackoff_base_ms=1\nbackoff_max_ms=2\ninline_limit_bytes=1\nmax_in_flight_publishes=1\n[nats]\nurl=\"nats://h:1\"",
        )
        .expect("parses");
        let err = cfg.validate().expect_err("invalid");
        assert!(err.0.len() >= 5, "{err}");
    }

    #[test]
    fn partial_limits_keep_defaults() {
        let cfg = Config::from_toml(
            "mailboxes=[\"a@x\"]\n[ews]\nurl=\"https://x\"\nusername=\"u\"\npassword_file=\"/x\"\n[limits]\nget_item_batch=8\n[nats]\nurl=\"nats://h:1\"",
        )
        .expect("parses");
        assert_eq!(cfg.limits.get_item_batch, 8);
        assert_eq!(cfg.limits.per_server_concurrency, 8);
    }

    #[test]
    fn restore_needs_a_subject_token_source() {
        let text = |source: &str, restore: &str| {
            format!(
                "source=\"{source}\"\nmailboxes=[\"a@x\"]\n[ews]\nurl=\"https://x\"\nusername=\"u\"\npassword_file=\"/x\"\n[nats]\nurl=\"nats://h:1\"\n{restore}"
            )
        };
        let cfg = Config::from_toml(&text("exch01.corp", "")).expect("parses");
        assert!(cfg.restore.enabled, "on by default");
        let err = cfg.validate().expect_err("dotted source");
        assert!(err.to_string().contains("subject token"), "{err}");
        let cfg =
            Config::from_toml(&text("exch01.corp", "[restore]\nenabled = false")).expect("parses");
        let err = cfg.validate().expect_err("password file still missing");
        assert!(!err.to_string().contains("subject token"), "{err}");
    }

    #[test]
    fn example_config_parses() {
        let cfg =
            Config::from_toml(include_str!("../collector.example.toml")).expect("example parses");
        assert_eq!(cfg.mailboxes.len(), 2);
        assert!(
            !cfg.filters()
                .mailboxes
                .allows("HealthMailbox123@example.com")
        );
    }

    #[test]
    fn csv_mailboxes() {
        let v = parse_mailbox_csv("smtp,name\n# c\nalice@x.com,Alice\n\"bob@x.com\";Bob\n\n");
        assert_eq!(v, vec!["alice@x.com", "bob@x.com"]);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = crate::secret::Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
