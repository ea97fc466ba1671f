//! The restore stage: writes one [`RestoreItem`] into Exchange through [`EwsWrite`] and says
//! what happened in a [`RestoreResult`]. No NATS here (that edge is [`crate::restore_nats`]).
//!
//! * **Folder mapping**: `folder.distinguished_root` is resolved by distinguished id in the
//!   *target* mailbox (so "inbox" is the German mailbox's "Posteingang"), empty means
//!   `msgfolderroot`; every `folder.path` component below it is found by display name
//!   (case-insensitive, as Exchange compares folder names) or created. Resolved paths are cached
//!   per (job, mailbox, root, path).
//! * **Content**: `CONTENT_FORMAT_MIME` → CreateItem `SaveOnly` with `PR_MESSAGE_FLAGS` (not a
//!   draft; read unless `mark_unread` or `!is_read`); `CONTENT_FORMAT_EWS_EXPORT` → UploadItems
//!   `CreateNew` (the blob carries its own read state; `mark_unread` adds an UpdateItem).
//! * **Collisions** (an item with the same Internet-Message-Id in the target folder): skip →
//!   `SKIPPED` (nothing written), copy → created anyway, `COPIED`, replace → the new item is
//!   created first, then the old copies are hard-deleted, `REPLACED` (a failure never loses
//!   the old copy). Without an Internet-Message-Id there is no check: always `CREATED`.
//! * **Failures** of one item become `OUTCOME_FAILED` with an error naming job, item, mailbox,
//!   stage and cause; nothing here aborts a job. Throttling back-off and retries happen below,
//!   in the EWS client.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mailvault_proto::restore::v1::{Collision, Outcome, RestoreItem, RestoreResult};
use mailvault_proto::storage::v1::ContentFormat;
use tracing::{info, warn};

use crate::ews::request::FolderRef;
use crate::ews::{ErrorKind, EwsError, EwsWrite, ItemId, Mailbox};

/// Names a restore item in errors: job, sequence number, source item, target mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLabel {
    pub job_id: String,
    pub seq: u64,
    pub source_item_id: String,
    pub target_mailbox: String,
}

impl ItemLabel {
    pub fn of(item: &RestoreItem) -> Self {
        Self {
            job_id: item.job_id.clone(),
            seq: item.seq,
            source_item_id: item.source_item_id.clone(),
            target_mailbox: item.target_mailbox.clone(),
        }
    }
}

impl fmt::Display for ItemLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "restore job {} item #{}", self.job_id, self.seq)?;
        if !self.source_item_id.is_empty() {
            write!(f, " (source item {})", self.source_item_id)?;
        }
        write!(f, " into mailbox {}", self.target_mailbox)
    }
}

/// Why one restore item failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The job itself is unusable (no mailbox, unknown format, size mismatch, …).
    #[error("{item}: invalid restore item: {reason}")]
    Invalid { item: ItemLabel, reason: String },
    /// The distinguished root does not exist in the target mailbox.
    #[error("{item}: distinguished folder {root:?} does not exist in the target mailbox")]
    NoSuchRoot { item: ItemLabel, root: String },
    /// An EWS call failed (after the client's retries).
    #[error("{item}: {stage} failed: {source}")]
    Ews {
        item: ItemLabel,
        stage: &'static str,
        source: EwsError,
    },
    /// Replace: the new copy exists, but an old one could not be deleted.
    #[error(
        "{item}: replaced copy created as {new_item_id}, but deleting the old copy {old_item_id} failed: {source}"
    )]
    ReplaceDelete {
        item: ItemLabel,
        new_item_id: String,
        old_item_id: String,
        source: EwsError,
    },
}

/// Resolved folders, per (job, lower-cased mailbox, root, path). Cleared when it grows past
/// [`FOLDER_CACHE_MAX`] so a long-running collector does not keep every job's folders.
type FolderKey = (String, String, String, Vec<String>);
const FOLDER_CACHE_MAX: usize = 4096;
/// Most writes of one item whose earlier attempts provably stored nothing.
const WRITE_ATTEMPTS: u32 = 3;

