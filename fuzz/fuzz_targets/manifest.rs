//! Item manifests: protobuf decoding of an authenticated manifest blob.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::crypto::{Keys, Kind};
use mailvault_format::{BlobId, ItemManifest};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[6u8; 32]);
    let id = BlobId([1u8; 32]);
    let mut buf = data.to_vec();
    keys.seal_blob(Kind::Manifest, &id, &mut buf);
    if let Ok(plain) = keys.open_blob("packs/00/00", Kind::Manifest, &id, &buf) {
        if let Ok(m) = ItemManifest::decode(plain.as_slice()) {
            for c in &m.chunks {
                let _ = BlobId::from_slice(c);
            }
        }
    }
    let _ = ItemManifest::decode(data);
});
