//! `mailvault-ews-sim`: serves an EWS simulator over a maildir tree and/or generated mail.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mailvault_ews_sim::tls::{self, TlsIdentity};
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
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate for localhost/127.0.0.1/::1 from a fresh throw-away CA,
    /// and write that CA's certificate (PEM) to this file for clients to trust.
    #[arg(long, value_name = "CA_PEM_OUT")]
    tls_self_signed: Option<PathBuf>,
    /// Authentication schemes to accept: `basic`, `ntlm` (NTLM and Negotiate headers carrying
    /// raw NTLMSSP), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "basic,ntlm")]
    auth: Vec<AuthScheme>,
    /// Write the served mailboxes' SMTP addresses to this file, one per line (a collector's
    /// `mailboxes_csv`), once the simulator is listening.
    #[arg(long)]
    mailboxes_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AuthScheme {
    Basic,
    Ntlm,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
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
    cfg.basic_auth = args.auth.contains(&AuthScheme::Basic);
    cfg.ntlm_auth = args.auth.contains(&AuthScheme::Ntlm);
    if !(cfg.basic_auth || cfg.ntlm_auth) {
        anyhow::bail!("--auth: name at least one of basic, ntlm");
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = Some(TlsIdentity::from_files(cert, key)?);
    }
    if let Some(ca_out) = &args.tls_self_signed {
        let pki = tls::self_signed(&["localhost", "127.0.0.1", "::1"])?;
        std::fs::write(ca_out, &pki.ca_pem)
            .with_context(|| format!("writing {}", ca_out.display()))?;
        cfg.tls = Some(pki.identity);
    }
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