/// Applies restore items to Exchange through `E`.
pub struct Restorer<E: ?Sized> {
    ews: Arc<E>,
    folders: Mutex<HashMap<FolderKey, String>>,
}

impl<E: ?Sized> fmt::Debug for Restorer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restorer").finish_non_exhaustive()
    }
}

/// The folder class for folders created to hold items of `item_class`.
fn folder_class_for(item_class: &str) -> &'static str {
    let c = item_class.to_ascii_lowercase();
    if c.starts_with("ipm.appointment") || c.starts_with("ipm.schedule") {
        "IPF.Appointment"
    } else if c.starts_with("ipm.contact") || c.starts_with("ipm.distlist") {
        "IPF.Contact"
    } else if c.starts_with("ipm.task") {
        "IPF.Task"
    } else if c.starts_with("ipm.stickynote") {
        "IPF.StickyNote"
    } else {
        "IPF.Note"
    }
}

impl<E: EwsWrite + ?Sized> Restorer<E> {
    pub fn new(ews: Arc<E>) -> Self {
        Self {
            ews,
            folders: Mutex::new(HashMap::new()),
        }
    }

    /// Restores one item whose content is `body`. Never fails as a whole: a failure is an
    /// `OUTCOME_FAILED` result naming the item and the cause.
    pub async fn apply(&self, item: &RestoreItem, body: Bytes) -> RestoreResult {
        let mut result = RestoreResult {
            job_id: item.job_id.clone(),
            seq: item.seq,
            source_item_id: item.source_item_id.clone(),
            target_mailbox: item.target_mailbox.clone(),
            ..RestoreResult::default()
        };
        match self.try_apply(item, &body, &mut result).await {
            Ok((outcome, id)) => {
                result.outcome = outcome as i32;
                result.new_item_id = id;
                info!(job = %item.job_id, seq = item.seq, outcome = ?outcome, "restore item applied");
            }
            Err(e) => {
                warn!(error = %e, "restore item failed");
                result.outcome = Outcome::Failed as i32;
                if let RestoreError::ReplaceDelete { new_item_id, .. } = &e {
                    result.new_item_id.clone_from(new_item_id);
                }
                result.error = e.to_string();
            }
        }
        result
    }

