//! Issue 26, item 11: SIGTERM to an aggregator whose NATS server went away once left it
//! hanging for minutes, a second SIGTERM ignored. Now the process ends within its drain
//! deadline whatever NATS does, a second signal ends it at once, and what it held is
//! delivered again to the next aggregator: nothing is lost.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mailvault_harness::NatsServer;
use mailvault_runtime::shutdown::{EXIT_DRAIN_DEADLINE, EXIT_SECOND_SIGNAL};

fn term(child: &Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
}

/// Waits for the child to exit, at most `limit`; kills it and fails if it does not.
fn exit_within(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn setup(
    dir: &std::path::Path,
    nats: &NatsServer,
    deadline: &str,
) -> (
    std::sync::Arc<dyn mailvault_format::BlobStore>,
    std::path::PathBuf,
    Collector,
    Vec<Item>,
    usize,
) {
    let (store, cfg_file) = binary_setup(
        dir,
        &nats.url(),
        // Redelivery of what a killed aggregator held after 20 s; the batch is kept for 15 s,
        // so the aggregator still holds everything when the test acts.
        r#"ack_wait = "20s""#,
        "",
        &format!(
            "[batch]\nmax_delay = \"15s\"\nmax_items = 100000\nmax_bytes = \"1 GiB\"\n\
             [limits]\nshutdown_deadline = \"{deadline}\"\nprogress_every = \"5s\"\n"
        ),
    )
    .await;
    let collector = Collector::connect(&nats.url()).await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 11,
        messages: 20,
        ..Default::default()
    });
    let items = items_from(&corpus.items, "g");
    let sent = collector.publish_items(&items).await;
    (store, cfg_file, collector, items, sent)
}

/// The aggregator binary; its log on a pipe when the test reads it (and nowhere otherwise,
/// so an unread pipe can never fill up and block it).
fn spawn(cfg_file: &std::path::Path, read_log: bool) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mailvault-aggregator"))
        .arg("--config")
        .arg(cfg_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(if read_log {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn aggregator")
}

/// Waits until the aggregator holds every message (delivered, none acknowledged).
async fn wait_holding(collector: &Collector, sent: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    while collector.backlog().await != Some((0, sent)) {
        assert!(Instant::now() < end, "{:?}", collector.backlog().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the test's kill: NATS back, a fresh aggregator drains the stream, every item stored.
async fn nothing_lost(
    nats: &mut NatsServer,
    collector: &Collector,
    cfg_file: &std::path::Path,
    store: std::sync::Arc<dyn mailvault_format::BlobStore>,
    items: &[Item],
) {
    nats.restart().expect("nats-server back");
    let mut next = spawn(cfg_file, false);
    collector.wait_drained(Duration::from_secs(120)).await;
    term(&next);
    let (status, _) =
        tokio::task::block_in_place(|| exit_within(&mut next, Duration::from_secs(60)));
    assert!(status.success(), "the next aggregator: {status}");
    check_repository(store, items, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_nats_gone_exits_within_the_deadline() {
    let mut nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, cfg_file, collector, items, sent) = setup(dir.path(), &nats, "2s").await;
    let mut child = spawn(&cfg_file, false);
    wait_holding(&collector, sent).await;

    nats.stop();
    term(&child);
    // Drain deadline 2 s, and 5 s more before the process is ended regardless.
    let (status, took) =
        tokio::task::block_in_place(|| exit_within(&mut child, Duration::from_secs(30)));
    println!("NATS gone, SIGTERM → {status} in {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        status.success() || status.code() == Some(EXIT_DRAIN_DEADLINE),
        "{status}"
    );
    nothing_lost(&mut nats, &collector, &cfg_file, store, &items).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let mut nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, cfg_file, collector, items, sent) = setup(dir.path(), &nats, "120s").await;
    let mut child = spawn(&cfg_file, true);
    wait_holding(&collector, sent).await;

    nats.stop();
    term(&child);
    // The second signal only counts once the first one was taken: wait for its log line.
    let stderr = child.stderr.take().expect("stderr");
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("shutdown requested");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    })
    .await
    .expect("read stderr");
    assert!(
        lines.iter().any(|l| l.contains("shutdown requested")),
        "{lines:#?}"
    );
    let start = Instant::now();
    term(&child);
    let (status, _) =
        tokio::task::block_in_place(|| exit_within(&mut child, Duration::from_secs(30)));
    let took = start.elapsed();
    println!("second SIGTERM → {status} in {took:?}");
    assert_eq!(status.code(), Some(EXIT_SECOND_SIGNAL), "{status}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    nothing_lost(&mut nats, &collector, &cfg_file, store, &items).await;
}
