//! An item's history: its versions (content, from `ItemStored`) and changes (read flag, move,
//! delete, from `ItemChangeRecorded`), and the validity *segments* derived from them.
//!
//! An item is `(mailbox, item id)`. Its events are ordered by their own time (a version's
//! `collected_unix_ms`, a change's `observed_unix_ms`; at equal times versions first, then
//! read flag, move, delete; then by id), whatever order they arrived in. Walking them yields
//! segments `[valid_from, valid_to)` in which the item's state (current version, folder, read
//! flag, deleted) is constant; the last one ends at `i64::MAX`. Each segment is one searchable
//! document, so "as of T" is a range filter, and every event just recomputes the item's
//! segments from the set of its events — applying an event twice changes nothing.

use mailvault_proto::events::v1::{ItemChangeRecorded, ItemStored};
use mailvault_proto::storage::v1::ItemManifest;

use crate::error::IndexError;
use crate::extract::Extracted;

/// What an `ItemStored` event and its `ItemManifest` carry about one item version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemStoredInput {
    /// Hex blob id of the manifest.
    pub manifest_id: String,
    pub mailbox: String,
    pub item_id: String,
    pub change_key: String,
    pub folder_id: String,
    pub folder_path: Vec<String>,
    /// EWS distinguished folder id of the folder, when it is a well-known one.
    pub distinguished_folder: String,
    pub item_class: String,
    pub size: u64,
    pub is_read: bool,
    pub collected_unix_ms: i64,
    pub stored_unix_ms: i64,
    /// `ContentFormat` of the manifest (1 MIME, 2 EWS export: not parsed).
    pub format: i32,
}

impl ItemStoredInput {
    pub fn new(event: &ItemStored, manifest: &ItemManifest) -> Self {
        let mut s = Self::from_manifest(&event.manifest_id, manifest);
        s.stored_unix_ms = event.stored_unix_ms;
        s
    }

    pub fn from_manifest(manifest_id: &str, m: &ItemManifest) -> Self {
        ItemStoredInput {
            manifest_id: manifest_id.to_ascii_lowercase(),
            mailbox: m.mailbox.clone(),
            item_id: m.item_id.clone(),
            change_key: m.change_key.clone(),
            folder_id: m.folder_id.clone(),
            folder_path: m.folder_path.clone(),
            distinguished_folder: m.distinguished_folder.clone(),
            item_class: m.item_class.clone(),
            size: m.size,
            is_read: m.is_read,
            collected_unix_ms: m.collected_unix_ms,
            stored_unix_ms: 0,
            format: m.format,
        }
    }

    /// The time this version became the item's state.
    pub fn time(&self) -> i64 {
        if self.collected_unix_ms != 0 {
            self.collected_unix_ms
        } else {
            self.stored_unix_ms
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    ReadFlag,
    Move,
    Delete,
}

impl ChangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read_flag" => Some(ChangeKind::ReadFlag),
            "move" => Some(ChangeKind::Move),
            "delete" => Some(ChangeKind::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::ReadFlag => "read_flag",
            ChangeKind::Move => "move",
            ChangeKind::Delete => "delete",
        }
    }

    fn rank(self) -> u8 {
        match self {
            ChangeKind::ReadFlag => 1,
            ChangeKind::Move => 2,
            ChangeKind::Delete => 3,
        }
    }
}

/// A change without content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeInput {
    /// Hex blob id of the history record (identifies the change; may be empty).
    pub record_id: String,
    pub mailbox: String,
    pub item_id: String,
    pub change_key: String,
    pub kind: ChangeKind,
    pub folder_id: String,
    pub folder_path: Vec<String>,
    pub is_read: bool,
    pub observed_unix_ms: i64,
}

impl ChangeInput {
    pub fn from_event(e: &ItemChangeRecorded) -> Result<Self, IndexError> {
        let kind = ChangeKind::parse(&e.kind).ok_or_else(|| IndexError::ChangeKind {
            item: format!("{}/{}", e.mailbox, e.item_id),
            kind: e.kind.clone(),
        })?;
        Ok(ChangeInput {
            record_id: e.record_id.to_ascii_lowercase(),
            mailbox: e.mailbox.clone(),
            item_id: e.item_id.clone(),
            change_key: e.change_key.clone(),
            kind,
            folder_id: e.folder_id.clone(),
            folder_path: e.folder_path.clone(),
            is_read: e.is_read,
            observed_unix_ms: e.observed_unix_ms,
        })
    }
}

