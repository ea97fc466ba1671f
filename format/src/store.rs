//! The one narrow door between the repository format and storage.
//!
//! Implementations: [`MemoryStore`] here; the local directory and S3 stores live in
//! `mailvault-runtime` because they need an async runtime. Every implementation passes the same
//! contract suite ([`contract::run`], feature `testkit`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

/// What a `put` did. Stored objects are write-once: a put of an existing name never replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The name already existed; its bytes were left untouched.
    AlreadyExists,
}

/// Whether trying again may help; drives retry and ack decisions in the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    NotFound,
    /// Network trouble, throttling, a store that is down: retry with back-off.
    Transient,
    /// Bad credentials, bad name, bad request: retrying will not help.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {name} not found")]
    NotFound { name: String },
    #[error("{op} {name}: store unavailable: {source}")]
    Transient {
        op: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{op} {name}: {source}")]
    Permanent {
        op: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid object name {name:?}: only a-z 0-9 . _ - and / (not leading, not doubled)")]
    InvalidName { name: String },
}

impl StoreError {
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::NotFound { .. } => StoreErrorKind::NotFound,
            StoreError::Transient { .. } => StoreErrorKind::Transient,
            StoreError::Permanent { .. } | StoreError::InvalidName { .. } => {
                StoreErrorKind::Permanent
            }
        }
    }
}

/// Object storage as the repository needs it: named, immutable byte strings.
///
/// Names use `/` as separator and only `[a-z0-9._-]` otherwise ([`validate_name`]).
#[async_trait]
pub trait BlobStore: Send + Sync + Debug {
    /// Stores `data` under `name` unless the name exists (then nothing changes).
    async fn put(&self, name: &str, data: Bytes) -> Result<PutOutcome, StoreError>;
    async fn get(&self, name: &str) -> Result<Bytes, StoreError>;
    /// `len` bytes from `offset`; a range past the end is an error.
    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError>;
    /// The size of the object, `None` if it does not exist.
    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError>;
    /// Every name starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Removes the object; removing a missing object is not an error. Only prune and key
    /// removal call this.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
}

/// Rejects names that could escape a directory or differ between stores.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && name
            .split('/')
            .all(|seg| seg != "." && seg != ".." && !seg.starts_with('.'))
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn range_error(op: &'static str, name: &str, msg: String) -> StoreError {
    StoreError::Permanent {
        op,
        name: name.to_owned(),
        source: msg.into(),
    }
}

/// Checks a requested range against an object's size; shared by every store.
pub fn check_range(name: &str, size: u64, offset: u64, len: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(range_error(
            "get_range",
            name,
            format!("range {offset}+{len} outside object of {size} bytes"),
        )),
    }
}

/// An in-memory store for unit tests and throwaway repositories.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A poisoned lock only means another test thread panicked; the map is still whole.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces an object's bytes, bypassing write-once: for corruption tests only.
    pub fn tamper(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut map = self.lock();
        match map.get(name) {
            Some(b) => {
                let mut v = b.to_vec();
                f(&mut v);
                map.insert(name.to_owned(), Bytes::from(v));
                true
            }
            None => false,
        }
    }

    /// Total bytes stored under `prefix`.
    pub fn bytes_under(&self, prefix: &str) -> u64 {
        self.lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.len() as u64)
            .sum()
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn put(&self, name: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        validate_name(name)?;
        let mut map = self.lock();
        if map.contains_key(name) {
            return Ok(PutOutcome::AlreadyExists);
        }
        map.insert(name.to_owned(), data);
        Ok(PutOutcome::Created)
    }

    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        validate_name(name)?;
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_owned(),
            })
    }

    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let all = self.get(name).await?;
        check_range(name, all.len() as u64, offset, len)?;
        // check_range proved offset + len <= all.len(), which is a usize.
        Ok(all.slice(offset as usize..(offset + len) as usize))
    }

    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        validate_name(name)?;
        Ok(self.lock().get(name).map(|b| b.len() as u64))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        self.lock().remove(name);
        Ok(())
    }
}

