//! Shell completions and man pages come from the same clap definitions as `--help`, so they
//! cannot drift from the options: bash accepts the script, and every command has a page.

mod common;

use std::process::Command;

use common::mailvault;

#[test]
fn the_bash_completion_script_parses_and_knows_the_commands() {
    let (code, script, err) = mailvault(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    for word in [
        "backup",
        "restore",
        "search",
        "token",
        "nats",
        "--passphrase-file",
    ] {
        assert!(script.contains(word), "completion lacks {word}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mailvault.bash");
    std::fs::write(&path, &script).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, out, _) = mailvault(&["completions", shell]);
        assert!(code == 0 && !out.is_empty(), "{shell}");
    }
}

#[test]
fn every_command_has_a_man_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = mailvault(&["man", "--out", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    for page in [
        "mailvault.1",
        "mailvault-backup.1",
        "mailvault-restore.1",
        "mailvault-token-issue.1",
        "mailvault-nats-users.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.contains(".TH") && text.contains(".SH NAME"),
            "{page} is not a man page"
        );
    }
    let backup = std::fs::read_to_string(dir.path().join("mailvault-backup.1")).expect("page");
    assert!(
        backup.contains("passphrase"),
        "the backup page documents its options"
    );
}
