//! search, get, restore, export: the same gRPC calls whether the server is remote
//! (`--server`) or started inside this process over a local repository.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use mailvault_proto::api::v1 as pb;
use pb::archive_client::ArchiveClient;
use tokio::io::AsyncWriteExt as _;
use tonic::transport::Channel;

/// How to reach the API.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// gRPC API of a distributed install (http://host:port or https://…). Without it the
    /// command works on --repo directly, in this process.
    #[arg(long, env = "MAILVAULT_SERVER")]
    pub server: Option<String>,
    /// File holding the bearer token for --server.
    #[arg(long, env = "MAILVAULT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for an https:// server.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Set from the command's `--allow-plaintext`.
    #[arg(skip)]
    pub allow_plaintext: bool,
}

/// A connected client and the token it sends.
#[derive(Debug, Clone)]
pub struct Client {
    pub inner: ArchiveClient<Channel>,
    token: String,
}

impl Client {
    pub async fn connect(url: &str, token: String, ca: Option<&PathBuf>) -> anyhow::Result<Client> {
        let mut ep = Channel::from_shared(url.to_owned())
            .with_context(|| format!("server address {url:?}"))?
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            mailvault_runtime::install_crypto_provider();
            let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = ca {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading CA certificate {}", ca.display()))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls).context("TLS settings")?;
        }
        let channel = ep
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Client {
            inner: ArchiveClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
            token,
        })
    }

    pub async fn from_args(args: &ServerArgs) -> anyhow::Result<Client> {
        let Some(url) = &args.server else {
            bail!("no --server given");
        };
        let Some(tf) = &args.token_file else {
            bail!("--server needs --token-file (a token from `mailvault token issue`)");
        };
        mailvault_runtime::plaintext::check(
            url,
            "the bearer token",
            "--allow-plaintext",
            args.allow_plaintext,
        )
        .map_err(anyhow::Error::msg)?;
        let token = std::fs::read_to_string(tf)
            .with_context(|| format!("reading token file {}", tf.display()))?
            .trim()
            .to_owned();
        Client::connect(url, token, args.ca_cert.as_ref()).await
    }

    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }
}

/// `--as-of`: RFC 3339 (`2026-11-01T12:00:00Z`), a date (`2026-11-01`) or unix milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_millis());
    }
    bail!("--as-of {s:?}: use RFC 3339 (2026-11-01T12:00:00Z), YYYY-MM-DD or unix milliseconds")
}

fn fmt_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// Runs a search and prints it; returns the number of hits.
pub async fn search(
    c: &mut Client,
    query: &str,
    as_of: i64,
    limit: u32,
    json: bool,
) -> anyhow::Result<u64> {
    let req = c.request(pb::SearchRequest {
        query: query.to_owned(),
        as_of_unix_ms: as_of,
        page_size: 500,
        limit,
        offset: 0,
    });
    let mut s = c.inner.search(req).await.context("search")?.into_inner();
    let mut n = 0u64;
    let mut total = 0;
    while let Some(page) = s.next().await {
        let page = page.context("search stream")?;
        total = page.total;
        for h in page.hits {
            n += 1;
            if json {
                println!("{}", hit_json(&h));
            } else {
                let flags = format!(
                    "{}{}{}",
                    if h.deleted { "D" } else { " " },
                    if h.has_attachment { "@" } else { " " },
                    if h.journal { "J" } else { " " }
                );
                println!(
                    "{}  {} {}  {:<28.28}  {:<24.24}  {:<20.20}  {}",
                    &h.id[..16.min(h.id.len())],
                    flags,
                    fmt_date(h.date_unix_ms),
                    h.mailbox,
                    h.folder_path.join("/"),
                    h.from,
                    h.subject
                );
            }
        }
    }
    if !json {
        eprintln!("{n} shown of {total} matches");
    }
    Ok(n)
}

