//! Repository round trips, dedupe, key management and tamper detection over the memory store.

use std::sync::Arc;

use futures::executor::block_on;
use mailvault_format::{
    BlobStore, ChunkerParams, ErrorKind, FormatError, InitOptions, ItemManifest, KdfParams,
    MemoryStore, Repository, SealPolicy, VerifyOptions, verify,
};
use proptest::prelude::*;

const PASS: &[u8] = b"correct horse battery staple";

fn opts() -> InitOptions {
    InitOptions {
        chunker: ChunkerParams {
            min_size: 512,
            avg_size: 2048,
            max_size: 8192,
            mail_aware: true,
            min_segment: 64,
        },
        kdf: KdfParams::fast_insecure(),
        ..InitOptions::default()
    }
}

fn meta(mailbox: &str, item: &str, ck: &str) -> ItemManifest {
    ItemManifest {
        mailbox: mailbox.into(),
        item_id: item.into(),
        change_key: ck.into(),
        ..Default::default()
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn new_repo() -> (Arc<MemoryStore>, Repository) {
    let store = Arc::new(MemoryStore::new());
    let repo = block_on(Repository::init(store.clone(), PASS, opts())).expect("init");
    (store, repo)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any bytes → chunks → packs → read back identical, through a reopened repository, with
    /// small packs so items span several.
    #[test]
    fn any_bytes_round_trip(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30_000), 1..6)) {
        let (store, repo) = new_repo();
        let mut w = repo.writer_with_policy(SealPolicy { max_bytes: 10_000, ..SealPolicy::default() }).expect("writer");
        for (i, data) in items.iter().enumerate() {
            w.add_item(meta("a@x", &format!("item{i}"), "ck"), data).expect("add");
        }
        let receipts = block_on(w.flush()).expect("flush");
        prop_assert_eq!(receipts.len(), items.len());
        let reopened = block_on(Repository::open(store, PASS)).expect("open");
        for (r, data) in receipts.iter().zip(&items) {
            prop_assert_eq!(&block_on(reopened.read_item(&r.manifest_id)).expect("read"), data);
        }
        let report = block_on(verify(&reopened, VerifyOptions { read_data: true })).expect("verify");
        prop_assert!(report.is_clean(), "verify found problems: {:?}", report.problems);
    }
}

#[test]
fn storing_the_same_bytes_again_adds_no_data_blobs() {
    let (store, repo) = new_repo();
    let data = noise(100_000, 9);
    let mut w = repo.writer().expect("writer");
    w.add_item(meta("a@x", "1", "c1"), &data).expect("add");
    block_on(w.flush()).expect("flush");
    let blobs = repo.blob_count();
    let packs_before = block_on(store.list("packs/"))
        .map(|v| v.len())
        .expect("list");
    let mut w = repo.writer().expect("writer");
    // Another mailbox, same bytes: only a new manifest.
    let r = w.add_item(meta("b@x", "1", "c1"), &data).expect("add");
    assert_eq!(r.new_chunks, 0);
    // The same item version again (a redelivery): nothing at all.
    let again = w.add_item(meta("a@x", "1", "c1"), &data).expect("add");
    assert!(again.already_stored);
    assert_eq!(w.stats().new_chunks, 0);
    block_on(w.flush()).expect("flush");
    assert_eq!(repo.blob_count(), blobs + 1, "one manifest, no chunk");
    assert_eq!(
        block_on(store.list("packs/"))
            .map(|v| v.len())
            .expect("list"),
        packs_before + 1
    );
    assert_eq!(repo.manifests().len(), 2);
}

