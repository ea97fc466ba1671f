//! Group decoding: decryption, bounded decompression, blob extraction.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::compress::Dictionaries;
use mailvault_format::crypto::Keys;
use mailvault_format::BlobId;
use mailvault_proto::storage::v1::Compression;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[4u8; 32]);
    let pack = BlobId([9u8; 32]);
    let _ = keys.open_group("packs/00/00", &pack, 6, data);
    // Arbitrary bytes as a "compressed" group with an arbitrary claimed raw length.
    let raw_len = data.first().map_or(0, |b| usize::from(*b) * 97);
    let d = Dictionaries::default();
    let _ = d.decompress("packs/00/00", Compression::Zstd, 0, data.to_vec(), raw_len);
    let _ = d.decompress("packs/00/00", Compression::ZstdDict, 1, data.to_vec(), raw_len);
});
