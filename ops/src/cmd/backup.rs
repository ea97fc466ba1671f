//! Single-process backup, restore and reindex: collector, aggregator and indexer in this
//! process over the in-process bus (`mailvault_ops::local`), the repository in a directory,
//! the index in the state directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use mailvault_collector::ews::client::{EwsAuth, HttpEws, HttpEwsConfig};
use mailvault_collector::restore::Restorer;
use mailvault_collector::secret::Secret;
use mailvault_collector::throttle::Backoff;
use mailvault_format::Repository;
use mailvault_indexer::api::{ApiError, RestoreTarget};
use mailvault_indexer::consume::{self, Acker, Delivery, EdgeError, Source};
use mailvault_indexer::{Index, Indexer};
use mailvault_ops::local::{self, BackupReport, EVENTS_STREAM, LocalBackup, LocalEws};
use mailvault_proto::api::v1 as pb;
use mailvault_proto::restore::v1 as wire;
use mailvault_runtime::bus::{AckHandle, Consumer, ConsumerConfig};
use mailvault_runtime::handoff::Handoff;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{self, CollisionArg};
use super::local::{LocalApi, state_dir};
use super::repo::RepoArgs;

/// How to reach Exchange.
#[derive(Debug, Clone, Args)]
pub struct EwsArgs {
    /// EWS endpoint, e.g. https://exch01.contoso.com/EWS/Exchange.asmx (required to talk to
    /// Exchange; a restore with --server leaves that to the install's collectors).
    #[arg(long, env = "MAILVAULT_EWS_URL")]
    pub ews: Option<String>,
    /// Service account (needs the ApplicationImpersonation role); required with --ews.
    #[arg(long, env = "MAILVAULT_EWS_USER", requires = "ews")]
    pub user: Option<String>,
    /// File holding the service account's password (first line); required with --ews.
    #[arg(long, env = "MAILVAULT_EWS_PASSWORD_FILE", requires = "ews")]
    pub password_file: Option<PathBuf>,
    /// How to log on: `ntlm` (Windows authentication, on by default on Exchange's EWS virtual
    /// directory) or `basic` (must be enabled there; use it only over HTTPS).
    #[arg(long, env = "MAILVAULT_EWS_AUTH", value_enum, default_value_t = AuthArg::Ntlm)]
    pub auth: AuthArg,
    /// Extra PEM CA certificate(s) to trust for the EWS endpoint.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (labs only).
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// Log on as each mailbox's owner would (no ExchangeImpersonation header).
    #[arg(long)]
    pub no_impersonation: bool,
    /// Set from the command's `--allow-plaintext` (one flag per command, whichever hop it
    /// takes).
    #[arg(skip)]
    pub allow_plaintext: bool,
}

/// `--allow-plaintext` of the commands that talk to Exchange or to the API.
#[derive(Debug, Clone, Copy, Args)]
pub struct PlaintextArg {
    /// Allow plain text on this command's network hop: an `http://` EWS URL off this machine
    /// (credentials and every mail in clear), or an `http://` API server off this machine (the
    /// bearer token in clear).
    #[arg(long)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    Ntlm,
    Basic,
}

impl From<AuthArg> for EwsAuth {
    fn from(a: AuthArg) -> Self {
        match a {
            AuthArg::Ntlm => EwsAuth::Ntlm,
            AuthArg::Basic => EwsAuth::Basic,
        }
    }
}

impl EwsArgs {
    /// The URL, user and password file, all of which talking to Exchange needs.
    fn endpoint(&self) -> anyhow::Result<(&str, &str, &Path)> {
        match (&self.ews, &self.user, &self.password_file) {
            (Some(url), Some(user), Some(pw)) => Ok((url, user, pw)),
            _ => bail!(
                "this needs Exchange: --ews URL, --user ACCOUNT and --password-file FILE (or \
                 MAILVAULT_EWS_URL, MAILVAULT_EWS_USER, MAILVAULT_EWS_PASSWORD_FILE)"
            ),
        }
    }

    fn refuse_plaintext(&self) -> anyhow::Result<()> {
        mailvault_runtime::plaintext::check(
            self.endpoint()?.0,
            "the EWS credentials and mail",
            "--allow-plaintext",
            self.allow_plaintext,
        )
        .map_err(anyhow::Error::msg)
    }

