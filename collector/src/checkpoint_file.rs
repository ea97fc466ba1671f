//! [`FileCheckpointStore`]: checkpoints in a local directory, for the single-process mode.
//!
//! Layout (names are hex hashes, like the KV store's keys, so any mailbox or folder id is
//! file-name safe): `mb/<mailbox-key>.json` (hierarchy checkpoint), `f/<hash(mailbox, folder)>`
//! (folder SyncState), `v/<mailbox-key>.log` (item versions already acknowledged: one line of
//! 40 hex digits, `hash(mailbox, item, change key)`, per version, appended; held in memory as
//! a set once read).
//!
//! Mailbox and folder checkpoints are written atomically and durably: a temp file in the same
//! directory, fsync, rename over the old one, fsync of the directory. A crash leaves either the
//! old or the new state, never a torn one. Version logs are appended without fsync: losing
//! their tail only means an item is downloaded again after an invalid sync state (the
//! aggregator dedupes it); a torn last line is skipped when read. (One marker file per version
//! cost a file creation per item — most of a single-process backup's CPU time.)

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::ews::ItemId;
use crate::sync::{CheckpointError, CheckpointStore, MailboxCheckpoint, mailbox_key};

/// Checkpoints in a directory (share it in an `Arc`).
#[derive(Debug)]
pub struct FileCheckpointStore {
    root: PathBuf,
    tmp_counter: AtomicU64,
    versions: Arc<Mutex<Versions>>,
}

/// The version logs read so far, by mailbox key.
#[derive(Debug, Default)]
struct Versions {
    sets: HashMap<String, VersionLog>,
}

#[derive(Debug, Default)]
struct VersionLog {
    known: HashSet<[u8; 20]>,
    /// The file ends in a torn line: start the next append on a new line.
    torn: bool,
}

fn version_key(mailbox: &str, id: &ItemId) -> [u8; 20] {
    let mut h = blake3::Hasher::new();
    for p in [mailbox.to_lowercase().as_str(), &id.id, &id.change_key] {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let mut k = [0u8; 20];
    k.copy_from_slice(&h.finalize().as_bytes()[..20]);
    k
}

impl Versions {
    /// The log of `mailbox`, read from `path` on first use.
    fn log(&mut self, mailbox: &str, path: &Path) -> Result<&mut VersionLog, CheckpointError> {
        let key = mailbox_key(mailbox);
        if !self.sets.contains_key(&key) {
            let mut log = VersionLog::default();
            match std::fs::read(path) {
                Ok(bytes) => {
                    log.torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
                    for line in bytes.split(|b| *b == b'\n') {
                        let mut k = [0u8; 20];
                        if line.len() == 40 && hex::decode_to_slice(line, &mut k).is_ok() {
                            log.known.insert(k);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("reading", path, e)),
            }
            self.sets.insert(key.clone(), log);
        }
        self.sets
            .get_mut(&key)
            .ok_or_else(|| CheckpointError(format!("version log of {mailbox} vanished")))
    }
}

fn hkey(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize().as_bytes()[..20])
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError(format!("{what} {}: {e}", path.display()))
}

impl FileCheckpointStore {
    /// Opens (creating if needed) the checkpoint directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CheckpointError> {
        let root = root.into();
        for sub in ["mb", "f", "v"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| io_err("creating", &d, e))?;
        }
        Ok(Self {
            root,
            tmp_counter: AtomicU64::new(0),
            versions: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mailbox_path(&self, mailbox: &str) -> PathBuf {
        self.root
            .join("mb")
            .join(format!("{}.json", mailbox_key(mailbox)))
    }

    fn folder_path(&self, mailbox: &str, folder: &str) -> PathBuf {
        self.root
            .join("f")
            .join(hkey(&[&mailbox.to_lowercase(), folder]))
    }

    fn versions_path(&self, mailbox: &str) -> PathBuf {
        self.root
            .join("v")
            .join(format!("{}.log", mailbox_key(mailbox)))
    }

    async fn read(path: PathBuf) -> Result<Option<Vec<u8>>, CheckpointError> {
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path, e)),
        }
    }

    /// temp + fsync + rename + fsync(dir).
    async fn write_atomic(&self, path: PathBuf, data: Vec<u8>) -> Result<(), CheckpointError> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || write_atomic_blocking(&path, &data, n))
            .await
            .map_err(|e| CheckpointError(format!("checkpoint write task: {e}")))?
    }
}

