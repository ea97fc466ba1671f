//! Encryption and keyed hashing: every stored byte is AES-256-GCM-SIV sealed, with associated
//! data binding the object kind, its id and the format version (docs/format.md, "Envelope").

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use zeroize::Zeroizing;

use crate::error::{FormatError, Result};
use crate::id::BlobId;

/// First bytes of every stored object.
pub const MAGIC: &[u8; 4] = b"MVLT";
/// Format version written by this library.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 6;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The kind byte after magic and version; also bound into the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Config = 1,
    Key = 2,
    Pack = 3,
    PackHeader = 4,
    Index = 5,
    Dict = 6,
    /// A group of blobs inside a pack.
    /// A batch of audit-log records (`audit/…`).
    Audit = 7,
    Group = 16,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Config,
            2 => Kind::Key,
            3 => Kind::Pack,
            4 => Kind::PackHeader,
            5 => Kind::Index,
            6 => Kind::Dict,
            7 => Kind::Audit,
            16 => Kind::Group,
            _ => return None,
        })
    }
}

pub fn header(kind: Kind) -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind as u8]
}

/// Checks magic, version and kind at the start of `bytes`.
pub fn check_header(object: &str, bytes: &[u8], kind: Kind) -> Result<()> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(FormatError::corrupt(
            object,
            "bad magic: not a mailvault object",
        ));
    }
    if bytes[4] != VERSION {
        return Err(FormatError::corrupt(
            object,
            format!("format version {} (this build reads {VERSION})", bytes[4]),
        ));
    }
    if bytes[5] != kind as u8 {
        return Err(FormatError::corrupt(
            object,
            format!(
                "kind byte {} where {:?} ({}) was expected",
                bytes[5], kind, kind as u8
            ),
        ));
    }
    Ok(())
}

fn aad(kind: Kind, id: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + id.len());
    a.extend_from_slice(&header(kind));
    a.extend_from_slice(id);
    a
}

fn group_aad(pack: &BlobId, offset: u64) -> Vec<u8> {
    let mut a = aad(Kind::Group, &pack.0);
    a.extend_from_slice(&offset.to_le_bytes());
    a
}

/// The data keys of a repository, all derived from its 32-byte master secret.
pub struct Keys {
    cipher: Aes256GcmSiv,
    id_key: Zeroizing<[u8; 32]>,
    manifest_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(redacted)")
    }
}

impl Keys {
    pub fn derive(master_secret: &[u8; 32]) -> Keys {
        let enc = Zeroizing::new(blake3::derive_key(
            "mailvault 2026 v1 data encryption key",
            master_secret,
        ));
        Keys {
            cipher: Aes256GcmSiv::new((&*enc).into()),
            id_key: Zeroizing::new(blake3::derive_key(
                "mailvault 2026 v1 chunk id key",
                master_secret,
            )),
            manifest_key: Zeroizing::new(blake3::derive_key(
                "mailvault 2026 v1 manifest id key",
                master_secret,
            )),
        }
    }

    /// The id of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The id of an item version's manifest, from its identity (not its content), so that a
    /// redelivered item maps to the manifest already stored.
    pub fn manifest_id(&self, mailbox: &str, item_id: &str, change_key: &str) -> BlobId {
        let mut h = blake3::Hasher::new_keyed(&self.manifest_key);
        for part in [mailbox, item_id, change_key] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        BlobId(*h.finalize().as_bytes())
    }

    /// A keyed hash over arbitrary bytes under the chunk id key (content ids of items).
    pub fn content_id<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> BlobId {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(b"content-id\0");
        for p in parts {
            h.update(p);
        }
        BlobId(*h.finalize().as_bytes())
    }

