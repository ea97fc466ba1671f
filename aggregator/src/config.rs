//! Configuration: a TOML file, strict (`deny_unknown_fields`), with defaults for everything but
//! the repository, validated at start-up with every problem reported at once.
//!
//! ```toml
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! [repository]
//! url = "s3://mailvault/repo"          # or a directory path
//! passphrase_file = "/run/secrets/mailvault-passphrase"
//! [batch]
//! max_items = 500
//! max_bytes = "64 MiB"
//! max_delay = "2s"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::pipeline::{BatchPolicy, PipelineConfig};

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => s
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
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

/// JetStream: where items come from and events go.
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
    /// Stream the collectors publish to (created with the collector's settings if missing).
    pub stream: String,
    /// Durable pull consumer shared by every replica.
    pub consumer: String,
    /// Subjects of the stream this consumer takes (items, changes and item batches).
    pub filter_subjects: Vec<String>,
    /// Stream of `ItemStored` / `ItemChangeRecorded` / `Quarantined` events (created if missing).
    pub events_stream: String,
    /// Unacknowledged deliveries are redelivered after this long (Progress extends it).
    #[serde(deserialize_with = "duration")]
    pub ack_wait: Duration,
    /// Deliveries outstanding at once across all replicas.
    pub max_ack_pending: i64,
    /// Delete Object Store bodies once their item is acknowledged.
    pub delete_bodies: bool,
    /// Accept `nats://` without TLS to a server off this machine (mail and credentials in
    /// clear on the network).
    pub allow_plaintext: bool,
    /// Copies JetStream keeps of the streams this creates (3 on a cluster); existing streams
    /// are never changed.
    pub replicas: usize,
}

impl NatsConfig {
    pub fn auth(&self) -> mailvault_runtime::nats::NatsAuth {
        mailvault_runtime::nats::NatsAuth {
            creds_file: self.creds_file.clone(),
            nkey_file: self.nkey_file.clone(),
            ca_file: self.ca_file.clone(),
            allow_plaintext: self.allow_plaintext,
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            creds_file: None,
            nkey_file: None,
            ca_file: None,
            stream: mailvault_proto::ingest_wire::STREAM.into(),
            consumer: mailvault_proto::ingest_wire::AGGREGATOR_CONSUMER.into(),
            filter_subjects: mailvault_proto::ingest_wire::AGGREGATOR_FILTERS
                .map(String::from)
                .to_vec(),
            events_stream: mailvault_proto::events_wire::STREAM.into(),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 2000,
            delete_bodies: true,
            allow_plaintext: false,
            replicas: 1,
        }
    }
}

/// The repository written to.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `s3://bucket/prefix` or a directory.
    pub url: String,
    /// File holding the passphrase (trailing newline ignored). Never logged.
    pub passphrase_file: PathBuf,
    /// Load index objects written by other replicas this often (cross-replica dedupe).
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub refresh_interval: Duration,
}

fn default_refresh() -> Duration {
    // One LIST of `index/` per interval; short, so replicas see each other's chunks soon.
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

/// When a batch is flushed (made durable, announced, acknowledged).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_items: usize,
    #[serde(deserialize_with = "bytes")]
    pub max_bytes: u64,
    #[serde(deserialize_with = "duration")]
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        let p = BatchPolicy::default();
        BatchConfig {
            max_items: p.max_items,
            max_bytes: p.max_bytes,
            max_delay: p.max_delay,
        }
    }
}

