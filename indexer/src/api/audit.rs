//! The audit log: every API call (who, from where, what, when, result) as encrypted, write-once
//! batches in the repository (`audit/…` objects, docs/format.md).
//!
//! * **Stored before the answer.** [`AuditLog::record`] returns once the batch holding the
//!   record is in the repository (group commit: every record queued meanwhile shares one
//!   write), so a crash cannot lose the record of a call that was answered. A call whose
//!   record cannot be stored is not answered (see `Api::audited`).
//! * **Tamper-evident.** Each batch starts with a chain line
//!   `{"chain":{"writer":W,"seq":N,"prev":H}}`: the writer (one per process start), its batch
//!   number, and the BLAKE3 of the writer's previous batch (for `seq` 0: of the newest batch in
//!   the repository when the writer started). [`AuditLog::verify`] walks every chain: a deleted
//!   or altered batch in the middle breaks it and is named. (Each batch is also AEAD-sealed
//!   under its object name, so a batch cannot be edited or renamed without the key.)
//! * **Denied calls without a token are aggregated**: one record per peer and call per
//!   [`DENIED_WINDOW`], with the count, so a flood of bad tokens costs no write per call.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mailvault_format::{FormatError, Repository};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Refused calls without a valid token are counted for this long, then recorded once.
pub const DENIED_WINDOW: Duration = Duration::from_secs(10);

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
    /// `ok`, `denied`, `not_found`, `invalid`, `refused`, `error`, `started`.
    pub result: String,
    /// Counts and causes (`12 hits`, `restored 40/40`, the error, `×17` for aggregated denials).
    pub detail: String,
    /// The caller's address (`ip:port`); empty for calls inside the process.
    #[serde(default)]
    pub peer: String,
}

/// The first line of every batch since chaining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChainLine {
    chain: Chain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Chain {
    writer: String,
    seq: u64,
    /// BLAKE3 (hex) of the previous batch's plaintext; empty when there was none.
    prev: String,
}

type Waiter = oneshot::Sender<Result<(), String>>;

enum Msg {
    /// A record, and who waits for it to be stored (nobody for aggregated denials).
    Record(AuditRecord, Option<Waiter>),
    Flush(Waiter),
    Denied {
        call: String,
        peer: String,
    },
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

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub batches: usize,
    pub records: usize,
    /// Batches written before the log was chained (no chain line).
    pub unchained: usize,
    /// Distinct writers (process starts) seen.
    pub writers: usize,
    /// Breaks: each names the batch and what is wrong. Empty means intact.
    pub problems: Vec<String>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl AuditLog {
    /// Starts the writer on the current runtime.
    pub fn start(repo: Repository) -> AuditLog {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(repo, rx));
        AuditLog { tx }
    }

    /// Stores one record; returns once it is in the repository.
    pub async fn record(&self, r: AuditRecord) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(MsgBox(Msg::Record(r, Some(tx))))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Write)
    }

    /// Counts a call refused for want of a valid token; recorded once per peer, call and
    /// [`DENIED_WINDOW`].
    pub async fn denied(&self, call: &str, peer: &str) {
        let m = Msg::Denied {
            call: call.to_owned(),
            peer: peer.to_owned(),
        };
        if self.tx.send(MsgBox(m)).await.is_err() {
            tracing::error!("audit writer is gone; a refused call went unrecorded");
        }
    }

    /// Returns once every record handed over before this call is stored (aggregated denials
    /// included).
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
        let mut out = Vec::new();
        for (name, bytes) in batches(repo).await? {
            for line in lines(&bytes) {
                if serde_json::from_slice::<ChainLine>(line).is_ok() {
                    continue;
                }
                out.push(serde_json::from_slice(line).map_err(|e| AuditError::Read {
                    name: name.clone(),
                    cause: e.to_string(),
                })?);
            }
        }
        Ok(out)
    }

    /// Walks every writer's chain of batches and reports what breaks it.
    pub async fn verify(repo: &Repository) -> Result<ChainReport, AuditError> {
        let mut report = ChainReport::default();
        // Writer → (last seq, hash of its last batch).
        let mut chains: HashMap<String, (u64, String)> = HashMap::new();
        let mut seen_hashes: std::collections::HashSet<String> = Default::default();
        for (name, bytes) in batches(repo).await? {
            report.batches += 1;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let mut ls = lines(&bytes);
            let first = ls.next();
            report.records += ls.count();
            let Some(head) = first.and_then(|l| serde_json::from_slice::<ChainLine>(l).ok()) else {
                report.unchained += 1;
                report.records += usize::from(first.is_some());
                if !chains.is_empty() {
                    report.problems.push(format!(
                        "{name}: no chain line in a batch written after chaining began"
                    ));
                }
                seen_hashes.insert(hash);
                continue;
            };
            let c = head.chain;
            match chains.get(&c.writer) {
                None if c.seq == 0 => {
                    if !c.prev.is_empty() && !seen_hashes.contains(&c.prev) {
                        report.problems.push(format!(
                            "{name}: writer {} started after a batch that is no longer there \
                             (a deleted batch)",
                            c.writer
                        ));
                    }
                }
                None => report.problems.push(format!(
                    "{name}: writer {} begins at batch {}; batches 0..{} are missing",
                    c.writer, c.seq, c.seq
                )),
                Some((last, prev)) => {
                    if c.seq == last + 1 && &c.prev == prev {
                    } else if c.seq == *last && &c.prev != prev {
                        report.problems.push(format!(
                            "{name}: writer {} batch {} does not follow the batch before it",
                            c.writer, c.seq
                        ));
                    } else if c.seq == *last {
                        // The same batch written twice (a write retried after it had landed).
                    } else if c.seq > last + 1 {
                        report.problems.push(format!(
                            "{name}: writer {} batches {}..{} are missing (deleted)",
                            c.writer,
                            last + 1,
                            c.seq
                        ));
                    } else if &c.prev != prev {
                        report.problems.push(format!(
                            "{name}: writer {} batch {} does not follow its previous batch \
                             (altered or deleted)",
                            c.writer, c.seq
                        ));
                    }
                }
            }
            chains.insert(c.writer, (c.seq, hash.clone()));
            seen_hashes.insert(hash);
        }
        report.writers = chains.len();
        Ok(report)
    }
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

