//! What the CLI refuses, run through the real binary: a rebuilt index with unreadable records
//! does not replace the live one unless asked, and a bearer token is not sent in clear to a
//! server off this machine.

mod common;

use common::mailvault;

#[test]
fn reindex_keeps_the_live_index_when_records_are_unreadable_unless_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keep = dir.path().to_str().expect("utf-8");
    let (code, _, err) = mailvault(&[
        "demo",
        "--json",
        "--users",
        "2",
        "--messages",
        "40",
        "--keep",
        keep,
    ]);
    assert_eq!(code, 0, "demo: {err}");
    let repo = format!("{keep}/repo");
    let pass = format!("{keep}/passphrase");
    let state = format!("{keep}/state");
    let at = [
        "--repo",
        repo.as_str(),
        "--passphrase-file",
        pass.as_str(),
        "--state-dir",
        state.as_str(),
    ];
    let hits = || {
        let mut args = vec!["search", "--json", "--limit", "10000"];
        args.extend(at);
        args.push("");
        let (code, out, err) = mailvault(&args);
        assert_eq!(code, 0, "search: {err}");
        out.lines().count()
    };
    let before = hits();
    assert!(before > 50, "{before} hits");

    // Damage the largest pack in its middle: authenticated encryption refuses what it holds.
    let mut packs: Vec<_> = walk(&dir.path().join("repo/packs"));
    packs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let pack = packs.last().expect("a pack");
    let mut bytes = std::fs::read(pack).expect("read pack");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(pack, bytes).expect("write pack");

    let mut args = vec!["reindex"];
    args.extend(at);
    let (code, _, err) = mailvault(&args);
    assert_ne!(code, 0, "reindex swapped in an index that lacks records");
    assert!(
        err.contains("live index is unchanged") && err.contains("--accept-failures"),
        "{err}"
    );
    assert!(
        err.contains("is damaged"),
        "the unreadable records are named: {err}"
    );
    assert_eq!(hits(), before, "the live index still answers as before");

    args.push("--accept-failures");
    let (code, out, err) = mailvault(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    let after = hits();
    assert!(
        after < before,
        "the accepted rebuild lacks the unreadable items: {after} of {before}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_token_is_not_sent_in_clear_to_a_server_off_this_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token\n").expect("token");
    let token = token.to_str().expect("utf-8");
    // A documentation address (TEST-NET-1): nothing listens there; the refusal comes first.
    let server = "http://192.0.2.10:50051";
    for cmd in [
        vec!["search", "--server", server, "--token-file", token, "x"],
        vec!["get", "--server", server, "--token-file", token, "00"],
        vec![
            "restore",
            "--server",
            server,
            "--token-file",
            token,
            "--folder",
            "a@b.c:Inbox",
        ],
    ] {
        let (code, _, err) = mailvault(&cmd);
        assert_eq!(code, 1, "{cmd:?}: {err}");
        assert!(
            err.contains("plain text")
                && err.contains("192.0.2.10")
                && err.contains("--allow-plaintext"),
            "{cmd:?}: {err}"
        );
        assert!(
            !err.contains("connecting"),
            "{cmd:?} tried to connect: {err}"
        );
    }
    // Allowed in so many words, it does try (and fails to connect: nothing is there).
    let (code, _, err) = mailvault(&[
        "search",
        "--server",
        "http://127.0.0.1:9",
        "--token-file",
        token,
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("connecting"), "loopback is not refused: {err}");
}
