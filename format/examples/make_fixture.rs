//! Writes a small frozen repository to `format/tests/fixtures/v1/` (run once per format
//! version; the files are committed and read by `tests/fixture.rs` forever after).
//!
//! `cargo run -p mailvault-format --example make_fixture`

use std::path::Path;
use std::sync::Arc;

use futures::executor::block_on;
use mailvault_format::{BlobStore, InitOptions, ItemManifest, KdfParams, MemoryStore, Repository};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let store = Arc::new(MemoryStore::new());
    let repo = block_on(Repository::init(
        store.clone(),
        b"fixture passphrase",
        InitOptions {
            kdf: KdfParams::fast_insecure(),
            ..InitOptions::default()
        },
    ))?;
    let samples: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            format!("Subject: sample {i}\r\nFrom: u{i}@example.org\r\n\r\nHello {i}\r\n")
                .into_bytes()
        })
        .collect();
    block_on(repo.train_dictionary(&samples, 1024))?;
    let repo = block_on(Repository::open(store.clone(), b"fixture passphrase"))?;
    let mut w = repo.writer()?;
    for (i, body) in fixture_items().iter().enumerate() {
        let meta = ItemManifest {
            mailbox: "fixture@example.org".into(),
            item_id: format!("item-{i}"),
            change_key: "ck-1".into(),
            folder_path: vec!["Inbox".into()],
            item_class: "IPM.Note".into(),
            ..Default::default()
        };
        w.add_item(meta, body)?;
    }
    block_on(w.flush())?;
    std::fs::create_dir_all(&out)?;
    for name in block_on(store.list(""))? {
        let bytes = block_on(store.get(&name))?;
        let file = out.join(name.replace('/', "__"));
        std::fs::write(&file, &bytes)?;
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// Must match `tests/fixture.rs`.
pub fn fixture_items() -> Vec<Vec<u8>> {
    let mut big = b"From: a@example.org\r\nSubject: attachment\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    big.extend((0..70_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    big.extend_from_slice(b"\r\n--b1--\r\n");
    vec![
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nHallo!\r\n".to_vec(),
        big,
        Vec::new(),
    ]
}
