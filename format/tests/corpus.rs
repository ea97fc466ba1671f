//! Every message of a real corpus (MAILVAULT_CORPUS, layout `<user>/<folder>/<message>`) or, when
//! unset, of generated mail, stored as one item each and read back byte-identical; verify clean.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::executor::block_on;
use mailvault_format::{
    InitOptions, ItemManifest, KdfParams, MemoryStore, Repository, VerifyOptions, verify,
};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read corpus dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn messages() -> Vec<(String, Vec<u8>)> {
    match std::env::var_os("MAILVAULT_CORPUS") {
        Some(dir) => {
            let root = PathBuf::from(dir);
            let mut paths = Vec::new();
            for user in std::fs::read_dir(&root).expect("corpus root") {
                let user = user.expect("entry").path();
                if user.is_dir() {
                    files(&user, &mut paths);
                }
            }
            println!(
                "storing {} messages of the real corpus {}",
                paths.len(),
                root.display()
            );
            paths
                .into_iter()
                .map(|p| {
                    (
                        p.display().to_string(),
                        std::fs::read(&p).expect("read message"),
                    )
                })
                .collect()
        }
        None => {
            println!("MAILVAULT_CORPUS is unset: storing generated mail only");
            let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig::default());
            corpus
                .items
                .into_iter()
                .enumerate()
                .map(|(i, it)| (format!("{}/{i}", it.mailbox), it.mime))
                .collect()
        }
    }
}

#[test]
fn every_message_reads_back_byte_identical() {
    let msgs = messages();
    assert!(msgs.len() > 100, "too few messages: {}", msgs.len());
    let store = Arc::new(MemoryStore::new());
    let repo = block_on(Repository::init(
        store.clone(),
        b"corpus",
        InitOptions {
            kdf: KdfParams::fast_insecure(),
            ..InitOptions::default()
        },
    ))
    .expect("init");
    let mut w = repo.writer().expect("writer");
    for (name, bytes) in &msgs {
        let meta = ItemManifest {
            mailbox: "corpus@example.org".into(),
            item_id: name.clone(),
            change_key: "1".into(),
            ..Default::default()
        };
        w.add_item(meta, bytes).expect("add");
    }
    let receipts = block_on(w.flush()).expect("flush");
    assert_eq!(receipts.len(), msgs.len());
    let raw: u64 = msgs.iter().map(|(_, b)| b.len() as u64).sum();
    let stored = store.bytes_under("");
    println!(
        "raw {raw} bytes, stored {stored} bytes ({:.1} %)",
        100.0 * stored as f64 / raw as f64
    );
    assert!(
        stored < raw,
        "the repository should be smaller than the mail"
    );

    let reopened = block_on(Repository::open(store, b"corpus")).expect("open");
    for (r, (name, bytes)) in receipts.iter().zip(&msgs) {
        let back = block_on(reopened.read_item(&r.manifest_id)).expect("read");
        assert!(&back == bytes, "{name} differs after the round trip");
    }
    let report = block_on(verify(&reopened, VerifyOptions { read_data: true })).expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.manifests, msgs.len());
}
