//! `mailvault bench`: a full backup, a no-change incremental, search and get latencies — and
//! restic over the very same files in the same run, with the ratios.
//!
//! Prints a table (or JSON with --json). `--mode single` runs the single-process install in
//! this process; `--mode distributed` runs every component as its own process over a real
//! nats-server and Garage (see [`super::bench_dist`]); `--mode both` runs one after the other
//! over the same simulated Exchange.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use mailvault_ews_sim::{SimConfig, Simulator};
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
    /// Which install to measure: single (one process), distributed (every component its own
    /// process over real NATS + Garage; needs `cargo build --release --bins`), or both.
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Single,
    Distributed,
    Both,
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
    /// CPU seconds (user + system) the full backup took, over every process of the tool
    /// (single process: including the EWS simulator). On a shared machine this is steadier
    /// than wall time.
    pub backup_cpu_seconds: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub side: Side,
    pub search: Latency,
    pub get: Latency,
    /// Peak RSS (MiB) of every process of the run, by name.
    pub processes: std::collections::BTreeMap<String, f64>,
    /// CPU seconds of every process during the full backup, by name (distributed runs).
    pub backup_cpu: std::collections::BTreeMap<String, f64>,
    /// This run / restic.
    pub speed_ratio: Option<f64>,
    pub stored_ratio: Option<f64>,
    /// MB backed up per CPU-second, this run / restic: above 1, a core does more here.
    pub cpu_efficiency_ratio: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub corpus: String,
    pub runs: Vec<Run>,
    pub restic: Option<Side>,
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
    peak_rss_of("/proc/self/status")
}

/// CPU seconds (user + system) of a process so far, from `/proc/<pid>/stat` ("self" works).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    // Linux reports these in USER_HZ ticks, 100 per second on every architecture.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces): utime and stime
    // are the 12th and 13th.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SECOND)
}

