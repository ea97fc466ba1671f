//! Item read latency (what GetItem does: the manifest, then `item_stream` to the end) over a
//! real Garage, next to the same repository layout in a local directory, with the store
//! requests each read makes.
//! Run: `cargo test -p mailvault-runtime --release --test bench_get_s3 -- --ignored --nocapture`
//!
//! Environment: `MAILVAULT_BENCH_ITEMS` (items written, default 400), `MAILVAULT_BENCH_ROUNDS`
//! (times every item is read, default 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use mailvault_format::store::{BlobStore, PutOutcome, StoreError};
use mailvault_format::{BlobId, InitOptions, ItemManifest, KdfParams, Repository};
use mailvault_harness::Garage;
use mailvault_runtime::storage::{DirStore, S3Config, S3Store, Secret};

const PASS: &[u8] = b"bench passphrase";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Counts the requests a read makes; every call goes on to the real store.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn BlobStore>,
    gets: AtomicU64,
    ranged: AtomicU64,
    other: AtomicU64,
}

impl Counting {
    fn new(inner: Arc<dyn BlobStore>) -> Self {
        Self {
            inner,
            gets: AtomicU64::new(0),
            ranged: AtomicU64::new(0),
            other: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> [u64; 3] {
        [
            self.gets.load(Ordering::Relaxed),
            self.ranged.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        ]
    }
}

#[async_trait]
impl BlobStore for Counting {
    async fn put(&self, name: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.other.fetch_add(1, Ordering::Relaxed);
        self.inner.put(name, data).await
    }
    async fn get(&self, name: &str) -> Result<Bytes, StoreError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(name).await
    }
    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        self.ranged.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(name, offset, len).await
    }
    async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.other.fetch_add(1, Ordering::Relaxed);
        self.inner.size(name).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.other.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.other.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(name).await
    }
}

/// Mail-like bytes: headers, then text with some repetition, so items compress and chunk
/// like mail. Sizes follow the dev corpus roughly (median ~4 KB, a tail to ~1 MB).
fn item(i: usize) -> Vec<u8> {
    let size = match i % 20 {
        0 => 300_000 + i * 97 % 700_000,
        1..=3 => 20_000 + i * 131 % 60_000,
        _ => 1_000 + i * 257 % 8_000,
    };
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out =
        format!("From: a{i}@example.org\r\nTo: b@example.org\r\nSubject: item {i}\r\n\r\n")
            .into_bytes();
    const WORDS: [&str; 8] = [
        "mail ",
        "backup ",
        "exchange ",
        "the ",
        "of ",
        "archive ",
        "restore ",
        "\r\n",
    ];
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(5) {
            out.extend_from_slice(format!("{x:016x} ").as_bytes());
        } else {
            out.extend_from_slice(WORDS[(x >> 8) as usize % WORDS.len()].as_bytes());
        }
    }
    out.truncate(size);
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn write_items(store: Arc<dyn BlobStore>, n: usize) -> Vec<(BlobId, Vec<u8>)> {
    let opts = InitOptions {
        kdf: KdfParams::fast_insecure(),
        ..InitOptions::default()
    };
    let repo = Repository::init(store, PASS, opts).await.expect("init");
    let mut w = repo.writer().expect("writer");
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let bytes = item(i);
        let meta = ItemManifest {
            mailbox: format!("user{}@example.org", i % 7),
            item_id: format!("item{i}"),
            change_key: "ck".into(),
            size: bytes.len() as u64,
            ..Default::default()
        };
        w.add_item(meta, &bytes).expect("add");
        data.push(bytes);
    }
    let receipts = w.flush().await.expect("flush");
    receipts
        .into_iter()
        .map(|r| r.manifest_id)
        .zip(data)
        .collect()
}

/// Opens the repository afresh (as the indexer does) and reads every item `rounds` times,
/// in an order that does not follow the write order, so the group cache helps no more than it
/// would for a user's random GetItem calls.
async fn read_items(label: &str, store: Arc<Counting>, items: &[(BlobId, Vec<u8>)], rounds: usize) {
    let repo = Repository::open(store.clone(), PASS).await.expect("open");
    let before = store.snapshot();
    let mut lat = Vec::with_capacity(items.len() * rounds);
    let mut bytes = 0u64;
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..items.len() {
            let (id, want) = &items[(k * 7919 + round * 31) % items.len()];
            let t = Instant::now();
            let m = repo.manifest(id).await.expect("manifest");
            let mut s = std::pin::pin!(repo.item_stream(m));
            let mut got = Vec::with_capacity(want.len());
            while let Some(c) = s.next().await {
                got.extend_from_slice(&c.expect("chunk"));
            }
            lat.push(t.elapsed());
            assert!(got == *want, "item bytes differ");
            bytes += got.len() as u64;
        }
    }
    let wall = started.elapsed();
    let after = store.snapshot();
    lat.sort();
    let n = lat.len() as f64;
    let over_40 = lat.iter().filter(|d| d.as_millis() >= 40).count();
    println!(
        "{label}: {} reads, {:.1} MB, {:.2}s | p50 {:.2} ms p95 {:.2} ms p99 {:.2} ms max {:.2} ms | ≥40 ms: {over_40} | per read: {:.2} GET, {:.2} ranged GET, {:.2} other",
        lat.len(),
        bytes as f64 / 1e6,
        wall.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        (after[0] - before[0]) as f64 / n,
        (after[1] - before[1]) as f64 / n,
        (after[2] - before[2]) as f64 / n,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn item_reads_over_garage_and_a_directory() {
    let n = env_usize("MAILVAULT_BENCH_ITEMS", 400);
    let rounds = env_usize("MAILVAULT_BENCH_ROUNDS", 3);

    let dir = tempfile::tempdir().expect("tempdir");
    let local: Arc<dyn BlobStore> = Arc::new(DirStore::open(dir.path()).expect("dir store"));
    let local = Arc::new(Counting::new(local));
    let items = write_items(local.clone(), n).await;
    read_items("directory", local, &items, rounds).await;

    let garage = tokio::task::spawn_blocking(|| Garage::start().expect("garage starts"))
        .await
        .expect("join");
    let mut cfg = S3Config::new(garage.bucket());
    cfg.endpoint = Some(garage.endpoint());
    cfg.region = garage.region().to_owned();
    cfg.access_key_id = Some(garage.access_key_id().to_owned());
    cfg.secret_access_key = Some(Secret::new(garage.secret_access_key()));
    let s3: Arc<dyn BlobStore> = Arc::new(S3Store::connect(&cfg).await.expect("s3"));
    let s3 = Arc::new(Counting::new(s3));
    let items = write_items(s3.clone(), n).await;
    read_items("garage", s3, &items, rounds).await;
}
