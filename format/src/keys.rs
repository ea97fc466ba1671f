//! Key objects: the repository's master secret wrapped by a passphrase-derived key (argon2id).
//! Several may exist; adding, removing or rotating one never touches data objects.
//!
//! ```text
//! "MVLT" 01 02 | u32 LE n | KeyHeader (n bytes, plaintext) | nonce (12) | KeySecret ciphertext+tag
//!              | BLAKE3 of everything before (32)
//! ```
//! The trailing unkeyed checksum tells a damaged key object from a wrong passphrase.

use aes_gcm_siv::Nonce;
use aes_gcm_siv::aead::AeadInPlace;
use mailvault_proto::storage::v1::{KeyHeader, KeySecret};
use prost::Message;
use zeroize::Zeroizing;

use crate::crypto::{self, HEADER_LEN, Kind, NONCE_LEN, TAG_LEN};
use crate::error::{FormatError, Result};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes: about half a second here; unlocking happens once per process.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests and throwaway demo repositories only.
    pub fn fast_insecure() -> Self {
        KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// The most a key header may ask of the machine that unlocks it. A key object comes from
/// storage, which someone else may be able to write: without bounds it could make every
/// process that opens the repository allocate gigabytes or hash for hours.
pub const MAX_KDF: KdfParams = KdfParams {
    m_cost_kib: 4 * 1024 * 1024,
    t_cost: 64,
    p_cost: 16,
};

fn derive(passphrase: &[u8], h: &KeyHeader) -> Result<Zeroizing<[u8; 32]>> {
    if h.m_cost_kib > MAX_KDF.m_cost_kib || h.t_cost > MAX_KDF.t_cost || h.p_cost > MAX_KDF.p_cost {
        return Err(FormatError::Invalid(format!(
            "argon2 parameters m={} KiB, t={}, p={} exceed what mailvault accepts \
             (m <= {} KiB, t <= {}, p <= {}): a damaged or planted key object",
            h.m_cost_kib, h.t_cost, h.p_cost, MAX_KDF.m_cost_kib, MAX_KDF.t_cost, MAX_KDF.p_cost
        )));
    }
    let params = argon2::Params::new(h.m_cost_kib, h.t_cost, h.p_cost, Some(32))
        .map_err(|e| FormatError::Invalid(format!("argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, &h.salt, &mut *out)
        .map_err(|e| FormatError::Invalid(format!("argon2: {e}")))?;
    Ok(out)
}

fn aad(name: &str, header: &[u8]) -> Vec<u8> {
    let mut a = crypto::header(Kind::Key).to_vec();
    a.extend_from_slice(name.as_bytes());
    a.extend_from_slice(header);
    a
}

/// Builds a key object for `name` wrapping `master_secret`.
pub fn wrap(
    name: &str,
    master_secret: &[u8; 32],
    passphrase: &[u8],
    params: KdfParams,
    label: &str,
    repo_id: &[u8],
    now_unix_ms: i64,
) -> Result<Vec<u8>> {
    let header = KeyHeader {
        kdf: "argon2id".into(),
        m_cost_kib: params.m_cost_kib,
        t_cost: params.t_cost,
        p_cost: params.p_cost,
        salt: rand::random::<[u8; 16]>().to_vec().into(),
        label: label.into(),
        created_unix_ms: now_unix_ms,
        repo_id: repo_id.to_vec().into(),
    };
    let hbytes = header.encode_to_vec();
    let wrap_key = derive(passphrase, &header)?;
    let cipher = crypto::cipher_from(&wrap_key);
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut secret = Zeroizing::new(
        KeySecret {
            master_secret: master_secret.to_vec().into(),
        }
        .encode_to_vec(),
    );
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad(name, &hbytes), &mut secret)
        .map_err(|_| FormatError::Invalid("key wrapping failed".into()))?;
    let mut out = crypto::header(Kind::Key).to_vec();
    out.extend_from_slice(&(hbytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&hbytes);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&secret);
    out.extend_from_slice(&tag);
    let sum = crypto::checksum(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// A key object split into its parts, checksum verified (no passphrase needed).
#[derive(Debug)]
pub struct ParsedKey<'a> {
    pub header: KeyHeader,
    header_bytes: &'a [u8],
    nonce: &'a [u8],
    sealed: &'a [u8],
}

pub fn parse<'a>(name: &str, bytes: &'a [u8]) -> Result<ParsedKey<'a>> {
    crypto::check_header(name, bytes, Kind::Key)?;
    if bytes.len() < HEADER_LEN + 4 + NONCE_LEN + TAG_LEN + 32 {
        return Err(FormatError::corrupt(name, "key object truncated"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if crypto::checksum(body).as_bytes() != sum {
        return Err(FormatError::corrupt(name, "key object checksum mismatch"));
    }
    let n = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    let hstart = HEADER_LEN + 4;
    let hend = hstart
        .checked_add(n)
        .filter(|e| *e + NONCE_LEN + TAG_LEN <= body.len())
        .ok_or_else(|| FormatError::corrupt(name, "key header length out of range"))?;
    let header_bytes = &body[hstart..hend];
    let header = KeyHeader::decode(header_bytes)
        .map_err(|e| FormatError::corrupt(name, format!("key header: {e}")))?;
    if header.kdf != "argon2id" {
        return Err(FormatError::corrupt(
            name,
            format!("unknown kdf {:?}", header.kdf),
        ));
    }
    Ok(ParsedKey {
        header,
        header_bytes,
        nonce: &body[hend..hend + NONCE_LEN],
        sealed: &body[hend + NONCE_LEN..],
    })
}

/// Unwraps the master secret; `Ok(None)` means the passphrase does not fit this key.
pub fn unwrap(
    name: &str,
    key: &ParsedKey<'_>,
    passphrase: &[u8],
) -> Result<Option<Zeroizing<[u8; 32]>>> {
    let wrap_key = derive(passphrase, &key.header)?;
    let cipher = crypto::cipher_from(&wrap_key);
    let (ct, tag) = key.sealed.split_at(key.sealed.len() - TAG_LEN);
    let mut buf = Zeroizing::new(ct.to_vec());
    if cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(key.nonce),
            &aad(name, key.header_bytes),
            &mut buf,
            tag.into(),
        )
        .is_err()
    {
        return Ok(None);
    }
    let secret = KeySecret::decode(buf.as_slice())
        .map_err(|e| FormatError::corrupt(name, format!("key secret: {e}")))?;
    let arr: [u8; 32] = secret
        .master_secret
        .as_ref()
        .try_into()
        .map_err(|_| FormatError::corrupt(name, "master secret is not 32 bytes"))?;
    Ok(Some(Zeroizing::new(arr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed key object (checksum right) whose header asks for `params`.
    fn planted(params: KdfParams) -> Vec<u8> {
        let header = KeyHeader {
            kdf: "argon2id".into(),
            m_cost_kib: params.m_cost_kib,
            t_cost: params.t_cost,
            p_cost: params.p_cost,
            salt: vec![0u8; 16].into(),
            ..Default::default()
        };
        let hbytes = header.encode_to_vec();
        let mut out = crypto::header(Kind::Key).to_vec();
        out.extend_from_slice(&(hbytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&hbytes);
        out.extend_from_slice(&[0u8; NONCE_LEN + 40 + TAG_LEN]);
        let sum = crypto::checksum(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    #[test]
    fn key_headers_asking_too_much_are_refused_before_hashing() {
        for params in [
            KdfParams {
                m_cost_kib: 64 * 1024 * 1024,
                ..KdfParams::default()
            },
            KdfParams {
                t_cost: 1_000_000,
                ..KdfParams::default()
            },
            KdfParams {
                p_cost: 1000,
                ..KdfParams::default()
            },
        ] {
            let bytes = planted(params);
            let key = parse("keys/planted", &bytes).expect("well-formed");
            let start = std::time::Instant::now();
            let e = unwrap("keys/planted", &key, b"pass").expect_err("refused");
            assert!(
                e.to_string().contains("exceed what mailvault accepts"),
                "{e}"
            );
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
        }
        // Within the bounds it derives (and the passphrase simply does not fit).
        let bytes = planted(KdfParams::fast_insecure());
        let key = parse("keys/ok", &bytes).expect("well-formed");
        assert!(unwrap("keys/ok", &key, b"pass").expect("derives").is_none());
    }
}
