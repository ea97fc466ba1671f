//! Which repository records the index holds: the manifest ids of every item version and
//! history record applied, in a file beside the index segments, appended after each commit.
//!
//! The repository is the truth and the index is derived from it; this file is what lets an
//! index find out, after a crash, what it missed. A folder checkpoint advances once items are
//! durable in the repository, and the index commits later, so a process killed in between
//! leaves items stored and never indexed. [`crate::stage::catch_up`] compares the
//! repository's manifests with this file and applies the difference.
//!
//! Appending after the commit (never before) means the file can only lag the index: ids
//! applied but not yet listed are applied again, which changes nothing (applying is
//! idempotent). A record cut short by a crash mid-append is ignored.
//!
//! Format: a sequence of 32-byte manifest ids, nothing else.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use mailvault_format::BlobId;

/// The file's name inside the index directory (tantivy leaves files it did not write alone).
pub const FILE_NAME: &str = "mailvault-applied.ids";

/// The applied-ids file of one index directory.
#[derive(Debug, Clone)]
pub struct AppliedLog {
    path: PathBuf,
}

impl AppliedLog {
    pub fn in_dir(dir: &Path) -> Self {
        AppliedLog {
            path: dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the index has ever recorded what it applied (an index written before this
    /// file existed has not: everything in the repository is then applied once more).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Creates the file empty if it is missing (a new index holds nothing).
    pub fn create_if_missing(&self) -> io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        restrict(&mut opts);
        opts.open(&self.path).map(drop)
    }

    /// Appends `ids` and makes them durable. Call only after the index commit that made them
    /// searchable.
    pub fn append(&self, ids: &[BlobId]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(ids.len() * 32);
        for id in ids {
            buf.extend_from_slice(&id.0);
        }
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        restrict(&mut opts);
        let mut f = opts.open(&self.path)?;
        // A torn earlier append would shift every later id: start on a record boundary.
        let len = f.metadata()?.len();
        if len % 32 != 0 {
            f.set_len(len - len % 32)?;
        }
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Every id listed (empty when the file does not exist).
    pub fn load(&self) -> io::Result<HashSet<BlobId>> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(e),
        }
        Ok(bytes
            .chunks_exact(32)
            .filter_map(BlobId::from_slice)
            .collect())
    }
}

#[cfg(unix)]
fn restrict(opts: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt as _;
    opts.mode(0o600);
}

#[cfg(not(unix))]
fn restrict(_: &mut OpenOptions) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_survive_reopening_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AppliedLog::in_dir(dir.path());
        assert!(!log.exists());
        assert!(log.load().expect("load").is_empty());
        let a: Vec<BlobId> = (0..3).map(|_| BlobId::random()).collect();
        log.append(&a).expect("append");
        assert_eq!(log.load().expect("load"), a.iter().copied().collect());

        // A crash mid-append leaves part of a record behind.
        let mut f = OpenOptions::new()
            .append(true)
            .open(log.path())
            .expect("open");
        f.write_all(&[7u8; 13]).expect("torn");
        drop(f);
        assert_eq!(log.load().expect("load").len(), 3, "partial record ignored");
        let b = BlobId::random();
        log.append(&[b]).expect("append after a torn tail");
        let all = log.load().expect("load");
        assert_eq!(all.len(), 4);
        assert!(all.contains(&b) && a.iter().all(|x| all.contains(x)));
    }
}
