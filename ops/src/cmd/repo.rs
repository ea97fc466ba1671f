//! Repository commands: init, key management, verify, stats.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use mailvault_format::{BlobStore, InitOptions, KdfParams, Repository, VerifyOptions, verify};
use serde::Serialize;

/// Where the repository is and how to unlock it.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Repository: a directory, or s3://bucket/prefix (S3 connection from the --s3-* options,
    /// else the usual AWS_* environment variables and profiles).
    #[arg(long, env = "MAILVAULT_REPO")]
    pub repo: String,
    /// File holding the repository passphrase (one line). Alternatively set
    /// MAILVAULT_PASSPHRASE.
    #[arg(long, env = "MAILVAULT_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
}

/// How to reach an S3-compatible server (MinIO, Garage, Ceph, AWS) for an s3:// repository.
#[derive(Debug, Clone, Default, Args)]
pub struct S3Args {
    /// S3 endpoint for a non-AWS server, e.g. http://garage:3900 (path-style addressing is then
    /// the default).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Force path-style (true) or virtual-host-style (false) bucket addressing.
    #[arg(long)]
    pub s3_path_style: Option<bool>,
    /// Access key id; its secret comes from --s3-secret-access-key-file. Without it the SDK's
    /// default chain is used (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    #[arg(long, requires = "s3_secret_access_key_file")]
    pub s3_access_key_id: Option<String>,
    /// File holding only the secret access key.
    #[arg(long, requires = "s3_access_key_id")]
    pub s3_secret_access_key_file: Option<PathBuf>,
}

impl S3Args {
    /// The connection settings, or `None` to leave everything to the SDK's defaults.
    pub fn config(&self) -> Option<mailvault_runtime::storage::S3Config> {
        if self.s3_endpoint.is_none()
            && self.s3_region.is_none()
            && self.s3_path_style.is_none()
            && self.s3_access_key_id.is_none()
        {
            return None;
        }
        let mut c = mailvault_runtime::storage::S3Config::new("");
        c.endpoint = self.s3_endpoint.clone();
        if let Some(r) = &self.s3_region {
            c.region = r.clone();
        }
        c.path_style = self.s3_path_style;
        c.access_key_id = self.s3_access_key_id.clone();
        c.secret_access_key_file = self.s3_secret_access_key_file.clone();
        Some(c)
    }
}

impl RepoArgs {
    pub fn passphrase(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(f) = &self.passphrase_file {
            let s = mailvault_runtime::secret_file::read_secret_file(f)
                .with_context(|| format!("reading passphrase file {}", f.display()))?;
            if s.is_empty() {
                bail!("passphrase file {} is empty", f.display());
            }
            return Ok(s);
        }
        match std::env::var("MAILVAULT_PASSPHRASE") {
            Ok(p) if !p.is_empty() => Ok(p.into_bytes()),
            _ => bail!(
                "no passphrase: pass --passphrase-file FILE or set MAILVAULT_PASSPHRASE_FILE / MAILVAULT_PASSPHRASE"
            ),
        }
    }

    pub async fn store(&self) -> anyhow::Result<Arc<dyn BlobStore>> {
        if !self.repo.starts_with("s3://") {
            std::fs::create_dir_all(&self.repo)
                .with_context(|| format!("creating repository directory {}", self.repo))?;
        }
        mailvault_runtime::storage::open_store(&self.repo, self.s3.config())
            .await
            .with_context(|| format!("opening store {}", self.repo))
    }

