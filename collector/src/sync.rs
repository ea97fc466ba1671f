//! The incremental sync engine, written against three small traits: [`Ews`], [`Publisher`] and
//! [`CheckpointStore`]. No network code here; tests drive it with in-memory fakes.
//!
//! Per mailbox: resolve distinguished folders once (GetFolder) → SyncFolderHierarchy from the
//! stored hierarchy state → for each included folder a SyncFolderItems loop → GetItem MIME for
//! creates/updates in batches → publish → **only after every message of the page is acknowledged,
//! store the page's new sync state** (guarantee 1). A crash before that re-reads the page; the
//! re-published messages carry the same `Nats-Msg-Id` and the aggregator dedupes by item identity.
//!
//! Change mapping:
//! - `Create`/`Update` → GetItem MIME → `ItemEnvelope` (the item version is identified by
//!   (mailbox, item id, change key)). Any update changes the change key, so an update is always
//!   a new version; only `ReadFlagChange` (which Exchange reports separately and which does not
//!   need the content) becomes `ItemChange READ_FLAG`.
//! - `Delete` → `ItemChange DELETE` (the archive keeps the item's history; nothing is lost).
//! - **Moves.** SyncFolderItems reports a move as a delete in the source folder and a create in
//!   the target folder. When the create carries the same ItemId as a delete seen in another folder
//!   of the same mailbox during the same pass, the engine publishes `ItemChange MOVE` with the
//!   target folder. Depending on which folder is synced first, the source-side event is either a
//!   `DELETE` followed later by the `MOVE` (the last event wins: MOVE means "lives in folder_id
//!   now"), or — when the create was seen first — the delete is published as `MOVE` instead of
//!   `DELETE`. The envelope of the moved item is still published; if its change key did not change
//!   JetStream's duplicate window may drop it (same `Nats-Msg-Id`) and the `MOVE` carries the new
//!   folder. Moves whose ItemId changes (Exchange versions that re-key on move) arrive as
//!   `DELETE` + a new item; the archive still holds both.
//! - `ErrorInvalidSyncStateData` → the folder's state is dropped and it is resynchronised from
//!   scratch; items whose (item id, change key) the checkpoint store already recorded are not
//!   re-fetched (`already_collected` in the reconciliation).
//! - Per-item failures (vanished between sync and GetItem, malformed MIME/XML, access denied)
//!   → an `ItemQuarantine` message + counter; the pass continues. A GetItem batch whose response
//!   cannot be parsed is retried item by item to isolate the bad item.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt as _;
use mailvault_proto::ingest::v1 as pb;
use mailvault_proto::storage::v1::ContentFormat;
use tracing::{Instrument as _, info, info_span, warn};

use crate::ews::request::FolderRef;
use crate::ews::{
    ErrorKind, Ews, EwsError, Folder, FolderChange, ItemChange, ItemId, ItemSummary, Mailbox,
    MailboxKind, MimeItem,
};
use crate::filter::Filters;
use crate::metrics::Metrics;

/// One message ready for JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage {
    pub subject: String,
    /// `Nats-Msg-Id`: stable across retries and restarts.
    pub msg_id: String,
    /// W3C `traceparent` header value: one trace per mailbox pass, so every message of a pass
    /// can be followed downstream.
    pub traceparent: Option<String>,
    pub message: pb::IngestMessage,
}

/// Publishing failed; nothing after it is checkpointed.
#[derive(Debug, thiserror::Error)]
#[error("publish failed: {0}")]
pub struct PublishError(pub String);

/// Publishes messages and resolves only when JetStream acknowledged all of them.
#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish_batch(&self, msgs: Vec<OutMessage>) -> Result<(), PublishError>;
}

/// Checkpoint store failure.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store: {0}")]
pub struct CheckpointError(pub String);

/// Per-mailbox hierarchy checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailboxCheckpoint {
    pub version: u32,
    pub hierarchy_sync_state: String,
    /// Known folders by id.
    pub folders: BTreeMap<String, Folder>,
    /// Distinguished folder name by folder id (`inbox`, `msgfolderroot`, …).
    pub distinguished: BTreeMap<String, String>,
}

/// Where sync states live.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    async fn get_mailbox(
        &self,
        mailbox: &str,
    ) -> Result<Option<MailboxCheckpoint>, CheckpointError>;
    async fn put_mailbox(
        &self,
        mailbox: &str,
        cp: &MailboxCheckpoint,
    ) -> Result<(), CheckpointError>;
    async fn get_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
    ) -> Result<Option<String>, CheckpointError>;
    async fn put_folder(
        &self,
        mailbox: &str,
        folder_id: &str,
        sync_state: &str,
    ) -> Result<(), CheckpointError>;
    async fn delete_folder(&self, mailbox: &str, folder_id: &str) -> Result<(), CheckpointError>;
    /// Whether this item version was already published and acknowledged.
    async fn has_version(&self, mailbox: &str, id: &ItemId) -> Result<bool, CheckpointError>;
    /// Records acknowledged item versions.
    async fn record_versions(&self, mailbox: &str, ids: &[ItemId]) -> Result<(), CheckpointError>;
}

