//! zstd per blob, optionally with a dictionary trained on mail; raw when it does not shrink.

use std::collections::HashMap;
use std::sync::Arc;

use mailvault_proto::storage::v1::Compression;
use zstd::dict::DecoderDictionary;
use zstd::stream::raw::CParameter;

use crate::error::{FormatError, Result};

/// A dictionary stored in the repository (`dicts/<id>`).
#[derive(Debug, Clone)]
pub struct Dictionary {
    pub id: u32,
    pub created_unix_ms: i64,
    pub bytes: Arc<Vec<u8>>,
}

/// Compresses blobs for one writer (a zstd context is not shareable across threads).
pub struct Compressor {
    level: i32,
    plain: zstd::bulk::Compressor<'static>,
    dict: Option<(u32, zstd::bulk::Compressor<'static>)>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level)
            .field("dict", &self.dict.as_ref().map(|d| d.0))
            .finish()
    }
}

fn trim(c: &mut zstd::bulk::Compressor<'static>) -> std::io::Result<()> {
    // Raw length and integrity are in the pack entry and the AEAD tag already; the frame need
    // not repeat them (saves up to 12 bytes per blob, and mail has many small blobs).
    c.set_parameter(CParameter::ContentSizeFlag(false))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    c.set_parameter(CParameter::DictIdFlag(false))?;
    Ok(())
}

impl Compressor {
    pub fn new(level: i32, dict: Option<&Dictionary>) -> Result<Self> {
        let err = |e: std::io::Error| FormatError::Invalid(format!("zstd setup: {e}"));
        let mut plain = zstd::bulk::Compressor::new(level).map_err(err)?;
        trim(&mut plain).map_err(err)?;
        let dict = match dict {
            Some(d) => {
                let mut c =
                    zstd::bulk::Compressor::with_dictionary(level, &d.bytes).map_err(err)?;
                trim(&mut c).map_err(err)?;
                Some((d.id, c))
            }
            None => None,
        };
        Ok(Compressor { level, plain, dict })
    }

    /// Returns the compression used, the dictionary id (0 for none) and the bytes to store.
    pub fn compress(&mut self, raw: &[u8]) -> (Compression, u32, Vec<u8>) {
        let attempt = match &mut self.dict {
            Some((id, c)) => c.compress(raw).map(|b| (Compression::ZstdDict, *id, b)),
            None => self.plain.compress(raw).map(|b| (Compression::Zstd, 0, b)),
        };
        match attempt {
            Ok(r) if r.2.len() < raw.len() => r,
            _ => (Compression::None, 0, raw.to_vec()),
        }
    }
}

/// The dictionaries a repository holds, prepared for decompression.
#[derive(Default)]
pub struct Dictionaries {
    all: HashMap<u32, (Dictionary, Arc<DecoderDictionary<'static>>)>,
}

impl std::fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.all.keys()).finish()
    }
}

impl Dictionaries {
    pub fn insert(&mut self, d: Dictionary) {
        let prepared = Arc::new(DecoderDictionary::copy(&d.bytes));
        self.all.insert(d.id, (d, prepared));
    }

    pub fn contains(&self, id: u32) -> bool {
        self.all.contains_key(&id)
    }

    /// The most recently trained dictionary: what new writers use.
    pub fn newest(&self) -> Option<Dictionary> {
        self.all
            .values()
            .map(|(d, _)| d)
            .max_by_key(|d| (d.created_unix_ms, d.id))
            .cloned()
    }

    /// Decompresses a blob into at most `raw_len` bytes (a hostile blob cannot inflate further).
    pub fn decompress(
        &self,
        object: &str,
        compression: Compression,
        dict_id: u32,
        data: Vec<u8>,
        raw_len: usize,
    ) -> Result<Vec<u8>> {
        let bad = |e: std::io::Error| FormatError::corrupt(object, format!("zstd: {e}"));
        let out = match compression {
            Compression::None => data,
            Compression::Zstd => zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress(&data, raw_len))
                .map_err(bad)?,
            Compression::ZstdDict => {
                let (_, prepared) = self.all.get(&dict_id).ok_or_else(|| {
                    FormatError::corrupt(
                        object,
                        format!("needs dictionary {dict_id:08x}, which is missing"),
                    )
                })?;
                zstd::bulk::Decompressor::with_prepared_dictionary(prepared)
                    .and_then(|mut d| d.decompress(&data, raw_len))
                    .map_err(bad)?
            }
        };
        if out.len() != raw_len {
            return Err(FormatError::corrupt(
                object,
                format!(
                    "decompressed to {} bytes, the entry says {raw_len}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }
}

/// Trains a zstd dictionary from sample blobs.
pub fn train(samples: &[Vec<u8>], max_size: usize) -> Result<Vec<u8>> {
    zstd::dict::from_samples(samples, max_size)
        .map_err(|e| FormatError::Invalid(format!("training a dictionary failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_dictionary() {
        let samples: Vec<Vec<u8>> = (0..400)
            .map(|i| format!("Received: from mx{i}.example.org\r\nSubject: status report {i}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello team, the numbers for week {i} are in.\r\n").into_bytes())
            .collect();
        let dict = Dictionary {
            id: 7,
            created_unix_ms: 1,
            bytes: Arc::new(train(&samples, 4096).expect("train")),
        };
        let mut dicts = Dictionaries::default();
        dicts.insert(dict.clone());
        let msg = b"Received: from mx9.example.org\r\nSubject: status report 1000\r\n\r\nHello team, the numbers for week 1000 are in.\r\n".to_vec();
        let mut with = Compressor::new(3, Some(&dict)).expect("c");
        let mut without = Compressor::new(3, None).expect("c");
        let (c1, id1, b1) = with.compress(&msg);
        let (c2, _, b2) = without.compress(&msg);
        assert_eq!(c1, Compression::ZstdDict);
        assert!(
            b1.len() < b2.len(),
            "dictionary should win on mail: {} vs {}",
            b1.len(),
            b2.len()
        );
        assert_eq!(
            dicts.decompress("t", c1, id1, b1, msg.len()).expect("d"),
            msg
        );
        assert_eq!(dicts.decompress("t", c2, 0, b2, msg.len()).expect("d"), msg);
    }

    #[test]
    fn incompressible_is_stored_raw_and_lies_about_length_are_caught() {
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut c = Compressor::new(3, None).expect("c");
        let (kind, _, out) = c.compress(&noise);
        assert_eq!(kind, Compression::None);
        assert_eq!(out, noise);
        let (k, _, z) = c.compress(&[b'a'; 10_000]);
        let d = Dictionaries::default();
        assert!(
            d.decompress("t", k, 0, z.clone(), 100).is_err(),
            "bomb bounded"
        );
        assert!(
            d.decompress("t", k, 0, z, 20_000).is_err(),
            "short output caught"
        );
    }
}
