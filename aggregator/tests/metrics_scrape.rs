//! The aggregator's metrics as Prometheus sees them: a real pipeline (nats-server, memory
//! store) serves its counters on a loopback port, a real Prometheus (Debian's package, from
//! `ops/scripts/install-tools.sh`) scrapes it every second, and its query API must report
//! exactly the number of items stored.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mailvault_aggregator::Metrics;
use mailvault_format::{BlobStore, MemoryStore};
use mailvault_harness::{NatsServer, Prometheus, http_get_status};
use mailvault_runtime::metrics::MetricsServer;

/// Polls an instant query until it returns exactly `want` (one series), or panics at the
/// deadline with what Prometheus knows about its target.
async fn wait_for_value(prom: &Prometheus, promql: &str, want: f64, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let got = tokio::task::block_in_place(|| prom.query_values(promql));
        match &got {
            Ok(v) if v.as_slice() == [want] => return,
            _ if Instant::now() >= end => panic!(
                "Prometheus did not report {promql} = {want} within {deadline:?}: last answer \
                 {got:?}\ntargets: {}\n{}",
                prom.targets(),
                prom.output()
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_number_of_items_stored() {
    let nats = NatsServer::start().expect("nats-server");
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    init_repo(store.clone()).await;
    let collector = Collector::connect(&nats.url()).await;
    let replica = Replica::start(config(&nats.url()), store.clone());

    let m = replica.metrics.clone();
    let endpoint = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), move || m.render())
        .await
        .expect("metrics endpoint");
    let addr = endpoint.local_addr();
    assert_eq!(http_get_status(addr.port(), "/healthz"), Some(200));
    let prom = Prometheus::start(&[addr]).unwrap_or_else(|e| {
        panic!("{e}\n(Prometheus comes from ops/scripts/install-tools.sh; run it once)")
    });
    // Scraped before anything was stored: the counter exists at 0, so the exact value checked
    // below is the pipeline's, not a leftover.
    wait_for_value(
        &prom,
        "mailvault_aggregator_items_stored_total",
        0.0,
        Duration::from_secs(30),
    )
    .await;

    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 7,
        messages: 25,
        ..Default::default()
    });
    let items = items_from(&corpus.items, "scrape");
    collector.publish_items(&items).await;
    collector.wait_drained(Duration::from_secs(120)).await;
    let stored = Metrics::get(&replica.metrics.items_stored_total);
    assert_eq!(stored, items.len() as u64, "every item stored once");

    wait_for_value(
        &prom,
        "mailvault_aggregator_items_stored_total",
        stored as f64,
        Duration::from_secs(30),
    )
    .await;
    wait_for_value(&prom, "up{job=\"mailvault\"}", 1.0, Duration::from_secs(5)).await;
    let flushes = tokio::task::block_in_place(|| {
        prom.query_values("mailvault_aggregator_flush_seconds_count")
    })
    .expect("query");
    assert!(
        flushes.len() == 1 && flushes[0] >= 1.0,
        "the summary's count was scraped: {flushes:?}"
    );

    replica.stop().await;
    check_repository(store, &items, 0).await;
}