    pub async fn open(&self) -> anyhow::Result<Repository> {
        // Opening never creates anything: a mistyped path is an error, not a new directory.
        if !self.repo.starts_with("s3://") && !Path::new(&self.repo).join("config").is_file() {
            bail!(
                "no repository at {}: check the path, or create one with `mailvault init --repo {}`",
                self.repo,
                self.repo
            );
        }
        let pass = self.passphrase()?;
        let store = self.store().await?;
        Repository::open(store, &pass).await.with_context(|| {
            format!(
                "opening repository {} (wrong passphrase, or not initialised: run `mailvault init`)",
                self.repo
            )
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Lists the keys that can open the repository.
    List,
    /// Adds a key for another passphrase (read from --new-passphrase-file).
    Add {
        #[arg(long)]
        new_passphrase_file: PathBuf,
        #[arg(long, default_value = "added")]
        label: String,
    },
    /// Removes a key by name (the last key cannot be removed).
    Remove { name: String },
}

/// Creates the repository and returns it open.
pub async fn create(repo: &RepoArgs) -> anyhow::Result<Repository> {
    let pass = repo.passphrase()?;
    let store = repo.store().await?;
    if !repo.repo.starts_with("s3://") {
        mailvault_runtime::storage::DirStore::open(&repo.repo)
            .and_then(|d| d.create_dirs(mailvault_format::id::names::pack_dirs()))
            .with_context(|| format!("creating the pack directories of {}", repo.repo))?;
    }
    Repository::init(store, &pass, InitOptions::default())
        .await
        .with_context(|| format!("initialising repository {}", repo.repo))
}

pub async fn init(repo: &RepoArgs, json: bool) -> anyhow::Result<()> {
    let r = create(repo).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"repository": repo.repo, "key": r.key_name()})
        );
    } else {
        println!(
            "initialised repository {} (key {})",
            repo.repo,
            r.key_name()
        );
    }
    Ok(())
}

pub async fn key(repo: &RepoArgs, cmd: KeyCommand, json: bool) -> anyhow::Result<()> {
    let r = repo.open().await?;
    match cmd {
        KeyCommand::List => {
            let keys = r.list_keys().await.context("listing keys")?;
            if json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(n, l)| serde_json::json!({"name": n, "label": l}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (n, l) in keys {
                    let mark = if n == r.key_name() { " (this one)" } else { "" };
                    println!("{n}  {l}{mark}");
                }
            }
        }
        KeyCommand::Add {
            new_passphrase_file,
            label,
        } => {
            let other = RepoArgs {
                repo: repo.repo.clone(),
                passphrase_file: Some(new_passphrase_file),
                s3: repo.s3.clone(),
            }
            .passphrase()?;
            let name = r
                .add_key(&other, &label, KdfParams::default())
                .await
                .context("adding key")?;
            println!("added key {name}");
        }
        KeyCommand::Remove { name } => {
            r.remove_key(&name)
                .await
                .with_context(|| format!("removing key {name}"))?;
            println!("removed key {name}");
        }
    }
    Ok(())
}

/// Exit code 3 when verify finds problems, so scripts can tell damage from failure to run.
pub async fn verify_cmd(repo: &RepoArgs, read_data: bool, json: bool) -> anyhow::Result<i32> {
    let r = repo.open().await?;
    let report = verify(&r, VerifyOptions { read_data })
        .await
        .context("verifying")?;
    let chain = mailvault_indexer::api::AuditLog::verify(&r)
        .await
        .context("verifying the audit log's chain")?;
    let clean = report.is_clean() && chain.problems.is_empty();
    if json {
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| serde_json::json!({"object": p.object, "cause": p.cause, "items": p.items}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "clean": clean,
                "packs": report.packs,
                "blobs": report.blobs,
                "blobs_read": report.blobs_read,
                "manifests": report.manifests,
                "problems": problems,
                "audit": {"batches": chain.batches, "records": chain.records,
                          "unchained": chain.unchained, "problems": chain.problems},
            })
        );
    } else {
        println!(
            "verified {} packs, {} blobs ({} read), {} manifests: {}",
            report.packs,
            report.blobs,
            report.blobs_read,
            report.manifests,
            if report.is_clean() {
                "no problems".to_owned()
            } else {
                format!("{} PROBLEMS", report.problems.len())
            }
        );
        for p in &report.problems {
            println!("  {}: {}", p.object, p.cause);
        }
        println!(
            "audit log: {} batches, {} records: {}",
            chain.batches,
            chain.records,
            if chain.problems.is_empty() {
                "chain intact".to_owned()
            } else {
                format!("{} BREAKS", chain.problems.len())
            }
        );
        for p in &chain.problems {
            println!("  {p}");
        }
    }
    Ok(if clean { 0 } else { 3 })
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub items: u64,
    pub history_records: u64,
    pub mailboxes: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub packs: u64,
    /// stored / logical.
    pub ratio: f64,
}

