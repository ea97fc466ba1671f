//! Write-path benchmark: MB/s per core for each stage and for the whole write path, the ratio of
//! the write path to plain zstd -3 on the same bytes, repository size against raw size, and the
//! dedupe of one message delivered to many mailboxes plus its journal report.
//!
//! `cargo bench -p mailvault-format --bench write_path` — on the real corpus when
//! `MAILVAULT_CORPUS` is set, on generated mail otherwise. Single-threaded: numbers are per core.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use futures::executor::block_on;
use mailvault_format::chunker::Chunker;
use mailvault_format::compress::Compressor;
use mailvault_format::{
    ChunkerParams, InitOptions, ItemManifest, KdfParams, MemoryStore, Repository,
};

fn load_corpus(dir: &Path, out: &mut Vec<Vec<u8>>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            load_corpus(&p, out);
        } else if p.parent() != Some(dir) || dir.components().count() > 0 {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".md") || name.ends_with(".tsv") {
                continue;
            }
            if let Ok(b) = std::fs::read(&p) {
                out.push(b);
            }
        }
    }
}

fn messages() -> (String, Vec<Vec<u8>>) {
    match std::env::var_os("MAILVAULT_CORPUS") {
        Some(dir) => {
            let mut v = Vec::new();
            load_corpus(Path::new(&dir), &mut v);
            (format!("real corpus {}", Path::new(&dir).display()), v)
        }
        None => {
            let cfg = mailvault_mailgen::GenConfig {
                messages: 4000,
                ..Default::default()
            };
            let corpus = mailvault_mailgen::generate(&cfg);
            (
                "generated mail (MAILVAULT_CORPUS unset)".into(),
                corpus.items.into_iter().map(|i| i.mime).collect(),
            )
        }
    }
}

/// Best of `rounds` timings of `f`, so a busy machine disturbs the result less.
fn best(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn store_all(
    msgs: &[Vec<u8>],
    opts: InitOptions,
    dict_samples: usize,
) -> (u64, mailvault_format::WriteStats, Duration) {
    let store = Arc::new(MemoryStore::new());
    let repo = block_on(Repository::init(store.clone(), b"bench", opts)).expect("init");
    if dict_samples > 0 {
        let params = repo.chunker_params();
        let mut samples = Vec::new();
        for m in msgs.iter().take(dict_samples) {
            samples.extend(
                mailvault_format::chunker::chunk_all(params, m)
                    .into_iter()
                    .filter(|c| c.len() < 64 * 1024),
            );
        }
        block_on(repo.train_dictionary(&samples, 112 * 1024)).expect("dict");
    }
    let mut w = repo.writer().expect("writer");
    let t = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let meta = ItemManifest {
            mailbox: "bench@example.org".into(),
            item_id: format!("item-{i}"),
            change_key: "ck".into(),
            folder_path: vec!["Inbox".into()],
            item_class: "IPM.Note".into(),
            ..Default::default()
        };
        w.add_item(meta, m).expect("add");
    }
    block_on(w.flush()).expect("flush");
    let took = t.elapsed();
    (store.bytes_under(""), w.stats(), took)
}

