//! Whatever a token holder sends as a query, the indexer answers (results or INVALID_ARGUMENT)
//! and never crashes: generated queries of the language's own pieces, nested and repeated far
//! beyond what a person writes, parsed and run against a real index. (A fuzz target needs a
//! nightly toolchain this project cannot assume; this runs in every test pass.)

use mailvault_indexer::query::{MAX_DEPTH, MAX_QUERY_CHARS, parse};
use mailvault_indexer::{Index, ItemStoredInput, Scope, SearchOptions};
use proptest::prelude::*;

/// Pieces of the query language, operators and junk included.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("-".to_owned()),
        Just("NOT ".to_owned()),
        Just(" AND ".to_owned()),
        Just(" OR ".to_owned()),
        Just("\"".to_owned()),
        Just(" ".to_owned()),
        Just("from:".to_owned()),
        Just("bcc:".to_owned()),
        Just("folder:".to_owned()),
        Just("before:2024-02-30".to_owned()),
        Just("after:".to_owned()),
        Just("is:deleted".to_owned()),
        Just("has:attachment".to_owned()),
        "[a-zA-Z0-9@.äöü日本]{1,8}",
        any::<char>().prop_map(String::from),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(piece(), 0..200).prop_map(|v| v.concat()),
        // Runs of one piece: deep nesting, long negation chains, many operators.
        (piece(), 1usize..3000).prop_map(|(p, n)| p.repeat(n)),
    ]
}

/// One small index shared by every case.
static INDEX: std::sync::LazyLock<(tempfile::TempDir, Index)> = std::sync::LazyLock::new(index);

fn index() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Index::open(dir.path()).expect("open");
    let mime = b"From: a@contoso.com\r\nTo: b@contoso.com\r\nBcc: c@contoso.com\r\nSubject: hello\r\n\r\nbody text\r\n";
    ix.add_version(
        &ItemStoredInput {
            manifest_id: "ab".repeat(32),
            mailbox: "b@contoso.com".into(),
            item_id: "i1".into(),
            change_key: "ck".into(),
            folder_id: "f".into(),
            folder_path: vec!["Inbox".into()],
            distinguished_folder: "inbox".into(),
            item_class: "IPM.Note".into(),
            size: mime.len() as u64,
            is_read: false,
            collected_unix_ms: 1_700_000_000_000,
            stored_unix_ms: 1_700_000_000_001,
            format: 1,
        },
        mime,
    )
    .expect("add");
    ix.commit().expect("commit");
    (dir, ix)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(mailvault_harness::fuzz_cases(400)))]

    #[test]
    fn any_query_is_answered_or_refused_never_a_crash(q in query()) {
        let ix = &INDEX.1;
        match parse(&q) {
            Err(e) => prop_assert!(e.pos <= q.chars().count().max(MAX_QUERY_CHARS)),
            Ok(_) => prop_assert!(q.chars().count() <= MAX_QUERY_CHARS),
        }
        for scope in [Scope::All, Scope::User("b@contoso.com".into())] {
            // Either result is fine; a panic or a stack overflow fails the test run.
            let _ = ix.search(&q, &SearchOptions { scope, limit: 10, ..SearchOptions::default() });
        }
    }
}

#[test]
fn nesting_at_the_limit_searches_and_one_more_is_refused() {
    let ix = &INDEX.1;
    let ok = format!("{}hello{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(
        ix.search(&ok, &SearchOptions::default())
            .expect("at the limit")
            .total,
        1
    );
    let nots = format!("{}hello", "NOT NOT ".repeat(MAX_DEPTH / 2));
    assert_eq!(
        ix.search(&nots, &SearchOptions::default())
            .expect("negations")
            .total,
        1
    );
    let deeper = format!("({ok})");
    assert!(ix.search(&deeper, &SearchOptions::default()).is_err());
}
