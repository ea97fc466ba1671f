//! The EWS edge: request builders, namespace-aware response parsers, the HTTP client and the
//! [`Ews`] trait the sync engine is written against.

pub mod client;
mod conn;
pub mod error;
pub mod ntlm;
pub mod parse;
pub mod request;
pub mod xml;

use async_trait::async_trait;

pub use error::{ErrorContext, ErrorKind, EwsError};

/// An EWS `ItemId` (`Id` + `ChangeKey`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId {
    pub id: String,
    pub change_key: String,
}

/// A folder as returned by SyncFolderHierarchy / GetFolder / FindFolder.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Folder {
    pub id: String,
    pub change_key: String,
    pub parent_id: String,
    pub display_name: String,
    pub folder_class: String,
    pub total_count: Option<u64>,
    /// Element name (`Folder`, `CalendarFolder`, `SearchFolder`, …).
    pub element: String,
}

/// One change from SyncFolderHierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderChange {
    Create(Folder),
    Update(Folder),
    Delete { id: String },
}

/// One page of SyncFolderHierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HierarchyPage {
    pub sync_state: String,
    pub includes_last: bool,
    pub changes: Vec<FolderChange>,
}

/// Item summary carried by SyncFolderItems Create/Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSummary {
    pub id: ItemId,
    pub item_class: String,
    pub is_read: Option<bool>,
    pub size: Option<u64>,
    /// Element name (`Message`, `CalendarItem`, `Contact`, …).
    pub element: String,
}

/// One change from SyncFolderItems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemChange {
    Create(ItemSummary),
    Update(ItemSummary),
    Delete(ItemId),
    ReadFlag { id: ItemId, is_read: bool },
}

/// One page of SyncFolderItems.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemsPage {
    pub sync_state: String,
    pub includes_last: bool,
    pub changes: Vec<ItemChange>,
}

/// An item with its MIME content, from GetItem with `IncludeMimeContent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimeItem {
    pub id: ItemId,
    pub item_class: String,
    pub is_read: Option<bool>,
    pub mime: Vec<u8>,
}

/// One page of FindFolder / FindItem (public folders).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FindPage<T> {
    pub entries: Vec<T>,
    pub includes_last: bool,
    pub next_offset: Option<u32>,
}

/// The mailbox an operation acts on (impersonated when impersonation is on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub smtp: String,
}

/// Which part of a mailbox a pass collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MailboxKind {
    /// The primary mailbox (IPM subtree below `msgfolderroot`).
    #[default]
    Primary,
    /// The in-place archive (below `archivemsgfolderroot`).
    Archive,
    /// Public folders below `publicfoldersroot`, reached through this mailbox (FindFolder /
    /// FindItem: SyncFolderItems does not work on public folders).
    PublicFolders,
}

impl MailboxKind {
    /// Stable label (`primary`, `archive`, `public_folders`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Archive => "archive",
            Self::PublicFolders => "public_folders",
        }
    }

    /// Distinguished id of the subtree root.
    pub fn root(self) -> &'static str {
        match self {
            Self::Primary => "msgfolderroot",
            Self::Archive => "archivemsgfolderroot",
            Self::PublicFolders => "publicfoldersroot",
        }
    }
}

/// EWS operations the sync engine needs. The HTTP implementation is [`client::HttpEws`]; tests
/// use in-memory fakes.
#[async_trait]
pub trait Ews: Send + Sync {
    /// SyncFolderHierarchy below the distinguished folder `root` (None = the whole mailbox),
    /// from `sync_state` (None = from scratch).
    async fn sync_folder_hierarchy(
        &self,
        mailbox: &Mailbox,
        root: Option<&str>,
        sync_state: Option<&str>,
    ) -> Result<HierarchyPage, EwsError>;

    /// GetFolder for distinguished folder ids (`inbox`, `msgfolderroot`, …). Missing ones are
    /// left out of the answer.
    async fn get_distinguished_folders(
        &self,
        mailbox: &Mailbox,
        ids: &[&str],
    ) -> Result<Vec<(String, Folder)>, EwsError>;

    /// One SyncFolderItems call (at most `max_changes`, ≤ 512).
    async fn sync_folder_items(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        sync_state: Option<&str>,
        max_changes: u32,
    ) -> Result<ItemsPage, EwsError>;

    /// GetItem with MIME content for a batch: one result per requested id, in order.
    async fn get_items_mime(
        &self,
        mailbox: &Mailbox,
        ids: &[ItemId],
    ) -> Result<Vec<Result<MimeItem, EwsError>>, EwsError>;

    /// FindFolder (shallow, paged) below `parent` — the public-folder path.
    async fn find_folders(
        &self,
        mailbox: &Mailbox,
        parent: request::FolderRef<'_>,
        offset: u32,
        page: u32,
    ) -> Result<FindPage<Folder>, EwsError> {
        let _ = (mailbox, parent, offset, page);
        Err(unsupported("FindFolder"))
    }

    /// FindItem (shallow, paged) in `folder_id` — the public-folder path.
    async fn find_items(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        offset: u32,
        page: u32,
    ) -> Result<FindPage<ItemSummary>, EwsError> {
        let _ = (mailbox, folder_id, offset, page);
        Err(unsupported("FindItem"))
    }
}

/// EWS operations that write into a mailbox: what restore jobs need. Separate from [`Ews`] so
/// the read-only sync engine cannot write by accident.
#[async_trait]
pub trait EwsWrite: Ews {
    /// CreateFolder named `display_name` below `parent`; returns the new folder id. A folder of
    /// that name already there → an error with code `ErrorFolderExists`.
    async fn create_folder(
        &self,
        mailbox: &Mailbox,
        parent: request::FolderRef<'_>,
        display_name: &str,
        folder_class: Option<&str>,
    ) -> Result<String, EwsError>;

    /// Items in `folder_id` whose `InternetMessageId` equals `internet_message_id` (FindItem
    /// with a Restriction; at most the first 50).
    async fn find_items_by_message_id(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        internet_message_id: &str,
    ) -> Result<Vec<ItemId>, EwsError>;

    /// CreateItem from MIME, `SaveOnly` into `folder_id`, not a draft, read or unread.
    async fn create_item_mime(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        mime: &[u8],
        item_class: &str,
        is_read: bool,
    ) -> Result<ItemId, EwsError>;

    /// UploadItems (`CreateNew`) of an ExportItems blob into `folder_id`.
    async fn upload_item(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        data: &[u8],
    ) -> Result<ItemId, EwsError>;

    /// UpdateItem setting `message:IsRead`.
    async fn set_is_read(
        &self,
        mailbox: &Mailbox,
        id: &ItemId,
        is_read: bool,
    ) -> Result<ItemId, EwsError>;

    /// DeleteItem (`HardDelete`). An item already gone is not an error.
    async fn delete_item_hard(&self, mailbox: &Mailbox, id: &ItemId) -> Result<(), EwsError>;
}

fn unsupported(op: &'static str) -> EwsError {
    EwsError::Permanent {
        code: "Unsupported".into(),
        message: format!("{op} is not implemented by this EWS backend"),
        context: Box::new(ErrorContext {
            operation: op,
            ..ErrorContext::default()
        }),
    }
}

/// Well-known folders resolved by distinguished id, so restores map to localized names.
pub const DISTINGUISHED_FOLDERS: &[&str] = &[
    "msgfolderroot",
    "inbox",
    "sentitems",
    "deleteditems",
    "drafts",
    "junkemail",
    "outbox",
    "calendar",
    "contacts",
    "tasks",
    "notes",
    "journal",
];
