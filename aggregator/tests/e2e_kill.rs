//! kill -9 of an aggregator process at random points while another replica keeps running:
//! nothing lost, no dangling reference, verify clean. Real nats-server, directory repository,
//! the real `mailvault-aggregator` binary.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mailvault_format::BlobStore;
use mailvault_harness::NatsServer;
use mailvault_runtime::storage::DirStore;

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
    let repo_dir = dir.path().join("repo");
    let store: Arc<dyn BlobStore> = Arc::new(DirStore::open(&repo_dir).expect("dir store"));
    init_repo(store.clone()).await;
    let pass_file = dir.path().join("passphrase");
    std::fs::write(&pass_file, [PASS, b"\n"].concat()).expect("passphrase file");
    let cfg_file = dir.path().join("aggregator.toml");
    std::fs::write(
        &cfg_file,
        format!(
            r#"[nats]
url = "{url}"
ack_wait = "5s"
[repository]
url = "{repo}"
passphrase_file = "{pass}"
refresh_interval = "1s"
[batch]
max_delay = "200ms"
max_items = 50
[limits]
progress_every = "2s"
nak_delay = "200ms"
fetch_messages = 16
"#,
            url = nats.url(),
            repo = repo_dir.display(),
            pass = pass_file.display()
        ),
    )
    .expect("config file");

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
