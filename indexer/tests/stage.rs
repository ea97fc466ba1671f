//! Events + repository → index, and reindex from the repository alone gives the same answers.

mod common;

use common::*;
use mailvault_indexer::{Index, Indexer, catch_up, reindex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_matches_the_event_built_index() {
    let repo = repo().await;
    let events = populate(&repo, 31, 60).await;
    let changes = events
        .iter()
        .filter(|e| matches!(e, Event::Changed(_)))
        .count();
    assert!(changes >= 20);

    let a = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(a.path()).expect("open"));
    // Events in publication order, committed in batches, with redeliveries.
    for (n, e) in events.iter().enumerate() {
        match e {
            Event::Stored(s) => ix.handle_stored(s).await.expect("stored"),
            Event::Changed(c) => ix.handle_changed(c).await.expect("changed"),
        }
        if n % 3 == 0
            && let Event::Stored(s) = e
        {
            ix.handle_stored(s).await.expect("redelivered");
        }
        if n % 50 == 0 {
            ix.commit().await.expect("commit");
        }
    }
    ix.commit().await.expect("commit");

    let b = tempfile::tempdir().expect("tempdir");
    let report = reindex(&repo, b.path()).await.expect("reindex");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.changes, changes);
    assert_eq!(report.versions, events.len() - changes);
    let rebuilt = Index::open(b.path()).expect("open rebuilt");

    assert_eq!(ix.index.doc_count(), rebuilt.doc_count());
    assert_eq!(ix.index.doc_count() as usize, report.versions);
    let users: Vec<String> = ix
        .index
        .list_mailboxes(&mailvault_indexer::Scope::All)
        .expect("mailboxes")
        .into_iter()
        .map(|m| m.address)
        .take(3)
        .collect();
    let (sa, sb) = (snapshot(&ix.index, &users), snapshot(&rebuilt, &users));
    let mut nonempty = 0;
    for ((qa, ha, ta), (qb, hb, tb)) in sa.iter().zip(sb.iter()) {
        assert_eq!(qa, qb);
        assert_eq!(ta, tb, "{qa}");
        assert_eq!(ha, hb, "{qa}");
        if *ta > 0 {
            nonempty += 1;
        }
    }
    assert!(
        nonempty > sa.len() / 2,
        "{nonempty} of {} non-empty",
        sa.len()
    );
    // The changes took effect: deletes, moves, read flags.
    let deleted = ix
        .index
        .search("is:deleted", &Default::default())
        .expect("search");
    assert!(deleted.total >= 5);
    let moved = ix
        .index
        .search("folder:\"inbox/archive 2024\"", &Default::default())
        .expect("search");
    assert!(moved.total >= 1);
    for m in ix
        .index
        .list_mailboxes(&mailvault_indexer::Scope::All)
        .expect("mbs")
    {
        assert_eq!(
            ix.index.list_folders(&m.address, None).expect("folders"),
            rebuilt.list_folders(&m.address, None).expect("folders")
        );
        assert_eq!(
            ix.index.folder_items(&m.address, &[], None).expect("items"),
            rebuilt.folder_items(&m.address, &[], None).expect("items")
        );
    }
}

