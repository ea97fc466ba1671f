//! The simulated Exchange store: mailboxes, folder trees, items, a global change sequence,
//! opaque ids and sync states.
//!
//! Every change (item created, content changed, read flag flipped, item removed, folder
//! created or renamed) takes the next value of one global sequence number. A sync state is a
//! watermark in that sequence (plus the folder it belongs to and the folder's sync epoch, and
//! a checksum): the changes a client has not seen are exactly those with a higher sequence
//! number, so paging with `MaxChangesReturned` is exact and a state stays valid across
//! simulator restarts over the same data. Invalidating a folder's sync states bumps its epoch.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::mime::{Summary, summarize};

pub type Bytes = Arc<[u8]>;

#[derive(Debug)]
pub struct Item {
    pub serial: u64,
    pub folder: u32,
    pub mime: Bytes,
    pub item_class: String,
    pub is_read: bool,
    pub version: u32,
    pub created_seq: u64,
    pub content_seq: u64,
    pub read_seq: u64,
    /// Unix seconds the item arrived (Date header, else load time).
    pub received: i64,
    pub summary: Summary,
    /// Reported by some SyncFolderItems response: only items a client may know of get a
    /// Delete when they go.
    pub seen: std::sync::atomic::AtomicBool,
    /// The item's data is damaged: GetItem answers `ErrorCorruptData` for it (tests).
    pub corrupt: bool,
    /// Unsent message (`IsDraft`, `MSGFLAG_UNSENT`).
    pub draft: bool,
}

impl Item {
    pub fn last_seq(&self) -> u64 {
        self.created_seq.max(self.content_seq).max(self.read_seq)
    }
}

#[derive(Debug)]
pub struct Tombstone {
    pub seq: u64,
    pub created_seq: u64,
    pub serial: u64,
    pub version: u32,
    pub seen: bool,
}

#[derive(Debug)]
pub struct Folder {
    pub serial: u32,
    pub parent: Option<u32>,
    pub display_name: String,
    pub distinguished: Option<&'static str>,
    pub class: Option<&'static str>,
    pub created_seq: u64,
    pub changed_seq: u64,
    pub version: u32,
    pub epoch: u32,
    pub items: BTreeSet<u64>,
    pub tombstones: Vec<Tombstone>,
}

#[derive(Debug)]
pub struct MailboxData {
    pub address: String,
    pub display_name: String,
    pub locale: String,
    pub key: u64,
    pub folders: Vec<Folder>,
    pub items: HashMap<u64, Item>,
    pub next_item: u64,
    pub hierarchy_epoch: u32,
}

#[derive(Debug, Default)]
pub struct Store {
    pub mailboxes: Vec<MailboxData>,
    by_addr: HashMap<String, usize>,
    by_key: HashMap<u64, usize>,
    pub seq: u64,
    pub domain: String,
}

/// FNV-1a 64.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Folders every mailbox has: (distinguished id, parent distinguished id, folder class).
const TREE: &[(&str, &str, Option<&str>)] = &[
    ("msgfolderroot", "root", None),
    ("recoverableitemsroot", "root", None),
    ("recoverableitemsdeletions", "recoverableitemsroot", None),
    ("inbox", "msgfolderroot", Some("IPF.Note")),
    ("sentitems", "msgfolderroot", Some("IPF.Note")),
    ("deleteditems", "msgfolderroot", Some("IPF.Note")),
    ("drafts", "msgfolderroot", Some("IPF.Note")),
    ("junkemail", "msgfolderroot", Some("IPF.Note")),
    ("outbox", "msgfolderroot", Some("IPF.Note")),
    ("calendar", "msgfolderroot", Some("IPF.Appointment")),
    ("contacts", "msgfolderroot", Some("IPF.Contact")),
    ("tasks", "msgfolderroot", Some("IPF.Task")),
    ("notes", "msgfolderroot", Some("IPF.StickyNote")),
    ("journal", "msgfolderroot", Some("IPF.Journal")),
];

/// Distinguished ids the simulator knows (besides those in [`TREE`] and `root`) but whose
/// folders a mailbox without an archive does not have.
pub const KNOWN_MISSING: &[&str] = &[
    "archiveroot",
    "archivemsgfolderroot",
    "archivedeleteditems",
    "archiveinbox",
    "archiverecoverableitemsroot",
    "publicfoldersroot",
    "searchfolders",
    "voicemail",
    "conversationhistory",
];

