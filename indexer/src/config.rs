//! Configuration of the `mailvault-indexer` service: a TOML file (unknown keys rejected), then
//! `MAILVAULT_<SECTION>_<KEY>` environment overrides for the sections below
//! (`mailvault_runtime::config::load_file`), validated with every problem reported at once.
//!
//! ```toml
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! restore_timeout = "120s"
//! [repository]
//! url = "s3://mailvault/repo"          # or a directory path
//! passphrase_file = "/run/secrets/mailvault-passphrase"
//! refresh_interval = "5s"
//! [index]
//! dir = "/var/lib/mailvault/index"
//! [api]
//! listen = "127.0.0.1:50051"
//! tokens_file = "/etc/mailvault/tokens.toml"
//! [metrics]
//! listen = "127.0.0.1:9464"            # optional: GET /metrics and /healthz
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Sections that environment overrides may address (`MAILVAULT_NATS_URL`, …). Other
/// `MAILVAULT_*` variables (`MAILVAULT_INDEXER_CONFIG`, `MAILVAULT_TOOLS`, …) are not config.
pub const SECTIONS: [&str; 7] = [
    "nats",
    "repository",
    "index",
    "api",
    "s3",
    "metrics",
    "telemetry",
];

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// The whole service configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    pub repository: RepositoryConfig,
    pub index: IndexConfig,
    pub api: ApiConfig,
    /// Connection settings of an `s3://` repository (endpoint, region, credentials).
    #[serde(default)]
    pub s3: Option<mailvault_runtime::storage::S3Config>,
    /// `[metrics] listen = "127.0.0.1:9464"`: serve `/metrics` and `/healthz` there (off when
    /// absent).
    #[serde(default)]
    pub metrics: mailvault_runtime::metrics::MetricsConfig,
    /// `[telemetry] otlp_endpoint = "http://otel-collector:4318"`: push spans and metrics over
    /// OTLP (off when absent).
    #[serde(default)]
    pub telemetry: mailvault_runtime::otel::TelemetryConfig,
}

/// NATS: where "stored" events come from and restore jobs go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:4222` or `tls://host:4222`; a user and password may be given in it.
    pub url: String,
    /// NATS credentials file (`.creds`: user JWT and NKey seed). Never logged.
    pub creds_file: Option<PathBuf>,
    /// File with this component's NKey seed (`mailvault nats users`). Never logged.
    pub nkey_file: Option<PathBuf>,
    /// PEM CA certificate(s) for the server's TLS certificate (beside the system's roots);
    /// setting it requires TLS.
    pub ca_file: Option<PathBuf>,
    /// A restore fails with `UNAVAILABLE` when the collector sends no result for this long.
    #[serde(deserialize_with = "duration")]
    pub restore_timeout: Duration,
    /// Accept `nats://` without TLS to a server off this machine.
    pub allow_plaintext: bool,
    /// Copies JetStream keeps of the streams and buckets this creates (3 on a cluster);
    /// existing ones are never changed.
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            creds_file: None,
            nkey_file: None,
            ca_file: None,
            restore_timeout: Duration::from_secs(120),
            allow_plaintext: false,
            replicas: 1,
        }
    }
}

/// The repository read from (never written, except audit batches).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `s3://bucket/prefix` or a directory.
    pub url: String,
    /// File holding the passphrase (trailing newline ignored). Never logged.
    pub passphrase_file: PathBuf,
    /// Load index objects written by the aggregators this often, so new packs become readable.
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub refresh_interval: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(5)
}

impl std::fmt::Debug for RepositoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("url", &self.url)
            .field("passphrase_file", &"<redacted path>")
            .field("refresh_interval", &self.refresh_interval)
            .finish()
    }
}

/// The local tantivy index and the event consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Directory of the tantivy index (created if missing; derived data, `reindex` rebuilds it).
    pub dir: PathBuf,
    /// Events applied per index commit at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How long events are gathered into one commit after the first one arrives (the longest
    /// an event waits to become searchable, plus the commit itself).
    #[serde(default = "default_wait", deserialize_with = "duration")]
    pub wait: Duration,
    /// A batch is committed early once no event arrived for this long: the end of a burst
    /// (a backup pass finishing) becomes searchable at once instead of after `wait`.
    #[serde(default = "default_idle", deserialize_with = "duration")]
    pub idle: Duration,
    /// After SIGTERM the process ends within this long, also when NATS or the store are gone
    /// (events not yet committed are redelivered).
    #[serde(default = "default_shutdown_deadline", deserialize_with = "duration")]
    pub shutdown_deadline: Duration,
    /// The journal mailboxes (Exchange's journaling recipients): only their journal reports
    /// are unwrapped and shown to the recipients the envelope lists. Unset, every mailbox's
    /// are (anyone can send a message with an `X-MS-Journal-Report` header: set it).
    #[serde(default)]
    pub journal_mailboxes: Option<Vec<String>>,
}

