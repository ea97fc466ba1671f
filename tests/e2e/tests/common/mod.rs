//! What the end-to-end tests share: the API client and the archive-vs-simulator comparison,
//! the workspace binaries, and a nats-server that admits only the per-component NKey users
//! `mailvault nats users` makes (plus an unrestricted `admin` for the test's own checks).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use mailvault_ews_sim::SimHandle;
use mailvault_harness::{Garage, NatsServer};
use mailvault_proto::api::v1 as pb;
use mailvault_runtime::nats::permissions::{self, Names, User};
use mailvault_runtime::storage::{S3Config, Secret};
use pb::archive_client::ArchiveClient;
use tonic::transport::Channel;

pub struct SecuredNats {
    pub server: NatsServer,
    /// Seed file per generated user (`collector-exch01`, `aggregator`, `indexer`, ...).
    pub seeds: BTreeMap<String, PathBuf>,
    /// Seed file of a user without restrictions.
    pub admin: PathBuf,
}

impl SecuredNats {
    pub fn start(dir: &Path, collector_sources: &[&str]) -> SecuredNats {
        let sources: Vec<String> = collector_sources.iter().map(|s| (*s).to_owned()).collect();
        let users = permissions::generate_users(&sources, &Names::default()).expect("nkeys");
        let admin = nkeys::KeyPair::new_user();
        let mut entries: Vec<User> = users.iter().map(|u| u.user.clone()).collect();
        entries.push(User {
            nkey: admin.public_key(),
            permissions: permissions::Permissions {
                publish: permissions::Allow {
                    allow: vec![">".into()],
                },
                subscribe: permissions::Allow {
                    allow: vec![">".into()],
                },
            },
        });
        let conf = dir.join("nats-auth.conf");
        std::fs::write(&conf, permissions::authorization_block(&entries)).expect("auth conf");
        let mut seeds = BTreeMap::new();
        for u in &users {
            let path = dir.join(format!("{}.nk", u.name));
            std::fs::write(&path, &u.seed).expect("seed file");
            seeds.insert(u.name.clone(), path);
        }
        let admin_path = dir.join("admin.nk");
        std::fs::write(&admin_path, admin.seed().expect("seed")).expect("seed file");
        let conf = conf.to_str().expect("utf-8 path").to_owned();
        let server = NatsServer::start_with_args(&["-c", &conf]).expect("nats-server with users");
        SecuredNats {
            server,
            seeds,
            admin: admin_path,
        }
    }

    pub fn seed(&self, user: &str) -> PathBuf {
        self.seeds
            .get(user)
            .unwrap_or_else(|| panic!("no NATS user {user}"))
            .clone()
    }

    pub async fn admin_client(&self) -> async_nats::Client {
        let seed = std::fs::read_to_string(&self.admin).expect("admin seed");
        async_nats::ConnectOptions::with_nkey(seed)
            .connect(self.server.url())
            .await
            .expect("admin connects")
    }

    /// The server's permission violations so far, one line each.
    pub fn violations(&self) -> Vec<String> {
        self.server
            .log()
            .lines()
            .filter(|l| l.contains("Permissions Violation") || l.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SecuredNats {
    /// A failing test shows what NATS denied, the usual cause when a user lacks a permission.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for v in self.violations() {
                eprintln!("nats-server: {v}");
            }
        }
    }
}

pub const PASS: &[u8] = b"e2e passphrase";
pub const DOMAIN: &str = "contoso.com";
pub const PREFIX: &str = "repo";

pub type Key = (String, Vec<String>, [u8; 32]);
pub type Multiset = BTreeMap<Key, usize>;

pub fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

pub fn s3_config(g: &Garage) -> S3Config {
    let mut c = S3Config::new(g.bucket());
    c.prefix = format!("{PREFIX}/");
    c.endpoint = Some(g.endpoint());
    c.region = g.region().into();
    c.access_key_id = Some(g.access_key_id().into());
    c.secret_access_key = Some(Secret::new(g.secret_access_key()));
    c
}

#[derive(Clone)]
pub struct Client {
    pub c: ArchiveClient<Channel>,
    pub token: String,
}

impl Client {
    /// Connects to the API at `url` (`http://host:port`) with a bearer token.
    pub async fn connect(url: &str, token: &str) -> Result<Client, tonic::transport::Error> {
        Ok(Client {
            c: ArchiveClient::connect(url.to_owned())
                .await?
                .max_decoding_message_size(64 << 20),
            token: token.to_owned(),
        })
    }

    /// A restore's results, or the API's refusal (or a broken stream: the server went away).
    pub async fn try_restore(
        &mut self,
        req: pb::RestoreRequest,
    ) -> Result<Vec<pb::ItemResult>, tonic::Status> {
        let r = self.req(req);
        let mut s = self.c.restore(r).await?.into_inner();
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            if let Some(r) = p?.result {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The number of items `query` matches, or the API's refusal (e.g. not up yet).
    pub async fn try_total(&mut self, query: &str) -> Result<u64, tonic::Status> {
        let r = self.req(pb::SearchRequest {
            query: query.into(),
            limit: 1,
            ..Default::default()
        });
        let mut s = self.c.search(r).await?.into_inner();
        let mut total = 0;
        while let Some(p) = s.next().await {
            total = p?.total;
        }
        Ok(total)
    }
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().expect("header"),
        );
        r
    }

