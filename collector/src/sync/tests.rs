//! Engine tests over in-memory fakes of `Ews`, `Publisher` and `CheckpointStore`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::ews::request::FolderRef;
use crate::ews::{ErrorContext, HierarchyPage, ItemsPage};
use crate::filter::Filter;
use pb::ingest_message::Message;

#[derive(Debug, Clone)]
struct FakeItem {
    ck: String,
    class: String,
    mime: Vec<u8>,
    malformed: bool,
}

#[derive(Debug, Default)]
struct FakeMailbox {
    folders: Vec<Folder>,
    /// folder id → change log; a sync state is "g<generation>:<position>".
    logs: HashMap<String, Vec<ItemChange>>,
    live: HashMap<String, FakeItem>,
    generation: u32,
}

#[derive(Debug, Default)]
struct FakeEws {
    broken_folder: Mutex<Option<String>>,
    mb: Mutex<FakeMailbox>,
    get_item_ids: AtomicUsize,
    calls: AtomicUsize,
    /// Each GetItem call takes one of these and waits at it before answering.
    gates: Mutex<Vec<Arc<tokio::sync::Barrier>>>,
    /// A GetItem call whose first item is a key here waits at its barrier before answering.
    item_gates: Mutex<HashMap<String, Arc<tokio::sync::Barrier>>>,
}