/// Why a mailbox pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Ews(#[from] EwsError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Collector instance name, carried in every message.
    pub source: String,
    /// MaxChangesReturned (≤ 512).
    pub max_changes: u32,
    /// Ids per GetItem call.
    pub get_item_batch: usize,
    /// Server-reported bytes per GetItem call.
    pub get_item_max_bytes: u64,
    /// Also sync folders outside the IPM subtree (below `root` but not `msgfolderroot`).
    pub include_non_ipm: bool,
    /// Folders of one mailbox synced at once (EWS requests stay bounded by the client's
    /// per-account limit).
    pub folder_concurrency: usize,
    pub filters: Filters,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            source: "collector".into(),
            max_changes: 512,
            get_item_batch: 32,
            get_item_max_bytes: 16 * 1024 * 1024,
            include_non_ipm: false,
            folder_concurrency: 4,
            filters: Filters::default(),
        }
    }
}

/// One GetItem batch, ready to publish.
#[derive(Default)]
struct FetchedBatch {
    out: Vec<OutMessage>,
    acked: Vec<ItemId>,
    bytes: u64,
    quarantined: u64,
}

/// Stable, subject-safe key of a mailbox.
pub fn mailbox_key(mailbox: &str) -> String {
    let h = blake3::hash(mailbox.to_lowercase().as_bytes());
    hex::encode(&h.as_bytes()[..8])
}

fn msg_id(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize().as_bytes()[..16])
}

/// `Nats-Msg-Id` of an item version: a hash of (mailbox, item id, change key).
pub fn item_msg_id(mailbox: &str, id: &ItemId) -> String {
    msg_id(&["item", &mailbox.to_lowercase(), &id.id, &id.change_key])
}

/// Subject for a message kind (`item`, `change`, `quarantine`, `reconcile`, `items`).
pub fn subject(kind: &str, mailbox: &str) -> String {
    format!("mailvault.ingest.{kind}.{}", mailbox_key(mailbox))
}

/// Kind of a message, as in its subject and `Mailvault-Kind` header.
pub fn kind_of(m: &pb::IngestMessage) -> &'static str {
    use pb::ingest_message::Message;
    match &m.message {
        Some(Message::Item(_)) => "item",
        Some(Message::Change(_)) => "change",
        Some(Message::Quarantine(_)) => "quarantine",
        Some(Message::Reconciliation(_)) => "reconcile",
        Some(Message::Batch(_)) => mailvault_proto::ingest_wire::KIND_BATCH,
        None => "unknown",
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The sync engine.
#[derive(Debug)]
pub struct Engine<E, P, C> {
    pub ews: Arc<E>,
    pub publisher: Arc<P>,
    pub store: Arc<C>,
    pub opts: SyncOptions,
    pub metrics: Arc<Metrics>,
}

/// State shared by the folders of one mailbox pass (move detection).
#[derive(Debug, Default)]
struct PassState {
    /// Item id → folder id where it was deleted in this pass.
    deleted: HashMap<String, String>,
    /// Item id → folder id where it was created in this pass.
    created: HashMap<String, String>,
}

struct FolderCtx<'a> {
    mailbox: &'a Mailbox,
    kind: MailboxKind,
    /// Checkpoint-store key of (mailbox, kind).
    cp_key: &'a str,
    folder: &'a Folder,
    path: Vec<String>,
    distinguished: String,
    /// Trace id of this mailbox pass (32 hex).
    trace_id: &'a str,
}

impl<E: Ews, P: Publisher, C: CheckpointStore> Engine<E, P, C> {
    /// One pass over one mailbox. Folder failures are recorded in the reconciliation and do not
    /// stop the other folders; mailbox-level failures (hierarchy, checkpoint store) return `Err`
    /// inside the reconciliation's `error`.
    pub async fn sync_mailbox(&self, mailbox: &Mailbox) -> pb::MailboxReconciliation {
        self.sync_kind(mailbox, MailboxKind::Primary).await
    }

