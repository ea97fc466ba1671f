//! The index over hand-made histories and over generated mail: as-of and deleted semantics,
//! idempotent re-apply, scoping, browsing, and an oracle comparison with plain string logic.

use std::collections::BTreeSet;

use mailvault_indexer::{
    ChangeInput, ChangeKind, Hit, Index, ItemStoredInput, Scope, SearchOptions,
};

const MB: &str = "alice@contoso.com";

fn mid(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex().to_string()
}

fn stored(item: &str, ck: &str, folder: &[&str], dist: &str, t: i64) -> ItemStoredInput {
    ItemStoredInput {
        manifest_id: mid(&format!("{MB}/{item}/{ck}")),
        mailbox: MB.into(),
        item_id: item.into(),
        change_key: ck.into(),
        folder_id: folder.join("/"),
        folder_path: folder.iter().map(|s| s.to_string()).collect(),
        distinguished_folder: dist.into(),
        item_class: "IPM.Note".into(),
        size: 0,
        is_read: false,
        collected_unix_ms: t,
        stored_unix_ms: t + 5,
        format: 1,
    }
}

fn change(item: &str, kind: ChangeKind, folder: &[&str], read: bool, t: i64) -> ChangeInput {
    ChangeInput {
        record_id: mid(&format!("{item}/{}/{t}", kind.as_str())),
        mailbox: MB.into(),
        item_id: item.into(),
        change_key: "ck1".into(),
        kind,
        folder_id: folder.join("/"),
        folder_path: folder.iter().map(|s| s.to_string()).collect(),
        is_read: read,
        observed_unix_ms: t,
    }
}

fn mime(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bob Jones <bob@contoso.com>\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n\
Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@contoso.com>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

fn search(ix: &Index, q: &str, as_of: Option<i64>) -> Vec<Hit> {
    ix.search(
        q,
        &SearchOptions {
            as_of,
            limit: 1000,
            ..Default::default()
        },
    )
    .expect("search")
    .hits
}

fn ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.item_id.clone()).collect()
}

enum Ev {
    S(ItemStoredInput, Vec<u8>),
    C(ChangeInput),
}

fn history() -> Vec<Ev> {
    vec![
        Ev::S(
            stored("A", "ck1", &["Inbox"], "inbox", 1000),
            mime("budget", "numbers inside"),
        ),
        Ev::C(change("A", ChangeKind::ReadFlag, &["Inbox"], true, 2000)),
        Ev::C(change(
            "A",
            ChangeKind::Move,
            &["Inbox", "Projects"],
            true,
            3000,
        )),
        Ev::C(change(
            "A",
            ChangeKind::Delete,
            &["Inbox", "Projects"],
            true,
            4000,
        )),
        Ev::S(
            stored("B", "ck1", &["Sent Items"], "sentitems", 1500),
            mime("lunch", "pizza"),
        ),
        Ev::S(
            stored("B", "ck2", &["Sent Items"], "sentitems", 2500),
            mime("lunch", "sushi"),
        ),
    ]
}

/// Every item's MIME by manifest id: what the repository is to an indexer, for items
/// rewritten after their record was committed without body text.
static MIME: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>> =
    std::sync::LazyLock::new(Default::default);

struct TestBodies;

impl mailvault_indexer::index::BodySource for TestBodies {
    fn body(
        &self,
        manifest_id: &str,
        unwrap_journal: bool,
    ) -> Result<String, mailvault_indexer::IndexError> {
        let mime = MIME
            .lock()
            .expect("lock")
            .get(manifest_id)
            .cloned()
            .unwrap_or_else(|| panic!("no MIME recorded for {manifest_id}"));
        Ok(mailvault_indexer::extract::extract_item(&mime, unwrap_journal).body)
    }
}

fn open(dir: &std::path::Path) -> Index {
    let ix = Index::open(dir).expect("open");
    ix.set_body_source(std::sync::Arc::new(TestBodies));
    ix
}

