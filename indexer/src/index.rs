//! The tantivy index on local disk.
//!
//! Three kinds of documents (field `kind`):
//! * `seg` — one per item *segment* (see [`crate::history`]): an item version in one state
//!   (folder, read flag, deleted) over `[valid_from, valid_to)`. Everything searchable.
//! * `meta` — one per item: the prost-encoded [`ItemRecord`] (every version with its extracted
//!   content, every change), so an event can recompute the item's segments without the
//!   repository, also before a commit made earlier events searchable.
//! * `folder` — one per (mailbox, folder path) known to be a distinguished folder.
//!
//! Every event on an item deletes all its documents (term `item_key`) and re-adds them from
//! the updated record. Events already in the record change nothing (idempotent).
//!
//! At rest the index holds no mail text in clear where it can be read back: the `meta` record
//! is stored without body text (a rewrite extracts it again from the encrypted repository
//! through the [`BodySource`] the indexer installs), body terms exist only inverted, and
//! the directory is created `0700`. See docs/indexer.md, "What the index holds at rest".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, TantivyDocument,
    Value as _,
};
use tantivy::{DocAddress, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, Term};

use crate::applied::AppliedLog;
use crate::error::IndexError;
use crate::extract::{self, Extracted};
use crate::history::{
    ChangeInput, ChangeRecord, ItemRecord, ItemStoredInput, Segment, VersionRecord,
};
use crate::order::NewestFirst;
use crate::query::{self, Builder};

const SEP: char = '\u{1f}';
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

/// Who is searching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything (administrators, compliance).
    All,
    /// Items in this mailbox, and journaled items that list this address.
    User(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchOptions {
    /// Point in time (unix ms); `None` is now.
    pub as_of: Option<i64>,
    pub scope: Scope,
    pub offset: usize,
    pub limit: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            as_of: None,
            scope: Scope::All,
            offset: 0,
            limit: 50,
        }
    }
}

/// One item version in one state.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub manifest_id: String,
    pub mailbox: String,
    pub item_id: String,
    pub change_key: String,
    pub folder_path: Vec<String>,
    pub distinguished_folder: String,
    pub item_class: String,
    pub subject: String,
    /// Sender address (lower-case).
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// Date header, or the collection time when there is none.
    pub date_unix_ms: i64,
    pub size: u64,
    pub has_attachment: bool,
    pub is_read: bool,
    pub deleted: bool,
    pub deleted_unix_ms: Option<i64>,
    /// Journal reports: byte range (offset, len) of the original message in the stored item.
    pub embedded: Option<(u64, u64)>,
    pub visible_to: Vec<String>,
    pub internet_message_id: String,
    pub parse_error: Option<String>,
    /// Always 0: results are ordered by date, newest first (then manifest id).
    pub score: f32,
    /// Start and end (exclusive; `i64::MAX` while current) of this state.
    pub valid_from: i64,
    pub valid_to: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<Hit>,
    /// Matches in total (not only this page).
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    pub address: String,
    /// Items currently live (not deleted) that the scope may see.
    pub items: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub path: Vec<String>,
    /// Items directly in this folder at the time asked.
    pub items: u64,
    /// EWS distinguished folder id (`inbox`, `sentitems`, …) if this is a well-known folder.
    pub distinguished: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub kind: Field,
    pub item_key: Field,
    pub record: Field,
    pub manifest_id: Field,
    pub mailbox: Field,
    pub item_id: Field,
    pub change_key: Field,
    pub folder: Field,
    pub folder_path: Field,
    pub distinguished: Field,
    pub item_class: Field,
    pub subject: Field,
    pub body: Field,
    pub attachment: Field,
    pub from: Field,
    pub to: Field,
    pub cc: Field,
    pub from_t: Field,
    pub to_t: Field,
    pub cc_t: Field,
    pub bcc_t: Field,
    pub has_attachment: Field,
    pub is_read: Field,
    pub deleted: Field,
    pub deleted_at: Field,
    pub valid_from: Field,
    pub valid_to: Field,
    pub date: Field,
    pub size: Field,
    pub visible_to: Field,
    pub embedded_offset: Field,
    pub embedded_len: Field,
    pub message_id: Field,
    pub parse_error: Field,
    pub importance: Field,
    /// `now` on the current segment of an item (`valid_to` = ∞), plus `live` when that
    /// segment is not deleted: the common "now" filter is one posting list instead of three.
    pub state: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let f = Fields {
        kind: b.add_text_field("kind", STRING),
        item_key: b.add_text_field("item_key", STRING),
        record: b.add_bytes_field("record", STORED),
        manifest_id: b.add_text_field("manifest_id", STRING | STORED | FAST),
        mailbox: b.add_text_field("mailbox", STRING | STORED),
        item_id: b.add_text_field("item_id", STRING | STORED),
        change_key: b.add_text_field("change_key", STORED),
        folder: b.add_text_field("folder", STRING),
        folder_path: b.add_text_field("folder_path", STORED),
        distinguished: b.add_text_field("distinguished", STRING | STORED),
        item_class: b.add_text_field("item_class", STRING | STORED),
        subject: b.add_text_field("subject", TEXT | STORED),
        body: b.add_text_field("body", TEXT),
        attachment: b.add_text_field("attachment", TEXT),
        from: b.add_text_field("from", STORED),
        to: b.add_text_field("to", STORED),
        cc: b.add_text_field("cc", STORED),
        from_t: b.add_text_field("from_t", STRING),
        to_t: b.add_text_field("to_t", STRING),
        cc_t: b.add_text_field("cc_t", STRING),
        bcc_t: b.add_text_field("bcc_t", STRING),
        has_attachment: b.add_u64_field("has_attachment", INDEXED | STORED),
        is_read: b.add_u64_field("is_read", INDEXED | STORED),
        deleted: b.add_u64_field("deleted", INDEXED | STORED),
        deleted_at: b.add_i64_field("deleted_at", INDEXED | FAST | STORED),
        valid_from: b.add_i64_field("valid_from", INDEXED | FAST | STORED),
        valid_to: b.add_i64_field("valid_to", INDEXED | FAST | STORED),
        date: b.add_i64_field("date", INDEXED | FAST | STORED),
        size: b.add_u64_field("size", STORED),
        visible_to: b.add_text_field("visible_to", STRING | STORED),
        embedded_offset: b.add_u64_field("embedded_offset", STORED),
        embedded_len: b.add_u64_field("embedded_len", STORED),
        message_id: b.add_text_field("message_id", STRING | STORED),
        parse_error: b.add_text_field("parse_error", STORED),
        importance: b.add_text_field("importance", STRING | STORED),
        state: b.add_text_field("state", STRING),
    };
    (b.build(), f)
}