fn main() {
    let (what, msgs) = messages();
    let raw: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    println!(
        "mailvault write-path benchmark on {what}: {} messages, {:.1} MB",
        msgs.len(),
        raw as f64 / 1e6
    );
    let params = ChunkerParams::default();
    let rounds = 3;

    let chunk_t = best(rounds, || {
        let mut c = Chunker::new(params);
        for m in &msgs {
            c.push(m, &mut |_| {});
            c.finish(&mut |_| {});
        }
    });
    let key = [7u8; 32];
    let hash_t = best(rounds, || {
        for m in &msgs {
            std::hint::black_box(blake3::keyed_hash(&key, m));
        }
    });
    let mut zc = Compressor::new(3, None).expect("zstd");
    let mut compressed = 0u64;
    let comp_t = best(rounds, || {
        compressed = 0;
        for m in &msgs {
            compressed += zc.compress(m).2.len() as u64;
        }
    });
    let cipher = aes_gcm_siv::Aes256GcmSiv::new((&key).into());
    let mut bufs: Vec<Vec<u8>> = msgs.clone();
    let enc_t = best(rounds, || {
        for b in bufs.iter_mut() {
            let _ = cipher.encrypt_in_place_detached((&[0u8; 12]).into(), b"", b);
        }
    });
    let plain_t = best(rounds, || {
        for m in &msgs {
            std::hint::black_box(zstd::bulk::compress(m, 3).expect("zstd"));
        }
    });
    let plain_bytes: u64 = msgs
        .iter()
        .map(|m| zstd::bulk::compress(m, 3).map_or(0, |c| c.len() as u64))
        .sum();

    let fast = InitOptions {
        kdf: KdfParams::fast_insecure(),
        ..InitOptions::default()
    };
    let mut write_t = Duration::MAX;
    let mut stored = 0;
    for _ in 0..rounds {
        let (s, _, t) = store_all(&msgs, fast.clone(), 0);
        write_t = write_t.min(t);
        stored = s;
    }
    let mut dict_t = Duration::MAX;
    let mut stored_dict = 0;
    let mut stats = Default::default();
    for _ in 0..rounds {
        let (s, st, t) = store_all(&msgs, fast.clone(), 1000);
        dict_t = dict_t.min(t);
        stored_dict = s;
        stats = st;
    }

    println!();
    println!("{:<44} {:>10}", "stage (one core)", "MB/s");
    println!(
        "{:<44} {:>10.0}",
        "chunk (mail-aware + FastCDC 16/64/256 KiB)",
        mbps(raw, chunk_t)
    );
    println!("{:<44} {:>10.0}", "hash (keyed BLAKE3)", mbps(raw, hash_t));
    println!(
        "{:<44} {:>10.0}",
        "compress (zstd -3, per message)",
        mbps(raw, comp_t)
    );
    println!(
        "{:<44} {:>10.0}",
        "encrypt (AES-256-GCM-SIV)",
        mbps(raw, enc_t)
    );
    println!(
        "{:<44} {:>10.0}",
        "plain zstd -3 (per message, reference)",
        mbps(raw, plain_t)
    );
    println!(
        "{:<44} {:>10.0}",
        "whole write path, no dictionary",
        mbps(raw, write_t)
    );
    println!(
        "{:<44} {:>10.0}",
        "whole write path, with mail dictionary",
        mbps(raw, dict_t)
    );
    println!();
    println!(
        "ratio write path / plain zstd -3: {:.2} (no dictionary), {:.2} (dictionary)",
        plain_t.as_secs_f64() / write_t.as_secs_f64(),
        plain_t.as_secs_f64() / dict_t.as_secs_f64()
    );
    println!();
    println!(
        "repository size, every message one item (raw {:.1} MB):",
        raw as f64 / 1e6
    );
    println!(
        "  plain zstd -3 per message      {:>8.1} MB  {:>5.1} %",
        plain_bytes as f64 / 1e6,
        100.0 * plain_bytes as f64 / raw as f64
    );
    println!(
        "  mailvault, no dictionary       {:>8.1} MB  {:>5.1} %",
        stored as f64 / 1e6,
        100.0 * stored as f64 / raw as f64
    );
    println!(
        "  mailvault, mail dictionary     {:>8.1} MB  {:>5.1} %   ({} chunks, {} packs)",
        stored_dict as f64 / 1e6,
        100.0 * stored_dict as f64 / raw as f64,
        stats.chunks,
        stats.packs
    );

    for avg in [16u32, 64, 256] {
        let p = ChunkerParams {
            min_size: avg * 256,
            avg_size: avg * 1024,
            max_size: avg * 4096,
            ..ChunkerParams::default()
        };
        let (s, st, _) = store_all(
            &msgs,
            InitOptions {
                chunker: p,
                ..fast.clone()
            },
            1000,
        );
        println!(
            "  chunker avg {avg:>3} KiB (min {:>3}, max {:>4}): {:>8.1} MB, {} chunks",
            avg / 4,
            avg * 4,
            s as f64 / 1e6,
            st.chunks
        );
    }

    for group in [16u32, 64, 128, 512] {
        let (s, st, t) = store_all(
            &msgs,
            InitOptions {
                group_target_bytes: group * 1024,
                ..fast.clone()
            },
            1000,
        );
        println!(
            "  group target {group:>3} KiB:  {:>8.1} MB ({:.1} %), {} packs, write path {:.0} MB/s",
            s as f64 / 1e6,
            100.0 * s as f64 / raw as f64,
            st.packs,
            mbps(raw, t)
        );
    }

    println!();
    println!("dedupe: one message to N mailboxes (Sent Items + N Inbox copies + journal report)");
    for (n, att) in [(10usize, 0usize), (50, 0), (50, 200_000)] {
        let items = mailvault_mailgen::fanout(42, n, att, true);
        let copies: Vec<Vec<u8>> = items.iter().map(|i| i.mime.clone()).collect();
        let logical: u64 = copies.iter().map(|m| m.len() as u64).sum();
        let distinct = copies.iter().find(|_| true).map_or(0, |m| m.len() as u64);
        let (s, _, _) = store_all(&copies, fast.clone(), 0);
        println!(
            "  N={n:<3} attachment {att:>7} B: {} copies, {:.1} KB logical, one copy {:.1} KB, stored {:.1} KB ({:.2}× one copy, {:.1} % of logical)",
            copies.len(),
            logical as f64 / 1e3,
            distinct as f64 / 1e3,
            s as f64 / 1e3,
            s as f64 / distinct.max(1) as f64,
            100.0 * s as f64 / logical as f64
        );
    }
}
