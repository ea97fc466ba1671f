//! The config object: envelope and protobuf decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::crypto::{Keys, Kind};
use mailvault_proto::storage::v1::RepoConfig;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[7u8; 32]);
    let _ = keys.open_object(Kind::Config, "config", data);
    let sealed = keys.seal_object(Kind::Config, "config", data);
    if let Ok(plain) = keys.open_object(Kind::Config, "config", &sealed) {
        if let Ok(c) = RepoConfig::decode(plain.as_slice()) {
            let _ = mailvault_format::repo::validate_config(&c);
        }
    }
});
