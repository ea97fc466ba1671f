//! Item manifests: protobuf decoding of authenticated manifest bytes taken out of a group.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::crypto::Keys;
use mailvault_format::{BlobId, ItemManifest};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[6u8; 32]);
    let pack = BlobId([1u8; 32]);
    let sealed = keys.seal_group(&pack, 6, data.to_vec());
    if let Ok(plain) = keys.open_group("packs/00/00", &pack, 6, &sealed) {
        if let Ok(m) = ItemManifest::decode(plain.as_slice()) {
            for c in &m.chunks {
                let _ = BlobId::from_slice(c);
            }
        }
    }
    let _ = ItemManifest::decode(data);
});
