//! The distributed half of `mailvault bench`: every component its own process on this machine,
//! talking through a real nats-server and a real Garage (S3), exactly as a deployment does.
//!
//! nats-server + Garage (started by `mailvault-harness`) ─ the EWS simulator (in the bench
//! process: it stands in for Exchange) ─ one `mailvault-collector` ─ two `mailvault-aggregator`
//! replicas ─ one `mailvault-indexer` (event consumer + gRPC API). The full backup is timed
//! from the collector's start until every captured item is searchable through the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use mailvault_harness::{Garage, NatsServer, free_port};
use mailvault_proto::api::v1 as pb;

use super::bench::{Latency, Side, api_latencies, peak_rss_of};
use super::client::Client;
use super::repo::{RepoArgs, S3Args};

/// What a distributed run measured.
pub struct DistRun {
    pub side: Side,
    pub search: Latency,
    pub get: Latency,
    /// Peak resident memory of every process, by name.
    pub processes: BTreeMap<String, f64>,
    /// CPU seconds of every process during the full backup, by name.
    pub backup_cpu: BTreeMap<String, f64>,
}

/// Child processes, killed on drop; a sampler thread records each one's peak RSS while it runs.
struct Procs {
    children: Vec<(String, Child)>,
    peaks: Arc<Mutex<BTreeMap<String, f64>>>,
    /// CPU seconds by pid, as last read (a process that exited keeps its last reading).
    cpu: Arc<Mutex<BTreeMap<u32, f64>>>,
    pids: Arc<Mutex<Vec<(String, u32)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Procs {
    fn new() -> Self {
        let p = Self {
            children: Vec::new(),
            peaks: Arc::default(),
            cpu: Arc::default(),
            pids: Arc::default(),
            stop: Arc::default(),
        };
        let (peaks, pids, stop) = (p.peaks.clone(), p.pids.clone(), p.stop.clone());
        let cpu = p.cpu.clone();
        // VmHWM only grows, so the last value read before a process exits is its peak.
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let list = pids.lock().map(|l| l.clone()).unwrap_or_default();
                for (name, pid) in list {
                    if let Some(c) = super::bench::cpu_seconds_of(&pid.to_string())
                        && let Ok(mut all) = cpu.lock()
                    {
                        all.insert(pid, c);
                    }
                    if let Some(m) = peak_rss_of(&format!("/proc/{pid}/status"))
                        && let Ok(mut p) = peaks.lock()
                    {
                        let e = p.entry(name).or_insert(0.0);
                        *e = e.max(m);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        p
    }

    fn watch(&self, name: &str, pid: u32) {
        if let Ok(mut l) = self.pids.lock() {
            l.push((name.to_owned(), pid));
        }
    }

    fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
        let out = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.watch(name, pid);
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// SIGTERM-free stop: the bench does not care about graceful shutdown, only about peaks.
    fn kill_all(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// CPU seconds used so far by every watched process, running or exited (those that exited
    /// count up to the sampler's last reading, at most 50 ms before they ended).
    fn cpu_total(&self) -> f64 {
        self.cpu_by_name().values().sum()
    }

    /// [`Procs::cpu_total`] by process name (runs of one name add up).
    fn cpu_by_name(&self) -> BTreeMap<String, f64> {
        let list = self.pids.lock().map(|l| l.clone()).unwrap_or_default();
        let Ok(mut all) = self.cpu.lock() else {
            return BTreeMap::new();
        };
        let mut by_name = BTreeMap::new();
        for (name, pid) in list {
            if let Some(c) = super::bench::cpu_seconds_of(&pid.to_string()) {
                all.insert(pid, c);
            }
            *by_name.entry(name).or_insert(0.0) += all.get(&pid).copied().unwrap_or(0.0);
        }
        by_name
    }

    fn peaks(&self) -> BTreeMap<String, f64> {
        self.peaks.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The component binaries, next to this executable (`cargo build --release --bins` puts them
/// there).
fn component(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "the distributed benchmark runs {name} as its own process, but {} does not exist: \
             build every binary first (`cargo build --release --bins`)",
            p.display()
        );
    }
    Ok(p)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Total hits of a query through the API.
async fn total(c: &mut Client, query: &str) -> anyhow::Result<u64> {
    let mut s = c
        .inner
        .search(c.request(pb::SearchRequest {
            query: query.into(),
            page_size: 1,
            limit: 1,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(p) = s.next().await {
        n = n.max(p?.total);
    }
    Ok(n)
}

/// Runs the collector once to completion; returns the items it captured.
fn collect_once(procs: &mut Procs, bin: &Path, config: &Path, log: &Path) -> anyhow::Result<u64> {
    let out = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("--once")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(out)
        .spawn()
        .context("starting mailvault-collector")?;
    procs.watch("mailvault-collector", child.id());
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        use std::io::Read as _;
        s.read_to_string(&mut stdout)
            .context("reading the collector's summary")?;
    }
    // Until reaped, an exited process still shows its final CPU times.
    procs.cpu_total();
    let status = child.wait().context("waiting for the collector")?;
    if !status.success() {
        bail!(
            "mailvault-collector --once failed ({status}); log: {}\n{stdout}",
            log.display()
        );
    }
    Ok(stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("captured="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum())
}

pub async fn run(
    ews_url: &str,
    mailboxes: &[String],
    tmp: &Path,
    requests: usize,
    progress: impl Fn(&str),
) -> anyhow::Result<DistRun> {
    let collector_bin = component("mailvault-collector")?;
    let aggregator_bin = component("mailvault-aggregator")?;
    let indexer_bin = component("mailvault-indexer")?;
    let work = tmp.join("distributed");
    std::fs::create_dir_all(work.join("logs")).context("work directory")?;

    progress("starting nats-server and Garage");
    let nats = NatsServer::start().map_err(|e| anyhow::anyhow!("nats-server: {e}"))?;
    let garage = Garage::start().map_err(|e| anyhow::anyhow!("Garage: {e}"))?;
    let mut procs = Procs::new();
    for (name, pid) in [("nats-server", nats.pid()), ("garage", garage.pid())] {
        if let Some(pid) = pid {
            procs.watch(name, pid);
        }
    }

    let passphrase = work.join("passphrase");
    write(&passphrase, "bench\n")?;
    let s3_secret = work.join("s3-secret");
    write(&s3_secret, &format!("{}\n", garage.secret_access_key()))?;
    let ews_password = work.join("ews-password");
    write(&ews_password, "secret\n")?;
    let mailboxes_file = work.join("mailboxes.csv");
    write(&mailboxes_file, &(mailboxes.join("\n") + "\n"))?;
    let repo_url = format!("s3://{}/repo", garage.bucket());
    let s3_section = format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n",
        garage.endpoint(),
        garage.region(),
        garage.access_key_id(),
        s3_secret.display()
    );
    let repo_section = format!(
        "[repository]\nurl = \"{repo_url}\"\npassphrase_file = \"{}\"\nrefresh_interval = \"1s\"\n",
        passphrase.display()
    );
    let nats_section = format!("[nats]\nurl = \"{}\"\n", nats.url());

    // The repository, created through the CLI's own S3 options.
    let repo_args = RepoArgs {
        repo: repo_url.clone(),
        passphrase_file: Some(passphrase.clone()),
        s3: S3Args {
            s3_endpoint: Some(garage.endpoint()),
            s3_region: Some(garage.region().to_owned()),
            s3_path_style: None,
            s3_access_key_id: Some(garage.access_key_id().to_owned()),
            s3_secret_access_key_file: Some(s3_secret.clone()),
        },
    };
    super::repo::create(&repo_args).await?;

    let api_port = free_port().map_err(|e| anyhow::anyhow!("free port: {e}"))?;
    let tokens_file = work.join("tokens.toml");
    let mut tokens = mailvault_indexer::api::Tokens::default();
    let token = tokens.issue("bench", mailvault_indexer::api::Role::Admin, None);
    write(&tokens_file, &tokens.to_toml())?;
    let indexer_toml = work.join("indexer.toml");
    write(
        &indexer_toml,
        &format!(
            "{nats_section}{repo_section}[index]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntokens_file = \"{}\"\n{s3_section}",
            work.join("index").display(),
            tokens_file.display()
        ),
    )?;
    let collector_toml = work.join("collector.toml");
    write(
        &collector_toml,
        &format!(
            "source = \"bench\"\nmailboxes_csv = \"{}\"\n[ews]\nurl = \"{ews_url}\"\nusername = \"svc-mailvault\"\npassword_file = \"{}\"\nimpersonation = true\n{nats_section}",
            mailboxes_file.display(),
            ews_password.display()
        ),
    )?;

    progress("starting two aggregators and the indexer");
    for i in 1..=2 {
        let toml = work.join(format!("aggregator-{i}.toml"));
        write(
            &toml,
            &format!("{nats_section}{repo_section}[batch]\nmax_delay = \"500ms\"\n{s3_section}"),
        )?;
        let mut cmd = Command::new(&aggregator_bin);
        cmd.arg("--config").arg(&toml);
        procs.spawn(
            &format!("mailvault-aggregator-{i}"),
            cmd,
            &work.join(format!("logs/aggregator-{i}.log")),
        )?;
    }
    let mut cmd = Command::new(&indexer_bin);
    cmd.arg("--config").arg(&indexer_toml);
    procs.spawn("mailvault-indexer", cmd, &work.join("logs/indexer.log"))?;
    let token_file = work.join("token");
    write(&token_file, &format!("{token}\n"))?;
    let url = format!("http://127.0.0.1:{api_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        if let Ok(mut c) = Client::connect(&url, token.clone(), None).await
            && total(&mut c, "").await.is_ok()
        {
            break c;
        }
        if Instant::now() > deadline {
            bail!(
                "the indexer API did not come up within 60 s; log: {}",
                work.join("logs/indexer.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    progress("full backup (collector → NATS → 2 aggregators → Garage → indexer)");
    let cpu_before = procs.cpu_by_name();
    let t = Instant::now();
    let captured = collect_once(
        &mut procs,
        &collector_bin,
        &collector_toml,
        &work.join("logs/collector-full.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let n = total(&mut client, "").await?;
        progress(&format!("{n}/{captured} items searchable"));
        if n >= captured {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {captured} items searchable after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let full_s = t.elapsed().as_secs_f64();
    let backup_cpu: BTreeMap<String, f64> = procs
        .cpu_by_name()
        .into_iter()
        .map(|(name, c)| {
            let before = cpu_before.get(&name).copied().unwrap_or(0.0);
            (name, c - before)
        })
        .collect();
    let cpu = backup_cpu.values().sum();

    progress("no-change incremental");
    let t = Instant::now();
    let again = collect_once(
        &mut procs,
        &collector_bin,
        &collector_toml,
        &work.join("logs/collector-incremental.log"),
    )?;
    let inc_s = t.elapsed().as_secs_f64();
    if again != 0 {
        bail!("a no-change incremental captured {again} items");
    }

    progress("search and get latencies");
    let (search, get) = api_latencies(&mut client, requests).await?;

    let repo = repo_args.open().await?;
    let stats = super::repo::stats(&repo).await?;
    procs.kill_all();
    let processes = procs.peaks();
    drop(procs);
    drop(garage);
    drop(nats);
    Ok(DistRun {
        side: Side {
            tool: "mailvault (distributed)".into(),
            files: captured,
            input_bytes: stats.logical_bytes,
            backup_seconds: full_s,
            items_per_second: captured as f64 / full_s,
            mb_per_second: stats.logical_bytes as f64 / 1e6 / full_s,
            stored_bytes: stats.stored_bytes,
            stored_ratio: stats.ratio,
            noop_incremental_seconds: inc_s,
            restore_seconds: None,
            peak_rss_mib: processes.values().copied().reduce(f64::max),
            backup_cpu_seconds: Some(cpu),
        },
        search,
        get,
        processes,
        backup_cpu,
    })
}
