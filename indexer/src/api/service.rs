//! The API itself, independent of gRPC: every call takes the caller, checks what they may touch,
//! does the work and writes an audit record. [`crate::api::grpc`] puts tonic in front of it;
//! the single-process CLI calls it directly.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use mailvault_format::{BlobId, Repository};
use mailvault_proto::api::v1 as pb;
use mailvault_proto::restore::v1 as wire;
use tokio::sync::mpsc;

use super::audit::{AuditLog, AuditRecord};
use super::auth::{Principal, Role};
use super::export::{self, Input, ItemLabel};
use super::restore::RestoreTarget;
use crate::metrics::Metrics;
use crate::{Hit, Index, SearchOptions};

/// Largest page a search returns in one piece.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn audit_result(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated | ApiError::PermissionDenied(_) => "denied",
            ApiError::NotFound(_) => "not_found",
            ApiError::InvalidArgument(_) => "invalid",
            ApiError::ResourceExhausted(_) => "refused",
            ApiError::Unavailable(_) | ApiError::Internal(_) => "error",
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            ApiError::Unauthenticated => tonic::Status::unauthenticated(msg),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            ApiError::Unavailable(_) => tonic::Status::unavailable(msg),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("{what}: {e}"))
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ApiError>> + Send>>;

/// The API over one index and one repository.
#[derive(Debug, Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: Index,
    repo: Repository,
    audit: AuditLog,
    restore: Option<Arc<dyn RestoreTarget>>,
    metrics: Arc<Metrics>,
    limits: StreamLimits,
    /// Streaming calls open per token name.
    open_streams: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Export archives being written at once (each takes a blocking thread).
    export_writers: Arc<tokio::sync::Semaphore>,
}

/// Bounds on streaming calls (GetItem, Export, Restore), so that a few clients that stop
/// reading can neither pin the threads searches and index commits need nor hold the server's
/// memory: see `[api]` in docs/indexer.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams one token may have open at once; more are refused with RESOURCE_EXHAUSTED.
    pub per_token: usize,
    /// An export or restore whose client takes nothing for this long is ended.
    pub idle_timeout: std::time::Duration,
    /// Export archives written at once; more wait their turn (without a thread).
    pub export_writers: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            per_token: 16,
            idle_timeout: std::time::Duration::from_secs(60),
            export_writers: 4,
        }
    }
}

/// One open stream of a token; the count goes down when this is dropped.
#[derive(Debug)]
struct StreamSlot {
    name: String,
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.name);
            }
        }
    }
}

fn as_of(ms: i64) -> Option<i64> {
    (ms > 0).then_some(ms)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The API form of an index hit.
pub fn to_pb_hit(h: &Hit) -> pb::Hit {
    pb::Hit {
        id: h.manifest_id.clone(),
        mailbox: h.mailbox.clone(),
        folder_path: h.folder_path.clone(),
        subject: h.subject.clone(),
        from: h.from.clone(),
        to: h.to.clone(),
        cc: h.cc.clone(),
        date_unix_ms: h.date_unix_ms,
        size: h.size,
        has_attachment: h.has_attachment,
        is_read: h.is_read,
        deleted: h.deleted,
        deleted_unix_ms: h.deleted_unix_ms.unwrap_or(0),
        item_class: h.item_class.clone(),
        internet_message_id: h.internet_message_id.clone(),
        journal: h.embedded.is_some(),
        parse_error: h.parse_error.clone().unwrap_or_default(),
    }
}

/// Only the bytes in `[offset, offset + len)` of a chunk stream; stops reading after them.
fn slice_stream(inner: ByteStream, offset: u64, len: u64) -> ByteStream {
    let end = offset.saturating_add(len);
    Box::pin(futures::stream::unfold(
        (inner, 0u64),
        move |(mut s, mut pos)| async move {
            loop {
                if pos >= end {
                    return None;
                }
                let chunk = match s.next().await? {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (s, end))),
                };
                let start = pos;
                pos += chunk.len() as u64;
                let lo = offset.saturating_sub(start).min(chunk.len() as u64) as usize;
                let hi = end.saturating_sub(start).min(chunk.len() as u64) as usize;
                if lo < hi {
                    return Some((Ok(chunk.slice(lo..hi)), (s, pos)));
                }
            }
        },
    ))
}

impl Api {
    pub fn new(
        index: Index,
        repo: Repository,
        audit: AuditLog,
        restore: Option<Arc<dyn RestoreTarget>>,
    ) -> Api {
        Self::build(
            index,
            repo,
            audit,
            restore,
            Arc::default(),
            StreamLimits::default(),
        )
    }