async fn batches(repo: &Repository) -> Result<Vec<(String, Vec<u8>)>, AuditError> {
    repo.audit_batches().await.map_err(|e| AuditError::Read {
        name: "audit/".into(),
        cause: e.to_string(),
    })
}

/// The writer's place in its chain.
struct ChainState {
    writer: String,
    seq: u64,
    prev: String,
}

async fn writer(repo: Repository, mut rx: mpsc::Receiver<MsgBox>) {
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut chain: Option<ChainState> = None;
    // (peer, call) → (count, first seen ms) of refused calls in the current window.
    let mut denied: BTreeMap<(String, String), (u64, i64)> = BTreeMap::new();
    let mut window_end: Option<tokio::time::Instant> = None;
    loop {
        let deadline =
            window_end.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // After a failed write, come back soon to retry even if nothing else arrives.
        let retry = if pending.is_empty() {
            deadline
        } else {
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(1))
        };
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(MsgBox(m)) => Some(m),
                None => break,
            },
            () = tokio::time::sleep_until(retry) => None,
        };
        let mut flush_denied = window_end.is_some_and(|d| tokio::time::Instant::now() >= d);
        let mut next = first;
        // Take everything already queued into one batch.
        while let Some(m) = next.take().or_else(|| rx.try_recv().ok().map(|b| b.0)) {
            match m {
                Msg::Record(r, w) => {
                    pending.push(r);
                    waiters.extend(w);
                }
                Msg::Flush(w) => {
                    flush_denied = true;
                    waiters.push(w);
                }
                Msg::Denied { call, peer } => {
                    let e = denied.entry((peer, call)).or_insert((0, now_ms()));
                    e.0 += 1;
                    window_end.get_or_insert_with(|| tokio::time::Instant::now() + DENIED_WINDOW);
                }
            }
        }
        if flush_denied {
            pending.extend(denied_records(&mut denied));
            window_end = None;
        }
        let res = store(&repo, &mut chain, &mut pending).await;
        if let Err(e) = &res {
            // Kept in `pending` and retried: nothing is dropped. The callers waiting now are
            // told, and their calls are not answered.
            tracing::error!(error = %e, records = pending.len(), "audit batch not stored yet");
        }
        for w in waiters.drain(..) {
            let _ = w.send(res.clone().map_err(|e| e.to_string()));
        }
    }
    pending.extend(denied_records(&mut denied));
    if let Err(e) = store(&repo, &mut chain, &mut pending).await {
        tracing::error!(error = %e, records = pending.len(), "audit records lost at shutdown");
    }
}

fn denied_records(denied: &mut BTreeMap<(String, String), (u64, i64)>) -> Vec<AuditRecord> {
    std::mem::take(denied)
        .into_iter()
        .map(|((peer, call), (n, first_ms))| AuditRecord {
            unix_ms: first_ms,
            who: "anonymous".into(),
            role: String::new(),
            call,
            target: String::new(),
            result: "denied".into(),
            detail: format!("missing or unknown bearer token ×{n}"),
            peer,
        })
        .collect()
}

async fn store(
    repo: &Repository,
    chain: &mut Option<ChainState>,
    pending: &mut Vec<AuditRecord>,
) -> Result<(), FormatErrorText> {
    if pending.is_empty() {
        return Ok(());
    }
    if chain.is_none() {
        // Anchor this writer to the newest batch there is (one read, however long the log).
        let prev = repo
            .newest_audit_batch()
            .await
            .map_err(|e: FormatError| FormatErrorText(e.to_string()))?
            .map(|(_, b)| blake3::hash(&b).to_hex().to_string())
            .unwrap_or_default();
        *chain = Some(ChainState {
            writer: format!("{:016x}", rand::random::<u64>()),
            seq: 0,
            prev,
        });
    }
    let Some(c) = chain.as_mut() else {
        return Ok(());
    };
    let head = ChainLine {
        chain: Chain {
            writer: c.writer.clone(),
            seq: c.seq,
            prev: c.prev.clone(),
        },
    };
    let mut buf = Vec::new();
    // Serialising structs of strings and numbers cannot fail.
    if let Ok(line) = serde_json::to_vec(&head) {
        buf.extend_from_slice(&line);
        buf.push(b'\n');
    }
    for r in pending.iter() {
        if let Ok(line) = serde_json::to_vec(r) {
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
    }
    repo.append_audit(&buf)
        .await
        .map_err(|e: FormatError| FormatErrorText(e.to_string()))?;
    c.prev = blake3::hash(&buf).to_hex().to_string();
    c.seq += 1;
    pending.clear();
    Ok(())
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct FormatErrorText(String);