/// A cut batch is durable on its own; the writer goes on meanwhile, and a later item with the
/// same bytes references the cut blobs instead of storing them again.
#[test]
fn a_cut_flush_completes_while_the_writer_goes_on() {
    let (store, repo) = new_repo();
    let data = noise(60_000, 4);
    let mut w = repo.writer().expect("writer");
    let first = w.add_item(meta("a@x", "1", "c1"), &data).expect("add");
    let mut cut = w.cut().expect("cut");
    assert_eq!(cut.receipts(), std::slice::from_ref(&first));
    assert!(cut.sealed_bytes() > 0);
    // Same bytes in another mailbox before the cut is durable: only a manifest is new.
    let second = w.add_item(meta("b@x", "1", "c1"), &data).expect("add");
    assert_eq!(second.new_chunks, 0);
    block_on(cut.run()).expect("run");
    block_on(cut.run()).expect("run again is a no-op");
    assert!(cut.is_done());
    assert_eq!(cut.into_receipts(), Some(vec![first.clone()]));
    let mut later = w.cut().expect("cut");
    block_on(later.run()).expect("run");
    assert_eq!(later.into_receipts(), Some(vec![second.clone()]));
    let reopened = block_on(Repository::open(store, PASS)).expect("open");
    for r in [&first, &second] {
        assert_eq!(
            block_on(reopened.read_item(&r.manifest_id)).expect("read"),
            data
        );
    }
    let report = block_on(verify(&reopened, VerifyOptions { read_data: true })).expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A memory store whose puts fail while `down` is set; it counts ranged reads, each of which
/// yields once (as a network read would), so concurrent readers really interleave.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
    ranges: std::sync::atomic::AtomicUsize,
}

/// Pending once, then ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[async_trait::async_trait]
impl BlobStore for Flaky {
    async fn put(
        &self,
        name: &str,
        data: bytes::Bytes,
    ) -> Result<mailvault_format::PutOutcome, mailvault_format::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(mailvault_format::StoreError::Transient {
                op: "put",
                name: name.into(),
                source: "down for the test".into(),
            });
        }
        self.inner.put(name, data).await
    }
    async fn get(&self, name: &str) -> Result<bytes::Bytes, mailvault_format::StoreError> {
        self.inner.get(name).await
    }
    async fn get_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, mailvault_format::StoreError> {
        self.ranges
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        YieldOnce(false).await;
        self.inner.get_range(name, offset, len).await
    }
    async fn size(&self, name: &str) -> Result<Option<u64>, mailvault_format::StoreError> {
        self.inner.size(name).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, mailvault_format::StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, name: &str) -> Result<(), mailvault_format::StoreError> {
        self.inner.delete(name).await
    }
}

/// A cut that fails to upload resumes where it stopped and delivers no receipt before.
#[test]
fn a_cut_flush_is_retried_after_a_store_failure() {
    let store = Arc::new(Flaky::default());
    let repo = block_on(Repository::init(store.clone(), PASS, opts())).expect("init");
    let mut w = repo.writer().expect("writer");
    let r = w
        .add_item(meta("a@x", "1", "c1"), &noise(30_000, 5))
        .expect("add");
    let mut cut = w.cut().expect("cut");
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = block_on(cut.run()).expect_err("store down");
    assert_eq!(e.kind(), ErrorKind::Retryable);
    assert!(!cut.is_done());
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    block_on(cut.run()).expect("run after the outage");
    assert_eq!(cut.into_receipts(), Some(vec![r.clone()]));
    assert!(block_on(repo.read_item(&r.manifest_id)).is_ok());
}

/// Readers of neighbouring items share decoded groups: many reading at once fetch each group
/// once, as one reader going item by item does, and a second pass fetches nothing.
#[test]
fn concurrent_reads_fetch_each_group_once() {
    let store = Arc::new(Flaky::default());
    let repo = block_on(Repository::init(store.clone(), PASS, opts())).expect("init");
    let mut w = repo.writer().expect("writer");
    let items: Vec<(mailvault_format::BlobId, Vec<u8>)> = (0..40)
        .map(|i| {
            let data = noise(30_000 + 1_000 * i, i as u64);
            let r = w
                .add_item(meta("a@x", &i.to_string(), "c1"), &data)
                .expect("add");
            (r.manifest_id, data)
        })
        .collect();
    block_on(w.flush()).expect("flush");
    let ranges = || store.ranges.load(std::sync::atomic::Ordering::SeqCst);

    let one_by_one = block_on(Repository::open(store.clone(), PASS)).expect("open");
    let before = ranges();
    for (id, data) in &items {
        assert_eq!(&block_on(one_by_one.read_item(id)).expect("read"), data);
    }
    let sequential = ranges() - before;
    assert!(
        sequential < items.len(),
        "{sequential} reads for {} items",
        items.len()
    );

    let at_once = block_on(Repository::open(store.clone(), PASS)).expect("open");
    let read_all = || {
        block_on(futures::future::join_all(
            items.iter().map(|(id, _)| at_once.read_item(id)),
        ))
    };
    let before = ranges();
    for (got, (_, data)) in read_all().into_iter().zip(&items) {
        assert_eq!(&got.expect("read"), data);
    }
    assert_eq!(ranges() - before, sequential, "each group fetched once");
    let before = ranges();
    assert!(read_all().into_iter().all(|r| r.is_ok()));
    assert_eq!(
        ranges() - before,
        0,
        "a second pass is served from the cache"
    );
}

