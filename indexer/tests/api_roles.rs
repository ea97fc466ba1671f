//! Every role against every call, with the targets an attacker would try: another user's
//! mailbox, folders and items, a journal copy, crafted ids and queries. The expected outcome of
//! each cell is the table in docs/api.md ("Who may do what"); a cell that changes fails here.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use futures::StreamExt as _;
use mailvault_indexer::api::{self, Api, AuditLog, RestoreTarget, Role, Tokens};
use mailvault_indexer::{Index, Indexer, Scope, SearchOptions};
use mailvault_proto::api::v1 as pb;
use mailvault_proto::restore::v1 as wire;
use pb::archive_client::ArchiveClient;
use tokio::sync::mpsc;
use tonic::Code;

/// Answers CREATED for every item and remembers where each went.
#[derive(Debug, Default)]
struct Recording {
    targets: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl RestoreTarget for Recording {
    async fn run(
        &self,
        _source: &str,
        job_id: &str,
        mut items: mpsc::Receiver<(wire::RestoreItem, Bytes)>,
        results: mpsc::Sender<wire::RestoreResult>,
    ) -> Result<(), api::ApiError> {
        while let Some((it, _)) = items.recv().await {
            self.targets
                .lock()
                .expect("lock")
                .push(it.target_mailbox.clone());
            let r = wire::RestoreResult {
                job_id: job_id.into(),
                seq: it.seq,
                outcome: wire::Outcome::Created as i32,
                ..Default::default()
            };
            if results.send(r).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

type Client = ArchiveClient<tonic::transport::Channel>;

/// The status code a call ends with (`Ok` when every message of its stream arrived).
async fn outcome<T>(
    r: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> (Code, usize) {
    let mut s = match r {
        Ok(s) => s.into_inner(),
        Err(e) => return (e.code(), 0),
    };
    let mut n = 0;
    while let Some(m) = s.next().await {
        match m {
            Ok(_) => n += 1,
            Err(e) => return (e.code(), n),
        }
    }
    (Code::Ok, n)
}

struct Targets {
    own: String,
    other: String,
    other_item: String,
    journal_copy: String,
}

async fn cells(c: &mut Client, token: &str, t: &Targets) -> Vec<(&'static str, Code)> {
    let mut out = Vec::new();
    fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
        match r {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        }
    }
    let folders = |mailbox: &str| pb::ListFoldersRequest {
        mailbox: mailbox.into(),
        as_of_unix_ms: 0,
    };
    out.push((
        "ListMailboxes",
        code(
            c.list_mailboxes(req(pb::ListMailboxesRequest {}, token))
                .await,
        ),
    ));
    out.push((
        "ListFolders own",
        code(c.list_folders(req(folders(&t.own), token)).await),
    ));
    out.push((
        "ListFolders other",
        code(c.list_folders(req(folders(&t.other), token)).await),
    ));
    let search = |q: &str| pb::SearchRequest {
        query: q.into(),
        page_size: 1000,
        ..Default::default()
    };
    out.push((
        "Search",
        outcome(c.search(req(search(""), token)).await).await.0,
    ));
    let deep = format!("{}x{}", "(".repeat(500), ")".repeat(500));
    out.push((
        "Search crafted",
        outcome(c.search(req(search(&deep), token)).await).await.0,
    ));
    let get = |id: &str| pb::GetItemRequest { id: id.into() };
    out.push((
        "GetItem other's",
        outcome(c.get_item(req(get(&t.other_item), token)).await)
            .await
            .0,
    ));
    out.push((
        "GetItem journal copy",
        outcome(c.get_item(req(get(&t.journal_copy), token)).await)
            .await
            .0,
    ));
    out.push((
        "GetItem crafted id",
        outcome(c.get_item(req(get("../../config"), token)).await)
            .await
            .0,
    ));
    let export = pb::ExportRequest {
        query: String::new(),
        format: pb::ExportFormat::EmlZip as i32,
        ..Default::default()
    };
    out.push((
        "Export",
        outcome(c.export(req(export, token)).await).await.0,
    ));
    let restore = |what, to: &str, collision: pb::Collision| pb::RestoreRequest {
        what: Some(what),
        to_mailbox: to.into(),
        collision: collision as i32,
        target_source: "exch01".into(),
        ..Default::default()
    };
    let mailbox = |m: &str| pb::restore_request::What::Mailbox(m.into());
    out.push((
        "Restore own",
        outcome(
            c.restore(req(
                restore(mailbox(&t.own), "", pb::Collision::Copy),
                token,
            ))
            .await,
        )
        .await
        .0,
    ));
    out.push((
        "Restore other",
        outcome(
            c.restore(req(
                restore(mailbox(&t.other), "", pb::Collision::Copy),
                token,
            ))
            .await,
        )
        .await
        .0,
    ));
    out.push((
        "Restore own into other",
        outcome(
            c.restore(req(
                restore(mailbox(&t.own), &t.other, pb::Collision::Copy),
                token,
            ))
            .await,
        )
        .await
        .0,
    ));
    out.push((
        "Restore own with replace",
        outcome(
            c.restore(req(
                restore(mailbox(&t.own), "", pb::Collision::Replace),
                token,
            ))
            .await,
        )
        .await
        .0,
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_call() {
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

    // A user with a mailbox who is named on a journal copy, and another user's item.
    let all = SearchOptions {
        scope: Scope::All,
        limit: 100_000,
        ..SearchOptions::default()
    };
    let mailboxes: Vec<String> = ix
        .index
        .list_mailboxes(&Scope::All)
        .expect("mailboxes")
        .into_iter()
        .map(|m| m.address)
        .collect();
    let journal = ix
        .index
        .search("mailbox:journal@contoso.com", &all)
        .expect("journal")
        .hits;
    let (jcopy, own) = journal
        .iter()
        .filter(|h| h.embedded.is_some())
        .find_map(|h| {
            h.visible_to
                .iter()
                .find(|v| mailboxes.contains(v) && !v.starts_with("journal@"))
                .map(|u| (h.manifest_id.clone(), u.clone()))
        })
        .expect("a journal copy naming a user");
    let other = mailboxes
        .iter()
        .find(|m| **m != own && !m.starts_with("journal@"))
        .expect("another mailbox")
        .clone();
    let other_item = ix
        .index
        .search(&format!("mailbox:{other}"), &all)
        .expect("search")
        .hits
        .into_iter()
        .find(|h| !h.visible_to.contains(&own))
        .expect("an item of the other mailbox")
        .manifest_id;
    let t = Targets {
        own: own.clone(),
        other: other.clone(),
        other_item,
        journal_copy: jcopy,
    };

    let mut tokens = Tokens::default();
    let roles = [
        ("admin", tokens.issue("root", Role::Admin, None)),
        ("operator", tokens.issue("ops", Role::Operator, None)),
        ("auditor", tokens.issue("aud", Role::Auditor, None)),
        ("user", tokens.issue("alice", Role::User, Some(&own))),
        ("no token", "mvt_not-a-token".to_owned()),
    ];
    let recording = Arc::new(Recording::default());
    let apis = Api::new(
        ix.index.clone(),
        repo.clone(),
        AuditLog::start(repo.clone()),
        Some(recording.clone()),
    );
    let served = serve(apis, tokens).await;
    let mut c = served.client.clone();

    use Code::{
        InvalidArgument as Inv, Ok as Yes, PermissionDenied as No, Unauthenticated as Anon,
    };
    // Rows in the order `cells` makes them; columns admin, operator, auditor, user, no token.
    // A crafted id is not a manifest id: invalid for everyone with a token.
    let expected: [(&str, [Code; 5]); 13] = [
        ("ListMailboxes", [Yes, Yes, Yes, Yes, Anon]),
        ("ListFolders own", [Yes, Yes, Yes, Yes, Anon]),
        ("ListFolders other", [Yes, Yes, Yes, No, Anon]),
        ("Search", [Yes, Yes, Yes, Yes, Anon]),
        ("Search crafted", [Inv, Inv, Inv, Inv, Anon]),
        ("GetItem other's", [Yes, Yes, Yes, No, Anon]),
        ("GetItem journal copy", [Yes, Yes, Yes, Yes, Anon]),
        ("GetItem crafted id", [Inv, Inv, Inv, Inv, Anon]),
        ("Export", [Yes, Yes, No, Yes, Anon]),
        ("Restore own", [Yes, Yes, No, Yes, Anon]),
        ("Restore other", [Yes, Yes, No, No, Anon]),
        ("Restore own into other", [Yes, Yes, No, No, Anon]),
        ("Restore own with replace", [Yes, Yes, No, No, Anon]),
    ];
    let mut got: Vec<Vec<(&str, Code)>> = Vec::new();
    for (_, token) in &roles {
        got.push(cells(&mut c, token, &t).await);
    }
    let mut wrong = Vec::new();
    for (row, (call, want)) in expected.iter().enumerate() {
        for (col, (role, _)) in roles.iter().enumerate() {
            let (name, code) = got[col][row];
            assert_eq!(name, *call);
            if code != want[col] {
                wrong.push(format!(
                    "{call} as {role}: {code:?}, expected {:?}",
                    want[col]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The user's restores all went to the user's own mailbox.
    let targets = recording.targets.lock().expect("lock").clone();
    assert!(targets.contains(&own));
    assert!(!targets.is_empty());
    served.stop().await;
}