fn write_atomic_blocking(path: &Path, data: &[u8], n: u64) -> Result<(), CheckpointError> {
    let dir = path
        .parent()
        .ok_or_else(|| io_err("no parent directory for", path, "-"))?;
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
        f.write_all(data).map_err(|e| io_err("writing", &tmp, e))?;
        f.sync_all().map_err(|e| io_err("syncing", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err("renaming onto", path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("syncing directory", dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl CheckpointStore for FileCheckpointStore {
    async fn get_mailbox(
        &self,
        mailbox: &str,
    ) -> Result<Option<MailboxCheckpoint>, CheckpointError> {
        let path = self.mailbox_path(mailbox);
        match Self::read(path.clone()).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io_err("decoding mailbox checkpoint", &path, e)),
        }
    }

    async fn put_mailbox(
        &self,
        mailbox: &str,
        cp: &MailboxCheckpoint,
    ) -> Result<(), CheckpointError> {
        let mut cp = cp.clone();
        cp.version = 1;
        let path = self.mailbox_path(mailbox);
        let v = serde_json::to_vec(&cp).map_err(|e| io_err("encoding checkpoint for", &path, e))?;
        self.write_atomic(path, v).await
    }

    async fn get_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
    ) -> Result<Option<String>, CheckpointError> {
        let v = Self::read(self.folder_path(mailbox, folder_id)).await?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned())
            .filter(|s| !s.is_empty()))
    }

    async fn put_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
        sync_state: &str,
    ) -> Result<(), CheckpointError> {
        self.write_atomic(
            self.folder_path(mailbox, folder_id),
            sync_state.as_bytes().to_vec(),
        )
        .await
    }

    async fn delete_folder(&self, mailbox: &str, folder_id: &str) -> Result<(), CheckpointError> {
        let path = self.folder_path(mailbox, folder_id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &path, e)),
        }
    }

    async fn has_version(&self, mailbox: &str, id: &ItemId) -> Result<bool, CheckpointError> {
        let k = version_key(mailbox, id);
        let (versions, path, mailbox) = (
            self.versions.clone(),
            self.versions_path(mailbox),
            mailbox.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let mut v = versions
                .lock()
                .map_err(|_| CheckpointError("version log lock poisoned".into()))?;
            Ok(v.log(&mailbox, &path)?.known.contains(&k))
        })
        .await
        .map_err(|e| CheckpointError(format!("checkpoint read task: {e}")))?
    }

    async fn record_versions(&self, mailbox: &str, ids: &[ItemId]) -> Result<(), CheckpointError> {
        let keys: Vec<[u8; 20]> = ids.iter().map(|id| version_key(mailbox, id)).collect();
        let (versions, path, mailbox) = (
            self.versions.clone(),
            self.versions_path(mailbox),
            mailbox.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let mut v = versions
                .lock()
                .map_err(|_| CheckpointError("version log lock poisoned".into()))?;
            let log = v.log(&mailbox, &path)?;
            let mut text = Vec::with_capacity(keys.len() * 41 + 1);
            if log.torn {
                text.push(b'\n');
            }
            for k in &keys {
                if !log.known.contains(k) {
                    text.extend_from_slice(hex::encode(k).as_bytes());
                    text.push(b'\n');
                }
            }
            if text.is_empty() {
                return Ok(());
            }
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&text));
            // A failed append may have left part of a line.
            log.torn = written.is_err();
            written.map_err(|e| io_err("appending to", &path, e))?;
            log.known.extend(keys);
            Ok(())
        })
        .await
        .map_err(|e| CheckpointError(format!("checkpoint write task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::Folder;

    fn id(i: &str, ck: &str) -> ItemId {
        ItemId {
            id: i.into(),
            change_key: ck.into(),
        }
    }

    #[tokio::test]
    async fn round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileCheckpointStore::open(dir.path()).expect("open");
        let mb = "Alice@Contoso.com";
        assert_eq!(s.get_mailbox(mb).await.expect("get"), None);
        assert_eq!(s.get_folder(mb, "F1").await.expect("get"), None);
        let mut cp = MailboxCheckpoint {
            hierarchy_sync_state: "H1".into(),
            ..Default::default()
        };
        cp.folders.insert(
            "F1".into(),
            Folder {
                id: "F1".into(),
                display_name: "Inbox".into(),
                ..Default::default()
            },
        );
        cp.distinguished.insert("F1".into(), "inbox".into());
        s.put_mailbox(mb, &cp).await.expect("put");
        s.put_folder(mb, "F1", "S1").await.expect("put");
        s.put_folder(mb, "F1", "S2").await.expect("overwrite");
        s.put_folder(mb, "F2", "T1").await.expect("put");
        s.record_versions(mb, &[id("i1", "c1"), id("i2", "c1")])
            .await
            .expect("record");
        s.record_versions(mb, &[id("i1", "c1")])
            .await
            .expect("record twice");
        s.delete_folder(mb, "F2").await.expect("delete");
        s.delete_folder(mb, "F3").await.expect("delete missing");
        drop(s);

        let s = FileCheckpointStore::open(dir.path()).expect("reopen");
        let got = s
            .get_mailbox("alice@contoso.com")
            .await
            .expect("get")
            .expect("present, case-insensitive");
        assert_eq!(got.version, 1);
        assert_eq!(got.hierarchy_sync_state, "H1");
        assert_eq!(got.folders, cp.folders);
        assert_eq!(got.distinguished, cp.distinguished);
        assert_eq!(
            s.get_folder(mb, "F1").await.expect("get").as_deref(),
            Some("S2")
        );
        assert_eq!(s.get_folder(mb, "F2").await.expect("get"), None);
        assert!(s.has_version(mb, &id("i1", "c1")).await.expect("has"));
        assert!(s.has_version(mb, &id("i2", "c1")).await.expect("has"));
        assert!(!s.has_version(mb, &id("i1", "c2")).await.expect("has"));
        assert!(
            !s.has_version("bob@contoso.com", &id("i1", "c1"))
                .await
                .expect("has")
        );
        // No temp files left behind.
        for sub in ["mb", "f"] {
            for e in std::fs::read_dir(dir.path().join(sub)).expect("list") {
                let name = e.expect("entry").file_name();
                assert!(!name.to_string_lossy().ends_with(".tmp"), "{name:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_torn_version_log_line_is_skipped_and_the_next_append_starts_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = "a@b.c";
        let s = FileCheckpointStore::open(dir.path()).expect("open");
        s.record_versions(mb, &[id("i1", "c1")])
            .await
            .expect("record");
        let path = s.versions_path(mb);
        drop(s);
        // A crash in the middle of the next append.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open log");
        f.write_all(b"0123456789abcdef").expect("torn write");
        drop(f);
        let s = FileCheckpointStore::open(dir.path()).expect("reopen");
        assert!(s.has_version(mb, &id("i1", "c1")).await.expect("has"));
        s.record_versions(mb, &[id("i2", "c1")])
            .await
            .expect("record");
        drop(s);
        let s = FileCheckpointStore::open(dir.path()).expect("reopen again");
        assert!(s.has_version(mb, &id("i1", "c1")).await.expect("has"));
        assert!(s.has_version(mb, &id("i2", "c1")).await.expect("has"));
        assert!(!s.has_version(mb, &id("i3", "c1")).await.expect("has"));
        let text = std::fs::read_to_string(&path).expect("read log");
        assert_eq!(text.lines().filter(|l| l.len() == 40).count(), 2, "{text}");
    }

    #[tokio::test]
    async fn corrupt_checkpoint_is_a_typed_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileCheckpointStore::open(dir.path()).expect("open");
        let path = s.mailbox_path("a@b.c");
        std::fs::write(&path, b"{not json").expect("write");
        let e = s.get_mailbox("a@b.c").await.expect_err("corrupt");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn concurrent_writers_of_one_folder_leave_a_whole_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = std::sync::Arc::new(FileCheckpointStore::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_folder("a@b.c", "F", &format!("state-{i:04}-{}", "x".repeat(4096)))
                    .await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("put");
        }
        let v = s
            .get_folder("a@b.c", "F")
            .await
            .expect("get")
            .expect("some");
        assert!(
            v.starts_with("state-") && v.len() == 11 + 4096,
            "{}",
            v.len()
        );
    }
}
