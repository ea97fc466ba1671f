//! Chaos: a distributed backup, an incremental run and a restore as real processes
//! (nats-server, Garage, two `mailvault-aggregator`s, `mailvault-indexer`, `mailvault-collector`
//! against the EWS simulator), and in each phase one of them is SIGKILLed at a random moment and
//! started again. After each pass every item the simulator holds is found by search exactly
//! once and reads back byte-identical through the API; after the restore (asked again until it
//! completes) the folder holds each deleted item exactly once; `verify --read-data` is clean.
//!
//! `MAILVAULT_CHAOS_TRIALS` (default 6: each victim once, the short form CI runs) and
//! `MAILVAULT_CHAOS_SEED` (default 1) choose the trials; `ops/scripts/chaos.sh` runs the long
//! form. Every trial prints one line (victims, delays, whether the kill landed mid-pass).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailvault_ews_sim::{SimConfig, SimHandle, Simulator};
use mailvault_format::{BlobStore, Repository};
use mailvault_harness::{Garage, NatsServer, free_port};
use mailvault_mailgen::GenConfig;
use mailvault_proto::api::v1 as pb;
use mailvault_runtime::storage::S3Store;

const VICTIMS: [&str; 6] = [
    "collector",
    "aggregator-1",
    "aggregator-2",
    "indexer",
    "nats-server",
    "garage",
];

/// A small deterministic generator (the trials must be reproducible from their seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct World {
    dir: PathBuf,
    nats: NatsServer,
    garage: Garage,
    sim: SimHandle,
    store: Arc<dyn BlobStore>,
    aggregators: Vec<Child>,
    indexer: Child,
    /// The collector serving restore jobs, while a restore runs.
    daemon: Option<Child>,
    api: String,
    token: String,
}

