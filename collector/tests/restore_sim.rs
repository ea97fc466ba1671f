//! Restorer × EWS simulator (real HTTP): folder mapping (original path, another mailbox,
//! localized well-known folders), byte-identical content (MIME and export blobs), collision
//! modes, read state / not-a-draft, per-item failures, throttling.

#![allow(dead_code)]

mod restore_support;

use bytes::Bytes;
use mailvault_collector::ews::Mailbox;
use mailvault_ews_sim::{FaultKind, FaultRule};
use mailvault_proto::restore::v1::{Collision, FolderTarget, Outcome, RestoreItem, restore_item};
use mailvault_proto::storage::v1::ContentFormat;
use restore_support::*;

fn job(seq: u64, mailbox: &str, root: &str, path: &[&str], mime: &[u8]) -> RestoreItem {
    RestoreItem {
        job_id: "job1".into(),
        seq,
        target_mailbox: mailbox.into(),
        folder: Some(FolderTarget {
            distinguished_root: root.into(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }),
        item_class: "IPM.Note".into(),
        format: ContentFormat::Mime as i32,
        body: Some(restore_item::Body::Inline(Bytes::copy_from_slice(mime))),
        size: mime.len() as u64,
        is_read: true,
        collision: Collision::Skip as i32,
        mark_unread: false,
        source_item_id: format!("src-{seq}"),
        internet_message_id: message_id_of(mime),
        reply_subject: String::new(),
    }
}

fn body(item: &RestoreItem) -> Bytes {
    match &item.body {
        Some(restore_item::Body::Inline(b)) => b.clone(),
        _ => Bytes::new(),
    }
}

#[tokio::test]
async fn folder_restored_byte_identical_into_original_path_and_another_mailbox() {
    let env = Env::start().await;
    let alice = env.addr("alice");
    let carol = env.addr("carol");
    let projects = env.folder(&alice, &["Inbox", "Projects"]);
    let source = env.sim.items(&projects);
    assert_eq!(source.len(), 3, "fixture");
    // The user lost them: delete, then restore into the original path.
    for it in &source {
        env.sim.delete_item(&it.id).expect("delete");
    }
    let restorer = env.restorer();
    for (i, it) in source.iter().enumerate() {
        let j = job(i as u64, &alice, "inbox", &["Projects"], &it.mime);
        let r = restorer.apply(&j, body(&j)).await;
        assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
        assert_eq!(r.folder_id, projects, "original folder");
        let got = env.sim.item(&r.new_item_id).expect("restored item");
        assert_eq!(&*got.mime, &*it.mime, "byte-identical");
        assert!(got.is_read, "read state kept");
        assert!(!got.is_draft, "a restored message is not a draft");
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.source_item_id, format!("src-{i}"));
    }
    assert_eq!(env.sim.items(&projects).len(), 3);

    // The same folder into another mailbox: the path is created there.
    for (i, it) in source.iter().enumerate() {
        let mut j = job(
            10 + i as u64,
            &carol,
            "inbox",
            &["Projects", "2024"],
            &it.mime,
        );
        j.job_id = "job2".into();
        let r = restorer.apply(&j, body(&j)).await;
        assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
    }
    let target = env.folder(&carol, &["Inbox", "Projects", "2024"]);
    let mut got: Vec<Vec<u8>> = env
        .sim
        .items(&target)
        .iter()
        .map(|i| i.mime.to_vec())
        .collect();
    let mut want: Vec<Vec<u8>> = source.iter().map(|i| i.mime.to_vec()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "carol got the same bytes");
    // One CreateFolder per missing component, not one per item (cache per job).
    assert_eq!(env.sim.stats().count("CreateFolder"), 2);
}