pub async fn stats(r: &Repository) -> anyhow::Result<Stats> {
    use futures::{StreamExt as _, TryStreamExt as _};
    // Every manifest and object is one request on S3: ask many at once.
    const CONCURRENCY: usize = 32;
    let mut s = Stats::default();
    let mut mailboxes = std::collections::HashSet::new();
    let mut manifests = futures::stream::iter(r.manifests())
        .map(|id| async move {
            r.manifest(&id)
                .await
                .with_context(|| format!("reading manifest {id}"))
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(m) = manifests.try_next().await? {
        if m.properties.contains_key("mailvault.record") {
            s.history_records += 1;
            continue;
        }
        s.items += 1;
        s.logical_bytes += m.size;
        mailboxes.insert(m.mailbox.to_ascii_lowercase());
    }
    s.mailboxes = mailboxes.len() as u64;
    let store = r.store();
    let store = &store;
    let names = store.list("").await.context("listing objects")?;
    let mut sizes = futures::stream::iter(names)
        .map(|name| async move {
            let size = store
                .size(&name)
                .await
                .with_context(|| format!("size of {name}"))?
                .unwrap_or(0);
            anyhow::Ok((name, size))
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((name, size)) = sizes.try_next().await? {
        s.stored_bytes += size;
        if name.starts_with("packs/") {
            s.packs += 1;
        }
    }
    s.ratio = if s.logical_bytes == 0 {
        0.0
    } else {
        s.stored_bytes as f64 / s.logical_bytes as f64
    };
    Ok(s)
}

pub async fn stats_cmd(repo: &RepoArgs, json: bool) -> anyhow::Result<()> {
    let r = repo.open().await?;
    let s = stats(&r).await?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "{} items in {} mailboxes ({} history records)\nlogical {}  stored {}  ({:.1} %, {} packs)",
            s.items,
            s.mailboxes,
            s.history_records,
            bytesize::ByteSize(s.logical_bytes),
            bytesize::ByteSize(s.stored_bytes),
            s.ratio * 100.0,
            s.packs
        );
    }
    Ok(())
}

/// `mailvault audit`: the records from `since` on, then the chain's state. Exit 3 on a break.
pub async fn audit_cmd(repo: &RepoArgs, since: Option<i64>, json: bool) -> anyhow::Result<i32> {
    use mailvault_indexer::api::AuditLog;
    let r = repo.open().await?;
    let records = AuditLog::read_all(&r)
        .await
        .context("reading the audit log")?;
    for rec in records
        .iter()
        .filter(|x| since.is_none_or(|s| x.unix_ms >= s))
    {
        if json {
            println!("{}", serde_json::to_string(rec)?);
        } else {
            let when = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(rec.unix_ms).unwrap_or(0)),
            );
            println!(
                "{when} {:<12} {:<8} {:<21} {:<13} {:<9} {} {}",
                rec.who, rec.role, rec.peer, rec.call, rec.result, rec.target, rec.detail
            );
        }
    }
    let chain = AuditLog::verify(&r)
        .await
        .context("verifying the audit log's chain")?;
    if !json {
        eprintln!(
            "audit log: {} batches, {} records, {} writers: {}",
            chain.batches,
            chain.records,
            chain.writers,
            if chain.problems.is_empty() {
                "chain intact".to_owned()
            } else {
                format!("{} BREAKS", chain.problems.len())
            }
        );
    }
    for p in &chain.problems {
        eprintln!("  {p}");
    }
    Ok(if chain.problems.is_empty() { 0 } else { 3 })
}
