//! A nats-server that admits only the per-component NKey users `mailvault nats users` makes,
//! with their subject permissions, plus an unrestricted `admin` user for the test's own checks.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailvault_harness::NatsServer;
use mailvault_runtime::nats::permissions::{self, Names, User};

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
