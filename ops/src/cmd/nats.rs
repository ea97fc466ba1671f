//! `mailvault nats`: the NATS users of a distributed install, one per component, each allowed
//! only the subjects it uses (docs/operations.md, "NATS users and permissions").

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use mailvault_runtime::nats::Component;
use mailvault_runtime::nats::permissions::{self, Names};

/// Name of the nats-server configuration fragment `users` writes.
pub const AUTH_CONF: &str = "mailvault-users.conf";

/// Writes an NKey seed per user (`<name>.nk`, 0600) and the server's `authorization` block
/// (`mailvault-users.conf`) into `out`; refuses to replace existing files, since new keys lock
/// out every service still holding the old ones.
pub fn users(out: &Path, collector_sources: &[String], json: bool) -> anyhow::Result<()> {
    for s in collector_sources {
        if s.is_empty() || s.contains(['.', '*', '>', ' ']) {
            bail!("collector source {s:?} is not a NATS subject token");
        }
    }
    let users = permissions::generate_users(collector_sources, &Names::default())
        .context("generating NKey pairs")?;
    let conf = out.join(AUTH_CONF);
    let seeds: Vec<(PathBuf, &str)> = users
        .iter()
        .map(|u| (out.join(format!("{}.nk", u.name)), u.seed.as_str()))
        .collect();
    for p in std::iter::once(&conf).chain(seeds.iter().map(|(p, _)| p)) {
        if p.exists() {
            bail!(
                "{} exists; new keys would lock out the services using the old ones (remove it to \
                 rotate)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (path, seed) in &seeds {
        write_new(path, seed.as_bytes(), 0o600)?;
    }
    let entries: Vec<_> = users.iter().map(|u| u.user.clone()).collect();
    write_new(
        &conf,
        permissions::authorization_block(&entries).as_bytes(),
        0o644,
    )?;
    if json {
        for (u, (path, _)) in users.iter().zip(&seeds) {
            println!(
                "{}",
                serde_json::json!({"user": u.name, "component": u.component.name(),
                    "nkey": u.user.nkey, "seed_file": path})
            );
        }
        println!("{}", serde_json::json!({"server_config": conf}));
    } else {
        for (u, (path, _)) in users.iter().zip(&seeds) {
            println!("{:<24} {}  seed in {}", u.name, u.user.nkey, path.display());
        }
        println!(
            "\nnats-server: add `include {AUTH_CONF}` to its configuration (copy {} beside it) \
             and reload.\nservices: set `[nats] nkey_file` of each to its seed file (0600; it is \
             the password).",
            conf.display()
        );
    }
    Ok(())
}

/// Prints what `component` may publish and subscribe to, as JSON (for operator-mode NATS,
/// where the lists go into the user JWT: `nsc edit user --allow-pub ... --allow-sub ...`).
pub fn permissions_cmd(component: Component, source: Option<&str>) -> anyhow::Result<()> {
    let p = permissions::permissions(component, &Names::default(), source);
    println!("{}", serde_json::to_string_pretty(&p)?);
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