    /// One pass over the primary mailbox, its archive, or the public folders reached through it.
    pub async fn sync_kind(
        &self,
        mailbox: &Mailbox,
        kind: MailboxKind,
    ) -> pb::MailboxReconciliation {
        let mut rec = pb::MailboxReconciliation {
            source: self.opts.source.clone(),
            mailbox: mailbox.smtp.clone(),
            mailbox_kind: kind.label().into(),
            started_unix_ms: now_ms(),
            ..Default::default()
        };
        let span = info_span!("mailbox", mailbox = %mailbox.smtp, kind = kind.label());
        let pass_traceparent = mailvault_runtime::otel::traceparent(&span);
        let res = match kind {
            MailboxKind::PublicFolders => {
                self.sync_public_folders(mailbox, &mut rec)
                    .instrument(span)
                    .await
            }
            _ => {
                self.sync_mailbox_inner(mailbox, kind, &mut rec)
                    .instrument(span)
                    .await
            }
        };
        if let Err(e) = res {
            warn!(mailbox = %mailbox.smtp, error = %e, "mailbox pass failed");
            Metrics::add(&self.metrics.mailbox_failures, 1);
            rec.error = e.to_string();
        }
        rec.finished_unix_ms = now_ms();
        let out = OutMessage {
            traceparent: Some(pass_traceparent.unwrap_or_else(|| traceparent(&trace_id(&rec)))),
            subject: subject("reconcile", &mailbox.smtp),
            msg_id: msg_id(&[
                "reconcile",
                &mailbox.smtp.to_lowercase(),
                kind.label(),
                &rec.started_unix_ms.to_string(),
            ]),
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Reconciliation(rec.clone())),
            },
        };
        if let Err(e) = self.publisher.publish_batch(vec![out]).await {
            warn!(mailbox = %mailbox.smtp, error = %e, "publishing the reconciliation failed");
            if rec.error.is_empty() {
                rec.error = e.to_string();
            }
        }
        rec
    }

    async fn sync_mailbox_inner(
        &self,
        mailbox: &Mailbox,
        kind: MailboxKind,
        rec: &mut pb::MailboxReconciliation,
    ) -> Result<(), SyncError> {
        let key = checkpoint_key(mailbox, kind);
        let trace = trace_id(rec);
        let mut cp = self.store.get_mailbox(&key).await?.unwrap_or_default();
        if cp.distinguished.is_empty() {
            let ids: Vec<&str> = match kind {
                MailboxKind::Primary => crate::ews::DISTINGUISHED_FOLDERS.to_vec(),
                _ => vec![kind.root()],
            };
            for (name, f) in self.ews.get_distinguished_folders(mailbox, &ids).await? {
                cp.distinguished.insert(f.id.clone(), name);
            }
        }
        let hierarchy_root = (kind != MailboxKind::Primary).then_some(kind.root());
        self.sync_hierarchy(mailbox, hierarchy_root, &key, &mut cp)
            .await?;
        self.store.put_mailbox(&key, &cp).await?;

        let root_id = cp
            .distinguished
            .iter()
            .find(|(_, n)| n.as_str() == kind.root())
            .map(|(id, _)| id.clone());
        let mut selected = Vec::new();
        for f in cp.folders.values() {
            if f.element == "SearchFolder" {
                *rec.folders_skipped
                    .entry("search_folder".into())
                    .or_default() += 1;
                continue;
            }
            let (path, in_ipm) = folder_path(&cp.folders, f, root_id.as_deref());
            if !in_ipm && !self.opts.include_non_ipm {
                *rec.folders_skipped
                    .entry("outside_ipm_subtree".into())
                    .or_default() += 1;
                continue;
            }
            if !self.opts.filters.folder_allowed(&path) {
                *rec.folders_skipped
                    .entry("folder_filter".into())
                    .or_default() += 1;
                continue;
            }
            selected.push((path, f));
        }
        selected.sort_by(|a, b| a.0.cmp(&b.0));

        // Folders are synced `folder_concurrency` at a time (a mailbox is often one big
        // folder tree, and one folder alone leaves the EWS budget idle between round trips),
        // the biggest first: a big folder started last would otherwise run on alone at the end
        // of the pass, one round trip at a time. A finished folder frees its slot at once,
        // whatever is still running before it. Reconciliations keep the folders' order; a fatal
        // error stops the others.
        let pass = Mutex::new(PassState::default());
        let (cp_key, trace, cp) = (&key, &trace, &cp);
        let pass = &pass;
        // Collected first: a stream holding the closure trips the compiler's `Send` check.
        let mut folder_passes: Vec<_> = selected
            .into_iter()
            .enumerate()
            .map(|(i, (path, folder))| {
                let ctx = FolderCtx {
                    mailbox,
                    kind,
                    cp_key,
                    folder,
                    path: path.clone(),
                    trace_id: trace,
                    distinguished: cp
                        .distinguished
                        .get(&folder.id)
                        .cloned()
                        .unwrap_or_default(),
                };
                let mut fr = pb::FolderReconciliation {
                    folder_id: folder.id.clone(),
                    folder_path: path,
                    server_total: folder.total_count.unwrap_or_default(),
                    server_total_known: folder.total_count.is_some(),
                    ..Default::default()
                };
                // Unknown sizes go first: they may be the biggest.
                let size = folder.total_count.unwrap_or(u64::MAX);
                let pass = async move {
                    let span = info_span!("folder", folder = %folder.display_name);
                    let res = self
                        .sync_folder_with_recovery(&ctx, pass, &mut fr)
                        .instrument(span)
                        .await;
                    let fatal = self.settle_folder(&ctx, res, &mut fr).await;
                    (i, fr, fatal)
                };
                (size, pass)
            })
            .collect();
        folder_passes.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
        let folder_passes: Vec<_> = folder_passes.into_iter().map(|(_, p)| p).collect();
        let mut passes = futures::stream::iter(folder_passes)
            .buffer_unordered(self.opts.folder_concurrency.max(1));
        let mut done = Vec::new();
        let mut result = Ok(());
        while let Some((i, fr, fatal)) = passes.next().await {
            done.push((i, fr));
            if fatal.is_err() {
                result = fatal;
                break;
            }
        }
        done.sort_by_key(|(i, _)| *i);
        rec.folders.extend(done.into_iter().map(|(_, fr)| fr));
        result
    }

    /// Records how a folder pass ended in its reconciliation; `Err` only for what must stop
    /// the whole mailbox pass.
    async fn settle_folder(
        &self,
        ctx: &FolderCtx<'_>,
        res: Result<(), SyncError>,
        fr: &mut pb::FolderReconciliation,
    ) -> Result<(), SyncError> {
        match res {
            Ok(()) => Metrics::add(&self.metrics.folders_synced, 1),
            Err(SyncError::Ews(e)) if e.kind() == ErrorKind::ItemNotFound => {
                // Folder deleted since the hierarchy sync: the next hierarchy sync drops it.
                fr.error = format!("folder vanished: {e}");
            }
            Err(e @ (SyncError::Publish(_) | SyncError::Checkpoint(_))) => {
                // The queue or the store is down: no point trying other folders.
                fr.error = e.to_string();
                return Err(e);
            }
            Err(e) => {
                warn!(error = %e, "folder pass failed");
                fr.error = e.to_string();
                // Visible as a record too (guarantee 7); the folder is retried next pass
                // from its last checkpoint.
                if let SyncError::Ews(ews_err) = &e {
                    let none = ItemId {
                        id: String::new(),
                        change_key: String::new(),
                    };
                    let q = self.quarantine(ctx, &none, "sync_folder_items", ews_err);
                    self.publisher.publish_batch(vec![q]).await?;
                    Metrics::add(&self.metrics.quarantined, 1);
                }
            }
        }
        Ok(())
    }

    /// Public folders: SyncFolderItems does not work there, so each pass walks the tree with
    /// FindFolder and lists every folder with FindItem (both paged), and fetches only item
    /// versions the checkpoint store has not recorded. Deletions are not detected on this path
    /// (the archive keeps what it has); read flags are not tracked for public folders.
    async fn sync_public_folders(
        &self,
        mailbox: &Mailbox,
        rec: &mut pb::MailboxReconciliation,
    ) -> Result<(), SyncError> {
        const PAGE: u32 = 256;
        let key = checkpoint_key(mailbox, MailboxKind::PublicFolders);
        let trace = trace_id(rec);
        // (parent, path of parent); the root is addressed by its distinguished id.
        let mut queue: Vec<(Option<String>, Vec<String>)> = vec![(None, Vec::new())];
        let mut visited = 0usize;
        while let Some((parent, parent_path)) = queue.pop() {
            let mut offset = 0;
            loop {
                let parent_ref = match &parent {
                    Some(id) => FolderRef::Id(id),
                    None => FolderRef::Distinguished(MailboxKind::PublicFolders.root()),
                };
                let page = self
                    .ews
                    .find_folders(mailbox, parent_ref, offset, PAGE)
                    .await?;
                let n = page.entries.len() as u32;
                for f in page.entries {
                    visited += 1;
                    if visited > 100_000 {
                        return Err(
                            EwsError::malformed("public folder tree too large or cyclic").into(),
                        );
                    }
                    let mut path = parent_path.clone();
                    path.push(f.display_name.clone());
                    queue.push((Some(f.id.clone()), path.clone()));
                    if !self.opts.filters.folder_allowed(&path) {
                        *rec.folders_skipped
                            .entry("folder_filter".into())
                            .or_default() += 1;
                        continue;
                    }
                    let mut fr = pb::FolderReconciliation {
                        folder_id: f.id.clone(),
                        folder_path: path.clone(),
                        server_total: f.total_count.unwrap_or_default(),
                        server_total_known: f.total_count.is_some(),
                        ..Default::default()
                    };
                    let ctx = FolderCtx {
                        mailbox,
                        kind: MailboxKind::PublicFolders,
                        cp_key: &key,
                        folder: &f,
                        path,
                        distinguished: String::new(),
                        trace_id: &trace,
                    };
                    let span = info_span!("folder", folder = %f.display_name);
                    match self
                        .sync_public_folder(&ctx, &mut fr)
                        .instrument(span)
                        .await
                    {
                        Ok(()) => Metrics::add(&self.metrics.folders_synced, 1),
                        Err(e @ (SyncError::Publish(_) | SyncError::Checkpoint(_))) => {
                            fr.error = e.to_string();
                            rec.folders.push(fr);
                            return Err(e);
                        }
                        Err(e) => {
                            warn!(error = %e, "public folder pass failed");
                            fr.error = e.to_string();
                        }
                    }
                    rec.folders.push(fr);
                }
                match page.next_offset {
                    Some(next) if !page.includes_last && n > 0 => offset = next,
                    _ if !page.includes_last && n > 0 => offset += n,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    async fn sync_public_folder(
        &self,
        ctx: &FolderCtx<'_>,
        fr: &mut pb::FolderReconciliation,
    ) -> Result<(), SyncError> {
        const PAGE: u32 = 512;
        let mb = &ctx.mailbox.smtp;
        let mut offset = 0;
        loop {
            let page = self
                .ews
                .find_items(ctx.mailbox, &ctx.folder.id, offset, PAGE)
                .await?;
            let n = page.entries.len() as u32;
            let mut fetch = Vec::new();
            for s in page.entries {
                if !s.item_class.is_empty() && !self.opts.filters.item_classes.allows(&s.item_class)
                {
                    *fr.skipped.entry("item_class_filter".into()).or_default() += 1;
                } else if self.store.has_version(mb, &s.id).await? {
                    *fr.skipped.entry("already_collected".into()).or_default() += 1;
                } else {
                    fr.created += 1;
                    fetch.push(s);
                }
            }
            self.fetch_and_publish(ctx, &fetch, fr).await?;
            match page.next_offset {
                Some(next) if !page.includes_last && n > 0 => offset = next,
                _ if !page.includes_last && n > 0 => offset += n,
                _ => return Ok(()),
            }
        }
    }

    async fn sync_hierarchy(
        &self,
        mailbox: &Mailbox,
        root: Option<&str>,
        key: &str,
        cp: &mut MailboxCheckpoint,
    ) -> Result<(), SyncError> {
        let mut reset_once = false;
        loop {
            let state = Some(cp.hierarchy_sync_state.as_str()).filter(|s| !s.is_empty());
            let page = match self.ews.sync_folder_hierarchy(mailbox, root, state).await {
                Ok(p) => p,
                Err(e) if e.kind() == ErrorKind::InvalidSyncState && !reset_once => {
                    warn!(error = %e, "hierarchy sync state invalid, resynchronising the folder tree");
                    Metrics::add(&self.metrics.sync_state_resets, 1);
                    reset_once = true;
                    cp.hierarchy_sync_state.clear();
                    cp.folders.clear();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for c in page.changes {
                match c {
                    FolderChange::Create(f) | FolderChange::Update(f) => {
                        cp.folders.insert(f.id.clone(), f);
                    }
                    FolderChange::Delete { id } => {
                        cp.folders.remove(&id);
                        self.store.delete_folder(key, &id).await?;
                    }
                }
            }
            cp.hierarchy_sync_state = page.sync_state;
            if page.includes_last {
                return Ok(());
            }
        }
    }

    async fn sync_folder_with_recovery(
        &self,
        ctx: &FolderCtx<'_>,
        pass: &Mutex<PassState>,
        fr: &mut pb::FolderReconciliation,
    ) -> Result<(), SyncError> {
        match self.sync_folder(ctx, pass, fr, false).await {
            Err(SyncError::Ews(e)) if e.kind() == ErrorKind::InvalidSyncState => {
                warn!(error = %e, "folder sync state invalid, full resync");
                Metrics::add(&self.metrics.sync_state_resets, 1);
                self.store.delete_folder(ctx.cp_key, &ctx.folder.id).await?;
                fr.resynced = true;
                self.sync_folder(ctx, pass, fr, true).await
            }
            other => other,
        }
    }

    async fn sync_folder(
        &self,
        ctx: &FolderCtx<'_>,
        pass: &Mutex<PassState>,
        fr: &mut pb::FolderReconciliation,
        resync: bool,
    ) -> Result<(), SyncError> {
        let mb = &ctx.mailbox.smtp;
        let mut state = if resync {
            None
        } else {
            self.store.get_folder(ctx.cp_key, &ctx.folder.id).await?
        };
        loop {
            let page = self
                .ews
                .sync_folder_items(
                    ctx.mailbox,
                    &ctx.folder.id,
                    state.as_deref(),
                    self.opts.max_changes,
                )
                .await?;
            let mut fetch: Vec<ItemSummary> = Vec::new();
            let mut changes: Vec<OutMessage> = Vec::new();
            let mut moved_in: Vec<ItemId> = Vec::new();
            for c in page.changes {
                match c {
                    ItemChange::Create(s) | ItemChange::Update(s)
                        if !s.item_class.is_empty()
                            && !self.opts.filters.item_classes.allows(&s.item_class) =>
                    {
                        *fr.skipped.entry("item_class_filter".into()).or_default() += 1;
                    }
                    ItemChange::Create(s) => {
                        fr.created += 1;
                        {
                            // Check and record in one step: of two folders seeing the two
                            // halves of a move at once, the second sees the first.
                            let mut p = pass.lock().unwrap_or_else(PoisonError::into_inner);
                            if let Some(from) = p.deleted.get(&s.id.id)
                                && *from != ctx.folder.id
                            {
                                moved_in.push(s.id.clone());
                            }
                            p.created.insert(s.id.id.clone(), ctx.folder.id.clone());
                        }
                        if resync && self.store.has_version(mb, &s.id).await? {
                            Metrics::add(&self.metrics.mime_fetch_skipped, 1);
                            *fr.skipped.entry("already_collected".into()).or_default() += 1;
                            continue;
                        }
                        fetch.push(s);
                    }
                    ItemChange::Update(s) => {
                        fr.updated += 1;
                        if resync && self.store.has_version(mb, &s.id).await? {
                            Metrics::add(&self.metrics.mime_fetch_skipped, 1);
                            *fr.skipped.entry("already_collected".into()).or_default() += 1;
                            continue;
                        }
                        fetch.push(s);
                    }
                    ItemChange::Delete(id) => {
                        let moved_to = {
                            let mut p = pass.lock().unwrap_or_else(PoisonError::into_inner);
                            p.deleted.insert(id.id.clone(), ctx.folder.id.clone());
                            p.created
                                .get(&id.id)
                                .filter(|f| **f != ctx.folder.id)
                                .cloned()
                        };
                        if let Some(to) = moved_to {
                            fr.moves += 1;
                            changes.push(self.change(ctx, &id, pb::ChangeKind::Move, &to, None));
                        } else {
                            fr.deleted += 1;
                            let folder = ctx.folder.id.clone();
                            changes.push(self.change(
                                ctx,
                                &id,
                                pb::ChangeKind::Delete,
                                &folder,
                                None,
                            ));
                        }
                    }
                    ItemChange::ReadFlag { id, is_read } => {
                        fr.read_flag_changes += 1;
                        let folder = ctx.folder.id.clone();
                        changes.push(self.change(
                            ctx,
                            &id,
                            pb::ChangeKind::ReadFlag,
                            &folder,
                            Some(is_read),
                        ));
                    }
                }
            }
            // Content first.
            self.fetch_and_publish(ctx, &fetch, fr).await?;
            for id in &moved_in {
                fr.moves += 1;
                let folder = ctx.folder.id.clone();
                changes.push(self.change(ctx, id, pb::ChangeKind::Move, &folder, None));
            }
            if !changes.is_empty() {
                let n = changes.len() as u64;
                self.publisher.publish_batch(changes).await?;
                Metrics::add(&self.metrics.changes_published, n);
            }
            // Every message of this page is acknowledged: now, and only now, advance.
            self.store
                .put_folder(ctx.cp_key, &ctx.folder.id, &page.sync_state)
                .await?;
            state = Some(page.sync_state);
            if page.includes_last {
                info!(captured = fr.captured, "folder synchronised");
                return Ok(());
            }
        }
    }

    /// Fetches `items` in bounded GetItem batches and publishes them in order; the next batch
    /// is fetched while the previous one is being acknowledged (downstream settlement can take
    /// as long as the fetch, so doing both at once nearly halves a folder's time).
    async fn fetch_and_publish(
        &self,
        ctx: &FolderCtx<'_>,
        items: &[ItemSummary],
        fr: &mut pb::FolderReconciliation,
    ) -> Result<(), SyncError> {
        let mut chunks = batches(
            items,
            self.opts.get_item_batch,
            self.opts.get_item_max_bytes,
        )
        .into_iter();
        let Some(first) = chunks.next() else {
            return Ok(());
        };
        let span = |c: &[ItemSummary]| info_span!("batch", items = c.len());
        let mut ready = self.fetch_batch(ctx, first).instrument(span(first)).await?;
        for chunk in chunks {
            // Both futures are polled together: the fetch proceeds during the publish.
            let (published, fetched) = tokio::join!(
                self.publish_fetched(ctx, ready, fr),
                self.fetch_batch(ctx, chunk).instrument(span(chunk))
            );
            published?;
            ready = fetched?;
        }
        self.publish_fetched(ctx, ready, fr).await?;
        Ok(())
    }

    /// GetItem for one batch; items that cannot be read become quarantine records.
    async fn fetch_batch(
        &self,
        ctx: &FolderCtx<'_>,
        chunk: &[ItemSummary],
    ) -> Result<FetchedBatch, SyncError> {
        let ids: Vec<ItemId> = chunk.iter().map(|s| s.id.clone()).collect();
        let results = match self.ews.get_items_mime(ctx.mailbox, &ids).await {
            Ok(r) if r.len() == ids.len() => r,
            Ok(_) => {
                return Err(EwsError::malformed("GetItem answer count mismatch").into());
            }
            Err(e) if e.kind() == ErrorKind::MalformedResponse && ids.len() > 1 => {
                // Isolate the item that breaks the response.
                let mut r = Vec::with_capacity(ids.len());
                for id in &ids {
                    r.push(
                        match self
                            .ews
                            .get_items_mime(ctx.mailbox, std::slice::from_ref(id))
                            .await
                        {
                            Ok(mut one) if one.len() == 1 => one.remove(0),
                            Ok(_) => Err(EwsError::malformed("GetItem answer count mismatch")),
                            Err(e) if e.kind() == ErrorKind::MalformedResponse => Err(e),
                            Err(e) => return Err(e.into()),
                        },
                    );
                }
                r
            }
            Err(e) if e.kind() == ErrorKind::MalformedResponse => vec![Err(e)],
            Err(e) => return Err(e.into()),
        };
        let mut b = FetchedBatch {
            out: Vec::with_capacity(ids.len()),
            ..Default::default()
        };
        for (summary, r) in chunk.iter().zip(results) {
            match r {
                Ok(item) => {
                    b.bytes += item.mime.len() as u64;
                    b.acked.push(item.id.clone());
                    b.out.push(self.envelope(ctx, summary, item));
                }
                Err(e) if e.kind().is_retryable() => return Err(e.into()),
                Err(e) => {
                    let mut e = e;
                    let c = e.context_mut();
                    c.mailbox.get_or_insert_with(|| ctx.mailbox.smtp.clone());
                    c.folder.get_or_insert_with(|| ctx.path.join("/"));
                    c.item.get_or_insert_with(|| summary.id.id.clone());
                    warn!(error = %e, "item quarantined");
                    b.quarantined += 1;
                    b.out
                        .push(self.quarantine(ctx, &summary.id, "get_item", &e));
                }
            }
        }
        Ok(b)
    }

    /// Publishes a fetched batch and records its versions once acknowledged.
    async fn publish_fetched(
        &self,
        ctx: &FolderCtx<'_>,
        b: FetchedBatch,
        fr: &mut pb::FolderReconciliation,
    ) -> Result<(), SyncError> {
        let envelopes = b.acked.len() as u64;
        self.publisher.publish_batch(b.out).await?;
        Metrics::add(&self.metrics.items_published, envelopes);
        Metrics::add(&self.metrics.bytes_published, b.bytes);
        Metrics::add(&self.metrics.quarantined, b.quarantined);
        fr.captured += envelopes;
        fr.quarantined += b.quarantined;
        self.store
            .record_versions(&ctx.mailbox.smtp, &b.acked)
            .await?;
        Ok(())
    }

    fn envelope(&self, ctx: &FolderCtx<'_>, summary: &ItemSummary, item: MimeItem) -> OutMessage {
        let mb = &ctx.mailbox.smtp;
        let size = item.mime.len() as u64;
        let msg_id = item_msg_id(mb, &item.id);
        let env = pb::ItemEnvelope {
            source: self.opts.source.clone(),
            mailbox: mb.clone(),
            folder_id: ctx.folder.id.clone(),
            folder_path: ctx.path.clone(),
            distinguished_folder: ctx.distinguished.clone(),
            item_id: item.id.id,
            change_key: item.id.change_key,
            item_class: if item.item_class.is_empty() {
                summary.item_class.clone()
            } else {
                item.item_class
            },
            format: ContentFormat::Mime as i32,
            body: Some(pb::item_envelope::Body::Inline(item.mime.into())),
            size,
            collected_unix_ms: now_ms(),
            is_read: item.is_read.or(summary.is_read).unwrap_or(false),
            properties: match ctx.kind {
                MailboxKind::Primary => Default::default(),
                k => [("mailbox_kind".to_owned(), k.label().to_owned())].into(),
            },
        };
        OutMessage {
            traceparent: Some(message_traceparent(ctx.trace_id)),
            subject: subject("item", mb),
            msg_id,
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Item(env)),
            },
        }
    }

    fn change(
        &self,
        ctx: &FolderCtx<'_>,
        id: &ItemId,
        kind: pb::ChangeKind,
        folder_id: &str,
        is_read: Option<bool>,
    ) -> OutMessage {
        let mb = &ctx.mailbox.smtp;
        let read = match is_read {
            Some(true) => "1",
            Some(false) => "0",
            None => "",
        };
        OutMessage {
            traceparent: Some(message_traceparent(ctx.trace_id)),
            subject: subject("change", mb),
            msg_id: msg_id(&[
                "change",
                &mb.to_lowercase(),
                &id.id,
                &id.change_key,
                kind.as_str_name(),
                folder_id,
                read,
            ]),
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Change(pb::ItemChange {
                    source: self.opts.source.clone(),
                    mailbox: mb.clone(),
                    item_id: id.id.clone(),
                    change_key: id.change_key.clone(),
                    kind: kind as i32,
                    folder_id: folder_id.to_owned(),
                    folder_path: if folder_id == ctx.folder.id {
                        ctx.path.clone()
                    } else {
                        Vec::new()
                    },
                    is_read: is_read.unwrap_or(false),
                    observed_unix_ms: now_ms(),
                })),
            },
        }
    }

    fn quarantine(
        &self,
        ctx: &FolderCtx<'_>,
        id: &ItemId,
        stage: &str,
        e: &EwsError,
    ) -> OutMessage {
        let mb = &ctx.mailbox.smtp;
        OutMessage {
            traceparent: Some(message_traceparent(ctx.trace_id)),
            subject: subject("quarantine", mb),
            msg_id: msg_id(&[
                "quarantine",
                &mb.to_lowercase(),
                &id.id,
                &id.change_key,
                stage,
                e.kind().as_str(),
            ]),
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Quarantine(
                    pb::ItemQuarantine {
                        source: self.opts.source.clone(),
                        mailbox: mb.clone(),
                        folder_id: ctx.folder.id.clone(),
                        folder_path: ctx.path.clone(),
                        item_id: id.id.clone(),
                        change_key: id.change_key.clone(),
                        stage: stage.to_owned(),
                        error_kind: e.kind().as_str().to_owned(),
                        cause: describe(ctx, id, e),
                        observed_unix_ms: now_ms(),
                    },
                )),
            },
        }
    }
}