fn apply(ix: &Index, evs: &[Ev]) {
    for e in evs {
        match e {
            Ev::S(s, m) => {
                MIME.lock()
                    .expect("lock")
                    .insert(s.manifest_id.clone(), m.clone());
                ix.add_version(s, m).expect("add")
            }
            Ev::C(c) => ix.apply_change(c).expect("change"),
        }
    }
}

fn check_history(ix: &Index) {
    // Read flag over time.
    assert_eq!(ids(&search(ix, "is:unread budget", Some(1500))), ["A"]);
    assert!(search(ix, "is:unread budget", Some(2500)).is_empty());
    // Location over time: folder prefix matches subfolders.
    assert_eq!(ids(&search(ix, "folder:inbox/projects", Some(3500))), ["A"]);
    assert_eq!(ids(&search(ix, "folder:Inbox", Some(3500))), ["A"]);
    assert!(search(ix, "folder:Inbox/Projects", Some(2500)).is_empty());
    // Deleted: gone from normal search, findable with is:deleted.
    assert!(search(ix, "budget", None).is_empty());
    let d = search(ix, "is:deleted", None);
    assert_eq!(ids(&d), ["A"]);
    assert!(d[0].deleted);
    assert_eq!(d[0].deleted_unix_ms, Some(4000));
    assert_eq!(d[0].folder_path, ["Inbox", "Projects"]);
    assert!(search(ix, "is:deleted", Some(3999)).is_empty());
    assert_eq!(ids(&search(ix, "budget OR is:deleted", Some(3999))), ["A"]);
    // Before it existed.
    assert!(search(ix, "budget", Some(999)).is_empty());
    // Versions: the body of the version live at T.
    assert_eq!(ids(&search(ix, "pizza", Some(2000))), ["B"]);
    assert!(search(ix, "pizza", None).is_empty());
    assert_eq!(ids(&search(ix, "sushi", None)), ["B"]);
    let b = &search(ix, "lunch", None)[0];
    assert_eq!(b.change_key, "ck2");
    assert_eq!(b.distinguished_folder, "sentitems");
    // Restore view.
    let at = ix
        .folder_items(MB, &["Inbox".into()], Some(3500))
        .expect("items");
    assert_eq!(ids(&at), ["A"]);
    assert!(
        ix.folder_items(MB, &["Inbox".into()], Some(4500))
            .expect("items")
            .is_empty()
    );
    let all = ix.folder_items(MB, &[], Some(2000)).expect("items");
    assert_eq!(ids(&all), ["A", "B"]);
    assert_eq!(all[1].change_key, "ck1");
    // Folders with their well-known ids.
    let folders = ix.list_folders(MB, Some(1600)).expect("folders");
    let f: Vec<_> = folders
        .iter()
        .map(|f| (f.path.join("/"), f.items, f.distinguished.clone()))
        .collect();
    assert_eq!(
        f,
        [
            ("Inbox".to_owned(), 1, Some("inbox".to_owned())),
            ("Sent Items".to_owned(), 1, Some("sentitems".to_owned())),
        ]
    );
    let later = ix.list_folders(MB, Some(3500)).expect("folders");
    assert!(
        later
            .iter()
            .any(|f| f.path == ["Inbox", "Projects"] && f.items == 1)
    );
    // get: the latest state of a version.
    let a = ix
        .get(&mid(&format!("{MB}/A/ck1")))
        .expect("get")
        .expect("found");
    assert!(a.deleted && a.is_read);
    assert!(ix.get(&mid("nothing")).expect("get").is_none());
    assert_eq!(ix.doc_count(), 2);
    let mbs = ix.list_mailboxes(&Scope::All).expect("mailboxes");
    assert_eq!(mbs.len(), 1);
    assert_eq!((mbs[0].address.as_str(), mbs[0].items), (MB, 1));
}

