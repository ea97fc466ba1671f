//! A [`BlobStore`] over any S3-compatible object store (AWS, MinIO, Ceph RGW, Garage).
//!
//! Write-once is enforced by a HEAD before every PUT, never by a conditional PUT: Garage
//! ignores `If-None-Match`. Two writers racing on one name can both write; object names are
//! content-addressed or random, so both carry the same bytes.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use mailvault_format::store::{BlobStore, PutOutcome, StoreError, check_range, validate_name};
use serde::Deserialize;

use super::s3_http::QuickAckHttpClient;

/// A secret that never shows in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to the SDK.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How to reach a bucket. Deserialized strictly from the `[s3]` section of a service config.
///
/// Credentials: `access_key_id` plus `secret_access_key_file` (a file holding only the secret),
/// or neither, and then the SDK's default chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
/// the shared profile `profile` or `AWS_PROFILE`, web identity, instance metadata).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Empty when the bucket comes from an `s3://bucket/prefix` store URL.
    #[serde(default)]
    pub bucket: String,
    /// Prepended to every object name; empty or ending in `/` (one is added if missing).
    #[serde(default)]
    pub prefix: String,
    /// A custom endpoint such as `http://garage:3900`; `None` means AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing; defaults to true with a custom endpoint, false on AWS.
    #[serde(default)]
    pub path_style: Option<bool>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// A secret given in code (tests); never read from a config file.
    #[serde(skip)]
    pub secret_access_key: Option<Secret>,
    /// A shared-config profile name for the default chain.
    #[serde(default)]
    pub profile: Option<String>,
    /// Attempts per request, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff", with = "humantime_serde_compat")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Limit for one attempt of one request (one part of a multipart upload).
    #[serde(default = "default_attempt_timeout", with = "humantime_serde_compat")]
    pub attempt_timeout: Duration,
    /// Objects larger than this are uploaded in parts.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// Size of each multipart part (S3 requires at least 5 MiB, except the last).
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// Parts of one object uploaded at once.
    #[serde(default = "default_part_concurrency")]
    pub part_concurrency: usize,
    /// Acknowledge received data at once (Linux `TCP_QUICKACK`, see `s3_http.rs`): without it
    /// a store that does not set `TCP_NODELAY` (Garage) adds ~40 ms to small GETs. Defaults
    /// to true with a custom endpoint, false on AWS; false uses the SDK's default client,
    /// which also honours `HTTPS_PROXY`.
    #[serde(default)]
    pub tcp_quickack: Option<bool>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(20)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_attempt_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_multipart_threshold() -> u64 {
    8 * 1024 * 1024
}
fn default_part_size() -> u64 {
    8 * 1024 * 1024
}
fn default_part_concurrency() -> usize {
    4
}

/// Durations as human strings ("5s", "200ms").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("secret_access_key", &self.secret_access_key)
            .field("profile", &self.profile)
            .field("max_attempts", &self.max_attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("part_concurrency", &self.part_concurrency)
            .field("tcp_quickack", &self.tcp_quickack)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Defaults for `bucket`: AWS, default credential chain.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: default_region(),
            path_style: None,
            access_key_id: None,
            secret_access_key_file: None,
            secret_access_key: None,
            profile: None,
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            connect_timeout: default_connect_timeout(),
            attempt_timeout: default_attempt_timeout(),
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
            part_concurrency: default_part_concurrency(),
            tcp_quickack: None,
        }
    }

    /// Every problem with this config, empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.bucket.is_empty() {
            p.push("s3.bucket: must not be empty".to_owned());
        }
        let prefix = self.prefix.trim_end_matches('/');
        if !prefix.is_empty() && validate_name(prefix).is_err() {
            p.push(format!(
                "s3.prefix {:?}: only a-z 0-9 . _ - and / are allowed",
                self.prefix
            ));
        }
        if let Some(ep) = &self.endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            p.push(format!(
                "s3.endpoint {ep:?}: must start with http:// or https://"
            ));
        }
        let has_secret = self.secret_access_key_file.is_some() || self.secret_access_key.is_some();
        if self.access_key_id.is_some() != has_secret {
            p.push(
                "s3: access_key_id and secret_access_key_file must be given together".to_owned(),
            );
        }
        if self.max_attempts == 0 {
            p.push("s3.max_attempts: must be at least 1".to_owned());
        }
        if self.part_size < 5 * 1024 * 1024 {
            p.push("s3.part_size: must be at least 5 MiB".to_owned());
        }
        if self.part_concurrency == 0 {
            p.push("s3.part_concurrency: must be at least 1".to_owned());
        }
        if self.multipart_threshold < self.part_size {
            p.push("s3.multipart_threshold: must be at least part_size".to_owned());
        }
        p
    }

    fn normalized_prefix(&self) -> String {
        let p = self.prefix.trim_end_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        }
    }
}