/// One version as kept in the index (with its extracted content).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRecord {
    #[prost(string, tag = "1")]
    pub manifest_id: String,
    #[prost(string, tag = "2")]
    pub change_key: String,
    #[prost(string, tag = "3")]
    pub folder_id: String,
    #[prost(string, repeated, tag = "4")]
    pub folder_path: Vec<String>,
    #[prost(string, tag = "5")]
    pub distinguished: String,
    #[prost(string, tag = "6")]
    pub item_class: String,
    #[prost(uint64, tag = "7")]
    pub size: u64,
    #[prost(int64, tag = "8")]
    pub time: i64,
    #[prost(bool, tag = "9")]
    pub is_read: bool,
    #[prost(message, optional, tag = "10")]
    pub content: Option<Extracted>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChangeRecord {
    #[prost(string, tag = "1")]
    pub record_id: String,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, tag = "3")]
    pub change_key: String,
    #[prost(string, tag = "4")]
    pub folder_id: String,
    #[prost(string, repeated, tag = "5")]
    pub folder_path: Vec<String>,
    #[prost(bool, tag = "6")]
    pub is_read: bool,
    #[prost(int64, tag = "7")]
    pub time: i64,
}

impl ChangeRecord {
    fn key(&self) -> (String, String, i64) {
        (self.kind.clone(), self.change_key.clone(), self.time)
    }
}

/// Every event of one item.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemRecord {
    #[prost(string, tag = "1")]
    pub mailbox: String,
    #[prost(string, tag = "2")]
    pub item_id: String,
    #[prost(message, repeated, tag = "3")]
    pub versions: Vec<VersionRecord>,
    #[prost(message, repeated, tag = "4")]
    pub changes: Vec<ChangeRecord>,
}

/// The item's state over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    pub version: &'a VersionRecord,
    pub valid_from: i64,
    pub valid_to: i64,
    pub folder_path: &'a [String],
    pub distinguished: &'a str,
    pub is_read: bool,
    pub deleted_at: Option<i64>,
}

impl ItemRecord {
    pub fn has_version(&self, manifest_id: &str) -> bool {
        self.versions.iter().any(|v| v.manifest_id == manifest_id)
    }

    /// Adds a version; false if it was already there.
    pub fn add_version(&mut self, v: VersionRecord) -> bool {
        if self.has_version(&v.manifest_id) {
            return false;
        }
        self.versions.push(v);
        true
    }

    /// Adds a change; false if it was already there (same record, or same kind, change key
    /// and time — the identity the aggregator gives history records).
    pub fn add_change(&mut self, c: ChangeRecord) -> bool {
        let dup = self
            .changes
            .iter()
            .any(|o| (!c.record_id.is_empty() && o.record_id == c.record_id) || o.key() == c.key());
        if dup {
            return false;
        }
        self.changes.push(c);
        true
    }

