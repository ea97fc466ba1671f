//! The indexer stage: events plus the repository → index, and rebuilding an index from the
//! repository alone.

use std::path::Path;
use std::sync::Arc;

use mailvault_format::{BlobId, ItemManifest, Repository};
use mailvault_proto::events::v1::{ItemChangeRecorded, ItemStored};
use mailvault_proto::ingest::v1::{ChangeKind as WireKind, ItemChange};
use mailvault_runtime::handoff::Handoff;
use prost::Message as _;

use crate::error::IndexError;
use crate::history::{ChangeInput, ChangeKind, ItemStoredInput};
use crate::index::Index;
use crate::metrics::Metrics;

/// Property that marks a history record (docs/wire.md, "Item history records").
pub const RECORD_PROPERTY: &str = "mailvault.record";
/// Commit at least this often during a reindex (bounds the writer's pending records).
const REINDEX_COMMIT_EVERY: usize = 2000;

/// Reads stored items from the repository and applies events to the index.
#[derive(Debug, Clone)]
pub struct Indexer {
    pub repo: Repository,
    pub index: Index,
    /// Items an aggregator in this process just wrote; tried before the repository.
    pub handoff: Option<Arc<Handoff>>,
    /// Where the consumer counts applied events and commits.
    pub metrics: Arc<Metrics>,
}

fn blob_id(hex: &str) -> Result<BlobId, IndexError> {
    BlobId::from_hex(hex).ok_or_else(|| IndexError::BadManifestId(hex.to_owned()))
}

fn repo_err(what: String) -> impl FnOnce(mailvault_format::FormatError) -> IndexError {
    move |source| IndexError::Repository { what, source }
}

/// Reads a manifest; refreshes the repository's index once if the manifest is not known yet
/// (written by an aggregator after this repository handle last looked).
async fn manifest(repo: &Repository, id: &BlobId) -> Result<ItemManifest, IndexError> {
    if !repo.contains(id) {
        repo.refresh()
            .await
            .map_err(repo_err("the repository index (refresh)".into()))?;
    }
    repo.manifest(id)
        .await
        .map_err(repo_err(format!("manifest {id}")))
}

fn change_from_record(
    record_id: &str,
    m: &ItemManifest,
    content: &[u8],
) -> Result<ChangeInput, IndexError> {
    let c = ItemChange::decode(content).map_err(|e| IndexError::HistoryRecord {
        record: record_id.to_owned(),
        cause: e.to_string(),
    })?;
    let kind = match c.kind() {
        WireKind::ReadFlag => ChangeKind::ReadFlag,
        WireKind::Move => ChangeKind::Move,
        WireKind::Delete => ChangeKind::Delete,
        WireKind::Unspecified => {
            return Err(IndexError::ChangeKind {
                item: format!("{}/{}", m.mailbox, m.item_id),
                kind: "unspecified".into(),
            });
        }
    };
    Ok(ChangeInput {
        record_id: record_id.to_owned(),
        mailbox: c.mailbox,
        item_id: c.item_id,
        change_key: c.change_key,
        kind,
        folder_id: c.folder_id,
        folder_path: c.folder_path,
        is_read: c.is_read,
        observed_unix_ms: c.observed_unix_ms,
    })
}

/// Body text read back from the repository, for rewrites of items the index keeps without it.
#[derive(Debug)]
struct RepositoryBodies {
    repo: Repository,
}

impl crate::index::BodySource for RepositoryBodies {
    fn body(&self, manifest_id: &str, unwrap_journal: bool) -> Result<String, IndexError> {
        let id = blob_id(manifest_id)?;
        // Index writes run on the blocking pool, where waiting on the runtime is allowed.
        let handle =
            tokio::runtime::Handle::try_current().map_err(|e| IndexError::BodyUnavailable {
                item: String::new(),
                manifest: manifest_id.to_owned(),
                cause: format!("no async runtime to read the repository with: {e}"),
            })?;
        let mime = handle
            .block_on(self.repo.read_item(&id))
            .map_err(repo_err(format!(
                "item {id} (its body, to rewrite the item)"
            )))?;
        Ok(crate::extract::extract_item(&mime, unwrap_journal).body)
    }
}

