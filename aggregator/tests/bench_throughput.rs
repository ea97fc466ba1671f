//! Throughput: the aggregator draining a pre-filled stream into a repository, against the
//! format library's own write path on the same bytes in the same run, and plain zstd -3.
//! Run: `cargo test -p mailvault-aggregator --release --test bench_throughput -- --ignored --nocapture`
//! (debug builds compile the workspace crates unoptimised; the ratios still compare like with like).
//!
//! Environment: `MAILVAULT_BENCH_MESSAGES` (distinct messages generated, default 2000 — items
//! are more because of fan-out), `MAILVAULT_BENCH_WORKERS` (aggregator pipelines, default 1),
//! `MAILVAULT_BENCH_MAX_DELAY_MS` (batch delay, default 200: once the stream has run dry the last
//! batch waits a quarter of it, which counts in the drain time), `MAILVAULT_BENCH_PACK_ENTRIES`
//! (items per packed message as the collector publishes them, default the collector's 64; 1 sends
//! every item alone), `MAILVAULT_BENCH_GARAGE=1` to also run both write paths against a real S3
//! store (Garage).
//!
//! Two kinds of ratio are printed, because this machine is shared:
//! - wall: MB/s while draining the stream, over MB/s of the other path (both one writer);
//! - per core: MB per CPU-second of the aggregator process, over MB per CPU-second of the
//!   format path — what a core buys in each. nats-server's (and Garage's) CPU is printed
//!   separately: it is the broker's cost, not the aggregator's, and on a dedicated host it
//!   runs on cores of its own.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mailvault_format::{BlobStore, ItemManifest, MemoryStore};
use mailvault_harness::{Garage, NatsServer};
use mailvault_runtime::storage::{S3Config, S3Store, Secret};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Linux exposes process CPU times in clock ticks of 1/100 s (USER_HZ) on every platform.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) a process has used; `None` if it is gone.
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces): state is
    // field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SEC)
}

/// Children of this process with the given command name (nats-server, garage).
fn children_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok());
            comm == name && ppid == Some(me)
        })
        .collect()
}

/// Busy and total jiffies of the whole machine (all cores), for how loaded it was.
fn machine() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// Wall time and CPU use of one phase.
struct Phase {
    wall: f64,
    own_cpu: f64,
    others_cpu: f64,
    machine_busy: f64,
}

struct Meter {
    t: Instant,
    own: f64,
    others: Vec<(u32, f64)>,
    machine: (f64, f64),
}

impl Meter {
    fn start(others: &[u32]) -> Meter {
        Meter {
            t: Instant::now(),
            own: cpu_of(std::process::id()).unwrap_or(0.0),
            others: others
                .iter()
                .map(|&p| (p, cpu_of(p).unwrap_or(0.0)))
                .collect(),
            machine: machine(),
        }
    }

    fn stop(self) -> Phase {
        let wall = self.t.elapsed().as_secs_f64();
        let (busy, total) = machine();
        Phase {
            wall,
            own_cpu: cpu_of(std::process::id()).unwrap_or(0.0) - self.own,
            others_cpu: self
                .others
                .iter()
                .map(|&(p, c)| cpu_of(p).unwrap_or(c) - c)
                .sum(),
            machine_busy: (busy - self.machine.0) / (total - self.machine.1).max(1.0),
        }
    }
}

async fn s3_store(g: &Garage, prefix: &str) -> Arc<dyn BlobStore> {
    let mut c = S3Config::new(g.bucket());
    c.prefix = prefix.into();
    c.endpoint = Some(g.endpoint());
    c.region = g.region().into();
    c.access_key_id = Some(g.access_key_id().into());
    c.secret_access_key = Some(Secret::new(g.secret_access_key()));
    Arc::new(S3Store::connect(&c).await.expect("s3 store"))
}

/// The format library alone: every item through one writer, then one flush.
async fn format_path(store: Arc<dyn BlobStore>, items: &[Item], others: &[u32]) -> Phase {
    let repo = init_repo(store).await;
    let m = Meter::start(others);
    let mut w = repo.writer().expect("writer");
    for it in items {
        let meta = ItemManifest {
            mailbox: it.mailbox.clone(),
            item_id: it.item_id.clone(),
            change_key: it.change_key.clone(),
            ..Default::default()
        };
        w.add_item(meta, &it.mime).expect("add");
    }
    w.flush().await.expect("flush");
    m.stop()
}