/// A process killed after its items were durable in the repository but before the index
/// committed them: the next start applies exactly what is missing, and the index answers as
/// one built from the repository alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_applies_what_the_index_missed_and_only_that() {
    let repo = repo().await;
    let events = populate(&repo, 32, 60).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let total = events.len();
    let committed = total / 3;
    {
        let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"));
        for (n, e) in events.iter().enumerate() {
            match e {
                Event::Stored(s) => ix.handle_stored(s).await.expect("stored"),
                Event::Changed(c) => ix.handle_changed(c).await.expect("changed"),
            }
            if n + 1 == committed {
                ix.commit().await.expect("commit");
            }
        }
        // Dropped here with two thirds applied and never committed: the crash.
    }
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("reopen"));
    let before = ix.index.doc_count();
    let report = catch_up(&ix).await.expect("catch up");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.versions + report.changes,
        total - committed,
        "exactly the events never committed are applied again"
    );
    assert!(ix.index.doc_count() > before);

    let b = tempfile::tempdir().expect("tempdir");
    reindex(&repo, b.path()).await.expect("reindex");
    let rebuilt = Index::open(b.path()).expect("open rebuilt");
    let users: Vec<String> = rebuilt
        .list_mailboxes(&mailvault_indexer::Scope::All)
        .expect("mailboxes")
        .into_iter()
        .map(|m| m.address)
        .take(3)
        .collect();
    assert_eq!(ix.index.doc_count(), rebuilt.doc_count());
    assert_eq!(snapshot(&ix.index, &users), snapshot(&rebuilt, &users));

    // Nothing is missing any more.
    let again = catch_up(&ix).await.expect("catch up again");
    assert_eq!(again, mailvault_indexer::ReindexReport::default());

    // An index from before the applied log: everything is applied once more, nothing doubles.
    std::fs::remove_file(ix.index.applied_log().path()).expect("remove log");
    let legacy = catch_up(&ix).await.expect("legacy catch up");
    assert_eq!(legacy.versions + legacy.changes, total);
    assert_eq!(ix.index.doc_count(), rebuilt.doc_count());
    assert_eq!(snapshot(&ix.index, &users), snapshot(&rebuilt, &users));
}

/// An item an aggregator of this process handed over is indexed from the hand-off, without a
/// read from the repository; one that is not there is read back as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_items_are_indexed_without_reading_the_repository() {
    use std::sync::Arc;

    use mailvault_format::ItemManifest;
    use mailvault_proto::events::v1::ItemStored;
    use mailvault_runtime::handoff::Handoff;

    let repo = repo().await;
    let mime = |subject: &str| {
        format!(
            "From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject}\r\n\
             Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\r\nbody\r\n"
        )
    };
    let mut w = repo.writer().expect("writer");
    let mut events = Vec::new();
    for item in ["one", "two"] {
        let meta = ItemManifest {
            mailbox: "b@example.org".into(),
            item_id: item.into(),
            change_key: "ck".into(),
            folder_path: vec!["Inbox".into()],
            item_class: "IPM.Note".into(),
            ..Default::default()
        };
        let r = w
            .add_item(meta.clone(), mime(&format!("stored{item}")).as_bytes())
            .expect("add");
        events.push((meta, r.manifest_id));
    }
    w.flush().await.expect("flush");

    // The hand-off holds "one" with other bytes than the repository (which a real hand-off
    // never does): the index shows which copy it read.
    let handoff = Arc::new(Handoff::new(1 << 20));
    let (meta, id) = &events[0];
    handoff.put(*id, meta.clone(), mime("handedone").into_bytes().into());
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Indexer::new(repo.clone(), Index::open(dir.path()).expect("open"))
        .with_handoff(handoff.clone());
    for (meta, id) in &events {
        ix.handle_stored(&ItemStored {
            manifest_id: id.to_hex(),
            mailbox: meta.mailbox.clone(),
            item_id: meta.item_id.clone(),
            change_key: meta.change_key.clone(),
            folder_path: meta.folder_path.clone(),
            item_class: meta.item_class.clone(),
            size: 0,
            stored_unix_ms: 1,
        })
        .await
        .expect("stored");
    }
    ix.commit().await.expect("commit");
    let count = |q: &str| {
        ix.index
            .search(q, &Default::default())
            .expect("search")
            .total
    };
    assert_eq!(count("subject:handedone"), 1, "taken from the hand-off");
    assert_eq!(count("subject:storedone"), 0);
    assert_eq!(
        count("subject:storedtwo"),
        1,
        "read back from the repository"
    );
    assert_eq!(handoff.bytes(), 0, "taken, not copied");
}
