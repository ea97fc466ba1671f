//! The real `mailvault backup` binary SIGKILLed mid-pass (after some folder checkpointed, so
//! items are durable in the repository and their folders will not bring them again), then run
//! again: every item the mailboxes hold is searchable, each exactly once, and the search the
//! user runs sees what the repository holds (issue 26, item 2: once only a manual `reindex`
//! made such items searchable).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailvault_collector::checkpoint_file::FileCheckpointStore;
use mailvault_collector::sync::CheckpointStore as _;
use mailvault_ews_sim::{Faults, SimConfig, SimHandle, Simulator};
use mailvault_mailgen::GenConfig;

fn mailvault(args: &[String]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mailvault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Paths {
    repo: String,
    passphrase: String,
    state: String,
    ews_password: String,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        let s = |p: &str| dir.join(p).to_str().expect("utf8 path").to_owned();
        let p = Paths {
            repo: s("repo"),
            passphrase: s("passphrase"),
            state: s("state"),
            ews_password: s("ews-password"),
        };
        std::fs::write(&p.passphrase, "crash safety passphrase\n").expect("passphrase");
        std::fs::write(&p.ews_password, "secret\n").expect("ews password");
        p
    }

    fn repo_args(&self) -> Vec<String> {
        [
            "--repo",
            &self.repo,
            "--passphrase-file",
            &self.passphrase,
            "--state-dir",
            &self.state,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn backup_args(&self, sim: &SimHandle) -> Vec<String> {
        let mut a: Vec<String> = ["backup", "--once", "--init", "--auth", "basic"]
            .map(str::to_owned)
            .to_vec();
        a.extend(self.repo_args());
        a.extend(
            [
                "--ews",
                &sim.url(),
                "--user",
                "svc-mailvault",
                "--password-file",
                &self.ews_password,
                "--mailboxes",
                &sim.mailboxes().join(","),
            ]
            .map(str::to_owned),
        );
        a
    }
}

async fn item_folder_checkpointed(sim: &SimHandle, state: &Path) -> bool {
    let Ok(store) = FileCheckpointStore::open(state.join("backup/checkpoints")) else {
        return false;
    };
    for mb in sim.mailboxes() {
        for f in sim.folders(&mb) {
            if !sim.items(&f.id).is_empty()
                && matches!(store.get_folder(&mb, &f.id).await, Ok(Some(_)))
            {
                return true;
            }
        }
    }
    false
}

fn kill9(mut child: Child) {
    // `Child::kill` is SIGKILL on Unix: no handler runs, nothing is flushed.
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "killed, not exited: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backup_then_every_item_is_searchable_once() {
    let mut sc = SimConfig::new("contoso.com");
    sc.generate = Some(GenConfig {
        seed: 26,
        domain: "contoso.com".into(),
        users: 5,
        messages: 400,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sc).await.expect("simulator");
    // Slow enough that a pass is still running when the first folder checkpoints.
    sim.set_faults(Faults {
        latency: Some(Duration::from_millis(3)),
        ..Faults::default()
    });
    let total = sim.total_items();
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths::new(dir.path());
    let state = Path::new(&paths.state).to_path_buf();

    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(paths.backup_args(&sim))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mailvault backup");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !item_folder_checkpointed(&sim, &state).await {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the pass ended before any folder checkpointed"
        );
        assert!(Instant::now() < deadline, "no folder checkpoint in 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the pass ended before it could be killed"
    );
    kill9(child);
    let fetched = sim.stats().items_fetched;
    eprintln!("killed after {fetched} of {total} items were fetched");
    assert!(fetched < total as u64, "killed mid-pass");

    sim.set_faults(Faults::default());
    let (code, out, err) = tokio::task::spawn_blocking({
        let args = paths.backup_args(&sim);
        move || mailvault(&args)
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "second pass: {err}\n{out}");

    let mut args: Vec<String> = ["search", "--json", "--limit", "1000000"]
        .map(str::to_owned)
        .to_vec();
    args.extend(paths.repo_args());
    args.push(String::new());
    let (code, out, err) = tokio::task::spawn_blocking(move || mailvault(&args))
        .await
        .expect("join");
    assert_eq!(code, 0, "search: {err}");
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("hit JSON");
            v["id"].as_str().expect("id").to_owned()
        })
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an item found twice");
    assert_eq!(
        ids.len(),
        total,
        "every item the mailboxes hold is searchable after the crash and a new pass"
    );
}

/// A pass in which every mailbox fails (here: a wrong EWS password) is not a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_backs_up_nothing_is_not_a_success() {
    let mut sc = SimConfig::new("contoso.com");
    sc.generate = Some(GenConfig {
        seed: 27,
        domain: "contoso.com".into(),
        users: 2,
        messages: 10,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sc).await.expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = Paths::new(dir.path());
    std::fs::write(&paths.ews_password, "not the password\n").expect("password");
    let args = paths.backup_args(&sim);
    let (code, out, err) = tokio::task::spawn_blocking(move || mailvault(&args))
        .await
        .expect("join");
    assert_eq!(code, 5, "{out}\n{err}");
    let failed = format!("{} mailboxes and 0 folders failed", sim.mailboxes().len());
    assert!(out.contains(&failed), "{out}");
    // Right password: the same command succeeds.
    std::fs::write(&paths.ews_password, "secret\n").expect("password");
    let args = paths.backup_args(&sim);
    let (code, out, err) = tokio::task::spawn_blocking(move || mailvault(&args))
        .await
        .expect("join");
    assert_eq!(code, 0, "{out}\n{err}");
}
