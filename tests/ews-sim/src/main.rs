//! `mailvault-ews-sim`: serves an EWS simulator over a maildir tree and/or generated mail.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mailvault_ews_sim::{Account, SimConfig, Simulator};

#[derive(Debug, Parser)]
#[command(
    name = "mailvault-ews-sim",
    about = "EWS (Exchange Web Services) simulator"
)]
struct Args {
    /// Mail to serve: <user>/<folder>[/<sub>…]/<one RFC 822 message per file>.
    #[arg(long)]
    maildir: Option<PathBuf>,
    /// Generate mail with this seed (in addition to --maildir).
    #[arg(long = "generate-seed", alias = "generate")]
    generate_seed: Option<u64>,
    /// Generated users and messages.
    #[arg(long, default_value_t = 8)]
    generate_users: usize,
    #[arg(long, default_value_t = 200)]
    generate_messages: usize,
    #[arg(long, default_value = "contoso.com")]
    domain: String,
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The service account (holds the impersonation right).
    #[arg(long, default_value = "svc-mailvault")]
    user: String,
    /// File holding the service account's password (first line).
    #[arg(long)]
    password_file: PathBuf,
    /// Concurrent requests per account before ErrorServerBusy.
    #[arg(long, default_value_t = 10)]
    max_concurrency: usize,
    #[arg(long, default_value_t = 500)]
    backoff_ms: u64,
    /// TLS is not built in yet: put a TLS terminator in front for HTTPS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Write the served mailboxes' SMTP addresses to this file, one per line (a collector's
    /// `mailboxes_csv`), once the simulator is listening.
    #[arg(long)]
    mailboxes_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    if args.tls_cert.is_some() || args.tls_key.is_some() {
        anyhow::bail!(
            "--tls-cert/--tls-key: HTTPS is not implemented yet (see docs/ews-simulator.md)"
        );
    }
    let password = std::fs::read_to_string(&args.password_file)
        .with_context(|| format!("reading {}", args.password_file.display()))?;
    let password = password.lines().next().unwrap_or("").to_owned();
    let mut cfg = SimConfig::new(&args.domain);
    cfg.listen = args.listen;
    cfg.accounts = vec![Account {
        name: args.user.clone(),
        password,
        impersonation: true,
    }];
    cfg.maildir = args.maildir.clone();
    cfg.max_concurrent_per_account = args.max_concurrency;
    cfg.busy_backoff_ms = args.backoff_ms;
    if let Some(seed) = args.generate_seed {
        cfg.generate = Some(mailvault_mailgen::GenConfig {
            seed,
            users: args.generate_users,
            messages: args.generate_messages,
            ..mailvault_mailgen::GenConfig::default()
        });
    }
    let sim = Simulator::start(cfg).await?;
    if let Some(f) = &args.mailboxes_file {
        let mut text = sim.mailboxes().join("\n");
        text.push('\n');
        std::fs::write(f, text).with_context(|| format!("writing {}", f.display()))?;
    }
    println!(
        "mailvault-ews-sim: {} mailboxes, {} items at {}",
        sim.mailboxes().len(),
        sim.total_items(),
        sim.url()
    );
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