    async fn try_apply(
        &self,
        item: &RestoreItem,
        body: &Bytes,
        result: &mut RestoreResult,
    ) -> Result<(Outcome, String), RestoreError> {
        let label = ItemLabel::of(item);
        let invalid = |reason: String| RestoreError::Invalid {
            item: label.clone(),
            reason,
        };
        if item.target_mailbox.trim().is_empty() {
            return Err(invalid("no target mailbox".into()));
        }
        let format = ContentFormat::try_from(item.format)
            .map_err(|_| invalid(format!("unknown content format {}", item.format)))?;
        if !matches!(format, ContentFormat::Mime | ContentFormat::EwsExport) {
            return Err(invalid(format!(
                "content format {format:?} cannot be restored"
            )));
        }
        if item.size != 0 && item.size != body.len() as u64 {
            return Err(invalid(format!(
                "body is {} bytes, the job says {}",
                body.len(),
                item.size
            )));
        }
        if body.is_empty() {
            return Err(invalid("empty body".into()));
        }
        let mailbox = Mailbox {
            smtp: item.target_mailbox.trim().to_owned(),
        };
        let collision = Collision::try_from(item.collision).unwrap_or(Collision::Unspecified);

        // Resolve the folder and look for an existing copy; a cached folder that vanished
        // (ErrorFolderNotFound) is resolved once more.
        let mut retried = false;
        let (folder_id, existing) = loop {
            let folder_id = self.resolve_folder(item, &mailbox, &label).await?;
            result.folder_id.clone_from(&folder_id);
            if item.internet_message_id.is_empty() {
                break (folder_id, Vec::new());
            }
            match self
                .ews
                .find_items_by_message_id(&mailbox, &folder_id, &item.internet_message_id)
                .await
            {
                Ok(ids) => break (folder_id, ids),
                Err(e) if e.kind() == ErrorKind::ItemNotFound && !retried => {
                    retried = true;
                    self.forget_folder(item, &mailbox);
                }
                Err(e) => {
                    return Err(RestoreError::Ews {
                        item: label,
                        stage: "looking for an existing copy",
                        source: e,
                    });
                }
            }
        };

        if !existing.is_empty() && matches!(collision, Collision::Unspecified | Collision::Skip) {
            return Ok((Outcome::Skipped, existing[0].id.clone()));
        }

        let created = self
            .create(item, format, &mailbox, &folder_id, body, &existing)
            .await;
        let new_id = match created {
            // An export blob carries its own read state: mark-unread is one UpdateItem more.
            Ok(id) if format == ContentFormat::EwsExport && item.mark_unread => self
                .ews
                .set_is_read(&mailbox, &id, false)
                .await
                .map_err(|e| RestoreError::Ews {
                    item: label.clone(),
                    stage: "marking the uploaded item unread",
                    source: e,
                })?,
            Ok(id) => id,
            Err(e) => {
                if e.kind() == ErrorKind::ItemNotFound {
                    // The folder vanished under a cached id: the next item resolves it again.
                    self.forget_folder(item, &mailbox);
                }
                return Err(RestoreError::Ews {
                    item: label,
                    stage: if format == ContentFormat::EwsExport {
                        "UploadItems"
                    } else {
                        "CreateItem"
                    },
                    source: e,
                });
            }
        };
        if existing.is_empty() {
            return Ok((Outcome::Created, new_id.id));
        }
        if collision == Collision::Copy {
            return Ok((Outcome::Copied, new_id.id));
        }
        // Replace: the new copy is in place; remove the old ones.
        for old in existing.iter().filter(|o| o.id != new_id.id) {
            self.ews
                .delete_item_hard(&mailbox, old)
                .await
                .map_err(|e| RestoreError::ReplaceDelete {
                    item: label.clone(),
                    new_item_id: new_id.id.clone(),
                    old_item_id: old.id.clone(),
                    source: e,
                })?;
        }
        Ok((Outcome::Replaced, new_id.id))
    }

    /// Writes the item. A write whose outcome is unknown (transport failure, unreadable
    /// answer) is not repeated blindly: with an Internet-Message-Id the folder is searched for a
    /// copy that was not there before (then that is the restored item); if there is none it is
    /// written again, at most [`WRITE_ATTEMPTS`] times. Without an Internet-Message-Id such a
    /// failure is final (the error says the item may have been written).
    async fn create(
        &self,
        item: &RestoreItem,
        format: ContentFormat,
        mailbox: &Mailbox,
        folder_id: &str,
        body: &Bytes,
        existing: &[ItemId],
    ) -> Result<ItemId, EwsError> {
        let is_read = item.is_read && !item.mark_unread;
        let mut attempt = 1;
        loop {
            let r = match format {
                ContentFormat::EwsExport => self.ews.upload_item(mailbox, folder_id, body).await,
                _ => {
                    self.ews
                        .create_item_mime(mailbox, folder_id, body, &item.item_class, is_read)
                        .await
                }
            };
            let e = match r {
                Ok(id) => return Ok(id),
                Err(e) => e,
            };
            let uncertain = matches!(
                e.kind(),
                ErrorKind::Transient | ErrorKind::MalformedResponse
            );
            if !uncertain || item.internet_message_id.is_empty() {
                return Err(e);
            }
            let now = self
                .ews
                .find_items_by_message_id(mailbox, folder_id, &item.internet_message_id)
                .await?;
            if let Some(new) = now
                .into_iter()
                .find(|n| !existing.iter().any(|o| o.id == n.id))
            {
                warn!(error = %e, item = %new.id, "write answer lost, but the item was written");
                return Ok(new);
            }
            if attempt >= WRITE_ATTEMPTS {
                return Err(e);
            }
            warn!(error = %e, attempt, "write failed before the item was stored; writing again");
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
            attempt += 1;
        }
    }

