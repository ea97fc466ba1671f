//! Throughput from the EWS simulator to JetStream: `run()` once over the dev corpus
//! (`MAILVAULT_CORPUS`, e.g. /work/shared/corpus/dev) — or over generated mail when unset, said
//! loudly — into a real nats-server; prints items/s and MB/s of MIME.
//!
//! `MAILVAULT_CORPUS=/work/shared/corpus/dev cargo bench -p mailvault-collector --bench sim_to_jetstream`

use std::path::PathBuf;
use std::time::Instant;

use mailvault_collector::config::Config;
use mailvault_collector::{RunMode, run};
use mailvault_ews_sim::{SimConfig, Simulator};
use mailvault_mailgen::GenConfig;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(bench());
}

async fn bench() {
    let nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let mut sc = SimConfig::new("contoso.com");
    match std::env::var_os("MAILVAULT_CORPUS").map(PathBuf::from) {
        Some(d) => {
            println!("corpus: {}", d.display());
            sc.maildir = Some(d);
        }
        None => {
            println!("NOTE: MAILVAULT_CORPUS is not set — benchmarking GENERATED MAIL ONLY");
            sc.generate = Some(GenConfig {
                seed: 1,
                messages: 1500,
                ..GenConfig::default()
            });
        }
    }
    let sim = Simulator::start(sc).await.expect("start simulator");
    let mailboxes = sim.mailboxes();
    let bytes: usize = mailboxes
        .iter()
        .flat_map(|m| sim.folders(m))
        .flat_map(|f| sim.items(&f.id))
        .map(|i| i.mime.len())
        .sum();
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret").expect("password file");
    let list: Vec<String> = mailboxes.iter().map(|m| format!("{m:?}")).collect();
    let cfg = Config::from_toml(&format!(
        "source = \"bench\"\nmailboxes = [{}]\n[ews]\nurl = \"{}\"\nusername = \"svc-mailvault\"\npassword_file = \"{}\"\n[nats]\nurl = \"{}\"\n",
        list.join(", "),
        sim.url(),
        pw.display(),
        nats.url()
    ))
    .expect("config");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let summary = run(cfg, RunMode::Once, rx).await.expect("collector run");
    let secs = t.elapsed().as_secs_f64();
    assert!(summary.is_clean(), "{summary:?}");
    let items = summary.captured();
    assert_eq!(items as usize, sim.total_items(), "every item captured");
    println!(
        "simulator → JetStream: {items} items, {:.1} MB MIME in {secs:.2} s = {:.0} items/s, {:.2} MB/s (default limits, {} mailboxes, {} EWS requests)",
        bytes as f64 / 1e6,
        items as f64 / secs,
        bytes as f64 / 1e6 / secs,
        mailboxes.len(),
        sim.stats().total_requests
    );
}