#[test]
fn wrong_passphrase_fails_clearly_and_keys_rotate() {
    let (store, repo) = new_repo();
    let mut w = repo.writer().expect("writer");
    let r = w
        .add_item(meta("a@x", "1", "c"), b"Subject: x\r\n\r\nbody\r\n")
        .expect("add");
    block_on(w.flush()).expect("flush");

    let err = block_on(Repository::open(store.clone(), b"wrong")).expect_err("wrong passphrase");
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    // Rotate: add a new key, remove the old one; data stays readable and nothing is re-encrypted.
    let packs_before = store.bytes_under("packs/");
    let new = block_on(repo.add_key(b"new passphrase", "rotated", KdfParams::fast_insecure()))
        .expect("add key");
    block_on(repo.remove_key(repo.key_name())).expect("remove old");
    assert!(block_on(Repository::open(store.clone(), PASS)).is_err());
    let reopened =
        block_on(Repository::open(store.clone(), b"new passphrase")).expect("open with new");
    assert_eq!(reopened.key_name(), new);
    assert_eq!(
        block_on(reopened.read_item(&r.manifest_id)).expect("read"),
        b"Subject: x\r\n\r\nbody\r\n"
    );
    assert_eq!(store.bytes_under("packs/"), packs_before);
    let last = block_on(reopened.remove_key(&new)).expect_err("last key");
    assert!(matches!(last, FormatError::Invalid(_)));
}

#[test]
fn init_twice_is_refused() {
    let (store, _repo) = new_repo();
    let err = block_on(Repository::init(store, PASS, opts())).expect_err("second init");
    assert!(matches!(err, FormatError::AlreadyInitialized));
}

/// Flipping any single byte of any stored object is detected by verify, which names the object;
/// reading an affected item fails rather than returning wrong bytes.
#[test]
fn every_single_byte_flip_is_detected() {
    let (store, repo) = new_repo();
    let mut w = repo.writer().expect("writer");
    let mut mail = b"From: a@x\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\n\r\nhello\r\n--B\r\n\r\n".to_vec();
    mail.extend_from_slice(&noise(3000, 4));
    mail.extend_from_slice(b"\r\n--B--\r\n");
    let r = w.add_item(meta("a@x", "1", "c"), &mail).expect("add");
    block_on(w.flush()).expect("flush");
    let samples: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("Subject: sample {i}\r\nFrom: user{i}@example.org\r\n\r\n").into_bytes())
        .collect();
    block_on(repo.train_dictionary(&samples, 2048)).expect("dict");
    block_on(repo.append_audit(b"{\"who\":\"admin\",\"call\":\"Search\"}\n")).expect("audit");
    assert!(
        block_on(verify(&repo, VerifyOptions { read_data: true }))
            .expect("verify")
            .is_clean()
    );

    let names = block_on(mailvault_format::BlobStore::list(store.as_ref(), "")).expect("list");
    let mut flips = 0;
    for name in &names {
        let len = block_on(mailvault_format::BlobStore::size(store.as_ref(), name))
            .expect("size")
            .expect("exists") as usize;
        let step = if len > 512 { len / 97 + 1 } else { 1 };
        for pos in (0..len).step_by(step) {
            store.tamper(name, |b| b[pos] ^= 0x01);
            let report =
                block_on(verify(&repo, VerifyOptions { read_data: true })).expect("verify runs");
            assert!(
                report.problems.iter().any(|p| &p.object == name),
                "flip at {name}[{pos}] not attributed to {name}: {:?}",
                report.problems
            );
            if name.starts_with("packs/") {
                let item_named = report.problems.iter().any(|p| {
                    p.items
                        .iter()
                        .any(|i| i.contains("a@x 1") || i.contains("manifest"))
                });
                assert!(
                    item_named,
                    "flip at {name}[{pos}]: no affected item named: {:?}",
                    report.problems
                );
                assert!(
                    block_on(repo.read_item(&r.manifest_id)).is_err()
                        || block_on(repo.read_item(&r.manifest_id)).ok().as_deref()
                            == Some(mail.as_slice()),
                    "a damaged read must fail, never return other bytes"
                );
            }
            store.tamper(name, |b| b[pos] ^= 0x01);
            flips += 1;
        }
        // Key objects: a damaged key is reported as damage, not as a wrong passphrase.
        if name.starts_with("keys/") {
            store.tamper(name, |b| b[len / 2] ^= 0x80);
            let err = block_on(Repository::open(store.clone(), PASS)).expect_err("damaged key");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
            assert!(err.to_string().contains(name.as_str()), "{err}");
            store.tamper(name, |b| b[len / 2] ^= 0x80);
        }
    }
    assert!(flips > 300, "only {flips} flips tried");
    assert!(
        block_on(verify(&repo, VerifyOptions { read_data: true }))
            .expect("verify")
            .is_clean()
    );
}

