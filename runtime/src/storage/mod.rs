//! The directory and S3 [`BlobStore`]s, and [`open_store`] to pick one from a store URL.

mod dir;
mod s3;
mod s3_http;

use std::path::PathBuf;
use std::sync::Arc;

pub use dir::DirStore;
use mailvault_format::store::{BlobStore, StoreError};
pub use s3::{S3Config, S3ConfigError, S3Store, Secret};
pub use s3_http::HttpClientError;

/// Where a repository lives, parsed from a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `s3://bucket/optional/prefix`
    S3 { bucket: String, prefix: String },
    /// `file:///path` or a plain path.
    Dir(PathBuf),
}

impl StoreLocation {
    pub fn parse(url: &str) -> Result<Self, OpenStoreError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(OpenStoreError::Url {
                    url: url.to_owned(),
                    reason: "no bucket name",
                });
            }
            Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            Ok(Self::Dir(PathBuf::from(path)))
        } else if url.contains("://") {
            Err(OpenStoreError::Url {
                url: url.to_owned(),
                reason: "only s3:// and file:// URLs or plain paths are supported",
            })
        } else if url.is_empty() {
            Err(OpenStoreError::Url {
                url: url.to_owned(),
                reason: "empty",
            })
        } else {
            Ok(Self::Dir(PathBuf::from(url)))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error("store URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error(
        "store URL {url:?} names bucket/prefix {url_value:?} but the s3 config says {config_value:?}"
    )]
    Conflict {
        url: String,
        url_value: String,
        config_value: String,
    },
    #[error(transparent)]
    S3(#[from] S3ConfigError),
    #[error("opening directory store: {0}")]
    Dir(#[from] StoreError),
}

/// Opens the store a URL names: `s3://bucket/prefix` with the connection settings of `s3`
/// (defaults and the SDK credential chain when `None`), otherwise a local directory. The URL's
/// bucket and prefix are used; the config may repeat them but not contradict them.
pub async fn open_store(
    url: &str,
    s3: Option<S3Config>,
) -> Result<Arc<dyn BlobStore>, OpenStoreError> {
    match StoreLocation::parse(url)? {
        StoreLocation::Dir(path) => Ok(Arc::new(DirStore::open(path)?)),
        StoreLocation::S3 { bucket, prefix } => {
            let mut cfg = s3.unwrap_or_else(|| S3Config::new(""));
            let conflict = |url_value: &str, config_value: &str| OpenStoreError::Conflict {
                url: url.to_owned(),
                url_value: url_value.to_owned(),
                config_value: config_value.to_owned(),
            };
            if !cfg.bucket.is_empty() && cfg.bucket != bucket {
                return Err(conflict(&bucket, &cfg.bucket));
            }
            let trim = |p: &str| p.trim_end_matches('/').to_owned();
            if !cfg.prefix.is_empty() && trim(&cfg.prefix) != trim(&prefix) {
                return Err(conflict(&prefix, &cfg.prefix));
            }
            cfg.bucket = bucket;
            cfg.prefix = prefix;
            Ok(Arc::new(S3Store::connect(&cfg).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreLocation::parse("s3://bkt/some/prefix").expect("s3"),
            StoreLocation::S3 {
                bucket: "bkt".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            StoreLocation::parse("s3://bkt").expect("s3 no prefix"),
            StoreLocation::S3 {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            StoreLocation::parse("/var/lib/mailvault").expect("path"),
            StoreLocation::Dir("/var/lib/mailvault".into())
        );
        assert_eq!(
            StoreLocation::parse("file:///srv/repo").expect("file url"),
            StoreLocation::Dir("/srv/repo".into())
        );
        assert!(StoreLocation::parse("s3:///x").is_err());
        assert!(StoreLocation::parse("gs://bkt").is_err());
        assert!(StoreLocation::parse("").is_err());
    }

    #[tokio::test]
    async fn conflicting_bucket_is_refused() {
        let cfg = S3Config::new("other");
        let err = open_store("s3://bkt/p", Some(cfg))
            .await
            .expect_err("conflict");
        assert!(matches!(err, OpenStoreError::Conflict { .. }), "{err}");
    }
}