    fn password(&self) -> anyhow::Result<String> {
        // The shared reader: a file others may read is warned about, as for every secret.
        let file = self.endpoint()?.2;
        let raw = mailvault_runtime::secret_file::read_secret_file(file)
            .with_context(|| format!("reading EWS password file {}", file.display()))?;
        let text = String::from_utf8(raw).context("the EWS password file is not UTF-8")?;
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    pub fn local(&self) -> anyhow::Result<LocalEws> {
        self.refuse_plaintext()?;
        let (url, user, _) = self.endpoint()?;
        let mut e = LocalEws::new(url, user, &self.password()?);
        e.auth = self.auth.into();
        e.impersonation = !self.no_impersonation;
        e.ca_file = self.ca_file.clone();
        e.insecure_skip_verify = self.insecure_skip_verify;
        Ok(e)
    }

    pub fn client(&self) -> anyhow::Result<HttpEws> {
        self.refuse_plaintext()?;
        HttpEws::new(
            HttpEwsConfig {
                url: self.endpoint()?.0.to_owned(),
                username: self.endpoint()?.1.to_owned(),
                password: Secret::new(self.password()?),
                auth: self.auth.into(),
                server_version: "Exchange2013_SP1".into(),
                impersonation: !self.no_impersonation,
                ca_file: self.ca_file.clone(),
                insecure_skip_verify: self.insecure_skip_verify,
                request_timeout: Duration::from_secs(120),
                per_server_concurrency: 8,
                per_account_concurrency: 2,
                backoff: Backoff::default(),
            },
            Arc::new(mailvault_collector::metrics::Metrics::default()),
        )
        .with_context(|| format!("EWS client for {}", self.ews.as_deref().unwrap_or_default()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub ews: EwsArgs,
    #[command(flatten)]
    pub plaintext: PlaintextArg,
    /// Mailboxes to back up (comma-separated SMTP addresses).
    #[arg(long, value_delimiter = ',')]
    pub mailboxes: Vec<String>,
    /// File with one mailbox per line (or a CSV whose first column is the address).
    #[arg(long)]
    pub mailboxes_file: Option<PathBuf>,
    /// Every mailbox on the server (not possible over EWS alone; see the error).
    #[arg(long)]
    pub all: bool,
    /// One pass, then exit (otherwise: a pass every --interval until Ctrl-C).
    #[arg(long)]
    pub once: bool,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    pub interval: Duration,
    /// The journal mailboxes (Exchange's journaling recipients), comma-separated: only their
    /// journal reports are unwrapped and shown to the recipients the envelope names. Kept in
    /// the state directory for later commands. Never given, every mailbox's reports are
    /// unwrapped (anyone can send a message that looks like one).
    #[arg(long, value_delimiter = ',')]
    pub journal_mailboxes: Option<Vec<String>>,
    /// Local state: search index, sync checkpoints, bodies in transit. Default:
    /// ~/.local/state/mailvault/<repository id>.
    #[arg(long, env = "MAILVAULT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Create the repository if it does not exist yet.
    #[arg(long)]
    pub init: bool,
}

/// Where a restore runs: through a distributed install's API (`--server`; its collectors write
/// into Exchange), or in this process from `--repo` straight into `--ews`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub server: client::ServerArgs,
    /// Local repository (single-process install); not with --server.
    #[arg(long, env = "MAILVAULT_REPO", conflicts_with = "server")]
    pub repo: Option<String>,
    #[arg(long, env = "MAILVAULT_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub s3: crate::cmd::repo::S3Args,
    /// Exchange to write into (single process; with --server the install's collectors write).
    #[command(flatten)]
    pub ews: EwsArgs,
    #[command(flatten)]
    pub plaintext: PlaintextArg,
    #[arg(long, env = "MAILVAULT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// With --server: the collector (its `source`) to write through; default the one that
    /// backed the item up.
    #[arg(long, requires = "server")]
    pub target_source: Option<String>,
    /// Item ids (64 hex, as `search --json` prints).
    pub ids: Vec<String>,
    /// A folder: MAILBOX:PATH, e.g. alice@contoso.com:Inbox/Projects
    #[arg(long, conflicts_with_all = ["mailbox", "ids"])]
    pub folder: Option<String>,
    /// A whole mailbox.
    #[arg(long, conflicts_with = "ids")]
    pub mailbox: Option<String>,
    /// Restore into this mailbox instead of the original.
    #[arg(long)]
    pub to_mailbox: Option<String>,
    /// Restore below this folder path (e.g. "Recovered/2026-11-22") instead of the original
    /// path.
    #[arg(long)]
    pub to_folder: Option<String>,
    /// As the archive was at this time (RFC 3339, YYYY-MM-DD or unix ms); default now.
    #[arg(long)]
    pub as_of: Option<String>,
    #[arg(long, value_enum, default_value = "skip")]
    pub collision: CollisionArg,
    /// Mark restored items unread.
    #[arg(long)]
    pub mark_unread: bool,
}

pub fn open_index(state: &Path) -> anyhow::Result<Index> {
    let dir = state.join("index");
    let index =
        Index::open(&dir).with_context(|| format!("opening search index {}", dir.display()))?;
    index.set_journal_mailboxes(journal_mailboxes(state)?);
    Ok(index)
}

/// The state file naming the journal mailboxes (one address per line).
fn journal_file(state: &Path) -> PathBuf {
    state.join("journal-mailboxes")
}

/// The journal mailboxes this state directory was given (`backup --journal-mailboxes`), or
/// `None` when never given (every mailbox's journal reports are unwrapped then).
pub fn journal_mailboxes(state: &Path) -> anyhow::Result<Option<Vec<String>>> {
    let f = journal_file(state);
    match std::fs::read_to_string(&f) {
        Ok(text) => Ok(Some(
            text.lines()
                .map(|l| l.trim().to_lowercase())
                .filter(|l| !l.is_empty())
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", f.display())),
    }
}

/// Records the journal mailboxes for every later command on this state directory; says so
/// when they change (items indexed before keep the old setting until `mailvault reindex`).
pub fn set_journal_mailboxes(state: &Path, mailboxes: &[String]) -> anyhow::Result<()> {
    let mut want: Vec<String> = mailboxes
        .iter()
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    want.sort();
    want.dedup();
    if let Some(before) = journal_mailboxes(state)?
        && before != want
    {
        eprintln!(
            "journal mailboxes changed from {before:?} to {want:?}: items indexed before keep \
             the old setting until `mailvault reindex`"
        );
    }
    let f = journal_file(state);
    std::fs::write(&f, want.join("\n") + "\n").with_context(|| format!("writing {}", f.display()))
}

/// Opens the index and applies what the repository holds that it does not: a pass killed
/// after its items were durable but before the index committed them left them unsearchable,
/// and the folder checkpoints will not bring them again.
pub async fn open_index_caught_up(state: &Path, repo: &Repository) -> anyhow::Result<Index> {
    let index = open_index(state)?;
    let ix = Indexer::new(repo.clone(), index.clone());
    mailvault_indexer::catch_up(&ix)
        .await
        .context("catching the search index up with the repository")?;
    Ok(index)
}

fn read_mailboxes(args: &BackupArgs) -> anyhow::Result<Vec<String>> {
    if args.all {
        bail!(
            "--all: EWS cannot enumerate mailboxes. Export the list on the Exchange server \
             (Get-Mailbox -ResultSize Unlimited | Select PrimarySmtpAddress | Export-Csv mailboxes.csv) \
             and pass --mailboxes-file mailboxes.csv"
        );
    }
    let mut out: Vec<String> = args
        .mailboxes
        .iter()
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(f) = &args.mailboxes_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading mailbox list {}", f.display()))?;
        out.extend(mailvault_collector::config::parse_mailbox_csv(&text));
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        bail!("no mailboxes: pass --mailboxes a@x,b@x or --mailboxes-file FILE");
    }
    Ok(out)
}

/// The indexer's consumer of the bus's event stream.
struct BusEvents(Consumer);

#[derive(Debug)]
struct BusAck(AckHandle);

#[async_trait]
impl Acker for BusAck {
    async fn ack(&self) -> Result<(), EdgeError> {
        self.0.ack();
        Ok(())
    }
    async fn nak(&self, delay: Duration) -> Result<(), EdgeError> {
        self.0.nak(delay);
        Ok(())
    }
    async fn term(&self) -> Result<(), EdgeError> {
        self.0.term();
        Ok(())
    }
}

#[async_trait]
impl Source for BusEvents {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, EdgeError> {
        Ok(self
            .0
            .fetch(max, 64 << 20, wait)
            .await
            .into_iter()
            .map(|d| Delivery {
                subject: d.message.subject.clone(),
                payload: d.message.payload.clone(),
                attempt: d.attempt,
                // The in-process bus carries no headers.
                trace: None,
                acker: Box::new(BusAck(d.acker)),
            })
            .collect())
    }
}

/// Events per index commit at most in a single-process pass. Every commit writes a segment
/// with its own term dictionary, and the vocabulary of one mail store repeats from segment to
/// segment: committing every 2,000 items made serialising segments half of the index writer's
/// CPU.
/// The pass commits when the events pause (`idle`), at the end, and at least this often, which
/// bounds what a crash makes the next pass index again.
const INDEX_COMMIT_EVERY: usize = 16_384;
const INDEX_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// What one single-process pass did, index included.
#[derive(Debug, Clone)]
pub struct Pass {
    pub backup: BackupReport,
    pub indexed: consume::ConsumeReport,
}

/// One backup pass with the indexer attached: returns when every item is durable in the
/// repository and searchable.
pub async fn pass(
    opts: LocalBackup,
    repo: &mailvault_format::Repository,
    index: &Index,
    on_progress: impl Fn(u64) + Send + 'static,
) -> anyhow::Result<Pass> {
    let bus = opts.bus.clone().unwrap_or_default();
    local::ensure_streams(&bus, opts.max_in_bus)?;
    // Up to INDEX_COMMIT_EVERY events are applied per index commit, so that many may wait
    // unsettled.
    let mut cc = ConsumerConfig::new(consume::CONSUMER, &consume::SUBJECTS);
    cc.max_ack_pending = INDEX_COMMIT_EVERY;
    let events = bus
        .get_or_create_consumer(EVENTS_STREAM, cc)
        .context("indexer consumer")?;
    let repo = repo.clone();
    // The aggregator writes through the indexer's repository handle, so every pack it writes
    // is known to the indexer as soon as it is durable (no refresh of the index objects).
    // Items go from the aggregator to the indexer in memory (up to 64 MiB of them waiting);
    // the indexer reads back only what is not there.
    let handoff = Arc::new(Handoff::new(64 << 20));
    let opts = LocalBackup {
        bus: Some(bus.clone()),
        repository: Some(repo.clone()),
        handoff: Some(handoff.clone()),
        ..opts
    };
    let stop = CancellationToken::new();
    let input_done = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::watch::channel(consume::ConsumeReport::default());
    let index2 = index.clone();
    let stop2 = stop.clone();
    let done2 = input_done.clone();
    let consumer = events.clone();
    let indexer = tokio::spawn(async move {
        let mut src = BusEvents(consumer);
        let cfg = consume::ConsumeConfig {
            batch: INDEX_COMMIT_EVERY,
            wait: INDEX_COMMIT_WAIT,
            idle: Duration::from_millis(50),
        };
        let ix = Indexer::new(repo, index2).with_handoff(handoff);
        let report = consume::run_until_drained(&ix, &mut src, &cfg, stop2, done2, Some(tx)).await;
        anyhow::Ok(report)
    });
    let ticker = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let r = *rx.borrow_and_update();
            on_progress(r.stored);
        }
    });
    let backup = local::backup_once(opts).await;
    // Every event of the pass is in the stream now (the aggregators acked every item after
    // publishing its event).
    input_done.cancel();
    // Everything published is in the event stream; wait until the indexer settled it all
    // (or stopped: then its error is the answer).
    if backup.is_ok() && !indexer.is_finished() {
        tokio::select! {
            () = events.wait_idle() => {}
            () = async { while !indexer.is_finished() { tokio::time::sleep(Duration::from_millis(100)).await } } => {}
        }
    }
    stop.cancel();
    let indexed = indexer.await.context("indexer task")??;
    ticker.abort();
    Ok(Pass {
        backup: backup?,
        indexed,
    })
}

fn print_pass(p: &Pass, json: bool) {
    let b = &p.backup;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "captured": b.captured, "items": b.items, "changes": b.changes,
                "duplicates": b.duplicates, "bytes_logical": b.bytes_logical,
                "bytes_stored": b.bytes_stored, "quarantined": b.quarantined(),
                "failed_mailboxes": b.failed_mailboxes, "failed_folders": b.failed_folders,
                "indexed": p.indexed.stored, "seconds": b.duration.as_secs_f64(),
            })
        );
    } else {
        println!(
            "backed up {} item versions ({} changes, {} quarantined) in {:.1}s: {} logical, {} new stored; {} indexed",
            b.items,
            b.changes,
            b.quarantined(),
            b.duration.as_secs_f64(),
            bytesize::ByteSize(b.bytes_logical),
            bytesize::ByteSize(b.bytes_stored),
            p.indexed.stored
        );
        if b.failed_mailboxes + b.failed_folders > 0 {
            println!(
                "  {} mailboxes and {} folders failed; they are retried on the next pass (see the log)",
                b.failed_mailboxes, b.failed_folders
            );
        }
    }
}