    /// Seals a group of blobs placed at `offset` in pack `pack`: `nonce ‖ ciphertext ‖ tag`.
    /// The pack id and offset are bound in, so groups cannot be swapped or moved unnoticed.
    pub fn seal_group(&self, pack: &BlobId, offset: u64, mut buf: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len() + TAG_LEN);
        self.seal_group_into(pack, offset, &mut buf, &mut out);
        out
    }

    /// [`Keys::seal_group`] appending to `out` (the open pack), encrypting `plain` in place:
    /// the group is copied once, not into a buffer of its own first.
    pub fn seal_group_into(&self, pack: &BlobId, offset: u64, plain: &mut [u8], out: &mut Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &group_aad(pack, offset), plain)
            .expect("AES-GCM-SIV encryption fails only for messages over 64 GiB");
        out.reserve(NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        out.extend_from_slice(&tag);
    }

    /// Opens a group sealed by [`Keys::seal_group`]; `object` names the pack in errors.
    pub fn open_group(
        &self,
        object: &str,
        pack: &BlobId,
        offset: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(FormatError::corrupt(
                object,
                format!("group at {offset} shorter than nonce and tag"),
            ));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &group_aad(pack, offset),
                &mut buf,
                tag.into(),
            )
            .map_err(|_| {
                FormatError::corrupt(
                    object,
                    format!("group at offset {offset} fails authentication"),
                )
            })?;
        Ok(buf)
    }

    /// Seals a whole object: header, random nonce, ciphertext, tag. `name` is bound in.
    pub fn seal_object(&self, kind: Kind, name: &str, plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.cipher, kind, name, plaintext)
    }

    pub fn open_object(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
        open_with(&self.cipher, kind, name, bytes)
    }
}

pub(crate) fn seal_with(
    cipher: &Aes256GcmSiv,
    kind: Kind,
    name: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&header(kind));
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(start);
    let tag = cipher
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad(kind, name.as_bytes()),
            &mut body,
        )
        .expect("AES-GCM-SIV encryption fails only for messages over 64 GiB");
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

pub(crate) fn open_with(
    cipher: &Aes256GcmSiv,
    kind: Kind,
    name: &str,
    bytes: &[u8],
) -> Result<Vec<u8>> {
    check_header(name, bytes, kind)?;
    if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(FormatError::corrupt(name, "truncated"));
    }
    let nonce = &bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN];
    let (ct, tag) =
        bytes[HEADER_LEN + NONCE_LEN..].split_at(bytes.len() - HEADER_LEN - NONCE_LEN - TAG_LEN);
    let mut buf = ct.to_vec();
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &aad(kind, name.as_bytes()),
            &mut buf,
            tag.into(),
        )
        .map_err(|_| {
            FormatError::corrupt(name, "fails authentication (damaged, tampered or not ours)")
        })?;
    Ok(buf)
}

pub(crate) fn cipher_from(key: &[u8; 32]) -> Aes256GcmSiv {
    Aes256GcmSiv::new(key.into())
}

/// The unkeyed checksum that ends key objects.
pub fn checksum(bytes: &[u8]) -> blake3::Hash {
    blake3::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_round_trip_and_binding() {
        let k = Keys::derive(&[7u8; 32]);
        let sealed = k.seal_object(Kind::Index, "index/ab", b"hello");
        assert_eq!(
            k.open_object(Kind::Index, "index/ab", &sealed)
                .expect("open"),
            b"hello"
        );
        // The name and kind are bound: moving or relabelling the object is detected.
        assert!(k.open_object(Kind::Index, "index/cd", &sealed).is_err());
        assert!(k.open_object(Kind::Config, "index/ab", &sealed).is_err());
        let other = Keys::derive(&[8u8; 32]);
        assert!(other.open_object(Kind::Index, "index/ab", &sealed).is_err());
    }

    #[test]
    fn group_round_trip_and_binding() {
        let k = Keys::derive(&[1u8; 32]);
        let pack = BlobId([5u8; 32]);
        let sealed = k.seal_group(&pack, 6, b"data".to_vec());
        assert_eq!(sealed.len(), NONCE_LEN + 4 + TAG_LEN);
        assert_eq!(k.open_group("p", &pack, 6, &sealed).expect("open"), b"data");
        assert!(
            k.open_group("p", &pack, 7, &sealed).is_err(),
            "offset bound"
        );
        assert!(
            k.open_group("p", &BlobId([6u8; 32]), 6, &sealed).is_err(),
            "pack bound"
        );
    }

    #[test]
    fn ids_are_keyed() {
        let a = Keys::derive(&[1u8; 32]);
        let b = Keys::derive(&[2u8; 32]);
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.manifest_id("m", "i", "c"), a.manifest_id("m", "ic", ""));
    }
}