impl World {
    async fn start(dir: &Path, seed: u64) -> World {
        let nats = NatsServer::start().expect("nats-server");
        let garage = Garage::start().expect("garage");
        let s3 = common::s3_config(&garage);
        let store: Arc<dyn BlobStore> = Arc::new(S3Store::connect(&s3).await.expect("s3"));
        Repository::init(
            store.clone(),
            common::PASS,
            mailvault_format::InitOptions {
                kdf: mailvault_format::KdfParams::fast_insecure(),
                ..Default::default()
            },
        )
        .await
        .expect("init repository");
        let mut cfg = SimConfig::new(common::DOMAIN);
        cfg.generate = Some(GenConfig {
            seed,
            domain: common::DOMAIN.into(),
            users: 3,
            messages: 60,
            huge_item_bytes: Some(700_000),
            ..GenConfig::default()
        });
        let sim = Simulator::start(cfg).await.expect("simulator");
        // Slow enough that a pass lasts about a second, so that kills land inside it.
        sim.set_faults(mailvault_ews_sim::Faults {
            latency: Some(Duration::from_millis(40)),
            ..Default::default()
        });

        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let pass = write(
            "passphrase",
            std::str::from_utf8(common::PASS).expect("utf-8"),
        );
        let s3_secret = write("s3-secret", garage.secret_access_key());
        let ews_pw = write("ews-password", "secret\n");
        let mailboxes = write("mailboxes.csv", &(sim.mailboxes().join("\n") + "\n"));
        let nats_section = format!("[nats]\nurl = \"{}\"\n", nats.url());
        let repo_section = format!(
            "[repository]\nurl = \"s3://{}/{}\"\npassphrase_file = \"{}\"\nrefresh_interval = \"500ms\"\n",
            garage.bucket(),
            common::PREFIX,
            pass.display()
        );
        let s3_section = format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            garage.endpoint(),
            garage.region(),
            garage.access_key_id(),
            s3_secret.display()
        );
        write(
            "aggregator.toml",
            // A killed replica's deliveries come back after ack_wait (the production default
            // is 60 s; the trial need not wait that long).
            &format!(
                "{nats_section}ack_wait = \"5s\"\n{repo_section}[batch]\nmax_delay = \"200ms\"\n[limits]\nprogress_every = \"2s\"\n{s3_section}"
            ),
        );
        let mut tokens = mailvault_indexer::api::Tokens::default();
        let token = tokens.issue("chaos", mailvault_indexer::api::Role::Admin, None);
        let tokens_file = write("tokens.toml", &tokens.to_toml());
        let api_port = free_port().expect("port");
        write(
            "indexer.toml",
            &format!(
                // A restore whose collector was killed is given up (and asked again) after
                // 15 s without a result, not the production 2 minutes.
                "{nats_section}restore_timeout = \"15s\"\n{repo_section}[index]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens_file = \"{}\"\n{s3_section}",
                dir.join("index").display(),
                tokens_file.display()
            ),
        );
        write(
            "collector.toml",
            &format!(
                "source = \"exch01\"\nmailboxes_csv = \"{}\"\n[ews]\nurl = \"{}\"\nusername = \"svc-mailvault\"\npassword_file = \"{}\"\nimpersonation = true\n[limits]\nbackoff_base_ms = 20\nbackoff_max_ms = 1000\n{nats_section}",
                mailboxes.display(),
                sim.url(),
                ews_pw.display()
            ),
        );
        let mut w = World {
            dir: dir.to_owned(),
            nats,
            garage,
            sim,
            store,
            aggregators: Vec::new(),
            indexer: spawn(dir, "mailvault-indexer", "indexer.toml", "indexer"),
            daemon: None,
            api: format!("http://127.0.0.1:{api_port}"),
            token,
        };
        for i in 1..=2 {
            let a = w.spawn_aggregator(i);
            w.aggregators.push(a);
        }
        w
    }

    fn spawn_aggregator(&self, i: usize) -> Child {
        spawn(
            &self.dir,
            "mailvault-aggregator",
            "aggregator.toml",
            &format!("aggregator-{i}"),
        )
    }

    fn collector(&self) -> Child {
        let mut c = command(
            &self.dir,
            "mailvault-collector",
            "collector.toml",
            "collector",
        );
        c.arg("--once");
        c.spawn().expect("spawn collector")
    }

    /// SIGKILLs `victim` (not the collector, which the pass owns) and starts it again.
    fn kill_and_restart(&mut self, victim: &str) {
        match victim {
            "aggregator-1" | "aggregator-2" => {
                let i: usize = victim[11..].parse().expect("index");
                kill(&mut self.aggregators[i - 1]);
                self.aggregators[i - 1] = self.spawn_aggregator(i);
            }
            "indexer" => {
                kill(&mut self.indexer);
                self.indexer = spawn(&self.dir, "mailvault-indexer", "indexer.toml", "indexer");
            }
            "nats-server" => self.nats.restart().expect("nats-server restarts"),
            "garage" => {
                self.garage.stop();
                self.garage.start_again().expect("garage restarts");
            }
            other => panic!("unknown victim {other}"),
        }
    }

    /// One collector pass with `victim` killed `delay` after it starts; then passes until one
    /// is clean. Returns whether the kill landed while the pass was still running.
    async fn pass_with_kill(&mut self, victim: &str, delay: Duration) -> (bool, Duration) {
        let mut pass = self.collector();
        let started = Instant::now();
        let mut mid_pass = false;
        // Kill at `delay`, or earlier if the pass ends first (then the kill still happens,
        // while the aggregators and the indexer are working through the stream).
        while started.elapsed() < delay {
            if pass.try_wait().expect("collector status").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if pass.try_wait().expect("collector status").is_none() {
            mid_pass = true;
        }
        if victim == "collector" {
            kill(&mut pass);
        } else {
            self.kill_and_restart(victim);
            let _ = wait_child(&mut pass).await;
        }
        let mut longest = started.elapsed();
        for attempt in 1..=6 {
            let t = Instant::now();
            let mut again = self.collector();
            let code = wait_child(&mut again).await;
            longest = longest.max(t.elapsed());
            if code == Some(0) {
                return (mid_pass, longest);
            }
            eprintln!(
                "chaos: collector pass {attempt} after killing {victim} was not clean; again"
            );
        }
        panic!(
            "no clean collector pass after killing {victim}; logs in {}",
            self.dir.display()
        );
    }

    async fn client(&self) -> common::Client {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(c) = common::Client::connect(&self.api, &self.token).await {
                return c;
            }
            assert!(Instant::now() < deadline, "the indexer's API never came up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the simulator holds now, as (mailbox, folder, hash) counts.
    fn expected(&self) -> common::Multiset {
        common::sim_contents(&self.sim)
    }

    /// Fails with its log when a service has died (it should only ever be killed by the test).
    fn assert_services_alive(&mut self) {
        let dir = self.dir.clone();
        let mut all: Vec<(String, &mut Child)> = self
            .aggregators
            .iter_mut()
            .enumerate()
            .map(|(i, c)| (format!("aggregator-{}", i + 1), c))
            .collect();
        all.push(("indexer".into(), &mut self.indexer));
        for (name, child) in all {
            if let Some(status) = child.try_wait().expect("status") {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(3000)..];
                panic!("{name} exited by itself ({status}):\n{tail}");
            }
        }
    }

    /// Waits until the index holds as many items as the simulator, then compares contents.
    async fn check(&mut self, phase: &str) -> usize {
        let expected = self.expected();
        let n: usize = expected.values().sum();
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut c = self.client().await;
        loop {
            match c.try_total("").await {
                Ok(t) if t as usize == n => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    self.assert_services_alive();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if c.try_total("").await.is_err() {
                        c = self.client().await;
                    }
                }
                other => panic!(
                    "{phase}: the index never reached {n} items ({other:?}); logs in {}",
                    self.dir.display()
                ),
            }
        }
        let (got, _) = common::archive_contents(&mut c).await;
        assert!(
            got == expected,
            "{phase}: the archive differs from the simulator:\n{}",
            common::diff(&expected, &got)
        );
        n
    }

    /// A folder's items are deleted in Exchange (its subfolders keep theirs), then the folder is
    /// restored through the API (as of before the delete, collision `skip`, into itself) while the collector serves restore
    /// jobs as a daemon, with `victim` killed `delay` into the restore; the restore is asked
    /// again until one completes without a failed item. Returns the items and the attempts.
    async fn restore_with_kill(&mut self, victim: &str, delay: Duration) -> (usize, u32, usize) {
        let mailbox = self.sim.mailboxes()[1].clone();
        let inbox = self
            .sim
            .distinguished_folder_id(&mailbox, "inbox")
            .expect("inbox");
        let path = self
            .sim
            .folders(&mailbox)
            .into_iter()
            .find(|f| f.id == inbox)
            .expect("inbox folder")
            .path;
        // The restore takes the folder with its subfolders: compare the whole subtree.
        let subtree = path.clone();
        let hashes = |sim: &SimHandle| {
            let mut m = std::collections::BTreeMap::<(Vec<String>, [u8; 32]), usize>::new();
            for f in sim.folders(&mailbox) {
                if f.path.starts_with(&subtree) {
                    for it in sim.items(&f.id) {
                        *m.entry((f.path.clone(), common::hash(&it.mime)))
                            .or_default() += 1;
                    }
                }
            }
            m
        };
        let before = hashes(&self.sim);
        // Items the restorer can recognise in Exchange (collision `skip` looks them up by
        // Internet Message-ID); the generator also makes messages without one, or with a
        // broken one.
        let mut recognisable = std::collections::BTreeSet::new();
        for f in self.sim.folders(&mailbox) {
            for it in self.sim.items(&f.id) {
                if well_formed_message_id(&it.mime) {
                    recognisable.insert(common::hash(&it.mime));
                }
            }
        }
        let n: usize = before.values().sum();
        let as_of = common::now_ms();
        for it in self.sim.items(&inbox) {
            self.sim.delete_item(&it.id).expect("delete");
        }
        self.daemon = Some(self.collector_daemon());
        let req = pb::RestoreRequest {
            what: Some(pb::restore_request::What::Folder(pb::FolderSelector {
                mailbox: mailbox.clone(),
                path,
            })),
            as_of_unix_ms: as_of,
            collision: pb::Collision::Skip as i32,
            ..Default::default()
        };
        let mut c = self.client().await;
        let first = {
            let req = req.clone();
            tokio::spawn(async move { c.try_restore(req).await })
        };
        let t = Instant::now();
        while t.elapsed() < delay && !first.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if victim == "collector" {
            if let Some(d) = &mut self.daemon {
                kill(d);
            }
            self.daemon = Some(self.collector_daemon());
        } else {
            self.kill_and_restart(victim);
        }
        let done = |r: &Result<Vec<pb::ItemResult>, tonic::Status>| {
            matches!(r, Ok(rs) if rs.len() == n
                && rs.iter().all(|x| x.outcome != pb::Outcome::Failed as i32))
        };
        let mut attempts = 1;
        let mut last = first.await.expect("restore task");
        while !done(&last) {
            assert!(
                attempts < 8,
                "restore after killing {victim} never completed: {last:?}; logs in {}",
                self.dir.display()
            );
            attempts += 1;
            let mut c = self.client().await;
            last = c.try_restore(req.clone()).await;
        }
        if let Some(mut d) = self.daemon.take() {
            kill(&mut d);
        }
        let after = hashes(&self.sim);
        // Each item is back; one with a Message-ID exactly once. One without can be written
        // again by a restore asked again (nothing identifies it in Exchange): at most once
        // per attempt, and counted.
        let mut extra = 0;
        for (key, &was) in &before {
            let now = after.get(key).copied().unwrap_or(0);
            if recognisable.contains(&key.1) {
                assert_eq!(
                    now, was,
                    "after a restore with {victim} killed ({attempts} attempts), {:?} holds {now} \
                     copies of an item it held {was} times",
                    key.0
                );
            } else {
                assert!(
                    now >= was && now <= was * attempts as usize,
                    "an item without Message-ID: {now} copies after {attempts} attempts, was {was}"
                );
                extra += now - was;
            }
        }
        let unexpected: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        assert!(
            unexpected.is_empty(),
            "restored items that were never there: {unexpected:?}"
        );
        (n, attempts, extra)
    }

    fn collector_daemon(&self) -> Child {
        let mut c = command(
            &self.dir,
            "mailvault-collector",
            "collector.toml",
            "collector-daemon",
        );
        c.args(["--interval", "1h"]);
        c.spawn().expect("spawn collector daemon")
    }

    fn stop(&mut self) {
        for a in &mut self.aggregators {
            kill(a);
        }
        kill(&mut self.indexer);
        if let Some(mut d) = self.daemon.take() {
            kill(&mut d);
        }
    }
}

