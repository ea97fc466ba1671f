//! Key objects: parsing needs no passphrase and must reject anything malformed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailvault_format::keys;

fuzz_target!(|data: &[u8]| {
    let _ = keys::parse("keys/00", data);
    // With a valid checksum appended, the structure behind it is reached too.
    let mut v = data.to_vec();
    let sum = *mailvault_format::crypto::checksum(&v).as_bytes();
    v.extend_from_slice(&sum);
    if let Ok(k) = keys::parse("keys/00", &v) {
        // Unwrapping with cheap parameters only: the fuzzer controls the costs.
        if k.header.m_cost_kib <= 64 && k.header.t_cost <= 2 && k.header.p_cost <= 2 {
            let _ = keys::unwrap("keys/00", &k, b"pass");
        }
    }
});