/// Trace id of a mailbox pass, derived from what identifies the pass.
fn trace_id(rec: &pb::MailboxReconciliation) -> String {
    let h = blake3::hash(
        format!(
            "{}\0{}\0{}\0{}",
            rec.source, rec.mailbox, rec.mailbox_kind, rec.started_unix_ms
        )
        .as_bytes(),
    );
    hex::encode(&h.as_bytes()[..16])
}

/// The `traceparent` of a message published now: the span it is published from when spans
/// are recorded (the aggregator's spans then join the collector's in the trace backend), else
/// the mailbox pass's trace with a fresh span id.
fn message_traceparent(trace_id: &str) -> String {
    mailvault_runtime::otel::traceparent(&tracing::Span::current())
        .unwrap_or_else(|| traceparent(trace_id))
}

/// A W3C `traceparent` value in `trace_id` with a fresh span id.
fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{:016x}-01", rand::random::<u64>() | 1)
}

/// Checkpoint-store key of a mailbox part: the address for the primary mailbox (so existing
/// checkpoints stay valid), `archive:`/`public:` + address otherwise.
pub fn checkpoint_key(mailbox: &Mailbox, kind: MailboxKind) -> String {
    match kind {
        MailboxKind::Primary => mailbox.smtp.clone(),
        MailboxKind::Archive => format!("archive:{}", mailbox.smtp),
        MailboxKind::PublicFolders => format!("public:{}", mailbox.smtp),
    }
}

