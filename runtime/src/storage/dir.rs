//! A [`BlobStore`] over a local directory, for the all-in-one mode and tests.
//!
//! Each object is one file at `root/<name>`. A put writes a hidden temporary file in the
//! object's directory, fsyncs it, then publishes it with `hard_link`, which fails when the name
//! exists, so an object is never replaced, not even by a racing writer. The directory is fsynced
//! afterwards so the new name survives a crash. Hidden entries (temporary files) never appear in
//! `list`, and valid object names never start a segment with a dot.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use mailvault_format::store::{BlobStore, PutOutcome, StoreError, check_range, validate_name};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory of immutable objects.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens (creating it if needed) the directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_error("open", &root.display().to_string(), e))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directories `dirs` (relative to the root) if missing, and makes them
    /// durable. Used at repository creation for the pack fan-out: creating a directory on first
    /// use put a directory inode allocation and two fsyncs on a backup's critical path (on ext4
    /// a fifth of the aggregator's system time in a first backup).
    pub fn create_dirs(&self, dirs: impl IntoIterator<Item = String>) -> Result<(), StoreError> {
        let mut parents = std::collections::BTreeSet::new();
        for d in dirs {
            validate_name(&d)?;
            let path = self.path(&d);
            let err = |e| io_error("create_dirs", &d, e);
            fs::create_dir_all(&path).map_err(err)?;
            let mut p = path.as_path();
            while let Some(parent) = p.parent() {
                if !parent.starts_with(&self.root) {
                    break;
                }
                parents.insert(parent.to_path_buf());
                p = parent;
            }
        }
        for p in parents {
            sync_dir(&p).map_err(|e| io_error("create_dirs", &p.display().to_string(), e))?;
        }
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        // validate_name guarantees no absolute path, no `..`, no empty segment.
        self.root.join(name)
    }

    async fn blocking<T, F>(&self, op: &'static str, name: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(DirStore) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| StoreError::Transient {
                op,
                name: name.to_owned(),
                source: Box::new(e),
            })?
    }

    /// Creates the missing directories between the root and `dir`, fsyncing each parent that
    /// gained an entry.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent()
            && parent != dir
            && parent.starts_with(&self.root)
        {
            self.ensure_dir(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn put_blocking(&self, name: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let err = |e| io_error("put", name, e);
        let path = self.path(name);
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir).map_err(err)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<PutOutcome> {
            let mut file = File::options().write(true).create_new(true).open(&tmp)?;
            file.write_all(data)?;
            file.sync_all()?;
            drop(file);
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(PutOutcome::Created),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(e),
            }
        })();
        if let Err(e) = fs::remove_file(&tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            // Harmless for correctness (hidden, never listed), but it takes space.
            tracing::warn!(object = name, tmp = %tmp.display(), error = %e, "could not remove a temporary file");
        }
        let outcome = result.map_err(err)?;
        sync_dir(&dir).map_err(err)?;
        Ok(outcome)
    }

    fn read_range_blocking(
        &self,
        name: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes, StoreError> {
        let op = if range.is_some() { "get_range" } else { "get" };
        let err = |e| io_error(op, name, e);
        let mut file = open_file(&self.path(name)).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let (offset, len) = range.unwrap_or((0, size));
        check_range(name, size, offset, len)?;
        let len = usize::try_from(len).map_err(|e| StoreError::Permanent {
            op,
            name: name.to_owned(),
            source: Box::new(e),
        })?;
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).map_err(err)?;
        file.read_exact(&mut buf).map_err(err)?;
        Ok(Bytes::from(buf))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Walk only the deepest directory the prefix names completely.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !dir_part.is_empty() {
            validate_name(dir_part).map_err(|_| StoreError::InvalidName {
                name: prefix.to_owned(),
            })?;
        }
        let mut names = Vec::new();
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)
        };
        walk(&start, dir_part, prefix, &mut names).map_err(|e| io_error("list", prefix, e))?;
        names.sort();
        Ok(names)
    }
}

/// Opens a regular file; a directory at that path counts as missing.
fn open_file(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::from(io::ErrorKind::NotFound))
    }
}

fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue; // not a name this store wrote
        };
        if file_name.starts_with('.') {
            continue; // temporary files
        }
        let name = if rel.is_empty() {
            file_name
        } else {
            format!("{rel}/{file_name}")
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            // Descend only where names below can still match the prefix.
            let as_dir = format!("{name}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(&entry.path(), &name, prefix, out)?;
            }
        } else if file_type.is_file() && name.starts_with(prefix) {
            out.push(name);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error(op: &'static str, name: &str, e: io::Error) -> StoreError {
    use io::ErrorKind::*;
    match e.kind() {
        NotFound => StoreError::NotFound {
            name: name.to_owned(),
        },
        PermissionDenied | InvalidInput | InvalidData | Unsupported | NotADirectory
        | IsADirectory | ReadOnlyFilesystem | InvalidFilename => StoreError::Permanent {
            op,
            name: name.to_owned(),
            source: Box::new(e),
        },
        // Disk full, interrupted, I/O errors: may pass.
        _ => StoreError::Transient {
            op,
            name: name.to_owned(),
            source: Box::new(e),
        },
    }
}

#[async_trait]
impl BlobStore for DirStore {
    async fn put(&self, name: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("put", name, move |s| s.put_blocking(&owned, &data))
            .await
    }

    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("get", name, move |s| s.read_range_blocking(&owned, None))
            .await
    }

    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("get_range", name, move |s| {
            s.read_range_blocking(&owned, Some((offset, len)))
        })
        .await
    }

    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("size", name, move |s| match fs::metadata(s.path(&owned)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_error("size", &owned, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let owned = prefix.to_owned();
        self.blocking("list", prefix, move |s| s.list_blocking(&owned))
            .await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let owned = name.to_owned();
        self.blocking("delete", name, move |s| {
            let path = s.path(&owned);
            match fs::remove_file(&path) {
                Ok(()) => {
                    let dir = path.parent().unwrap_or(&s.root);
                    sync_dir(dir).map_err(|e| io_error("delete", &owned, e))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(io_error("delete", &owned, e)),
            }
        })
        .await
    }
}