#[tokio::test]
async fn localized_mailbox_gets_its_own_inbox_and_sent_items() {
    let env = Env::start().await;
    let alice = env.addr("alice");
    let bob = env.addr("bob");
    assert_eq!(env.sim.mailbox_locale(&bob).as_deref(), Some("de-DE"));
    let inbox = env.folder(&alice, &["Inbox"]);
    let sent = env.folder(&alice, &["Sent Items"]);
    let a = env.sim.items(&inbox)[0].clone();
    let s = env.sim.items(&sent)[0].clone();
    let restorer = env.restorer();
    let ri = restorer
        .apply(
            &job(1, &bob, "inbox", &[], &a.mime),
            Bytes::copy_from_slice(&a.mime),
        )
        .await;
    let rs = restorer
        .apply(
            &job(2, &bob, "sentitems", &[], &s.mime),
            Bytes::copy_from_slice(&s.mime),
        )
        .await;
    assert_eq!(ri.outcome(), Outcome::Created, "{ri:?}");
    assert_eq!(rs.outcome(), Outcome::Created, "{rs:?}");
    let posteingang = env
        .sim
        .distinguished_folder_id(&bob, "inbox")
        .expect("inbox");
    let gesendet = env
        .sim
        .distinguished_folder_id(&bob, "sentitems")
        .expect("sent");
    assert_eq!(ri.folder_id, posteingang);
    assert_eq!(rs.folder_id, gesendet);
    let names: Vec<_> = env
        .sim
        .folders(&bob)
        .into_iter()
        .filter(|f| f.id == posteingang || f.id == gesendet)
        .map(|f| f.display_name)
        .collect();
    assert!(names.contains(&"Posteingang".to_owned()), "{names:?}");
    assert!(
        names.contains(&"Gesendete Elemente".to_owned()),
        "{names:?}"
    );
    // No "Inbox" folder was made in the German mailbox.
    assert!(
        env.sim
            .folders(&bob)
            .iter()
            .all(|f| f.display_name != "Inbox")
    );
    assert_eq!(
        &*env.sim.item(&ri.new_item_id).expect("item").mime,
        &*a.mime
    );
}

#[tokio::test]
async fn collision_modes_skip_copy_replace() {
    let env = Env::start().await;
    let alice = env.addr("alice");
    let inbox = env.folder(&alice, &["Inbox"]);
    let existing = env.sim.items(&inbox)[0].clone();
    let n0 = env.sim.items(&inbox).len();
    let restorer = env.restorer();
    let mut j = job(1, &alice, "inbox", &[], &existing.mime);

    // skip (and unspecified = skip): nothing written, the existing copy is named.
    for c in [Collision::Skip, Collision::Unspecified] {
        j.collision = c as i32;
        let r = restorer.apply(&j, body(&j)).await;
        assert_eq!(r.outcome(), Outcome::Skipped, "{r:?}");
        assert_eq!(r.new_item_id, existing.id);
    }
    // The archive keeps the id without its angle brackets (mail-parser's form), Exchange with
    // them: the existing copy is still found.
    let mut bare = j.clone();
    bare.collision = Collision::Skip as i32;
    bare.internet_message_id = bare
        .internet_message_id
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    assert!(!bare.internet_message_id.contains('<'));
    let r = restorer.apply(&bare, body(&bare)).await;
    assert_eq!(r.outcome(), Outcome::Skipped, "{r:?}");
    assert_eq!(env.sim.items(&inbox).len(), n0);

    // copy: a second copy.
    j.collision = Collision::Copy as i32;
    let r = restorer.apply(&j, body(&j)).await;
    assert_eq!(r.outcome(), Outcome::Copied, "{r:?}");
    assert_eq!(env.sim.items(&inbox).len(), n0 + 1);

    // replace: both old copies go, one new one stays.
    j.collision = Collision::Replace as i32;
    let r = restorer.apply(&j, body(&j)).await;
    assert_eq!(r.outcome(), Outcome::Replaced, "{r:?}");
    let left = env.sim.items(&inbox);
    assert_eq!(left.len(), n0);
    let copies: Vec<_> = left.iter().filter(|i| i.mime == existing.mime).collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].id, r.new_item_id);
    assert!(env.sim.item(&existing.id).is_none(), "old copy deleted");

    // replace / copy without an existing copy: created.
    let mut fresh = job(2, &alice, "inbox", &["Fresh"], &existing.mime);
    fresh.collision = Collision::Replace as i32;
    assert_eq!(
        restorer.apply(&fresh, body(&fresh)).await.outcome(),
        Outcome::Created
    );
}

