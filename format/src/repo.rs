//! The repository: open or create it, write items, read them back.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;
use mailvault_proto::storage::v1::{
    BlobEntry, BlobKind, ChunkerParams as ChunkerRecord, GroupEntry, ItemManifest, PackIndex,
    RepoConfig,
};
use prost::Message;
use zeroize::Zeroizing;

use crate::chunker::{Chunker, ChunkerParams};
use crate::compress::{self, Compressor, Dictionaries, Dictionary};
use crate::crypto::{Keys, Kind, VERSION};
use crate::error::{FormatError, Result};
use crate::id::{BlobId, names};
use crate::index::{self, GroupLoc, Index, Location};
use crate::keys::{self, KdfParams};
use crate::pack::{self, Packer, SealPolicy, SealedPack};
use crate::store::{BlobStore, PutOutcome};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Choices made once, at `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    pub pack_target_bytes: u64,
    /// Blobs are compressed and sealed together until a group holds this many bytes.
    pub group_target_bytes: u32,
    pub kdf: KdfParams,
    pub key_label: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            pack_target_bytes: SealPolicy::default().max_bytes,
            group_target_bytes: 128 * 1024,
            kdf: KdfParams::default(),
            key_label: "initial".into(),
        }
    }
}

struct Inner {
    store: Arc<dyn BlobStore>,
    keys: Keys,
    master: Zeroizing<[u8; 32]>,
    config: RepoConfig,
    chunker: ChunkerParams,
    key_name: String,
    index: RwLock<Index>,
    dicts: RwLock<Dictionaries>,
    /// Recently decoded groups, least recently used first: an item's chunks usually share one,
    /// and so do neighbouring items (the indexer reads many at once, in the order they were
    /// stored). A slot is filled by the first reader; the others wait for it instead of
    /// fetching the same group again.
    groups: std::sync::Mutex<std::collections::VecDeque<(GroupLoc, GroupSlot)>>,
}

type GroupSlot = Arc<futures::lock::Mutex<Option<Arc<Vec<u8>>>>>;

/// Groups kept decoded (a group is about `group_target_bytes`, 128 KiB by default). With 4 the
/// indexer's 16 concurrent item reads on S3 fetched each group about ten times.
const GROUP_CACHE: usize = 64;

/// Groups an item read fetches at once.
const READ_AHEAD: usize = 4;

/// Consecutive chunks of an item stored in one group, with their locations.
type GroupRun = (GroupLoc, Vec<(BlobId, Location)>);

/// An open repository. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("store", &self.inner.store)
            .field("repo_id", &hex::encode(&self.inner.config.repo_id))
            .finish()
    }
}

fn chunker_from(c: Option<&ChunkerRecord>) -> Result<ChunkerParams> {
    let c = c.ok_or_else(|| FormatError::corrupt(names::CONFIG, "no chunker parameters"))?;
    let p = ChunkerParams {
        min_size: c.min_size,
        avg_size: c.avg_size,
        max_size: c.max_size,
        mail_aware: c.mail_aware,
        min_segment: c.min_segment,
    };
    p.validate()
        .map_err(|e| FormatError::corrupt(names::CONFIG, e))?;
    Ok(p)
}

/// Checks a decoded config and returns its chunker parameters.
pub fn validate_config(config: &RepoConfig) -> Result<ChunkerParams> {
    if config.format_version != u32::from(VERSION) {
        return Err(FormatError::corrupt(
            names::CONFIG,
            format!("format version {} unsupported", config.format_version),
        ));
    }
    if !(1..=22).contains(&config.zstd_level) {
        return Err(FormatError::corrupt(
            names::CONFIG,
            format!("zstd level {}", config.zstd_level),
        ));
    }
    if !(1..=(16 << 20)).contains(&config.group_target_bytes) {
        return Err(FormatError::corrupt(
            names::CONFIG,
            format!("group target {}", config.group_target_bytes),
        ));
    }
    chunker_from(config.chunker.as_ref())
}

impl Repository {
    /// Creates a repository in an empty store.
    pub async fn init(
        store: Arc<dyn BlobStore>,
        passphrase: &[u8],
        opts: InitOptions,
    ) -> Result<Repository> {
        opts.chunker.validate()?;
        if !(1..=(16 << 20)).contains(&opts.group_target_bytes) {
            return Err(FormatError::Invalid(format!(
                "group target {} outside 1 B..16 MiB",
                opts.group_target_bytes
            )));
        }
        if !(1..=22).contains(&opts.zstd_level) {
            return Err(FormatError::Invalid(format!(
                "zstd level {} outside 1..=22",
                opts.zstd_level
            )));
        }
        if store.size(names::CONFIG).await?.is_some() {
            return Err(FormatError::AlreadyInitialized);
        }
        let master = Zeroizing::new(rand::random::<[u8; 32]>());
        let repo_id: [u8; 16] = rand::random();
        let key_name = names::key(&hex::encode(rand::random::<[u8; 8]>()));
        let key_obj = keys::wrap(
            &key_name,
            &master,
            passphrase,
            opts.kdf,
            &opts.key_label,
            &repo_id,
            now_ms(),
        )?;
        store.put(&key_name, key_obj.into()).await?;
        let c = opts.chunker;
        let config = RepoConfig {
            format_version: u32::from(VERSION),
            repo_id: repo_id.to_vec().into(),
            chunker: Some(ChunkerRecord {
                min_size: c.min_size,
                avg_size: c.avg_size,
                max_size: c.max_size,
                mail_aware: c.mail_aware,
                min_segment: c.min_segment,
            }),
            zstd_level: opts.zstd_level,
            pack_target_bytes: opts.pack_target_bytes,
            group_target_bytes: opts.group_target_bytes,
            created_unix_ms: now_ms(),
        };
        let keys = Keys::derive(&master);
        let obj = keys.seal_object(Kind::Config, names::CONFIG, &config.encode_to_vec());
        if store.put(names::CONFIG, obj.into()).await? == PutOutcome::AlreadyExists {
            return Err(FormatError::AlreadyInitialized);
        }
        Ok(Repository {
            inner: Arc::new(Inner {
                store,
                keys,
                master,
                chunker: c,
                config,
                key_name,
                index: RwLock::default(),
                dicts: RwLock::default(),
                groups: Default::default(),
            }),
        })
    }

    /// Opens a repository with any of its passphrases and loads its index and dictionaries.
    pub async fn open(store: Arc<dyn BlobStore>, passphrase: &[u8]) -> Result<Repository> {
        let key_names = store.list(names::KEYS).await?;
        if key_names.is_empty() {
            return Err(FormatError::NoKeys);
        }
        let mut damaged = None;
        let mut found = None;
        for name in &key_names {
            let bytes = store.get(name).await?;
            let parsed = match keys::parse(name, &bytes) {
                Ok(p) => p,
                Err(e) => {
                    damaged = Some(e);
                    continue;
                }
            };
            if let Some(m) = keys::unwrap(name, &parsed, passphrase)? {
                found = Some((name.clone(), m));
                break;
            }
        }
        let Some((key_name, master)) = found else {
            return Err(damaged.unwrap_or(FormatError::WrongPassphrase {
                keys: key_names.len(),
            }));
        };
        let keys = Keys::derive(&master);
        let cfg_bytes = store.get(names::CONFIG).await?;
        let config = RepoConfig::decode(
            keys.open_object(Kind::Config, names::CONFIG, &cfg_bytes)?
                .as_slice(),
        )
        .map_err(|e| FormatError::corrupt(names::CONFIG, e))?;
        let chunker = validate_config(&config)?;
        let repo = Repository {
            inner: Arc::new(Inner {
                store,
                keys,
                master,
                chunker,
                config,
                key_name,
                index: RwLock::default(),
                dicts: RwLock::default(),
                groups: Default::default(),
            }),
        };
        repo.refresh().await?;
        Ok(repo)
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.inner.store
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    pub fn chunker_params(&self) -> ChunkerParams {
        self.inner.chunker
    }

    /// The key object this process unlocked with.
    pub fn key_name(&self) -> &str {
        &self.inner.key_name
    }

    pub(crate) fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.inner.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn dicts(&self) -> std::sync::RwLockReadGuard<'_, Dictionaries> {
        self.inner.dicts.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads index objects and dictionaries written since open (by this or other writers).
    pub async fn refresh(&self) -> Result<()> {
        for name in self.inner.store.list(names::DICTS).await? {
            let id = u32::from_str_radix(name.trim_start_matches(names::DICTS), 16)
                .map_err(|_| FormatError::corrupt(&name, "dictionary name is not 8 hex digits"))?;
            if self.dicts().contains(id) {
                continue;
            }
            let d = self.read_dictionary(&name, id).await?;
            self.inner
                .dicts
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d);
        }
        for name in self.inner.store.list(names::INDEX).await? {
            if self.index().is_loaded(&name) {
                continue;
            }
            let bytes = self.inner.store.get(&name).await?;
            let file = index::decode(&self.inner.keys, &name, &bytes)?;
            let mut idx = self.index_mut();
            for p in &file.packs {
                idx.add_pack(p)
                    .map_err(|_| FormatError::corrupt(&name, "bad ids"))?;
            }
            idx.mark_loaded(name);
        }
        Ok(())
    }

    pub(crate) async fn read_dictionary(&self, name: &str, id: u32) -> Result<Dictionary> {
        let bytes = self.inner.store.get(name).await?;
        let plain = self.inner.keys.open_object(Kind::Dict, name, &bytes)?;
        if plain.len() < 8 {
            return Err(FormatError::corrupt(name, "dictionary too short"));
        }
        let created = i64::from_le_bytes(plain[..8].try_into().unwrap_or_default());
        Ok(Dictionary {
            id,
            created_unix_ms: created,
            bytes: Arc::new(plain[8..].to_vec()),
        })
    }

    /// Trains a zstd dictionary on sample chunks and stores it; writers created afterwards use it.
    pub async fn train_dictionary(&self, samples: &[Vec<u8>], max_size: usize) -> Result<u32> {
        let dict = compress::train(samples, max_size)?;
        let created = now_ms();
        let mut plain = created.to_le_bytes().to_vec();
        plain.extend_from_slice(&dict);
        loop {
            let id: u32 = rand::random::<u32>() | 1;
            let name = names::dict(id);
            let obj = self.inner.keys.seal_object(Kind::Dict, &name, &plain);
            if self.inner.store.put(&name, obj.into()).await? == PutOutcome::Created {
                self.inner
                    .dicts
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(Dictionary {
                        id,
                        created_unix_ms: created,
                        bytes: Arc::new(dict),
                    });
                return Ok(id);
            }
        }
    }

    /// Appends one batch of audit records as a new write-once, encrypted object and returns its
    /// name. Append-only by construction: batches are never rewritten; deleting one leaves a gap
    /// in time order that [`Repository::audit_batches`] readers can see.
    pub async fn append_audit(&self, records: &[u8]) -> Result<String> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        loop {
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = names::audit(now_ms(), seq, rand::random::<u32>());
            let obj = self.inner.keys.seal_object(Kind::Audit, &name, records);
            if self.inner.store.put(&name, obj.into()).await? == PutOutcome::Created {
                return Ok(name);
            }
        }
    }

    /// Every audit batch, oldest first, decrypted and authenticated.
    pub async fn audit_batches(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for name in self.inner.store.list(names::AUDIT).await? {
            let bytes = self.inner.store.get(&name).await?;
            out.push((
                name.clone(),
                self.inner.keys.open_object(Kind::Audit, &name, &bytes)?,
            ));
        }
        Ok(out)
    }

    /// The newest audit batch (by name, which sorts by time), decrypted; `None` if there is
    /// none. Reads one object, whatever the length of the log.
    pub async fn newest_audit_batch(&self) -> Result<Option<(String, Vec<u8>)>> {
        let Some(name) = self.inner.store.list(names::AUDIT).await?.into_iter().max() else {
            return Ok(None);
        };
        let bytes = self.inner.store.get(&name).await?;
        let plain = self.inner.keys.open_object(Kind::Audit, &name, &bytes)?;
        Ok(Some((name, plain)))
    }

    /// A writer with the default seal policy (pack size from the config).
    pub fn writer(&self) -> Result<Writer> {
        let policy = SealPolicy {
            max_bytes: self.inner.config.pack_target_bytes.max(1 << 16),
            ..SealPolicy::default()
        };
        Writer::new(self.clone(), policy)
    }

    pub fn writer_with_policy(&self, policy: SealPolicy) -> Result<Writer> {
        Writer::new(self.clone(), policy)
    }

    pub fn manifest_id(&self, mailbox: &str, item_id: &str, change_key: &str) -> BlobId {
        self.inner.keys.manifest_id(mailbox, item_id, change_key)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.index().contains(id)
    }

    /// Every stored item version, by manifest id.
    pub fn manifests(&self) -> Vec<BlobId> {
        self.index().manifests()
    }

    /// Number of blobs (chunks and manifests) the index knows.
    pub fn blob_count(&self) -> usize {
        self.index().len()
    }

    /// Reads, decrypts, decompresses and (for chunks) re-hashes one blob.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let loc = *self.index().get(id).ok_or_else(|| FormatError::NotFound {
            what: format!("blob {id}"),
        })?;
        self.read_at(id, &loc).await
    }

    pub(crate) async fn read_at(&self, id: &BlobId, loc: &Location) -> Result<Vec<u8>> {
        let plain = self.group_plain(&loc.group).await?;
        self.extract(&names::pack(&loc.group.pack), id, loc, &plain)
    }

    async fn group_plain(&self, g: &GroupLoc) -> Result<Arc<Vec<u8>>> {
        let slot = {
            let mut c = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
            let entry = c
                .iter()
                .position(|(k, _)| k == g)
                .and_then(|i| c.remove(i))
                .unwrap_or_else(|| (*g, GroupSlot::default()));
            let slot = entry.1.clone();
            if c.len() >= GROUP_CACHE {
                c.pop_front();
            }
            c.push_back(entry);
            slot
        };
        let mut held = slot.lock().await;
        if let Some(plain) = held.as_ref() {
            return Ok(plain.clone());
        }
        // On failure the slot stays empty and the next reader tries again.
        let name = names::pack(&g.pack);
        let sealed = self
            .inner
            .store
            .get_range(&name, g.offset, u64::from(g.stored_len))
            .await?;
        let plain = Arc::new(self.decode_group(&name, g, &sealed)?);
        *held = Some(plain.clone());
        Ok(plain)
    }

    /// Decrypts and decompresses one group.
    pub(crate) fn decode_group(
        &self,
        pack_name: &str,
        g: &GroupLoc,
        sealed: &[u8],
    ) -> Result<Vec<u8>> {
        let plain = self
            .inner
            .keys
            .open_group(pack_name, &g.pack, g.offset, sealed)?;
        self.dicts().decompress(
            pack_name,
            g.compression,
            g.dict_id,
            plain,
            g.raw_len as usize,
        )
    }

    /// Takes one blob out of its group's plaintext; a chunk is re-hashed against its id.
    pub(crate) fn extract(
        &self,
        pack_name: &str,
        id: &BlobId,
        loc: &Location,
        group: &[u8],
    ) -> Result<Vec<u8>> {
        let start = loc.offset as usize;
        let raw = group
            .get(start..start + loc.raw_len as usize)
            .ok_or_else(|| {
                FormatError::corrupt(pack_name, format!("blob {id} lies outside its group"))
            })?;
        match loc.kind {
            BlobKind::Chunk if self.inner.keys.chunk_id(raw) != *id => Err(FormatError::corrupt(
                pack_name,
                format!("chunk {id} content does not match its id"),
            )),
            BlobKind::Unspecified => Err(FormatError::corrupt(
                pack_name,
                format!("blob {id} has no kind"),
            )),
            _ => Ok(raw.to_vec()),
        }
    }

    pub async fn manifest(&self, id: &BlobId) -> Result<ItemManifest> {
        let raw = self.read_blob(id).await?;
        ItemManifest::decode(raw.as_slice())
            .map_err(|e| FormatError::corrupt(format!("manifest {id}"), e))
    }

    /// The item's bytes as a stream of chunks, in order. Consecutive chunks stored in the same
    /// group are read with one request, and up to [`READ_AHEAD`] groups are fetched at once:
    /// on S3 each group is a ranged GET, and one after another they made a large item's read
    /// time the sum of its round trips. Memory stays bounded by the groups in flight.
    pub fn item_stream(
        &self,
        manifest: ItemManifest,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        use futures::StreamExt as _;
        let runs = self.group_runs(&manifest);
        let repo = self.clone();
        futures::stream::iter(runs)
            .map(move |run| {
                let repo = repo.clone();
                async move {
                    let (g, members) = match run {
                        Ok(r) => r,
                        Err(e) => return vec![Err(e)],
                    };
                    let plain = match repo.group_plain(&g).await {
                        Ok(p) => p,
                        Err(e) => return vec![Err(e)],
                    };
                    let pack_name = names::pack(&g.pack);
                    members
                        .iter()
                        .map(|(id, loc)| repo.extract(&pack_name, id, loc, &plain).map(Bytes::from))
                        .collect::<Vec<_>>()
                }
            })
            .buffered(READ_AHEAD)
            .flat_map(futures::stream::iter)
    }

    /// The manifest's chunks located and cut into runs of consecutive chunks sharing a group;
    /// a chunk that cannot be located becomes an error at its place in the order.
    fn group_runs(&self, m: &ItemManifest) -> Vec<Result<GroupRun>> {
        let index = self.index();
        let mut runs: Vec<Result<GroupRun>> = Vec::new();
        for raw in &m.chunks {
            let located = BlobId::from_slice(raw)
                .ok_or_else(|| {
                    FormatError::corrupt(
                        format!("manifest of {}", m.item_id),
                        "chunk id is not 32 bytes",
                    )
                })
                .and_then(|id| {
                    index
                        .get(&id)
                        .map(|loc| (id, *loc))
                        .ok_or_else(|| FormatError::NotFound {
                            what: format!("blob {id}"),
                        })
                });
            match (located, runs.last_mut()) {
                (Ok((id, loc)), Some(Ok((g, members)))) if *g == loc.group => {
                    members.push((id, loc));
                }
                (Ok((id, loc)), _) => runs.push(Ok((loc.group, vec![(id, loc)]))),
                (Err(e), _) => runs.push(Err(e)),
            }
        }
        runs
    }

    /// Reads a whole item into memory (small items, tests).
    pub async fn read_item(&self, manifest_id: &BlobId) -> Result<Vec<u8>> {
        use futures::StreamExt;
        let m = self.manifest(manifest_id).await?;
        let mut out = Vec::with_capacity(m.size as usize);
        let mut s = std::pin::pin!(self.item_stream(m));
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    /// Adds a key object that opens the repository with `passphrase`.
    pub async fn add_key(&self, passphrase: &[u8], label: &str, kdf: KdfParams) -> Result<String> {
        let name = names::key(&hex::encode(rand::random::<[u8; 8]>()));
        let obj = keys::wrap(
            &name,
            &self.inner.master,
            passphrase,
            kdf,
            label,
            &self.inner.config.repo_id,
            now_ms(),
        )?;
        self.inner.store.put(&name, obj.into()).await?;
        Ok(name)
    }

    /// Lists key objects with their labels.
    pub async fn list_keys(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for name in self.inner.store.list(names::KEYS).await? {
            let bytes = self.inner.store.get(&name).await?;
            let label = keys::parse(&name, &bytes)
                .map(|k| k.header.label)
                .unwrap_or_else(|e| format!("<{e}>"));
            out.push((name, label));
        }
        Ok(out)
    }

    /// Removes a key object. Refuses to remove the last key (the data would be lost for good).
    pub async fn remove_key(&self, name: &str) -> Result<()> {
        let all = self.inner.store.list(names::KEYS).await?;
        if !all.iter().any(|n| n == name) {
            return Err(FormatError::NotFound {
                what: format!("key {name}"),
            });
        }
        if all.len() <= 1 {
            return Err(FormatError::Invalid(
                "refusing to remove the only key: add another first".into(),
            ));
        }
        self.inner.store.delete(name).await?;
        Ok(())
    }
}

/// What storing one item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemReceipt {
    pub manifest_id: BlobId,
    pub mailbox: String,
    pub item_id: String,
    pub change_key: String,
    pub size: u64,
    /// The item version was stored before (redelivery): nothing new was written.
    pub already_stored: bool,
    pub new_chunks: u32,
    pub new_raw_bytes: u64,
}

/// Running totals of a writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub items: u64,
    pub logical_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_raw_bytes: u64,
    /// Bytes of new blobs after compression and encryption.
    pub new_stored_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
}

#[derive(Default)]
struct GroupBuf {
    raw: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

struct Current {
    manifest: ItemManifest,
    id: BlobId,
    duplicate: bool,
    size: u64,
    new_chunks: u32,
    new_raw: u64,
    chunks: Vec<bytes::Bytes>,
}

/// Writes items into packs. Items become durable at [`Writer::flush`], which returns their
/// receipts: acknowledge upstream only then.
pub struct Writer {
    repo: Repository,
    policy: SealPolicy,
    chunker: Chunker,
    compressor: Compressor,
    group: GroupBuf,
    group_target: usize,
    packer: Packer,
    sealed: Vec<SealedPack>,
    uploaded: Vec<PackIndex>,
    pending: HashSet<BlobId>,
    finished: Vec<ItemReceipt>,
    current: Option<Current>,
    stats: WriteStats,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats)
            .finish()
    }
}

/// Room a new pack gets up front: the seal limit plus a group over it (a group is closed at
/// 128 KiB by default, or one large chunk), bounded for packs configured very large.
fn new_packer(policy: &SealPolicy) -> Packer {
    const SLACK: u64 = 2 << 20;
    Packer::with_capacity(policy.max_bytes.saturating_add(SLACK).min(64 << 20) as usize)
}

impl Writer {
    fn new(repo: Repository, policy: SealPolicy) -> Result<Writer> {
        let dict = repo.dicts().newest();
        Ok(Writer {
            chunker: Chunker::new(repo.inner.chunker),
            compressor: Compressor::new(repo.inner.config.zstd_level, dict.as_ref())?,
            group: GroupBuf::default(),
            group_target: repo.inner.config.group_target_bytes as usize,
            repo,
            packer: new_packer(&policy),
            policy,
            sealed: Vec::new(),
            uploaded: Vec::new(),
            pending: HashSet::new(),
            finished: Vec::new(),
            current: None,
            stats: WriteStats::default(),
        })
    }

    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Starts an item version. `meta` carries identity and metadata; chunks, size and content
    /// id are filled in by the writer.
    pub fn begin_item(&mut self, meta: ItemManifest) -> Result<()> {
        if self.current.is_some() {
            return Err(FormatError::Invalid(
                "begin_item while another item is open".into(),
            ));
        }
        let id = self
            .repo
            .manifest_id(&meta.mailbox, &meta.item_id, &meta.change_key);
        let duplicate = self.repo.contains(&id) || self.pending.contains(&id);
        self.current = Some(Current {
            manifest: meta,
            id,
            duplicate,
            size: 0,
            new_chunks: 0,
            new_raw: 0,
            chunks: Vec::new(),
        });
        Ok(())
    }

    /// Whether the open item was stored before (its bytes need not be read at all).
    pub fn current_is_duplicate(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.duplicate)
    }

    /// Feeds the open item's bytes. CPU-bound: call it from a blocking context in services.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Err(FormatError::Invalid("write without begin_item".into()));
        };
        if cur.duplicate {
            return Ok(());
        }
        let mut chunker =
            std::mem::replace(&mut self.chunker, Chunker::new(self.repo.inner.chunker));
        chunker.push(data, &mut |c| self.add_chunk(c));
        self.chunker = chunker;
        Ok(())
    }

    fn add_chunk(&mut self, data: &[u8]) {
        let id = self.repo.inner.keys.chunk_id(data);
        let cur = self
            .current
            .as_mut()
            .expect("add_chunk only runs with an open item");
        cur.size += data.len() as u64;
        cur.chunks.push(Bytes::copy_from_slice(&id.0));
        self.stats.chunks += 1;
        self.stats.logical_bytes += data.len() as u64;
        if self.pending.contains(&id) || self.repo.contains(&id) {
            return;
        }
        cur.new_chunks += 1;
        cur.new_raw += data.len() as u64;
        self.store_blob(BlobKind::Chunk, id, data);
    }

    fn store_blob(&mut self, kind: BlobKind, id: BlobId, raw: &[u8]) {
        self.stats.new_chunks += u64::from(kind == BlobKind::Chunk);
        self.stats.new_raw_bytes += raw.len() as u64;
        self.group.blobs.push(BlobEntry {
            id: id.0.to_vec().into(),
            kind: kind as i32,
            offset: self.group.raw.len() as u32,
            raw_len: raw.len() as u32,
        });
        self.group.raw.extend_from_slice(raw);
        self.pending.insert(id);
        if self.group.raw.len() >= self.group_target {
            self.close_group();
            if self.policy.should_seal(&self.packer, Instant::now()) {
                self.seal();
            }
        }
    }

    /// Compresses and seals the open group into the open pack.
    fn close_group(&mut self) {
        if self.group.blobs.is_empty() {
            return;
        }
        // The raw buffer is kept for the next group: a fresh one would grow by doubling and
        // fault in new pages every 128 KiB.
        let blobs = std::mem::take(&mut self.group.blobs);
        let raw = &mut self.group.raw;
        let (compression, dict_id, data) = self.compressor.compress(raw);
        let entry = GroupEntry {
            offset: 0,
            stored_len: 0,
            raw_len: raw.len() as u32,
            compression: compression as i32,
            dict_id,
            blobs,
        };
        raw.clear();
        let before = self.packer.len_bytes();
        self.packer.add_group(&self.repo.inner.keys, entry, data);
        self.stats.new_stored_bytes += self.packer.len_bytes() - before;
    }

    fn seal(&mut self) {
        self.close_group();
        if self.packer.is_empty() {
            return;
        }
        let p = std::mem::replace(&mut self.packer, new_packer(&self.policy))
            .seal(&self.repo.inner.keys);
        self.stats.packs += 1;
        self.stats.pack_bytes += p.bytes.len() as u64;
        self.sealed.push(p);
    }

    /// Closes the open item and stores its manifest. The item is durable after the next flush.
    pub fn finish_item(&mut self) -> Result<ItemReceipt> {
        let mut cur = self
            .current
            .take()
            .ok_or_else(|| FormatError::Invalid("finish_item without begin_item".into()))?;
        if !cur.duplicate {
            self.current = Some(cur);
            let mut chunker =
                std::mem::replace(&mut self.chunker, Chunker::new(self.repo.inner.chunker));
            chunker.finish(&mut |c| self.add_chunk(c));
            self.chunker = chunker;
            cur = self.current.take().expect("restored above");
            let mut m = cur.manifest;
            m.size = cur.size;
            m.content_id = self
                .repo
                .inner
                .keys
                .content_id(cur.chunks.iter().map(|c| c.as_ref()))
                .0
                .to_vec()
                .into();
            m.chunks = cur.chunks;
            let bytes = m.encode_to_vec();
            self.store_blob(BlobKind::Manifest, cur.id, &bytes);
            cur.manifest = m;
        } else {
            self.chunker = Chunker::new(self.repo.inner.chunker);
        }
        self.stats.items += 1;
        let r = ItemReceipt {
            manifest_id: cur.id,
            mailbox: cur.manifest.mailbox,
            item_id: cur.manifest.item_id,
            change_key: cur.manifest.change_key,
            size: cur.size,
            already_stored: cur.duplicate,
            new_chunks: cur.new_chunks,
            new_raw_bytes: cur.new_raw,
        };
        self.finished.push(r.clone());
        Ok(r)
    }

    /// Abandons the open item (its body could not be read to the end): no manifest is
    /// written and no receipt issued, so a redelivery stores the item in full. Chunks already
    /// queued stay in their packs, unreferenced until prune; that is harmless.
    pub fn abort_item(&mut self) {
        if self.current.take().is_some() {
            self.chunker = Chunker::new(self.repo.inner.chunker);
        }
    }

    /// Stores a whole item held in memory.
    pub fn add_item(&mut self, meta: ItemManifest, data: &[u8]) -> Result<ItemReceipt> {
        self.begin_item(meta)?;
        self.write(data)?;
        self.finish_item()
    }

    /// Bytes sealed but not yet uploaded: callers keep this bounded by calling
    /// [`Writer::upload_sealed`].
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed.iter().map(|p| p.bytes.len() as u64).sum()
    }

    /// Seals the open pack if the policy's age limit has passed.
    pub fn seal_if_due(&mut self) {
        let has_data = !self.packer.is_empty() || !self.group.blobs.is_empty();
        if has_data && self.packer.opened().elapsed() >= self.policy.max_age {
            self.seal();
        }
    }

    /// Uploads sealed packs. On error the packs stay queued; call again.
    pub async fn upload_sealed(&mut self) -> Result<()> {
        while let Some(p) = self.sealed.first() {
            self.repo.inner.store.put(&p.name, p.bytes.clone()).await?;
            let p = self.sealed.remove(0);
            self.uploaded.push(p.index);
        }
        Ok(())
    }

    /// Cuts off everything finished so far (sealing the open pack) as a [`Flush`] that makes
    /// it durable on its own, so the writer can take the next items while the packs and the
    /// index object are uploaded (a service overlaps the upload with filling the next batch).
    ///
    /// Blobs of the cut stay known to this writer: a later item that contains one of them
    /// references it instead of storing it again, so its receipt is only durable once the
    /// earlier `Flush` has completed too. Hence: complete the flushes of one writer in the
    /// order they were cut, and do not call [`Writer::flush`] while a cut one is unfinished.
    pub fn cut(&mut self) -> Result<Flush> {
        if self.current.is_some() {
            return Err(FormatError::Invalid("cut with an item open".into()));
        }
        self.seal();
        // Blobs of completed earlier cuts are in the repository's index now; forgetting them
        // keeps `pending` as small as the flushes still under way.
        {
            let idx = self.repo.index();
            self.pending.retain(|id| !idx.contains(id));
        }
        Ok(Flush {
            repo: self.repo.clone(),
            sealed: std::mem::take(&mut self.sealed),
            uploaded: std::mem::take(&mut self.uploaded),
            receipts: std::mem::take(&mut self.finished),
            done: false,
        })
    }

    /// Seals and uploads everything, writes the index object, and returns the receipts of the
    /// items that are now durable. Retry on error: nothing is lost or duplicated.
    pub async fn flush(&mut self) -> Result<Vec<ItemReceipt>> {
        if self.current.is_some() {
            return Err(FormatError::Invalid("flush with an item open".into()));
        }
        self.seal();
        self.upload_sealed().await?;
        if !self.uploaded.is_empty() {
            let id = BlobId::random();
            let name = names::index(&id);
            let obj = index::encode(&self.repo.inner.keys, &name, self.uploaded.clone());
            self.repo.inner.store.put(&name, obj.into()).await?;
            let mut idx = self.repo.index_mut();
            for p in &self.uploaded {
                idx.add_pack(p)?;
            }
            idx.mark_loaded(name);
            drop(idx);
            self.uploaded.clear();
            self.pending.clear();
        }
        Ok(std::mem::take(&mut self.finished))
    }
}

/// Items cut off a [`Writer`] by [`Writer::cut`], with the packs holding their new blobs:
/// [`Flush::run`] uploads the packs and the index object that makes them findable. Only once it
/// returned `Ok` are [`Flush::receipts`] durable. On error call `run` again: it resumes where it
/// stopped (packs already uploaded are not uploaded again).
pub struct Flush {
    repo: Repository,
    sealed: Vec<SealedPack>,
    uploaded: Vec<PackIndex>,
    receipts: Vec<ItemReceipt>,
    done: bool,
}

impl std::fmt::Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flush")
            .field("packs", &(self.sealed.len() + self.uploaded.len()))
            .field("items", &self.receipts.len())
            .field("done", &self.done)
            .finish()
    }
}

impl Flush {
    /// The items this flush makes durable.
    pub fn receipts(&self) -> &[ItemReceipt] {
        &self.receipts
    }

    /// Whether [`Flush::run`] has completed.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes of packs not uploaded yet (held in memory until then).
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed.iter().map(|p| p.bytes.len() as u64).sum()
    }

    /// Uploads the packs, then the index object naming them, and adds them to the
    /// repository's index. Idempotent once done.
    pub async fn run(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let store = &self.repo.inner.store;
        while let Some(p) = self.sealed.first() {
            store.put(&p.name, p.bytes.clone()).await?;
            let p = self.sealed.remove(0);
            self.uploaded.push(p.index);
        }
        if !self.uploaded.is_empty() {
            let id = BlobId::random();
            let name = names::index(&id);
            let obj = index::encode(&self.repo.inner.keys, &name, self.uploaded.clone());
            store.put(&name, obj.into()).await?;
            let mut idx = self.repo.index_mut();
            for p in &self.uploaded {
                idx.add_pack(p)?;
            }
            idx.mark_loaded(name);
            drop(idx);
            self.uploaded.clear();
        }
        self.done = true;
        Ok(())
    }

    /// The receipts, once [`Flush::run`] has completed (`None` before).
    pub fn into_receipts(self) -> Option<Vec<ItemReceipt>> {
        self.done.then_some(self.receipts)
    }
}

/// Reads a pack's header (two ranged reads).
pub(crate) async fn read_pack_header(
    repo: &Repository,
    name: &str,
) -> Result<(u64, mailvault_proto::storage::v1::PackHeader)> {
    let store = &repo.inner.store;
    let size = store
        .size(name)
        .await?
        .ok_or_else(|| FormatError::NotFound {
            what: name.to_owned(),
        })?;
    if size < 10 {
        return Err(FormatError::corrupt(name, "pack too short"));
    }
    let tail = store.get_range(name, size - 4, 4).await?;
    let (start, len) = pack::header_span(name, size, &tail)?;
    let env = store.get_range(name, start, len).await?;
    Ok((size, pack::open_header(&repo.inner.keys, name, size, &env)?))
}
