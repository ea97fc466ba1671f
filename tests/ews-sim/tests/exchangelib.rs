//! Independent check (issue 3): exchangelib (PyPI), a widely used third-party EWS client, talks
//! to the simulator with impersonation, walks every mailbox's folder tree, counts the items of
//! each folder, fetches every item's MIME and compares it with the source bytes, and syncs the
//! Inbox. If exchangelib cannot talk to the simulator, the simulator is wrong. Twice: Basic over
//! HTTP, and NTLM (requests_ntlm / pyspnego, an independent NTLM implementation) over HTTPS.
//!
//! The venv lives in the tools cache (`$MAILVAULT_TOOLS/exchangelib-venv`, default
//! `~/.cache/mailvault/tools`) and is installed by `ops/scripts/install-tools.sh exchangelib`
//! when missing — the test never skips.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use mailvault_ews_sim::{SimConfig, Simulator};
use mailvault_mailgen::GenConfig;

fn repo_root() -> PathBuf {
    // At run time (cargo sets it for the test process): a binary reused from another checkout
    // through a shared target dir would name that checkout.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.join("../..").canonicalize().expect("repo root")
}

fn python() -> PathBuf {
    let tools = std::env::var_os("MAILVAULT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/mailvault/tools")
        });
    let py = tools.join("exchangelib-venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import exchangelib"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let st = Command::new("bash")
            .arg(repo_root().join("ops/scripts/install-tools.sh"))
            .arg("exchangelib")
            .status()
            .expect("run install-tools.sh exchangelib");
        assert!(st.success(), "installing exchangelib failed: {st}");
    }
    py
}

/// Basic over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_walks_counts_fetches_and_syncs() {
    let stats = check(Transport::BasicHttp).await;
    assert_eq!(stats.ntlm_logons, 0);
}

/// NTLM (requests_ntlm / pyspnego) over HTTPS, trusting the simulator's throw-away CA through
/// `REQUESTS_CA_BUNDLE`, with Basic switched off in the simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchangelib_over_https_with_ntlm() {
    let stats = check(Transport::NtlmHttps).await;
    assert!(
        stats.ntlm_logons >= 1,
        "exchangelib authenticated with NTLM"
    );
    assert_eq!(stats.tls_failures, 0);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    BasicHttp,
    NtlmHttps,
}

async fn check(transport: Transport) -> mailvault_ews_sim::Stats {
    let py = python();
    let gen_cfg = GenConfig {
        seed: 31,
        domain: "contoso.com".into(),
        users: 3,
        messages: 25,
        journal: false,
        localized: true,
        ..GenConfig::default()
    };
    let corpus = mailvault_mailgen::generate(&gen_cfg);
    let mut sc = SimConfig::new("contoso.com");
    sc.generate = Some(gen_cfg);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    if transport == Transport::NtlmHttps {
        let pki = mailvault_ews_sim::tls::self_signed(&["localhost", "127.0.0.1"])
            .expect("make certificates");
        std::fs::write(&ca_file, &pki.ca_pem).expect("write CA");
        sc.tls = Some(pki.identity);
        sc.basic_auth = false;
    }
    let sim = Simulator::start(sc).await.expect("start simulator");

    // The source bytes, one file per item, listed per mailbox and folder path.
    let mut expected: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (n, it) in corpus.items.iter().enumerate() {
        let f = dir.path().join(format!("{n}.eml"));
        std::fs::write(&f, &it.mime).expect("write source file");
        expected
            .entry(it.mailbox.clone())
            .or_default()
            .entry(it.folder_path.join("/"))
            .or_default()
            .push(f.display().to_string());
    }
    let spec = serde_json::json!({
        "url": sim.url(),
        "user": "svc-mailvault",
        "password": "secret",
        "auth": if transport == Transport::NtlmHttps { "ntlm" } else { "basic" },
        "mailboxes": expected,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let script = repo_root().join("tests/ews-sim/scripts/exchangelib_check.py");
    let mut cmd = tokio::process::Command::new(&py);
    cmd.arg(&script).arg(&spec_path);
    if transport == Transport::NtlmHttps {
        cmd.env("REQUESTS_CA_BUNDLE", &ca_file);
    }
    let out = cmd.output().await.expect("run exchangelib check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exchangelib check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    eprintln!("{stdout}");
    let s = sim.stats();
    eprintln!("EWS operations used by exchangelib: {:?}", s.requests);
    for (mb, folders) in &expected {
        let r = &report["mailboxes"][mb];
        let items: usize = folders.values().map(Vec::len).sum();
        assert_eq!(r["items"].as_u64(), Some(items as u64), "{mb}: {r}");
        assert_eq!(r["inbox_second_sync_changes"].as_u64(), Some(0), "{mb}");
    }
    assert!(s.count("SyncFolderItems") > 0 && s.count("GetItem") > 0);
    eprintln!(
        "connections: {}, NTLM logons: {}, auth failures: {}",
        s.connections, s.ntlm_logons, s.auth_failures
    );
    s
}
