//! Peak RSS of the aggregator binary while a 150 MB item (from the Object Store) passes.
//! Heavy (≈200 MB of MIME through NATS): run with `cargo test -p mailvault-aggregator
//! --test e2e_big_item -- --ignored --nocapture`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mailvault_harness::NatsServer;

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "heavy: 150 MB item; run explicitly"]
async fn a_150_mb_item_streams_through_with_bounded_memory() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, cfg_file) = binary_setup(dir.path(), &nats.url(), "", "", "").await;
    let collector = Collector::connect(&nats.url()).await;
    let copies = mailvault_mailgen::fanout(9, 1, 150_000_000, false);
    let items = items_from(&copies[1..2], "big");
    let mime_len = items[0].mime.len();
    collector.publish_items(&items).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault-aggregator"))
        .arg("--config")
        .arg(&cfg_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn aggregator");
    let started = std::time::Instant::now();
    collector.wait_drained(Duration::from_secs(300)).await;
    let took = started.elapsed();
    let hwm = vm_hwm_kib(child.id()).expect("VmHWM");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    assert!(status.success());
    println!(
        "{mime_len} B item: stored in {took:?}; aggregator peak RSS {} MiB",
        hwm / 1024
    );
    check_repository(store, &items, 0).await;
    assert!(hwm < 300 * 1024, "peak RSS {hwm} KiB");
}
