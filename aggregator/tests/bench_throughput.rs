//! Throughput: the aggregator draining a pre-filled stream into a repository, against the
//! format library's own write path on the same bytes in the same run, and plain zstd -3.
//! Run: `cargo test -p mailvault-aggregator --release --test bench_throughput -- --ignored --nocapture`
//! (debug builds compile the workspace crates unoptimised; the ratios still compare like with like).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mailvault_format::{BlobStore, ItemManifest, MemoryStore};
use mailvault_harness::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn aggregator_throughput_against_the_format_write_path() {
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 77,
        messages: std::env::var("MAILVAULT_BENCH_MESSAGES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(400),
        ..Default::default()
    });
    let items = items_from(&corpus.items, "b");
    let bytes: usize = items.iter().map(|i| i.mime.len()).sum();
    let mb = bytes as f64 / 1e6;

    // zstd -3 of every item.
    let t = Instant::now();
    let mut z = 0usize;
    for it in &items {
        z += zstd::bulk::compress(&it.mime, 3).expect("zstd").len();
    }
    let zstd_s = t.elapsed().as_secs_f64();

    // The format library alone.
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let repo = init_repo(store).await;
    let t = Instant::now();
    let mut w = repo.writer().expect("writer");
    for it in &items {
        let meta = ItemManifest {
            mailbox: it.mailbox.clone(),
            item_id: it.item_id.clone(),
            change_key: it.change_key.clone(),
            ..Default::default()
        };
        w.add_item(meta, &it.mime).expect("add");
    }
    w.flush().await.expect("flush");
    let format_s = t.elapsed().as_secs_f64();

    // The aggregator over a pre-filled stream (one worker).
    let nats = NatsServer::start().expect("nats-server");
    let collector = Collector::connect(&nats.url()).await;
    collector.publish_items(&items).await;
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    init_repo(store.clone()).await;
    let mut cfg = config(&nats.url());
    cfg.limits.fetch_messages = 256;
    cfg.nats.max_ack_pending = 4096;
    cfg.batch.max_items = 2000;
    cfg.limits.workers = std::env::var("MAILVAULT_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t = Instant::now();
    let r = Replica::start(cfg, store);
    collector.wait_drained(Duration::from_secs(600)).await;
    let agg_s = t.elapsed().as_secs_f64();
    r.stop().await;

    println!(
        "{} items, {mb:.1} MB: zstd -3 {:.1} MB/s (ratio {:.3}); format write path {:.1} MB/s; aggregator {:.1} MB/s; aggregator/format = {:.2}; aggregator/zstd = {:.2} (2 cores)",
        items.len(),
        mb / zstd_s,
        z as f64 / bytes as f64,
        mb / format_s,
        mb / agg_s,
        format_s / agg_s,
        zstd_s / agg_s,
    );
}