impl Indexer {
    pub fn new(repo: Repository, index: Index) -> Self {
        index.set_body_source(Arc::new(RepositoryBodies { repo: repo.clone() }));
        Indexer {
            repo,
            index,
            handoff: None,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (the process's, served at `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes stored items from `handoff` when they are there instead of reading them back.
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Indexes the stored version (its MIME read from the repository). Not committed.
    pub async fn handle_stored(&self, e: &ItemStored) -> Result<(), IndexError> {
        let work = self.load_stored(e).await?;
        self.blocking(move |ix| work.apply(ix)).await
    }

    /// What applying a stored version takes: the version with its bytes, or (for a history
    /// record announced as stored) the change it records. Reads the repository unless the
    /// item was handed over by an aggregator of this process.
    pub async fn load_stored(&self, e: &ItemStored) -> Result<Work, IndexError> {
        let id = blob_id(&e.manifest_id)?;
        if let Some((m, mime)) = self.handoff.as_ref().and_then(|h| h.take(&id))
            && !m.properties.contains_key(RECORD_PROPERTY)
        {
            return Ok(Work::Version(ItemStoredInput::new(e, &m), mime));
        }
        let m = manifest(&self.repo, &id).await?;
        if m.properties.contains_key(RECORD_PROPERTY) {
            // A history record announced as stored: apply it as the change it is.
            let content = self
                .repo
                .read_item(&id)
                .await
                .map_err(repo_err(format!("history record {id}")))?;
            return Ok(Work::Change(change_from_record(
                &id.to_hex(),
                &m,
                &content,
            )?));
        }
        let mime = self
            .repo
            .read_item(&id)
            .await
            .map_err(repo_err(format!("item {id} of {}", m.mailbox)))?;
        Ok(Work::Version(ItemStoredInput::new(e, &m), mime.into()))
    }

    /// Applies the change the event announces. Not committed.
    pub async fn handle_changed(&self, e: &ItemChangeRecorded) -> Result<(), IndexError> {
        let c = ChangeInput::from_event(e)?;
        self.blocking(move |ix| ix.apply_change(&c)).await
    }

    /// Applies loaded work in order, in one call on the blocking pool: handing each item to a
    /// blocking thread of its own cost more in thread wake-ups than parsing it. Not committed.
    pub async fn apply_all(&self, work: Vec<Work>) -> Vec<Result<(), IndexError>> {
        let n = work.len();
        match self
            .blocking(move |ix| Ok(work.into_iter().map(|w| w.apply(ix)).collect::<Vec<_>>()))
            .await
        {
            Ok(results) => results,
            Err(e) => (0..n)
                .map(|_| Err(IndexError::Join(e.to_string())))
                .collect(),
        }
    }

    /// Commits the index (on the blocking pool).
    pub async fn commit(&self) -> Result<(), IndexError> {
        self.blocking(|ix| ix.commit()).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let ix = self.index.clone();
        tokio::task::spawn_blocking(move || f(&ix))
            .await
            .map_err(|e| IndexError::Join(e.to_string()))?
    }
}

/// One event's work, ready to apply to the index.
#[derive(Debug)]
pub enum Work {
    Version(ItemStoredInput, bytes::Bytes),
    Change(ChangeInput),
}

impl Work {
    fn apply(&self, ix: &Index) -> Result<(), IndexError> {
        match self {
            Work::Version(input, mime) => ix.add_version(input, mime),
            Work::Change(c) => ix.apply_change(c),
        }
    }
}

/// What a reindex did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReindexReport {
    pub versions: usize,
    pub changes: usize,
    /// Manifests that could not be read or applied, each naming the manifest and the cause.
    pub failures: Vec<String>,
}

/// Builds an index in `dir` from the repository alone: every manifest (item versions and
/// history records) applied in collection order. Journal reports are unwrapped in every
/// mailbox; see [`reindex_with`].
pub async fn reindex(repo: &Repository, dir: &Path) -> Result<ReindexReport, IndexError> {
    reindex_with(repo, dir, None).await
}

/// [`reindex`], unwrapping journal reports only in `journal_mailboxes` when given.
pub async fn reindex_with(
    repo: &Repository,
    dir: &Path,
    journal_mailboxes: Option<Vec<String>>,
) -> Result<ReindexReport, IndexError> {
    repo.refresh()
        .await
        .map_err(repo_err("the repository index (refresh)".into()))?;
    let index = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Index::open(&dir))
            .await
            .map_err(|e| IndexError::Join(e.to_string()))??
    };
    index.set_journal_mailboxes(journal_mailboxes);
    let indexer = Indexer::new(repo.clone(), index);
    apply_manifests(&indexer, repo.manifests()).await
}

