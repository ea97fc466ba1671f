//! End to end against a real nats-server: collector-style envelopes in, repository out.
//! The repository here is the memory store; `e2e_garage.rs` runs over real S3 (Garage).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mailvault_format::{BlobStore, MemoryStore};
use mailvault_harness::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_then_two_replicas_store_every_item_once() {
    let nats = NatsServer::start().expect("nats-server");
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn BlobStore> = store.clone();
    init_repo(dyn_store.clone()).await;
    let collector = Collector::connect(&nats.url()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 11,
        messages: 40,
        huge_item_bytes: Some(3_000_000),
        ..Default::default()
    });
    let items = items_from(&corpus.items, "it");
    let half = items.len() / 2;
    assert!(
        items.iter().any(|i| i.mime.len() > INLINE_LIMIT),
        "one body goes through the Object Store"
    );

    // One replica.
    collector.publish_items(&items[..half]).await;
    let a = Replica::start(config(&nats.url()), dyn_store.clone());
    collector.wait_drained(Duration::from_secs(120)).await;

    // Two replicas, plus read-flag changes for the first items.
    let b = Replica::start(config(&nats.url()), dyn_store.clone());
    // One message per item, as older collectors publish (the first half went in packs).
    collector.publish_items_one_by_one(&items[half..]).await;
    let changes = collector.publish_read_flags(&items[..10]).await;
    // A collector publishing the same again (a retried page): the stream de-duplicates the
    // packs by their ids, so nothing is delivered twice.
    collector.publish_items(&items[..half]).await;
    collector
        .publish_items_one_by_one(&items[half..half + 5])
        .await;
    collector.wait_drained(Duration::from_secs(120)).await;
    let (ma, mb) = (a.metrics.clone(), b.metrics.clone());
    let ra = a.stop().await;
    let rb = b.stop().await;
    println!("replica a: {ra:?}\nreplica b: {rb:?}");
    assert!(rb.items > 0, "the second replica took work");
    assert_eq!(ra.changes + rb.changes, changes.len());
    assert_eq!(ra.abandoned + rb.abandoned, 0);

    check_repository(dyn_store.clone(), &items, changes.len()).await;
    // Every item version and change announced, each once: nothing was redelivered here, and a
    // batch published again is de-duplicated by its Nats-Msg-Id.
    let mut announced = collector.announced().await;
    let n = announced.len();
    announced.sort();
    announced.dedup();
    assert_eq!(announced.len(), n, "an id announced twice");
    assert_eq!(n, items.len() + changes.len());
    assert_eq!(
        collector.live_objects().await,
        0,
        "bodies deleted after ack"
    );
    let (dup, unique) = doubles(dyn_store, &[&ma, &mb]).await;
    println!(
        "{} items, {} logical bytes, {} pack bytes; chunks stored twice by racing replicas: {dup} of {unique}",
        items.len(),
        items.iter().map(|i| i.mime.len()).sum::<usize>(),
        store.bytes_under("packs/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_message_to_fifty_mailboxes_is_stored_once_with_two_replicas() {
    let nats = NatsServer::start().expect("nats-server");
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn BlobStore> = store.clone();
    init_repo(dyn_store.clone()).await;
    let collector = Collector::connect(&nats.url()).await;
    let mut items = Vec::new();
    for seed in 0..4u64 {
        let copies = mailvault_mailgen::fanout(100 + seed, 50, 400_000, true);
        items.extend(items_from(&copies, &format!("f{seed}-")));
    }
    collector.publish_items(&items).await;
    let a = Replica::start(config(&nats.url()), dyn_store.clone());
    let b = Replica::start(config(&nats.url()), dyn_store.clone());
    collector.wait_drained(Duration::from_secs(180)).await;
    let (ma, mb) = (a.metrics.clone(), b.metrics.clone());
    a.stop().await;
    b.stop().await;
    check_repository(dyn_store.clone(), &items, 0).await;
    let logical: usize = items.iter().map(|i| i.mime.len()).sum();
    let stored = store.bytes_under("packs/");
    let (dup, unique) = doubles(dyn_store, &[&ma, &mb]).await;
    println!(
        "4 messages × (1 sent + 50 inbox + 1 journal) = {} items: logical {logical} B, stored {stored} B, stored/logical = {:.4}; chunks stored twice by the 2 replicas: {dup} of {unique}",
        items.len(),
        stored as f64 / logical as f64
    );
    assert!(
        (stored as f64) < 0.1 * logical as f64,
        "single-instance storage: {stored} of {logical}"
    );
}