/// The contract every [`BlobStore`] must meet. Call [`contract::run`] from each store's tests.
#[cfg(any(test, feature = "testkit"))]
pub mod contract {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    /// Runs every check against an empty store (or an empty prefix of one: `root`, which must
    /// be empty or end with `/`). Panics with a message naming the broken rule.
    pub async fn run(store: &dyn BlobStore, root: &str) {
        let n = |s: &str| format!("{root}{s}");

        // Round trip, including an empty object and a nested name.
        let small = pattern(1000, 1);
        assert_eq!(
            store
                .put(&n("a/b/obj-1"), small.clone())
                .await
                .expect("put"),
            PutOutcome::Created,
            "first put creates"
        );
        assert_eq!(store.get(&n("a/b/obj-1")).await.expect("get"), small);
        store
            .put(&n("a/empty"), Bytes::new())
            .await
            .expect("put empty");
        assert_eq!(store.get(&n("a/empty")).await.expect("get empty").len(), 0);

        // Missing objects.
        let err = store.get(&n("a/missing")).await.expect_err("missing get");
        assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err}");
        assert_eq!(store.size(&n("a/missing")).await.expect("size"), None);

        // Ranges and sizes.
        assert_eq!(store.size(&n("a/b/obj-1")).await.expect("size"), Some(1000));
        assert_eq!(
            store
                .get_range(&n("a/b/obj-1"), 10, 20)
                .await
                .expect("range"),
            small.slice(10..30)
        );
        assert_eq!(
            store
                .get_range(&n("a/b/obj-1"), 990, 10)
                .await
                .expect("tail range"),
            small.slice(990..1000)
        );
        assert!(
            store.get_range(&n("a/b/obj-1"), 995, 10).await.is_err(),
            "a range past the end must fail"
        );

        // Write-once: the same name with other bytes never replaces the object.
        let other = pattern(1000, 2);
        assert_eq!(
            store.put(&n("a/b/obj-1"), other).await.expect("second put"),
            PutOutcome::AlreadyExists
        );
        assert_eq!(
            store.get(&n("a/b/obj-1")).await.expect("get after"),
            small,
            "second put replaced the object"
        );

        // Listing by prefix, sorted, full names.
        store
            .put(&n("a/b/obj-2"), pattern(10, 3))
            .await
            .expect("put 2");
        store
            .put(&n("a/c/obj-3"), pattern(10, 4))
            .await
            .expect("put 3");
        assert_eq!(
            store.list(&n("a/b/")).await.expect("list"),
            vec![n("a/b/obj-1"), n("a/b/obj-2")]
        );
        assert_eq!(store.list(&n("a/")).await.expect("list all").len(), 4);
        assert!(store.list(&n("zz/")).await.expect("list none").is_empty());

        // A large object (crosses multipart thresholds in S3 stores).
        let big = pattern(21 * 1024 * 1024 + 17, 5);
        store
            .put(&n("big/one"), big.clone())
            .await
            .expect("put big");
        assert_eq!(
            store.size(&n("big/one")).await.expect("size big"),
            Some(big.len() as u64)
        );
        let back = store.get(&n("big/one")).await.expect("get big");
        assert!(back == big, "large object read back differently");
        assert_eq!(
            store
                .get_range(&n("big/one"), 8 * 1024 * 1024 - 3, 7)
                .await
                .expect("big range"),
            big.slice(8 * 1024 * 1024 - 3..8 * 1024 * 1024 + 4)
        );

        // Delete, and delete again.
        store.delete(&n("a/b/obj-2")).await.expect("delete");
        store.delete(&n("a/b/obj-2")).await.expect("delete twice");
        assert_eq!(store.size(&n("a/b/obj-2")).await.expect("size"), None);
        assert_eq!(store.list(&n("a/b/")).await.expect("list").len(), 1);

        // Names that could escape a directory are refused.
        for bad in ["../x", "a/../../x", "/abs", "a//b", "A/Upper", "a/.hidden"] {
            let err = store
                .put(bad, Bytes::from_static(b"x"))
                .await
                .expect_err(bad);
            assert_eq!(err.kind(), StoreErrorKind::Permanent, "{bad}: {err}");
        }

        for name in store.list(root).await.expect("final list") {
            store.delete(&name).await.expect("cleanup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_meets_the_contract() {
        futures::executor::block_on(contract::run(&MemoryStore::new(), ""));
    }
}
