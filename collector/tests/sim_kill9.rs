//! Acceptance (issue 3): the real `mailvault-collector` binary is SIGKILLed at random points
//! (at least 5 kills that land mid-run) and restarted; after the final completed run every item
//! is on the stream, item versions only ever carry their one `Nats-Msg-Id`, and what was
//! fetched or published twice stays within the un-checkpointed window (one SyncFolderItems page
//! per folder in progress, per kill).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use common::{config, write_config_file};
use mailvault_ews_sim::{Faults, SimConfig, Simulator};
use mailvault_mailgen::GenConfig;
use rand::{Rng as _, SeedableRng as _};

const DOMAIN: &str = "contoso.com";
const MAX_CHANGES: u32 = 8;
const MAILBOX_CONCURRENCY: usize = 2;
/// Not a real mailbox key: marks the end of what the test's subscriber has to read.
const END_SUBJECT: &str = "mailvault.ingest.item.end-of-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() {
    let nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let mut sc = SimConfig::new(DOMAIN);
    sc.generate = Some(GenConfig {
        seed: 99,
        domain: DOMAIN.into(),
        users: 4,
        messages: 120,
        journal: true,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sc).await.expect("start simulator");
    // A little latency per request, so a pass takes long enough to be interrupted.
    sim.set_faults(Faults {
        latency: Some(Duration::from_millis(4)),
        ..Faults::default()
    });
    let total = sim.total_items();
    let mailboxes = sim.mailboxes();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), &sim.url(), &nats.url(), &mailboxes);
    cfg.limits.max_changes = MAX_CHANGES;
    cfg.limits.mailbox_concurrency = MAILBOX_CONCURRENCY;
    let folder_concurrency = cfg.limits.folder_concurrency;
    cfg.limits.get_item_batch = 4;
    let cfg_path = write_config_file(dir.path(), &cfg);
    let bin = env!("CARGO_BIN_EXE_mailvault-collector");
    let spawn = || {
        Command::new(bin)
            .arg("--config")
            .arg(&cfg_path)
            .arg("--once")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mailvault-collector")
    };

    // Every publish, as a core-NATS subscriber sees it — including those JetStream drops as
    // duplicates inside its window — to check what a restart re-publishes.
    let watcher = async_nats::connect(nats.url()).await.expect("connect");
    let mut sub = watcher
        .subscribe("mailvault.ingest.>")
        .await
        .expect("subscribe");
    watcher.flush().await.expect("flush");
    let seen = tokio::spawn(async move {
        use futures::StreamExt as _;
        use prost::Message as _;
        let mut out: Vec<(String, (String, String, String))> = Vec::new();
        while let Some(m) = sub.next().await {
            if m.subject.as_str() == END_SUBJECT {
                break;
            }
            let msg_id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let im = mailvault_proto::ingest::v1::IngestMessage::decode(m.payload)
                .expect("decode published message");
            for im in common::unpack(im) {
                if let Some(mailvault_proto::ingest::v1::ingest_message::Message::Item(e)) =
                    im.message
                {
                    let v = (e.mailbox.to_lowercase(), e.item_id, e.change_key);
                    out.push((msg_id.clone(), v));
                }
            }
        }
        out
    });

    let seed = std::env::var("MAILVAULT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("kill -9 trials: seed {seed} (MAILVAULT_KILL_SEED to replay), {total} items");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0u32;
    let mut trials = 0u32;
    while kills < 6 {
        trials += 1;
        assert!(trials <= 30, "could not land 6 kills mid-run in 30 trials");
        let mut child = spawn();
        // Kill after a random number of further EWS requests (an event in the server, not a
        // timer), or when the run already finished.
        let target = sim.stats().total_requests + rng.random_range(2..60u64);
        let reached = tokio::time::timeout(
            Duration::from_secs(60),
            sim.wait_for(|s| s.total_requests >= target),
        );
        let exited = async {
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    return st;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let finished = tokio::select! {
            r = reached => { r.expect("collector made progress within 60 s"); None }
            st = exited => Some(st),
        };
        match finished {
            None => {
                child.kill().expect("SIGKILL collector");
                let st = child.wait().expect("reap collector");
                assert!(!st.success(), "killed process reported success");
                kills += 1;
                eprintln!("trial {trials}: SIGKILL after {target} EWS requests");
            }
            Some(st) => {
                assert!(st.success(), "collector run failed: {st}");
                eprintln!("trial {trials}: run completed before the kill point");
            }
        }
    }
    // The final, undisturbed run.
    let mut last = spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let st = loop {
        if let Some(st) = last.try_wait().expect("poll final run") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "final run took over 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(st.success(), "final run failed: {st}");

    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let msgs = common::stream_messages(&js, 0).await;
    // (mailbox, id, change key) → msg ids seen.
    let mut versions: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for m in &msgs {
        if let Some(e) = m.item() {
            versions
                .entry((
                    e.mailbox.to_lowercase(),
                    e.item_id.clone(),
                    e.change_key.clone(),
                ))
                .or_default()
                .push(m.msg_id.clone());
        }
    }
    let mut want = BTreeMap::new();
    for mb in &mailboxes {
        for f in sim.folders(mb) {
            for it in sim.items(&f.id) {
                want.insert((mb.to_lowercase(), it.id, it.change_key), ());
            }
        }
    }
    let missing: Vec<_> = want.keys().filter(|k| !versions.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} items missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        versions.len(),
        want.len(),
        "no item versions that the server does not hold"
    );
    let mut duplicates = 0usize;
    for ((mb, id, ck), ids) in &versions {
        // Its own id, or the id of the pack it travelled in.
        assert!(
            ids.iter()
                .all(|m| common::is_item_or_pack_id(m, mb, id, ck)),
            "{id}: Nats-Msg-Ids {ids:?}"
        );
        duplicates += ids.len() - 1;
    }
    // Each mailbox in progress syncs up to `folder_concurrency` folders at once, each with one
    // page not yet checkpointed.
    let window = kills as usize * MAILBOX_CONCURRENCY * folder_concurrency * MAX_CHANGES as usize;
    // Every publish the subscriber saw (the stream holds each version once; re-publishes after
    // a kill were dropped by JetStream's duplicate window): same version → same Nats-Msg-Id.
    // Everything the collector published reached the server before its JetStream ack, so a
    // marker published now arrives after all of it.
    watcher
        .publish(END_SUBJECT, "end".into())
        .await
        .expect("publish end marker");
    watcher.flush().await.expect("flush");
    let published = tokio::time::timeout(Duration::from_secs(60), seen)
        .await
        .expect("subscriber saw the end marker")
        .expect("subscriber task");
    let mut by_version: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for (msg_id, v) in published {
        by_version.entry(v).or_default().push(msg_id);
    }
    let mut republished = 0usize;
    for (v, ids) in &by_version {
        assert!(
            versions.contains_key(v),
            "published but not on the stream: {v:?}"
        );
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "{v:?}: Nats-Msg-Ids {ids:?}"
        );
        republished += ids.len() - 1;
    }
    assert_eq!(
        by_version.len(),
        versions.len(),
        "the subscriber saw every version"
    );
    let fetched = sim.stats().items_fetched as usize;
    eprintln!(
        "{kills} kills in {trials} trials: {} items, {republished} re-published after a kill \
         (same Nats-Msg-Id), {duplicates} duplicates on the stream, {fetched} GetItem fetches \
         ({} re-fetched; un-checkpointed window bound {window})",
        want.len(),
        fetched.saturating_sub(total)
    );
    assert!(
        republished <= window,
        "{republished} re-published > window {window}"
    );
    assert!(
        duplicates <= window,
        "{duplicates} duplicates > window {window}"
    );
    assert!(
        fetched <= total + window,
        "re-fetched {} items: checkpoints did not hold (bound {window})",
        fetched - total
    );
}
