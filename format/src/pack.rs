//! Packs: many encrypted blobs in one object, located by an encrypted header at its end.
//!
//! ```text
//! "MVLT" 01 03 | group 0 | group 1 | … | header envelope | u32 LE length of the header envelope
//! ```

use std::time::{Duration, Instant};

use mailvault_proto::storage::v1::{GroupEntry, PackHeader, PackIndex};
use prost::Message;

use crate::crypto::{self, HEADER_LEN, Keys, Kind};
use crate::error::{FormatError, Result};
use crate::id::{BlobId, names};

/// When a pack is closed and uploaded: whichever limit is reached first, and always on flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealPolicy {
    pub max_bytes: u64,
    pub max_blobs: usize,
    pub max_age: Duration,
}

impl Default for SealPolicy {
    fn default() -> Self {
        SealPolicy {
            max_bytes: 16 * 1024 * 1024,
            max_blobs: 20_000,
            max_age: Duration::from_secs(30),
        }
    }
}

impl SealPolicy {
    pub fn should_seal(&self, packer: &Packer, now: Instant) -> bool {
        !packer.is_empty()
            && (packer.len_bytes() >= self.max_bytes
                || packer.blob_count() >= self.max_blobs
                || now.duration_since(packer.opened) >= self.max_age)
    }
}

/// A pack being filled.
#[derive(Debug)]
pub struct Packer {
    id: BlobId,
    buf: Vec<u8>,
    groups: Vec<GroupEntry>,
    blobs: usize,
    opened: Instant,
}

/// A closed pack, ready to upload.
#[derive(Debug)]
pub struct SealedPack {
    pub id: BlobId,
    pub name: String,
    pub bytes: bytes::Bytes,
    pub index: PackIndex,
}

impl Packer {
    pub fn new() -> Self {
        Packer::with_capacity(0)
    }

    /// A pack whose buffer has room for `bytes` from the start: filling a 16 MiB pack by
    /// doubling would copy it about once more in total.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        buf.extend_from_slice(&crypto::header(Kind::Pack));
        Packer {
            id: BlobId::random(),
            buf,
            groups: Vec::new(),
            blobs: 0,
            opened: Instant::now(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn len_bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    pub fn opened(&self) -> Instant {
        self.opened
    }

    pub fn blob_count(&self) -> usize {
        self.blobs
    }

    /// Seals a group's (compressed) plaintext and appends it; `entry.offset` and `stored_len`
    /// are filled in here.
    pub fn add_group(&mut self, keys: &Keys, mut entry: GroupEntry, mut data: Vec<u8>) {
        entry.offset = self.buf.len() as u64;
        keys.seal_group_into(&self.id, entry.offset, &mut data, &mut self.buf);
        entry.stored_len = (self.buf.len() as u64 - entry.offset) as u32;
        self.blobs += entry.blobs.len();
        self.groups.push(entry);
    }

    pub fn seal(self, keys: &Keys) -> SealedPack {
        let name = names::pack(&self.id);
        let header = PackHeader {
            pack_id: self.id.0.to_vec().into(),
            groups: self.groups.clone(),
        };
        let env = keys.seal_object(Kind::PackHeader, &name, &header.encode_to_vec());
        let mut buf = self.buf;
        buf.extend_from_slice(&env);
        buf.extend_from_slice(&(env.len() as u32).to_le_bytes());
        SealedPack {
            id: self.id,
            index: PackIndex {
                pack_id: self.id.0.to_vec().into(),
                groups: self.groups,
                pack_size: buf.len() as u64,
            },
            name,
            bytes: buf.into(),
        }
    }
}

impl Default for Packer {
    fn default() -> Self {
        Packer::new()
    }
}

/// Where the header envelope of a pack of `size` bytes lies, from its last four bytes.
pub fn header_span(name: &str, size: u64, tail: &[u8]) -> Result<(u64, u64)> {
    let len = u32::from_le_bytes(
        tail.try_into()
            .map_err(|_| FormatError::corrupt(name, "pack shorter than its trailer"))?,
    ) as u64;
    let start = size
        .checked_sub(4 + len)
        .filter(|s| *s >= HEADER_LEN as u64)
        .ok_or_else(|| {
            FormatError::corrupt(
                name,
                format!("header length {len} does not fit a pack of {size} bytes"),
            )
        })?;
    Ok((start, len))
}

/// Decrypts and checks a pack header envelope.
pub fn open_header(keys: &Keys, name: &str, size: u64, envelope: &[u8]) -> Result<PackHeader> {
    let plain = keys.open_object(Kind::PackHeader, name, envelope)?;
    let header = PackHeader::decode(plain.as_slice())
        .map_err(|e| FormatError::corrupt(name, format!("pack header: {e}")))?;
    let header_start = size - 4 - envelope.len() as u64;
    for g in &header.groups {
        let end = g.offset.checked_add(u64::from(g.stored_len));
        if g.offset < HEADER_LEN as u64 || end.is_none_or(|end| end > header_start) {
            return Err(FormatError::corrupt(
                name,
                "pack header: a group lies outside the pack",
            ));
        }
        for b in &g.blobs {
            if b.id.len() != 32 || u64::from(b.offset) + u64::from(b.raw_len) > u64::from(g.raw_len)
            {
                return Err(FormatError::corrupt(
                    name,
                    "pack header: a blob lies outside its group",
                ));
            }
        }
    }
    Ok(header)
}

/// Parses a whole pack held in memory: its prefix, header and entries (used by verify and fuzzing).
pub fn parse(keys: &Keys, name: &str, bytes: &[u8]) -> Result<PackHeader> {
    crypto::check_header(name, bytes, Kind::Pack)?;
    let size = bytes.len() as u64;
    let tail = bytes
        .get(bytes.len().saturating_sub(4)..)
        .filter(|t| t.len() == 4)
        .ok_or_else(|| FormatError::corrupt(name, "truncated"))?;
    let (start, len) = header_span(name, size, tail)?;
    open_header(
        keys,
        name,
        size,
        &bytes[start as usize..(start + len) as usize],
    )
}