/// The error text, made to name mailbox, folder and item even when the error did not know them.
fn describe(ctx: &FolderCtx<'_>, id: &ItemId, e: &EwsError) -> String {
    let c = e.context();
    let mut s = String::new();
    if c.mailbox.is_none() {
        s.push_str(&format!("mailbox={} ", ctx.mailbox.smtp));
    }
    if c.folder.is_none() {
        s.push_str(&format!("folder={} ", ctx.path.join("/")));
    }
    if c.item.is_none() && !id.id.is_empty() {
        s.push_str(&format!("item={} ", id.id));
    }
    s.push_str(&e.to_string());
    s
}

/// Cuts `items` into GetItem batches bounded by count and by the server-reported sizes (memory
/// bound: at most one batch of MIME is held at a time; an item larger than the budget goes
/// alone).
pub fn batches(items: &[ItemSummary], max_count: usize, max_bytes: u64) -> Vec<&[ItemSummary]> {
    let max_count = max_count.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, it) in items.iter().enumerate() {
        let size = it.size.unwrap_or(0);
        let count = i - start;
        if count > 0 && (count >= max_count || bytes.saturating_add(size) > max_bytes) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Display-name path of a folder below `msgfolderroot`, and whether it is inside that subtree.
fn folder_path(
    folders: &BTreeMap<String, Folder>,
    f: &Folder,
    ipm_root: Option<&str>,
) -> (Vec<String>, bool) {
    let mut path = vec![f.display_name.clone()];
    let mut cur = f.parent_id.as_str();
    let mut in_ipm = ipm_root.is_none();
    for _ in 0..64 {
        if Some(cur) == ipm_root {
            in_ipm = true;
            break;
        }
        match folders.get(cur) {
            Some(p) => {
                path.push(p.display_name.clone());
                cur = p.parent_id.as_str();
            }
            None => break,
        }
    }
    path.reverse();
    (path, in_ipm)
}

#[cfg(test)]
mod tests;
