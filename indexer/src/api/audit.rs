//! The audit log: every API call (who, what, when, result) as encrypted, append-only batches in
//! the repository (`audit/…` objects, docs/format.md).
//!
//! Calls hand their record to a background writer and do not wait for storage, so a search is
//! not slowed by an object-store round trip; [`AuditLog::flush`] waits until everything handed
//! over so far is stored (tests, shutdown).

use mailvault_format::{FormatError, Repository};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub unix_ms: i64,
    /// Token name, or `anonymous` for a call without a valid token.
    pub who: String,
    pub role: String,
    /// RPC name (`Search`, `Restore`, …).
    pub call: String,
    /// What the call was about: query, item id, mailbox/folder.
    pub target: String,
    /// `ok`, `denied`, `not_found`, `invalid`, `error`.
    pub result: String,
    /// Counts and causes (`12 hits`, `restored 40/40`, the error).
    pub detail: String,
}

enum Msg {
    Record(AuditRecord),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Handle to the background audit writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<MsgBox>,
}

// `Msg` holds a oneshot, which is not Debug in a useful way.
struct MsgBox(Msg);

impl std::fmt::Debug for MsgBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit message")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit writer stopped")]
    Stopped,
    #[error("writing the audit log: {0}")]
    Write(String),
    #[error("reading audit batch {name}: {cause}")]
    Read { name: String, cause: String },
}

impl AuditLog {
    /// Starts the writer on the current runtime.
    pub fn start(repo: Repository) -> AuditLog {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(repo, rx));
        AuditLog { tx }
    }

    /// Hands one record to the writer. Waits only when 4096 records are already queued.
    pub async fn record(&self, r: AuditRecord) {
        if self.tx.send(MsgBox(Msg::Record(r))).await.is_err() {
            tracing::error!("audit writer is gone; a call went unrecorded");
        }
    }

    /// Returns once every record handed over before this call is stored.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(MsgBox(Msg::Flush(tx)))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Write)
    }

    /// Every record in the repository, oldest first.
    pub async fn read_all(repo: &Repository) -> Result<Vec<AuditRecord>, AuditError> {
        let batches = repo.audit_batches().await.map_err(|e| AuditError::Read {
            name: "audit/".into(),
            cause: e.to_string(),
        })?;
        let mut out = Vec::new();
        for (name, bytes) in batches {
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice(line).map_err(|e| AuditError::Read {
                    name: name.clone(),
                    cause: e.to_string(),
                })?);
            }
        }
        Ok(out)
    }
}

async fn writer(repo: Repository, mut rx: mpsc::Receiver<MsgBox>) {
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    while let Some(MsgBox(first)) = rx.recv().await {
        let mut next = Some(first);
        // Take everything already queued into one batch.
        while let Some(m) = next.take().or_else(|| rx.try_recv().ok().map(|b| b.0)) {
            match m {
                Msg::Record(r) => pending.push(r),
                Msg::Flush(w) => waiters.push(w),
            }
        }
        let res = store(&repo, &mut pending).await;
        if let Err(e) = &res {
            // Kept in `pending` and retried with the next batch: nothing is dropped.
            tracing::error!(error = %e, records = pending.len(), "audit batch not stored yet");
        }
        for w in waiters.drain(..) {
            let _ = w.send(res.clone().map_err(|e| e.to_string()));
        }
    }
    if let Err(e) = store(&repo, &mut pending).await {
        tracing::error!(error = %e, records = pending.len(), "audit records lost at shutdown");
    }
}

async fn store(repo: &Repository, pending: &mut Vec<AuditRecord>) -> Result<(), FormatErrorText> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for r in pending.iter() {
        // Serialising a struct of strings cannot fail.
        if let Ok(line) = serde_json::to_vec(r) {
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
    }
    repo.append_audit(&buf)
        .await
        .map_err(|e: FormatError| FormatErrorText(e.to_string()))?;
    pending.clear();
    Ok(())
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct FormatErrorText(String);
