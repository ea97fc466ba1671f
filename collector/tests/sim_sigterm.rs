//! SIGTERM (what Kubernetes and systemd send) stops the `mailvault-collector` daemon the way
//! Ctrl-C does: no new mailbox is started, the ones in progress finish and are checkpointed,
//! and the process exits 0 by itself (without a handler it would die of the signal).

mod common;

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{config, write_config_file};
use mailvault_ews_sim::{Faults, SimConfig, Simulator};
use mailvault_mailgen::GenConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_pass_finishes_the_mailbox_in_progress_and_exits_zero() {
    let nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let mut sc = SimConfig::new("contoso.com");
    sc.generate = Some(GenConfig {
        seed: 5,
        domain: "contoso.com".into(),
        users: 4,
        messages: 60,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sc).await.expect("start simulator");
    // Slow enough that a pass over the mailboxes, one at a time, is still running when the
    // signal arrives.
    sim.set_faults(Faults {
        latency: Some(Duration::from_millis(15)),
        ..Faults::default()
    });
    let mailboxes = sim.mailboxes();
    assert!(mailboxes.len() >= 4, "{mailboxes:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), &sim.url(), &nats.url(), &mailboxes);
    cfg.limits.mailbox_concurrency = 1;
    let cfg_path = write_config_file(dir.path(), &cfg);
    // Logs go to stdout; a file never fills up like a pipe would.
    let log_path = dir.path().join("collector.log");
    let log = std::fs::File::create(&log_path).expect("create log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault-collector"))
        .arg("--config")
        .arg(&cfg_path)
        .arg("--interval")
        .arg("1h")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().expect("clone log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn mailvault-collector");

    // Signal once the first mailbox is being read (an event in the server, not a timer).
    tokio::time::timeout(
        Duration::from_secs(60),
        sim.wait_for(|s| s.count("SyncFolderItems") >= 2),
    )
    .await
    .expect("collector started syncing within 60 s");
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM failed");

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().expect("poll collector") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "collector still running 120 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let output = std::fs::read_to_string(&log_path).expect("read collector log");
    assert_eq!(
        status.signal(),
        None,
        "collector was killed by the signal instead of shutting down; output:\n{output}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "collector exit status after SIGTERM; output:\n{output}"
    );
    assert!(
        output.contains("shutdown requested") && output.contains("SIGTERM"),
        "shutdown is logged with the signal; output:\n{output}"
    );

    // It stopped early: the mailbox in progress was finished (its reconciliation record is
    // there), later ones were never started.
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let msgs = common::stream_messages(&js, 0).await;
    let reconciled: Vec<String> = msgs
        .iter()
        .filter_map(|m| m.reconciliation().map(|r| r.mailbox.to_lowercase()))
        .collect();
    assert!(
        !reconciled.is_empty(),
        "the mailbox in progress was completed"
    );
    assert!(
        reconciled.len() < mailboxes.len(),
        "no new mailbox was started after SIGTERM (reconciled: {reconciled:?})"
    );
}