#[test]
fn as_of_deleted_and_idempotent_in_any_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    let evs = history();
    // Events of one batch: the change sees the version before any commit.
    apply(&ix, &evs);
    ix.commit().expect("commit");
    check_history(&ix);
    // At-least-once: everything again, before and after a commit.
    apply(&ix, &evs);
    apply(&ix, &evs);
    ix.commit().expect("commit");
    check_history(&ix);
    drop(ix);
    // Reopened from disk.
    let ix = open(dir.path());
    check_history(&ix);

    // Reverse arrival order, one commit per event.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let ix2 = open(dir2.path());
    for e in evs.iter().rev() {
        apply(&ix2, std::slice::from_ref(e));
        ix2.commit().expect("commit");
    }
    check_history(&ix2);
}

#[test]
fn journal_reports_are_scoped_to_listed_users() {
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 21,
        messages: 30,
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    let mut reports = Vec::new();
    for (i, g) in corpus.items.iter().enumerate() {
        let s = ItemStoredInput {
            manifest_id: mid(&format!("{i}")),
            mailbox: g.mailbox.clone(),
            item_id: format!("it{i}"),
            change_key: "ck".into(),
            folder_path: g.folder_path.clone(),
            distinguished_folder: g.distinguished.clone().unwrap_or_default(),
            item_class: g.item_class.clone(),
            collected_unix_ms: 1_000 + i as i64,
            format: 1,
            ..Default::default()
        };
        ix.add_version(&s, &g.mime).expect("add");
        if g.mailbox.starts_with("journal@") {
            reports.push((s.manifest_id.clone(), g.mime.clone()));
        }
    }
    ix.commit().expect("commit");
    assert!(!reports.is_empty());
    for (id, raw) in &reports {
        let h = ix.get(id).expect("get").expect("indexed");
        let (off, len) = h.embedded.expect("journal range");
        let original = &raw[off as usize..(off + len) as usize];
        // The hit describes the original message, not the report.
        assert!(!h.from.contains("microsoftexchange"), "{}", h.from);
        assert!(
            original.starts_with(b"Received:")
                || original.starts_with(b"From:")
                || original.windows(5).any(|w| w == b"From:")
        );
        assert!(
            h.visible_to.contains(&h.from),
            "{} in {:?}",
            h.from,
            h.visible_to
        );
        // Every listed user sees it; someone not listed does not.
        for u in &h.visible_to {
            let page = ix
                .search(
                    "",
                    &SearchOptions {
                        scope: Scope::User(u.clone()),
                        limit: 10_000,
                        ..Default::default()
                    },
                )
                .expect("search");
            assert!(
                page.hits.iter().any(|x| &x.manifest_id == id),
                "{u} sees {id}"
            );
        }
    }
    let outsider = ix
        .search(
            "",
            &SearchOptions {
                scope: Scope::User("nobody@contoso.com".into()),
                ..Default::default()
            },
        )
        .expect("search");
    assert_eq!(outsider.total, 0);
    // A user's scope: own mailbox plus journaled items naming them.
    let user = &corpus.mailboxes[0].address;
    let mine = ix
        .search(
            "",
            &SearchOptions {
                scope: Scope::User(user.to_uppercase()),
                limit: 100_000,
                ..Default::default()
            },
        )
        .expect("search");
    assert!(
        mine.hits
            .iter()
            .all(|h| &h.mailbox == user || h.visible_to.contains(user))
    );
    let own = corpus.items.iter().filter(|g| &g.mailbox == user).count();
    assert!(mine.total > own, "journaled copies add to {own}");
}

/// Unfolded top-level header block, lower-cased.
fn headers(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..end]
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ")
        .to_lowercase()
}

fn header_has(raw: &[u8], name: &str, needle: &str) -> bool {
    headers(raw)
        .lines()
        .any(|l| l.starts_with(&format!("{name}:")) && l.contains(needle))
}

