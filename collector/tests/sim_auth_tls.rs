//! The collector's transport against the EWS simulator: HTTPS with a CA from `ews.ca_file`,
//! an untrusted certificate refused, NTLM (the default) for a full sync, a wrong NTLM password
//! refused with an error that says so.

mod common;

use async_nats::jetstream;
use common::config;
use mailvault_collector::ews::client::EwsAuth;
use mailvault_collector::{RunMode, RunSummary, run};
use mailvault_ews_sim::{SimConfig, SimHandle, Simulator, tls};
use mailvault_harness::NatsServer;
use mailvault_mailgen::GenConfig;

const DOMAIN: &str = "contoso.com";

fn sim_config() -> SimConfig {
    let mut sc = SimConfig::new(DOMAIN);
    sc.generate = Some(GenConfig {
        seed: 31,
        domain: DOMAIN.into(),
        users: 3,
        messages: 40,
        ..GenConfig::default()
    });
    // Only NTLM: a client falling back to Basic would be refused.
    sc.basic_auth = false;
    sc
}

async fn run_once(cfg: mailvault_collector::config::Config) -> RunSummary {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    run(cfg, RunMode::Once, rx).await.expect("collector run")
}

/// Every item of the simulator is on the stream with the MIME bytes the simulator serves.
async fn assert_everything_arrived(nats: &NatsServer, sim: &SimHandle, summary: &RunSummary) {
    assert!(summary.is_clean(), "run not clean: {summary:#?}");
    assert_eq!(summary.captured() as usize, sim.total_items(), "captured");
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut items = 0usize;
    for m in common::stream_messages(&js, 0).await {
        if let Some(env) = m.item() {
            let body = common::body_of(&js, env).await;
            let src = sim
                .item(&env.item_id)
                .expect("item exists in the simulator");
            assert!(*src.mime == *body, "MIME of {} differs", env.item_id);
            items += 1;
        }
    }
    assert_eq!(items, sim.total_items(), "items on the stream");
}

