//! Starts a real nats-server (JetStream on) on a free loopback port for one test. Small on
//! purpose: to be replaced by the shared `mailvault-harness` crate.

#![allow(dead_code)] // each test binary uses a different part

pub mod http;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/mailvault/tools/bin/nats-server");
    p.is_file().then_some(p)
}

impl NatsServer {
    /// Starts the server, or returns None when no binary is installed.
    pub async fn start() -> Option<Self> {
        let bin = binary()?;
        let dir = tempfile::tempdir().expect("temp dir");
        // Let the OS pick a free port, then hand it to nats-server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        // Poll until it accepts connections (no fixed sleeps).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {port}"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
