//! `mailvault bench`: a full backup, a no-change incremental, search and get latencies — and
//! restic over the very same files in the same run, with the ratios.
//!
//! Prints a table (or JSON with --json). Single-process mode runs here; the distributed mode
//! is measured by `ops/scripts/distributed.sh` (real NATS + Garage, one process per component).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use mailvault_ews_sim::{SimConfig, Simulator};
use mailvault_format::InitOptions;
use mailvault_mailgen::GenConfig;
use mailvault_ops::local::{LocalBackup, LocalEws};
use mailvault_proto::api::v1 as pb;
use serde::Serialize;

use super::backup::{open_index, pass, progress_bar};
use super::local::LocalApi;
use super::repo::RepoArgs;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A maildir-style corpus (<mailbox>/<folder>/…/<message file>); default: generated mail.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generated users / messages when no --corpus is given.
    #[arg(long, default_value_t = 12)]
    pub users: usize,
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Skip the restic comparison.
    #[arg(long)]
    pub no_restic: bool,
    /// Search and get requests to time.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub n: usize,
}

fn latency(mut v: Vec<Duration>) -> Latency {
    v.sort();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    Latency {
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        n: v.len(),
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Side {
    pub tool: String,
    pub files: u64,
    pub input_bytes: u64,
    pub backup_seconds: f64,
    pub items_per_second: f64,
    pub mb_per_second: f64,
    pub stored_bytes: u64,
    pub stored_ratio: f64,
    pub noop_incremental_seconds: f64,
    pub restore_seconds: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub corpus: String,
    pub mailvault: Side,
    pub restic: Option<Side>,
    pub search: Latency,
    pub get: Latency,
    /// mailvault / restic.
    pub speed_ratio: Option<f64>,
    pub stored_ratio: Option<f64>,
}

fn dir_stats(p: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    (files, bytes)
}

/// VmHWM of this process (it hosts the simulator too, so this is an upper bound).
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn run(a: BenchArgs, json: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => {
            let dir = tmp.path().join("corpus");
            let generated = mailvault_mailgen::generate(&GenConfig {
                seed: a.seed,
                users: a.users,
                messages: a.messages,
                ..GenConfig::default()
            });
            mailvault_mailgen::write_maildir(&generated, &dir)
                .context("writing the generated corpus")?;
            dir
        }
    };
    let (files, input_bytes) = dir_stats(&corpus);
    if files == 0 {
        bail!("corpus {} holds no files", corpus.display());
    }
    if !json {
        println!(
            "corpus {}: {files} messages, {}",
            corpus.display(),
            bytesize::ByteSize(input_bytes)
        );
    }

    // mailvault, single process, from an EWS simulator serving the corpus.
    let mut cfg = SimConfig::new("contoso.com");
    cfg.maildir = Some(corpus.clone());
    cfg.max_concurrent_per_account = 64;
    let sim = Simulator::start(cfg)
        .await
        .context("starting the EWS simulator")?;
    let repo_dir = tmp.path().join("repo");
    let state = tmp.path().join("state");
    let pass_file = tmp.path().join("passphrase");
    std::fs::write(&pass_file, "bench\n").context("writing passphrase")?;
    let repo_args = RepoArgs {
        repo: repo_dir.display().to_string(),
        passphrase_file: Some(pass_file.clone()),
    };
    let repo = super::repo::create(&repo_args).await?;
    let index = open_index(&state)?;
    let opts = |init: bool| {
        let mut o = LocalBackup::new(
            LocalEws::new(&sim.url(), "svc-mailvault", "secret"),
            sim.mailboxes(),
            repo_dir.clone(),
            b"bench".to_vec(),
            state.join("backup"),
        );
        if init {
            o.init = Some(InitOptions::default());
        }
        o
    };
    let bar = progress_bar(json, "mailvault full backup");
    let b2 = bar.clone();
    let t = Instant::now();
    let full = pass(opts(false), &repo, &index, move |n| {
        b2.set_message(format!("{n} items"))
    })
    .await;
    let full_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let full = full.context("full backup")?;
    let bar = progress_bar(json, "mailvault no-change incremental");
    let t = Instant::now();
    pass(opts(false), &repo, &index, |_| {})
        .await
        .context("incremental")?;
    let inc_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (_, stored) = dir_stats(&repo_dir);
    let mv = Side {
        tool: "mailvault (single process)".into(),
        files: full.backup.items as u64,
        input_bytes: full.backup.bytes_logical,
        backup_seconds: full_s,
        items_per_second: full.backup.items as f64 / full_s,
        mb_per_second: full.backup.bytes_logical as f64 / 1e6 / full_s,
        stored_bytes: stored,
        stored_ratio: stored as f64 / full.backup.bytes_logical.max(1) as f64,
        noop_incremental_seconds: inc_s,
        restore_seconds: None,
        peak_rss_mib: peak_rss_mib(),
    };

    // Search and get latencies through the API.
    repo.refresh().await.context("refreshing the repository")?;
    let local = LocalApi::start(repo, index.clone(), None).await?;
    let mut c = local.client.clone();
    let queries = [
        "has:attachment",
        "re",
        "after:2024-01-01",
        "is:unread",
        "\"patch\"",
        "from:linux",
        "subject:update OR subject:re",
        "-has:attachment folder:inbox",
    ];
    let mut search_t = Vec::new();
    let mut ids = Vec::new();
    for i in 0..a.requests {
        let q = queries[i % queries.len()];
        let t = Instant::now();
        let mut s = c
            .inner
            .search(c.request(pb::SearchRequest {
                query: q.into(),
                page_size: 50,
                limit: 50,
                ..Default::default()
            }))
            .await
            .with_context(|| format!("search {q}"))?
            .into_inner();
        while let Some(p) = s.next().await {
            let p = p.context("search")?;
            if ids.len() < a.requests {
                ids.extend(p.hits.into_iter().map(|h| h.id));
            }
        }
        search_t.push(t.elapsed());
    }
    let mut get_t = Vec::new();
    for id in ids.iter().take(a.requests) {
        let t = Instant::now();
        let mut s = c
            .inner
            .get_item(c.request(pb::GetItemRequest { id: id.clone() }))
            .await
            .context("get")?
            .into_inner();
        while let Some(chunk) = s.next().await {
            chunk.context("get")?;
        }
        get_t.push(t.elapsed());
    }
    local.shutdown().await?;
    sim.shutdown().await;

    let restic = if a.no_restic {
        None
    } else {
        Some(run_restic(&corpus, tmp.path(), json)?)
    };
    let report = Report {
        corpus: corpus.display().to_string(),
        speed_ratio: restic.as_ref().map(|r| mv.mb_per_second / r.mb_per_second),
        stored_ratio: restic
            .as_ref()
            .map(|r| mv.stored_bytes as f64 / r.stored_bytes.max(1) as f64),
        mailvault: mv,
        restic,
        search: latency(search_t),
        get: latency(get_t),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!();
    println!(
        "{:<28} {:>8} {:>10} {:>9} {:>9} {:>11} {:>8} {:>9} {:>9}",
        "tool", "items", "input", "backup s", "MB/s", "stored", "ratio", "noop s", "RSS MiB"
    );
    for s in std::iter::once(&r.mailvault).chain(r.restic.iter()) {
        println!(
            "{:<28} {:>8} {:>10} {:>9.1} {:>9.1} {:>11} {:>8.3} {:>9.1} {:>9}",
            s.tool,
            s.files,
            bytesize::ByteSize(s.input_bytes).to_string(),
            s.backup_seconds,
            s.mb_per_second,
            bytesize::ByteSize(s.stored_bytes).to_string(),
            s.stored_ratio,
            s.noop_incremental_seconds,
            s.peak_rss_mib
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    if let (Some(sp), Some(st)) = (r.speed_ratio, r.stored_ratio) {
        println!("mailvault / restic: speed {sp:.2}×, stored bytes {st:.2}×");
    }
    println!(
        "search p50/p95/p99 {:.1}/{:.1}/{:.1} ms   get p50/p95/p99 {:.1}/{:.1}/{:.1} ms  ({} requests each)",
        r.search.p50_ms,
        r.search.p95_ms,
        r.search.p99_ms,
        r.get.p50_ms,
        r.get.p95_ms,
        r.get.p99_ms,
        r.search.n
    );
}

/// Installs Debian's restic when it is missing.
fn ensure_restic() -> anyhow::Result<PathBuf> {
    for p in ["/usr/bin/restic", "/usr/local/bin/restic"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    eprintln!("restic is missing; installing Debian's package (apt-get install restic)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "restic"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok || !Path::new("/usr/bin/restic").exists() {
        bail!(
            "could not install restic: run `apt-get install restic` (as root), or pass --no-restic"
        );
    }
    Ok(PathBuf::from("/usr/bin/restic"))
}

/// Runs `restic` (under /usr/bin/time for its peak RSS when available); returns seconds and
/// the peak RSS in MiB.
fn timed(restic: &Path, args: &[&str], repo: &Path) -> anyhow::Result<(f64, Option<f64>)> {
    let gnu_time = Path::new("/usr/bin/time").exists();
    let rss_file = repo.with_extension("rss");
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg(restic);
        c
    } else {
        Command::new(restic)
    };
    cmd.args(args)
        .arg("-r")
        .arg(repo)
        .arg("--quiet")
        .env("RESTIC_PASSWORD", "bench");
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running restic {}", args.join(" ")))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "restic {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last()?.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0);
    Ok((secs, rss))
}

fn run_restic(corpus: &Path, tmp: &Path, json: bool) -> anyhow::Result<Side> {
    let restic = ensure_restic()?;
    let repo = tmp.join("restic-repo");
    let bar = progress_bar(json, "restic backup");
    timed(&restic, &["init"], &repo)?;
    let corpus_s = corpus.display().to_string();
    let (secs, rss) = timed(&restic, &["backup", &corpus_s], &repo)?;
    let (noop, _) = timed(&restic, &["backup", &corpus_s], &repo)?;
    let target = tmp.join("restic-restore");
    let target_s = target.display().to_string();
    let (restore, _) = timed(
        &restic,
        &["restore", "latest", "--target", &target_s],
        &repo,
    )?;
    bar.finish_and_clear();
    let (files, bytes) = dir_stats(corpus);
    let (_, stored) = dir_stats(&repo);
    Ok(Side {
        tool: "restic".into(),
        files,
        input_bytes: bytes,
        backup_seconds: secs,
        items_per_second: files as f64 / secs,
        mb_per_second: bytes as f64 / 1e6 / secs,
        stored_bytes: stored,
        stored_ratio: stored as f64 / bytes.max(1) as f64,
        noop_incremental_seconds: noop,
        restore_seconds: Some(restore),
        peak_rss_mib: rss,
    })
}
