//! The whole distributed pipeline over real servers: EWS simulator (generated mail, plus the
//! maildir corpus of `MAILVAULT_CORPUS` when set) → collector → nats-server JetStream → two
//! aggregator replicas sharing one durable consumer → Garage (S3) → the indexer service (event
//! consumer + gRPC API on loopback, the same `service::run` the binary runs) → restores through
//! the API → restore jobs over NATS → the collector's restore service → back into the simulator.
//! Every component connects to NATS as its own NKey user with the subject permissions of
//! `mailvault nats users`, so a permission the pipeline needs and lacks fails here.

mod common;

use common::{
    Client, DOMAIN, Multiset, PASS, PREFIX, archive_contents, diff, hash, now_ms, s3_config,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailvault_collector::ews::client::{HttpEws, HttpEwsConfig};
use mailvault_collector::restore::Restorer;
use mailvault_collector::restore_nats::{RestoreEdgeConfig, RestoreService};
use mailvault_collector::secret::Secret as EwsSecret;
use mailvault_collector::throttle::Backoff;
use mailvault_collector::{RunMode, run as collect};
use mailvault_ews_sim::{SimConfig, SimHandle, Simulator};
use mailvault_format::{BlobStore, Repository};
use mailvault_harness::Garage;
use mailvault_indexer::api::{Role, Tokens};
use mailvault_indexer::config as icfg;
use mailvault_mailgen::GenConfig;
use mailvault_proto::api::v1 as pb;
use mailvault_runtime::storage::S3Store;
use pb::archive_client::ArchiveClient;
use tokio_util::sync::CancellationToken;

fn http_ews(url: &str) -> HttpEws {
    HttpEws::new(
        HttpEwsConfig {
            url: url.to_owned(),
            username: "svc-mailvault".into(),
            password: EwsSecret::new("secret"),
            auth: mailvault_collector::ews::client::EwsAuth::Basic,
            server_version: "Exchange2016".into(),
            impersonation: true,
            ca_file: None,
            insecure_skip_verify: false,
            request_timeout: Duration::from_secs(30),
            per_server_concurrency: 4,
            per_account_concurrency: 2,
            backoff: Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(2000),
                max_retries: 8,
            },
        },
        Arc::new(mailvault_collector::metrics::Metrics::default()),
    )
    .expect("EWS client")
}

/// One simulated Exchange server with its collector source name.
struct Exchange {
    source: String,
    sim: SimHandle,
    config: mailvault_collector::config::Config,
}

impl Exchange {
    async fn start(
        source: &str,
        cfg: SimConfig,
        dir: &std::path::Path,
        nats: &str,
        nkey_file: &std::path::Path,
    ) -> Exchange {
        let sim = Simulator::start(cfg).await.expect("simulator");
        let pw = dir.join(format!("{source}-ews-password"));
        std::fs::write(&pw, "secret\n").expect("password file");
        let list = sim
            .mailboxes()
            .iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"
source = "{source}"
mailboxes = [{list}]
[ews]
url = "{}"
username = "svc-mailvault"
password_file = "{}"
impersonation = true
request_timeout_secs = 60
[limits]
per_server_concurrency = 6
per_account_concurrency = 2
mailbox_concurrency = 3
get_item_batch = 16
max_retries = 12
backoff_base_ms = 20
backoff_max_ms = 2000
max_in_flight_publishes = 64
[nats]
url = "{nats}"
nkey_file = "{}"
"#,
            sim.url(),
            pw.display(),
            nkey_file.display()
        );
        let config =
            mailvault_collector::config::Config::from_toml(&text).expect("collector config");
        Exchange {
            source: source.into(),
            sim,
            config,
        }
    }

    /// One collector pass (`--once`); panics unless it was clean.
    async fn collect(&self) {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let s = collect(self.config.clone(), RunMode::Once, rx)
            .await
            .expect("collector run");
        assert!(
            s.is_clean(),
            "collector pass of {} not clean: {s:?}",
            self.source
        );
    }

    /// (mailbox, folder path, content hash) of every item the simulator holds.
    fn contents(&self) -> Multiset {
        common::sim_contents(&self.sim)
    }

    fn folder(&self, mailbox: &str, path: &[String]) -> mailvault_ews_sim::FolderInfo {
        self.sim
            .folders(mailbox)
            .into_iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no folder {path:?} in {mailbox}"))
    }

    fn folder_hashes(&self, mailbox: &str, path: &[String]) -> BTreeMap<[u8; 32], usize> {
        let mut m = BTreeMap::new();
        for it in self.sim.items(&self.folder(mailbox, path).id) {
            *m.entry(hash(&it.mime)).or_default() += 1;
        }
        m
    }
}

