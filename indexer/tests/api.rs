//! The gRPC API over a real tonic server on loopback: roles and scoping, byte-exact GetItem,
//! journal copies, export, restore planning, and the audit log recording every call.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use futures::StreamExt as _;
use mailvault_format::BlobId;
use mailvault_indexer::api::{self, Api, AuditLog, RestoreTarget, Role, Tokens};
use mailvault_indexer::{Index, Indexer};
use mailvault_proto::api::v1 as pb;
use mailvault_proto::restore::v1 as wire;
use pb::archive_client::ArchiveClient;
use tokio::sync::mpsc;
use tonic::Code;

/// Records what it was asked to restore and answers CREATED: the collector's side is tested
/// against the simulator in the collector and end-to-end suites.
#[derive(Debug, Default)]
struct Recording {
    items: Mutex<Vec<(wire::RestoreItem, Bytes)>>,
}

#[async_trait::async_trait]
impl RestoreTarget for Recording {
    async fn run(
        &self,
        source: &str,
        job_id: &str,
        mut items: mpsc::Receiver<(wire::RestoreItem, Bytes)>,
        results: mpsc::Sender<wire::RestoreResult>,
    ) -> Result<(), api::ApiError> {
        assert_eq!(source, "exch01");
        while let Some((it, body)) = items.recv().await {
            let r = wire::RestoreResult {
                job_id: job_id.into(),
                seq: it.seq,
                outcome: wire::Outcome::Created as i32,
                new_item_id: format!("new-{}", it.seq),
                ..Default::default()
            };
            self.items.lock().expect("lock").push((it, body));
            if results.send(r).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

async fn get_bytes(
    c: &mut ArchiveClient<tonic::transport::Channel>,
    id: &str,
    token: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut s = c
        .get_item(req(pb::GetItemRequest { id: id.into() }, token))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?.data);
    }
    Ok(out)
}

async fn search_all(
    c: &mut ArchiveClient<tonic::transport::Channel>,
    q: &str,
    token: &str,
) -> Result<Vec<pb::Hit>, tonic::Status> {
    let mut s = c
        .search(req(
            pb::SearchRequest {
                query: q.into(),
                page_size: 7,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    let mut hits = Vec::new();
    while let Some(page) = s.next().await {
        let page = page?;
        hits.extend(page.hits);
    }
    Ok(hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_scoping_exact_items_export_restore_and_audit_over_grpc() {
    let repo = repo().await;
    let events = populate(&repo, 7, 40).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"));
    for e in &events {
        match e {
            Event::Stored(s) => ix.handle_stored(s).await.expect("stored"),
            Event::Changed(c) => ix.handle_changed(c).await.expect("changed"),
        }
    }
    ix.commit().await.expect("commit");

    // A user who received a journaled message, and the journal copy itself.
    let journal_hits = ix
        .index
        .search(
            "mailbox:journal@contoso.com",
            &mailvault_indexer::SearchOptions {
                as_of: None,
                scope: mailvault_indexer::Scope::All,
                offset: 0,
                limit: 1000,
            },
        )
        .expect("journal search")
        .hits;
    let mailboxes: Vec<String> = ix
        .index
        .list_mailboxes(&mailvault_indexer::Scope::All)
        .expect("mailboxes")
        .into_iter()
        .map(|m| m.address)
        .collect();
    let (jcopy, user) = journal_hits
        .iter()
        .filter(|h| h.embedded.is_some())
        .find_map(|h| {
            h.visible_to
                .iter()
                .find(|v| mailboxes.contains(v) && !v.starts_with("journal@"))
                .map(|u| (h.clone(), u.clone()))
        })
        .expect("a journal copy naming a user with a mailbox");

    let mut tokens = Tokens::default();
    let admin = tokens.issue("root", Role::Admin, None);
    let auditor = tokens.issue("aud", Role::Auditor, None);
    let alice = tokens.issue("alice", Role::User, Some(&user));
    let recording = Arc::new(Recording::default());
    let audit = AuditLog::start(repo.clone());
    let apis = Api::new(
        ix.index.clone(),
        repo.clone(),
        audit.clone(),
        Some(recording.clone()),
    );
    let served = serve(apis, tokens).await;
    let mut c = served.client.clone();
    let mut calls = 0usize;

    // No token, a wrong token.
    let e = c
        .list_mailboxes(tonic::Request::new(pb::ListMailboxesRequest {}))
        .await
        .expect_err("anonymous");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .list_mailboxes(req(pb::ListMailboxesRequest {}, "mvt_nope"))
        .await
        .expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated);
    calls += 2;

    // Mailboxes: everything for admin, only their own for the user.
    let all = c
        .list_mailboxes(req(pb::ListMailboxesRequest {}, &admin))
        .await
        .expect("admin list")
        .into_inner()
        .mailboxes;
    assert!(all.len() >= 3, "{all:?}");
    let own = c
        .list_mailboxes(req(pb::ListMailboxesRequest {}, &alice))
        .await
        .expect("user list")
        .into_inner()
        .mailboxes;
    assert!(own.iter().any(|m| m.address == user), "{own:?}");
    assert!(own.len() < all.len(), "user sees fewer mailboxes: {own:?}");
    let other = all
        .iter()
        .map(|m| m.address.clone())
        .find(|a| *a != user && !a.starts_with("journal@"))
        .expect("another mailbox");
    let e = c
        .list_folders(req(
            pb::ListFoldersRequest {
                mailbox: other.clone(),
                as_of_unix_ms: 0,
            },
            &alice,
        ))
        .await
        .expect_err("other's folders");
    assert_eq!(e.code(), Code::PermissionDenied);
    calls += 3;

    // Search scoping: a user's hits are theirs or journal copies naming them.
    let hits = search_all(&mut c, "", &alice).await.expect("user search");
    assert!(!hits.is_empty());
    for h in &hits {
        let full = ix.index.get(&h.id).expect("get").expect("indexed");
        assert!(
            h.mailbox == user || full.visible_to.contains(&user),
            "{} leaked to {user}",
            h.id
        );
    }
    assert!(hits.iter().any(|h| h.id == jcopy.manifest_id));
    let leaked = search_all(&mut c, &format!("mailbox:{other}"), &alice)
        .await
        .expect("search other");
    assert!(
        leaked.iter().all(|h| ix
            .index
            .get(&h.id)
            .expect("get")
            .is_some_and(|f| f.visible_to.contains(&user))),
        "only journal copies naming the user may show up"
    );
    let e = search_all(&mut c, "from:(", &admin)
        .await
        .expect_err("bad query");
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nesting that once overflowed the server's stack: refused, and the server still answers.
    for hostile in ["(".repeat(3000), "-".repeat(3000) + "x"] {
        let e = search_all(&mut c, &hostile, &alice)
            .await
            .expect_err("hostile query");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("nest more than"), "{e:?}");
    }
    let again = search_all(&mut c, "", &alice).await.expect("still serving");
    assert_eq!(again.len(), hits.len());
    calls += 6;

    // GetItem: byte-identical for every stored version (deleted ones included).
    let mut n = 0;
    for e in &events {
        if let Event::Stored(s) = e {
            let id = BlobId::from_hex(&s.manifest_id).expect("id");
            let want = repo.read_item(&id).await.expect("read");
            let got = get_bytes(&mut c, &s.manifest_id, &admin)
                .await
                .expect("admin get");
            assert_eq!(got, want, "item {}", s.manifest_id);
            n += 1;
            calls += 1;
        }
    }
    assert!(n >= 40);

    // A user gets the original message out of a journal copy, never the report.
    let full = repo
        .read_item(&BlobId::from_hex(&jcopy.manifest_id).expect("id"))
        .await
        .expect("read");
    let (off, len) = jcopy.embedded.expect("embedded");
    let got = get_bytes(&mut c, &jcopy.manifest_id, &alice)
        .await
        .expect("journal copy");
    assert_eq!(got, &full[off as usize..(off + len) as usize]);
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("X-MS-Journal-Report"), "report leaked");
    let theirs = hits_of(&ix.index, &other)
        .into_iter()
        .find(|h| !h.visible_to.contains(&user))
        .expect("an item of another mailbox");
    let e = get_bytes(&mut c, &theirs.manifest_id, &alice)
        .await
        .expect_err("other's item");
    assert_eq!(e.code(), Code::PermissionDenied);
    calls += 2;

    // Auditors look but never restore or export.
    get_bytes(&mut c, &theirs.manifest_id, &auditor)
        .await
        .expect("auditor get");
    let e = c
        .restore(req(
            pb::RestoreRequest {
                what: Some(pb::restore_request::What::Mailbox(other.clone())),
                target_source: "exch01".into(),
                ..Default::default()
            },
            &auditor,
        ))
        .await
        .expect_err("auditor restore");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .export(req(
            pb::ExportRequest {
                query: String::new(),
                ..Default::default()
            },
            &auditor,
        ))
        .await
        .expect_err("auditor export");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .restore(req(
            pb::RestoreRequest {
                what: Some(pb::restore_request::What::Mailbox(other.clone())),
                target_source: "exch01".into(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .expect_err("user restores another mailbox");
    assert_eq!(e.code(), Code::PermissionDenied);
    calls += 4;

    // Export: one zip member per match, byte-identical to GetItem.
    let q = "has:attachment";
    let expect = search_all(&mut c, q, &admin).await.expect("search");
    calls += 1;
    assert!(!expect.is_empty());
    let mut s = c
        .export(req(
            pb::ExportRequest {
                query: q.into(),
                format: pb::ExportFormat::EmlZip as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("export")
        .into_inner();
    let mut zip_bytes = Vec::new();
    while let Some(chunk) = s.next().await {
        zip_bytes.extend_from_slice(&chunk.expect("chunk").data);
    }
    calls += 1;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).expect("zip");
    assert_eq!(z.len(), expect.len());
    for i in 0..z.len() {
        let mut f = z.by_index(i).expect("member");
        let id = f
            .name()
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".eml"))
            .expect("name")
            .to_owned();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut got).expect("read member");
        let want = repo
            .read_item(&BlobId::from_hex(&id).expect("id"))
            .await
            .expect("read");
        assert_eq!(got, want, "member {id}");
    }

    // Restore of a whole mailbox: every live item planned once, paths mapped to well-known
    // folders, progress to the end.
    let live = hits_of(&ix.index, &other);
    let mut s = c
        .restore(req(
            pb::RestoreRequest {
                what: Some(pb::restore_request::What::Mailbox(other.clone())),
                target_source: "exch01".into(),
                collision: pb::Collision::Copy as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .expect("restore")
        .into_inner();
    let mut last = None;
    while let Some(p) = s.next().await {
        last = Some(p.expect("progress"));
    }
    calls += 1;
    let last = last.expect("some progress");
    assert_eq!(last.done, last.total);
    assert_eq!(last.total as usize, live.len());
    // A copy, so no lock is held across the reads below.
    let restored = recording.items.lock().expect("lock").clone();
    assert_eq!(restored.len(), live.len());
    for (it, body) in restored.iter() {
        assert_eq!(it.target_mailbox, other);
        assert_eq!(it.collision, wire::Collision::Copy as i32);
        let folder = it.folder.as_ref().expect("folder");
        let h = live
            .iter()
            .find(|h| h.item_id == it.source_item_id)
            .expect("planned item is live");
        if h.folder_path.first().map(String::as_str) == Some("Inbox") {
            assert_eq!(folder.distinguished_root, "inbox", "{:?}", h.folder_path);
        }
        let want = repo
            .read_item(&BlobId::from_hex(&h.manifest_id).expect("id"))
            .await
            .expect("read");
        assert_eq!(body.as_ref(), want.as_slice());
    }

    // A user restoring a journal copy that names them: it goes to their own mailbox, through
    // the collector that holds it (not the one asked for), and never with replace.
    let journal_copy = pb::restore_request::What::Items(pb::ItemIds {
        ids: vec![jcopy.manifest_id.clone()],
    });
    let e = c
        .restore(req(
            pb::RestoreRequest {
                what: Some(journal_copy.clone()),
                collision: pb::Collision::Replace as i32,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .expect_err("user restores with replace");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("replace"), "{e:?}");
    let before = recording.items.lock().expect("lock").len();
    let mut s = c
        .restore(req(
            pb::RestoreRequest {
                what: Some(journal_copy),
                target_source: "somewhere-else".into(),
                collision: pb::Collision::Copy as i32,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .expect("user restores a journal copy")
        .into_inner();
    while let Some(p) = s.next().await {
        p.expect("progress");
    }
    calls += 2;
    let restored = recording.items.lock().expect("lock").clone();
    assert_eq!(restored.len(), before + 1);
    let (it, body) = restored.last().expect("restored");
    assert_eq!(
        it.target_mailbox, user,
        "a user restores into their own mailbox"
    );
    assert_eq!(it.collision, wire::Collision::Copy as i32);
    assert_eq!(body.as_ref(), &full[off as usize..(off + len) as usize]);

    served.stop().await;
    audit.flush().await.expect("flush audit");
    let records = AuditLog::read_all(&repo).await.expect("read audit");
    let started = |call: &str| {
        records
            .iter()
            .filter(|r| r.result == "started" && r.call == call)
            .count()
    };
    assert_eq!(started("Restore"), 2);
    assert_eq!(started("Export"), 1, "the one export that went out");
    // The two calls without a valid token are one aggregated record.
    assert_eq!(
        records.len() - started("Restore") - started("Export"),
        calls - 1,
        "one record per call: {records:#?}"
    );
    let anonymous: Vec<_> = records
        .iter()
        .filter(|r| r.who == "anonymous" && r.result == "denied")
        .collect();
    assert_eq!(anonymous.len(), 1, "{anonymous:#?}");
    assert!(anonymous[0].detail.ends_with("×2"), "{anonymous:#?}");
    assert!(
        records.iter().all(|r| r.peer.starts_with("127.0.0.1:")),
        "every record names the caller's address"
    );
    // The batches form one unbroken chain.
    let chain = AuditLog::verify(&repo).await.expect("verify");
    assert!(chain.problems.is_empty(), "{chain:#?}");
    assert_eq!(chain.records, records.len());
    assert_eq!(chain.unchained, 0);
    assert!(chain.batches >= 3, "{chain:?}");
    // A batch deleted from the middle breaks it, and the break names the batch after it.
    let names = repo.store().list("audit/").await.expect("list");
    repo.store()
        .delete(&names[1])
        .await
        .expect("delete a batch");
    let chain = AuditLog::verify(&repo).await.expect("verify");
    assert_eq!(chain.problems.len(), 1, "{chain:#?}");
    assert!(
        chain.problems[0].starts_with(names[2].as_str()),
        "{chain:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.who == "aud" && r.call == "Restore" && r.result == "denied")
    );
    assert!(
        records
            .iter()
            .any(|r| r.who == "alice" && r.call == "GetItem" && r.result == "denied")
    );
}

fn hits_of(ix: &Index, mailbox: &str) -> Vec<mailvault_indexer::Hit> {
    ix.folder_items(mailbox, &[], None).expect("folder items")
}