impl Drop for World {
    /// A failed trial leaves no service running behind it.
    fn drop(&mut self) {
        self.stop();
    }
}

/// A trial's directory (configs, logs), kept when the trial fails so that its logs can be read.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl KeepOnPanic {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("dir").path()
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!(
                "chaos: the failed trial's logs are kept in {}",
                d.keep().display()
            );
        }
    }
}

fn command(dir: &Path, bin: &str, config: &str, log: &str) -> Command {
    let mut c = Command::new(common::binary(bin));
    c.arg("--config")
        .arg(dir.join(config))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{log}.stdout.log"))).expect("log"))
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{log}.log")))
                .expect("log"),
        );
    c
}

fn spawn(dir: &Path, bin: &str, config: &str, log: &str) -> Child {
    command(dir, bin, config, log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

fn kill(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

async fn wait_child(child: &mut Child) -> Option<i32> {
    loop {
        if let Some(s) = child.try_wait().expect("status") {
            return s.code();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `mime`'s header has a `Message-ID: <...@...>` (what Exchange can be searched by).
fn well_formed_message_id(mime: &[u8]) -> bool {
    let text = String::from_utf8_lossy(mime);
    for line in text.split("\r\n").take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("message-id")
        {
            let v = v.trim();
            return v.starts_with('<') && v.ends_with('>') && v.contains('@');
        }
    }
    false
}

/// Some items added, changed and deleted in the first mailbox's inbox.
fn change_mail(sim: &SimHandle, trial: u64) {
    let mailbox = sim.mailboxes()[0].clone();
    let inbox = sim
        .distinguished_folder_id(&mailbox, "inbox")
        .expect("inbox");
    let items = sim.items(&inbox);
    for it in items.iter().take(2) {
        sim.delete_item(&it.id).expect("delete");
    }
    if let Some(it) = items.get(2) {
        sim.change_item(
            &it.id,
            &common::message(&mailbox, &format!("changed {trial}")),
        )
        .expect("change");
    }
    for i in 0..5 {
        sim.add_item(
            &inbox,
            &common::message(&mailbox, &format!("chaos {trial} new {i}")),
            "IPM.Note",
        )
        .expect("add");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_component_loses_nothing_and_duplicates_nothing() {
    let trials = env_u64("MAILVAULT_CHAOS_TRIALS", VICTIMS.len() as u64);
    let seed = env_u64("MAILVAULT_CHAOS_SEED", 1);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let started = Instant::now();
    let mut mid = 0;
    let mut retried = 0;
    let mut second_copies = 0;
    for trial in 0..trials {
        let t0 = Instant::now();
        let tmp = KeepOnPanic(Some(tempfile::tempdir().expect("tempdir")));
        let mut w = World::start(tmp.path(), seed * 1000 + trial).await;
        // The first pass's victim goes round the list, so the short form kills each once.
        let v1 = VICTIMS[(trial as usize) % VICTIMS.len()];
        // Within about a pass (0.5–0.9 s here), so that most kills land inside it.
        let d1 = Duration::from_millis(rng.below(900));
        let (m1, p1) = w.pass_with_kill(v1, d1).await;
        let full = w.check("full backup").await;
        change_mail(&w.sim, trial);
        let v2 = VICTIMS[rng.below(VICTIMS.len() as u64) as usize];
        let d2 = Duration::from_millis(rng.below(500));
        let (m2, p2) = w.pass_with_kill(v2, d2).await;
        let incr = w.check("incremental").await;
        let v3 = VICTIMS[rng.below(VICTIMS.len() as u64) as usize];
        let d3 = Duration::from_millis(rng.below(1500));
        let (restored, attempts, extra) = w.restore_with_kill(v3, d3).await;
        let repo = Repository::open(w.store.clone(), common::PASS)
            .await
            .expect("open repository");
        let report =
            mailvault_format::verify(&repo, mailvault_format::VerifyOptions { read_data: true })
                .await
                .expect("verify");
        assert!(
            report.is_clean(),
            "trial {trial}: verify: {:?}",
            report.problems
        );
        w.stop();
        mid += usize::from(m1) + usize::from(m2);
        retried += usize::from(attempts > 1);
        second_copies += extra;
        eprintln!(
            "chaos trial {trial} (seed {seed}): full pass ({p1:.1?}) killed {v1} at {d1:?} \
             (mid-pass {m1}), {full} items exact; incremental ({p2:.1?}) killed {v2} at {d2:?} \
             (mid-pass {m2}), {incr} items exact; restore killed {v3} at {d3:?}, {restored} \
             items back ({attempts} attempts, {extra} second copies of items without \
             Message-ID); verify --read-data clean ({} blobs); \
             {:.1?}",
            report.blobs_read,
            t0.elapsed()
        );
    }
    eprintln!(
        "chaos: {trials} trials, {} kills ({mid} during a collector pass, {retried} restores \
         asked again), 0 items lost, 0 duplicated in the archive, {second_copies} second copies \
         restored of items without Message-ID, in {:.1?}",
        3 * trials,
        started.elapsed()
    );
}