    fn cache_key(item: &RestoreItem, mailbox: &Mailbox) -> FolderKey {
        let (root, path) = match &item.folder {
            Some(f) => (f.distinguished_root.to_ascii_lowercase(), f.path.clone()),
            None => (String::new(), Vec::new()),
        };
        (item.job_id.clone(), mailbox.smtp.to_lowercase(), root, path)
    }

    fn forget_folder(&self, item: &RestoreItem, mailbox: &Mailbox) {
        let key = Self::cache_key(item, mailbox);
        if let Ok(mut m) = self.folders.lock() {
            m.remove(&key);
        }
    }

    /// The target folder's id: the distinguished root in the target mailbox, then each path
    /// component found by name or created.
    async fn resolve_folder(
        &self,
        item: &RestoreItem,
        mailbox: &Mailbox,
        label: &ItemLabel,
    ) -> Result<String, RestoreError> {
        let key = Self::cache_key(item, mailbox);
        if let Some(id) = self.folders.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(id);
        }
        let (root, path) = (&key.2, &key.3);
        let root = if root.is_empty() {
            "msgfolderroot"
        } else {
            root.as_str()
        };
        let ews_err = |stage, e| RestoreError::Ews {
            item: label.clone(),
            stage,
            source: e,
        };
        let found = self
            .ews
            .get_distinguished_folders(mailbox, &[root])
            .await
            .map_err(|e| ews_err("resolving the distinguished root folder", e))?;
        let mut current = found
            .into_iter()
            .find(|(n, _)| n == root)
            .map(|(_, f)| f.id)
            .ok_or_else(|| RestoreError::NoSuchRoot {
                item: label.clone(),
                root: root.to_owned(),
            })?;
        let class = folder_class_for(&item.item_class);
        for name in path {
            if name.trim().is_empty() {
                return Err(RestoreError::Invalid {
                    item: label.clone(),
                    reason: format!("empty folder name in path {path:?}"),
                });
            }
            current = match self.child_by_name(mailbox, &current, name).await {
                Ok(Some(id)) => id,
                Ok(None) => match self
                    .ews
                    .create_folder(mailbox, FolderRef::Id(&current), name, Some(class))
                    .await
                {
                    Ok(id) => id,
                    // Created meanwhile (another item of the job, another collector): use it.
                    Err(e) if is_folder_exists(&e) => self
                        .child_by_name(mailbox, &current, name)
                        .await
                        .map_err(|e| ews_err("finding a folder", e))?
                        .ok_or_else(|| ews_err("creating a folder", e))?,
                    Err(e) => return Err(ews_err("creating a folder", e)),
                },
                Err(e) => return Err(ews_err("finding a folder", e)),
            };
        }
        if let Ok(mut m) = self.folders.lock() {
            if m.len() >= FOLDER_CACHE_MAX {
                m.clear();
            }
            m.insert(key, current.clone());
        }
        Ok(current)
    }

    /// The id of `parent`'s child folder named `name` (case-insensitive), paging FindFolder.
    async fn child_by_name(
        &self,
        mailbox: &Mailbox,
        parent: &str,
        name: &str,
    ) -> Result<Option<String>, EwsError> {
        let want = name.to_lowercase();
        let mut offset = 0u32;
        loop {
            let page = self
                .ews
                .find_folders(mailbox, FolderRef::Id(parent), offset, 200)
                .await?;
            if let Some(f) = page
                .entries
                .iter()
                .find(|f| f.display_name.to_lowercase() == want)
            {
                return Ok(Some(f.id.clone()));
            }
            match page.next_offset {
                Some(next) if !page.includes_last && next > offset => offset = next,
                _ => return Ok(None),
            }
        }
    }
}

fn is_folder_exists(e: &EwsError) -> bool {
    matches!(e, EwsError::Permanent { code, .. } if code == "ErrorFolderExists")
}