struct WriterState {
    w: IndexWriter,
    /// Records changed since the last commit (not yet visible to the reader).
    pending: HashMap<String, ItemRecord>,
    /// Distinguished folder documents written (or found) already.
    folders: HashSet<String>,
    /// Manifest ids applied since the last commit, listed in the applied log after it.
    applied: Vec<mailvault_format::BlobId>,
}

/// Where the body text of a stored version comes from when the index rewrites an item whose
/// record it keeps without bodies: the repository, read and extracted again.
pub trait BodySource: Send + Sync {
    /// The body text [`extract::extract_item`] gives for this manifest's content.
    fn body(&self, manifest_id: &str, unwrap_journal: bool) -> Result<String, IndexError>;
}

struct Inner {
    bodies: std::sync::RwLock<Option<Arc<dyn BodySource>>>,
    /// Mailboxes whose journal reports are unwrapped; `None`: every mailbox's.
    journal_mailboxes: std::sync::RwLock<Option<HashSet<String>>>,
    index: tantivy::Index,
    reader: IndexReader,
    f: Fields,
    writer: Mutex<WriterState>,
    applied: AppliedLog,
}

/// The search index. Cheap to clone; searches run concurrently with one writer.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("docs", &self.inner.reader.searcher().num_docs())
            .finish()
    }
}

/// The record as stored: encoded without body text (see
/// [`Extracted::body_at_rest_omitted`]). The bodies are moved out for the encoding and back,
/// not copied: every item rewrite passes here.
fn encode_at_rest(rec: &mut ItemRecord) -> Vec<u8> {
    let bodies: Vec<String> = rec
        .versions
        .iter_mut()
        .filter_map(|v| v.content.as_mut())
        .map(|c| {
            c.body_at_rest_omitted = !c.body.is_empty();
            std::mem::take(&mut c.body)
        })
        .collect();
    let bytes = rec.encode_to_vec();
    for (c, body) in rec
        .versions
        .iter_mut()
        .filter_map(|v| v.content.as_mut())
        .zip(bodies)
    {
        c.body = body;
        c.body_at_rest_omitted = false;
    }
    bytes
}

