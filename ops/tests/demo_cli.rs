//! The README's first command, end to end in single-process mode: the demo backs up generated
//! mailboxes from the embedded EWS simulator, runs an incremental, searches (now and as of
//! before a delete), restores the deleted folder and verifies. Then the CLI's own commands run
//! against the repository it kept.

mod common;

use common::mailvault;
use std::process::Command;

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
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("verify JSON");
    assert!(
        v["audit"]["records"].as_u64().expect("audit records") > 0,
        "{v}"
    );

    // The audit log: the searches above are in it, and its chain is intact.
    let (code, out, err) = mailvault(&[
        "audit",
        "--json",
        "--repo",
        &repo,
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("record JSON"))
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["call"] == "Search" && r["target"] == "has:attachment"),
        "{out}"
    );
    let (code, out, _) = mailvault(&[
        "audit",
        "--json",
        "--since",
        "2999-01-01",
        "--repo",
        &repo,
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "nothing from the future");
    // A read command on a path with no repository says so and creates nothing there.
    let nowhere = dir.path().join("no-such-repo");
    let (code, _, err) = mailvault(&[
        "stats",
        "--repo",
        nowhere.to_str().expect("utf8"),
        "--passphrase-file",
        &pass,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no repository at"), "{err}");
    assert!(
        !nowhere.exists(),
        "a read command created {}",
        nowhere.display()
    );
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

/// `init`, `key list`, `stats` and `verify` on an s3:// repository on a real Garage, reached
/// only through the CLI's --s3-* options (no AWS_* variables).
#[test]
fn cli_manages_a_repository_on_garage_through_its_s3_options() {
    let garage = mailvault_harness::Garage::start().expect("Garage");
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, "garage test\n").expect("passphrase");
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, format!("{}\n", garage.secret_access_key())).expect("secret");
    let repo = format!("s3://{}/cli-repo", garage.bucket());
    let endpoint = garage.endpoint();
    let common = [
        "--repo",
        repo.as_str(),
        "--passphrase-file",
        pass.to_str().expect("utf8"),
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-region",
        garage.region(),
        "--s3-access-key-id",
        garage.access_key_id(),
        "--s3-secret-access-key-file",
        secret.to_str().expect("utf8"),
    ];
    let run = |cmd: &[&str], after: &[&str]| {
        let mut args = cmd.to_vec();
        args.extend(common);
        args.extend(after);
        let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
            .args(&args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .expect("run mailvault");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["init"], &[]);
    assert_eq!(code, 0, "init on Garage failed: {err}\n{out}");
    let (code, out, err) = run(&["key"], &["list"]);
    assert_eq!(code, 0, "key list failed: {err}");
    assert!(!out.trim().is_empty(), "no key listed");
    let (code, out, err) = run(&["--json", "stats"], &[]);
    assert_eq!(code, 0, "stats failed: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("stats JSON");
    assert_eq!(v["items"], 0, "{v}");
    assert!(v["stored_bytes"].as_u64().expect("stored") > 0, "{v}");
    let (code, _, err) = run(&["verify"], &[]);
    assert_eq!(code, 0, "verify failed: {err}");
    // A second init must refuse to overwrite the repository it finds.
    let (code, _, err) = run(&["init"], &[]);
    assert_ne!(code, 0, "a second init succeeded");
    assert!(!err.is_empty());
}