impl crate::config::Validate for S3Config {
    fn validate(&self, problems: &mut Vec<String>) {
        // The bucket may come from the store URL instead.
        problems.extend(
            self.problems()
                .into_iter()
                .filter(|p| !p.starts_with("s3.bucket")),
        );
    }
}

/// Why an [`S3Store`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("invalid S3 configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("building the S3 HTTP client: {0}")]
    HttpClient(#[from] super::s3_http::HttpClientError),
    #[error("reading s3.secret_access_key_file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The S3 [`BlobStore`].
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: u64,
    part_size: u64,
    part_concurrency: usize,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What the S3 service said, kept for the error chain.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
struct S3Failure {
    detail: String,
}

impl S3Store {
    pub async fn connect(cfg: &S3Config) -> Result<Self, S3ConfigError> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(S3ConfigError::Invalid(problems));
        }
        let retry = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts)
            .with_initial_backoff(cfg.initial_backoff)
            .with_max_backoff(cfg.max_backoff);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout)
            .operation_attempt_timeout(cfg.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .retry_config(retry)
            .timeout_config(timeouts)
            // S3-compatible stores differ in their support for the newer checksum trailers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &cfg.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some(profile) = &cfg.profile {
            loader = loader.profile_name(profile.clone());
        }
        if let Some(key_id) = &cfg.access_key_id {
            let secret = match (&cfg.secret_access_key, &cfg.secret_access_key_file) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => {
                    let raw = tokio::fs::read_to_string(path).await.map_err(|source| {
                        S3ConfigError::SecretFile {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    Secret::new(raw.trim())
                }
                (None, None) => unreachable!("checked by problems()"),
            };
            loader = loader.credentials_provider(Credentials::new(
                key_id.clone(),
                secret.expose().to_owned(),
                None,
                None,
                "mailvault-config",
            ));
        }
        let sdk = loader.load().await;
        let path_style = cfg.path_style.unwrap_or(cfg.endpoint.is_some());
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style);
        if cfg.tcp_quickack.unwrap_or(cfg.endpoint.is_some()) {
            let https = cfg
                .endpoint
                .as_deref()
                .is_none_or(|e| e.starts_with("https://"));
            s3 = s3.http_client(QuickAckHttpClient::new(cfg.connect_timeout, https)?);
        }
        let s3 = s3.build();
        Ok(Self {
            client: Client::from_conf(s3),
            bucket: cfg.bucket.clone(),
            prefix: cfg.normalized_prefix(),
            multipart_threshold: cfg.multipart_threshold,
            part_size: cfg.part_size,
            part_concurrency: cfg.part_concurrency,
        })
    }

    /// The object's size via HEAD, `None` when it does not exist.
    async fn head(&self, op: &'static str, name: &str) -> Result<Option<u64>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
            )),
            Err(e) => match map_sdk_error(op, name, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn put_single(&self, name: &str, data: Bytes) -> Result<(), StoreError> {
        let len = data.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_length(len)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| map_sdk_error("put", name, e))?;
        Ok(())
    }

    async fn put_multipart(&self, name: &str, data: Bytes) -> Result<(), StoreError> {
        let key = self.key(name);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| map_sdk_error("put (create multipart upload)", name, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StoreError::Transient {
                op: "put (create multipart upload)",
                name: name.to_owned(),
                source: "the store returned no upload id".into(),
            });
        };
        let result = self.upload_parts(name, &key, &upload_id, &data).await;
        if result.is_err()
            && let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send()
                .await
        {
            tracing::warn!(
                object = name,
                error = %DisplayErrorContext(&e),
                "could not abort a failed multipart upload; a lifecycle rule must remove it"
            );
        }
        result
    }

    async fn upload_parts(
        &self,
        name: &str,
        key: &str,
        upload_id: &str,
        data: &Bytes,
    ) -> Result<(), StoreError> {
        let part_size = usize::try_from(self.part_size).unwrap_or(usize::MAX);
        let ranges: Vec<(i32, usize, usize)> = (0..data.len())
            .step_by(part_size)
            .zip(1i32..)
            .map(|(start, number)| {
                (
                    number,
                    start,
                    data.len().min(start.saturating_add(part_size)),
                )
            })
            .collect();
        // A few parts in flight at once; the parts are slices of `data`, so no extra memory.
        let parts: Vec<CompletedPart> = stream::iter(ranges)
            .map(|(number, start, end)| async move {
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length((end - start) as i64)
                    .body(ByteStream::from(data.slice(start..end)))
                    .send()
                    .await
                    .map_err(|e| map_sdk_error("put (upload part)", name, e))?;
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                )
            })
            .buffered(self.part_concurrency)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_sdk_error("put (complete multipart upload)", name, e))?;
        Ok(())
    }
}

