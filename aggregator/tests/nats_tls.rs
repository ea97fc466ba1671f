//! The aggregator reaches a NATS server that requires TLS (certificate from a private CA) and a
//! user and password, the way a production JetStream cluster is set up; a wrong password fails
//! with an error that names the server but not the password.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mailvault_format::{BlobStore, MemoryStore};
use mailvault_harness::NatsServer;
use mailvault_runtime::nats::{Component, NatsAuth, connect};

const PASSWORD: &str = "pw-4a8f2c";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregator_stores_items_over_tls_with_a_private_ca_and_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = mailvault_ews_sim::tls::self_signed(&["localhost", "127.0.0.1"]).expect("pki");
    let (cert, key, ca) = (
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert, &pki.identity.cert_chain_pem).expect("cert");
    std::fs::write(&key, &pki.identity.key_pem).expect("key");
    std::fs::write(&ca, &pki.ca_pem).expect("ca");
    let nats = NatsServer::start_with_args(&[
        "--tls",
        "--tlscert",
        cert.to_str().expect("utf-8 path"),
        "--tlskey",
        key.to_str().expect("utf-8 path"),
        "--user",
        "svc-aggregator",
        "--pass",
        PASSWORD,
    ])
    .expect("nats-server with TLS");
    let url = format!("tls://svc-aggregator:{PASSWORD}@127.0.0.1:{}", nats.port());
    let auth = NatsAuth {
        ca_file: Some(ca.clone()),
        ..NatsAuth::default()
    };

    // Without the private CA the server's certificate is not trusted.
    let untrusted = connect(Component::Collector, "test", &url, &NatsAuth::default()).await;
    assert!(untrusted.is_err(), "connected without trusting the CA");

    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn BlobStore> = store.clone();
    init_repo(dyn_store.clone()).await;
    let collector = Collector::with_client(
        connect(Component::Collector, "test", &url, &auth)
            .await
            .expect("TLS"),
    )
    .await;
    let corpus = mailvault_mailgen::generate(&mailvault_mailgen::GenConfig {
        seed: 21,
        messages: 20,
        ..Default::default()
    });
    let items = items_from(&corpus.items, "tls");
    collector.publish_items(&items).await;

    // A wrong password: refused, and the error shows the server but not the password.
    let mut wrong = config(&url.replace(PASSWORD, "not-the-password"));
    wrong.nats.ca_file = Some(ca.clone());
    let refused = Replica::start(wrong, dyn_store.clone())
        .task
        .await
        .expect("task");
    let e = refused.expect_err("wrong password accepted").to_string();
    assert!(
        !e.contains("not-the-password"),
        "password in the error: {e}"
    );
    assert!(e.contains("<redacted>@127.0.0.1"), "{e}");

    let mut cfg = config(&url);
    cfg.nats.ca_file = Some(ca);
    let r = Replica::start(cfg, dyn_store.clone());
    collector.wait_drained(Duration::from_secs(120)).await;
    let report = r.stop().await;
    assert_eq!(report.items, items.len());
    check_repository(dyn_store, &items, 0).await;
}
