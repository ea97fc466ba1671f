//! `mailvault demo`: the whole product in one command, on generated mail, in under a minute.
//!
//! An embedded Exchange simulator serves generated mailboxes (localized folder names,
//! attachments, a journal mailbox); the demo backs them up through the real single-process
//! pipeline (collector → bus → aggregator → repository, indexer), changes some mail, runs an
//! incremental, searches, deletes a folder's mail in "Exchange", restores it as of before the
//! delete and checks every restored message byte for byte, then verifies the repository.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use mailvault_ews_sim::{SimConfig, Simulator};
use mailvault_format::{InitOptions, VerifyOptions, verify};
use mailvault_indexer::api::RestoreTarget;
use mailvault_mailgen::GenConfig;
use mailvault_ops::local::{LocalBackup, LocalEws};
use mailvault_proto::api::v1 as pb;

use super::backup::{DirectRestore, EwsArgs, open_index, pass, progress_bar};
use super::client;
use super::local::LocalApi;
use super::repo::RepoArgs;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Seed of the generated mail (same seed, same mail).
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Generated user mailboxes (a journal mailbox comes on top).
    #[arg(long, default_value_t = 6)]
    pub users: usize,
    /// Generated messages (each lands in several mailboxes).
    #[arg(long, default_value_t = 300)]
    pub messages: usize,
    /// Keep the demo repository and state here instead of a temporary directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

fn step(json: bool, s: &str) {
    if !json {
        println!("▸ {s}");
    }
}