fn default_shutdown_deadline() -> Duration {
    Duration::from_secs(25)
}

fn default_batch() -> usize {
    2048
}

fn default_wait() -> Duration {
    Duration::from_secs(1)
}

fn default_idle() -> Duration {
    Duration::from_millis(100)
}

/// The gRPC API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on (`127.0.0.1:50051`; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Token file (hashes only, see docs/api.md).
    pub tokens_file: PathBuf,
    /// PEM certificate chain; with `tls_key` it turns TLS on.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Streaming calls (GetItem, Export, Restore) one token may have open at once.
    #[serde(default = "default_max_streams")]
    pub max_streams_per_token: usize,
    /// An export whose client takes nothing for this long is ended.
    #[serde(default = "default_stream_idle", deserialize_with = "duration")]
    pub stream_idle_timeout: Duration,
    /// Export archives written at once (each takes a thread); more wait their turn.
    #[serde(default = "default_export_threads")]
    pub export_threads: usize,
    /// Serve without TLS on an address other machines reach (bearer tokens and mail in clear
    /// on the network): only behind a mesh or proxy that provides TLS.
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn default_max_streams() -> usize {
    16
}

fn default_stream_idle() -> Duration {
    Duration::from_secs(60)
}

fn default_export_threads() -> usize {
    4
}

