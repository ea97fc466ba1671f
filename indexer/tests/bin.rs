//! The `mailvault-indexer` binary's command line: help documents every option, `--check`
//! validates (file + environment overrides + flags), `token` issues a usable token.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mailvault-indexer"));
    c.env_remove("MAILVAULT_INDEXER_CONFIG");
    c
}

#[test]
fn help_documents_every_option() {
    let out = bin().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for key in [
        "[nats]",
        "restore_timeout",
        "[repository]",
        "passphrase_file",
        "refresh_interval",
        "[index]",
        "batch",
        "wait",
        "[api]",
        "listen",
        "tokens_file",
        "tls_cert",
        "tls_key",
        "[s3]",
        "MAILVAULT_<SECTION>_<KEY>",
        "--config",
        "--listen",
        "--index-dir",
        "--tls-cert",
        "--tls-key",
        "--check",
        "--check-config",
        "--log-json",
        "reindex",
        "token",
    ] {
        assert!(help.contains(key), "--help does not mention {key}:\n{help}");
    }
}

#[test]
fn check_validates_file_environment_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("indexer.toml");
    std::fs::write(
        &cfg,
        "[repository]\nurl = \"/tmp/repo\"\npassphrase_file = \"/p\"\n[index]\ndir = \"/tmp/ix\"\n[api]\ntokens_file = \"/t\"\n",
    )
    .expect("write");
    let out = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:7001", "--check"])
        .env("MAILVAULT_NATS_URL", "nats://elsewhere:4222")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nats://elsewhere:4222"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:7001"), "{stdout}");
    assert!(
        !stdout.contains("\"/p\""),
        "passphrase path redacted: {stdout}"
    );

    std::fs::write(
        &cfg,
        "[repository]\nurl = \"ftp://x\"\npassphrase_file = \"/p\"\n[index]\ndir = \"/tmp/ix\"\nbatch = 0\n[api]\ntokens_file = \"/t\"\n",
    )
    .expect("write");
    let out = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("repository.url") && err.contains("index.batch"),
        "{err}"
    );
}

#[test]
fn token_issues_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.toml");
    let out = bin()
        .args([
            "token",
            "--name",
            "ops",
            "--role",
            "operator",
            "--tokens-file",
        ])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tokens = mailvault_indexer::api::Tokens::load(&file).expect("load");
    let p = tokens.authenticate(&token).expect("accepted");
    assert_eq!(p.name, "ops");
    let out = bin()
        .args(["token", "--name", "u", "--role", "user", "--tokens-file"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a user token needs --mailbox");
}