fn folder(id: &str, parent: &str, name: &str) -> Folder {
    Folder {
        id: id.into(),
        parent_id: parent.into(),
        display_name: name.into(),
        folder_class: "IPF.Note".into(),
        element: "Folder".into(),
        total_count: Some(0),
        ..Folder::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("test mutex poisoned")
}

impl FakeEws {
    fn new() -> Self {
        let f = Self::default();
        {
            let mut mb = lock(&f.mb);
            mb.folders = vec![
                folder("root", "", "Top of Information Store"),
                folder("inbox", "root", "Inbox"),
                folder("archive", "root", "Archive"),
                folder("nonipm", "", "Recoverable Items"),
            ];
        }
        f
    }

    fn add(&self, folder: &str, id: &str, body: &str) {
        let mut mb = lock(&self.mb);
        let item = FakeItem {
            ck: "ck1".into(),
            class: "IPM.Note".into(),
            mime: body.as_bytes().to_vec(),
            malformed: false,
        };
        mb.logs
            .entry(folder.into())
            .or_default()
            .push(ItemChange::Create(summary(id, &item)));
        mb.live.insert(id.into(), item);
    }

    fn update(&self, folder: &str, id: &str, body: &str) {
        let mut mb = lock(&self.mb);
        let it = mb.live.get_mut(id).expect("live item");
        it.ck = format!("{}x", it.ck);
        it.mime = body.as_bytes().to_vec();
        let s = summary(id, it);
        mb.logs
            .entry(folder.into())
            .or_default()
            .push(ItemChange::Update(s));
    }

    fn delete(&self, folder: &str, id: &str) {
        let mut mb = lock(&self.mb);
        let it = mb.live.remove(id).expect("live item");
        mb.logs
            .entry(folder.into())
            .or_default()
            .push(ItemChange::Delete(ItemId {
                id: id.into(),
                change_key: it.ck,
            }));
    }

    fn mv(&self, from: &str, to: &str, id: &str) {
        let mut mb = lock(&self.mb);
        let it = mb.live.get(id).expect("live item").clone();
        mb.logs
            .entry(from.into())
            .or_default()
            .push(ItemChange::Delete(ItemId {
                id: id.into(),
                change_key: it.ck.clone(),
            }));
        mb.logs
            .entry(to.into())
            .or_default()
            .push(ItemChange::Create(summary(id, &it)));
    }

    fn read(&self, folder: &str, id: &str) {
        let mut mb = lock(&self.mb);
        let ck = mb.live[id].ck.clone();
        mb.logs
            .entry(folder.into())
            .or_default()
            .push(ItemChange::ReadFlag {
                id: ItemId {
                    id: id.into(),
                    change_key: ck,
                },
                is_read: true,
            });
    }

    fn vanish_silently(&self, id: &str) {
        lock(&self.mb).live.remove(id);
    }

    fn set_malformed(&self, id: &str) {
        if let Some(i) = lock(&self.mb).live.get_mut(id) {
            i.malformed = true;
        }
    }

    fn invalidate_states(&self) {
        lock(&self.mb).generation += 1;
    }
}

fn summary(id: &str, it: &FakeItem) -> ItemSummary {
    ItemSummary {
        id: ItemId {
            id: id.into(),
            change_key: it.ck.clone(),
        },
        item_class: it.class.clone(),
        is_read: Some(false),
        size: Some(it.mime.len() as u64),
        element: "Message".into(),
    }
}

#[async_trait]
impl Ews for FakeEws {
    async fn sync_folder_hierarchy(
        &self,
        _m: &Mailbox,
        _root: Option<&str>,
        state: Option<&str>,
    ) -> Result<HierarchyPage, EwsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if _root == Some("archivemsgfolderroot") {
            let changes = if state.is_some() {
                Vec::new()
            } else {
                vec![FolderChange::Create(folder("arch-inbox", "aroot", "Inbox"))]
            };
            return Ok(HierarchyPage {
                sync_state: "ah1".into(),
                includes_last: true,
                changes,
            });
        }
        let mb = lock(&self.mb);
        let changes = if state.is_some() {
            Vec::new()
        } else {
            mb.folders
                .iter()
                .filter(|f| f.id != "root")
                .cloned()
                .map(FolderChange::Create)
                .collect()
        };
        Ok(HierarchyPage {
            sync_state: "h1".into(),
            includes_last: true,
            changes,
        })
    }

    async fn get_distinguished_folders(
        &self,
        _m: &Mailbox,
        ids: &[&str],
    ) -> Result<Vec<(String, Folder)>, EwsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if ids == ["archivemsgfolderroot"] {
            return Ok(vec![(
                "archivemsgfolderroot".into(),
                folder("aroot", "", "Archive root"),
            )]);
        }
        let mb = lock(&self.mb);
        Ok(vec![
            ("msgfolderroot".into(), mb.folders[0].clone()),
            ("inbox".into(), mb.folders[1].clone()),
        ])
    }

    async fn sync_folder_items(
        &self,
        _m: &Mailbox,
        folder_id: &str,
        state: Option<&str>,
        max: u32,
    ) -> Result<ItemsPage, EwsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if lock(&self.broken_folder).as_deref() == Some(folder_id) {
            return Err(EwsError::malformed(
                "XML document ended early (truncated response)",
            ));
        }
        let mb = lock(&self.mb);
        let pos = match state {
            None => 0,
            Some(s) => {
                let (g, p) = s.split_once(':').expect("state shape");
                if g != format!("g{}", mb.generation) {
                    return Err(EwsError::from_response_code(
                        "ErrorInvalidSyncStateData",
                        "invalid",
                        None,
                        ErrorContext::default(),
                    ));
                }
                p.parse::<usize>().expect("pos")
            }
        };
        let log = mb.logs.get(folder_id).cloned().unwrap_or_default();
        let end = (pos + max as usize).min(log.len());
        Ok(ItemsPage {
            sync_state: format!("g{}:{end}", mb.generation),
            includes_last: end == log.len(),
            changes: log[pos..end].to_vec(),
        })
    }

    async fn get_items_mime(
        &self,
        _m: &Mailbox,
        ids: &[ItemId],
    ) -> Result<Vec<Result<MimeItem, EwsError>>, EwsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.get_item_ids.fetch_add(ids.len(), Ordering::Relaxed);
        let gate = lock(&self.gates).pop();
        if let Some(g) = gate {
            g.wait().await;
        }
        let gate = ids
            .first()
            .and_then(|i| lock(&self.item_gates).remove(&i.id));
        if let Some(g) = gate {
            g.wait().await;
        }
        let mb = lock(&self.mb);
        if ids
            .iter()
            .any(|i| mb.live.get(&i.id).is_some_and(|it| it.malformed))
        {
            return Err(EwsError::malformed("invalid base64 in <MimeContent>"));
        }
        Ok(ids
            .iter()
            .map(|i| match mb.live.get(&i.id) {
                Some(it) => Ok(MimeItem {
                    id: ItemId {
                        id: i.id.clone(),
                        change_key: it.ck.clone(),
                    },
                    item_class: it.class.clone(),
                    is_read: Some(false),
                    mime: it.mime.clone(),
                }),
                None => Err(EwsError::from_response_code(
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                    None,
                    ErrorContext::default(),
                )),
            })
            .collect())
    }

    async fn find_folders(
        &self,
        _m: &Mailbox,
        parent: FolderRef<'_>,
        offset: u32,
        _page: u32,
    ) -> Result<crate::ews::FindPage<Folder>, EwsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let entries = match parent {
            FolderRef::Distinguished("publicfoldersroot") => {
                vec![
                    folder("pf1", "pfroot", "Sales"),
                    folder("pf3", "pfroot", "Private"),
                ]
            }
            FolderRef::Id("pf1") => vec![folder("pf2", "pf1", "EMEA")],
            _ => vec![],
        };
        // Page size 1 to exercise paging.
        let o = offset as usize;
        let last = o + 1 >= entries.len();
        Ok(crate::ews::FindPage {
            entries: entries.into_iter().skip(o).take(1).collect(),
            includes_last: last,
            next_offset: (!last).then_some(offset + 1),
        })
    }

    async fn find_items(
        &self,
        _m: &Mailbox,
        folder_id: &str,
        _offset: u32,
        _page: u32,
    ) -> Result<crate::ews::FindPage<ItemSummary>, EwsError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mb = lock(&self.mb);
        let entries = mb
            .logs
            .get(folder_id)
            .into_iter()
            .flatten()
            .filter_map(|c| match c {
                ItemChange::Create(s) => mb.live.get(&s.id.id).map(|it| summary(&s.id.id, it)),
                _ => None,
            })
            .collect();
        Ok(crate::ews::FindPage {
            entries,
            includes_last: true,
            next_offset: None,
        })
    }
}