/// VmHWM (peak resident set) from a `/proc/<pid>/status` file, in MiB.
pub fn peak_rss_of(status: &str) -> Option<f64> {
    let s = std::fs::read_to_string(status).ok()?;
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

    // Exchange: an EWS simulator serving the corpus, shared by both modes (neither changes it).
    let mut cfg = SimConfig::new("contoso.com");
    cfg.maildir = Some(corpus.clone());
    cfg.max_concurrent_per_account = 64;
    let sim = Simulator::start(cfg)
        .await
        .context("starting the EWS simulator")?;
    let mut runs = Vec::new();
    if a.mode != Mode::Distributed {
        runs.push(single(&a, &sim.url(), &sim.mailboxes(), tmp.path(), json).await?);
    }
    if a.mode != Mode::Single {
        let bar = progress_bar(json, "mailvault distributed");
        let b2 = bar.clone();
        let d = super::bench_dist::run(
            &sim.url(),
            &sim.mailboxes(),
            tmp.path(),
            a.requests,
            move |m| b2.set_message(m.to_owned()),
        )
        .await;
        bar.finish_and_clear();
        let d = d.context("distributed run")?;
        runs.push(Run {
            side: d.side,
            search: d.search,
            get: d.get,
            processes: d.processes,
            backup_cpu: d.backup_cpu,
            ..Default::default()
        });
    }
    sim.shutdown().await;

    let restic = if a.no_restic {
        None
    } else {
        Some(run_restic(&corpus, tmp.path(), json)?)
    };
    if let Some(r) = &restic {
        for run in &mut runs {
            run.speed_ratio = Some(run.side.mb_per_second / r.mb_per_second);
            let per_cpu = |s: &Side| {
                s.backup_cpu_seconds
                    .map(|c| s.input_bytes as f64 / c.max(1e-3))
            };
            run.cpu_efficiency_ratio = per_cpu(&run.side)
                .zip(per_cpu(r))
                .map(|(ours, theirs)| ours / theirs);
            run.stored_ratio = Some(run.side.stored_bytes as f64 / r.stored_bytes.max(1) as f64);
        }
    }
    let report = Report {
        corpus: corpus.display().to_string(),
        runs,
        restic,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The single-process install over a local directory repository.
async fn single(
    a: &BenchArgs,
    ews_url: &str,
    mailboxes: &[String],
    tmp: &Path,
    json: bool,
) -> anyhow::Result<Run> {
    let repo_dir = tmp.join("repo");
    let state = tmp.join("state");
    let pass_file = tmp.join("passphrase");
    std::fs::write(&pass_file, "bench\n").context("writing passphrase")?;
    let repo_args = RepoArgs {
        repo: repo_dir.display().to_string(),
        passphrase_file: Some(pass_file.clone()),
        s3: Default::default(),
    };
    let repo = super::repo::create(&repo_args).await?;
    let index = open_index(&state)?;
    let opts = || {
        LocalBackup::new(
            LocalEws::new(ews_url, "svc-mailvault", "secret"),
            mailboxes.to_vec(),
            repo_dir.clone(),
            b"bench".to_vec(),
            state.join("backup"),
        )
    };
    let bar = progress_bar(json, "mailvault full backup");
    let b2 = bar.clone();
    let cpu_before = cpu_seconds_of("self");
    let t = Instant::now();
    let full = pass(opts(), &repo, &index, move |n| {
        b2.set_message(format!("{n} items"))
    })
    .await;
    let full_s = t.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(cpu_seconds_of("self")).map(|(a, b)| b - a);
    bar.finish_and_clear();
    let full = full.context("full backup")?;
    let bar = progress_bar(json, "mailvault no-change incremental");
    let t = Instant::now();
    pass(opts(), &repo, &index, |_| {})
        .await
        .context("incremental")?;
    let inc_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (_, stored) = dir_stats(&repo_dir);
    let side = Side {
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
        backup_cpu_seconds: cpu,
    };

    repo.refresh().await.context("refreshing the repository")?;
    let local = LocalApi::start(repo, index.clone(), None).await?;
    let mut c = local.client.clone();
    let (search, get) = api_latencies(&mut c, a.requests).await?;
    local.shutdown().await?;
    let mut processes = std::collections::BTreeMap::new();
    if let Some(m) = side.peak_rss_mib {
        processes.insert("mailvault (incl. the simulator)".to_owned(), m);
    }
    Ok(Run {
        side,
        search,
        get,
        processes,
        ..Default::default()
    })
}

/// Search latencies over a fixed query mix, then GetItem latencies over the hits (whole MIME
/// streamed), both through the gRPC API.
pub async fn api_latencies(
    c: &mut super::client::Client,
    requests: usize,
) -> anyhow::Result<(Latency, Latency)> {
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
    for i in 0..requests {
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
            if ids.len() < requests {
                ids.extend(p.hits.into_iter().map(|h| h.id));
            }
        }
        search_t.push(t.elapsed());
    }
    let mut get_t = Vec::new();
    for id in ids.iter().take(requests) {
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
    Ok((latency(search_t), latency(get_t)))
}

fn print_table(r: &Report) {
    println!();
    println!(
        "{:<28} {:>8} {:>10} {:>9} {:>9} {:>9} {:>11} {:>8} {:>9} {:>9}",
        "tool",
        "items",
        "input",
        "backup s",
        "CPU s",
        "MB/s",
        "stored",
        "ratio",
        "noop s",
        "RSS MiB"
    );
    for s in r.runs.iter().map(|r| &r.side).chain(r.restic.iter()) {
        println!(
            "{:<28} {:>8} {:>10} {:>9.1} {:>9} {:>9.1} {:>11} {:>8.3} {:>9.1} {:>9}",
            s.tool,
            s.files,
            bytesize::ByteSize(s.input_bytes).to_string(),
            s.backup_seconds,
            s.backup_cpu_seconds
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            s.mb_per_second,
            bytesize::ByteSize(s.stored_bytes).to_string(),
            s.stored_ratio,
            s.noop_incremental_seconds,
            s.peak_rss_mib
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    for run in &r.runs {
        println!();
        println!("{}:", run.side.tool);
        if let (Some(sp), Some(st)) = (run.speed_ratio, run.stored_ratio) {
            println!("  / restic: speed {sp:.2}×, stored bytes {st:.2}×");
        }
        if let Some(c) = run.cpu_efficiency_ratio {
            println!("  / restic: MB per CPU-second {c:.2}×");
        }
        println!(
            "  search p50/p95/p99 {:.1}/{:.1}/{:.1} ms   get p50/p95/p99 {:.1}/{:.1}/{:.1} ms  ({} requests each)",
            run.search.p50_ms,
            run.search.p95_ms,
            run.search.p99_ms,
            run.get.p50_ms,
            run.get.p95_ms,
            run.get.p99_ms,
            run.search.n
        );
        print_by_process("peak RSS MiB", &run.processes, 0);
        print_by_process("backup CPU s", &run.backup_cpu, 1);
    }
}

/// One line `label: name value, …`, nothing when there is no process.
fn print_by_process(
    label: &str,
    values: &std::collections::BTreeMap<String, f64>,
    decimals: usize,
) {
    if values.is_empty() {
        return;
    }
    let parts: Vec<String> = values
        .iter()
        .map(|(n, v)| format!("{n} {v:.decimals$}"))
        .collect();
    println!("  {label}: {}", parts.join(", "));
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

/// What one timed restic command took.
struct Timed {
    seconds: f64,
    peak_rss_mib: Option<f64>,
    cpu_seconds: Option<f64>,
}

/// Runs `restic` (under /usr/bin/time for its peak RSS and CPU time when available).
fn timed(restic: &Path, args: &[&str], repo: &Path) -> anyhow::Result<Timed> {
    let gnu_time = Path::new("/usr/bin/time").exists();
    let rss_file = repo.with_extension("rss");
    let mut cmd = if gnu_time {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f")
            .arg("%M %U %S")
            .arg("-o")
            .arg(&rss_file)
            .arg(restic);
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
    let report = std::fs::read_to_string(&rss_file).unwrap_or_default();
    let fields: Vec<f64> = report
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Ok(Timed {
        seconds: secs,
        peak_rss_mib: fields.first().map(|kib| kib / 1024.0),
        cpu_seconds: (fields.len() == 3).then(|| fields[1] + fields[2]),
    })
}

fn run_restic(corpus: &Path, tmp: &Path, json: bool) -> anyhow::Result<Side> {
    let restic = ensure_restic()?;
    let repo = tmp.join("restic-repo");
    let bar = progress_bar(json, "restic backup");
    timed(&restic, &["init"], &repo)?;
    let corpus_s = corpus.display().to_string();
    let full = timed(&restic, &["backup", &corpus_s], &repo)?;
    let secs = full.seconds;
    let noop = timed(&restic, &["backup", &corpus_s], &repo)?.seconds;
    let target = tmp.join("restic-restore");
    let target_s = target.display().to_string();
    let restore = timed(
        &restic,
        &["restore", "latest", "--target", &target_s],
        &repo,
    )?
    .seconds;
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
        peak_rss_mib: full.peak_rss_mib,
        backup_cpu_seconds: full.cpu_seconds,
    })
}
