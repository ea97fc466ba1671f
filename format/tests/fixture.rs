//! A repository written by format version 1 and frozen in the tree: every later build must
//! still open it, read every item byte-identical and verify it clean.

use std::path::Path;
use std::sync::Arc;

use futures::executor::block_on;
use mailvault_format::{BlobStore, MemoryStore, Repository, VerifyOptions, verify};

#[path = "../examples/make_fixture.rs"]
#[allow(dead_code)]
mod make_fixture;

#[test]
fn version_1_fixture_stays_readable() {
    // At run time: a binary reused from another checkout would name that checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
        .join("tests/fixtures/v1");
    let store = Arc::new(MemoryStore::new());
    let mut files = 0;
    for e in std::fs::read_dir(&dir).expect("fixture dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().replace("__", "/");
        let bytes = std::fs::read(e.path()).expect("read");
        block_on(store.put(&name, bytes.into())).expect("put");
        files += 1;
    }
    assert!(files >= 5, "fixture incomplete: {files} files");
    let repo = block_on(Repository::open(store, b"fixture passphrase")).expect("open v1 fixture");
    let expected = make_fixture::fixture_items();
    for (i, want) in expected.iter().enumerate() {
        let id = repo.manifest_id("fixture@example.org", &format!("item-{i}"), "ck-1");
        let got = block_on(repo.read_item(&id)).expect("read");
        assert_eq!(&got, want, "item {i}");
    }
    let report = block_on(verify(&repo, VerifyOptions { read_data: true })).expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
}
