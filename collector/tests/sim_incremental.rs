//! Acceptance (issue 3): incremental sync against the EWS simulator and a real nats-server.
//! After adding 10, changing 5, moving 2, deleting 3 items and flipping 4 read flags, the second
//! run publishes exactly those changes; a run with no changes makes only O(folders) EWS calls.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream;
use common::{body_of, config};
use mailvault_collector::{RunMode, run};
use mailvault_ews_sim::{ItemInfo, SimConfig, Simulator};
use mailvault_mailgen::GenConfig;
use mailvault_proto::ingest::v1 as pb;

const DOMAIN: &str = "contoso.com";

fn new_mime(n: usize) -> Vec<u8> {
    format!(
        "From: Test <test@{DOMAIN}>\r\nTo: someone@{DOMAIN}\r\nSubject: added {n}\r\n\
         Message-ID: <added-{n}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nnew item number {n}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_run_publishes_exactly_the_changes_and_idle_run_is_cheap() {
    let nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let mut sim_cfg = SimConfig::new(DOMAIN);
    sim_cfg.generate = Some(GenConfig {
        seed: 77,
        domain: DOMAIN.into(),
        users: 3,
        messages: 40,
        journal: false,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sim_cfg).await.expect("start simulator");
    let mailboxes = sim.mailboxes();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), &sim.url(), &nats.url(), &mailboxes);
    let (_tx, rx) = tokio::sync::watch::channel(false);

    let first = run(cfg.clone(), RunMode::Once, rx.clone())
        .await
        .expect("first run");
    assert!(first.is_clean(), "{first:?}");
    assert_eq!(first.captured() as usize, sim.total_items());

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let after_first = common::last_seq(&js).await;

    // ---- mutate one mailbox: +10, ~5, →2, ✗3, read flag ×4 (disjoint items)
    let mb = mailboxes[0].clone();
    let inbox = sim
        .distinguished_folder_id(&mb, "inbox")
        .expect("inbox exists");
    let deleted_items = sim
        .distinguished_folder_id(&mb, "deleteditems")
        .expect("deleteditems exists");
    let mut pool: Vec<ItemInfo> = sim
        .folders(&mb)
        .iter()
        .filter(|f| f.id != deleted_items)
        .flat_map(|f| sim.items(&f.id))
        .filter(|i| i.item_class == "IPM.Note")
        .collect();
    assert!(
        pool.len() >= 14,
        "mailbox {mb} has only {} mails",
        pool.len()
    );
    let mut take = |n: usize| pool.drain(..n).collect::<Vec<_>>();
    let (to_change, to_move, to_delete, to_flip) = (take(5), take(2), take(3), take(4));

    // Expected item versions (id, change key) and change events (kind, id, read).
    let mut want_items: BTreeSet<(String, String)> = BTreeSet::new();
    let mut want_changes: BTreeSet<(i32, String, Option<bool>)> = BTreeSet::new();
    let mut want_mime: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for n in 0..10 {
        let mime = new_mime(n);
        let r = sim.add_item(&inbox, &mime, "IPM.Note").expect("add item");
        want_items.insert((r.id.clone(), r.change_key));
        want_mime.insert(r.id, mime);
    }
    for (n, it) in to_change.iter().enumerate() {
        let mut mime = it.mime.to_vec();
        mime.extend_from_slice(format!("\r\nedited {n}\r\n").as_bytes());
        let r = sim.change_item(&it.id, &mime).expect("change item");
        assert_eq!(r.id, it.id, "a change keeps the ItemId");
        assert_ne!(r.change_key, it.change_key, "a change bumps the ChangeKey");
        want_items.insert((r.id.clone(), r.change_key));
        want_mime.insert(r.id, mime);
    }
    for it in &to_move {
        let r = sim.move_item(&it.id, &deleted_items).expect("move item");
        // Exchange gives a moved item a new ItemId: the source folder reports a delete, the
        // target folder a create.
        assert_ne!(r.id, it.id);
        want_items.insert((r.id.clone(), r.change_key));
        want_mime.insert(r.id, it.mime.to_vec());
        want_changes.insert((pb::ChangeKind::Delete as i32, it.id.clone(), None));
    }
    for it in &to_delete {
        sim.delete_item(&it.id).expect("delete item");
        want_changes.insert((pb::ChangeKind::Delete as i32, it.id.clone(), None));
    }
    for it in &to_flip {
        sim.set_read(&it.id, !it.is_read).expect("flip read flag");
        want_changes.insert((
            pb::ChangeKind::ReadFlag as i32,
            it.id.clone(),
            Some(!it.is_read),
        ));
    }

    let second = run(cfg.clone(), RunMode::Once, rx.clone())
        .await
        .expect("second run");
    assert!(second.is_clean(), "{second:?}");
    let msgs = common::stream_messages(&js, after_first).await;
    let after_second = common::last_seq(&js).await;
    let mut got_items = BTreeSet::new();
    let mut got_changes = BTreeSet::new();
    let mut reconciliations = 0;
    for m in &msgs {
        if let Some(env) = m.item() {
            assert_eq!(env.mailbox.to_lowercase(), mb.to_lowercase());
            let body = body_of(&js, env).await;
            assert_eq!(
                Some(&body),
                want_mime.get(&env.item_id),
                "MIME of {}",
                env.item_id
            );
            assert!(
                got_items.insert((env.item_id.clone(), env.change_key.clone())),
                "item version {} published twice",
                env.item_id
            );
        } else if let Some(c) = m.change() {
            assert_eq!(c.mailbox.to_lowercase(), mb.to_lowercase());
            let read = (c.kind == pb::ChangeKind::ReadFlag as i32).then_some(c.is_read);
            assert!(
                got_changes.insert((c.kind, c.item_id.clone(), read)),
                "change published twice: {c:?}"
            );
        } else if m.reconciliation().is_some() {
            reconciliations += 1;
        } else {
            panic!("unexpected message: {:?}", m.message);
        }
    }
    assert_eq!(
        got_items, want_items,
        "item versions published by the second run"
    );
    assert_eq!(
        got_changes, want_changes,
        "change events published by the second run"
    );
    assert_eq!(reconciliations, mailboxes.len());
    let rec = second
        .mailboxes
        .iter()
        .find(|r| r.mailbox == mb)
        .expect("reconciliation of the mutated mailbox");
    let sum = |f: fn(&pb::FolderReconciliation) -> u64| rec.folders.iter().map(f).sum::<u64>();
    assert_eq!(sum(|f| f.created), 12, "10 added + 2 moved in");
    assert_eq!(sum(|f| f.updated), 5);
    assert_eq!(sum(|f| f.deleted), 5, "3 deleted + 2 moved out");
    assert_eq!(sum(|f| f.read_flag_changes), 4);
    assert_eq!(second.captured(), 17);

    // ---- a run with nothing changed: one hierarchy sync per mailbox and one SyncFolderItems
    // per folder, no GetItem, nothing published but the reconciliations.
    sim.reset_stats();
    let third = run(cfg, RunMode::Once, rx).await.expect("third run");
    assert!(third.is_clean(), "{third:?}");
    let folders: usize = third.mailboxes.iter().map(|m| m.folders.len()).sum();
    let s = sim.stats();
    eprintln!(
        "idle run: {} mailboxes, {folders} folders, EWS requests {:?}",
        mailboxes.len(),
        s.requests
    );
    assert_eq!(s.count("GetItem"), 0, "no content fetched");
    assert_eq!(s.count("SyncFolderItems") as usize, folders);
    assert_eq!(s.count("SyncFolderHierarchy") as usize, mailboxes.len());
    assert!(
        s.total_requests as usize <= folders + mailboxes.len(),
        "O(folders) calls: {} for {folders} folders",
        s.total_requests
    );
    let idle = common::stream_messages(&js, after_second).await;
    assert_eq!(idle.len(), mailboxes.len(), "only reconciliations");
    assert!(idle.iter().all(|m| m.reconciliation().is_some()));
}