#[tokio::test]
async fn mark_unread_and_read_state() {
    let env = Env::start().await;
    let carol = env.addr("carol");
    let alice = env.addr("alice");
    let inbox = env.folder(&alice, &["Inbox"]);
    let src = env.sim.items(&inbox);
    let restorer = env.restorer();
    let mut a = job(1, &carol, "inbox", &[], &src[0].mime);
    a.mark_unread = true;
    let mut b = job(2, &carol, "inbox", &[], &src[1].mime);
    b.is_read = false;
    let c = job(3, &carol, "inbox", &[], &src[2].mime);
    let (ra, rb, rc) = (
        restorer.apply(&a, body(&a)).await,
        restorer.apply(&b, body(&b)).await,
        restorer.apply(&c, body(&c)).await,
    );
    for (r, want_read) in [(&ra, false), (&rb, false), (&rc, true)] {
        assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
        let it = env.sim.item(&r.new_item_id).expect("item");
        assert_eq!(it.is_read, want_read, "{r:?}");
        assert!(!it.is_draft);
    }
}

#[tokio::test]
async fn export_blob_restored_with_upload_items() {
    let env = Env::start().await;
    let alice = env.addr("alice");
    let carol = env.addr("carol");
    let inbox = env.folder(&alice, &["Inbox"]);
    let src = env.sim.items(&inbox)[0].clone();
    env.sim.set_read(&src.id, false).expect("unread");
    let exported = env
        .ews()
        .export_items(
            &Mailbox {
                smtp: alice.clone(),
            },
            &[mailvault_collector::ews::ItemId {
                id: src.id.clone(),
                change_key: String::new(),
            }],
        )
        .await
        .expect("export");
    let (_, blob) = exported.into_iter().next().expect("one").expect("ok");
    let mut j = job(1, &carol, "inbox", &["Exported"], &blob);
    j.format = ContentFormat::EwsExport as i32;
    j.internet_message_id = message_id_of(&src.mime);
    let r = env.restorer().apply(&j, body(&j)).await;
    assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
    let it = env.sim.item(&r.new_item_id).expect("item");
    assert_eq!(&*it.mime, &*src.mime, "same MIME");
    assert!(!it.is_read, "read state from the blob");
    assert_eq!(env.sim.stats().count("UploadItems"), 1);
    assert_eq!(env.sim.stats().count("CreateItem"), 0);

    // A read export blob restored with mark_unread: uploaded, then UpdateItem IsRead=false.
    env.sim.set_read(&src.id, true).expect("read");
    let exported = env
        .ews()
        .export_items(
            &Mailbox {
                smtp: alice.clone(),
            },
            &[mailvault_collector::ews::ItemId {
                id: src.id.clone(),
                change_key: String::new(),
            }],
        )
        .await
        .expect("export");
    let (_, blob) = exported.into_iter().next().expect("one").expect("ok");
    let mut j = job(2, &carol, "inbox", &["Exported 2"], &blob);
    j.format = ContentFormat::EwsExport as i32;
    j.mark_unread = true;
    let r = env.restorer().apply(&j, body(&j)).await;
    assert_eq!(r.outcome(), Outcome::Created, "{r:?}");
    let it = env.sim.item(&r.new_item_id).expect("item");
    assert!(!it.is_read, "marked unread");
    assert_eq!(&*it.mime, &*src.mime);
    assert_eq!(env.sim.stats().count("UpdateItem"), 1);
}