fn fixed_name(d: &str) -> &'static str {
    match d {
        "root" => "",
        "msgfolderroot" => "Top of Information Store",
        "recoverableitemsroot" => "Recoverable Items",
        "recoverableitemsdeletions" => "Deletions",
        _ => "",
    }
}

pub fn class_for_folder(dist: Option<&str>) -> &'static str {
    match dist {
        Some("calendar") => "IPM.Appointment",
        Some("contacts") => "IPM.Contact",
        Some("tasks") => "IPM.Task",
        Some("notes") => "IPM.StickyNote",
        _ => "IPM.Note",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Item,
    Folder,
}

/// Decoded id: (kind, mailbox key, serial).
pub fn decode_id(id: &str) -> Option<(IdKind, u64, u64)> {
    let b = B64.decode(id).ok()?;
    if b.len() != 20 || b[1] != 1 {
        return None;
    }
    let kind = match b[0] {
        b'I' => IdKind::Item,
        b'F' => IdKind::Folder,
        _ => return None,
    };
    let key = u64::from_le_bytes(b[2..10].try_into().ok()?);
    let serial = u64::from_le_bytes(b[10..18].try_into().ok()?);
    let check = u16::from_le_bytes(b[18..20].try_into().ok()?);
    if check != (fnv(&b[..18]) & 0xffff) as u16 {
        return None;
    }
    Some((kind, key, serial))
}

fn encode_id(kind: u8, key: u64, serial: u64) -> String {
    let mut b = Vec::with_capacity(20);
    b.push(kind);
    b.push(1);
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&serial.to_le_bytes());
    let check = (fnv(&b) & 0xffff) as u16;
    b.extend_from_slice(&check.to_le_bytes());
    B64.encode(b)
}

pub fn item_id(key: u64, serial: u64) -> String {
    encode_id(b'I', key, serial)
}

pub fn folder_id(key: u64, serial: u32) -> String {
    encode_id(b'F', key, u64::from(serial))
}

pub fn change_key(kind: u8, serial: u64, version: u32) -> String {
    let mut b = vec![kind, 0x16, 0, 0, 0];
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(serial as u32).to_le_bytes());
    B64.encode(b)
}

/// What a sync state says: which folder (or hierarchy), which epoch, which watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncState {
    pub hierarchy: bool,
    pub key: u64,
    pub folder: u32,
    pub epoch: u32,
    pub watermark: u64,
}

impl SyncState {
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(40);
        b.extend_from_slice(b"MVSS");
        b.push(1);
        b.push(u8::from(self.hierarchy));
        b.extend_from_slice(&self.key.to_le_bytes());
        b.extend_from_slice(&self.folder.to_le_bytes());
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.extend_from_slice(&self.watermark.to_le_bytes());
        let c = fnv(&b) ^ 0x5eed_5eed_5eed_5eed;
        b.extend_from_slice(&c.to_le_bytes());
        B64.encode(b)
    }

    pub fn decode(s: &str) -> Option<SyncState> {
        let b = B64.decode(s.trim()).ok()?;
        if b.len() != 38 || &b[..4] != b"MVSS" || b[4] != 1 {
            return None;
        }
        let c = u64::from_le_bytes(b[30..38].try_into().ok()?);
        if c != fnv(&b[..30]) ^ 0x5eed_5eed_5eed_5eed {
            return None;
        }
        Some(SyncState {
            hierarchy: b[5] == 1,
            key: u64::from_le_bytes(b[6..14].try_into().ok()?),
            folder: u32::from_le_bytes(b[14..18].try_into().ok()?),
            epoch: u32::from_le_bytes(b[18..22].try_into().ok()?),
            watermark: u64::from_le_bytes(b[22..30].try_into().ok()?),
        })
    }
}

/// A reference to an item that tests can hold on to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ItemRef {
    pub mailbox: String,
    pub id: String,
    pub change_key: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no mailbox {0}")]
    NoMailbox(String),
    #[error("folder not found: {0}")]
    NoFolder(String),
    #[error("item not found")]
    NoItem,
    #[error("a folder named {0} already exists there")]
    FolderExists(String),
}

