//! A tiny gRPC client of the `mailvault-indexer` API, used by `ops/scripts/distributed.sh`
//! (the `mailvault` CLI will grow `--server` support for the same calls).
//!
//! ```text
//! cargo run -p mailvault-indexer --example client -- --server http://127.0.0.1:50051 \
//!     --token-file token.txt search 'from:alice has:attachment'
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use mailvault_proto::api::v1 as pb;
use pb::archive_client::ArchiveClient;
use tonic::transport::Channel;

/// Calls the mailvault gRPC API.
#[derive(Debug, Parser)]
struct Args {
    /// API address, e.g. http://127.0.0.1:50051.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// File holding the bearer token (`mailvault-indexer token` prints one).
    #[arg(long, default_value = "token.txt")]
    token_file: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the repository an indexer config names, unless it exists (test beds; production
    /// uses `mailvault init`). Uses the config's `[s3]` section, so it works with any S3 store.
    InitRepo {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the number of current items matching a query ("" = all).
    Count {
        #[arg(default_value = "")]
        query: String,
    },
    /// Wait until at least N current items are searchable.
    WaitCount {
        n: u64,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Print the hits of a query: id, mailbox, folder, subject (tab-separated).
    Search {
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Unix milliseconds (0 = now).
        #[arg(long, default_value_t = 0)]
        as_of: i64,
    },
    /// Print the mailboxes with item counts.
    Mailboxes,
    /// Write one item's MIME to stdout.
    Get { id: String },
    /// Restore items (by id), a folder (`--mailbox` + `--folder`), or a mailbox (`--mailbox`).
    Restore {
        #[arg(long)]
        mailbox: Option<String>,
        /// Folder path components, e.g. --folder Inbox --folder Projects.
        #[arg(long)]
        folder: Vec<String>,
        /// Item ids (instead of --mailbox).
        #[arg(long)]
        id: Vec<String>,
        /// Target mailbox (default: the original).
        #[arg(long, default_value = "")]
        to: String,
        #[arg(long, default_value_t = 0)]
        as_of: i64,
        /// skip, copy or replace.
        #[arg(long, default_value = "skip")]
        collision: String,
        /// Also restore items that were deleted at `--as-of`.
        #[arg(long)]
        include_deleted: bool,
    },
}

fn req<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("token is not a valid header value")?,
    );
    Ok(r)
}

async fn total(c: &mut ArchiveClient<Channel>, token: &str, query: &str) -> anyhow::Result<u64> {
    let mut s = c
        .search(req(
            pb::SearchRequest {
                query: query.into(),
                limit: 1,
                ..Default::default()
            },
            token,
        )?)
        .await?
        .into_inner();
    let mut total = 0;
    while let Some(p) = s.next().await {
        total = p?.total;
    }
    Ok(total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Cmd::InitRepo { config } = &args.command {
        return init_repo(config).await;
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_owned();
    let mut c = ArchiveClient::connect(args.server.clone())
        .await
        .with_context(|| format!("connecting to {}", args.server))?
        .max_decoding_message_size(64 << 20);
    match args.command {
        Cmd::InitRepo { .. } => unreachable!("handled above"),
        Cmd::Count { query } => println!("{}", total(&mut c, &token, &query).await?),
        Cmd::WaitCount { n, timeout_secs } => {
            let end = Instant::now() + Duration::from_secs(timeout_secs);
            loop {
                let t = total(&mut c, &token, "").await?;
                if t >= n {
                    println!("{t} items searchable");
                    break;
                }
                if Instant::now() > end {
                    bail!("only {t} of {n} items searchable after {timeout_secs} s");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Cmd::Search {
            query,
            limit,
            as_of,
        } => {
            let mut s = c
                .search(req(
                    pb::SearchRequest {
                        query,
                        limit,
                        as_of_unix_ms: as_of,
                        page_size: 100,
                        ..Default::default()
                    },
                    &token,
                )?)
                .await?
                .into_inner();
            let mut first = true;
            while let Some(p) = s.next().await {
                let p = p?;
                if std::mem::take(&mut first) {
                    println!("{} matches", p.total);
                }
                for h in p.hits {
                    println!(
                        "{}\t{}\t{}\t{}",
                        h.id,
                        h.mailbox,
                        h.folder_path.join("/"),
                        h.subject
                    );
                }
            }
        }
        Cmd::Mailboxes => {
            let r = c
                .list_mailboxes(req(pb::ListMailboxesRequest {}, &token)?)
                .await?
                .into_inner();
            for m in r.mailboxes {
                println!("{}  {}", m.address, m.items);
            }
        }
        Cmd::Get { id } => {
            use std::io::Write as _;
            let mut s = c
                .get_item(req(pb::GetItemRequest { id }, &token)?)
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = s.next().await {
                out.write_all(&chunk?.data)?;
            }
        }
        Cmd::Restore {
            mailbox,
            folder,
            id,
            to,
            as_of,
            collision,
            include_deleted,
        } => {
            let what = match (mailbox, id.is_empty()) {
                (Some(m), true) if folder.is_empty() => pb::restore_request::What::Mailbox(m),
                (Some(m), true) => pb::restore_request::What::Folder(pb::FolderSelector {
                    mailbox: m,
                    path: folder,
                }),
                (None, false) => pb::restore_request::What::Items(pb::ItemIds { ids: id }),
                _ => bail!("give either --id … or --mailbox [--folder …]"),
            };
            let collision = match collision.as_str() {
                "skip" => pb::Collision::Skip,
                "copy" => pb::Collision::Copy,
                "replace" => pb::Collision::Replace,
                other => bail!("collision {other:?}: expected skip, copy or replace"),
            };
            let mut s = c
                .restore(req(
                    pb::RestoreRequest {
                        what: Some(what),
                        as_of_unix_ms: as_of,
                        to_mailbox: to,
                        collision: collision as i32,
                        include_deleted,
                        ..Default::default()
                    },
                    &token,
                )?)
                .await?
                .into_inner();
            let (mut done, mut failed) = (0u64, 0u64);
            while let Some(p) = s.next().await {
                let p = p?;
                if let Some(r) = p.result {
                    done += 1;
                    let outcome = pb::Outcome::try_from(r.outcome)
                        .map(|o| o.as_str_name())
                        .unwrap_or("?");
                    if r.outcome == pb::Outcome::Failed as i32 {
                        failed += 1;
                        eprintln!("{}: {outcome} {}", r.id, r.error);
                    }
                    println!(
                        "[{}/{}] {} {outcome} -> {}",
                        p.done,
                        p.total,
                        r.id,
                        r.folder_path.join("/")
                    );
                }
            }
            println!("restored {done} items, {failed} failed");
            if failed > 0 {
                bail!("{failed} items failed");
            }
        }
    }
    Ok(())
}

async fn init_repo(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = mailvault_indexer::config::Config::load(config, std::env::vars())
        .map_err(anyhow::Error::msg)?;
    if mailvault_indexer::service::open_repository(&cfg)
        .await
        .is_ok()
    {
        println!("repository {} exists", cfg.repository.url);
        return Ok(());
    }
    let pass = std::fs::read(&cfg.repository.passphrase_file)
        .with_context(|| format!("reading {}", cfg.repository.passphrase_file.display()))?;
    let pass = pass.strip_suffix(b"\n").unwrap_or(&pass);
    let store = mailvault_runtime::storage::open_store(&cfg.repository.url, cfg.s3.clone())
        .await
        .with_context(|| format!("opening store {}", cfg.repository.url))?;
    let r =
        mailvault_format::Repository::init(store, pass, mailvault_format::InitOptions::default())
            .await
            .with_context(|| format!("initialising {}", cfg.repository.url))?;
    println!(
        "initialised repository {} (key {})",
        cfg.repository.url,
        r.key_name()
    );
    Ok(())
}