/// Applies to `indexer`'s index whatever the repository holds that the index does not (after
/// a crash between a repository flush and the index commit that would have followed), and
/// commits. On an index that never recorded what it applied, that is everything once.
/// Applying is idempotent, so an item applied twice is still one item in the index.
pub async fn catch_up(indexer: &Indexer) -> Result<ReindexReport, IndexError> {
    indexer
        .repo
        .refresh()
        .await
        .map_err(repo_err("the repository index (refresh)".into()))?;
    let log = indexer.index.applied_log().clone();
    let path = log.path().display().to_string();
    let applied = tokio::task::spawn_blocking(move || log.load())
        .await
        .map_err(|e| IndexError::Join(e.to_string()))?
        .map_err(|e| IndexError::Applied {
            path,
            cause: e.to_string(),
        })?;
    let missing: Vec<BlobId> = indexer
        .repo
        .manifests()
        .into_iter()
        .filter(|id| !applied.contains(id))
        .collect();
    drop(applied);
    if missing.is_empty() {
        return Ok(ReindexReport::default());
    }
    let report = apply_manifests(indexer, missing).await?;
    tracing::info!(
        versions = report.versions,
        changes = report.changes,
        failures = report.failures.len(),
        "the index was behind the repository; caught up"
    );
    for f in &report.failures {
        tracing::warn!(failure = %f, "not applied while catching up (tried again next start)");
    }
    Ok(report)
}

/// Applies these manifests in collection order, committing every [`REINDEX_COMMIT_EVERY`]
/// and at the end; what cannot be read or applied is reported, not fatal.
async fn apply_manifests(indexer: &Indexer, ids: Vec<BlobId>) -> Result<ReindexReport, IndexError> {
    let repo = &indexer.repo;
    let mut report = ReindexReport::default();
    let mut all = Vec::new();
    for id in ids {
        match repo.manifest(&id).await {
            Ok(m) => all.push((id, m)),
            Err(e) => report.failures.push(format!("manifest {id}: {e}")),
        }
    }
    all.sort_by_key(|(id, m)| (m.collected_unix_ms, *id));
    let mut since_commit = 0;
    for (id, m) in all {
        let hex = id.to_hex();
        let content = match repo.read_item(&id).await {
            Ok(c) => c,
            Err(e) => {
                report
                    .failures
                    .push(format!("item {hex} of {}: {e}", m.mailbox));
                continue;
            }
        };
        let r = if m.properties.contains_key(RECORD_PROPERTY) {
            match change_from_record(&hex, &m, &content) {
                Ok(c) => {
                    report.changes += 1;
                    indexer.blocking(move |ix| ix.apply_change(&c)).await
                }
                Err(e) => Err(e),
            }
        } else {
            report.versions += 1;
            let input = ItemStoredInput::from_manifest(&hex, &m);
            indexer
                .blocking(move |ix| ix.add_version(&input, &content))
                .await
        };
        if let Err(e) = r {
            report.failures.push(format!("manifest {hex}: {e}"));
        }
        since_commit += 1;
        if since_commit >= REINDEX_COMMIT_EVERY {
            indexer.commit().await?;
            since_commit = 0;
        }
    }
    indexer.commit().await?;
    Ok(report)
}
