//! Loading a service's configuration: a TOML file, then `MAILVAULT_<SECTION>_<KEY>` environment
//! overrides, then strict deserialization and validation, reporting every problem at once.
//!
//! Override rules: the first word after `MAILVAULT_` names a top-level section, the rest (joined
//! by `_`, lowercased) the key in it, so `MAILVAULT_S3_ACCESS_KEY_ID=GK1` sets `[s3]
//! access_key_id = "GK1"`. A value that reads as a TOML value (`true`, `8`, `"quoted"`, `[1, 2]`)
//! is used as such, anything else as a string; quote numbers meant as strings. Variables without a
//! key part (`MAILVAULT_TOOLS`) are ignored. The environment is passed in, never read here, so
//! tests inject it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

const ENV_PREFIX: &str = "MAILVAULT_";

/// Checks a loaded config beyond what its types say. Push every problem, not just the first.
pub trait Validate {
    fn validate(&self, problems: &mut Vec<String>);
}

/// Everything wrong with a configuration.
#[derive(Debug)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration {} is invalid:", self.source_name)?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads `path` and builds `T` from it and `env` (see the module docs).
pub fn load_file<T, I>(path: &Path, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: path.display().to_string(),
        problems: vec![format!("cannot read: {e}")],
    })?;
    load_str(&text, &PathBuf::from(path).display().to_string(), env)
}

/// Builds `T` from TOML text and `env`; `source_name` names the text in errors.
pub fn load_str<T, I>(text: &str, source_name: &str, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    let fail = |problems| ConfigError {
        source_name: source_name.to_owned(),
        problems,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;

    let mut problems = Vec::new();
    let mut applied = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if section.is_empty() || key.is_empty() {
            continue;
        }
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, env_value(&value));
                applied.push(var);
            }
            _ => problems.push(format!("{var}: `{section}` is not a section")),
        }
    }

    match toml::Value::Table(table).try_into::<T>() {
        Ok(cfg) => {
            cfg.validate(&mut problems);
            if problems.is_empty() {
                Ok(cfg)
            } else {
                Err(fail(problems))
            }
        }
        Err(e) => {
            let mut msg = e.to_string().trim_end().to_owned();
            if !applied.is_empty() {
                msg.push_str(&format!(
                    " (environment overrides applied: {})",
                    applied.join(", ")
                ));
            }
            problems.push(msg);
            Err(fail(problems))
        }
    }
}

fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Svc {
        nats: Nats,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nats {
        url: String,
        #[serde(default)]
        tls: bool,
        #[serde(default)]
        stream_name: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        #[serde(default)]
        max_inflight: u32,
        #[serde(default)]
        max_item_bytes: u64,
    }

    impl Validate for Svc {
        fn validate(&self, problems: &mut Vec<String>) {
            if !self.nats.url.starts_with("nats://") {
                problems.push(format!(
                    "nats.url {:?}: must start with nats://",
                    self.nats.url
                ));
            }
            if self.limits.max_inflight == 0 {
                problems.push("limits.max_inflight: must be at least 1".into());
            }
            if self.limits.max_item_bytes == 0 {
                problems.push("limits.max_item_bytes: must be at least 1".into());
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASE: &str =
        "[nats]\nurl = \"nats://a:4222\"\n[limits]\nmax_inflight = 4\nmax_item_bytes = 10\n";

    #[test]
    fn env_overrides_file_values_with_types() {
        let cfg: Svc = load_str(
            BASE,
            "test",
            env(&[
                ("MAILVAULT_NATS_URL", "nats://b:4222"),
                ("MAILVAULT_NATS_TLS", "true"),
                ("MAILVAULT_NATS_STREAM_NAME", "items"),
                ("MAILVAULT_LIMITS_MAX_INFLIGHT", "16"),
                ("MAILVAULT_TOOLS", "/ignored"),
                ("HOME", "/root"),
            ]),
        )
        .expect("valid");
        assert_eq!(cfg.nats.url, "nats://b:4222");
        assert!(cfg.nats.tls);
        assert_eq!(cfg.nats.stream_name, "items");
        assert_eq!(cfg.limits.max_inflight, 16);
    }

    #[test]
    fn env_can_create_a_section() {
        let cfg: Svc = load_str(
            "[limits]\nmax_inflight = 1\nmax_item_bytes = 1\n",
            "test",
            env(&[("MAILVAULT_NATS_URL", "nats://x:1")]),
        )
        .expect("valid");
        assert_eq!(cfg.nats.url, "nats://x:1");
    }

    #[test]
    fn every_validation_problem_is_reported() {
        let err = load_str::<Svc, _>("[nats]\nurl = \"http://wrong\"\n", "svc.toml", Vec::new())
            .expect_err("invalid");
        assert_eq!(err.problems.len(), 3, "{err}");
        let shown = err.to_string();
        assert!(
            shown.contains("svc.toml") && shown.contains("nats.url"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_keys_name_the_env_override() {
        let err = load_str::<Svc, _>(
            BASE,
            "svc.toml",
            env(&[("MAILVAULT_NATS_VERSION", "2.15.1")]),
        )
        .expect_err("unknown field");
        let shown = err.to_string();
        assert!(
            shown.contains("version") && shown.contains("MAILVAULT_NATS_VERSION"),
            "{shown}"
        );
    }

    #[test]
    fn syntax_errors_and_missing_files_are_reported() {
        assert!(load_str::<Svc, _>("[nats", "x", Vec::new()).is_err());
        let err = load_file::<Svc, _>(Path::new("/nonexistent/mailvault.toml"), Vec::new())
            .expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