    fn build(
        index: Index,
        repo: Repository,
        audit: AuditLog,
        restore: Option<Arc<dyn RestoreTarget>>,
        metrics: Arc<Metrics>,
        limits: StreamLimits,
    ) -> Api {
        Api {
            inner: Arc::new(Inner {
                index,
                repo,
                audit,
                restore,
                metrics,
                limits,
                open_streams: Arc::default(),
                export_writers: Arc::new(tokio::sync::Semaphore::new(limits.export_writers.max(1))),
            }),
        }
    }

    /// With these bounds on streaming calls (see [`StreamLimits`]).
    pub fn with_stream_limits(self, limits: StreamLimits) -> Api {
        let i = &self.inner;
        Self::build(
            i.index.clone(),
            i.repo.clone(),
            i.audit.clone(),
            i.restore.clone(),
            i.metrics.clone(),
            limits,
        )
    }

    /// Takes one of `p`'s stream slots, or refuses.
    fn stream_slot(&self, p: &Principal) -> Result<StreamSlot, ApiError> {
        let mut open = self
            .inner
            .open_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(p.name.clone()).or_insert(0);
        if *n >= self.inner.limits.per_token {
            return Err(ApiError::ResourceExhausted(format!(
                "{} already has {} streams open (the most one token may have); \
                 finish or cancel one first",
                p.name, *n
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            name: p.name.clone(),
            open: self.inner.open_streams.clone(),
        })
    }

    /// Counts searches and gets into `metrics` (the process's, served at `/metrics`).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Api {
        let i = &self.inner;
        Self::build(
            i.index.clone(),
            i.repo.clone(),
            i.audit.clone(),
            i.restore.clone(),
            metrics,
            i.limits,
        )
    }

    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    pub fn repo(&self) -> &Repository {
        &self.inner.repo
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// Records a call and passes its result through.
    async fn audited<T>(
        &self,
        p: &Principal,
        call: &str,
        target: String,
        res: Result<(T, String), ApiError>,
    ) -> Result<T, ApiError> {
        let (result, detail) = match &res {
            Ok((_, d)) => ("ok", d.clone()),
            Err(e) => (e.audit_result(), e.to_string()),
        };
        // No answer goes out whose record is not stored.
        self.record(p, call, target, result, detail).await?;
        res.map(|(t, _)| t)
    }

    /// Stores one audit record of `p`'s call; an error means it could not be stored (and the
    /// call must not be answered).
    pub async fn record(
        &self,
        p: &Principal,
        call: &str,
        target: String,
        result: &str,
        detail: String,
    ) -> Result<(), ApiError> {
        self.inner
            .audit
            .record(AuditRecord {
                unix_ms: now_ms(),
                who: p.name.clone(),
                role: p.role.as_str().into(),
                call: call.into(),
                target,
                result: result.into(),
                detail,
                peer: p.peer.clone(),
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, call, who = %p.name, "audit record not stored; call refused");
                ApiError::Unavailable(format!("the audit log cannot be written ({e}); try again"))
            })
    }

    /// An unauthenticated attempt: counted for the audit log (one record per peer and call
    /// per window), then refused.
    pub async fn deny_anonymous(&self, call: &str, peer: &str) -> ApiError {
        self.inner.audit.denied(call, peer).await;
        ApiError::Unauthenticated
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> Result<T, crate::IndexError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let index = self.inner.index.clone();
        tokio::task::spawn_blocking(move || f(&index))
            .await
            .map_err(|e| internal("index task", e))?
            .map_err(|e| match e {
                crate::IndexError::Query(q) => ApiError::InvalidArgument(q.to_string()),
                other => internal("index", other),
            })
    }

    pub async fn list_mailboxes(
        &self,
        p: &Principal,
    ) -> Result<pb::ListMailboxesResponse, ApiError> {
        let scope = p.scope();
        let res = self
            .blocking(move |ix| ix.list_mailboxes(&scope))
            .await
            .map(|m| {
                let mailboxes: Vec<pb::Mailbox> = m
                    .into_iter()
                    .map(|m| pb::Mailbox {
                        address: m.address,
                        items: m.items,
                    })
                    .collect();
                let d = format!("{} mailboxes", mailboxes.len());
                (pb::ListMailboxesResponse { mailboxes }, d)
            });
        self.audited(p, "ListMailboxes", String::new(), res).await
    }

    pub async fn list_folders(
        &self,
        p: &Principal,
        req: &pb::ListFoldersRequest,
    ) -> Result<pb::ListFoldersResponse, ApiError> {
        let target = format!("{} as_of={}", req.mailbox, req.as_of_unix_ms);
        let res = if !p.owns_or_admin(&req.mailbox) {
            Err(ApiError::PermissionDenied(format!(
                "{} may not browse mailbox {}",
                p.name, req.mailbox
            )))
        } else {
            let mailbox = req.mailbox.to_ascii_lowercase();
            let t = as_of(req.as_of_unix_ms);
            self.blocking(move |ix| ix.list_folders(&mailbox, t))
                .await
                .map(|f| {
                    let folders: Vec<pb::Folder> = f
                        .into_iter()
                        .map(|f| pb::Folder {
                            path: f.path,
                            items: f.items,
                            distinguished: f.distinguished.unwrap_or_default(),
                        })
                        .collect();
                    let d = format!("{} folders", folders.len());
                    (pb::ListFoldersResponse { folders }, d)
                })
        };
        self.audited(p, "ListFolders", target, res).await
    }

    /// One page of search results. `limit` is capped at [`MAX_PAGE`].
    pub async fn search_page(
        &self,
        p: &Principal,
        query: &str,
        as_of_ms: i64,
        offset: usize,
        limit: usize,
    ) -> Result<pb::SearchResponse, ApiError> {
        let opts = SearchOptions {
            as_of: as_of(as_of_ms),
            scope: p.scope(),
            offset,
            limit: limit.clamp(1, MAX_PAGE),
        };
        let q = query.to_owned();
        let started = std::time::Instant::now();
        let page = self.blocking(move |ix| ix.search(&q, &opts)).await;
        self.inner
            .metrics
            .observe_search(started.elapsed(), page.is_ok());
        let page = page?;
        Ok(pb::SearchResponse {
            hits: page.hits.iter().map(to_pb_hit).collect(),
            total: page.total as u64,
        })
    }

    /// Every page of a search, sent to `out` (stops early when the receiver goes away);
    /// audited once. Returns the total number of matches.
    pub async fn search(
        &self,
        p: &Principal,
        req: &pb::SearchRequest,
        out: &mpsc::Sender<Result<pb::SearchResponse, ApiError>>,
    ) -> Result<u64, ApiError> {
        let page = (req.page_size as usize).clamp(1, MAX_PAGE);
        let page = if req.page_size == 0 { 100 } else { page };
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        let mut offset = req.offset as usize;
        let mut sent = 0usize;
        let want = page.min(limit);
        let first = self
            .search_page(p, &req.query, req.as_of_unix_ms, offset, want)
            .await;
        let first = match first {
            Ok(r) => r,
            Err(e) => return self.audited(p, "Search", req.query.clone(), Err(e)).await,
        };
        let total = first.total;
        // Recorded (stored) before the first hit goes out.
        self.record(
            p,
            "Search",
            req.query.clone(),
            "ok",
            format!("{total} hits"),
        )
        .await?;
        let mut next = Some(first);
        while let Some(r) = next.take() {
            let n = r.hits.len();
            let want = page.min(limit - sent);
            sent += n;
            offset += n;
            let more = n == want && sent < limit && (offset as u64) < r.total;
            if out.send(Ok(r)).await.is_err() || !more {
                break;
            }
            let want = page.min(limit - sent);
            match self
                .search_page(p, &req.query, req.as_of_unix_ms, offset, want)
                .await
            {
                Ok(r) => next = Some(r),
                Err(e) => {
                    let _ = self
                        .record(p, "Search", req.query.clone(), "error", e.to_string())
                        .await;
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    /// The item's hit, if the caller may read it.
    async fn readable(&self, p: &Principal, id: &str) -> Result<Hit, ApiError> {
        if BlobId::from_hex(id).is_none() {
            return Err(ApiError::InvalidArgument(format!(
                "{:?} is not an item id (64 hex digits, as Search returns them)",
                id.chars().take(80).collect::<String>()
            )));
        }
        let owned = id.to_owned();
        let hit = self
            .blocking(move |ix| ix.get(&owned))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("item {id}")))?;
        if !p.may_read_item(&hit.mailbox, &hit.visible_to) {
            // Not "not found": the caller learns nothing either way, but the audit log
            // shows an attempt on someone else's mail.
            return Err(ApiError::PermissionDenied(format!(
                "{} may not read item {id}",
                p.name
            )));
        }
        Ok(hit)
    }

    /// The bytes a caller gets for an item: the stored MIME, or for a journal copy read through
    /// the journal's recipient list, only the original message inside the report.
    async fn item_bytes(&self, p: &Principal, hit: &Hit) -> Result<(u64, ByteStream), ApiError> {
        let id = BlobId::from_hex(&hit.manifest_id)
            .ok_or_else(|| ApiError::InvalidArgument(format!("item id {:?}", hit.manifest_id)))?;
        let manifest = self
            .inner
            .repo
            .manifest(&id)
            .await
            .map_err(|e| internal(&format!("manifest of item {}", hit.manifest_id), e))?;
        let size = manifest.size;
        let item = hit.manifest_id.clone();
        let stream: ByteStream = Box::pin(
            self.inner
                .repo
                .item_stream(manifest)
                .map(move |r| r.map_err(|e| internal(&format!("reading item {item}"), e))),
        );
        let owner = p.owns_or_admin(&hit.mailbox);
        match hit.embedded {
            Some((off, len)) if !owner => Ok((len, slice_stream(stream, off, len))),
            _ => Ok((size, stream)),
        }
    }

    pub async fn get_item(&self, p: &Principal, id: &str) -> Result<(u64, ByteStream), ApiError> {
        let res = match self.stream_slot(p) {
            Err(e) => Err(e),
            Ok(slot) => match self.readable(p, id).await {
                Ok(hit) => self.item_bytes(p, &hit).await.map(|(n, s)| {
                    Metrics::add(&self.inner.metrics.gets, 1);
                    // The slot is given back at the stream's end, or when it is dropped unread.
                    let s: ByteStream = Box::pin(futures::stream::unfold(
                        (s, Some(slot)),
                        |(mut s, slot)| async move {
                            let slot = slot?;
                            // At the end `slot` is dropped here, with the stream's last poll.
                            let next = s.next().await;
                            next.map(|chunk| (chunk, (s, Some(slot))))
                        },
                    ));
                    ((n, s), format!("{n} bytes"))
                }),
                Err(e) => Err(e),
            },
        };
        self.audited(p, "GetItem", id.to_owned(), res).await
    }

    /// Streams an export archive of the items matching `req.query`.
    pub async fn export(
        &self,
        p: &Principal,
        req: &pb::ExportRequest,
    ) -> Result<ByteStream, ApiError> {
        let target = format!("{} format={}", req.query, req.format);
        if !p.may_restore_or_export() {
            let e = ApiError::PermissionDenied(format!("role {} may not export", p.role.as_str()));
            return self.audited(p, "Export", target, Err(e)).await;
        }
        let slot = match self.stream_slot(p) {
            Ok(s) => s,
            Err(e) => return self.audited(p, "Export", target, Err(e)).await,
        };
        // Validate the query before streaming anything.
        if let Err(e) = self
            .search_page(p, &req.query, req.as_of_unix_ms, 0, 1)
            .await
        {
            return self.audited(p, "Export", target, Err(e)).await;
        }
        // Mail leaves with the stream: its record is stored before the first byte.
        self.record(p, "Export", target.clone(), "started", String::new())
            .await?;
        let format = if req.format == pb::ExportFormat::Mbox as i32 {
            export::Format::Mbox
        } else {
            export::Format::EmlZip
        };
        let (in_tx, mut in_rx) = mpsc::channel::<Input>(16);
        let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, ApiError>>(16);

        // Producer: hits page by page, each item's bytes chunk by chunk.
        let api = self.clone();
        let principal = p.clone();
        let query = req.query.clone();
        let as_of_ms = req.as_of_unix_ms;
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        let producer_tx = in_tx.clone();
        tokio::spawn(async move {
            let send = |i: Input| {
                let tx = producer_tx.clone();
                async move { tx.send(i).await.is_ok() }
            };
            let mut offset = 0;
            let mut n = 0usize;
            'pages: while n < limit {
                let page = match api
                    .search_page(
                        &principal,
                        &query,
                        as_of_ms,
                        offset,
                        MAX_PAGE.min(limit - n),
                    )
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        send(Input::Abort(e.to_string())).await;
                        return;
                    }
                };
                if page.hits.is_empty() {
                    break;
                }
                offset += page.hits.len();
                for h in page.hits {
                    let hit = match api.readable(&principal, &h.id).await {
                        Ok(hit) => hit,
                        Err(e) => {
                            send(Input::Abort(e.to_string())).await;
                            return;
                        }
                    };
                    let (_, mut s) = match api.item_bytes(&principal, &hit).await {
                        Ok(x) => x,
                        Err(e) => {
                            send(Input::Abort(e.to_string())).await;
                            return;
                        }
                    };
                    let label = ItemLabel {
                        id: hit.manifest_id.clone(),
                        mailbox: hit.mailbox.clone(),
                        folder_path: hit.folder_path.clone(),
                        from: hit.from.clone(),
                        date_unix_ms: hit.date_unix_ms,
                    };
                    if !send(Input::Begin(label)).await {
                        return;
                    }
                    while let Some(c) = s.next().await {
                        let ok = match c {
                            Ok(c) => send(Input::Data(c)).await,
                            Err(e) => {
                                send(Input::Abort(e.to_string())).await;
                                return;
                            }
                        };
                        if !ok {
                            return;
                        }
                    }
                    if !send(Input::End).await {
                        return;
                    }
                    n += 1;
                    if n >= limit {
                        break 'pages;
                    }
                }
            }
        });
        drop(in_tx);

        // Writer: a blocking thread turns the input into archive bytes, once one of the
        // export writer permits is free (exports beyond them wait without taking a thread).
        let api = self.clone();
        let principal = p.clone();
        let writers = self.inner.export_writers.clone();
        let idle = self.inner.limits.idle_timeout;
        // The token's slot and how the export failed, shared by the writer (which gives the
        // slot back when it is done with the stream) and the stream (which reports the failure
        // after the bytes it still holds, and gives the slot back when dropped).
        let shared = Arc::new(ExportEnd {
            slot: std::sync::Mutex::new(Some(slot)),
            failure: std::sync::Mutex::new(None),
        });
        let writer_end = shared.clone();
        let dropped = tokio_util::sync::CancellationToken::new();
        let stream_dropped = dropped.clone().drop_guard();
        tokio::spawn(async move {
            let permit = writers.acquire_owned().await;
            let tx = out_tx;
            let handle = tokio::runtime::Handle::current();
            let res = tokio::task::spawn_blocking(move || {
                let out = ChannelWriter {
                    tx,
                    buf: Vec::with_capacity(CHUNK),
                    handle,
                    idle,
                };
                export::write_archive(format, std::iter::from_fn(|| in_rx.blocking_recv()), out)
            })
            .await;
            drop(permit);
            let (result, detail) = match res {
                Ok(Ok(n)) => ("ok", format!("{n} items")),
                Ok(Err(e)) => {
                    writer_end.fail(internal("export", &e));
                    ("error", e.to_string())
                }
                Err(e) => {
                    writer_end.fail(internal("export task", &e));
                    ("error", e.to_string())
                }
            };
            let _ = api
                .record(&principal, "Export", target, result, detail)
                .await;
            // What is written waits in buffers for the client; its slot comes back when the
            // client has taken it all (the stream is dropped), at the latest after `idle`.
            if result == "ok" {
                tokio::select! {
                    () = tokio::time::sleep(idle) => {}
                    () = dropped.cancelled() => {}
                }
            }
            writer_end.release();
        });
        let end = shared;
        let tail = futures::stream::once(async move {
            let _stream_dropped = stream_dropped;
            end.take_failure()
        })
        .filter_map(|f| async move { f.map(Err) });
        Ok(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx).chain(tail),
        ))
    }

    /// Resolves what to restore, sends it to the collector serving the target and streams
    /// progress: one message per finished item, the last one with `done == total`.
    pub async fn restore(
        &self,
        p: &Principal,
        req: &pb::RestoreRequest,
    ) -> Result<mpsc::Receiver<Result<pb::RestoreProgress, ApiError>>, ApiError> {
        let target = describe_restore(req);
        let slot = match self.stream_slot(p) {
            Ok(s) => s,
            Err(e) => return self.audited(p, "Restore", target, Err(e)).await,
        };
        let res = self.plan_restore(p, req).await;
        let plan = match res {
            Ok(plan) => plan,
            Err(e) => return self.audited(p, "Restore", target, Err(e)).await,
        };
        let Some(restorer) = self.inner.restore.clone() else {
            let e = ApiError::Unavailable("this server has no restore target configured".into());
            return self.audited(p, "Restore", target, Err(e)).await;
        };
        let job_id = format!("{:016x}", rand::random::<u64>());
        self.record(
            p,
            "Restore",
            target.clone(),
            "started",
            format!("job {job_id}: {} items", plan.items.len()),
        )
        .await?;

        let (progress_tx, progress_rx) = mpsc::channel(64);
        let api = self.clone();
        let principal = p.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let total = plan.items.len() as u64;
            let (item_tx, item_rx) = mpsc::channel::<(wire::RestoreItem, Bytes)>(4);
            let (res_tx, mut res_rx) = mpsc::channel::<wire::RestoreResult>(64);
            let source = plan.source.clone();
            let job = job_id.clone();
            let runner =
                tokio::spawn(async move { restorer.run(&source, &job, item_rx, res_tx).await });

            // Feed items while collecting results.
            let feeder_api = api.clone();
            let feeder_principal = principal.clone();
            let feeder_job = job_id.clone();
            let items = plan.items;
            let feeder = tokio::spawn(async move {
                for (seq, it) in items.into_iter().enumerate() {
                    let body = match feeder_api.collect_body(&feeder_principal, &it.hit).await {
                        Ok(b) => b,
                        Err(e) => return Err((seq as u64, it.hit.manifest_id.clone(), e)),
                    };
                    let mut item = it.item;
                    item.job_id = feeder_job.clone();
                    item.seq = seq as u64;
                    item.size = body.len() as u64;
                    if item_tx.send((item, body)).await.is_err() {
                        break;
                    }
                }
                Ok(())
            });

            let mut done = 0u64;
            let mut failed = 0u64;
            let mut by_seq: BTreeMap<u64, (String, Vec<String>)> = plan
                .ids
                .into_iter()
                .enumerate()
                .map(|(i, x)| (i as u64, x))
                .collect();
            while let Some(r) = res_rx.recv().await {
                done += 1;
                let (id, path) = by_seq.remove(&r.seq).unwrap_or_default();
                let outcome = r.outcome;
                if outcome == wire::Outcome::Failed as i32 {
                    failed += 1;
                }
                let msg = pb::RestoreProgress {
                    job_id: job_id.clone(),
                    total,
                    done,
                    result: Some(pb::ItemResult {
                        id,
                        outcome,
                        new_item_id: r.new_item_id,
                        error: r.error,
                        folder_path: path,
                    }),
                };
                if progress_tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                if done == total {
                    break;
                }
            }
            let feed = feeder.await;
            let run = runner.await;
            let err = match (feed, run) {
                (Ok(Err((seq, id, e))), _) => Some(format!("item {id} (#{seq}): {e}")),
                (Err(e), _) => Some(format!("restore feeder: {e}")),
                (_, Ok(Err(e))) => Some(e.to_string()),
                (_, Err(e)) => Some(format!("restore target: {e}")),
                _ if done < total => Some(format!("restore ended after {done} of {total} items")),
                _ => None,
            };
            let (result, detail) = match &err {
                None => (
                    "ok",
                    format!("job {job_id}: {done}/{total} done, {failed} failed"),
                ),
                Some(e) => ("error", format!("job {job_id}: {done}/{total} done: {e}")),
            };
            if let Some(e) = err {
                let _ = progress_tx.send(Err(ApiError::Internal(e))).await;
            }
            // A failure is logged by `record`; the job ran, whatever its record.
            let _ = api
                .record(&principal, "Restore", target, result, detail)
                .await;
        });
        Ok(progress_rx)
    }

    async fn collect_body(&self, p: &Principal, hit: &Hit) -> Result<Bytes, ApiError> {
        let (size, mut s) = self.item_bytes(p, hit).await?;
        // The manifest's size is a first guess only (a damaged manifest must not reserve it).
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(8 << 20));
        while let Some(c) = s.next().await {
            buf.extend_from_slice(&c?);
        }
        Ok(Bytes::from(buf))
    }

    async fn plan_restore(
        &self,
        p: &Principal,
        req: &pb::RestoreRequest,
    ) -> Result<Plan, ApiError> {
        if !p.may_restore_or_export() {
            return Err(ApiError::PermissionDenied(format!(
                "role {} may not restore",
                p.role.as_str()
            )));
        }
        let t = as_of(req.as_of_unix_ms);
        // (hits, the folder prefix whose last component is kept under `to_folder`)
        let (hits, selected): (Vec<Hit>, Vec<String>) = match &req.what {
            Some(pb::restore_request::What::Items(ids)) => {
                let mut hits = Vec::new();
                for id in &ids.ids {
                    hits.push(self.readable(p, id).await?);
                }
                (hits, Vec::new())
            }
            Some(pb::restore_request::What::Folder(f)) => {
                if !p.owns_or_admin(&f.mailbox) {
                    return Err(ApiError::PermissionDenied(format!(
                        "{} may not restore from mailbox {}",
                        p.name, f.mailbox
                    )));
                }
                let (mb, path) = (f.mailbox.to_ascii_lowercase(), f.path.clone());
                let prefix = path.clone();
                let hits = self
                    .blocking(move |ix| ix.folder_items(&mb, &prefix, t))
                    .await?;
                (hits, path)
            }
            Some(pb::restore_request::What::Mailbox(m)) => {
                if !p.owns_or_admin(m) {
                    return Err(ApiError::PermissionDenied(format!(
                        "{} may not restore mailbox {m}",
                        p.name
                    )));
                }
                let mb = m.to_ascii_lowercase();
                let hits = self
                    .blocking(move |ix| ix.folder_items(&mb, &[], t))
                    .await?;
                (hits, Vec::new())
            }
            None => {
                return Err(ApiError::InvalidArgument(
                    "say what to restore: item ids, a folder or a mailbox".into(),
                ));
            }
        };
        if hits.is_empty() {
            return Err(ApiError::NotFound(
                "nothing to restore at that point in time".into(),
            ));
        }
        if !req.to_mailbox.is_empty() && !p.owns_or_admin(&req.to_mailbox) {
            return Err(ApiError::PermissionDenied(format!(
                "{} may not restore into mailbox {}",
                p.name, req.to_mailbox
            )));
        }
        // A user restores into their own mailbox only, whatever mailbox an item came from (a
        // journal copy naming them lives in the journal mailbox), never overwriting anything
        // there, and through whichever collector holds the items.
        let own_mailbox = match p.role {
            Role::User => {
                if req.collision == pb::Collision::Replace as i32 {
                    return Err(ApiError::PermissionDenied(format!(
                        "{} may not restore with collision=replace (it deletes the item \
                         found in the mailbox); use skip or copy",
                        p.name
                    )));
                }
                Some(p.mailbox.clone().ok_or_else(|| {
                    ApiError::PermissionDenied(format!("{} has no mailbox to restore into", p.name))
                })?)
            }
            _ => None,
        };
        let requested_source = if own_mailbox.is_some() {
            String::new()
        } else {
            req.target_source.clone()
        };

        // Well-known folders of each source mailbox, so paths map to the target's own.
        let mut wellknown: BTreeMap<String, BTreeMap<Vec<String>, String>> = BTreeMap::new();
        for h in &hits {
            if wellknown.contains_key(&h.mailbox) {
                continue;
            }
            let mb = h.mailbox.clone();
            let folders = self.blocking(move |ix| ix.list_folders(&mb, None)).await?;
            let map = folders
                .into_iter()
                .filter_map(|f| f.distinguished.map(|d| (f.path, d)))
                .collect();
            wellknown.insert(h.mailbox.clone(), map);
        }

        let mut source = requested_source;
        let mut items = Vec::with_capacity(hits.len());
        let mut ids = Vec::with_capacity(hits.len());
        for h in hits {
            if source.is_empty() {
                let id = BlobId::from_hex(&h.manifest_id).ok_or_else(|| {
                    ApiError::Internal(format!("index holds a bad item id {:?}", h.manifest_id))
                })?;
                let m = self
                    .inner
                    .repo
                    .manifest(&id)
                    .await
                    .map_err(|e| internal(&format!("manifest of item {}", h.manifest_id), e))?;
                source = m.source;
            }
            let folder = if !req.to_folder.is_empty() {
                // Keep the selected folder's own name and everything below it.
                let keep_from = selected.len().saturating_sub(1);
                let mut path = req.to_folder.clone();
                path.extend(h.folder_path.iter().skip(keep_from).cloned());
                wire::FolderTarget {
                    distinguished_root: String::new(),
                    path,
                }
            } else {
                map_folder(&h.folder_path, wellknown.get(&h.mailbox))
            };
            let target_mailbox = match &own_mailbox {
                Some(own) => own.to_ascii_lowercase(),
                None if req.to_mailbox.is_empty() => h.mailbox.clone(),
                None => req.to_mailbox.to_ascii_lowercase(),
            };
            let collision = match pb::Collision::try_from(req.collision) {
                Ok(pb::Collision::Copy) => wire::Collision::Copy,
                Ok(pb::Collision::Replace) => wire::Collision::Replace,
                _ => wire::Collision::Skip,
            };
            let item = wire::RestoreItem {
                target_mailbox,
                folder: Some(folder.clone()),
                item_class: h.item_class.clone(),
                format: mailvault_proto::storage::v1::ContentFormat::Mime as i32,
                is_read: h.is_read,
                collision: collision as i32,
                mark_unread: req.mark_unread,
                source_item_id: h.item_id.clone(),
                internet_message_id: h.internet_message_id.clone(),
                ..Default::default()
            };
            ids.push((h.manifest_id.clone(), folder.path.clone()));
            items.push(PlannedItem { hit: h, item });
        }
        if source.is_empty() {
            return Err(ApiError::InvalidArgument(
                "no collector is known for these items; pass target_source".into(),
            ));
        }
        Ok(Plan { source, items, ids })
    }
}

