//! Identifiers and object names.

use std::fmt;

/// A 32-byte identifier: a keyed BLAKE3 hash (chunks, manifests) or random bytes (packs,
/// index objects). Keyed, so an id reveals nothing about the content to whoever lacks the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    pub fn random() -> Self {
        BlobId(rand::random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(BlobId(out))
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(BlobId(b.try_into().ok()?))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Object names in the store. Everything but `config` and `keys/` is named by random or keyed
/// ids, so names reveal nothing about mail.
pub mod names {
    use super::BlobId;

    pub const CONFIG: &str = "config";
    pub const KEYS: &str = "keys/";
    pub const PACKS: &str = "packs/";
    pub const INDEX: &str = "index/";
    pub const DICTS: &str = "dicts/";
    pub const AUDIT: &str = "audit/";

    pub fn pack(id: &BlobId) -> String {
        let h = id.to_hex();
        format!("packs/{}/{}", &h[..2], h)
    }

    /// The directories packs fan out into (`packs/00` … `packs/ff`), for stores with real
    /// directories to create up front rather than on a backup's critical path.
    pub fn pack_dirs() -> impl Iterator<Item = String> {
        (0..=255u8).map(|b| format!("packs/{b:02x}"))
    }

    pub fn index(id: &BlobId) -> String {
        format!("index/{}", id.to_hex())
    }

    pub fn key(id: &str) -> String {
        format!("keys/{id}")
    }

    pub fn dict(dict_id: u32) -> String {
        format!("dicts/{dict_id:08x}")
    }

    /// Audit batches sort by time: `audit/<16 hex unix ms>-<8 hex sequence>-<8 hex random>`;
    /// the per-process sequence keeps one writer's batches of the same millisecond in order.
    pub fn audit(unix_ms: i64, seq: u32, nonce: u32) -> String {
        format!("audit/{unix_ms:016x}-{seq:08x}-{nonce:08x}")
    }

    /// The pack id encoded in a pack object name.
    pub fn pack_id(name: &str) -> Option<BlobId> {
        BlobId::from_hex(name.rsplit('/').next()?)
    }
}