/// The aggregator draining the pre-filled stream (startup included: it is part of draining).
async fn aggregator_path(
    nats: &NatsServer,
    store: Arc<dyn BlobStore>,
    items: &[Item],
    others: &[u32],
) -> Phase {
    let collector = Collector::connect(&nats.url()).await;
    // MAILVAULT_BENCH_PACK_ENTRIES=1: one message per item, as before collectors packed.
    let limits = PackLimits {
        max_entries: env_usize(
            "MAILVAULT_BENCH_PACK_ENTRIES",
            PackLimits::default().max_entries,
        ),
        ..PackLimits::default()
    };
    let sent = collector.publish_items_packed(items, limits).await;
    println!(
        "stream pre-filled: {sent} messages for {} items (up to {} per pack)",
        items.len(),
        limits.max_entries
    );
    init_repo(store.clone()).await;
    let mut cfg = config(&nats.url());
    cfg.limits.fetch_messages = 256;
    cfg.nats.max_ack_pending = 4096;
    cfg.batch.max_items = 2000;
    cfg.limits.workers = env_usize("MAILVAULT_BENCH_WORKERS", 1);
    cfg.batch.max_delay =
        Duration::from_millis(env_usize("MAILVAULT_BENCH_MAX_DELAY_MS", 200) as u64);
    let m = Meter::start(others);
    let r = Replica::start(cfg, store.clone());
    collector.wait_drained(Duration::from_secs(600)).await;
    let phase = m.stop();
    let report = r.stop().await;
    assert_eq!(report.items, items.len(), "every item stored once");
    // The stream is drained only once every item was acked, i.e. durable.
    let repo = mailvault_format::Repository::open(store, PASS)
        .await
        .expect("open");
    assert_eq!(repo.manifests().len(), items.len());
    phase
}

fn report(label: &str, mb: f64, format: &Phase, agg: &Phase, zstd: &Phase, others: &str) {
    let per_core = |p: &Phase| mb / p.own_cpu.max(1e-9);
    println!(
        "[{label}] format write path: {:.1} MB/s wall, {:.1} MB per CPU-s ({:.2} CPU-s; {others} {:.2} CPU-s; machine {:.0}% busy)",
        mb / format.wall,
        per_core(format),
        format.own_cpu,
        format.others_cpu,
        format.machine_busy * 100.0,
    );
    println!(
        "[{label}] aggregator:        {:.1} MB/s wall, {:.1} MB per CPU-s ({:.2} CPU-s; nats-server+{others} {:.2} CPU-s; machine {:.0}% busy)",
        mb / agg.wall,
        per_core(agg),
        agg.own_cpu,
        agg.others_cpu,
        agg.machine_busy * 100.0,
    );
    println!(
        "[{label}] aggregator/format = {:.2} wall, {:.2} per core; aggregator/zstd -3 = {:.2} wall, {:.2} per core",
        format.wall / agg.wall,
        per_core(agg) / per_core(format),
        zstd.wall / agg.wall,
        per_core(agg) / per_core(zstd),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn aggregator_throughput_against_the_format_write_path() {
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 77,
        messages: env_usize("MAILVAULT_BENCH_MESSAGES", 2000),
        ..Default::default()
    });
    let mut items = items_from(&corpus.items, "b");
    // In the order a collector reads them (mailbox by mailbox), for every path alike.
    items.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    let bytes: usize = items.iter().map(|i| i.mime.len()).sum();
    let big: Vec<&Item> = items
        .iter()
        .filter(|i| i.mime.len() > INLINE_LIMIT)
        .collect();
    let mb = bytes as f64 / 1e6;
    println!(
        "{} items, {mb:.1} MB ({} items, {:.1} MB over the inline limit, via the Object Store); {} aggregator worker(s); 2 runtime threads",
        items.len(),
        big.len(),
        big.iter().map(|i| i.mime.len()).sum::<usize>() as f64 / 1e6,
        env_usize("MAILVAULT_BENCH_WORKERS", 1),
    );

    // zstd -3 of every item.
    let m = Meter::start(&[]);
    let mut z = 0usize;
    for it in &items {
        z += zstd::bulk::compress(&it.mime, 3).expect("zstd").len();
    }
    let zstd = m.stop();
    println!(
        "zstd -3: {:.1} MB/s wall, {:.1} MB per CPU-s (ratio {:.3}; machine {:.0}% busy)",
        mb / zstd.wall,
        mb / zstd.own_cpu.max(1e-9),
        z as f64 / bytes as f64,
        zstd.machine_busy * 100.0,
    );

    let nats = NatsServer::start().expect("nats-server");
    let nats_pids = children_named("nats-server");

    let format = format_path(Arc::new(MemoryStore::new()), &items, &[]).await;
    let agg = aggregator_path(&nats, Arc::new(MemoryStore::new()), &items, &nats_pids).await;
    report("memory store", mb, &format, &agg, &zstd, "-");

    if std::env::var("MAILVAULT_BENCH_GARAGE").is_ok_and(|v| v == "1") {
        let garage = Garage::start().expect("garage");
        let garage_pids = children_named("garage");
        let format = format_path(s3_store(&garage, "format/").await, &items, &garage_pids).await;
        // A fresh stream: the first run drained (and acked) everything.
        let nats2 = NatsServer::start().expect("nats-server");
        let mut others = children_named("nats-server");
        others.retain(|p| !nats_pids.contains(p));
        others.extend(&garage_pids);
        let agg = aggregator_path(&nats2, s3_store(&garage, "agg/").await, &items, &others).await;
        report("garage S3", mb, &format, &agg, &zstd, "garage");
    }
}
