//! Loading a maildir tree: every file becomes one item whose MIME (over GetItem) equals the
//! file's bytes. Uses the shared corpus when `MAILVAULT_CORPUS` names it, else a generated
//! tree written to a temporary directory.

mod common;

use common::*;
use mailvault_ews_sim::{SimConfig, Simulator};

#[tokio::test]
async fn maildir_items_are_byte_identical_over_get_item() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (dir, domain) = match std::env::var_os("MAILVAULT_CORPUS") {
        Some(d) => {
            eprintln!(
                "maildir test: using MAILVAULT_CORPUS={}",
                d.to_string_lossy()
            );
            (std::path::PathBuf::from(d), "lists.example")
        }
        None => {
            eprintln!("maildir test: MAILVAULT_CORPUS is unset; using generated mail");
            let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
                seed: 5,
                messages: 80,
                ..Default::default()
            });
            mailvault_mailgen::write_maildir(&corpus, tmp.path()).expect("write maildir");
            (tmp.path().to_path_buf(), "contoso.com")
        }
    };
    let mut cfg = SimConfig::new(domain);
    cfg.maildir = Some(dir.clone());
    let sim = Simulator::start(cfg).await.expect("start");
    let addr = sim.addr();

    let mut files = 0;
    let mut checked = 0;
    for user in std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        if !user.file_type().expect("type").is_dir() {
            continue;
        }
        let mb = format!("{}@{domain}", user.file_name().to_string_lossy());
        for folder in sim.folders(&mb) {
            let mut path = user.path();
            for p in &folder.path {
                path.push(p);
            }
            // files of this folder in the simulator's load order
            let mut names: Vec<String> = std::fs::read_dir(&path)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort_by_key(|n| {
                let num: Option<u64> = n.trim_end_matches('.').parse().ok();
                (num.is_none(), num, n.clone())
            });
            let items = sim.items(&folder.id);
            assert_eq!(items.len(), names.len(), "{mb} {:?}", folder.path);
            files += names.len();
            let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
            for (batch, names) in ids.chunks(100).zip(names.chunks(100)) {
                let r = call(addr, &mb, &get_items_mime(batch)).await;
                let mimes = r.all("MimeContent");
                assert_eq!(mimes.len(), batch.len());
                for (m, name) in mimes.iter().zip(names) {
                    let want = std::fs::read(path.join(name)).expect("read file");
                    assert_eq!(b64(&m.text), want, "{}", path.join(name).display());
                    checked += 1;
                }
            }
        }
    }
    assert!(files > 0);
    assert_eq!(checked, files);
    assert_eq!(sim.total_items(), files);
    eprintln!("maildir test: {files} files, every MIME byte-identical");
}