impl ApiConfig {
    pub fn stream_limits(&self) -> crate::api::service::StreamLimits {
        crate::api::service::StreamLimits {
            per_token: self.max_streams_per_token,
            idle_timeout: self.stream_idle_timeout,
            export_writers: self.export_threads,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

impl mailvault_runtime::config::Validate for Config {
    fn validate(&self, p: &mut Vec<String>) {
        if self.nats.url.is_empty() {
            p.push("nats.url is empty".into());
        }
        if self.nats.restore_timeout < Duration::from_secs(1) {
            p.push("nats.restore_timeout must be at least 1s".into());
        }
        if self.repository.refresh_interval < Duration::from_millis(100) {
            p.push("repository.refresh_interval must be at least 100ms".into());
        }
        if self.repository.passphrase_file.as_os_str().is_empty() {
            p.push("repository.passphrase_file is empty".into());
        }
        if self.index.dir.as_os_str().is_empty() {
            p.push("index.dir is empty".into());
        }
        if !(1..=10_000).contains(&self.index.batch) {
            p.push("index.batch must be 1..=10000".into());
        }
        if self.index.wait < Duration::from_millis(10) || self.index.wait > Duration::from_secs(30)
        {
            p.push("index.wait must be 10ms..=30s".into());
        }
        if self.index.idle < Duration::from_millis(10) || self.index.idle > self.index.wait {
            p.push("index.idle must be 10ms..=index.wait".into());
        }
        if !(1..=5).contains(&self.nats.replicas) {
            p.push("nats.replicas must be 1..=5 (JetStream keeps at most 5 copies)".into());
        }
        if self.api.max_streams_per_token == 0 {
            p.push("api.max_streams_per_token must be at least 1".into());
        }
        if self.api.export_threads == 0 {
            p.push("api.export_threads must be at least 1".into());
        }
        if self.api.stream_idle_timeout.is_zero() {
            p.push("api.stream_idle_timeout must be more than 0".into());
        }
        if self.api.tokens_file.as_os_str().is_empty() {
            p.push("api.tokens_file is empty".into());
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            p.push("api.tls_cert and api.tls_key must be given together".into());
        }
        if self.api.tls_cert.is_none()
            && let Err(e) = mailvault_runtime::plaintext::check_listen(
                self.api.listen,
                "the API (bearer tokens and mail)",
                "[api] allow_plaintext = true",
                self.api.allow_plaintext,
            )
        {
            p.push(format!("api.listen: {e}"));
        }
        match mailvault_runtime::storage::StoreLocation::parse(&self.repository.url) {
            Err(e) => p.push(format!("repository.url: {e}")),
            Ok(mailvault_runtime::storage::StoreLocation::S3 { bucket, prefix }) => {
                if let Some(s3) = &self.s3 {
                    let mut s3 = s3.clone();
                    if s3.bucket.is_empty() {
                        s3.bucket = bucket;
                    }
                    if s3.prefix.is_empty() {
                        s3.prefix = prefix;
                    }
                    p.extend(s3.problems());
                }
            }
            Ok(_) => {}
        }
        self.metrics.problems(p);
        self.telemetry.problems(p);
    }
}

/// Only the `MAILVAULT_<SECTION>_…` variables of this config's sections.
pub fn config_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> impl Iterator<Item = (String, String)> {
    vars.into_iter().filter(|(k, _)| {
        k.strip_prefix("MAILVAULT_")
            .and_then(|r| r.split_once('_'))
            .is_some_and(|(section, _)| SECTIONS.contains(&section.to_ascii_lowercase().as_str()))
    })
}

impl Config {
    /// Reads `path`, applies the overrides in `env` (see [`config_env`]) and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, mailvault_runtime::config::ConfigError> {
        mailvault_runtime::config::load_file(path, config_env(env))
    }

    /// Same from TOML text (tests).
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, mailvault_runtime::config::ConfigError> {
        mailvault_runtime::config::load_str(text, "indexer config", config_env(env))
    }

    /// The consumer settings.
    pub fn consume(&self) -> crate::consume::ConsumeConfig {
        crate::consume::ConsumeConfig {
            batch: self.index.batch,
            wait: self.index.wait,
            idle: self.index.idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[repository]\nurl = \"/tmp/r\"\npassphrase_file = \"/p\"\n[index]\ndir = \"/tmp/ix\"\n[api]\ntokens_file = \"/t.toml\"\n";

    #[test]
    fn minimal_config_gets_defaults_and_redacts() {
        let c = Config::parse(MIN, []).expect("parse");
        assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(c.api.listen, default_listen());
        assert_eq!(c.index.batch, 2048);
        assert_eq!(c.repository.refresh_interval, Duration::from_secs(5));
        assert!(!format!("{c:?}").contains("\"/p\""));
    }

    #[test]
    fn environment_overrides_only_own_sections() {
        let env = [
            ("MAILVAULT_NATS_URL".to_owned(), "nats://n:4222".to_owned()),
            (
                "MAILVAULT_API_LISTEN".to_owned(),
                "\"0.0.0.0:6000\"".to_owned(),
            ),
            ("MAILVAULT_INDEXER_CONFIG".to_owned(), "/x.toml".to_owned()),
            ("MAILVAULT_CORPUS".to_owned(), "/c".to_owned()),
        ];
        // Beyond loopback without TLS only when the configuration says so.
        let e = Config::parse(MIN, env.clone()).expect_err("plain text on 0.0.0.0");
        assert!(e.to_string().contains("api.listen"), "{e}");
        let mut env = env.to_vec();
        env.push((
            "MAILVAULT_API_ALLOW_PLAINTEXT".to_owned(),
            "true".to_owned(),
        ));
        let c = Config::parse(MIN, env).expect("parse");
        assert_eq!(c.nats.url, "nats://n:4222");
        assert_eq!(c.api.listen.port(), 6000);
        assert!(c.api.allow_plaintext);
        assert_eq!(c.telemetry.otlp_endpoint, None, "OTLP is off by default");
    }

    #[test]
    fn telemetry_section_and_its_environment_overrides() {
        let env = [
            (
                "MAILVAULT_TELEMETRY_OTLP_ENDPOINT".to_owned(),
                "http://otel:4318".to_owned(),
            ),
            (
                "MAILVAULT_TELEMETRY_EXPORT_INTERVAL".to_owned(),
                "30s".to_owned(),
            ),
        ];
        let c = Config::parse(
            &format!("{MIN}[telemetry]\nservice_instance = \"ix-1\"\n"),
            env,
        )
        .expect("parse");
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://otel:4318")
        );
        assert_eq!(c.telemetry.export_interval, Duration::from_secs(30));
        assert_eq!(c.telemetry.service_instance.as_deref(), Some("ix-1"));
        let e = Config::parse(
            &format!("{MIN}[telemetry]\notlp_endpoint = \"otel:4318\"\n"),
            [],
        )
        .expect_err("no scheme");
        assert!(e.to_string().contains("telemetry.otlp_endpoint"), "{e}");
        let e = Config::parse(&format!("{MIN}[telemetry]\nendpoint = \"x\"\n"), [])
            .expect_err("unknown key");
        assert!(e.to_string().contains("endpoint"), "{e}");
    }

    #[test]
    fn every_problem_at_once_and_unknown_keys() {
        let e = Config::parse(
            "[repository]\nurl = \"\"\npassphrase_file = \"/p\"\nrefresh_interval = \"1ms\"\n[index]\ndir = \"\"\nbatch = 0\n[api]\ntokens_file = \"/t\"\ntls_cert = \"/c\"\n",
            [],
        )
        .expect_err("invalid");
        assert!(e.problems.len() >= 5, "{e}");
        let e = Config::parse(&format!("{MIN}colour = 1\n"), []).expect_err("unknown");
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