pub async fn run(a: DemoArgs, json: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let root = a.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let repo_dir = root.join("repo");
    let state = root.join("state");
    std::fs::create_dir_all(&state).context("creating the demo state directory")?;
    let pass_file = root.join("passphrase");
    std::fs::write(&pass_file, "mailvault demo passphrase\n").context("writing passphrase")?;
    let pw_file = root.join("ews-password");
    std::fs::write(&pw_file, "secret\n").context("writing EWS password")?;

    // 1. Exchange.
    let mut cfg = SimConfig::new("contoso.com");
    cfg.generate = Some(GenConfig {
        seed: a.seed,
        users: a.users,
        messages: a.messages,
        ..GenConfig::default()
    });
    let sim = Simulator::start(cfg)
        .await
        .context("starting the EWS simulator")?;
    let mailboxes = sim.mailboxes();
    step(
        json,
        &format!(
            "Exchange simulator at {} with {} mailboxes, {} items",
            sim.url(),
            mailboxes.len(),
            sim.total_items()
        ),
    );
    let ews = EwsArgs {
        ews: Some(sim.url()),
        user: Some("svc-mailvault".into()),
        password_file: Some(pw_file.clone()),
        auth: super::backup::AuthArg::Ntlm,
        ca_file: None,
        insecure_skip_verify: false,
        no_impersonation: false,
        // The embedded simulator listens on loopback.
        allow_plaintext: false,
    };
    let opts = |init: bool| -> anyhow::Result<LocalBackup> {
        let mut o = LocalBackup::new(
            LocalEws::new(&sim.url(), "svc-mailvault", "secret"),
            mailboxes.clone(),
            repo_dir.clone(),
            b"mailvault demo passphrase".to_vec(),
            state.join("backup"),
        );
        if init {
            o.init = Some(InitOptions::default());
        }
        Ok(o)
    };
    let repo_args = RepoArgs {
        repo: repo_dir.display().to_string(),
        passphrase_file: Some(pass_file.clone()),
        s3: Default::default(),
    };
    let repo = super::repo::create(&repo_args).await?;
    // The generated journal mailbox is the one whose reports are unwrapped.
    let journals: Vec<String> = mailboxes
        .iter()
        .filter(|m| m.starts_with("journal@"))
        .cloned()
        .collect();
    super::backup::set_journal_mailboxes(&state, &journals)?;
    let index = open_index(&state)?;

    // 2. Full backup.
    let bar = progress_bar(json, "full backup");
    let b2 = bar.clone();
    let full = pass(opts(false)?, &repo, &index, move |n| {
        b2.set_message(format!("{n} items indexed"))
    })
    .await;
    bar.finish_and_clear();
    let full = full.context("full backup")?;
    step(
        json,
        &format!(
            "full backup: {} items, {} → {} stored in {:.1}s",
            full.backup.items,
            bytesize::ByteSize(full.backup.bytes_logical),
            bytesize::ByteSize(full.backup.bytes_stored),
            full.backup.duration.as_secs_f64()
        ),
    );

    // 3. Changes in Exchange: edits, read flags, and a folder whose mail is deleted.
    let (victim_mb, victim) = pick_folder(&sim)?;
    let originals: BTreeMap<Vec<u8>, usize> =
        sim.items(&victim.id)
            .iter()
            .fold(BTreeMap::new(), |mut m, it| {
                *m.entry(it.mime.to_vec()).or_default() += 1;
                m
            });
    let mut changed = 0;
    for mb in mailboxes.iter().take(3) {
        for f in sim.folders(mb) {
            if f.id == victim.id || f.distinguished != Some("inbox") {
                continue;
            }
            for it in sim.items(&f.id).into_iter().take(2) {
                let mut mime = it.mime.to_vec();
                mime.extend_from_slice(b"\r\n-- edited after the first backup\r\n");
                sim.change_item(&it.id, &mime).context("editing an item")?;
                sim.set_read(&it.id, !it.is_read)
                    .context("flagging an item")?;
                changed += 1;
            }
        }
    }
    let before_delete = chrono::Utc::now().timestamp_millis();
    for it in sim.items(&victim.id) {
        sim.delete_item(&it.id).context("deleting an item")?;
    }
    step(
        json,
        &format!(
            "in Exchange: edited {changed} items and deleted all {} items of {victim_mb}:{}",
            originals.values().sum::<usize>(),
            victim.path.join("/")
        ),
    );

    // 4. Incremental.
    let bar = progress_bar(json, "incremental backup");
    let inc = pass(opts(false)?, &repo, &index, |_| {}).await;
    bar.finish_and_clear();
    let inc = inc.context("incremental backup")?;
    step(
        json,
        &format!(
            "incremental: {} new versions, {} changes, {} new bytes stored in {:.1}s",
            inc.backup.items,
            inc.backup.changes,
            bytesize::ByteSize(inc.backup.bytes_stored),
            inc.backup.duration.as_secs_f64()
        ),
    );

    // 5. Search and restore through the API, as an administrator would.
    repo.refresh().await.context("refreshing the repository")?;
    let target: Arc<dyn RestoreTarget> = Arc::new(DirectRestore::new(ews.client()?));
    let local = LocalApi::start(repo.clone(), index.clone(), Some(target)).await?;
    let mut c = local.client.clone();
    let folder_q = format!("mailbox:{victim_mb} folder:\"{}\"", victim.path.join("/"));
    let mut searches = Vec::new();
    for (label, q, t) in [
        ("with attachments", "has:attachment".to_owned(), 0),
        ("deleted (kept in the archive)", "is:deleted".to_owned(), 0),
        ("in the deleted folder, now", folder_q.clone(), 0),
        (
            "in the deleted folder, before",
            folder_q.clone(),
            before_delete,
        ),
    ] {
        let t0 = Instant::now();
        let mut s = c
            .inner
            .search(c.request(pb::SearchRequest {
                query: q.clone(),
                as_of_unix_ms: t,
                page_size: 1,
                limit: 1,
                offset: 0,
            }))
            .await
            .with_context(|| format!("search {q}"))?
            .into_inner();
        let total = match futures::StreamExt::next(&mut s).await {
            Some(p) => p.context("search")?.total,
            None => 0,
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        step(
            json,
            &format!(
                "search {q:?}{}: {total} {label} ({ms:.1} ms)",
                if t > 0 {
                    " as of before the delete"
                } else {
                    ""
                }
            ),
        );
        searches.push(serde_json::json!({"query": q, "as_of": t, "total": total, "ms": ms}));
    }

    let bar = progress_bar(json, "restoring the deleted folder");
    let b2 = bar.clone();
    let req = pb::RestoreRequest {
        what: Some(pb::restore_request::What::Folder(pb::FolderSelector {
            mailbox: victim_mb.clone(),
            path: victim.path.clone(),
        })),
        as_of_unix_ms: before_delete,
        ..Default::default()
    };
    let sum = client::restore(&mut c, req, move |p| {
        b2.set_message(format!("{}/{}", p.done, p.total))
    })
    .await;
    bar.finish_and_clear();
    let sum = sum?;
    local.shutdown().await?;

    // 6. The restore check: the folder again holds exactly the original bytes.
    let now: BTreeMap<Vec<u8>, usize> = sim
        .folders(&victim_mb)
        .into_iter()
        .filter(|f| f.path == victim.path)
        .flat_map(|f| sim.items(&f.id))
        .fold(BTreeMap::new(), |mut m, it| {
            *m.entry(it.mime.to_vec()).or_default() += 1;
            m
        });
    let restore_ok = now == originals && sum.failed == 0;
    step(
        json,
        &format!(
            "restore: {} items recreated in {victim_mb}:{} — restore check {}",
            sum.created + sum.copied + sum.replaced,
            victim.path.join("/"),
            if restore_ok {
                "PASSED (every message byte-identical)"
            } else {
                "FAILED"
            }
        ),
    );

    // 7. Verify every byte.
    let report = verify(&repo, VerifyOptions { read_data: true })
        .await
        .context("verify")?;
    let stats = super::repo::stats(&repo).await?;
    let elapsed = started.elapsed();
    let dedupe = if full.backup.bytes_new_raw > 0 {
        full.backup.bytes_logical as f64 / full.backup.bytes_new_raw as f64
    } else {
        0.0
    };
    let compression = if full.backup.bytes_stored > 0 {
        full.backup.bytes_new_raw as f64 / full.backup.bytes_stored as f64
    } else {
        0.0
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "mailboxes": mailboxes.len(), "items": stats.items,
                "logical_bytes": stats.logical_bytes, "stored_bytes": stats.stored_bytes,
                "dedupe_ratio": dedupe, "compression_ratio": compression,
                "full_seconds": full.backup.duration.as_secs_f64(),
                "incremental_seconds": inc.backup.duration.as_secs_f64(),
                "searches": searches, "restore": sum, "restore_check": restore_ok,
                "verify_clean": report.is_clean(), "seconds": elapsed.as_secs_f64(),
            })
        );
    } else {
        println!();
        println!("mailvault demo — summary");
        println!("  mailboxes          {}", mailboxes.len());
        println!(
            "  item versions      {} ({} history records)",
            stats.items, stats.history_records
        );
        println!(
            "  logical → stored   {} → {} ({:.1} % of the original)",
            bytesize::ByteSize(stats.logical_bytes),
            bytesize::ByteSize(stats.stored_bytes),
            stats.ratio * 100.0
        );
        println!("  dedupe             {dedupe:.2}× (mail sent to many mailboxes is stored once)");
        println!("  compression        {compression:.2}× (zstd, after dedupe)");
        println!(
            "  full / incremental {:.1}s / {:.1}s",
            full.backup.duration.as_secs_f64(),
            inc.backup.duration.as_secs_f64()
        );
        println!(
            "  verify             {}",
            if report.is_clean() {
                "clean (every byte read and authenticated)".to_owned()
            } else {
                format!("{} PROBLEMS", report.problems.len())
            }
        );
        println!(
            "  restore check      {}",
            if restore_ok { "passed" } else { "FAILED" }
        );
        println!("  total time         {:.1}s", elapsed.as_secs_f64());
        if let Some(k) = &a.keep {
            println!(
                "  repository         {} (passphrase in {})",
                repo_dir.display(),
                pass_file.display()
            );
            println!(
                "  try                mailvault search --repo {} --passphrase-file {} --state-dir {} 'has:attachment'",
                repo_dir.display(),
                pass_file.display(),
                k.join("state").display()
            );
        }
    }
    sim.shutdown().await;
    if !restore_ok {
        bail!("the restore check failed: the restored folder does not hold the original messages");
    }
    if !report.is_clean() {
        bail!("verify found {} problems", report.problems.len());
    }
    Ok(())
}

/// A folder worth deleting: not well-known, with a few items; else the fullest inbox.
fn pick_folder(
    sim: &mailvault_ews_sim::SimHandle,
) -> anyhow::Result<(String, mailvault_ews_sim::FolderInfo)> {
    let mut best: Option<(usize, String, mailvault_ews_sim::FolderInfo)> = None;
    for mb in sim.mailboxes() {
        if mb.starts_with("journal@") {
            continue;
        }
        for f in sim.folders(&mb) {
            let n = f.total;
            let score = if f.distinguished.is_none() {
                n * 100
            } else if f.distinguished == Some("inbox") {
                n
            } else {
                0
            };
            if n >= 2 && best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, mb.clone(), f));
            }
        }
    }
    best.map(|(_, mb, f)| (mb, f))
        .context("the simulator has no folder with mail to delete")
}
