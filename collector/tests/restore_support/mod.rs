//! Shared by the restore tests: a simulator over a small maildir (alice en-US with
//! Inbox/Projects and Sent Items, bob de-DE, carol en-US) and an HTTP EWS client for it.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailvault_collector::ews::client::{HttpEws, HttpEwsConfig};
use mailvault_collector::metrics::Metrics;
use mailvault_collector::restore::Restorer;
use mailvault_collector::secret::Secret;
use mailvault_collector::throttle::Backoff;
use mailvault_ews_sim::{SimConfig, SimHandle, Simulator};

pub const DOMAIN: &str = "contoso.com";

/// One RFC 822 message with a unique Message-ID; `pad` bytes of body make large ones.
pub fn message(tag: &str, pad: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@contoso.com>\r\nTo: Bob <bob@contoso.com>\r\nSubject: {tag} \u{00e4}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{tag}@contoso.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody of {tag}.\r\n"
    )
    .into_bytes();
    for i in 0..pad {
        m.push(b"abcdefghijklmnopqrstuvwxyz0123456789\r\n"[i % 38]);
    }
    m
}

/// The `Message-ID` header value (with angle brackets), or empty.
pub fn message_id_of(mime: &[u8]) -> String {
    let text = String::from_utf8_lossy(mime);
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("message-id")
        {
            return v.trim().to_owned();
        }
    }
    String::new()
}

fn write(dir: &Path, rel: &str, files: &[(&str, Vec<u8>)]) {
    let d = dir.join(rel);
    std::fs::create_dir_all(&d).expect("mkdir");
    for (name, body) in files {
        std::fs::write(d.join(name), body).expect("write message");
    }
}

pub struct Env {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    ews: Arc<HttpEws>,
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = dir.path().join("maildir");
        let msgs = |prefix: &str, n: usize| -> Vec<(String, Vec<u8>)> {
            (1..=n)
                .map(|i| (format!("{i}"), message(&format!("{prefix}-{i}"), 0)))
                .collect()
        };
        let as_ref = |v: &Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> { v.clone() };
        for (rel, files) in [
            ("alice/Inbox", msgs("alice-inbox", 4)),
            ("alice/Inbox/Projects", msgs("alice-projects", 3)),
            ("alice/Sent Items", msgs("alice-sent", 1)),
            ("bob/Posteingang", msgs("bob-inbox", 1)),
            ("carol/Inbox", msgs("carol-inbox", 1)),
        ] {
            let files = as_ref(&files);
            let refs: Vec<(&str, Vec<u8>)> =
                files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
            write(&md, rel, &refs);
        }
        let mut cfg = SimConfig::new(DOMAIN);
        cfg.maildir = Some(md);
        cfg.busy_backoff_ms = 50;
        let sim = Simulator::start(cfg).await.expect("simulator");
        let ews = Arc::new(http_ews(&sim.url()));
        Env { sim, dir, ews }
    }

    pub fn addr(&self, user: &str) -> String {
        format!("{user}@{DOMAIN}")
    }

    /// Folder id by display-name path from the top of the information store.
    pub fn folder(&self, mailbox: &str, path: &[&str]) -> String {
        self.sim
            .folders(mailbox)
            .into_iter()
            .find(|f| f.path == path)
            .map(|f| f.id)
            .unwrap_or_else(|| panic!("no folder {path:?} in {mailbox}"))
    }

    pub fn ews(&self) -> Arc<HttpEws> {
        self.ews.clone()
    }

    pub fn restorer(&self) -> Restorer<HttpEws> {
        Restorer::new(self.ews.clone())
    }
}

pub fn http_ews(url: &str) -> HttpEws {
    HttpEws::new(
        HttpEwsConfig {
            url: url.to_owned(),
            username: "svc-mailvault".into(),
            password: Secret::new("secret"),
            auth: mailvault_collector::ews::client::EwsAuth::Basic,
            server_version: "Exchange2016".into(),
            impersonation: true,
            ca_file: None,
            insecure_skip_verify: false,
            request_timeout: Duration::from_secs(30),
            per_server_concurrency: 4,
            per_account_concurrency: 2,
            backoff: Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(2000),
                max_retries: 8,
            },
        },
        Arc::new(Metrics::default()),
    )
    .expect("http client")
}
