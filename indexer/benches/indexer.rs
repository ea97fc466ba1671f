//! Indexing throughput over generated mail, and search latency over a large synthetic index.
//!
//! `cargo bench -p mailvault-indexer --bench indexer` (env: `BENCH_MESSAGES` generated
//! messages, default 1500; `BENCH_SYNTHETIC` synthetic items, default 1 000 000).

use std::time::{Duration, Instant};

use mailvault_indexer::{Index, ItemStoredInput, Scope, SearchOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn id(n: u64) -> String {
    blake3::hash(&n.to_le_bytes()).to_hex().to_string()
}

fn indexing() {
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 99,
        messages: env("BENCH_MESSAGES", 1500),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Index::open(dir.path()).expect("open");
    let start = Instant::now();
    for (i, g) in corpus.items.iter().enumerate() {
        let s = ItemStoredInput {
            manifest_id: id(i as u64),
            mailbox: g.mailbox.clone(),
            item_id: format!("{i}"),
            change_key: "ck".into(),
            folder_path: g.folder_path.clone(),
            distinguished_folder: g.distinguished.clone().unwrap_or_default(),
            item_class: g.item_class.clone(),
            is_read: g.is_read,
            collected_unix_ms: 1_700_000_000_000 + i as i64,
            format: 1,
            ..Default::default()
        };
        ix.add_version(&s, &g.mime).expect("add");
    }
    ix.commit().expect("commit");
    let secs = start.elapsed().as_secs_f64();
    let n = corpus.items.len();
    println!(
        "indexing (generated mail, one writer thread): {n} items, {:.1} MB in {secs:.2} s = {:.0} items/s, {:.1} MB/s",
        corpus.total_bytes() as f64 / 1e6,
        n as f64 / secs,
        corpus.total_bytes() as f64 / 1e6 / secs
    );
}

const WORDS: &[&str] = &[
    "budget",
    "contract",
    "meeting",
    "invoice",
    "server",
    "deadline",
    "project",
    "review",
    "quarterly",
    "report",
    "customer",
    "renewal",
    "migration",
    "lunch",
    "travel",
    "approval",
    "figures",
    "slides",
    "update",
    "agenda",
    "draft",
    "proposal",
    "security",
    "backup",
    "release",
    "planning",
    "hiring",
    "offsite",
    "training",
    "feedback",
    "roadmap",
    "audit",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn word(&mut self) -> &'static str {
        WORDS[self.below(WORDS.len())]
    }
}

fn synthetic(ix: &Index, n: usize) {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let folders = ["Inbox", "Sent Items", "Inbox/Projects", "Archive"];
    for i in 0..n {
        let user = r.below(1000);
        let peer = r.below(1000);
        let subject = format!("{} {} {}", r.word(), r.word(), r.word());
        let body: Vec<&str> = (0..30).map(|_| r.word()).collect();
        let day = 1 + r.below(28);
        let month = 1 + r.below(12);
        let mime = format!(
            "From: User {peer} <user{peer}@contoso.com>\r\nTo: user{user}@contoso.com\r\n\
Subject: {subject}\r\nDate: {day} {} 2024 10:00:00 +0000\r\nMessage-ID: <{i}@contoso.com>\r\n\
\r\n{}\r\n",
            [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
            ][month - 1],
            body.join(" ")
        );
        let folder = folders[r.below(folders.len())];
        let s = ItemStoredInput {
            manifest_id: id(i as u64),
            mailbox: format!("user{user}@contoso.com"),
            item_id: format!("{i}"),
            change_key: "ck".into(),
            folder_path: folder.split('/').map(str::to_owned).collect(),
            item_class: "IPM.Note".into(),
            is_read: r.below(3) > 0,
            collected_unix_ms: 1_700_000_000_000 + i as i64 * 1000,
            format: 1,
            ..Default::default()
        };
        ix.add_version(&s, mime.as_bytes()).expect("add");
        if i % 100_000 == 99_999 {
            ix.commit().expect("commit");
        }
    }
    ix.commit().expect("commit");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "synthetic load: {n} small items in {secs:.1} s = {:.0} items/s",
        n as f64 / secs
    );
}

type QueryGen = dyn Fn(&mut Rng) -> (String, SearchOptions);

fn latency(ix: &Index) {
    let mut r = Rng(7);
    let mut kinds: Vec<(&str, Vec<Duration>)> = Vec::new();
    let gens: Vec<(&str, Box<QueryGen>)> = vec![
        (
            "one word",
            Box::new(|r| (r.word().to_owned(), SearchOptions::default())),
        ),
        (
            "two words",
            Box::new(|r| {
                (
                    format!("{} {}", r.word(), r.word()),
                    SearchOptions::default(),
                )
            }),
        ),
        (
            "phrase",
            Box::new(|r| {
                (
                    format!("\"{} {}\"", r.word(), r.word()),
                    SearchOptions::default(),
                )
            }),
        ),
        (
            "from: + word",
            Box::new(|r| {
                (
                    format!("from:user{} {}", r.below(1000), r.word()),
                    SearchOptions::default(),
                )
            }),
        ),
        (
            "user scope + is:unread",
            Box::new(|r| {
                (
                    "is:unread".to_owned(),
                    SearchOptions {
                        scope: Scope::User(format!("user{}@contoso.com", r.below(1000))),
                        ..Default::default()
                    },
                )
            }),
        ),
        (
            "as-of + folder + date",
            Box::new(|r| {
                (
                    format!("folder:inbox after:2024-06-01 {}", r.word()),
                    SearchOptions {
                        as_of: Some(1_700_000_000_000 + r.below(1_000_000) as i64 * 1000),
                        ..Default::default()
                    },
                )
            }),
        ),
    ];
    for (name, g) in &gens {
        let mut lat = Vec::new();
        for _ in 0..400 {
            let (q, opts) = g(&mut r);
            let t = Instant::now();
            let page = ix.search(&q, &opts).expect("search");
            lat.push(t.elapsed());
            std::hint::black_box(page);
        }
        lat.sort();
        kinds.push((name, lat));
    }
    let mut all: Vec<Duration> = kinds.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    all.sort();
    let pct = |l: &[Duration], p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    for (name, l) in kinds.iter().map(|(n, l)| (*n, l)).chain([("ALL", &all)]) {
        println!(
            "search {name:<24} p50 {:>8.2?} p95 {:>8.2?} p99 {:>8.2?} (n={}, limit 50)",
            pct(l, 0.50),
            pct(l, 0.95),
            pct(l, 0.99),
            l.len()
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    indexing();
    let dir = tempfile::tempdir().expect("tempdir");
    let ix = Index::open(dir.path()).expect("open");
    let n = env("BENCH_SYNTHETIC", 1_000_000);
    synthetic(&ix, n);
    println!("index holds {} items", ix.doc_count());
    latency(&ix);
}
