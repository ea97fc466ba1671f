//! `mailvault-aggregator --log-json`: every line it logs on stderr is one JSON object (what
//! Kubernetes log collectors parse), through a whole run of the binary — start against a real
//! nats-server and a directory repository, items stored, SIGTERM, exit.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use mailvault_harness::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_is_a_json_object() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, cfg_file) = binary_setup(dir.path(), &nats.url(), "", "", "").await;
    let collector = Collector::connect(&nats.url()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 5,
        messages: 6,
        ..Default::default()
    });
    let items = items_from(&corpus.items, "log");
    collector.publish_items(&items).await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault-aggregator"))
        .arg("--config")
        .arg(&cfg_file)
        .arg("--log-json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aggregator");
    collector.wait_drained(Duration::from_secs(60)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(status.success(), "aggregator exit {status}:\n{stderr}");

    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
        if let Some(m) = v["message"].as_str() {
            messages.push(m.to_owned());
        }
    }
    for expected in ["aggregator running", "shutdown requested", "done"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no `{expected}` line among {messages:?}"
        );
    }
    check_repository(store, &items, 0).await;
}
