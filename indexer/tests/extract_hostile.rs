//! Hostile mail for the indexer's extraction: generated messages of every kind the generator
//! makes (multipart, attachments, non-ASCII headers, journal reports, calendar items, malformed
//! and huge ones) cut, flipped and spliced at random, and arbitrary bytes. Extraction (journal
//! reports unwrapped) never panics and always yields a record, the parse error named when
//! there is one. `MAILVAULT_FUZZ_CASES` widens the run.

use std::sync::OnceLock;

use mailvault_indexer::extract::extract_item;
use proptest::prelude::*;

fn samples() -> &'static Vec<Vec<u8>> {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| {
        mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
            seed: 9,
            messages: 80,
            huge_item_bytes: None,
            ..Default::default()
        })
        .items
        .into_iter()
        .map(|i| i.mime)
        .filter(|m| m.len() < 200_000)
        .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(mailvault_harness::fuzz_cases(128)))]

    #[test]
    fn mangled_mail_is_extracted_without_panicking(
        which in any::<usize>(),
        edits in proptest::collection::vec((any::<usize>(), proptest::collection::vec(any::<u8>(), 0..24), 0u8..3), 1..6),
    ) {
        let s = samples();
        let mut mime = s[which % s.len()].clone();
        for (at, bytes, kind) in edits {
            if mime.is_empty() {
                mime = bytes;
                continue;
            }
            let at = at % mime.len();
            match kind {
                0 => mime.truncate(at),
                1 => {
                    mime.splice(at..at, bytes);
                }
                _ => {
                    let end = (at + bytes.len() * 11).min(mime.len());
                    mime.drain(at..end);
                }
            }
        }
        let _ = extract_item(&mime, true);
    }

    #[test]
    fn arbitrary_bytes_are_extracted_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = extract_item(&bytes, true);
    }
}
