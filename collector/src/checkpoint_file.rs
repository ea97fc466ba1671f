//! [`FileCheckpointStore`]: checkpoints in a local directory, for the single-process mode.
//!
//! Layout (names are hex hashes, like the KV store's keys, so any mailbox or folder id is
//! file-name safe): `mb/<mailbox-key>.json` (hierarchy checkpoint), `f/<mailbox-key>.log`
//! (the mailbox's folder SyncStates, appended), `v/<mailbox-key>.log` (item versions already
//! acknowledged: one line of 40 hex digits, `hash(mailbox, item, change key)`, per version,
//! appended; held in memory as a set once read).
//!
//! Mailbox checkpoints are written atomically and durably: a temp file in the same directory,
//! fsync, rename over the old one, fsync of the directory. A crash leaves either the old or the
//! new state, never a torn one.
//!
//! A folder's SyncState is appended to its mailbox's folder log as one record,
//! `<hash(mailbox, folder)> <length> <checksum> <state>\n`, and the log is fdatasync'ed; the
//! last intact record of a folder wins (length 0: deleted), a torn or damaged record is
//! skipped. The log is rewritten atomically (as above) once it is mostly superseded records.
//! (A temp file and a rename per SyncState — one per page of every folder — made ext4 allocate
//! and free an inode each time: a tenth of a single-process backup's CPU on the dev corpus.)
//! Folder files of earlier versions (`f/<hash(mailbox, folder)>`) are still read when the log
//! has no record of the folder.
//!
//! Version logs are appended without fsync: losing their tail only means an item is downloaded
//! again after an invalid sync state (the aggregator dedupes it); a torn last line is skipped
//! when read. (One marker file per version cost a file creation per item — most of a
//! single-process backup's CPU time.)

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
    tmp_counter: Arc<AtomicU64>,
    versions: Arc<Mutex<Versions>>,
    /// Folder logs by mailbox key, each behind its own lock (`None` until read), so one
    /// mailbox's fdatasync never holds up another's checkpoint.
    folders: Arc<Mutex<HashMap<String, SharedFolderLog>>>,
}

/// One mailbox's folder log behind its own lock; `None` until first read.
type SharedFolderLog = Arc<Mutex<Option<FolderLog>>>;

/// A folder log is rewritten once it is this big and mostly superseded records.
const FOLDER_LOG_COMPACT_BYTES: u64 = 256 * 1024;

/// One mailbox's folder log, as read (and appended to) so far.
#[derive(Debug, Default)]
struct FolderLog {
    /// Latest state by folder key; an empty state is a deletion.
    states: HashMap<String, String>,
    /// Bytes in the file.
    bytes: u64,
    /// Bytes of the latest record of each folder that has a state: what a rewrite would hold.
    live: u64,
    /// The file may end in a torn record: start the next append on a new line.
    torn: bool,
}

fn checksum(state: &[u8]) -> String {
    hex::encode(&blake3::hash(state).as_bytes()[..8])
}

/// Bytes of a folder record (without writing it).
fn record_len(key: &str, state: &str) -> u64 {
    (key.len() + state.len().to_string().len() + 16 + state.len() + 4) as u64
}

fn folder_record(key: &str, state: &str) -> Vec<u8> {
    let mut r = format!("{key} {} {} ", state.len(), checksum(state.as_bytes())).into_bytes();
    r.extend_from_slice(state.as_bytes());
    r.push(b'\n');
    r
}

impl FolderLog {
    /// Every intact record of `bytes`, the later ones winning; damaged ones are skipped.
    fn parse(bytes: &[u8]) -> FolderLog {
        let mut log = FolderLog {
            bytes: bytes.len() as u64,
            torn: !bytes.is_empty() && !bytes.ends_with(b"\n"),
            ..Default::default()
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            match Self::record(rest) {
                Some((key, state, len)) => {
                    log.set(key, state);
                    rest = &rest[len..];
                }
                // Resynchronise on the next line.
                None => match rest.iter().position(|b| *b == b'\n') {
                    Some(nl) => rest = &rest[nl + 1..],
                    None => break,
                },
            }
        }
        log
    }

    /// The record at the start of `b`: (folder key, state, bytes taken).
    fn record(b: &[u8]) -> Option<(String, String, usize)> {
        let mut fields = b.splitn(4, |c| *c == b' ');
        let key = std::str::from_utf8(fields.next()?).ok()?;
        let len: usize = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let sum = fields.next()?;
        let head = key.len() + 1 + len.to_string().len() + 1 + sum.len() + 1;
        let state = b.get(head..head.checked_add(len)?)?;
        if key.len() != 40 || b.get(head + len) != Some(&b'\n') || sum != checksum(state).as_bytes()
        {
            return None;
        }
        let state = std::str::from_utf8(state).ok()?;
        Some((key.to_owned(), state.to_owned(), head + len + 1))
    }