/// Concurrency and memory bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Pipelines (one writer each) in this process.
    pub workers: usize,
    /// Messages per pull request.
    pub fetch_messages: usize,
    #[serde(deserialize_with = "bytes")]
    pub fetch_bytes: u64,
    /// Body bytes per blocking writer call and per Object Store read.
    #[serde(deserialize_with = "bytes")]
    pub piece_bytes: u64,
    /// Sealed packs kept in memory before upload.
    #[serde(deserialize_with = "bytes")]
    pub max_sealed_bytes: u64,
    #[serde(deserialize_with = "duration")]
    pub nak_delay: Duration,
    /// Quarantine a permanently failing message at this delivery attempt.
    pub poison_after_attempts: u64,
    #[serde(deserialize_with = "duration")]
    pub progress_every: Duration,
    /// Graceful shutdown must end within this (keep it below Kubernetes' grace period).
    #[serde(deserialize_with = "duration")]
    pub shutdown_deadline: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let p = PipelineConfig::default();
        LimitsConfig {
            workers: 1,
            fetch_messages: 64,
            fetch_bytes: 16 << 20,
            piece_bytes: p.piece_bytes as u64,
            max_sealed_bytes: p.max_sealed_bytes,
            nak_delay: p.nak_delay,
            poison_after_attempts: p.poison_after_attempts,
            progress_every: p.progress_every,
            shutdown_deadline: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// A config with defaults for a repository (tests, all-in-one).
    pub fn for_repository(url: &str, passphrase_file: PathBuf) -> Config {
        Config {
            nats: NatsConfig::default(),
            repository: RepositoryConfig {
                url: url.into(),
                passphrase_file,
                refresh_interval: default_refresh(),
            },
            batch: BatchConfig::default(),
            limits: LimitsConfig::default(),
            s3: None,
            metrics: Default::default(),
            telemetry: Default::default(),
        }
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let n = &self.nats;
        if n.url.is_empty() {
            p.push("nats.url is empty".to_owned());
        }
        for (k, v) in [
            ("nats.stream", &n.stream),
            ("nats.consumer", &n.consumer),
            ("nats.events_stream", &n.events_stream),
        ] {
            if v.is_empty() || v.contains(['.', ' ', '*', '>']) {
                p.push(format!(
                    "{k} {v:?} must be a non-empty name without . * > or spaces"
                ));
            }
        }
        if n.filter_subjects.is_empty() {
            p.push("nats.filter_subjects is empty".to_owned());
        } else if !n.filter_subjects.iter().any(|f| {
            [
                ">",
                mailvault_proto::ingest_wire::SUBJECTS,
                mailvault_proto::ingest_wire::FILTER_BATCH,
            ]
            .contains(&f.as_str())
        }) {
            p.push(format!(
                "nats.filter_subjects must take item batches ({}): collectors pack small items",
                mailvault_proto::ingest_wire::FILTER_BATCH
            ));
        }
        if !(1..=5).contains(&n.replicas) {
            p.push("nats.replicas must be 1..=5 (JetStream keeps at most 5 copies)".to_owned());
        }
        if n.ack_wait < Duration::from_secs(5) {
            p.push("nats.ack_wait must be at least 5s".to_owned());
        }
        let l = &self.limits;
        if l.progress_every * 2 > n.ack_wait {
            p.push(format!(
                "limits.progress_every ({:?}) must be at most half of nats.ack_wait ({:?})",
                l.progress_every, n.ack_wait
            ));
        }
        if !(1..=64).contains(&l.workers) {
            p.push("limits.workers must be 1..=64".to_owned());
        }
        if l.fetch_messages == 0 {
            p.push("limits.fetch_messages must be at least 1".to_owned());
        }
        if n.max_ack_pending < (l.fetch_messages * l.workers) as i64 {
            p.push(format!(
                "nats.max_ack_pending ({}) must be at least limits.fetch_messages × workers ({})",
                n.max_ack_pending,
                l.fetch_messages * l.workers
            ));
        }
        if l.piece_bytes < 4096 || l.piece_bytes > 64 << 20 {
            p.push("limits.piece_bytes must be 4 KiB..=64 MiB".to_owned());
        }
        if l.max_sealed_bytes < 1 << 20 {
            p.push("limits.max_sealed_bytes must be at least 1 MiB".to_owned());
        }
        if l.poison_after_attempts == 0 {
            p.push("limits.poison_after_attempts must be at least 1".to_owned());
        }
        let b = &self.batch;
        if b.max_items == 0 {
            p.push("batch.max_items must be at least 1".to_owned());
        }
        if b.max_delay >= n.ack_wait {
            p.push("batch.max_delay must be shorter than nats.ack_wait".to_owned());
        }
        match mailvault_runtime::storage::StoreLocation::parse(&self.repository.url) {
            Err(e) => p.push(format!("repository.url: {e}")),
            Ok(mailvault_runtime::storage::StoreLocation::S3 { bucket, prefix }) => {
                if let Some(s3) = &self.s3 {
                    // The URL names bucket and prefix; the section may leave them out.
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
        self.metrics.problems(&mut p);
        self.telemetry.problems(&mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            batch: BatchPolicy {
                max_items: self.batch.max_items,
                max_bytes: self.batch.max_bytes,
                max_delay: self.batch.max_delay,
            },
            piece_bytes: self.limits.piece_bytes as usize,
            max_sealed_bytes: self.limits.max_sealed_bytes,
            nak_delay: self.limits.nak_delay,
            poison_after_attempts: self.limits.poison_after_attempts,
            progress_every: self.limits.progress_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_is_off_by_default_and_validated_with_the_rest() {
        const MIN: &str = "[repository]\nurl = \"/tmp/r\"\npassphrase_file = \"/p\"\n";
        let c = Config::parse(MIN, "t.toml".as_ref()).expect("parse");
        assert_eq!(c.telemetry.otlp_endpoint, None);
        let c = Config::parse(
            &format!("{MIN}[telemetry]\notlp_endpoint = \"http://otel:4318\"\n"),
            "t.toml".as_ref(),
        )
        .expect("parse");
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://otel:4318")
        );
        let e = Config::parse(
            &format!(
                "{MIN}[batch]\nmax_items = 0\n[telemetry]\notlp_endpoint = \"https://u:pw@otel\"\nexport_interval = \"1ms\"\n"
            ),
            "t.toml".as_ref(),
        )
        .expect_err("invalid")
        .to_string();
        assert!(
            e.contains("max_items") && e.contains("telemetry.export_interval"),
            "every problem at once: {e}"
        );
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(
            "[repository]\nurl = \"/tmp/r\"\npassphrase_file = \"/p\"\n",
            "t.toml".as_ref(),
        )
        .expect("parse");
        assert_eq!(c.nats.stream, "MAILVAULT_INGEST");
        assert_eq!(c.batch.max_items, 500);
        assert!(
            !format!("{c:?}").contains("/p\""),
            "passphrase path redacted"
        );
    }

    #[test]
    fn human_units_and_unknown_fields() {
        let c = Config::parse(
            "[repository]\nurl = \"s3://b/r\"\npassphrase_file = \"/p\"\n[batch]\nmax_bytes = \"8 MiB\"\nmax_delay = \"250ms\"\n",
            "t.toml".as_ref(),
        )
        .expect("parse");
        assert_eq!(c.batch.max_bytes, 8 << 20);
        assert_eq!(c.batch.max_delay, Duration::from_millis(250));
        let e = Config::parse(
            "[repository]\nurl = \"x\"\npassphrase_file = \"/p\"\ncolour = 1\n",
            "t.toml".as_ref(),
        );
        assert!(matches!(e, Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = Config::parse(
            "[repository]\nurl = \"\"\npassphrase_file = \"/p\"\n[limits]\nworkers = 0\npoison_after_attempts = 0\n[nats]\nack_wait = \"1s\"\n",
            "t.toml".as_ref(),
        )
        .expect_err("invalid");
        let ConfigError::Invalid(p) = e else {
            panic!("expected Invalid, got {e}");
        };
        assert!(p.len() >= 4, "{p:?}");
    }

    #[test]
    fn metrics_endpoint_is_optional_and_checked() {
        let base = "[repository]\nurl = \"/tmp/r\"\npassphrase_file = \"/p\"\n";
        let c = Config::parse(base, "t.toml".as_ref()).expect("parse");
        assert_eq!(c.metrics.address(), Ok(None));
        let c = Config::parse(
            &format!("{base}[metrics]\nlisten = \"127.0.0.1:9464\"\n"),
            "t.toml".as_ref(),
        )
        .expect("parse");
        assert_eq!(
            c.metrics.address().ok().flatten().map(|a| a.port()),
            Some(9464)
        );
        let e = Config::parse(
            &format!("{base}[metrics]\nlisten = \"nowhere\"\n"),
            "t.toml".as_ref(),
        );
        assert!(matches!(e, Err(ConfigError::Invalid(_))), "{e:?}");
    }
}
