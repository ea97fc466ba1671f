//! Events + repository → index, and reindex from the repository alone gives the same answers.

mod common;

use common::*;
use mailvault_indexer::{Index, Indexer, reindex};

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
