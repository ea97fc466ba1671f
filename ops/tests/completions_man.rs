//! Shell completions and man pages come from the same clap definitions as `--help`, so they
//! cannot drift from the options: bash accepts the script, and every command has a page.

use std::process::Command;

fn mailvault(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .output()
        .expect("run mailvault")
}

#[test]
fn the_bash_completion_script_parses_and_knows_the_commands() {
    let out = mailvault(&["completions", "bash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).expect("utf-8");
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
        let out = mailvault(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

#[test]
fn every_command_has_a_man_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = mailvault(&["man", "--out", dir.path().to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
