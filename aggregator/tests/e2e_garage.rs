//! End to end over real S3 (Garage) and a real nats-server: two replicas, and an S3 outage
//! in the middle of a run (nothing acked while S3 is down, everything stored after).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mailvault_aggregator::Metrics;
use mailvault_format::BlobStore;
use mailvault_harness::{Garage, NatsServer};
use mailvault_runtime::storage::{S3Config, S3Store, Secret};

async fn s3_store(g: &Garage) -> Arc<dyn BlobStore> {
    let mut c = S3Config::new(g.bucket());
    c.prefix = "repo/".into();
    c.endpoint = Some(g.endpoint());
    c.region = g.region().into();
    c.access_key_id = Some(g.access_key_id().into());
    c.secret_access_key = Some(Secret::new(g.secret_access_key()));
    c.max_attempts = 2;
    c.initial_backoff = Duration::from_millis(100);
    c.max_backoff = Duration::from_millis(500);
    c.connect_timeout = Duration::from_secs(1);
    c.attempt_timeout = Duration::from_secs(10);
    Arc::new(S3Store::connect(&c).await.expect("s3 store"))
}

fn outage() -> Duration {
    let secs = std::env::var("MAILVAULT_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_outage_stalls_the_run_and_loses_nothing() {
    let nats = NatsServer::start().expect("nats-server");
    let mut garage = Garage::start().expect("garage");
    let store = s3_store(&garage).await;
    init_repo(store.clone()).await;
    let collector = Collector::connect(&nats.url()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 5,
        messages: 30,
        huge_item_bytes: Some(2_000_000),
        ..Default::default()
    });
    let items = items_from(&corpus.items, "o");
    let half = items.len() / 2;

    let a = Replica::start(config(&nats.url()), store.clone());
    let b = Replica::start(config(&nats.url()), store.clone());
    collector.publish_items(&items[..half]).await;
    collector.wait_drained(Duration::from_secs(120)).await;
    let stored = |ms: &[&Arc<Metrics>]| -> u64 {
        ms.iter().map(|m| Metrics::get(&m.items_stored_total)).sum()
    };
    let before = stored(&[&a.metrics, &b.metrics]);
    assert_eq!(before, half as u64);
    let floor = collector.ack_floor().await.expect("ack floor");

    tokio::task::block_in_place(|| garage.stop());
    let sent = collector.publish_items(&items[half..]).await;
    assert!(sent > 0);
    let end = Instant::now() + outage();
    while Instant::now() < end {
        assert_eq!(
            stored(&[&a.metrics, &b.metrics]),
            before,
            "nothing is acknowledged while S3 is down"
        );
        // Acknowledged or terminated messages move the consumer's ack floor; the pending
        // counts themselves can be a message apart in one snapshot while one is delivered.
        assert_eq!(
            collector.ack_floor().await.expect("ack floor"),
            floor,
            "every new message is still unacknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors =
        Metrics::get(&a.metrics.flush_errors_total) + Metrics::get(&b.metrics.flush_errors_total);
    assert!(
        errors > 0,
        "the replicas tried and failed while S3 was down"
    );
    let back = Instant::now();
    tokio::task::block_in_place(|| garage.start_again()).expect("garage back");
    collector.wait_drained(Duration::from_secs(180)).await;
    let resumed = back.elapsed();
    let ra = a.stop().await;
    let rb = b.stop().await;
    println!(
        "outage {:?}: drained {resumed:?} after Garage was started again (restart included); replica a {ra:?}, replica b {rb:?}; failed flush attempts {errors}",
        outage()
    );
    check_repository(store, &items, 0).await;
}
