//! The aggregator's metrics as Prometheus sees them: a real pipeline (nats-server, memory
//! store) serves its counters on a loopback port, a real Prometheus (Debian's package, from
//! `ops/scripts/install-tools.sh`) scrapes it every second, and its query API must report
//! exactly the number of items stored. The same Prometheus evaluates ops/monitoring/alerts.yml
//! every second: on the real series every rule evaluates without error, and the service-down
//! alert goes pending for a second target nothing listens on, and only for that one.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mailvault_aggregator::Metrics;
use mailvault_format::{BlobStore, MemoryStore};
use mailvault_harness::{NatsServer, Prometheus, free_port, http_get_status};
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
    let rules = mailvault_harness::repo_root().join("ops/monitoring/alerts.yml");
    let down: std::net::SocketAddr = format!("127.0.0.1:{}", free_port().expect("port"))
        .parse()
        .expect("addr");
    let prom = Prometheus::start_with_rules(&[addr, down], &[rules]).unwrap_or_else(|e| {
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
    wait_for_value(
        &prom,
        &format!("up{{job=\"mailvault\",instance=\"{addr}\"}}"),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let flushes = tokio::task::block_in_place(|| {
        prom.query_values("mailvault_aggregator_flush_seconds_count")
    })
    .expect("query");
    assert!(
        flushes.len() == 1 && flushes[0] >= 1.0,
        "the summary's count was scraped: {flushes:?}"
    );

    // Every rule evaluated against the real series (health ok, no lastError). Prometheus says
    // it is ready before its rule groups are loaded and evaluated once: wait for that.
    let end = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let rules = tokio::task::block_in_place(|| prom.rules_json()).expect("/api/v1/rules");
        let health = rules.matches("\"health\":").count();
        if (health >= 8 && rules.matches("\"health\":\"ok\"").count() == health)
            || Instant::now() >= end
        {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let evaluated = rules.matches("\"health\":").count();
    assert!(
        evaluated >= 8,
        "the alert rules are loaded: {rules}\nPrometheus said:\n{}",
        prom.output()
    );
    assert_eq!(
        rules.matches("\"health\":\"ok\"").count(),
        evaluated,
        "every rule evaluates without error: {rules}"
    );
    // The target nothing listens on has up == 0: MailvaultTargetDown is pending for it (it
    // fires after its 5 minutes, which promtool's unit test covers), and it is the only alert.
    wait_for_value(
        &prom,
        &format!(
            "ALERTS{{alertname=\"MailvaultTargetDown\",alertstate=\"pending\",instance=\"{down}\"}}"
        ),
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let alerts = tokio::task::block_in_place(|| prom.query_values("count(ALERTS)")).expect("query");
    assert_eq!(alerts, [1.0], "only the down target alerts");

    replica.stop().await;
    check_repository(store, &items, 0).await;
}