#[test]
fn oracle_queries_match_string_logic_over_generated_mail() {
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 8,
        messages: 80,
        journal: false,
        malformed: 0,
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    for (i, g) in corpus.items.iter().enumerate() {
        let s = ItemStoredInput {
            manifest_id: mid(&format!("{i}")),
            mailbox: g.mailbox.clone(),
            item_id: format!("{i}"),
            change_key: "ck".into(),
            folder_path: g.folder_path.clone(),
            distinguished_folder: g.distinguished.clone().unwrap_or_default(),
            item_class: g.item_class.clone(),
            is_read: g.is_read,
            collected_unix_ms: 1_000 + i as i64,
            format: 1,
            ..Default::default()
        };
        ix.add_version(&s, &g.mime).expect("add");
    }
    ix.commit().expect("commit");
    let found = |q: &str| -> BTreeSet<usize> {
        let page = ix
            .search(
                q,
                &SearchOptions {
                    limit: 100_000,
                    ..Default::default()
                },
            )
            .expect("search");
        assert_eq!(page.total, page.hits.len());
        page.hits
            .iter()
            .map(|h| h.item_id.parse().expect("numeric id"))
            .collect()
    };
    let expect = |pred: &dyn Fn(&mailvault_mailgen::GeneratedItem) -> bool| -> BTreeSet<usize> {
        corpus
            .items
            .iter()
            .enumerate()
            .filter(|(_, g)| pred(g))
            .map(|(i, _)| i)
            .collect()
    };
    let mut checked = 0;
    for mb in corpus.mailboxes.iter().take(4) {
        let a = mb.address.to_lowercase();
        let local = a.split('@').next().unwrap_or_default().to_owned();
        let e = expect(&|g| header_has(&g.mime, "from", &a));
        assert!(!e.is_empty());
        assert_eq!(found(&format!("from:{a}")), e, "from:{a}");
        let e_to = expect(&|g| header_has(&g.mime, "to", &a));
        assert_eq!(found(&format!("to:{a}")), e_to, "to:{a}");
        // Any part of the address: the local part (a superset: display names may match).
        assert!(found(&format!("from:{local}")).is_superset(&e));
        let e_mb = expect(&|g| g.mailbox.eq_ignore_ascii_case(&a));
        assert_eq!(found(&format!("mailbox:{a}")), e_mb);
        let e_unread = expect(&|g| g.mailbox.eq_ignore_ascii_case(&a) && !g.is_read);
        assert_eq!(found(&format!("mailbox:{a} is:unread")), e_unread);
        let first = corpus
            .items
            .iter()
            .find(|g| g.mailbox.eq_ignore_ascii_case(&a))
            .map(|g| g.folder_path[0].clone())
            .expect("a folder");
        let e_folder = expect(&|g| g.mailbox.eq_ignore_ascii_case(&a) && g.folder_path[0] == first);
        assert_eq!(found(&format!("mailbox:{a} folder:\"{first}\"")), e_folder);
        let e_not = &e_mb - &e_folder;
        assert_eq!(found(&format!("mailbox:{a} -folder:\"{first}\"")), e_not);
        checked += 1;
    }
    assert_eq!(checked, 4);
    // Attachments: a named attachment part in the raw MIME.
    let e_att = expect(&|g| {
        let t = String::from_utf8_lossy(&g.mime).to_lowercase();
        t.contains("content-disposition: attachment")
    });
    assert!(!e_att.is_empty());
    assert_eq!(found("has:attachment"), e_att);
    // OR is the union, AND the intersection.
    let a0 = corpus.mailboxes[0].address.to_lowercase();
    let a1 = corpus.mailboxes[1].address.to_lowercase();
    let u = &found(&format!("from:{a0}")) | &found(&format!("from:{a1}"));
    assert_eq!(found(&format!("from:{a0} OR from:{a1}")), u);
    let i = &found(&format!("from:{a0}")) & &found("has:attachment");
    assert_eq!(found(&format!("from:{a0} AND has:attachment")), i);
    // Dates: before + after partition everything that has a date.
    let all = found("");
    let before = found("before:2024-06-01");
    let after = found("after:2024-06-01");
    assert!(before.is_disjoint(&after));
    assert_eq!(&before | &after, all);
    // Paging: pages concatenate to the full, date-ordered list.
    let full = ix
        .search(
            "",
            &SearchOptions {
                limit: 100_000,
                ..Default::default()
            },
        )
        .expect("search");
    let mut paged = Vec::new();
    for p in 0..5 {
        let page = ix
            .search(
                "",
                &SearchOptions {
                    offset: p * 7,
                    limit: 7,
                    ..Default::default()
                },
            )
            .expect("search");
        assert_eq!(page.total, full.total);
        paged.extend(page.hits);
    }
    assert_eq!(paged, full.hits[..35]);
    assert!(
        full.hits
            .windows(2)
            .all(|w| w[0].date_unix_ms >= w[1].date_unix_ms)
    );
}