fn item_key(mailbox: &str, item_id: &str) -> String {
    format!("{}{SEP}{item_id}", mailbox.to_lowercase())
}

fn term_q(t: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(t, IndexRecordOption::Basic))
}

impl Index {
    /// Opens the index in `dir`, creating it (and the directory) if missing.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        let open_err = |cause: String| IndexError::Open {
            dir: dir.display().to_string(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        // The index holds subjects, addresses and body terms: its owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| open_err(format!("restricting permissions: {e}")))?;
        }
        let (schema, f) = schema();
        let applied = AppliedLog::in_dir(dir);
        let index = if dir.join("meta.json").exists() {
            let index = tantivy::Index::open_in_dir(dir).map_err(|e| open_err(e.to_string()))?;
            if index.schema() != schema {
                return Err(open_err(
                    "the index was written with another schema; rebuild it with reindex".into(),
                ));
            }
            index
        } else {
            let index =
                tantivy::Index::create_in_dir(dir, schema).map_err(|e| open_err(e.to_string()))?;
            // A new index holds nothing, and says so; an old one without the file is caught
            // up from the whole repository once.
            applied
                .create_if_missing()
                .map_err(|e| open_err(format!("{}: {e}", applied.path().display())))?;
            index
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e: tantivy::TantivyError| open_err(e.to_string()))?;
        let w = index
            .writer_with_num_threads(2, WRITER_MEMORY)
            .map_err(|e| open_err(format!("index writer: {e}")))?;
        Ok(Index {
            inner: Arc::new(Inner {
                index,
                reader,
                f,
                writer: Mutex::new(WriterState {
                    w,
                    pending: HashMap::new(),
                    folders: HashSet::new(),
                    applied: Vec::new(),
                }),
                applied,
                bodies: std::sync::RwLock::new(None),
                journal_mailboxes: std::sync::RwLock::new(None),
            }),
        })
    }

    /// Installs where body text comes from when an item is rewritten (the indexer does this).
    pub fn set_body_source(&self, source: Arc<dyn BodySource>) {
        let mut b = self
            .inner
            .bodies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *b = Some(source);
    }

    /// Unwraps journal reports only in these mailboxes (the Exchange journal recipients); with
    /// `None`, in every mailbox. Set it before the first item is applied: an item indexed
    /// under one setting keeps it until a reindex.
    pub fn set_journal_mailboxes(&self, mailboxes: Option<Vec<String>>) {
        let set = mailboxes.map(|v| v.iter().map(|m| m.trim().to_lowercase()).collect());
        *self
            .inner
            .journal_mailboxes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
    }

    /// Whether journal reports in `mailbox` are unwrapped.
    pub fn unwraps_journal(&self, mailbox: &str) -> bool {
        self.inner
            .journal_mailboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_none_or(|s| s.contains(&mailbox.to_lowercase()))
    }

    /// Fills in the body text of versions whose record was stored without it.
    fn restore_bodies(&self, key: &str, rec: &mut ItemRecord) -> Result<(), IndexError> {
        let source = self
            .inner
            .bodies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for v in &mut rec.versions {
            let Some(c) = v.content.as_mut().filter(|c| c.body_at_rest_omitted) else {
                continue;
            };
            let Some(source) = &source else {
                return Err(IndexError::BodyUnavailable {
                    item: key.replace(SEP, "/"),
                    manifest: v.manifest_id.clone(),
                    cause: "no repository to read it from (open the index through an indexer)"
                        .into(),
                });
            };
            c.body = source.body(&v.manifest_id, self.unwraps_journal(&rec.mailbox))?;
            c.body_at_rest_omitted = false;
        }
        Ok(())
    }

    /// What this index has applied from the repository (see [`crate::applied`]).
    pub fn applied_log(&self) -> &AppliedLog {
        &self.inner.applied
    }

    fn writer(&self) -> Result<MutexGuard<'_, WriterState>, IndexError> {
        self.inner.writer.lock().map_err(|_| IndexError::Poisoned)
    }

    fn load_record(
        &self,
        st: &WriterState,
        searcher: &Searcher,
        key: &str,
    ) -> Result<ItemRecord, IndexError> {
        if let Some(r) = st.pending.get(key) {
            return Ok(r.clone());
        }
        let f = &self.inner.f;
        let q = BooleanQuery::new(vec![
            (Occur::Must, term_q(Term::from_field_text(f.kind, "meta"))),
            (Occur::Must, term_q(Term::from_field_text(f.item_key, key))),
        ]);
        let top = searcher
            .search(&q, &TopDocs::with_limit(1).order_by_score())
            .map_err(IndexError::tantivy("looking up an item record"))?;
        let Some((_, addr)) = top.first() else {
            return Ok(ItemRecord::default());
        };
        let doc: TantivyDocument = searcher
            .doc(*addr)
            .map_err(IndexError::tantivy("reading an item record"))?;
        let bytes = doc
            .get_first(f.record)
            .and_then(|v| v.as_bytes())
            .unwrap_or_default();
        ItemRecord::decode(bytes).map_err(|e| IndexError::Record {
            item: key.replace(SEP, "/"),
            cause: e.to_string(),
        })
    }

    /// Adds an item version (idempotent by manifest id). Journal reports are unwrapped.
    pub fn add_version(&self, stored: &ItemStoredInput, mime: &[u8]) -> Result<(), IndexError> {
        let key = item_key(&stored.mailbox, &stored.item_id);
        let manifest_id = stored.manifest_id.to_ascii_lowercase();
        let Some(id) = mailvault_format::BlobId::from_hex(&manifest_id) else {
            return Err(IndexError::BadManifestId(stored.manifest_id.clone()));
        };
        let searcher = self.inner.reader.searcher();
        {
            let mut st = self.writer()?;
            if self
                .load_record(&st, &searcher, &key)?
                .has_version(&manifest_id)
            {
                st.applied.push(id);
                return Ok(());
            }
        }
        // Parse outside the writer lock.
        let content = if stored.format == 2 {
            Extracted::default()
        } else {
            extract::extract_item(mime, self.unwraps_journal(&stored.mailbox))
        };
        let v = VersionRecord {
            manifest_id,
            change_key: stored.change_key.clone(),
            folder_id: stored.folder_id.clone(),
            folder_path: stored.folder_path.clone(),
            distinguished: stored.distinguished_folder.clone(),
            item_class: stored.item_class.clone(),
            size: if stored.size != 0 {
                stored.size
            } else {
                mime.len() as u64
            },
            time: stored.time(),
            is_read: stored.is_read,
            content: Some(content),
        };
        let mut st = self.writer()?;
        let mut rec = self.load_record(&st, &searcher, &key)?;
        rec.mailbox = stored.mailbox.to_lowercase();
        rec.item_id = stored.item_id.clone();
        if !stored.distinguished_folder.is_empty() {
            self.note_folder(
                &mut st,
                &searcher,
                &rec.mailbox,
                &v.folder_path,
                &v.distinguished,
            )?;
        }
        if rec.add_version(v) {
            self.rewrite(&mut st, &key, rec)?;
        }
        st.applied.push(id);
        Ok(())
    }

    /// Applies a read-flag change, move or delete (idempotent).
    pub fn apply_change(&self, change: &ChangeInput) -> Result<(), IndexError> {
        let key = item_key(&change.mailbox, &change.item_id);
        let searcher = self.inner.reader.searcher();
        let mut st = self.writer()?;
        let mut rec = self.load_record(&st, &searcher, &key)?;
        rec.mailbox = change.mailbox.to_lowercase();
        rec.item_id = change.item_id.clone();
        let c = ChangeRecord {
            record_id: change.record_id.to_ascii_lowercase(),
            kind: change.kind.as_str().to_owned(),
            change_key: change.change_key.clone(),
            folder_id: change.folder_id.clone(),
            folder_path: change.folder_path.clone(),
            is_read: change.is_read,
            time: change.observed_unix_ms,
        };
        if rec.add_change(c) {
            self.rewrite(&mut st, &key, rec)?;
        }
        // Changes observed without a stored record (none today) have no id to list.
        if let Some(id) = mailvault_format::BlobId::from_hex(&change.record_id) {
            st.applied.push(id);
        }
        Ok(())
    }

    fn note_folder(
        &self,
        st: &mut WriterState,
        searcher: &Searcher,
        mailbox: &str,
        path: &[String],
        distinguished: &str,
    ) -> Result<(), IndexError> {
        let f = &self.inner.f;
        let fkey = format!("{mailbox}{SEP}{}{SEP}{distinguished}", path.join("/"));
        if st.folders.contains(&fkey) {
            return Ok(());
        }
        let exists = searcher
            .search(
                &TermQuery::new(
                    Term::from_field_text(f.item_key, &fkey),
                    IndexRecordOption::Basic,
                ),
                &Count,
            )
            .map_err(IndexError::tantivy("looking up a folder"))?
            > 0;
        if !exists {
            let mut d = TantivyDocument::new();
            d.add_text(f.kind, "folder");
            d.add_text(f.item_key, &fkey);
            d.add_text(f.mailbox, mailbox);
            d.add_text(f.folder_path, path.join(&SEP.to_string()));
            d.add_text(f.distinguished, distinguished);
            st.w.add_document(d)
                .map_err(IndexError::tantivy("adding a folder"))?;
        }
        st.folders.insert(fkey);
        Ok(())
    }

    fn rewrite(
        &self,
        st: &mut WriterState,
        key: &str,
        mut rec: ItemRecord,
    ) -> Result<(), IndexError> {
        let f = &self.inner.f;
        self.restore_bodies(key, &mut rec)?;
        st.w.delete_term(Term::from_field_text(f.item_key, key));
        let mut meta = TantivyDocument::new();
        meta.add_text(f.kind, "meta");
        meta.add_text(f.item_key, key);
        meta.add_bytes(f.record, &encode_at_rest(&mut rec));
        st.w.add_document(meta)
            .map_err(IndexError::tantivy("adding an item record"))?;
        for seg in rec.segments() {
            let d = self.segment_doc(key, &rec, &seg);
            st.w.add_document(d)
                .map_err(IndexError::tantivy("adding an item document"))?;
        }
        st.pending.insert(key.to_owned(), rec);
        Ok(())
    }

    fn segment_doc(&self, key: &str, rec: &ItemRecord, s: &Segment<'_>) -> TantivyDocument {
        let f = &self.inner.f;
        let v = s.version;
        let empty = Extracted::default();
        let c = v.content.as_ref().unwrap_or(&empty);
        let mut d = TantivyDocument::new();
        d.add_text(f.kind, "seg");
        d.add_text(f.item_key, key);
        d.add_text(f.manifest_id, &v.manifest_id);
        d.add_text(f.mailbox, &rec.mailbox);
        d.add_text(f.item_id, &rec.item_id);
        d.add_text(f.change_key, &v.change_key);
        let mut prefix = Vec::new();
        for p in s.folder_path {
            prefix.push(p.to_lowercase());
            d.add_text(f.folder, prefix.join("/"));
        }
        d.add_text(f.folder_path, s.folder_path.join(&SEP.to_string()));
        if !s.distinguished.is_empty() {
            d.add_text(f.distinguished, s.distinguished);
        }
        d.add_text(f.item_class, &v.item_class);
        d.add_text(f.subject, &c.subject);
        d.add_text(f.body, &c.body);
        for a in &c.attachments {
            d.add_text(f.attachment, &a.name);
        }
        for p in &c.from {
            d.add_text(f.from, &p.address);
        }
        for p in &c.to {
            d.add_text(f.to, &p.address);
        }
        for p in &c.cc {
            d.add_text(f.cc, &p.address);
        }
        for (field, parties) in [
            (f.from_t, &c.from),
            (f.to_t, &c.to),
            (f.cc_t, &c.cc),
            (f.bcc_t, &c.bcc),
        ] {
            for t in extract::address_terms(parties) {
                d.add_text(field, t);
            }
        }
        d.add_u64(f.has_attachment, u64::from(c.has_attachment()));
        d.add_u64(f.is_read, u64::from(s.is_read));
        d.add_u64(f.deleted, u64::from(s.deleted_at.is_some()));
        d.add_i64(f.deleted_at, s.deleted_at.unwrap_or(i64::MAX));
        d.add_i64(f.valid_from, s.valid_from);
        d.add_i64(f.valid_to, s.valid_to);
        if s.valid_to == i64::MAX {
            d.add_text(f.state, "now");
            if s.deleted_at.is_none() {
                d.add_text(f.state, "live");
            }
        }
        d.add_i64(f.date, c.date_unix_ms.unwrap_or(v.time));
        d.add_u64(f.size, v.size);
        if let Some(j) = &c.journal {
            for a in &j.visible_to {
                d.add_text(f.visible_to, a);
            }
            d.add_u64(f.embedded_offset, j.offset);
            d.add_u64(f.embedded_len, j.len);
        }
        d.add_text(f.message_id, &c.message_id);
        if let Some(p) = &c.parse_error {
            d.add_text(f.parse_error, p);
        }
        d.add_text(f.importance, &c.importance);
        d
    }

    /// Makes everything applied so far durable and searchable.
    pub fn commit(&self) -> Result<(), IndexError> {
        let mut st = self.writer()?;
        st.w.commit()
            .map_err(IndexError::tantivy("committing the index"))?;
        self.inner
            .reader
            .reload()
            .map_err(IndexError::tantivy("reloading the index reader"))?;
        let pending = std::mem::take(&mut st.pending);
        let applied = std::mem::take(&mut st.applied);
        drop(st);
        // Only after the commit: the log may lag the index, never lead it.
        self.inner
            .applied
            .append(&applied)
            .map_err(|e| IndexError::Applied {
                path: self.inner.applied.path().display().to_string(),
                cause: e.to_string(),
            })?;
        // The records hold every body indexed since the last commit: freeing them took tens of
        // milliseconds at the end of a pass, on the path to its end, with the other core idle.
        if pending.len() > 1000 {
            // If no thread can be made, the closure (and the records) is dropped right here.
            let _ = std::thread::Builder::new()
                .name("index-free".into())
                .spawn(move || drop(pending));
        }
        Ok(())
    }

    /// Filter: segment documents current at `as_of` (now if `None`), deleted ones only with
    /// `with_deleted`.
    fn live_at(&self, as_of: Option<i64>, with_deleted: bool) -> Vec<(Occur, Box<dyn Query>)> {
        let f = &self.inner.f;
        let Some(t) = as_of else {
            let state = if with_deleted { "now" } else { "live" };
            return vec![(Occur::Must, term_q(Term::from_field_text(f.state, state)))];
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, term_q(Term::from_field_text(f.kind, "seg"))),
            (
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Unbounded,
                    Bound::Included(Term::from_field_i64(f.valid_from, t)),
                )),
            ),
            (
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Excluded(Term::from_field_i64(f.valid_to, t)),
                    Bound::Unbounded,
                )),
            ),
        ];
        if !with_deleted {
            clauses.push((
                Occur::Must,
                term_q(Term::from_field_u64(self.inner.f.deleted, 0)),
            ));
        }
        clauses
    }

    fn scope_q(&self, scope: &Scope) -> Option<Box<dyn Query>> {
        let f = &self.inner.f;
        match scope {
            Scope::All => None,
            Scope::User(a) => {
                let a = a.trim().to_lowercase();
                Some(Box::new(BooleanQuery::new(vec![
                    (Occur::Should, term_q(Term::from_field_text(f.mailbox, &a))),
                    (
                        Occur::Should,
                        term_q(Term::from_field_text(f.visible_to, &a)),
                    ),
                ])))
            }
        }
    }

    /// Searches (see [`crate::query`] for the language). Results are ordered by date, newest
    /// first, ties by manifest id; deleted items only match when the query says `is:deleted`.
    pub fn search(&self, query: &str, opts: &SearchOptions) -> Result<SearchPage, IndexError> {
        let expr = query::parse(query)?;
        let searcher = self.inner.reader.searcher();
        let analyzer = self
            .inner
            .index
            .tokenizer_for_field(self.inner.f.subject)
            .map_err(IndexError::tantivy("getting the text analyzer"))?;
        let mut b = Builder {
            f: &self.inner.f,
            analyzer,
            user: match &opts.scope {
                Scope::All => None,
                Scope::User(u) => Some(u.trim().to_lowercase()),
            },
        };
        let mut clauses = self.live_at(opts.as_of, expr.mentions_deleted());
        clauses.push((Occur::Must, b.build(&expr)));
        if let Some(s) = self.scope_q(&opts.scope) {
            clauses.push((Occur::Must, s));
        }
        let q = BooleanQuery::new(clauses);
        self.page(&searcher, &q, opts.offset, opts.limit)
    }

    fn page(
        &self,
        searcher: &Searcher,
        q: &dyn Query,
        offset: usize,
        limit: usize,
    ) -> Result<SearchPage, IndexError> {
        let top = NewestFirst::new(offset.saturating_add(limit), "date", "manifest_id");
        let (candidates, total) = searcher
            .search(q, &(top, Count))
            .map_err(IndexError::tantivy("searching"))?;
        let docs = top.page(searcher, candidates, offset)?;
        let mut hits = Vec::with_capacity(docs.len());
        for addr in docs {
            hits.push(self.hit(searcher, addr)?);
        }
        Ok(SearchPage { hits, total })
    }

    fn hit(&self, searcher: &Searcher, addr: DocAddress) -> Result<Hit, IndexError> {
        let f = &self.inner.f;
        let d: TantivyDocument = searcher
            .doc(addr)
            .map_err(IndexError::tantivy("reading a document"))?;
        let s = |field| {
            d.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let all = |field| {
            d.get_all(field)
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        };
        let u = |field| d.get_first(field).and_then(|v| v.as_u64());
        let i = |field| d.get_first(field).and_then(|v| v.as_i64());
        let folder = s(f.folder_path);
        let deleted_at = i(f.deleted_at).filter(|t| *t != i64::MAX);
        Ok(Hit {
            manifest_id: s(f.manifest_id),
            mailbox: s(f.mailbox),
            item_id: s(f.item_id),
            change_key: s(f.change_key),
            folder_path: if folder.is_empty() {
                Vec::new()
            } else {
                folder.split(SEP).map(str::to_owned).collect()
            },
            distinguished_folder: s(f.distinguished),
            item_class: s(f.item_class),
            subject: s(f.subject),
            from: s(f.from),
            to: all(f.to),
            cc: all(f.cc),
            date_unix_ms: i(f.date).unwrap_or_default(),
            size: u(f.size).unwrap_or_default(),
            has_attachment: u(f.has_attachment) == Some(1),
            is_read: u(f.is_read) == Some(1),
            deleted: deleted_at.is_some(),
            deleted_unix_ms: deleted_at,
            embedded: u(f.embedded_offset).zip(u(f.embedded_len)),
            visible_to: all(f.visible_to),
            internet_message_id: s(f.message_id),
            parse_error: d
                .get_first(f.parse_error)
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            score: 0.0,
            valid_from: i(f.valid_from).unwrap_or_default(),
            valid_to: i(f.valid_to).unwrap_or(i64::MAX),
        })
    }

    /// Mailboxes with the number of live items the scope may see in each.
    pub fn list_mailboxes(&self, scope: &Scope) -> Result<Vec<MailboxInfo>, IndexError> {
        let f = &self.inner.f;
        let searcher = self.inner.reader.searcher();
        let mut names = BTreeSet::new();
        for seg in searcher.segment_readers() {
            let inv = seg
                .inverted_index(f.mailbox)
                .map_err(IndexError::tantivy("reading mailbox terms"))?;
            let mut stream = inv.terms().stream().map_err(|e| IndexError::Tantivy {
                what: "reading mailbox terms".into(),
                source: e.into(),
            })?;
            while stream.advance() {
                names.insert(String::from_utf8_lossy(stream.key()).into_owned());
            }
        }
        let mut out = Vec::new();
        for m in names {
            let mut clauses = self.live_at(None, false);
            clauses.push((Occur::Must, term_q(Term::from_field_text(f.mailbox, &m))));
            if let Some(s) = self.scope_q(scope) {
                clauses.push((Occur::Must, s));
            }
            let n = searcher
                .search(&BooleanQuery::new(clauses), &Count)
                .map_err(IndexError::tantivy("counting mailbox items"))?;
            if n > 0 {
                out.push(MailboxInfo {
                    address: m,
                    items: n as u64,
                });
            }
        }
        Ok(out)
    }

    fn docs(&self, searcher: &Searcher, q: &dyn Query) -> Result<Vec<TantivyDocument>, IndexError> {
        let set = searcher
            .search(q, &DocSetCollector)
            .map_err(IndexError::tantivy("collecting documents"))?;
        let mut addrs: Vec<_> = set.into_iter().collect();
        addrs.sort();
        addrs
            .into_iter()
            .map(|a| {
                searcher
                    .doc(a)
                    .map_err(IndexError::tantivy("reading a document"))
            })
            .collect()
    }

    /// The folders of a mailbox with the live items directly in each at `as_of`, plus every
    /// folder known to be a distinguished folder, and the ancestors of all of them.
    pub fn list_folders(
        &self,
        mailbox: &str,
        as_of: Option<i64>,
    ) -> Result<Vec<FolderInfo>, IndexError> {
        let f = &self.inner.f;
        let mb = mailbox.trim().to_lowercase();
        let searcher = self.inner.reader.searcher();
        let mut folders: BTreeMap<Vec<String>, FolderInfo> = BTreeMap::new();
        let fq = BooleanQuery::new(vec![
            (Occur::Must, term_q(Term::from_field_text(f.kind, "folder"))),
            (Occur::Must, term_q(Term::from_field_text(f.mailbox, &mb))),
        ]);
        let split = |s: &str| -> Vec<String> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split(SEP).map(str::to_owned).collect()
            }
        };
        let mut known: HashMap<Vec<String>, String> = HashMap::new();
        for d in self.docs(&searcher, &fq)? {
            let path = split(
                d.get_first(f.folder_path)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
            );
            let dist = d
                .get_first(f.distinguished)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            known.insert(path, dist);
        }
        let mut clauses = self.live_at(as_of, false);
        clauses.push((Occur::Must, term_q(Term::from_field_text(f.mailbox, &mb))));
        for d in self.docs(&searcher, &BooleanQuery::new(clauses))? {
            let path = split(
                d.get_first(f.folder_path)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
            );
            folders
                .entry(path.clone())
                .or_insert_with(|| FolderInfo {
                    path,
                    items: 0,
                    distinguished: None,
                })
                .items += 1;
        }
        for p in known.keys() {
            folders.entry(p.clone()).or_insert_with(|| FolderInfo {
                path: p.clone(),
                items: 0,
                distinguished: None,
            });
        }
        let paths: Vec<Vec<String>> = folders.keys().cloned().collect();
        for p in paths {
            for n in 1..p.len() {
                let anc = p[..n].to_vec();
                folders.entry(anc.clone()).or_insert_with(|| FolderInfo {
                    path: anc,
                    items: 0,
                    distinguished: None,
                });
            }
        }
        folders.remove(&Vec::new());
        for (p, info) in folders.iter_mut() {
            info.distinguished = known.get(p).cloned();
        }
        Ok(folders.into_values().collect())
    }

    /// Every item version live (not deleted) at `as_of` in the folder or below it (the whole
    /// mailbox if `folder_prefix` is empty), ordered by folder path, then date, then id.
    pub fn folder_items(
        &self,
        mailbox: &str,
        folder_prefix: &[String],
        as_of: Option<i64>,
    ) -> Result<Vec<Hit>, IndexError> {
        let f = &self.inner.f;
        let searcher = self.inner.reader.searcher();
        let mut clauses = self.live_at(as_of, false);
        clauses.push((
            Occur::Must,
            term_q(Term::from_field_text(
                f.mailbox,
                &mailbox.trim().to_lowercase(),
            )),
        ));
        if !folder_prefix.is_empty() {
            let key = folder_prefix
                .iter()
                .map(|s| s.to_lowercase())
                .collect::<Vec<_>>()
                .join("/");
            clauses.push((Occur::Must, term_q(Term::from_field_text(f.folder, &key))));
        }
        let q = BooleanQuery::new(clauses);
        let set = searcher
            .search(&q, &DocSetCollector)
            .map_err(IndexError::tantivy("collecting folder items"))?;
        let mut hits = set
            .into_iter()
            .map(|a| self.hit(&searcher, a))
            .collect::<Result<Vec<_>, _>>()?;
        // The folder prefix matches whole path components, case-insensitively.
        hits.sort_by(|a, b| {
            (&a.folder_path, b.date_unix_ms, &a.manifest_id).cmp(&(
                &b.folder_path,
                a.date_unix_ms,
                &b.manifest_id,
            ))
        });
        Ok(hits)
    }

    /// The latest state of an item version.
    pub fn get(&self, manifest_id: &str) -> Result<Option<Hit>, IndexError> {
        let f = &self.inner.f;
        let searcher = self.inner.reader.searcher();
        let q = BooleanQuery::new(vec![
            (Occur::Must, term_q(Term::from_field_text(f.kind, "seg"))),
            (
                Occur::Must,
                term_q(Term::from_field_text(
                    f.manifest_id,
                    &manifest_id.trim().to_ascii_lowercase(),
                )),
            ),
        ]);
        let top = searcher
            .search(
                &q,
                &TopDocs::with_limit(1).order_by_fast_field::<i64>("valid_from", Order::Desc),
            )
            .map_err(IndexError::tantivy("looking up a manifest"))?;
        match top.first() {
            Some((_, a)) => Ok(Some(self.hit(&searcher, *a)?)),
            None => Ok(None),
        }
    }

    /// Item states current now (live and deleted), i.e. the number of items known.
    pub fn doc_count(&self) -> u64 {
        let searcher = self.inner.reader.searcher();
        let mut clauses = self.live_at(None, true);
        clauses.push((Occur::Must, Box::new(AllQuery)));
        searcher
            .search(&BooleanQuery::new(clauses), &Count)
            .map(|n| n as u64)
            .unwrap_or(0)
    }
}
