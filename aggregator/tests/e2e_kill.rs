//! kill -9 of an aggregator process at random points while another replica keeps running:
//! nothing lost, no dangling reference, verify clean. Real nats-server, directory repository,
//! the real `mailvault-aggregator` binary.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mailvault_harness::NatsServer;

fn trials() -> usize {
    std::env::var("MAILVAULT_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_loses_nothing() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, cfg_file) = binary_setup(
        dir.path(),
        &nats.url(),
        r#"ack_wait = "5s""#,
        r#"refresh_interval = "1s""#,
        r#"[batch]
max_delay = "200ms"
max_items = 50
[limits]
progress_every = "2s"
nak_delay = "200ms"
fetch_messages = 16
"#,
    )
    .await;

    let collector = Collector::connect(&nats.url()).await;
    let n = trials();
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 21,
        messages: 12 * n,
        huge_item_bytes: Some(1_500_000),
        ..Default::default()
    });
    let items = items_from(&corpus.items, "k");
    let per_trial = items.len().div_ceil(n);

    // The survivor, in process.
    let mut cfg = config(&nats.url());
    cfg.nats.ack_wait = Duration::from_secs(5);
    let survivor = Replica::start(cfg, store.clone());

    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (trial, part) in items.chunks(per_trial).enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault-aggregator"))
            .arg("--config")
            .arg(&cfg_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn aggregator");
        collector.publish_items(part).await;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = Duration::from_millis(200 + x % 1500);
        tokio::time::sleep(after).await;
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait");
        println!("trial {trial}: killed after {after:?} ({status})");
    }
    // What the killed processes held comes back after ack_wait and goes to the survivor.
    collector.wait_drained(Duration::from_secs(180)).await;
    let r = survivor.stop().await;
    println!("survivor: {r:?}; {} items published", items.len());
    check_repository(store, &items, 0).await;
}

/// SIGTERM: the binary stops pulling, flushes what it holds (here: a whole batch that the
/// batch policy would otherwise keep for a minute), publishes, acks and exits 0 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_flushes_acks_and_exits_in_time() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, cfg_file) = binary_setup(
        dir.path(),
        &nats.url(),
        r#"ack_wait = "120s""#,
        "",
        r#"[batch]
max_delay = "60s"
max_items = 100000
max_bytes = "1 GiB"
[limits]
shutdown_deadline = "10s"
"#,
    )
    .await;
    let collector = Collector::connect(&nats.url()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 4,
        messages: 20,
        ..Default::default()
    });
    let items = items_from(&corpus.items, "t");
    let sent = collector.publish_items(&items).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault-aggregator"))
        .arg("--config")
        .arg(&cfg_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn aggregator");
    // Wait until it holds every message (delivered, not acknowledged).
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while collector.backlog().await != Some((0, sent)) {
        assert!(
            std::time::Instant::now() < end,
            "{:?}",
            collector.backlog().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    let took = started.elapsed();
    println!("SIGTERM → exit {status} in {took:?}");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Acks flushed before the exit are applied by the server's consumer asynchronously: its
    // info may lag the exit by a moment. Unacked work would stay pending for `ack_wait` (120 s).
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while collector.backlog().await != Some((0, 0)) {
        assert!(
            std::time::Instant::now() < end,
            "everything acked: {:?}",
            collector.backlog().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check_repository(store, &items, 0).await;
}