#[test]
fn query_errors_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    let e = ix
        .search("from:alice (x", &SearchOptions::default())
        .expect_err("bad query");
    assert!(e.to_string().contains("position 13"), "{e}");
}

#[test]
fn results_are_newest_first_then_by_manifest_id_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    // Few distinct dates, many items each (mail sent to many mailboxes shares its date), and
    // a commit every 7 items: equal dates spread over many index segments.
    let days = ["01", "02", "03"];
    for n in 0..60 {
        let day = days[n * 7 % days.len()];
        let raw = format!(
            "From: bob@contoso.com\r\nTo: alice@contoso.com\r\nSubject: s{n}\r\n\
Date: Tue, {day} Jan 2024 10:00:00 +0000\r\n\r\nbody\r\n"
        );
        let item = format!("I{n}");
        ix.add_version(
            &stored(&item, "ck1", &["Inbox"], "inbox", 1000),
            raw.as_bytes(),
        )
        .expect("add");
        if n % 7 == 6 {
            ix.commit().expect("commit");
        }
    }
    ix.commit().expect("commit");
    let page = |offset, limit| {
        ix.search(
            "",
            &SearchOptions {
                offset,
                limit,
                ..Default::default()
            },
        )
        .expect("search")
    };
    let full = page(0, 1000);
    assert_eq!(full.total, 60);
    let got: Vec<(i64, String)> = full
        .hits
        .iter()
        .map(|h| (h.date_unix_ms, h.manifest_id.clone()))
        .collect();
    let mut want = got.clone();
    want.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    assert_eq!(got, want, "newest first, ties by manifest id");
    assert_eq!(got.iter().map(|g| g.0).collect::<BTreeSet<_>>().len(), 3);
    // Pages of any size concatenate to the full list; a page past the end is empty.
    for size in [1, 5, 13, 20] {
        let mut paged = Vec::new();
        for p in 0..60usize.div_ceil(size) {
            let pg = page(p * size, size);
            assert_eq!(pg.total, 60);
            paged.extend(pg.hits);
        }
        assert_eq!(paged, full.hits, "pages of {size}");
    }
    assert!(page(60, 10).hits.is_empty());
    let none = page(3, 0);
    assert!(none.hits.is_empty());
    assert_eq!(none.total, 60);
}

/// An envelope journal report: boss sent to alice, with carol in Bcc.
fn journal_report() -> Vec<u8> {
    let original = "From: boss@contoso.com\r\nTo: alice@contoso.com\r\nSubject: Quiet plans\r\n\
Date: Tue, 02 Jan 2024 10:00:00 +0000\r\nMessage-ID: <quiet@contoso.com>\r\n\r\nnothing to see\r\n";
    format!(
        "From: Microsoft Exchange <journaling@contoso.com>\r\nTo: journal@contoso.com\r\n\
Subject: Quiet plans\r\nX-MS-Journal-Report:\r\n\
Content-Type: multipart/mixed; boundary=\"JR\"\r\nMIME-Version: 1.0\r\n\r\n\
--JR\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\n\
Sender: boss@contoso.com\r\nSubject: Quiet plans\r\nMessage-Id: <quiet@contoso.com>\r\n\
To: alice@contoso.com\r\nBcc: carol@contoso.com\r\n\
\r\n--JR\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--JR--\r\n"
    )
    .into_bytes()
}