    pub async fn total(&mut self, query: &str) -> u64 {
        let r = self.req(pb::SearchRequest {
            query: query.into(),
            limit: 1,
            ..Default::default()
        });
        let mut s = self.c.search(r).await.expect("search").into_inner();
        let mut total = 0;
        while let Some(p) = s.next().await {
            total = p.expect("page").total;
        }
        total
    }

    pub async fn search(&mut self, query: &str, as_of: i64) -> Vec<pb::Hit> {
        let r = self.req(pb::SearchRequest {
            query: query.into(),
            as_of_unix_ms: as_of,
            page_size: 1000,
            ..Default::default()
        });
        let mut s = self.c.search(r).await.expect("search").into_inner();
        let mut hits = Vec::new();
        while let Some(p) = s.next().await {
            hits.extend(p.expect("page").hits);
        }
        hits
    }

    pub async fn get(&mut self, id: &str) -> Vec<u8> {
        let r = self.req(pb::GetItemRequest { id: id.into() });
        let mut s = self.c.get_item(r).await.expect("get item").into_inner();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("chunk").data);
        }
        out
    }

    pub async fn folders(&mut self, mailbox: &str, as_of: i64) -> Vec<pb::Folder> {
        let r = self.req(pb::ListFoldersRequest {
            mailbox: mailbox.into(),
            as_of_unix_ms: as_of,
        });
        self.c
            .list_folders(r)
            .await
            .expect("list folders")
            .into_inner()
            .folders
    }

    pub async fn restore(&mut self, req: pb::RestoreRequest) -> Vec<pb::ItemResult> {
        let r = self.req(req);
        let mut s = self.c.restore(r).await.expect("restore").into_inner();
        let mut out = Vec::new();
        while let Some(p) = s.next().await {
            if let Some(r) = p.expect("restore progress").result {
                out.push(r);
            }
        }
        out
    }
}

/// Every current item: (mailbox, folder, hash of the bytes GetItem returns) plus the hits.
/// Items are fetched 8 at a time (the real corpus has thousands).
pub async fn archive_contents(c: &mut Client) -> (Multiset, Vec<(pb::Hit, [u8; 32])>) {
    let hits = c.search("", 0).await;
    let fetched: Vec<(pb::Hit, [u8; 32])> = futures::stream::iter(hits)
        .map(|h| {
            let mut c = c.clone();
            async move {
                let bytes = c.get(&h.id).await;
                assert_eq!(bytes.len() as u64, h.size, "size of {}", h.id);
                let hh = hash(&bytes);
                (h, hh)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut m = Multiset::new();
    for (h, hh) in &fetched {
        *m.entry((h.mailbox.to_lowercase(), h.folder_path.clone(), *hh))
            .or_default() += 1;
    }
    (m, fetched)
}

pub fn diff(a: &Multiset, b: &Multiset) -> String {
    let mut s = String::new();
    for (k, n) in a {
        let m = b.get(k).copied().unwrap_or(0);
        if m != *n {
            s.push_str(&format!(
                "  {} {:?}: simulator {n}, archive {m}\n",
                k.0, k.1
            ));
        }
    }
    for (k, m) in b {
        if !a.contains_key(k) {
            s.push_str(&format!("  {} {:?}: simulator 0, archive {m}\n", k.0, k.1));
        }
    }
    s
}

/// (mailbox, folder path, content hash) of every item `sim` holds.
pub fn sim_contents(sim: &SimHandle) -> Multiset {
    let mut m = Multiset::new();
    for mb in sim.mailboxes() {
        for f in sim.folders(&mb) {
            for it in sim.items(&f.id) {
                *m.entry((mb.to_lowercase(), f.path.clone(), hash(&it.mime)))
                    .or_default() += 1;
            }
        }
    }
    m
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A small plain-text message to `mailbox` with `subject`.
pub fn message(mailbox: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@{DOMAIN}>\r\nTo: {mailbox}\r\nSubject: {subject}\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{}@{DOMAIN}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{subject}\r\n",
        subject.replace(' ', "."),
    )
    .into_bytes()
}

/// `target/<profile>` of this test executable, where cargo puts the workspace's binaries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target/<profile>/deps/<test>")
}

/// The workspace binary `name` (of the package of the same name), built if missing.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    if path.is_file() {
        return path;
    }
    let profile = profile_dir();
    let target_dir = profile.parent().expect("target dir");
    let profile_name = profile
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name");
    let profile_arg = if profile_name == "debug" {
        "dev"
    } else {
        profile_name
    };
    let package = match name {
        "mailvault" => "mailvault-ops",
        other => other,
    };
    eprintln!("building {name} (cargo build -p {package} --bin {name})");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--locked", "--quiet", "-p", package, "--bin", name])
        .args(["--profile", profile_arg])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(mailvault_harness::repo_root())
        .status()
        .expect("running cargo build");
    assert!(status.success() && path.is_file(), "building {name} failed");
    path
}
