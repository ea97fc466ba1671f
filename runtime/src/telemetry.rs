//! Logging setup shared by every service: an env-filter and text or JSON lines on stderr.

use std::io;

use serde::Deserialize;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The `[log]` section of a service config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// An env-filter directive such as `info,mailvault_aggregator=debug`. `RUST_LOG`, when set,
    /// takes its place.
    #[serde(default = "default_filter")]
    pub filter: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_filter() -> String {
    "info".to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: default_filter(),
            format: LogFormat::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter {directive:?}: {source}")]
    Filter {
        directive: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Builds the subscriber `init` installs, writing to `writer`; `env_filter` (usually the value
/// of `RUST_LOG`) replaces the configured filter when given.
pub fn subscriber<W>(
    cfg: &LogConfig,
    env_filter: Option<&str>,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let directive = env_filter
        .filter(|d| !d.trim().is_empty())
        .unwrap_or(&cfg.filter);
    let filter = EnvFilter::try_new(directive).map_err(|source| TelemetryError::Filter {
        directive: directive.to_owned(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    Ok(match cfg.format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    })
}

/// Installs the global subscriber: stderr, filter from `RUST_LOG` or the config.
pub fn init(cfg: &LogConfig) -> Result<(), TelemetryError> {
    let env = std::env::var("RUST_LOG").ok();
    let sub = subscriber(cfg, env.as_deref(), io::stderr)?;
    tracing::subscriber::set_global_default(sub).map_err(|_| TelemetryError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(cfg: &LogConfig, env: Option<&str>) -> String {
        let buf = Buf::default();
        let sub = subscriber(cfg, env, buf.clone()).expect("subscriber");
        tracing::subscriber::with_default(sub, || {
            tracing::info!(items = 3, "batch stored");
            tracing::debug!("hidden at info");
        });
        String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8")
    }

    #[test]
    fn json_lines_carry_fields() {
        let cfg = LogConfig {
            format: LogFormat::Json,
            ..LogConfig::default()
        };
        let out = capture(&cfg, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json line");
        assert_eq!(v["message"], "batch stored");
        assert_eq!(v["items"], 3);
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn env_filter_overrides_config() {
        let out = capture(&LogConfig::default(), Some("debug"));
        assert!(
            out.contains("batch stored") && out.contains("hidden at info"),
            "{out}"
        );
        let out = capture(&LogConfig::default(), None);
        assert!(!out.contains("hidden at info"), "{out}");
    }

    #[test]
    fn bad_filter_is_reported() {
        let cfg = LogConfig {
            filter: "info,[[[".into(),
            ..LogConfig::default()
        };
        let err = subscriber(&cfg, None, io::sink).err().expect("bad filter");
        assert!(err.to_string().contains("[[["), "{err}");
    }

    #[test]
    fn format_parses_from_config() {
        let cfg: LogConfig = toml::from_str("format = \"json\"").expect("parse");
        assert_eq!(cfg.format, LogFormat::Json);
        assert!(toml::from_str::<LogConfig>("fromat = \"json\"").is_err());
    }
}
