//! Index objects: envelope parsing, and protobuf decoding of authenticated plaintext.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::crypto::{Keys, Kind};
use mailvault_format::index::{self, Index};

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[5u8; 32]);
    let name = "index/00";
    let _ = index::decode(&keys, name, data);
    let sealed = keys.seal_object(Kind::Index, name, data);
    if let Ok(file) = index::decode(&keys, name, &sealed) {
        let mut idx = Index::default();
        for p in &file.packs {
            let _ = idx.add_pack(p);
        }
        let _ = idx.manifests();
    }
});