/// All mailbox errors of a run, joined.
fn errors(summary: &RunSummary) -> String {
    summary
        .mailboxes
        .iter()
        .map(|m| format!("{}: {}", m.mailbox, m.error))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntlm_over_https_trusting_ca_file_syncs_everything() {
    let nats = NatsServer::start().expect("start nats-server");
    let pki = tls::self_signed(&["localhost", "127.0.0.1"]).expect("make certificates");
    let mut sc = sim_config();
    sc.tls = Some(pki.identity.clone());
    let sim = Simulator::start(sc).await.expect("start simulator");
    assert!(sim.url().starts_with("https://127.0.0.1:"), "{}", sim.url());
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    let mut cfg = config(dir.path(), &sim.url(), &nats.url(), &sim.mailboxes());
    assert_eq!(cfg.ews.auth, EwsAuth::Ntlm, "NTLM is the default");
    cfg.ews.ca_file = Some(ca);
    let per_server = cfg.limits.per_server_concurrency as u64;

    let summary = run_once(cfg).await;
    assert_everything_arrived(&nats, &sim, &summary).await;
    let s = sim.stats();
    eprintln!(
        "HTTPS+NTLM: {} SOAP requests over {} connections, {} NTLM logons, {} auth failures",
        s.total_requests, s.connections, s.ntlm_logons, s.auth_failures
    );
    assert_eq!(s.tls_failures, 0);
    assert!(s.ntlm_logons >= 1, "NTLM was used");
    // Connection reuse: one handshake per lane connection (at most per_server_concurrency),
    // every AUTHENTICATE on the connection that got its CHALLENGE.
    assert_eq!(s.ntlm_logons, s.connections, "one handshake per connection");
    assert!(
        s.ntlm_logons <= per_server,
        "{} logons for at most {per_server} lanes",
        s.ntlm_logons
    );
    assert_eq!(s.auth_failures, 0);
    assert!(s.total_requests > 4 * s.ntlm_logons);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_refused_with_a_clear_error() {
    let nats = NatsServer::start().expect("start nats-server");
    let pki = tls::self_signed(&["localhost", "127.0.0.1"]).expect("make certificates");
    let mut sc = sim_config();
    sc.tls = Some(pki.identity);
    sc.basic_auth = true;
    let sim = Simulator::start(sc).await.expect("start simulator");
    // NTLM lanes open their own connections, Basic goes through reqwest: both must refuse.
    for auth in [EwsAuth::Ntlm, EwsAuth::Basic] {
        let before = sim.stats().tls_failures;
        let dir = tempfile::tempdir().expect("temp dir");
        // No ca_file: the self-made CA is not among the trusted roots.
        let mut cfg = config(dir.path(), &sim.url(), &nats.url(), &sim.mailboxes());
        cfg.ews.auth = auth;

        let summary = run_once(cfg).await;
        assert!(
            !summary.is_clean(),
            "{auth:?}: a run without trust must fail"
        );
        assert_eq!(summary.captured(), 0);
        let errs = errors(&summary);
        assert!(
            summary.mailboxes.iter().all(|m| !m.error.is_empty()),
            "{auth:?}: every mailbox failed: {errs}"
        );
        assert!(
            errs.contains("TLS handshake") && errs.contains("certificate"),
            "{auth:?}: error names TLS and the certificate: {errs}"
        );
        // The server counts a refused handshake in its own task, after the client gave up.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sim.stats().tls_failures == before && std::time::Instant::now() < end {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let failures = sim.stats().tls_failures - before;
        assert!(failures >= 1, "{auth:?}: the server saw the handshake fail");
        // Not retried: one failed handshake per mailbox, not max_retries of them.
        assert!(
            failures <= summary.mailboxes.len() as u64,
            "{auth:?}: {failures} TLS failures for {} mailboxes: certificate errors must not be \
             retried",
            summary.mailboxes.len()
        );
    }
    assert_eq!(sim.stats().total_requests, 0, "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ntlm_password_fails_naming_authentication() {
    let nats = NatsServer::start().expect("start nats-server");
    let sim = Simulator::start(sim_config())
        .await
        .expect("start simulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), &sim.url(), &nats.url(), &sim.mailboxes());
    std::fs::write(&cfg.ews.password_file, "not-the-password\n").expect("write password");

    let summary = run_once(cfg).await;
    assert!(!summary.is_clean());
    assert_eq!(summary.captured(), 0);
    let errs = errors(&summary);
    assert!(
        errs.contains("NTLM authentication as svc-mailvault failed")
            && errs.contains("wrong user name or password"),
        "error names NTLM authentication: {errs}"
    );
    assert!(
        !errs.contains("not-the-password"),
        "password leaked: {errs}"
    );
    let s = sim.stats();
    assert_eq!(s.ntlm_logons, 0);
    assert!(s.auth_failures >= 1);
    assert_eq!(s.total_requests, 0, "no SOAP request was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_still_works_when_configured() {
    let nats = NatsServer::start().expect("start nats-server");
    let mut sc = sim_config();
    sc.basic_auth = true;
    sc.ntlm_auth = false;
    let sim = Simulator::start(sc).await.expect("start simulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), &sim.url(), &nats.url(), &sim.mailboxes());
    cfg.ews.auth = EwsAuth::Basic;

    let summary = run_once(cfg).await;
    assert_everything_arrived(&nats, &sim, &summary).await;
    let s = sim.stats();
    assert_eq!(s.ntlm_logons, 0);
    assert_eq!(s.auth_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntlm_lane_reuses_its_connection_and_authenticates_a_new_one() {
    use mailvault_collector::ews::Ews as _;
    use mailvault_collector::ews::Mailbox;
    use mailvault_collector::ews::client::{HttpEws, HttpEwsConfig};
    use mailvault_collector::metrics::Metrics;
    use mailvault_collector::secret::Secret;
    use mailvault_collector::throttle::Backoff;
    use std::sync::Arc;
    use std::time::Duration;

    let sim = Simulator::start(sim_config())
        .await
        .expect("start simulator");
    let metrics = Arc::new(Metrics::default());
    let ews = HttpEws::new(
        HttpEwsConfig {
            url: sim.url(),
            username: "CONTOSO\\svc-mailvault".into(),
            password: Secret::new("secret"),
            auth: EwsAuth::Ntlm,
            server_version: "Exchange2013_SP1".into(),
            impersonation: true,
            ca_file: None,
            insecure_skip_verify: false,
            request_timeout: Duration::from_secs(30),
            per_server_concurrency: 1,
            per_account_concurrency: 1,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(100),
                max_retries: 3,
            },
        },
        metrics.clone(),
    )
    .expect("client");
    let mb = Mailbox {
        smtp: sim.mailboxes()[0].clone(),
    };
    let inbox = async || {
        let f = ews
            .get_distinguished_folders(&mb, &["inbox"])
            .await
            .expect("GetFolder inbox");
        assert_eq!(f.len(), 1);
    };
    inbox().await;
    inbox().await;
    inbox().await;
    let s = sim.stats();
    assert_eq!(
        (s.connections, s.ntlm_logons, s.count("GetFolder")),
        (1, 1, 3),
        "three requests, one connection, one handshake"
    );

    // The server ends the connection (as IIS does with idle keep-alive connections): the next
    // request goes out on a new connection with a new handshake.
    sim.close_connections().await;
    inbox().await;
    let s = sim.stats();
    assert_eq!(s.ntlm_logons, 2);
    assert_eq!(s.connections, 2);
    assert_eq!(s.auth_failures, 0, "no request was refused on the way");
    assert_eq!(Metrics::get(&metrics.ntlm_handshakes), 2);
}