/// Exit status of a `backup --once` whose pass left mailboxes or folders out (wrong password,
/// mailbox not found, Exchange unreachable): they are retried on the next pass.
pub const EXIT_INCOMPLETE: i32 = 5;

/// Runs the backup; with `--once`, exits [`EXIT_INCOMPLETE`] when anything failed.
pub async fn backup(mut args: BackupArgs, json: bool) -> anyhow::Result<i32> {
    args.ews.allow_plaintext = args.plaintext.allow_plaintext;
    if args.repo.repo.starts_with("s3://") {
        bail!(
            "single-process backup writes to a local directory; for S3 run the distributed install (README, \"Distributed run\")"
        );
    }
    let mailboxes = read_mailboxes(&args)?;
    let passphrase = args.repo.passphrase()?;
    let exists = Path::new(&args.repo.repo).join("config").exists();
    if !exists && !args.init {
        bail!(
            "no repository at {}: run `mailvault init --repo {}` first, or pass --init",
            args.repo.repo,
            args.repo.repo
        );
    }
    if !exists {
        super::repo::init(&args.repo, json).await?;
    }
    let repo = args.repo.open().await?;
    let state = state_dir(args.state_dir.as_deref(), &repo)?;
    if let Some(j) = &args.journal_mailboxes {
        set_journal_mailboxes(&state, j)?;
    }
    let index = open_index_caught_up(&state, &repo).await?;
    loop {
        let opts = LocalBackup::new(
            args.ews.local()?,
            mailboxes.clone(),
            PathBuf::from(&args.repo.repo),
            passphrase.clone(),
            state.join("backup"),
        );
        let bar = progress_bar(json, "backing up");
        let b2 = bar.clone();
        let p = pass(opts, &repo, &index, move |n| {
            b2.set_message(format!("{n} items indexed"));
        })
        .await;
        bar.finish_and_clear();
        let p = p?;
        print_pass(&p, json);
        if args.once {
            let failed = p.backup.failed_mailboxes + p.backup.failed_folders;
            return Ok(if failed > 0 { EXIT_INCOMPLETE } else { 0 });
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

pub fn progress_bar(hidden: bool, what: &str) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    b.set_prefix(what.to_owned());
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// Restores straight through the collector's restorer over EWS, in this process.
#[derive(Debug)]
pub struct DirectRestore {
    restorer: Restorer<HttpEws>,
}

impl DirectRestore {
    pub fn new(ews: HttpEws) -> DirectRestore {
        DirectRestore {
            restorer: Restorer::new(Arc::new(ews)),
        }
    }
}

#[async_trait]
impl RestoreTarget for DirectRestore {
    async fn run(
        &self,
        _source: &str,
        job_id: &str,
        mut items: mpsc::Receiver<(wire::RestoreItem, Bytes)>,
        results: mpsc::Sender<wire::RestoreResult>,
    ) -> Result<(), ApiError> {
        while let Some((mut it, body)) = items.recv().await {
            it.job_id = job_id.to_owned();
            let r = self.restorer.apply(&it, body).await;
            if results.send(r).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

pub fn restore_request(a: &RestoreArgs) -> anyhow::Result<pb::RestoreRequest> {
    let what = if let Some(f) = &a.folder {
        let Some((mailbox, path)) = f.split_once(':') else {
            bail!("--folder {f:?}: write MAILBOX:PATH, e.g. alice@contoso.com:Inbox/Projects");
        };
        pb::restore_request::What::Folder(pb::FolderSelector {
            mailbox: mailbox.to_owned(),
            path: split_path(path),
        })
    } else if let Some(m) = &a.mailbox {
        pb::restore_request::What::Mailbox(m.clone())
    } else if !a.ids.is_empty() {
        pb::restore_request::What::Items(pb::ItemIds { ids: a.ids.clone() })
    } else {
        bail!("say what to restore: item ids, --folder MAILBOX:PATH or --mailbox MAILBOX");
    };
    Ok(pb::RestoreRequest {
        what: Some(what),
        as_of_unix_ms: a
            .as_of
            .as_deref()
            .map(client::parse_time)
            .transpose()?
            .unwrap_or(0),
        to_mailbox: a.to_mailbox.clone().unwrap_or_default(),
        to_folder: a.to_folder.as_deref().map(split_path).unwrap_or_default(),
        collision: match a.collision {
            CollisionArg::Skip => pb::Collision::Skip,
            CollisionArg::Copy => pb::Collision::Copy,
            CollisionArg::Replace => pb::Collision::Replace,
        } as i32,
        mark_unread: a.mark_unread,
        target_source: "mailvault-local".into(),
        include_deleted: true,
    })
}

pub fn split_path(p: &str) -> Vec<String> {
    p.split('/')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Exit code 4 when some items failed.
pub async fn restore(mut a: RestoreArgs, json: bool) -> anyhow::Result<i32> {
    let mut req = restore_request(&a)?;
    let bar = progress_bar(json, "restoring");
    let b2 = bar.clone();
    let show = move |p: &pb::RestoreProgress| b2.set_message(format!("{}/{}", p.done, p.total));
    let sum = if a.server.server.is_some() {
        a.server.allow_plaintext = a.plaintext.allow_plaintext;
        req.target_source = a.target_source.clone().unwrap_or_default();
        let mut c = client::Client::from_args(&a.server).await?;
        client::restore(&mut c, req, show).await
    } else {
        let ews = &mut a.ews;
        let (Some(repo), Some(_)) = (&a.repo, &ews.ews) else {
            bail!(
                "say where to restore from and into: --repo with --ews, --user and \
                 --password-file (single process), or --server URL --token-file F (a \
                 distributed install)"
            );
        };
        ews.allow_plaintext = a.plaintext.allow_plaintext;
        let repo = RepoArgs {
            repo: repo.clone(),
            passphrase_file: a.passphrase_file.clone(),
            s3: a.s3.clone(),
        }
        .open()
        .await?;
        let state = state_dir(a.state_dir.as_deref(), &repo)?;
        let index = open_index_caught_up(&state, &repo).await?;
        let target: Arc<dyn RestoreTarget> = Arc::new(DirectRestore::new(ews.client()?));
        let local = LocalApi::start(repo, index, Some(target)).await?;
        let mut c = local.client.clone();
        let sum = client::restore(&mut c, req, show).await;
        local.shutdown().await?;
        sum
    };
    bar.finish_and_clear();
    let sum = sum?;
    if json {
        println!("{}", serde_json::to_string(&sum)?);
    } else {
        println!(
            "restored {} items: {} created, {} copied, {} replaced, {} skipped (already there), {} failed",
            sum.total, sum.created, sum.copied, sum.replaced, sum.skipped, sum.failed
        );
        for e in &sum.errors {
            println!("  {e}");
        }
    }
    Ok(if sum.failed > 0 { 4 } else { 0 })
}

pub async fn reindex(
    repo: &RepoArgs,
    state_dir_arg: Option<&Path>,
    accept_failures: bool,
    json: bool,
) -> anyhow::Result<()> {
    let r = repo.open().await?;
    let state = state_dir(state_dir_arg, &r)?;
    let fresh = state.join("index.rebuild");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).with_context(|| format!("removing {}", fresh.display()))?;
    }
    let report = mailvault_indexer::reindex_with(&r, &fresh, journal_mailboxes(&state)?)
        .await
        .context("rebuilding the index")?;
    if !report.failures.is_empty() && !accept_failures {
        for f in &report.failures {
            eprintln!("  {f}");
        }
        bail!(
            "the rebuilt index lacks {} records that could not be read (listed above); the \
             live index is unchanged and the rebuild is kept in {}. Pass --accept-failures to \
             use it anyway",
            report.failures.len(),
            fresh.display()
        );
    }
    // The live index stays in place until the new one is complete: moved aside, the new one
    // moved in, and only then the old one removed. A crash leaves one of them at `index`.
    let live = state.join("index");
    let old = state.join("index.old");
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    if live.exists() {
        std::fs::rename(&live, &old).with_context(|| format!("moving {} aside", live.display()))?;
    }
    std::fs::rename(&fresh, &live)
        .with_context(|| format!("moving index into {}", live.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"versions": report.versions, "changes": report.changes, "failures": report.failures.len()})
        );
    } else {
        println!(
            "reindexed {} item versions and {} changes ({} failures)",
            report.versions,
            report.changes,
            report.failures.len()
        );
        for f in &report.failures {
            println!("  {f:?}");
        }
    }
    Ok(())
}