/// `path` relative to the deepest well-known folder it lies in.
pub fn map_folder(
    path: &[String],
    wellknown: Option<&BTreeMap<Vec<String>, String>>,
) -> wire::FolderTarget {
    if let Some(map) = wellknown {
        for cut in (1..=path.len()).rev() {
            if let Some(d) = map.get(&path[..cut]) {
                return wire::FolderTarget {
                    distinguished_root: d.clone(),
                    path: path[cut..].to_vec(),
                };
            }
        }
    }
    wire::FolderTarget {
        distinguished_root: String::new(),
        path: path.to_vec(),
    }
}

fn describe_restore(req: &pb::RestoreRequest) -> String {
    let what = match &req.what {
        Some(pb::restore_request::What::Items(i)) => format!("{} items", i.ids.len()),
        Some(pb::restore_request::What::Folder(f)) => {
            format!("folder {}:{}", f.mailbox, f.path.join("/"))
        }
        Some(pb::restore_request::What::Mailbox(m)) => format!("mailbox {m}"),
        None => "nothing".into(),
    };
    format!(
        "{what} as_of={} to={}:{} collision={}",
        req.as_of_unix_ms,
        req.to_mailbox,
        req.to_folder.join("/"),
        req.collision
    )
}

#[derive(Debug)]
struct PlannedItem {
    hit: Hit,
    item: wire::RestoreItem,
}