#[test]
fn verify_without_data_reads_still_catches_structure_damage() {
    let (store, repo) = new_repo();
    let mut w = repo.writer().expect("writer");
    let r = w
        .add_item(meta("a@x", "1", "c"), &noise(50_000, 1))
        .expect("add");
    block_on(w.flush()).expect("flush");
    let pack = block_on(mailvault_format::BlobStore::list(store.as_ref(), "packs/")).expect("list")
        [0]
    .clone();
    // Truncate the pack: its header is gone.
    store.tamper(&pack, |b| b.truncate(b.len() - 1));
    let report = block_on(verify(&repo, VerifyOptions::default())).expect("verify");
    let p = report
        .problems
        .iter()
        .find(|p| p.object == pack)
        .expect("pack named");
    assert!(
        p.items
            .iter()
            .any(|i| i.contains("a@x 1") || i.contains(&r.manifest_id.to_hex())),
        "{p:?}"
    );
}

#[test]
fn an_aborted_item_leaves_no_manifest_and_is_stored_in_full_later() {
    let (_store, repo) = new_repo();
    let data = noise(50_000, 3);
    let mut w = repo.writer().expect("writer");
    w.begin_item(meta("a@x", "1", "c1")).expect("begin");
    w.write(&data[..20_000]).expect("write");
    w.abort_item();
    // A redelivery of the same version is not taken for a duplicate and stores every byte.
    w.begin_item(meta("a@x", "1", "c1")).expect("begin again");
    assert!(!w.current_is_duplicate());
    w.write(&data).expect("write");
    let r = w.finish_item().expect("finish");
    let receipts = block_on(w.flush()).expect("flush");
    assert_eq!(
        receipts,
        vec![r.clone()],
        "only the finished item is reported"
    );
    assert_eq!(
        block_on(repo.read_item(&r.manifest_id)).expect("read"),
        data
    );
    assert_eq!(repo.manifests().len(), 1);
    let report = block_on(verify(&repo, VerifyOptions { read_data: true })).expect("verify");
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// Audit batches come back in the order written, decrypted; each is its own object.
#[test]
fn audit_batches_append_and_read_back_in_order() {
    let (store, repo) = new_repo();
    let first = block_on(repo.append_audit(b"one\n")).expect("first");
    let second = block_on(repo.append_audit(b"two\n")).expect("second");
    assert_ne!(first, second);
    let reopened = block_on(Repository::open(store.clone(), PASS)).expect("open");
    let batches = block_on(reopened.audit_batches()).expect("read");
    let texts: Vec<&[u8]> = batches.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(texts, vec![&b"one\n"[..], &b"two\n"[..]]);
    let raw = block_on(mailvault_format::BlobStore::get(store.as_ref(), &first)).expect("get");
    assert!(
        !raw.windows(3).any(|w| w == b"one"),
        "audit records are stored encrypted"
    );
}
