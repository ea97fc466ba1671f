//! The README's first command, end to end in single-process mode: the demo backs up generated
//! mailboxes from the embedded EWS simulator, runs an incremental, searches (now and as of
//! before a delete), restores the deleted folder and verifies. Then the CLI's own commands run
//! against the repository it kept.

use std::process::Command;

fn mailvault(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .output()
        .expect("run mailvault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_restores_byte_identical_and_the_cli_reads_what_it_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = dir.path().to_str().expect("utf8 path");
    let (code, out, err) = mailvault(&[
        "demo",
        "--json",
        "--users",
        "4",
        "--messages",
        "120",
        "--keep",
        keep,
    ]);
    assert_eq!(code, 0, "demo failed: {err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("demo prints JSON");
    assert_eq!(v["restore_check"], true, "{v}");
    assert_eq!(v["verify_clean"], true, "{v}");
    assert!(v["items"].as_u64().expect("items") > 100, "{v}");
    let searches = v["searches"].as_array().expect("searches");
    // The deleted folder: empty now, full as of before the delete.
    assert_eq!(searches[2]["total"], 0, "{v}");
    assert!(searches[3]["total"].as_u64().expect("total") > 0, "{v}");
    assert!(searches[1]["total"].as_u64().expect("deleted") > 0, "{v}");

    let repo = format!("{keep}/repo");
    let pass = format!("{keep}/passphrase");
    let state = format!("{keep}/state");
    let common = [
        "--repo",
        repo.as_str(),
        "--passphrase-file",
        pass.as_str(),
        "--state-dir",
        state.as_str(),
    ];
    // search --json prints one hit per line; get returns the bytes.
    let mut args = vec!["search", "--json", "--limit", "5"];
    args.extend(common);
    args.push("has:attachment");
    let (code, out, err) = mailvault(&args);
    assert_eq!(code, 0, "{err}");
    let hits: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("hit JSON"))
        .collect();
    assert_eq!(hits.len(), 5, "{out}");
    let id = hits[0]["id"].as_str().expect("id").to_owned();
    let file = dir.path().join("item.eml");
    let mut args = vec!["get"];
    args.extend(common);
    args.extend([id.as_str(), "-o", file.to_str().expect("utf8")]);
    let (code, _, err) = mailvault(&args);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(&file).expect("item written");
    assert_eq!(bytes.len() as u64, hits[0]["size"].as_u64().expect("size"));

    // Reindex from the repository alone gives the same answer.
    let mut args = vec![
        "reindex",
        "--repo",
        repo.as_str(),
        "--passphrase-file",
        pass.as_str(),
    ];
    args.extend(["--state-dir", state.as_str()]);
    let (code, _, err) = mailvault(&args);
    assert_eq!(code, 0, "{err}");
    let mut args = vec!["search", "--json", "--limit", "5"];
    args.extend(common);
    args.push("has:attachment");
    let (_, again, _) = mailvault(&args);
    assert_eq!(again, out, "reindexed search differs");

    // verify and stats; a wrong passphrase is a clear error.
    let (code, out, err) = mailvault(&[
        "verify",
        "--json",
        "--repo",
        &repo,
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"clean\":true"), "{out}");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong\n").expect("write");
    let (code, _, err) = mailvault(&[
        "stats",
        "--repo",
        &repo,
        "--passphrase-file",
        bad.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong passphrase"), "{err}");
}