#[derive(Debug)]
struct Plan {
    source: String,
    items: Vec<PlannedItem>,
    /// (item id, target path) by sequence number, for progress messages.
    ids: Vec<(String, Vec<String>)>,
}

const CHUNK: usize = 256 * 1024;

/// A `Write` that hands full chunks to an async channel (from a blocking thread).
/// How an export ended, as its writer and its stream both see it.
#[derive(Debug)]
struct ExportEnd {
    slot: std::sync::Mutex<Option<StreamSlot>>,
    failure: std::sync::Mutex<Option<ApiError>>,
}

impl ExportEnd {
    fn fail(&self, e: ApiError) {
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
    }

    fn take_failure(&self) -> Option<ApiError> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn release(&self) {
        drop(
            self.slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }
}

struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, ApiError>>,
    buf: Vec<u8>,
    handle: tokio::runtime::Handle,
    /// A client that takes nothing for this long ends the export (and frees its thread).
    idle: std::time::Duration,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        match self
            .handle
            .block_on(tokio::time::timeout(self.idle, self.tx.send(Ok(chunk))))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::other("export receiver went away")),
            Err(_) => Err(std::io::Error::other(format!(
                "the client took nothing for {:?}: export ended",
                self.idle
            ))),
        }
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slices_a_range_across_chunks() {
        let chunks: Vec<Result<Bytes, ApiError>> = ["abcd", "efgh", "ijkl"]
            .iter()
            .map(|s| Ok(Bytes::from_static(s.as_bytes())))
            .collect();
        let s: ByteStream = Box::pin(futures::stream::iter(chunks));
        let out: Vec<u8> = slice_stream(s, 3, 6)
            .map(|r| r.expect("chunk"))
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(out, b"defghi");
    }

    #[test]
    fn paths_map_to_the_deepest_well_known_folder() {
        let map: BTreeMap<Vec<String>, String> = [
            (vec!["Inbox".to_owned()], "inbox".to_owned()),
            (vec!["Sent Items".to_owned()], "sentitems".to_owned()),
        ]
        .into_iter()
        .collect();
        let t = map_folder(&["Inbox".into(), "Projects".into()], Some(&map));
        assert_eq!(t.distinguished_root, "inbox");
        assert_eq!(t.path, vec!["Projects".to_owned()]);
        let t = map_folder(&["Archive 2020".into()], Some(&map));
        assert_eq!(t.distinguished_root, "");
        assert_eq!(t.path, vec!["Archive 2020".to_owned()]);
    }
}