/// `ErrorInvalidSyncStateData` (Exchange lost or rejects the stored states): every folder is
/// resynchronised from scratch, nothing already collected is fetched or published again, and
/// a change made meanwhile is still picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sync_states_resync_without_republishing() {
    let nats = mailvault_harness::NatsServer::start().expect("start nats-server");
    let mut sim_cfg = SimConfig::new(DOMAIN);
    sim_cfg.generate = Some(GenConfig {
        seed: 78,
        domain: DOMAIN.into(),
        users: 2,
        messages: 30,
        journal: false,
        ..GenConfig::default()
    });
    let sim = Simulator::start(sim_cfg).await.expect("start simulator");
    let mailboxes = sim.mailboxes();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), &sim.url(), &nats.url(), &mailboxes);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let first = run(cfg.clone(), RunMode::Once, rx.clone())
        .await
        .expect("first run");
    assert!(first.is_clean(), "{first:?}");
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let after_first = common::last_seq(&js).await;

    sim.invalidate_sync_states(None);
    let inbox = sim
        .distinguished_folder_id(&mailboxes[0], "inbox")
        .expect("inbox");
    let added = sim
        .add_item(&inbox, &new_mime(1000), "IPM.Note")
        .expect("add item");
    sim.reset_stats();
    let second = run(cfg, RunMode::Once, rx).await.expect("second run");
    assert!(second.is_clean(), "{second:?}");
    let folders: Vec<_> = second.mailboxes.iter().flat_map(|m| &m.folders).collect();
    assert!(
        folders.iter().all(|f| f.resynced),
        "every folder resynchronised"
    );
    let skipped: u64 = folders
        .iter()
        .map(|f| f.skipped.get("already_collected").copied().unwrap_or(0))
        .sum();
    assert_eq!(
        skipped as usize,
        sim.total_items() - 1,
        "all but the new item known"
    );
    assert_eq!(
        sim.stats().items_fetched,
        1,
        "only the new item's MIME fetched"
    );
    let msgs = common::stream_messages(&js, after_first).await;
    let items: Vec<_> = msgs.iter().filter_map(|m| m.item()).collect();
    assert_eq!(items.len(), 1, "only the new item published");
    assert_eq!(items[0].item_id, added.id);
    assert!(
        msgs.iter()
            .all(|m| m.item().is_some() || m.reconciliation().is_some()),
        "no change events or quarantines from a resync"
    );
}
