//! The chunk index: where every blob of the repository lives. Built from `index/` objects at
//! open; each writer adds what it stored once that is durable.

use std::collections::{HashMap, HashSet};

use mailvault_proto::storage::v1::{
    BlobEntry, BlobKind, Compression, GroupEntry, IndexFile, PackIndex,
};
use prost::Message;

use crate::crypto::{Keys, Kind};
use crate::error::{FormatError, Result};
use crate::id::BlobId;

/// The group a blob lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupLoc {
    pub pack: BlobId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
    pub dict_id: u32,
}

/// The location of one blob: its group and its place in the group's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub group: GroupLoc,
    pub kind: BlobKind,
    pub offset: u32,
    pub raw_len: u32,
}

impl GroupLoc {
    pub fn from_entry(pack: BlobId, g: &GroupEntry) -> Self {
        GroupLoc {
            pack,
            offset: g.offset,
            stored_len: g.stored_len,
            raw_len: g.raw_len,
            compression: Compression::try_from(g.compression).unwrap_or(Compression::None),
            dict_id: g.dict_id,
        }
    }
}

impl Location {
    pub fn new(group: GroupLoc, b: &BlobEntry) -> Self {
        Location {
            group,
            kind: BlobKind::try_from(b.kind).unwrap_or(BlobKind::Unspecified),
            offset: b.offset,
            raw_len: b.raw_len,
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    blobs: HashMap<BlobId, Location>,
    loaded: HashSet<String>,
}

impl Index {
    pub fn get(&self, id: &BlobId) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn is_loaded(&self, object: &str) -> bool {
        self.loaded.contains(object)
    }

    pub fn mark_loaded(&mut self, object: String) {
        self.loaded.insert(object);
    }

    /// Adds every entry of a pack. A blob already known keeps its first location (two writers
    /// may store the same new chunk; prune removes the spare copy).
    pub fn add_pack(&mut self, p: &PackIndex) -> Result<()> {
        let pack = BlobId::from_slice(&p.pack_id)
            .ok_or_else(|| FormatError::corrupt("index", "pack id is not 32 bytes"))?;
        for g in &p.groups {
            let group = GroupLoc::from_entry(pack, g);
            for b in &g.blobs {
                let id = BlobId::from_slice(&b.id)
                    .ok_or_else(|| FormatError::corrupt("index", "blob id is not 32 bytes"))?;
                self.blobs
                    .entry(id)
                    .or_insert_with(|| Location::new(group, b));
            }
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, &Location)> {
        self.blobs.iter()
    }

    /// Every manifest blob id, sorted (stable listing order).
    pub fn manifests(&self) -> Vec<BlobId> {
        let mut v: Vec<BlobId> = self
            .blobs
            .iter()
            .filter(|(_, l)| l.kind == BlobKind::Manifest)
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }
}

pub fn encode(keys: &Keys, name: &str, packs: Vec<PackIndex>) -> Vec<u8> {
    keys.seal_object(Kind::Index, name, &IndexFile { packs }.encode_to_vec())
}

pub fn decode(keys: &Keys, name: &str, bytes: &[u8]) -> Result<IndexFile> {
    let plain = keys.open_object(Kind::Index, name, bytes)?;
    IndexFile::decode(plain.as_slice())
        .map_err(|e| FormatError::corrupt(name, format!("index: {e}")))
}