#[test]
fn journal_bcc_is_searchable_only_by_the_sender_the_bcc_recipient_and_auditors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    let mut s = stored("jr-1", "ck1", &["Inbox"], "inbox", 1_704_189_600_000);
    s.mailbox = "journal@contoso.com".into();
    ix.add_version(&s, &journal_report()).expect("add");
    ix.commit().expect("commit");
    let find = |scope: Scope, q: &str| {
        ix.search(
            q,
            &SearchOptions {
                scope,
                limit: 100,
                ..Default::default()
            },
        )
        .expect("search")
        .total
    };
    let user = |a: &str| Scope::User(a.to_owned());
    // Alice sees the journal copy (she received it) but not who else was Bcc'd.
    assert_eq!(find(user("alice@contoso.com"), "quiet"), 1);
    assert_eq!(find(user("alice@contoso.com"), "bcc:carol"), 0);
    assert_eq!(find(user("alice@contoso.com"), "bcc:carol@contoso.com"), 0);
    assert_eq!(find(user("alice@contoso.com"), "quiet bcc:contoso.com"), 0);
    assert_eq!(find(user("alice@contoso.com"), "NOT bcc:carol"), 1);
    // Carol may find what she was Bcc'd on; the sender knows whom he Bcc'd.
    assert_eq!(find(user("carol@contoso.com"), "bcc:carol@contoso.com"), 1);
    assert_eq!(find(user("carol@contoso.com"), "bcc:carol"), 1);
    assert_eq!(find(user("boss@contoso.com"), "bcc:carol"), 1);
    // Auditors and administrators see everything.
    assert_eq!(find(Scope::All, "bcc:carol"), 1);
    // Someone the message never reached sees nothing of it.
    assert_eq!(find(user("mallory@contoso.com"), "quiet"), 0);
    assert_eq!(find(user("mallory@contoso.com"), "bcc:carol"), 0);
}

#[test]
fn journal_reports_are_unwrapped_only_in_journal_mailboxes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = open(dir.path());
    ix.set_journal_mailboxes(Some(vec!["Journal@Contoso.com".into()]));
    // The same report delivered to an ordinary mailbox (anyone can send such a message) and
    // to the journal mailbox.
    let mut planted = stored("jr-planted", "ck1", &["Inbox"], "inbox", 1_704_189_600_000);
    planted.mailbox = "boss@contoso.com".into();
    let mut real = stored("jr-real", "ck1", &["Inbox"], "inbox", 1_704_189_600_000);
    real.mailbox = "journal@contoso.com".into();
    for s in [&planted, &real] {
        MIME.lock()
            .expect("lock")
            .insert(s.manifest_id.clone(), journal_report());
        ix.add_version(s, &journal_report()).expect("add");
    }
    ix.commit().expect("commit");
    let as_alice = |q: &str| {
        ix.search(
            q,
            &SearchOptions {
                scope: Scope::User("alice@contoso.com".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .expect("search")
        .hits
    };
    // Alice sees the journal mailbox's copy (she is on its envelope), not the planted one.
    let hits = as_alice("quiet");
    assert_eq!(ids(&hits), ["jr-real"]);
    assert!(hits[0].embedded.is_some());
    let all = search(&ix, "mailbox:boss@contoso.com", None);
    assert_eq!(ids(&all), ["jr-planted"]);
    assert!(
        all[0].embedded.is_none(),
        "not unwrapped outside the journal mailbox"
    );
    assert!(all[0].visible_to.is_empty());
}