#[tokio::test]
async fn one_failing_item_fails_alone_and_throttling_is_retried() {
    let env = Env::start().await;
    let alice = env.addr("alice");
    let carol = env.addr("carol");
    let src = env.sim.items(&env.folder(&alice, &["Inbox"]));
    let restorer = env.restorer();
    let jobs: Vec<_> = (0..3)
        .map(|i| job(i, &carol, "inbox", &["Restored"], &src[i as usize].mime))
        .collect();
    let r0 = restorer.apply(&jobs[0], body(&jobs[0])).await;
    env.sim.inject(FaultRule {
        operation: Some("CreateItem".into()),
        kind: FaultKind::ResponseError("ErrorQuotaExceeded"),
        remaining: 1,
    });
    let r1 = restorer.apply(&jobs[1], body(&jobs[1])).await;
    // ErrorServerBusy is retried after BackOffMilliseconds (the client's back-off).
    env.sim.inject(FaultRule {
        operation: Some("CreateItem".into()),
        kind: FaultKind::ServerBusy,
        remaining: 1,
    });
    let r2 = restorer.apply(&jobs[2], body(&jobs[2])).await;
    assert_eq!(r0.outcome(), Outcome::Created, "{r0:?}");
    assert_eq!(r2.outcome(), Outcome::Created, "{r2:?}");
    assert_eq!(r1.outcome(), Outcome::Failed, "{r1:?}");
    for needle in [
        "job1",
        "#1",
        "src-1",
        &carol,
        "ErrorQuotaExceeded",
        "CreateItem",
    ] {
        assert!(
            r1.error.contains(needle),
            "error names {needle}: {}",
            r1.error
        );
    }
    assert!(r1.new_item_id.is_empty());
    assert_eq!(
        env.sim
            .items(&env.folder(&carol, &["Inbox", "Restored"]))
            .len(),
        2
    );
    assert!(
        env.sim
            .request_log()
            .iter()
            .any(|r| r.outcome.starts_with("busy:")),
        "the busy answer was seen and retried"
    );

    // Invalid items fail with a reason, too.
    let mut bad = jobs[0].clone();
    bad.size += 1;
    let r = restorer.apply(&bad, body(&bad)).await;
    assert_eq!(r.outcome(), Outcome::Failed);
    assert!(r.error.contains("bytes"), "{}", r.error);
    let mut bad = jobs[0].clone();
    bad.folder = Some(FolderTarget {
        distinguished_root: "nosuchfolder".into(),
        path: vec![],
    });
    let r = restorer.apply(&bad, body(&bad)).await;
    assert_eq!(r.outcome(), Outcome::Failed);
    assert!(r.error.contains("nosuchfolder"), "{}", r.error);
    let mut bad = jobs[0].clone();
    bad.target_mailbox = "nobody@contoso.com".into();
    let r = restorer.apply(&bad, body(&bad)).await;
    assert_eq!(r.outcome(), Outcome::Failed);
    assert!(r.error.contains("nobody@contoso.com"), "{}", r.error);
}

/// A CreateItem whose answer is lost after Exchange stored the item (truncated response) is
/// found by its Internet-Message-Id instead of being written twice; one that failed before
/// anything was stored (HTTP 500) is written again.
#[tokio::test]
async fn lost_write_answers_do_not_duplicate() {
    let env = Env::start().await;
    let alice = env.addr("alice");
    let carol = env.addr("carol");
    let src = env.sim.items(&env.folder(&alice, &["Inbox"]));
    let restorer = env.restorer();
    for (i, kind) in [FaultKind::TruncatedXml, FaultKind::Http500]
        .into_iter()
        .enumerate()
    {
        let j = job(i as u64, &carol, "inbox", &["Lost"], &src[i].mime);
        env.sim.inject(FaultRule {
            operation: Some("CreateItem".into()),
            kind,
            remaining: 1,
        });
        let r = restorer.apply(&j, body(&j)).await;
        assert_eq!(r.outcome(), Outcome::Created, "{kind:?}: {r:?}");
        let copies: Vec<_> = env
            .sim
            .items(&r.folder_id)
            .into_iter()
            .filter(|it| it.mime == src[i].mime)
            .collect();
        assert_eq!(copies.len(), 1, "{kind:?}: exactly one copy");
        assert_eq!(copies[0].id, r.new_item_id);
    }
    assert_eq!(
        env.sim.stats().count("CreateItem"),
        3,
        "truncated: 1, HTTP 500: 2"
    );
}