    /// Records the latest state of a folder (empty: deleted), keeping `live` current.
    fn set(&mut self, key: String, state: String) {
        if !state.is_empty() {
            self.live += record_len(&key, &state);
        }
        if let Some(old) = self.states.get(&key)
            && !old.is_empty()
        {
            self.live -= record_len(&key, old);
        }
        self.states.insert(key, state);
    }
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

fn folder_key(mailbox: &str, folder: &str) -> String {
    hkey(&[&mailbox.to_lowercase(), folder])
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
            tmp_counter: Arc::default(),
            versions: Arc::default(),
            folders: Arc::default(),
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

    /// Where earlier versions kept one folder's SyncState.
    fn legacy_folder_path(&self, mailbox: &str, folder: &str) -> PathBuf {
        self.root.join("f").join(folder_key(mailbox, folder))
    }

    fn folder_log_path(&self, mailbox: &str) -> PathBuf {
        self.root
            .join("f")
            .join(format!("{}.log", mailbox_key(mailbox)))
    }

    /// Runs `f` on the folder log of `mailbox` (read on first use), on the blocking pool.
    async fn with_folder_log<T: Send + 'static>(
        &self,
        mailbox: &str,
        f: impl FnOnce(&mut FolderLog, &Path, &AtomicU64) -> Result<T, CheckpointError> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        let (logs, path, key, counter) = (
            self.folders.clone(),
            self.folder_log_path(mailbox),
            mailbox_key(mailbox),
            self.tmp_counter.clone(),
        );
        let poisoned = || CheckpointError("folder log lock poisoned".into());
        let log = logs
            .lock()
            .map_err(|_| poisoned())?
            .entry(key)
            .or_default()
            .clone();
        tokio::task::spawn_blocking(move || {
            let mut log = log.lock().map_err(|_| poisoned())?;
            if log.is_none() {
                *log = Some(match std::fs::read(&path) {
                    Ok(bytes) => FolderLog::parse(&bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => FolderLog::default(),
                    Err(e) => return Err(io_err("reading", &path, e)),
                });
            }
            let log = log.as_mut().ok_or_else(|| {
                CheckpointError(format!("folder log {} was not read", path.display()))
            })?;
            f(log, &path, &counter)
        })
        .await
        .map_err(|e| CheckpointError(format!("checkpoint task: {e}")))?
    }

    /// Appends a folder's state (empty: deleted) durably, rewriting the log when it is mostly
    /// superseded records.
    async fn put_folder_state(
        &self,
        mailbox: &str,
        folder_id: &str,
        state: &str,
    ) -> Result<(), CheckpointError> {
        let key = folder_key(mailbox, folder_id);
        let state = state.to_owned();
        self.with_folder_log(mailbox, move |log, path, tmp_counter| {
            let mut record = Vec::new();
            if log.torn {
                record.push(b'\n');
            }
            record.extend(folder_record(&key, &state));
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(&record)?;
                    f.sync_data()
                });
            // A failed append may have left part of a record.
            log.torn = written.is_err();
            written.map_err(|e| io_err("appending to", path, e))?;
            log.bytes += record.len() as u64;
            log.set(key, state);
            if log.bytes > FOLDER_LOG_COMPACT_BYTES && log.bytes > 4 * log.live {
                log.states.retain(|_, s| !s.is_empty());
                let mut all = Vec::with_capacity(log.live as usize);
                for (k, s) in &log.states {
                    all.extend(folder_record(k, s));
                }
                debug_assert_eq!(all.len() as u64, log.live);
                write_atomic_blocking(path, &all, tmp_counter.fetch_add(1, Ordering::Relaxed))?;
                log.bytes = all.len() as u64;
                log.torn = false;
            }
            Ok(())
        })
        .await
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
        let key = folder_key(mailbox, folder_id);
        let logged = self
            .with_folder_log(mailbox, move |log, _, _| Ok(log.states.get(&key).cloned()))
            .await?;
        let state = match logged {
            Some(s) => Some(s),
            None => Self::read(self.legacy_folder_path(mailbox, folder_id))
                .await?
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        };
        Ok(state.filter(|s| !s.is_empty()))
    }

    async fn put_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
        sync_state: &str,
    ) -> Result<(), CheckpointError> {
        self.put_folder_state(mailbox, folder_id, sync_state).await
    }

    async fn delete_folder(&self, mailbox: &str, folder_id: &str) -> Result<(), CheckpointError> {
        self.put_folder_state(mailbox, folder_id, "").await?;
        let path = self.legacy_folder_path(mailbox, folder_id);
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

    #[tokio::test]
    async fn a_damaged_folder_record_is_skipped_and_the_log_stays_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = "a@b.c";
        let s = FileCheckpointStore::open(dir.path()).expect("open");
        s.put_folder(mb, "F1", "S1").await.expect("put");
        s.put_folder(mb, "F2", "T1").await.expect("put");
        s.put_folder(mb, "F1", "S2").await.expect("put");
        let path = s.folder_log_path(mb);
        drop(s);
        // Flip a byte of the last record's state (F1 = S2), then tear a record off the end.
        let mut bytes = std::fs::read(&path).expect("read");
        let n = bytes.len();
        bytes[n - 2] ^= 0x20;
        bytes.extend_from_slice(b"0123456789abcdef0123456789abcdef01234567 9 ");
        std::fs::write(&path, &bytes).expect("write");

        let s = FileCheckpointStore::open(dir.path()).expect("reopen");
        // The damaged record is skipped: F1 falls back to its previous (older, so safe) state.
        assert_eq!(
            s.get_folder(mb, "F1").await.expect("get").as_deref(),
            Some("S1")
        );
        assert_eq!(
            s.get_folder(mb, "F2").await.expect("get").as_deref(),
            Some("T1")
        );
        s.put_folder(mb, "F2", "T2")
            .await
            .expect("put after a torn tail");
        drop(s);
        let s = FileCheckpointStore::open(dir.path()).expect("reopen");
        assert_eq!(
            s.get_folder(mb, "F2").await.expect("get").as_deref(),
            Some("T2")
        );
    }

    #[tokio::test]
    async fn the_folder_log_is_rewritten_once_mostly_superseded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = "a@b.c";
        let s = FileCheckpointStore::open(dir.path()).expect("open");
        let state = |i: usize| format!("{i:06}{}", "s".repeat(1000));
        for i in 0..1000 {
            s.put_folder(mb, &format!("F{}", i % 3), &state(i))
                .await
                .expect("put");
        }
        s.put_folder(mb, "gone", "G").await.expect("put");
        s.delete_folder(mb, "gone").await.expect("delete");
        let size = std::fs::metadata(s.folder_log_path(mb))
            .expect("stat")
            .len();
        assert!(
            size < 2 * FOLDER_LOG_COMPACT_BYTES,
            "1000 states of ~1 KB, 3 folders: the log holds {size} bytes"
        );
        drop(s);
        let s = FileCheckpointStore::open(dir.path()).expect("reopen");
        for (f, i) in [("F0", 999), ("F1", 997), ("F2", 998)] {
            assert_eq!(
                s.get_folder(mb, f).await.expect("get"),
                Some(state(i)),
                "{f}"
            );
        }
        assert_eq!(s.get_folder(mb, "gone").await.expect("get"), None);
    }

    #[tokio::test]
    async fn a_folder_file_of_an_earlier_version_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = "a@b.c";
        let s = FileCheckpointStore::open(dir.path()).expect("open");
        let legacy = s.legacy_folder_path(mb, "F1");
        std::fs::write(&legacy, b"OLD").expect("write");
        assert_eq!(
            s.get_folder(mb, "F1").await.expect("get").as_deref(),
            Some("OLD")
        );
        s.put_folder(mb, "F1", "NEW").await.expect("put");
        assert_eq!(
            s.get_folder(mb, "F1").await.expect("get").as_deref(),
            Some("NEW")
        );
        s.delete_folder(mb, "F1").await.expect("delete");
        assert_eq!(s.get_folder(mb, "F1").await.expect("get"), None);
        assert!(!legacy.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mailboxes_checkpoint_folders_at_once_and_each_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = std::sync::Arc::new(FileCheckpointStore::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for m in 0..4 {
            for f in 0..8 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..5 {
                        s.put_folder(
                            &format!("user{m}@b.c"),
                            &format!("F{f}"),
                            &format!("{m}-{f}-{n}"),
                        )
                        .await?;
                    }
                    Ok::<_, CheckpointError>(())
                }));
            }
        }
        for t in tasks {
            t.await.expect("join").expect("put");
        }
        drop(s);
        let s = FileCheckpointStore::open(dir.path()).expect("reopen");
        for m in 0..4 {
            for f in 0..8 {
                assert_eq!(
                    s.get_folder(&format!("user{m}@b.c"), &format!("F{f}"))
                        .await
                        .expect("get"),
                    Some(format!("{m}-{f}-4"))
                );
            }
        }
    }

    /// The checkpoint log as a crash or a bad disk leaves it: whatever follows the intact
    /// records (torn writes, garbage, a half record), parsing never panics and every record
    /// before the damage is recovered. `MAILVAULT_FUZZ_CASES` widens the run.
    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(mailvault_harness::fuzz_cases(256)))]

            #[test]
            fn damage_after_intact_records_loses_none_of_them(
                states in proptest::collection::vec("[A-Za-z0-9+/=]{0,64}", 1..6),
                tail in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                let mut bytes = Vec::new();
                let mut want = std::collections::BTreeMap::new();
                for (i, s) in states.iter().enumerate() {
                    let key = format!("{:040x}", i);
                    bytes.extend_from_slice(&folder_record(&key, s));
                    want.insert(key, s.clone());
                }
                want.retain(|_, s| !s.is_empty());
                bytes.extend_from_slice(&tail);
                let log = FolderLog::parse(&bytes);
                for (k, s) in &want {
                    prop_assert_eq!(log.states.get(k), Some(s), "record {} lost", k);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let log = FolderLog::parse(&bytes);
                prop_assert!(log.live <= log.bytes + 64 * log.states.len() as u64);
            }
        }
    }
}
