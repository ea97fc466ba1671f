//! Pack parsing: raw bytes, and well-sealed headers around fuzzed plaintext.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::crypto::{self, Keys, Kind};
use mailvault_format::pack;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&[3u8; 32]);
    let name = "packs/00/00";
    let _ = pack::parse(&keys, name, data);
    // A pack whose header authenticates but whose plaintext is arbitrary.
    let env = keys.seal_object(Kind::PackHeader, name, data);
    let mut p = crypto::header(Kind::Pack).to_vec();
    p.extend_from_slice(&[0u8; 64]);
    p.extend_from_slice(&env);
    p.extend_from_slice(&(env.len() as u32).to_le_bytes());
    let _ = pack::parse(&keys, name, &p);
});