#[derive(Debug, Default)]
struct FakePublisher {
    msgs: Mutex<Vec<OutMessage>>,
    /// Fail once the total number of published messages would exceed this.
    fail_after: Mutex<Option<usize>>,
}

#[async_trait]
impl Publisher for FakePublisher {
    async fn publish_batch(&self, msgs: Vec<OutMessage>) -> Result<(), PublishError> {
        let mut all = lock(&self.msgs);
        for m in msgs {
            if let Some(limit) = *lock(&self.fail_after)
                && all.len() >= limit
            {
                return Err(PublishError("injected: no ack".into()));
            }
            all.push(m);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeStore {
    mailboxes: Mutex<HashMap<String, MailboxCheckpoint>>,
    folders: Mutex<BTreeMap<(String, String), String>>,
    versions: Mutex<HashSet<(String, String, String)>>,
}

#[async_trait]
impl CheckpointStore for FakeStore {
    async fn get_mailbox(&self, m: &str) -> Result<Option<MailboxCheckpoint>, CheckpointError> {
        Ok(lock(&self.mailboxes).get(m).cloned())
    }
    async fn put_mailbox(&self, m: &str, cp: &MailboxCheckpoint) -> Result<(), CheckpointError> {
        lock(&self.mailboxes).insert(m.into(), cp.clone());
        Ok(())
    }
    async fn get_folder(&self, m: &str, f: &str) -> Result<Option<String>, CheckpointError> {
        Ok(lock(&self.folders).get(&(m.into(), f.into())).cloned())
    }
    async fn put_folder(&self, m: &str, f: &str, s: &str) -> Result<(), CheckpointError> {
        lock(&self.folders).insert((m.into(), f.into()), s.into());
        Ok(())
    }
    async fn delete_folder(&self, m: &str, f: &str) -> Result<(), CheckpointError> {
        lock(&self.folders).remove(&(m.into(), f.into()));
        Ok(())
    }
    async fn has_version(&self, m: &str, id: &ItemId) -> Result<bool, CheckpointError> {
        Ok(lock(&self.versions).contains(&(m.into(), id.id.clone(), id.change_key.clone())))
    }
    async fn record_versions(&self, m: &str, ids: &[ItemId]) -> Result<(), CheckpointError> {
        let mut v = lock(&self.versions);
        for id in ids {
            v.insert((m.into(), id.id.clone(), id.change_key.clone()));
        }
        Ok(())
    }
}

type TestEngine = Engine<FakeEws, FakePublisher, FakeStore>;

fn engine(opts: SyncOptions) -> TestEngine {
    Engine {
        ews: Arc::new(FakeEws::new()),
        publisher: Arc::new(FakePublisher::default()),
        store: Arc::new(FakeStore::default()),
        opts: SyncOptions {
            max_changes: 3,
            get_item_batch: 2,
            ..opts
        },
        metrics: Arc::new(Metrics::default()),
    }
}

const MB: &str = "alice@example.com";

fn mailbox() -> Mailbox {
    Mailbox { smtp: MB.into() }
}

/// Drains the published messages, without the reconciliation record.
fn take(e: &TestEngine) -> Vec<OutMessage> {
    lock(&e.publisher.msgs)
        .drain(..)
        .filter(|m| !matches!(m.message.message, Some(Message::Reconciliation(_))))
        .collect()
}

fn items(msgs: &[OutMessage]) -> Vec<(String, String, Vec<u8>)> {
    let mut v: Vec<_> = msgs
        .iter()
        .filter_map(|m| match &m.message.message {
            Some(Message::Item(env)) => {
                let Some(pb::item_envelope::Body::Inline(b)) = &env.body else {
                    panic!("inline body expected");
                };
                Some((env.item_id.clone(), env.folder_path.join("/"), b.to_vec()))
            }
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn changes(msgs: &[OutMessage]) -> Vec<(String, pb::ChangeKind, String)> {
    let mut v: Vec<_> = msgs
        .iter()
        .filter_map(|m| match &m.message.message {
            Some(Message::Change(c)) => Some((c.item_id.clone(), c.kind(), c.folder_id.clone())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Reconciled folders' paths, in the order the reconciliation lists them.
fn folder_paths(rec: &pb::MailboxReconciliation) -> Vec<String> {
    rec.folders
        .iter()
        .map(|f| f.folder_path.join("/"))
        .collect()
}

/// A mailbox pass that gates may hold up: `hung` says what never happened if it does not end.
async fn sync_within_30s(e: &TestEngine, hung: &str) -> pb::MailboxReconciliation {
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        e.sync_mailbox(&mailbox()),
    )
    .await
    .expect(hung)
}

#[tokio::test]
async fn first_run_everything_second_run_only_changes() {
    let e = engine(SyncOptions::default());
    for i in 0..7 {
        e.ews.add(
            "inbox",
            &format!("i{i}"),
            &format!("Subject: {i}\r\n\r\nbody {i}"),
        );
    }
    e.ews.add("archive", "a0", "Subject: a\r\n\r\narchived");
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let first = take(&e);
    let got = items(&first);
    assert_eq!(got.len(), 8);
    assert!(got.contains(&(
        "i3".into(),
        "Inbox".into(),
        b"Subject: 3\r\n\r\nbody 3".to_vec()
    )));
    assert!(got.contains(&(
        "a0".into(),
        "Archive".into(),
        b"Subject: a\r\n\r\narchived".to_vec()
    )));
    // Non-IPM folders are out of scope by default and say so.
    assert_eq!(rec.folders_skipped.get("outside_ipm_subtree"), Some(&1));
    assert_eq!(rec.folders.iter().map(|f| f.captured).sum::<u64>(), 8);
    // Msg ids are the stable hash of (mailbox, item id, change key).
    for m in &first {
        if let Some(Message::Item(env)) = &m.message.message {
            assert_eq!(
                m.msg_id,
                item_msg_id(
                    MB,
                    &ItemId {
                        id: env.item_id.clone(),
                        change_key: env.change_key.clone()
                    }
                )
            );
            assert_eq!(m.subject, subject("item", MB));
            let tp = m.traceparent.as_deref().expect("traceparent");
            assert_eq!(tp.len(), 55, "{tp}");
        }
    }

    // No changes: nothing but the reconciliation, and only O(folders) EWS calls.
    e.ews.calls.store(0, Ordering::Relaxed);
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty());
    assert!(take(&e).is_empty());
    assert_eq!(
        e.ews.calls.load(Ordering::Relaxed),
        1 + 2,
        "hierarchy + one per folder"
    );

    e.ews.add("inbox", "new1", "Subject: new");
    e.ews.update("inbox", "i1", "Subject: 1 edited");
    e.ews.delete("inbox", "i2");
    e.ews.read("inbox", "i4");
    e.ews.mv("inbox", "archive", "i5");
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty());
    let second = take(&e);
    let ids: Vec<String> = items(&second).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids, vec!["i1", "i5", "new1"]);
    assert_eq!(
        changes(&second),
        vec![
            ("i2".into(), pb::ChangeKind::Delete, "inbox".into()),
            ("i4".into(), pb::ChangeKind::ReadFlag, "inbox".into()),
            ("i5".into(), pb::ChangeKind::Move, "archive".into()),
        ]
    );
}

#[tokio::test]
async fn folders_of_a_mailbox_are_synced_at_once() {
    let e = engine(SyncOptions {
        folder_concurrency: 2,
        ..SyncOptions::default()
    });
    e.ews.add("inbox", "i1", "Subject: in");
    e.ews.add("archive", "a1", "Subject: archived");
    // The first two GetItem calls only return once both are in flight: a pass that syncs
    // one folder after the other never gets there.
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    *lock(&e.ews.gates) = vec![gate.clone(), gate];
    let rec = sync_within_30s(&e, "the two folders' GetItem calls never overlapped").await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let paths = folder_paths(&rec);
    assert_eq!(
        paths,
        vec!["Archive", "Inbox"],
        "reconciliations keep folder order"
    );
    let got: Vec<String> = items(&take(&e)).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(got, vec!["a1", "i1"]);
}

/// Sets the folder sizes the hierarchy reports (and adds folders under the root).
fn sized_folders(e: &TestEngine, sizes: &[(&str, &str, u64)]) {
    let mut mb = lock(&e.ews.mb);
    for &(id, name, n) in sizes {
        match mb.folders.iter_mut().find(|f| f.id == id) {
            Some(f) => f.total_count = Some(n),
            None => mb.folders.push(Folder {
                total_count: Some(n),
                ..folder(id, "root", name)
            }),
        }
    }
}

#[tokio::test]
async fn biggest_folders_are_synced_first() {
    let e = engine(SyncOptions {
        folder_concurrency: 1,
        ..SyncOptions::default()
    });
    sized_folders(&e, &[("archive", "Archive", 1), ("inbox", "Inbox", 3)]);
    for i in 0..3 {
        e.ews.add("inbox", &format!("i{i}"), "Subject: in");
    }
    e.ews.add("archive", "a1", "Subject: archived");
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let order: Vec<String> = take(&e)
        .iter()
        .filter_map(|m| match &m.message.message {
            Some(Message::Item(env)) => Some(env.item_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["i0", "i1", "i2", "a1"], "the big Inbox first");
    let paths = folder_paths(&rec);
    assert_eq!(
        paths,
        vec!["Archive", "Inbox"],
        "reconciliations keep folder order"
    );
}

#[tokio::test]
async fn a_finished_folder_frees_its_slot_while_a_bigger_one_runs() {
    let e = engine(SyncOptions {
        folder_concurrency: 2,
        ..SyncOptions::default()
    });
    // Archive comes first both by size and by path.
    sized_folders(
        &e,
        &[
            ("archive", "Archive", 3),
            ("inbox", "Inbox", 2),
            ("projects", "Projects", 1),
        ],
    );
    e.ews.add("archive", "a1", "Subject: archived");
    e.ews.add("inbox", "i1", "Subject: in");
    e.ews.add("projects", "p1", "Subject: project");
    // The Archive's GetItem answers only once the Projects folder's GetItem arrived: Projects
    // must start in the slot the Inbox freed while the Archive is still running.
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    *lock(&e.ews.item_gates) = HashMap::from([("a1".into(), gate.clone()), ("p1".into(), gate)]);
    let rec = sync_within_30s(&e, "Projects never started while the Archive was running").await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let got: Vec<String> = items(&take(&e)).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(got, vec!["a1", "i1", "p1"]);
    let paths = folder_paths(&rec);
    assert_eq!(paths, vec!["Archive", "Inbox", "Projects"]);
}

#[tokio::test]
async fn checkpoint_not_advanced_when_publish_fails() {
    let e = engine(SyncOptions::default());
    for i in 0..5 {
        e.ews.add("inbox", &format!("i{i}"), "Subject: x");
    }
    *lock(&e.publisher.fail_after) = Some(2);
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(!rec.error.is_empty(), "publish failure must surface");
    // Pages are 3 changes, GetItem batches 2: the first batch (2 items) was acked but the page
    // was not complete, so no state was stored for the inbox.
    assert_eq!(
        lock(&e.store.folders).get(&(MB.into(), "inbox".into())),
        None
    );
    let before: Vec<String> = take(&e).into_iter().map(|m| m.msg_id).collect();

    *lock(&e.publisher.fail_after) = None;
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let after = take(&e);
    assert_eq!(
        items(&after).len(),
        5,
        "everything re-read from the last checkpoint"
    );
    // The re-published messages carry the same Nats-Msg-Id, so JetStream dedupes them.
    let after_ids: HashSet<String> = after.iter().map(|m| m.msg_id.clone()).collect();
    assert!(before.iter().all(|id| after_ids.contains(id)));
    assert!(lock(&e.store.folders).contains_key(&(MB.into(), "inbox".into())));
}

#[tokio::test]
async fn invalid_sync_state_resyncs_without_refetching() {
    let e = engine(SyncOptions::default());
    for i in 0..4 {
        e.ews.add("inbox", &format!("i{i}"), "Subject: x");
    }
    e.sync_mailbox(&mailbox()).await;
    take(&e);
    e.ews.invalidate_states();
    e.ews.add("inbox", "late", "Subject: late");
    let fetched_before = e.ews.get_item_ids.load(Ordering::Relaxed);
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let inbox = rec
        .folders
        .iter()
        .find(|f| f.folder_id == "inbox")
        .expect("inbox report");
    assert!(inbox.resynced);
    assert_eq!(inbox.skipped.get("already_collected"), Some(&4));
    assert_eq!(
        e.ews.get_item_ids.load(Ordering::Relaxed) - fetched_before,
        1,
        "only the new item fetched"
    );
    let msgs = take(&e);
    assert_eq!(
        items(&msgs).into_iter().map(|x| x.0).collect::<Vec<_>>(),
        vec!["late"]
    );
    assert_eq!(
        Metrics::get(&e.metrics.sync_state_resets),
        2,
        "inbox and archive"
    );
}

#[tokio::test]
async fn vanished_and_malformed_items_are_quarantined_and_run_continues() {
    let e = engine(SyncOptions::default());
    for i in 0..5 {
        e.ews.add("inbox", &format!("i{i}"), "Subject: x");
    }
    e.ews.vanish_silently("i1");
    e.ews.set_malformed("i3");
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let msgs = take(&e);
    let ids: Vec<String> = items(&msgs).into_iter().map(|x| x.0).collect();
    assert_eq!(ids, vec!["i0", "i2", "i4"]);
    let mut q: Vec<(String, String, String)> = msgs
        .iter()
        .filter_map(|m| match &m.message.message {
            Some(Message::Quarantine(q)) => {
                Some((q.item_id.clone(), q.error_kind.clone(), q.cause.clone()))
            }
            _ => None,
        })
        .collect();
    q.sort();
    assert_eq!(q.len(), 2);
    assert_eq!((q[0].0.as_str(), q[0].1.as_str()), ("i1", "item_not_found"));
    assert_eq!(
        (q[1].0.as_str(), q[1].1.as_str()),
        ("i3", "malformed_response")
    );
    for (item, _, cause) in &q {
        assert!(
            cause.contains(MB) && cause.contains(item.as_str()) && cause.contains("Inbox"),
            "{cause}"
        );
    }
    assert_eq!(Metrics::get(&e.metrics.quarantined), 2);
    let inbox = rec
        .folders
        .iter()
        .find(|f| f.folder_id == "inbox")
        .expect("inbox");
    assert_eq!((inbox.captured, inbox.quarantined), (3, 2));
    // The folder still advanced: quarantined items are accounted for, not retried forever.
    assert!(lock(&e.store.folders).contains_key(&(MB.into(), "inbox".into())));
}

#[tokio::test]
async fn filters_skip_folders_and_item_classes() {
    let e = engine(SyncOptions {
        filters: Filters {
            folders: Filter::new(&[], &["Archive".into()]),
            item_classes: Filter::new(&[], &["IPM.Note".into()]),
            ..Filters::default()
        },
        ..SyncOptions::default()
    });
    e.ews.add("inbox", "i0", "Subject: x");
    e.ews.add("archive", "a0", "Subject: y");
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(take(&e).is_empty());
    assert_eq!(rec.folders_skipped.get("folder_filter"), Some(&1));
    let inbox = rec
        .folders
        .iter()
        .find(|f| f.folder_id == "inbox")
        .expect("inbox");
    assert_eq!(inbox.skipped.get("item_class_filter"), Some(&1));
}

#[test]
fn batches_bounded_by_count_and_bytes() {
    let it = |size| ItemSummary {
        id: ItemId {
            id: String::new(),
            change_key: String::new(),
        },
        item_class: String::new(),
        is_read: None,
        size: Some(size),
        element: String::new(),
    };
    let items: Vec<ItemSummary> = [10, 10, 10, 100, 10, 10, 10, 10]
        .into_iter()
        .map(it)
        .collect();
    let lens: Vec<usize> = batches(&items, 3, 50).iter().map(|b| b.len()).collect();
    assert_eq!(lens, vec![3, 1, 3, 1]);
    assert_eq!(batches(&items, 100, u64::MAX).len(), 1);
    assert!(batches(&[], 3, 50).is_empty());
}

#[tokio::test]
async fn malformed_folder_response_is_recorded_and_other_folders_continue() {
    let e = engine(SyncOptions::default());
    e.ews.add("inbox", "i0", "Subject: x");
    e.ews.add("archive", "a0", "Subject: y");
    *lock(&e.ews.broken_folder) = Some("archive".into());
    let rec = e.sync_mailbox(&mailbox()).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let msgs = take(&e);
    assert_eq!(
        items(&msgs).into_iter().map(|x| x.0).collect::<Vec<_>>(),
        vec!["i0"]
    );
    let q: Vec<&pb::ItemQuarantine> = msgs
        .iter()
        .filter_map(|m| match &m.message.message {
            Some(Message::Quarantine(q)) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].stage, "sync_folder_items");
    assert_eq!(q[0].folder_path, vec!["Archive".to_string()]);
    assert!(
        q[0].cause.contains(MB) && q[0].cause.contains("truncated"),
        "{}",
        q[0].cause
    );
    let archive = rec
        .folders
        .iter()
        .find(|f| f.folder_id == "archive")
        .expect("archive");
    assert!(!archive.error.is_empty());
    // Not checkpointed: retried next pass.
    assert!(!lock(&e.store.folders).contains_key(&(MB.into(), "archive".into())));
}

#[tokio::test]
async fn archive_is_synced_below_its_root_with_its_own_checkpoints() {
    let e = engine(SyncOptions::default());
    e.ews.add("inbox", "i0", "Subject: primary");
    e.ews.add("arch-inbox", "old1", "Subject: archived");
    let rec = e.sync_kind(&mailbox(), MailboxKind::Archive).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    assert_eq!(rec.mailbox_kind, "archive");
    let msgs = take(&e);
    assert_eq!(
        items(&msgs),
        vec![("old1".into(), "Inbox".into(), b"Subject: archived".to_vec())]
    );
    let Some(Message::Item(env)) = &msgs[0].message.message else {
        panic!("item expected");
    };
    assert_eq!(
        env.properties.get("mailbox_kind").map(String::as_str),
        Some("archive")
    );
    assert!(lock(&e.store.mailboxes).contains_key(&format!("archive:{MB}")));
    assert!(
        !lock(&e.store.mailboxes).contains_key(MB),
        "primary checkpoint untouched"
    );
    let rec = e.sync_kind(&mailbox(), MailboxKind::Archive).await;
    assert!(rec.error.is_empty());
    assert!(take(&e).is_empty());
}

#[tokio::test]
async fn public_folders_walked_with_paging_and_only_new_versions_fetched() {
    let e = engine(SyncOptions {
        filters: Filters {
            folders: Filter::new(&[], &["Private".into()]),
            ..Filters::default()
        },
        ..SyncOptions::default()
    });
    e.ews.add("pf1", "p1", "Subject: sales");
    e.ews.add("pf2", "p2", "Subject: emea");
    e.ews.add("pf3", "p3", "Subject: private");
    let rec = e.sync_kind(&mailbox(), MailboxKind::PublicFolders).await;
    assert!(rec.error.is_empty(), "{}", rec.error);
    let got: Vec<(String, String)> = items(&take(&e))
        .into_iter()
        .map(|(i, p, _)| (i, p))
        .collect();
    assert_eq!(
        got,
        vec![
            ("p1".into(), "Sales".into()),
            ("p2".into(), "Sales/EMEA".into())
        ]
    );
    assert_eq!(rec.folders_skipped.get("folder_filter"), Some(&1));

    e.ews.add("pf2", "p4", "Subject: new");
    let before = e.ews.get_item_ids.load(Ordering::Relaxed);
    let rec = e.sync_kind(&mailbox(), MailboxKind::PublicFolders).await;
    assert!(rec.error.is_empty());
    let got: Vec<String> = items(&take(&e)).into_iter().map(|(i, _, _)| i).collect();
    assert_eq!(got, vec!["p4"]);
    assert_eq!(e.ews.get_item_ids.load(Ordering::Relaxed) - before, 1);
}