impl Store {
    pub fn new(domain: &str) -> Self {
        Store {
            domain: domain.to_owned(),
            ..Store::default()
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn mailbox_index(&self, addr: &str) -> Option<usize> {
        self.by_addr.get(&addr.trim().to_ascii_lowercase()).copied()
    }

    pub fn mailbox_by_key(&self, key: u64) -> Option<usize> {
        self.by_key.get(&key).copied()
    }

    /// Adds a mailbox with the well-known folders named for `locale`; returns its index.
    pub fn add_mailbox(&mut self, address: &str, display_name: &str, locale: &str) -> usize {
        if let Some(i) = self.mailbox_index(address) {
            return i;
        }
        let key = fnv(address.to_ascii_lowercase().as_bytes());
        let mut mb = MailboxData {
            address: address.to_owned(),
            display_name: display_name.to_owned(),
            locale: locale.to_owned(),
            key,
            folders: Vec::new(),
            items: HashMap::new(),
            next_item: 1,
            hierarchy_epoch: 0,
        };
        let seq = self.next_seq();
        mb.folders.push(Folder {
            serial: 0,
            parent: None,
            display_name: String::new(),
            distinguished: Some("root"),
            class: None,
            created_seq: seq,
            changed_seq: seq,
            version: 0,
            epoch: 0,
            items: BTreeSet::new(),
            tombstones: Vec::new(),
        });
        for (d, parent, class) in TREE {
            let parent_serial = mb
                .folders
                .iter()
                .position(|f| f.distinguished == Some(*parent))
                .unwrap_or(0) as u32;
            let name = mailvault_mailgen::well_known_folder_name(locale, d)
                .unwrap_or_else(|| fixed_name(d));
            let seq = self.next_seq();
            let serial = mb.folders.len() as u32;
            mb.folders.push(Folder {
                serial,
                parent: Some(parent_serial),
                display_name: name.to_owned(),
                distinguished: Some(*d),
                class: *class,
                created_seq: seq,
                changed_seq: seq,
                version: 0,
                epoch: 0,
                items: BTreeSet::new(),
                tombstones: Vec::new(),
            });
        }
        let idx = self.mailboxes.len();
        self.by_addr.insert(address.to_ascii_lowercase(), idx);
        self.by_key.insert(key, idx);
        self.mailboxes.push(mb);
        idx
    }

    pub fn distinguished_folder(&self, mb: usize, d: &str) -> Option<u32> {
        self.mailboxes[mb]
            .folders
            .iter()
            .find(|f| f.distinguished == Some(d))
            .map(|f| f.serial)
    }

    /// Finds or creates the folder at `path` below `parent` (display names).
    pub fn ensure_path(&mut self, mb: usize, parent: u32, path: &[String]) -> u32 {
        let mut cur = parent;
        for name in path {
            cur = match self.child_by_name(mb, cur, name) {
                Some(f) => f,
                None => self.create_folder_raw(mb, cur, name, None),
            };
        }
        cur
    }

    pub fn child_by_name(&self, mb: usize, parent: u32, name: &str) -> Option<u32> {
        self.mailboxes[mb]
            .folders
            .iter()
            .find(|f| f.parent == Some(parent) && f.display_name.eq_ignore_ascii_case(name))
            .map(|f| f.serial)
    }

    fn create_folder_raw(
        &mut self,
        mb: usize,
        parent: u32,
        name: &str,
        class: Option<&'static str>,
    ) -> u32 {
        let seq = self.next_seq();
        let m = &mut self.mailboxes[mb];
        let class = class
            .or(m.folders[parent as usize].class)
            .or(Some("IPF.Note"));
        let serial = m.folders.len() as u32;
        m.folders.push(Folder {
            serial,
            parent: Some(parent),
            display_name: name.to_owned(),
            distinguished: None,
            class,
            created_seq: seq,
            changed_seq: seq,
            version: 0,
            epoch: 0,
            items: BTreeSet::new(),
            tombstones: Vec::new(),
        });
        serial
    }

    pub fn create_folder(
        &mut self,
        mb: usize,
        parent: u32,
        name: &str,
        class: Option<&'static str>,
    ) -> Result<u32, StoreError> {
        if self.child_by_name(mb, parent, name).is_some() {
            return Err(StoreError::FolderExists(name.to_owned()));
        }
        Ok(self.create_folder_raw(mb, parent, name, class))
    }

    pub fn add_item(
        &mut self,
        mb: usize,
        folder: u32,
        mime: Bytes,
        item_class: &str,
        is_read: bool,
    ) -> u64 {
        let seq = self.next_seq();
        let summary = summarize(&mime);
        let received = summary.date.unwrap_or(1_704_067_200);
        let m = &mut self.mailboxes[mb];
        let serial = m.next_item;
        m.next_item += 1;
        m.items.insert(
            serial,
            Item {
                serial,
                folder,
                mime,
                item_class: item_class.to_owned(),
                is_read,
                version: 1,
                created_seq: seq,
                content_seq: seq,
                read_seq: seq,
                received,
                summary,
                seen: std::sync::atomic::AtomicBool::new(false),
                corrupt: false,
                draft: false,
            },
        );
        m.folders[folder as usize].items.insert(serial);
        serial
    }

    pub fn item_ref(&self, mb: usize, serial: u64) -> Option<ItemRef> {
        let m = &self.mailboxes[mb];
        let it = m.items.get(&serial)?;
        Some(ItemRef {
            mailbox: m.address.clone(),
            id: item_id(m.key, serial),
            change_key: change_key(b'C', serial, it.version),
        })
    }

    /// Resolves an item id to (mailbox index, serial), if the item still exists.
    pub fn find_item(&self, id: &str) -> Option<(usize, u64)> {
        let (kind, key, serial) = decode_id(id)?;
        if kind != IdKind::Item {
            return None;
        }
        let mb = self.mailbox_by_key(key)?;
        self.mailboxes[mb]
            .items
            .contains_key(&serial)
            .then_some((mb, serial))
    }

    pub fn remove_item(&mut self, mb: usize, serial: u64) -> Result<(), StoreError> {
        let seq = self.next_seq();
        let m = &mut self.mailboxes[mb];
        let it = m.items.remove(&serial).ok_or(StoreError::NoItem)?;
        let f = &mut m.folders[it.folder as usize];
        f.items.remove(&serial);
        f.tombstones.push(Tombstone {
            seq,
            created_seq: it.created_seq,
            serial,
            version: it.version,
            seen: it.seen.load(std::sync::atomic::Ordering::Relaxed),
        });
        Ok(())
    }

    pub fn replace_content(
        &mut self,
        mb: usize,
        serial: u64,
        mime: Bytes,
    ) -> Result<(), StoreError> {
        let seq = self.next_seq();
        let it = self.mailboxes[mb]
            .items
            .get_mut(&serial)
            .ok_or(StoreError::NoItem)?;
        it.summary = summarize(&mime);
        it.mime = mime;
        it.version += 1;
        it.content_seq = seq;
        Ok(())
    }

    pub fn set_read(&mut self, mb: usize, serial: u64, read: bool) -> Result<(), StoreError> {
        let seq = self.next_seq();
        let it = self.mailboxes[mb]
            .items
            .get_mut(&serial)
            .ok_or(StoreError::NoItem)?;
        if it.is_read != read {
            it.is_read = read;
            it.version += 1;
            it.read_seq = seq;
        }
        Ok(())
    }

    /// Moves an item: as in Exchange, the moved item gets a new id.
    pub fn move_item(&mut self, mb: usize, serial: u64, to: u32) -> Result<u64, StoreError> {
        let it = self.mailboxes[mb]
            .items
            .get(&serial)
            .ok_or(StoreError::NoItem)?;
        let (mime, class, read) = (it.mime.clone(), it.item_class.clone(), it.is_read);
        self.remove_item(mb, serial)?;
        Ok(self.add_item(mb, to, mime, &class, read))
    }

    pub fn rename_folder(&mut self, mb: usize, folder: u32, name: &str) {
        let seq = self.next_seq();
        let f = &mut self.mailboxes[mb].folders[folder as usize];
        f.display_name = name.to_owned();
        f.version += 1;
        f.changed_seq = seq;
    }

    /// Makes every outstanding sync state of the mailbox (or of all mailboxes) invalid.
    pub fn invalidate_sync_states(&mut self, mb: Option<usize>) {
        for (i, m) in self.mailboxes.iter_mut().enumerate() {
            if mb.is_some_and(|x| x != i) {
                continue;
            }
            m.hierarchy_epoch += 1;
            for f in &mut m.folders {
                f.epoch += 1;
            }
        }
    }

    /// Serials of `folder`'s descendants (depth first, not including `folder`).
    pub fn descendants(&self, mb: usize, folder: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack = vec![folder];
        let folders = &self.mailboxes[mb].folders;
        while let Some(f) = stack.pop() {
            let kids: Vec<u32> = folders
                .iter()
                .filter(|c| c.parent == Some(f))
                .map(|c| c.serial)
                .collect();
            for k in kids.iter().rev() {
                stack.push(*k);
            }
            if f != folder {
                out.push(f);
            }
        }
        out
    }

    pub fn children(&self, mb: usize, folder: u32) -> Vec<u32> {
        self.mailboxes[mb]
            .folders
            .iter()
            .filter(|c| c.parent == Some(folder))
            .map(|c| c.serial)
            .collect()
    }

    /// Loads `<user>/<folder>[/<sub>…]/<file>`: every regular file at depth ≥ 3 is one
    /// message; user → `<user>@<domain>`. A top-level folder whose name is a well-known
    /// folder's display name (in any locale the generator knows) is that folder, and gives
    /// the mailbox its locale; other top-level folders are user folders under the top of
    /// the information store. Files are loaded in numeric-then-lexical name order.
    pub fn load_maildir(&mut self, dir: &Path) -> std::io::Result<usize> {
        let mut users: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        users.sort();
        let mut loaded = 0;
        for user in users {
            let name = user
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut tops: Vec<_> = std::fs::read_dir(&user)?
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            tops.sort();
            let top_names: Vec<String> = tops
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            let locale = detect_locale(&top_names);
            let addr = format!("{name}@{}", self.domain);
            let mb = self.add_mailbox(&addr, &name, locale);
            for (top, top_name) in tops.iter().zip(&top_names) {
                let (folder, dist) = match mailvault_mailgen::distinguished_for_name(top_name)
                    .and_then(|d| self.distinguished_folder(mb, d).map(|f| (f, d)))
                {
                    Some((f, d)) => (f, Some(d)),
                    None => {
                        let root = self.distinguished_folder(mb, "msgfolderroot").unwrap_or(0);
                        (
                            self.ensure_path(mb, root, std::slice::from_ref(top_name)),
                            None,
                        )
                    }
                };
                loaded += self.load_dir(mb, folder, dist, top)?;
            }
        }
        Ok(loaded)
    }

    fn load_dir(
        &mut self,
        mb: usize,
        folder: u32,
        dist: Option<&str>,
        dir: &Path,
    ) -> std::io::Result<usize> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let num: Option<u64> = n.trim_end_matches('.').parse().ok();
            (num.is_none(), num, n)
        });
        let mut n = 0;
        let mut subdirs = Vec::new();
        for e in entries {
            let ft = e.file_type()?;
            if ft.is_dir() {
                subdirs.push(e);
            } else if ft.is_file() {
                let mime: Bytes = std::fs::read(e.path())?.into();
                let read = matches!(dist, Some("sentitems" | "drafts"));
                self.add_item(mb, folder, mime, class_for_folder(dist), read);
                n += 1;
            }
        }
        for d in subdirs {
            let name = d.file_name().to_string_lossy().into_owned();
            let sub = self.ensure_path(mb, folder, &[name]);
            n += self.load_dir(mb, sub, dist, &d.path())?;
        }
        Ok(n)
    }

    /// Loads a generated corpus (mailboxes with their locales, items with their classes and
    /// read flags).
    pub fn load_corpus(&mut self, corpus: &mailvault_mailgen::Corpus) -> usize {
        for m in &corpus.mailboxes {
            self.add_mailbox(&m.address, &m.display_name, &m.locale);
        }
        let mut n = 0;
        for item in &corpus.items {
            let Some(mb) = self.mailbox_index(&item.mailbox) else {
                continue;
            };
            let top = item
                .distinguished
                .as_deref()
                .and_then(|d| self.distinguished_folder(mb, d))
                .unwrap_or(0);
            let folder = self.ensure_path(mb, top, item.folder_path.get(1..).unwrap_or(&[]));
            self.add_item(
                mb,
                folder,
                item.mime.clone().into(),
                &item.item_class,
                item.is_read,
            );
            n += 1;
        }
        n
    }
}

fn detect_locale(top_names: &[String]) -> &'static str {
    let en = mailvault_mailgen::well_known_folders("en-US");
    for loc in mailvault_mailgen::LOCALES.iter().filter(|l| **l != "en-US") {
        let names = mailvault_mailgen::well_known_folders(loc);
        if top_names
            .iter()
            .any(|t| !en.iter().any(|(_, n)| n == t) && names.iter().any(|(_, n)| n == t))
        {
            return loc;
        }
    }
    "en-US"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_states_round_trip_and_reject_garbage() {
        let id = item_id(42, 7);
        assert_eq!(decode_id(&id), Some((IdKind::Item, 42, 7)));
        assert_eq!(decode_id("AAAA"), None);
        let mut tampered = base64::engine::general_purpose::STANDARD
            .decode(&id)
            .expect("id is base64");
        tampered[12] ^= 1;
        assert_eq!(decode_id(&B64.encode(tampered)), None);
        let s = SyncState {
            hierarchy: false,
            key: 9,
            folder: 3,
            epoch: 1,
            watermark: 12345,
        };
        assert_eq!(SyncState::decode(&s.encode()), Some(s));
        assert_eq!(SyncState::decode("bm9wZQ=="), None);
    }
}
