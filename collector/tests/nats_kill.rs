//! Issue 26, item 9: nats-server itself SIGKILLed in the middle of a collector run and started
//! again on its store. Whatever the server had acknowledged (and so whatever the collector
//! checkpointed) is still there; after the collector is run again, every item of every mailbox
//! is on the stream exactly once per version.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{config, write_config_file};
use mailvault_ews_sim::{Faults, SimConfig, Simulator};
use mailvault_mailgen::GenConfig;

const DOMAIN: &str = "contoso.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_sigkill_mid_run_loses_nothing_acknowledged() {
    let mut nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let mut sc = SimConfig::new(DOMAIN);
    sc.generate = Some(GenConfig {
        seed: 77,
        domain: DOMAIN.into(),
        users: 4,
        messages: 120,
        journal: true,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sc).await.expect("start simulator");
    // Slow enough that the run is still going when the server dies.
    sim.set_faults(Faults {
        latency: Some(Duration::from_millis(4)),
        ..Faults::default()
    });
    let mailboxes = sim.mailboxes();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), &sim.url(), &nats.url(), &mailboxes);
    cfg.limits.max_changes = 8;
    cfg.limits.get_item_batch = 4;
    let cfg_path = write_config_file(dir.path(), &cfg);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_mailvault-collector"))
            .arg("--config")
            .arg(&cfg_path)
            .arg("--once")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mailvault-collector")
    };

    let mut child = run();
    // Kill the server once part of the mail is on the stream (an event, not a timer).
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let before = loop {
        let seq = match js.get_stream(mailvault_collector::nats::STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
            Err(_) => 0,
        };
        if seq >= 20 {
            break seq;
        }
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the run ended before the server could be killed"
        );
        assert!(Instant::now() < deadline, "nothing published in 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        child.try_wait().expect("poll").is_none(),
        "the run ended before the server could be killed"
    );
    tokio::task::block_in_place(|| nats.restart()).expect("nats-server back on its store");
    eprintln!("nats-server SIGKILLed with {before} messages on the stream, started again");

    // The run goes on (the client reconnects) or fails; either way it ends.
    let deadline = Instant::now() + Duration::from_secs(180);
    let first = loop {
        if let Some(st) = child.try_wait().expect("poll") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the run hung after the server came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("the interrupted run ended: {first}");
    // What an operator's schedule does next: run again until a run completes.
    let mut clean = first.success();
    for _ in 0..3 {
        if clean {
            break;
        }
        let st = tokio::task::block_in_place(|| run().wait()).expect("run");
        clean = st.success();
    }
    assert!(clean, "no clean run after the server came back");

    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let msgs = common::stream_messages(&js, 0).await;
    assert!(
        msgs.len() as u64 >= before,
        "the stream lost messages the server had acknowledged: {} < {before}",
        msgs.len()
    );
    let mut versions: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for m in &msgs {
        if let Some(e) = m.item() {
            *versions
                .entry((
                    e.mailbox.to_lowercase(),
                    e.item_id.clone(),
                    e.change_key.clone(),
                ))
                .or_default() += 1;
        }
    }
    let mut missing = Vec::new();
    let mut want = 0;
    for mb in &mailboxes {
        for f in sim.folders(mb) {
            for it in sim.items(&f.id) {
                want += 1;
                if !versions.contains_key(&(mb.to_lowercase(), it.id.clone(), it.change_key)) {
                    missing.push(it.id);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {want} items missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        versions.len(),
        want,
        "no versions the mailboxes do not hold"
    );
}
