//! `mailvault nats users` writes what a real nats-server accepts: each seed logs its component
//! in, a key it did not make is refused, and nothing is overwritten on a second run.

use std::os::unix::fs::PermissionsExt as _;
mod common;

use common::mailvault;

use mailvault_harness::NatsServer;
use mailvault_runtime::nats::{Component, NatsAuth, connect};

#[tokio::test]
async fn the_users_it_writes_log_in_to_a_real_nats_server_and_strangers_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("users");
    let out_s = out.to_str().expect("utf-8");
    let (code, stdout, err) =
        mailvault(&["nats", "users", "--out", out_s, "--collector", "exch01"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("collector-exch01"), "{stdout}");
    for name in ["collector-exch01", "aggregator", "indexer"] {
        let mode = std::fs::metadata(out.join(format!("{name}.nk")))
            .expect("seed file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.nk");
    }

    let conf = out.join("mailvault-users.conf");
    let nats = NatsServer::start_with_args(&["-c", conf.to_str().expect("utf-8")])
        .expect("nats-server takes the generated configuration");
    let as_user = |seed: Option<std::path::PathBuf>| NatsAuth {
        nkey_file: seed,
        ..NatsAuth::default()
    };
    for (name, component) in [
        ("collector-exch01", Component::Collector),
        ("aggregator", Component::Aggregator),
        ("indexer", Component::Indexer),
    ] {
        let c = connect(
            component,
            name,
            &nats.url(),
            &as_user(Some(out.join(format!("{name}.nk")))),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} logs in: {e}"));
        c.flush().await.expect("round trip");
    }
    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().expect("seed")).expect("write");
    assert!(
        connect(
            Component::Indexer,
            "stranger",
            &nats.url(),
            &as_user(Some(stranger))
        )
        .await
        .is_err(),
        "a key it did not make logged in"
    );
    assert!(
        connect(Component::Indexer, "anonymous", &nats.url(), &as_user(None))
            .await
            .is_err(),
        "logged in without a key"
    );

    // A second run would lock the services out: refused, files unchanged.
    let before = std::fs::read(&conf).expect("conf");
    let (code, _, err) = mailvault(&["nats", "users", "--out", out_s]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&conf).expect("conf"), before);
}