    /// The item's segments in time order. Changes before the first version are ignored
    /// (the version carries the state it was collected in).
    pub fn segments(&self) -> Vec<Segment<'_>> {
        enum Ev<'a> {
            V(&'a VersionRecord),
            C(&'a ChangeRecord, ChangeKind),
        }
        let mut evs: Vec<(i64, u8, &str, Ev<'_>)> = Vec::new();
        for v in &self.versions {
            evs.push((v.time, 0, &v.manifest_id, Ev::V(v)));
        }
        for c in &self.changes {
            if let Some(k) = ChangeKind::parse(&c.kind) {
                let id = if c.record_id.is_empty() {
                    &c.change_key
                } else {
                    &c.record_id
                };
                evs.push((c.time, k.rank(), id, Ev::C(c, k)));
            }
        }
        evs.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut out: Vec<Segment<'_>> = Vec::new();
        let mut cur: Option<Segment<'_>> = None;
        for (t, _, _, ev) in evs {
            let next = match (&cur, ev) {
                (_, Ev::V(v)) => Segment {
                    version: v,
                    valid_from: t,
                    valid_to: i64::MAX,
                    folder_path: &v.folder_path,
                    distinguished: &v.distinguished,
                    is_read: v.is_read,
                    deleted_at: None,
                },
                (None, Ev::C(..)) => continue,
                (Some(s), Ev::C(c, k)) => {
                    let mut n = s.clone();
                    n.valid_from = t;
                    match k {
                        ChangeKind::ReadFlag => n.is_read = c.is_read,
                        ChangeKind::Move => {
                            if n.folder_path != c.folder_path.as_slice() {
                                n.folder_path = &c.folder_path;
                                n.distinguished = if c.folder_path == s.version.folder_path {
                                    &s.version.distinguished
                                } else {
                                    ""
                                };
                            }
                            // A move after a delete means the item was moved, not lost.
                            n.deleted_at = None;
                        }
                        ChangeKind::Delete => {
                            if n.deleted_at.is_none() {
                                n.deleted_at = Some(t);
                            }
                        }
                    }
                    n
                }
            };
            if let Some(mut s) = cur.take() {
                if same_state(&s, &next) {
                    cur = Some(s);
                    continue;
                }
                if next.valid_from > s.valid_from {
                    s.valid_to = next.valid_from;
                    out.push(s);
                }
            }
            cur = Some(next);
        }
        out.extend(cur);
        out
    }
}

fn same_state(a: &Segment<'_>, b: &Segment<'_>) -> bool {
    a.version.manifest_id == b.version.manifest_id
        && a.folder_path == b.folder_path
        && a.is_read == b.is_read
        && a.deleted_at == b.deleted_at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, t: i64, folder: &str) -> VersionRecord {
        VersionRecord {
            manifest_id: id.into(),
            folder_path: vec![folder.into()],
            time: t,
            ..Default::default()
        }
    }

    fn c(kind: &str, t: i64, folder: &str, read: bool) -> ChangeRecord {
        ChangeRecord {
            record_id: format!("{kind}{t}"),
            kind: kind.into(),
            change_key: "ck".into(),
            folder_path: vec![folder.into()],
            is_read: read,
            time: t,
            ..Default::default()
        }
    }

    fn shape(r: &ItemRecord) -> Vec<(String, i64, i64, String, bool, Option<i64>)> {
        r.segments()
            .iter()
            .map(|s| {
                (
                    s.version.manifest_id.clone(),
                    s.valid_from,
                    s.valid_to,
                    s.folder_path.join("/"),
                    s.is_read,
                    s.deleted_at,
                )
            })
            .collect()
    }

    #[test]
    fn versions_and_changes_make_segments_in_any_arrival_order() {
        let events_v = [v("a", 10, "Inbox"), v("b", 50, "Inbox")];
        let events_c = [
            c("read_flag", 20, "Inbox", true),
            c("move", 30, "Archive", true),
            c("delete", 70, "Archive", true),
        ];
        let mut fwd = ItemRecord::default();
        for e in &events_v {
            assert!(fwd.add_version(e.clone()));
        }
        for e in &events_c {
            assert!(fwd.add_change(e.clone()));
        }
        let mut rev = ItemRecord::default();
        for e in events_c.iter().rev() {
            rev.add_change(e.clone());
        }
        for e in events_v.iter().rev() {
            rev.add_version(e.clone());
        }
        // Applying again is a no-op.
        assert!(!rev.add_change(events_c[0].clone()));
        assert!(!rev.add_version(events_v[0].clone()));
        let expected = vec![
            ("a".into(), 10, 20, "Inbox".into(), false, None),
            ("a".into(), 20, 30, "Inbox".into(), true, None),
            ("a".into(), 30, 50, "Archive".into(), true, None),
            ("b".into(), 50, 70, "Inbox".into(), false, None),
            ("b".into(), 70, i64::MAX, "Inbox".into(), false, Some(70)),
        ];
        assert_eq!(shape(&fwd), expected);
        assert_eq!(shape(&rev), expected);
    }

    #[test]
    fn move_after_delete_restores_the_item() {
        let mut r = ItemRecord::default();
        r.add_version(v("a", 10, "Inbox"));
        r.add_change(c("delete", 20, "Inbox", false));
        r.add_change(c("move", 25, "Projects", false));
        let s = shape(&r);
        assert_eq!(
            s.last().map(|x| (x.3.clone(), x.5)),
            Some(("Projects".into(), None))
        );
    }
}
