//! Blob decoding: decryption, bounded decompression, id check.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::compress::Dictionaries;
use mailvault_format::crypto::{Keys, Kind};
use mailvault_format::BlobId;
use mailvault_proto::storage::v1::Compression;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[4u8; 32]);
    let id = BlobId([9u8; 32]);
    let _ = keys.open_blob("packs/00/00", Kind::Chunk, &id, data);
    // Arbitrary bytes as a "compressed" blob with arbitrary claimed raw length.
    let raw_len = data.first().map_or(0, |b| usize::from(*b) * 97);
    let d = Dictionaries::default();
    let _ = d.decompress("packs/00/00", Compression::Zstd, 0, data.to_vec(), raw_len);
    let _ = d.decompress("packs/00/00", Compression::ZstdDict, 1, data.to_vec(), raw_len);
});