/// Polls an (async) condition every 200 ms until it holds; fails after `limit`.
macro_rules! wait_for {
    ($what:expr, $limit:expr, $cond:expr) => {{
        let end = Instant::now() + $limit;
        loop {
            if $cond {
                break;
            }
            assert!(
                Instant::now() < end,
                "timed out after {:?} waiting for {}",
                $limit,
                $what
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_search_get_incremental_restore_verify_over_the_distributed_pipeline() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let nats = common::SecuredNats::start(tmp.path(), &["exch01", "exch02"]);
    let garage = Garage::start().expect("garage");
    let s3 = s3_config(&garage);
    let store: Arc<dyn BlobStore> = Arc::new(S3Store::connect(&s3).await.expect("s3 store"));
    Repository::init(
        store.clone(),
        PASS,
        mailvault_format::InitOptions {
            kdf: mailvault_format::KdfParams::fast_insecure(),
            ..Default::default()
        },
    )
    .await
    .expect("init repository");
    let pass_file = tmp.path().join("passphrase");
    std::fs::write(&pass_file, PASS).expect("passphrase file");

    // Exchange servers: generated mail always; the real corpus when MAILVAULT_CORPUS is set.
    let mut sim_cfg = SimConfig::new(DOMAIN);
    sim_cfg.generate = Some(GenConfig {
        seed: 77,
        domain: DOMAIN.into(),
        users: 5,
        messages: 60,
        huge_item_bytes: Some(900_000),
        ..GenConfig::default()
    });
    let gen_ex = Exchange::start(
        "exch01",
        sim_cfg,
        tmp.path(),
        &nats.server.url(),
        &nats.seed("collector-exch01"),
    )
    .await;
    let mut exchanges = vec![];
    match std::env::var_os("MAILVAULT_CORPUS").map(PathBuf::from) {
        Some(dir) => {
            let mut c = SimConfig::new("corpus.example");
            c.maildir = Some(dir.clone());
            let ex = Exchange::start(
                "exch02",
                c,
                tmp.path(),
                &nats.server.url(),
                &nats.seed("collector-exch02"),
            )
            .await;
            eprintln!(
                "MAILVAULT_CORPUS={}: second simulator with {} corpus items",
                dir.display(),
                ex.sim.total_items()
            );
            exchanges.push(ex);
        }
        None => eprintln!(
            "NOTE: MAILVAULT_CORPUS is unset — the corpus part is SKIPPED; only the generated-mail \
             Exchange runs (set MAILVAULT_CORPUS=/work/shared/corpus/dev to include it)"
        ),
    }

    // Two aggregator replicas sharing one durable consumer.
    let shutdown = CancellationToken::new();
    let mut aggregators = Vec::new();
    for _ in 0..2 {
        let mut c = mailvault_aggregator::Config::for_repository(
            &format!("s3://{}/{PREFIX}", garage.bucket()),
            pass_file.clone(),
        );
        c.nats.url = nats.server.url();
        c.nats.nkey_file = Some(nats.seed("aggregator"));
        c.batch.max_delay = Duration::from_millis(200);
        c.repository.refresh_interval = Duration::from_secs(1);
        c.validate().expect("aggregator config");
        aggregators.push(tokio::spawn(mailvault_aggregator::run_with_store(
            c,
            store.clone(),
            PASS,
            Arc::new(mailvault_aggregator::Metrics::default()),
            shutdown.clone(),
        )));
    }

    // The indexer service, exactly as the binary runs it.
    let tokens_file = tmp.path().join("tokens.toml");
    let mut tokens = Tokens::default();
    let token = tokens.issue("e2e", Role::Admin, None);
    std::fs::write(&tokens_file, tokens.to_toml()).expect("tokens file");
    let cfg = icfg::Config {
        nats: icfg::NatsConfig {
            url: nats.server.url(),
            nkey_file: Some(nats.seed("indexer")),
            restore_timeout: Duration::from_secs(60),
            ..Default::default()
        },
        repository: icfg::RepositoryConfig {
            url: format!("s3://{}/{PREFIX}", garage.bucket()),
            passphrase_file: pass_file.clone(),
            refresh_interval: Duration::from_millis(500),
        },
        index: icfg::IndexConfig {
            dir: tmp.path().join("index"),
            batch: 256,
            wait: Duration::from_millis(500),
            idle: Duration::from_millis(100),
            shutdown_deadline: Duration::from_secs(25),
            journal_mailboxes: None,
        },
        api: icfg::ApiConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tokens_file,
            tls_cert: None,
            tls_key: None,
            max_streams_per_token: 16,
            stream_idle_timeout: Duration::from_secs(60),
            export_threads: 4,
            allow_plaintext: false,
        },
        s3: Some(s3.clone()),
        metrics: Default::default(),
        telemetry: Default::default(),
    };
    let mut problems = Vec::new();
    mailvault_runtime::config::Validate::validate(&cfg, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let indexer = tokio::spawn(mailvault_indexer::service::run(
        cfg,
        shutdown.clone(),
        Some(ready_tx),
    ));
    let addr = ready_rx.await.expect("indexer ready");
    let mut c = Client {
        c: ArchiveClient::connect(format!("http://{addr}"))
            .await
            .expect("connect API")
            .max_decoding_message_size(64 << 20),
        token,
    };

    // The collectors' restore edges (daemon mode serves them; `--once` passes do not).
    let (stop_restore, restore_rx) = tokio::sync::watch::channel(false);
    let mut restore_services = Vec::new();
    for ex in std::iter::once(&gen_ex).chain(exchanges.iter()) {
        let nc = mailvault_runtime::nats::connect(
            mailvault_runtime::nats::Component::Collector,
            &ex.source,
            &nats.server.url(),
            &mailvault_runtime::nats::NatsAuth {
                nkey_file: Some(nats.seed(&format!("collector-{}", ex.source))),
                ..Default::default()
            },
        )
        .await
        .expect("collector's NATS user");
        let svc = RestoreService::new(
            nc,
            RestoreEdgeConfig::new(&ex.source),
            Arc::new(Restorer::new(Arc::new(http_ews(&ex.sim.url())))),
        )
        .await
        .expect("restore service");
        let rx = restore_rx.clone();
        restore_services.push(tokio::spawn(async move { svc.run(rx).await }));
    }

    // 1. Full backup: every item is found, byte-identical, in its folder.
    let all = || std::iter::once(&gen_ex).chain(exchanges.iter());
    for ex in all() {
        ex.collect().await;
    }
    let expected: Multiset = all().flat_map(|e| e.contents()).collect();
    let expected_n: usize = expected.values().sum();
    let n = expected_n as u64;
    wait_for!(
        "every item indexed",
        Duration::from_secs(120),
        c.total("").await == n
    );
    let t_backup = started.elapsed();
    let (got, hits) = archive_contents(&mut c).await;
    assert!(
        got == expected,
        "archive differs from the simulators:\n{}",
        diff(&expected, &got)
    );
    eprintln!(
        "full backup of {expected_n} items indexed and checked byte for byte after {t_backup:.1?}"
    );

    // 2. Incremental: change, delete, mark read in one en-US mailbox's Inbox.
    let sim = &gen_ex.sim;
    let mailbox = sim
        .mailboxes()
        .into_iter()
        .find(|m| {
            sim.mailbox_locale(m).as_deref() == Some("en-US")
                && sim
                    .distinguished_folder_id(m, "inbox")
                    .is_some_and(|f| sim.items(&f).len() >= 3)
        })
        .expect("an en-US mailbox with 3+ inbox items");
    let inbox_id = sim
        .distinguished_folder_id(&mailbox, "inbox")
        .expect("inbox");
    let inbox = sim.items(&inbox_id);
    let hit_of = |h: &[u8; 32]| {
        hits.iter()
            .find(|(x, hh)| x.mailbox.eq_ignore_ascii_case(&mailbox) && hh == h)
            .map(|(x, _)| x.clone())
            .expect("hit of a simulator item")
    };
    let (changed, deleted, flagged) = (&inbox[0], &inbox[1], &inbox[2]);
    let deleted_hit = hit_of(&hash(&deleted.mime));
    let flagged_hit = hit_of(&hash(&flagged.mime));
    let new_mime = format!(
        "From: Alice <alice@{DOMAIN}>\r\nTo: {mailbox}\r\nSubject: zebracorn revised\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <zebracorn@{DOMAIN}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe revised text.\r\n"
    )
    .into_bytes();
    let t_before = now_ms();
    sim.change_item(&changed.id, &new_mime).expect("change");
    sim.delete_item(&deleted.id).expect("delete");
    sim.set_read(&flagged.id, !flagged.is_read)
        .expect("set read");
    gen_ex.collect().await;
    let q_deleted = format!("mailbox:{mailbox} is:deleted");
    wait_for!(
        "incremental indexed",
        Duration::from_secs(60),
        c.total("zebracorn").await == 1 && c.total(&q_deleted).await == 1
    );
    let z = c.search("zebracorn", 0).await;
    assert_eq!(
        c.get(&z[0].id).await,
        new_mime,
        "the new version, byte for byte"
    );
    let d = c.search(&q_deleted, 0).await;
    assert_eq!(
        d[0].id, deleted_hit.id,
        "the deleted item is found by is:deleted"
    );
    assert!(d[0].deleted && d[0].deleted_unix_ms >= t_before);
    let inbox_path = deleted_hit.folder_path.clone();
    let count_in = |fs: &[pb::Folder]| {
        fs.iter()
            .find(|f| f.path == inbox_path)
            .map(|f| f.items)
            .unwrap_or(0)
    };
    let before = c.folders(&mailbox, t_before).await;
    let now = c.folders(&mailbox, 0).await;
    assert_eq!(
        count_in(&before),
        count_in(&now) + 1,
        "as of before the delete, the inbox still holds it"
    );
    let as_of = c.search(&format!("mailbox:{mailbox}"), t_before).await;
    assert!(
        as_of.iter().any(|h| h.id == deleted_hit.id),
        "as-of search shows the deleted item"
    );
    let want_read = !flagged.is_read;
    wait_for!(
        "read flag indexed",
        Duration::from_secs(30),
        c.search(&format!("mailbox:{mailbox}"), 0)
            .await
            .iter()
            .any(|h| h.id == flagged_hit.id && h.is_read == want_read)
    );
    // Whole archive again equals the simulators after the incremental.
    let expected: Multiset = all().flat_map(|e| e.contents()).collect();
    let (got, _) = archive_contents(&mut c).await;
    assert!(
        got == expected,
        "after the incremental:\n{}",
        diff(&expected, &got)
    );

    eprintln!(
        "incremental (change, delete, read flag) checked at {:.1?}",
        started.elapsed()
    );

    // 3. Delete a whole folder, incremental, restore it as of before the delete.
    let (fmb, fpath) = {
        let mut best = None;
        for mb in sim.mailboxes() {
            for f in sim.folders(&mb) {
                if f.total >= 3 && f.distinguished == Some("sentitems") {
                    best = Some((mb.clone(), f.path.clone()));
                }
            }
        }
        best.expect("a Sent Items folder with 3+ items")
    };
    let original = gen_ex.folder_hashes(&fmb, &fpath);
    let fcount: usize = original.values().sum();
    let t_before_folder = now_ms();
    for it in sim.items(&gen_ex.folder(&fmb, &fpath).id) {
        sim.delete_item(&it.id).expect("delete");
    }
    gen_ex.collect().await;
    let q = format!("mailbox:{fmb} is:deleted");
    // The earlier deleted item counts too when it is the same mailbox.
    let want = fcount as u64 + u64::from(fmb.eq_ignore_ascii_case(&mailbox));
    wait_for!(
        "folder deletes indexed",
        Duration::from_secs(60),
        c.total(&q).await == want
    );
    let results = c
        .restore(pb::RestoreRequest {
            what: Some(pb::restore_request::What::Folder(pb::FolderSelector {
                mailbox: fmb.clone(),
                path: fpath.clone(),
            })),
            as_of_unix_ms: t_before_folder,
            ..Default::default()
        })
        .await;
    assert_eq!(results.len(), fcount, "one result per item: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.outcome == pb::Outcome::Created as i32),
        "{results:?}"
    );
    assert_eq!(
        gen_ex.folder_hashes(&fmb, &fpath),
        original,
        "the folder is back, byte for byte"
    );
    // The same restore from the CLI through the API (`mailvault restore --server`): every
    // item is there already, so collision `skip` leaves the folder as it is.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{}\n", c.token)).expect("token file");
    let cli = std::process::Command::new(common::binary("mailvault"))
        .args([
            "restore",
            "--json",
            "--server",
            &format!("http://{addr}"),
            "--token-file",
        ])
        .arg(&token_file)
        .args([
            "--folder",
            &format!("{fmb}:{}", fpath.join("/")),
            "--as-of",
            &t_before_folder.to_string(),
            "--collision",
            "skip",
        ])
        .output()
        .expect("run mailvault restore");
    assert!(
        cli.status.success(),
        "mailvault restore --server: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("summary JSON");
    assert_eq!(summary["skipped"], fcount, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        gen_ex.folder_hashes(&fmb, &fpath),
        original,
        "a second restore with skip writes nothing"
    );
    // The restored copies are new items to Exchange: the next pass backs them up.
    gen_ex.collect().await;
    let n_now: u64 = all().map(|e| e.sim.total_items() as u64).sum();
    wait_for!(
        "restored items backed up",
        Duration::from_secs(60),
        c.total("").await == n_now
    );

    eprintln!("folder restore checked at {:.1?}", started.elapsed());

    // 4. A whole mailbox into another, localized mailbox.
    let target = sim
        .mailboxes()
        .into_iter()
        .find(|m| sim.mailbox_locale(m).is_some_and(|l| l != "en-US"))
        .expect("a localized mailbox");
    let source_mb = mailbox.clone();
    let source_items: Vec<(mailvault_ews_sim::FolderInfo, Vec<[u8; 32]>)> = sim
        .folders(&source_mb)
        .into_iter()
        .map(|f| {
            let h = sim.items(&f.id).iter().map(|i| hash(&i.mime)).collect();
            (f, h)
        })
        .collect();
    let target_before = gen_ex_contents_of(&gen_ex, &target);
    let results = c
        .restore(pb::RestoreRequest {
            what: Some(pb::restore_request::What::Mailbox(source_mb.clone())),
            to_mailbox: target.clone(),
            collision: pb::Collision::Copy as i32,
            ..Default::default()
        })
        .await;
    let source_n: usize = source_items.iter().map(|(_, h)| h.len()).sum();
    assert_eq!(results.len(), source_n, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.outcome != pb::Outcome::Failed as i32),
        "{results:?}"
    );
    // Each source folder's items land in the target's folder of the same role and sub-path.
    let top_role = |mb: &str, name: &str| {
        sim.folders(mb)
            .into_iter()
            .find(|f| f.path.len() == 1 && f.path[0] == name)
            .and_then(|f| f.distinguished)
    };
    let target_after = gen_ex_contents_of(&gen_ex, &target);
    for (f, hashes) in &source_items {
        if hashes.is_empty() {
            continue;
        }
        let mut tpath = f.path.clone();
        if let Some(role) = top_role(&source_mb, &f.path[0]) {
            let tf = sim
                .folders(&target)
                .into_iter()
                .find(|x| x.distinguished == Some(role))
                .expect("target well-known folder");
            tpath[0] = tf.path[0].clone();
        }
        for h in hashes {
            let after = target_after.get(&(tpath.clone(), *h)).copied().unwrap_or(0);
            let before = target_before
                .get(&(tpath.clone(), *h))
                .copied()
                .unwrap_or(0);
            assert!(
                after > before,
                "item of {source_mb} {:?} not restored into {target} {tpath:?}",
                f.path
            );
        }
    }

    eprintln!("mailbox restore checked at {:.1?}", started.elapsed());

    // 5. Verify the repository: every byte read on generated mail; with the corpus the
    //    structural check only — GetItem above already read and authenticated every item's
    //    chunks, and a debug-build read-everything pass over the corpus takes minutes.
    let repo = Repository::open(store.clone(), PASS)
        .await
        .expect("open repo");
    let read_data = std::env::var_os("MAILVAULT_CORPUS").is_none();
    let report = mailvault_format::verify(&repo, mailvault_format::VerifyOptions { read_data })
        .await
        .expect("verify");
    assert!(report.is_clean(), "verify: {:?}", report.problems);

    // Clean shutdown of everything.
    shutdown.cancel();
    let _ = stop_restore.send(true);
    indexer
        .await
        .expect("indexer task")
        .expect("indexer service");
    for a in aggregators {
        a.await.expect("aggregator task").expect("aggregator");
    }
    for r in restore_services {
        r.await.expect("restore task").expect("restore service");
    }
    // Each component did all of the above as its own NATS user: nothing it needed was denied.
    let denied = nats.violations();
    assert!(denied.is_empty(), "NATS denied:\n{}", denied.join("\n"));
    eprintln!(
        "e2e: {expected_n} items, full + 2 incrementals, folder restore ({fcount} items), mailbox restore ({source_n} items into {target}), verify ({} blobs read) in {:.1?}",
        report.blobs_read,
        started.elapsed()
    );
}

fn gen_ex_contents_of(ex: &Exchange, mailbox: &str) -> BTreeMap<(Vec<String>, [u8; 32]), usize> {
    let mut m = BTreeMap::new();
    for f in ex.sim.folders(mailbox) {
        for it in ex.sim.items(&f.id) {
            *m.entry((f.path.clone(), hash(&it.mime))).or_default() += 1;
        }
    }
    m
}