pub fn hit_json(h: &pb::Hit) -> serde_json::Value {
    serde_json::json!({
        "id": h.id, "mailbox": h.mailbox, "folder": h.folder_path, "subject": h.subject,
        "from": h.from, "to": h.to, "cc": h.cc, "date_unix_ms": h.date_unix_ms, "size": h.size,
        "has_attachment": h.has_attachment, "is_read": h.is_read, "deleted": h.deleted,
        "journal": h.journal, "item_class": h.item_class,
        "internet_message_id": h.internet_message_id,
    })
}

/// Writes an item's MIME to `out` (stdout when None); returns its size.
pub async fn get(c: &mut Client, id: &str, out: Option<&PathBuf>) -> anyhow::Result<u64> {
    let full = resolve_id(c, id).await?;
    let req = c.request(pb::GetItemRequest { id: full.clone() });
    let mut s = c
        .inner
        .get_item(req)
        .await
        .with_context(|| format!("getting item {full}"))?
        .into_inner();
    let mut w: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match out {
        Some(p) => Box::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("creating {}", p.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.with_context(|| format!("reading item {full}"))?;
        n += chunk.data.len() as u64;
        w.write_all(&chunk.data).await.context("writing item")?;
    }
    w.flush().await.context("writing item")?;
    Ok(n)
}

/// Ids may be given shortened (as `search` prints them): the unique id with that prefix.
pub async fn resolve_id(_c: &mut Client, id: &str) -> anyhow::Result<String> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(id.to_ascii_lowercase());
    }
    bail!("item id {id:?}: give the full 64-hex id (`search --json` prints it)")
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormatArg {
    EmlZip,
    Mbox,
}

pub async fn export(
    c: &mut Client,
    query: &str,
    as_of: i64,
    format: ExportFormatArg,
    out: &PathBuf,
) -> anyhow::Result<u64> {
    let req = c.request(pb::ExportRequest {
        query: query.to_owned(),
        as_of_unix_ms: as_of,
        format: match format {
            ExportFormatArg::EmlZip => pb::ExportFormat::EmlZip as i32,
            ExportFormatArg::Mbox => pb::ExportFormat::Mbox as i32,
        },
        limit: 0,
    });
    let mut s = c.inner.export(req).await.context("export")?.into_inner();
    // Written beside the target and renamed at the end: a failed export leaves no half file.
    let tmp = out.with_extension("partial");
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.context("export stream")?;
        n += chunk.data.len() as u64;
        f.write_all(&chunk.data).await.context("writing export")?;
    }
    f.sync_all().await.context("writing export")?;
    tokio::fs::rename(&tmp, out)
        .await
        .with_context(|| format!("moving export into {}", out.display()))?;
    Ok(n)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CollisionArg {
    Skip,
    Copy,
    Replace,
}

/// Counts of a finished restore.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub total: u64,
    pub created: u64,
    pub skipped: u64,
    pub copied: u64,
    pub replaced: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

pub async fn restore(
    c: &mut Client,
    req: pb::RestoreRequest,
    mut progress: impl FnMut(&pb::RestoreProgress),
) -> anyhow::Result<RestoreSummary> {
    let r = c.request(req);
    let mut s = c.inner.restore(r).await.context("restore")?.into_inner();
    let mut sum = RestoreSummary::default();
    while let Some(p) = s.next().await {
        let p = p.context("restore stream")?;
        sum.total = p.total;
        progress(&p);
        if let Some(r) = &p.result {
            match pb::Outcome::try_from(r.outcome).unwrap_or(pb::Outcome::Unspecified) {
                pb::Outcome::Created => sum.created += 1,
                pb::Outcome::Skipped => sum.skipped += 1,
                pb::Outcome::Copied => sum.copied += 1,
                pb::Outcome::Replaced => sum.replaced += 1,
                _ => {
                    sum.failed += 1;
                    sum.errors.push(format!("{}: {}", r.id, r.error));
                }
            }
        }
    }
    Ok(sum)
}
