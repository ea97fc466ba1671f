//! Generates a corpus and prints numbers about it; optionally writes it as a maildir tree.
//!
//! `cargo run --release -p mailvault-mailgen --example mailgen -- [SEED] [MESSAGES] [OUT_DIR]`

use std::time::Instant;

use mailvault_mailgen::{GenConfig, generate, write_maildir};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let messages = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let out = args.next();
    let cfg = GenConfig {
        seed,
        messages,
        users: 8,
        malformed: 7,
        ..GenConfig::default()
    };
    let t = Instant::now();
    let corpus = generate(&cfg);
    let el = t.elapsed();
    let mut sizes: Vec<usize> = corpus.items.iter().map(|i| i.mime.len()).collect();
    sizes.sort_unstable();
    let total: usize = sizes.iter().sum();
    let pct = |p: usize| sizes[(sizes.len() - 1) * p / 100];
    println!(
        "messages {messages}, mailboxes {}, items {}, bytes {total} in {:.3} s ({:.0} MB/s)",
        corpus.mailboxes.len(),
        corpus.items.len(),
        el.as_secs_f64(),
        total as f64 / 1e6 / el.as_secs_f64()
    );
    println!(
        "item size min {} p50 {} p90 {} p99 {} max {}",
        sizes[0],
        pct(50),
        pct(90),
        pct(99),
        sizes[sizes.len() - 1]
    );
    let mut classes = std::collections::BTreeMap::new();
    for i in &corpus.items {
        *classes.entry(i.item_class.as_str()).or_insert(0usize) += 1;
    }
    println!("classes {classes:?}");
    if let Some(dir) = out {
        write_maildir(&corpus, std::path::Path::new(&dir))?;
        println!("written to {dir}");
    }
    Ok(())
}
