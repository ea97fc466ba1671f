//! What the index keeps on disk (issue 26, item 4): no mail body text in any stored field, the
//! directory readable by its owner only, and still every body word searchable after items are
//! rewritten by later changes (the body is read back from the encrypted repository).

mod common;

use common::*;
use mailvault_indexer::history::ItemRecord;
use mailvault_indexer::{Index, Indexer, SearchOptions};
use prost::Message as _;
use tantivy::schema::Value as _;

/// Every stored `record` of the index on disk, decoded.
fn stored_records(dir: &std::path::Path) -> Vec<ItemRecord> {
    let index = tantivy::Index::open_in_dir(dir).expect("open with tantivy");
    let field = index.schema().get_field("record").expect("record field");
    let reader = index.reader().expect("reader");
    let searcher = reader.searcher();
    let mut out = Vec::new();
    for seg in searcher.segment_readers() {
        let store = seg.get_store_reader(0).expect("store");
        for doc in 0..seg.max_doc() {
            if seg.is_deleted(doc) {
                continue;
            }
            let d: tantivy::TantivyDocument = store.get(doc).expect("doc");
            if let Some(bytes) = d.get_first(field).and_then(|v| v.as_bytes()) {
                out.push(ItemRecord::decode(bytes).expect("record"));
            }
        }
    }
    out
}

/// A word of `body` at least 8 letters long that the subject does not have.
fn body_only_word(body: &str, subject: &str) -> Option<String> {
    let subject = subject.to_lowercase();
    // Split as the index's tokenizer does (on what is not alphanumeric).
    body.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 8 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_lowercase)
        .find(|w| !subject.contains(w.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_text_at_rest_and_bodies_survive_rewrites() {
    let repo = repo().await;
    let events = populate(&repo, 44, 80).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ix_dir = dir.path().join("index");
    let ix = Indexer::new(repo.clone(), Index::open(&ix_dir).expect("open"));
    // Committed often, so most changes rewrite an item whose record comes back from disk.
    for (n, e) in events.iter().enumerate() {
        match e {
            Event::Stored(s) => ix.handle_stored(s).await.expect("stored"),
            Event::Changed(c) => ix.handle_changed(c).await.expect("changed"),
        }
        if n % 4 == 3 {
            ix.commit().await.expect("commit");
        }
    }
    ix.commit().await.expect("commit");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&ix_dir)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "index directory mode {mode:o}");
    }

    let records = stored_records(&ix_dir);
    assert!(records.len() >= 40, "{} records", records.len());
    let mut omitted = 0;
    for r in &records {
        for v in &r.versions {
            let c = v.content.as_ref().expect("content");
            assert!(
                c.body.is_empty(),
                "body text of {} stored in clear",
                v.manifest_id
            );
            omitted += usize::from(c.body_at_rest_omitted);
        }
    }
    assert!(omitted >= 40, "{omitted} versions had a body to leave out");

    // Items changed after their version was committed (rewritten from the stored record)
    // are still found by words only their body has.
    let mut checked = 0;
    for e in &events {
        let Event::Changed(c) = e else { continue };
        let Some(stored) = events.iter().find_map(|e| match e {
            Event::Stored(s) if s.item_id == c.item_id && s.mailbox == c.mailbox => Some(s),
            _ => None,
        }) else {
            continue;
        };
        let id = mailvault_format::BlobId::from_hex(&stored.manifest_id).expect("id");
        let mime = repo.read_item(&id).await.expect("read");
        let content = mailvault_indexer::extract::extract(&mime);
        let Some(word) = body_only_word(&content.body, &content.subject) else {
            continue;
        };
        let q = format!("{word} mailbox:{}", c.mailbox);
        let hits = ix
            .index
            .search(
                &format!("{q} OR ({q} is:deleted)"),
                &SearchOptions {
                    limit: 10_000,
                    ..SearchOptions::default()
                },
            )
            .expect("search")
            .hits;
        assert!(
            hits.iter().any(|h| h.item_id == c.item_id),
            "{} ({} change) not found by its body word {word:?}",
            c.item_id,
            c.kind
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} changed items had a body-only word"
    );
}