/// Maps an SDK error to the store's error kinds; the message names the operation and object.
fn map_sdk_error<E>(op: &'static str, name: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_owned);
    let detail = match (status, &code) {
        (Some(s), Some(c)) => format!("HTTP {s} {c}: {}", DisplayErrorContext(&err)),
        (Some(s), None) => format!("HTTP {s}: {}", DisplayErrorContext(&err)),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let source: Box<dyn std::error::Error + Send + Sync> = Box::new(S3Failure { detail });
    let name = name.to_owned();
    let transient = StoreError::Transient {
        op,
        name: name.clone(),
        source,
    };
    let permanent = |t: StoreError| match t {
        StoreError::Transient { op, name, source } => StoreError::Permanent { op, name, source },
        other => other,
    };
    match &err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let throttled = matches!(
                code.as_deref(),
                Some(
                    "SlowDown"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestTimeout"
                        | "RequestTimeTooSkewed"
                        | "InternalError"
                        | "ServiceUnavailable"
                )
            );
            match status {
                Some(404) if !matches!(code.as_deref(), Some("NoSuchBucket")) => {
                    StoreError::NotFound { name }
                }
                _ if matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) => {
                    StoreError::NotFound { name }
                }
                Some(408 | 429) | Some(500..=599) => transient,
                _ if throttled => transient,
                Some(400..=499) => permanent(transient),
                // A response we could not read: the connection broke mid-way.
                _ => transient,
            }
        }
        SdkError::DispatchFailure(d) if d.is_user() => permanent(transient),
        SdkError::ConstructionFailure(_) => permanent(transient),
        // Timeouts, dispatch (connect, I/O) failures and anything new.
        _ => transient,
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn put(&self, name: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        validate_name(name)?;
        // Never a conditional PUT: Garage ignores If-None-Match.
        if self.head("put (existence check)", name).await?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        if data.len() as u64 > self.multipart_threshold {
            self.put_multipart(name, data).await?;
        } else {
            self.put_single(name, data).await?;
        }
        Ok(PutOutcome::Created)
    }

    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        validate_name(name)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| map_sdk_error("get", name, e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Transient {
                op: "get",
                name: name.to_owned(),
                source: Box::new(e),
            })?;
        Ok(body.into_bytes())
    }

    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_name(name)?;
        if len == 0 {
            // An empty range has no HTTP Range form; check it against the size.
            let size = self.size(name).await?.ok_or_else(|| StoreError::NotFound {
                name: name.to_owned(),
            })?;
            check_range(name, size, offset, 0)?;
            return Ok(Bytes::new());
        }
        let Some(last) = offset.checked_add(len - 1) else {
            return check_range(name, u64::MAX, offset, len).map(|()| Bytes::new());
        };
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await
            .map_err(|e| map_sdk_error("get_range", name, e))?;
        // A range that runs past the end comes back short, with the real size after '/'.
        let total = out
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok());
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Transient {
                op: "get_range",
                name: name.to_owned(),
                source: Box::new(e),
            })?
            .into_bytes();
        if body.len() as u64 != len {
            let size = total.unwrap_or(offset + body.len() as u64);
            check_range(name, size, offset, len)?;
            return Err(StoreError::Transient {
                op: "get_range",
                name: name.to_owned(),
                source: format!("asked for {len} bytes, got {}", body.len()).into(),
            });
        }
        Ok(body)
    }

    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        validate_name(name)?;
        self.head("size", name).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.key(prefix);
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_sdk_error("list", prefix, e))?;
            for obj in page.contents() {
                if let Some(name) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    names.push(name.to_owned());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_sdk_error("delete", name, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let mut cfg = S3Config::new("b");
        cfg.access_key_id = Some("GKexample".into());
        cfg.secret_access_key = Some(Secret::new("hunter2-very-secret"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("GKexample"));
    }

    #[test]
    fn config_is_strict_and_reports_every_problem() {
        let err = toml::from_str::<S3Config>("bucket = \"b\"\nbukcet = \"x\"")
            .expect_err("unknown field");
        assert!(err.to_string().contains("bukcet"), "{err}");

        let cfg: S3Config = toml::from_str(
            "prefix = \"Bad Prefix\"\nendpoint = \"garage:3900\"\naccess_key_id = \"k\"\n\
             connect_timeout = \"2s\"\npart_size = 1024",
        )
        .expect("parses");
        assert_eq!(cfg.connect_timeout, Duration::from_secs(2));
        let problems = cfg.problems();
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn loads_through_the_config_loader_with_env_overrides() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Svc {
            s3: S3Config,
        }
        impl crate::config::Validate for Svc {
            fn validate(&self, problems: &mut Vec<String>) {
                self.s3.validate(problems);
            }
        }
        let env = vec![
            (
                "MAILVAULT_S3_ENDPOINT".to_owned(),
                "http://garage:3900".to_owned(),
            ),
            ("MAILVAULT_S3_MAX_ATTEMPTS".to_owned(), "9".to_owned()),
        ];
        let svc: Svc =
            crate::config::load_str("[s3]\nregion = \"garage\"\n", "svc.toml", env).expect("valid");
        assert_eq!(svc.s3.endpoint.as_deref(), Some("http://garage:3900"));
        assert_eq!(svc.s3.max_attempts, 9);
        assert_eq!(svc.s3.region, "garage");

        let err = crate::config::load_str::<Svc, _>(
            "[s3]\nmax_attempts = 0\npart_concurrency = 0\n",
            "svc.toml",
            Vec::new(),
        )
        .expect_err("invalid");
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn prefix_is_normalized() {
        let mut cfg = S3Config::new("b");
        assert_eq!(cfg.normalized_prefix(), "");
        cfg.prefix = "tenant-a".into();
        assert_eq!(cfg.normalized_prefix(), "tenant-a/");
        cfg.prefix = "tenant-a/".into();
        assert_eq!(cfg.normalized_prefix(), "tenant-a/");
    }
}
