//! Real servers for tests, on free loopback ports: `nats-server` with JetStream, a
//! single-node Garage (S3) and Prometheus ([`Prometheus`]). Plain `std`, usable from sync and async tests alike.
//!
//! Binaries come from the project's tools cache (`ops/scripts/install-tools.sh`), else `PATH`;
//! when neither has a suitable one, the script is run to install it. A test never skips because
//! a server is missing. Every server is torn down on drop, also when the test panics.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod prometheus;
pub use prometheus::Prometheus;
mod otel;
pub use otel::{OtelCollector, ReceivedSpan, parse_traceparent};

/// How long a server may take to come up before the harness gives up.
const START_DEADLINE: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Harness failures carry what the server printed, to make CI logs self-explanatory.
#[derive(Debug)]
pub struct HarnessError(String);

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

impl From<io::Error> for HarnessError {
    fn from(e: io::Error) -> Self {
        HarnessError(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, HarnessError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(HarnessError(msg.into()))
}

/// The repository root: the checkout the running test belongs to. Looked up at run time from
/// the crate under test (cargo sets `CARGO_MANIFEST_DIR` for it): a target directory shared
/// between checkouts (CI's cache) may hold a harness compiled in another one, and the path
/// baked in then names the wrong tree, or one that is gone.
pub fn repo_root() -> PathBuf {
    let is_root = |d: &Path| d.join("Cargo.lock").is_file() && d.join("ops/scripts").is_dir();
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| dir.ancestors().find(|d| is_root(d)).map(Path::to_path_buf))
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        })
}

/// Where `install-tools.sh` puts binaries.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("MAILVAULT_TOOLS") {
        Some(dir) => PathBuf::from(dir).join("bin"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/mailvault/tools/bin")
        }
    }
}

/// What a binary's `--version` must contain (one of) and the install script's tool name.
/// Garage built from crates.io reports `garage cargo:2.5.0`, release builds `garage v2.5.0`.
fn tool_spec(name: &str) -> (&'static [&'static str], &'static str) {
    match name {
        "nats-server" => (&["v2.15."], "nats"),
        "garage" => (&["cargo:2.", "v2."], "garage"),
        "prometheus" => (&["prometheus, version "], "prometheus"),
        // PyPI rotel 0.0.1a15 bundles rotel 0.0.1-alpha10.
        "rotel" => (&["rotel 0.0.1-alpha10"], "otel"),
        // Debian's prometheus package ships it.
        "promtool" => (&["promtool, version "], "prometheus"),
        _ => (&[""], "all"),
    }
}

fn suitable(path: &Path, want: &[&str]) -> bool {
    path.is_file()
        && Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                want.iter().any(|w| text.contains(w))
            })
            .unwrap_or(false)
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let (want, _) = tool_spec(name);
    let cached = tools_dir().join(name);
    if suitable(&cached, want) {
        return Some(cached);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| suitable(p, want))
    })
}

/// The path of a tool binary (`nats-server`, `garage`), installing it if needed.
pub fn tools_bin(name: &str) -> Result<PathBuf> {
    // One install at a time per process; the script itself is safe across processes.
    static INSTALL: Mutex<()> = Mutex::new(());
    if let Some(p) = find_tool(name) {
        return Ok(p);
    }
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = find_tool(name) {
        return Ok(p);
    }
    let (_, which) = tool_spec(name);
    let script = repo_root().join("ops/scripts/install-tools.sh");
    eprintln!(
        "harness: {name} not found, running {} {which}",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg(which)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return err(format!(
            "{} {which} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    find_tool(name).ok_or_else(|| {
        HarnessError(format!(
            "{name} still missing after {} {which}",
            script.display()
        ))
    })
}

/// A loopback port nothing listens on right now, never one this process handed out before.
///
/// Between this check and the server's own bind the port is free for anyone to take, so the
/// ports come from below the kernel's ephemeral range: the kernel never gives them to a client
/// socket's local end (the tests' many NATS and HTTP clients) nor to another `bind(0)`.
/// Each process starts at its own offset, so two test binaries at once rarely meet; servers
/// that still lose a race are started again on fresh ports ([`retry_port_clash`]).
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = fixed_port_range();
    let span = u32::from(high - low);
    if span < 1000 {
        // An ephemeral range reaching down to the low ports leaves no safe range: ask the kernel.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        return Ok(listener.local_addr()?.port());
    }
    let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
    let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = low + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    err(format!("no free loopback port in {low}..{high}"))
}

/// Ports tests may pick themselves: from 10000 up to where the ephemeral range starts.
fn fixed_port_range() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (LOW, ephemeral_low.max(LOW))
}

/// Whether a server failed to start because a port it was given was taken meanwhile.
fn port_clash(e: &HarnessError) -> bool {
    e.0.to_ascii_lowercase().contains("address already in use")
}

/// Runs `start` (which picks its ports with [`free_port`]) again while it fails on a port
/// that something else took between the pick and the server's bind.
pub fn retry_port_clash<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match start() {
            Err(e) if attempt < ATTEMPTS && port_clash(&e) => {
                eprintln!(
                    "harness: a port was taken before the server bound it, again on fresh ports: {e}"
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Cases per property of the hostile-input tests: `MAILVAULT_FUZZ_CASES` when set (the long
/// form, `ops/scripts/fuzz.sh`), else `default` (the suite's short form).
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("MAILVAULT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `ready` until it returns true or the deadline passes.
pub fn wait_until(deadline: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The HTTP status of `GET path` on a loopback port, if anything answered.
pub fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A child process whose output goes to log files in `dir`.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(cmd: &mut Command, dir: &Path, tag: &str) -> Result<Self> {
        let stdout = dir.join(format!("{tag}.stdout.log"));
        let stderr = dir.join(format!("{tag}.stderr.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .map_err(|e| HarnessError(format!("spawning {cmd:?}: {e}")))?;
        Ok(Self {
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// The process's output so far, for error messages.
    fn output(&self) -> String {
        let tail = |p: &Path| {
            let s = fs::read_to_string(p).unwrap_or_default();
            let start = s.len().saturating_sub(4000);
            s.get(start..).unwrap_or_default().to_owned()
        };
        format!(
            "--- stderr ---\n{}\n--- stdout ---\n{}",
            tail(&self.stderr),
            tail(&self.stdout)
        )
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `ready`, failing early with the server's output if the process dies.
fn wait_ready(proc: &mut Proc, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let mut died = None;
    let ok = wait_until(START_DEADLINE, || {
        if let Some(status) = proc.exited() {
            died = Some(status);
            return true;
        }
        ready()
    });
    match (ok, died) {
        (true, None) => Ok(()),
        (_, Some(status)) => err(format!(
            "{what} exited ({status}) before it was ready\n{}",
            proc.output()
        )),
        (false, None) => err(format!(
            "{what} not ready after {START_DEADLINE:?}\n{}",
            proc.output()
        )),
    }
}

/// A `nats-server` with JetStream on a free loopback port and a temporary store directory.
#[derive(Debug)]
pub struct NatsServer {
    proc: Option<Proc>,
    port: u16,
    monitor_port: u16,
    bin: PathBuf,
    dir: TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[])
    }

    /// With more `nats-server` flags, e.g. `--tls --tlscert F --tlskey F --user U --pass P`
    /// (the monitoring port that tells readiness stays plain HTTP).
    pub fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        let bin = tools_bin("nats-server")?;
        retry_port_clash(|| {
            let dir = tempfile::Builder::new()
                .prefix("mailvault-nats-")
                .tempdir()?;
            let mut server = Self {
                proc: None,
                port: free_port()?,
                monitor_port: free_port()?,
                bin: bin.clone(),
                dir,
                extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            };
            server.spawn()?;
            Ok(server)
        })
    }

    fn spawn(&mut self) -> Result<()> {
        let store = self.dir.path().join("jetstream");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(&store)
            .args(&self.extra_args);
        let mut proc = Proc::spawn(&mut cmd, self.dir.path(), "nats-server")?;
        let monitor = self.monitor_port;
        wait_ready(&mut proc, "nats-server", || {
            http_get_status(monitor, "/healthz") == Some(200)
        })?;
        self.proc = Some(proc);
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`
    /// The server's process id while it runs (benchmarks sample its memory).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server has logged so far (it logs to stderr), e.g. permission violations.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| fs::read_to_string(&p.stderr).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The JetStream store directory (survives `restart`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Kills the server (like a crash) and starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Kills the server, keeping its store; `restart` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// A single-node Garage with one bucket and one key allowed on it.
pub struct Garage {
    proc: Option<Proc>,
    bin: PathBuf,
    dir: TempDir,
    config: PathBuf,
    s3_port: u16,
    admin_port: u16,
    bucket: String,
    access_key_id: String,
    secret_access_key: String,
}

impl fmt::Debug for Garage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Garage")
            .field("config", &self.config)
            .field("s3_port", &self.s3_port)
            .field("admin_port", &self.admin_port)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("running", &self.proc.is_some())
            .finish_non_exhaustive()
    }
}

impl Garage {
    pub const REGION: &'static str = "garage";

    /// Starts Garage and provisions bucket `mailvault-test`.
    pub fn start() -> Result<Self> {
        Self::start_with_bucket("mailvault-test")
    }

    pub fn start_with_bucket(bucket: &str) -> Result<Self> {
        let bin = tools_bin("garage")?;
        retry_port_clash(|| Self::start_once(&bin, bucket))
    }

    fn start_once(bin: &Path, bucket: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mailvault-garage-")
            .tempdir()?;
        let rpc_port = free_port()?;
        let s3_port = free_port()?;
        let admin_port = free_port()?;
        let config = dir.path().join("garage.toml");
        let base = dir.path().display();
        fs::write(
            &config,
            format!(
                r#"metadata_dir = "{base}/meta"
data_dir = "{base}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
                secret = random_hex(32)?,
                region = Self::REGION,
            ),
        )?;
        let mut garage = Self {
            proc: None,
            bin: bin.to_path_buf(),
            dir,
            config,
            s3_port,
            admin_port,
            bucket: bucket.to_owned(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
        };
        garage.spawn(false)?;
        garage.provision()?;
        garage.wait_healthy()?;
        Ok(garage)
    }

    fn spawn(&mut self, wait_healthy: bool) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.config).arg("server");
        cmd.env("RUST_LOG", "garage=warn");
        let mut proc = Proc::spawn(&mut cmd, self.dir.path(), "garage")?;
        let admin = self.admin_port;
        // The admin API answers once the node runs; /health is 200 only with a layout.
        wait_ready(&mut proc, "garage", || {
            http_get_status(admin, "/health").is_some()
        })?;
        self.proc = Some(proc);
        if wait_healthy {
            self.wait_healthy()?;
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let admin = self.admin_port;
        let s3 = self.s3_port;
        let proc = self
            .proc
            .as_mut()
            .ok_or_else(|| HarnessError("garage is stopped".into()))?;
        wait_ready(proc, "garage (healthy)", || {
            http_get_status(admin, "/health") == Some(200) && http_get_status(s3, "/").is_some()
        })
    }

    /// Runs a garage CLI command against this node.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out: Output = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return err(format!(
                "garage {}: {}\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn provision(&mut self) -> Result<()> {
        let node = self.cli(&["node", "id", "-q"])?;
        let node_id = node
            .trim()
            .split('@')
            .next()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| HarnessError(format!("garage node id: unexpected output {node:?}")))?
            .to_owned();
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        let bucket = self.bucket.clone();
        self.create_bucket(&bucket)?;
        let key = self.cli(&["key", "create", "mailvault-test-key"])?;
        let field = |label: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
                .filter(|v| !v.is_empty())
                .ok_or_else(|| HarnessError(format!("garage key create: no {label:?} in {key}")))
        };
        self.access_key_id = field("Key ID:")?;
        self.secret_access_key = field("Secret key:")?;
        self.allow(&bucket)?;
        Ok(())
    }

    /// Creates another bucket the harness key may read and write.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        self.cli(&["bucket", "create", name])?;
        if !self.access_key_id.is_empty() {
            self.allow(name)?;
        }
        Ok(())
    }

    fn allow(&self, bucket: &str) -> Result<()> {
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            bucket,
            "--key",
            &self.access_key_id,
        ])
        .map(drop)
    }

    /// `http://127.0.0.1:PORT`, the S3 API.
    /// Garage's process id while it runs (benchmarks sample its memory).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn region(&self) -> &str {
        Self::REGION
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// Kills the server (like a crash or an outage), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the server again with the same config, ports and data, once healthy.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop();
        self.spawn(true)
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Calls `check` every 100 ms until it returns `Some`, or panics after `deadline` naming
/// `what`, with `context()` (what the test saw by then). `check` may block (read a log, ask a
/// server): it runs in `block_in_place`, so call this from a multi-threaded tokio runtime.
pub async fn poll<T>(
    what: &str,
    deadline: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(v) = tokio::task::block_in_place(&mut check) {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "{what}: not within {deadline:?}\n{}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_starts_restarts_and_cleans_up() {
        let mut nats = NatsServer::start().expect("nats-server starts");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, nats.port()));
        TcpStream::connect(addr).expect("client port open");
        let store = nats.store_dir();
        nats.restart().expect("restart");
        TcpStream::connect(addr).expect("client port open after restart");
        let dir = nats.dir.path().to_path_buf();
        drop(nats);
        assert!(!dir.exists() && !store.exists(), "temp dir removed on drop");
        assert!(TcpStream::connect(addr).is_err(), "server gone after drop");
    }

    #[test]
    fn garage_starts_provisions_and_survives_a_restart() {
        let mut garage = Garage::start().expect("garage starts");
        assert!(garage.access_key_id().starts_with("GK"), "{garage:?}");
        assert_eq!(garage.secret_access_key().len(), 64);
        let info = garage
            .cli(&["bucket", "info", "mailvault-test"])
            .expect("bucket info");
        assert!(info.contains(garage.access_key_id()), "{info}");
        garage.stop();
        assert_eq!(http_get_status(garage.s3_port, "/"), None, "stopped");
        garage.start_again().expect("start again");
        assert!(http_get_status(garage.s3_port, "/").is_some());
    }

    #[test]
    fn free_ports_differ_and_polling_has_a_deadline() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().expect("port")).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        let (low, high) = fixed_port_range();
        if high - low >= 1000 {
            assert!(
                ports.iter().all(|p| (low..high).contains(p)),
                "ports outside {low}..{high}: {ports:?}"
            );
        }
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(100), || false));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn a_server_whose_port_was_taken_is_started_again_on_fresh_ports() {
        let bin = tools_bin("nats-server").expect("nats-server");
        // What a lost race looks like: the picked port is taken before the server binds it.
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let taken_port = taken.local_addr().expect("addr").port();
        let mut attempts = 0;
        let nats = retry_port_clash(|| {
            attempts += 1;
            let mut server = NatsServer {
                proc: None,
                port: free_port()?,
                monitor_port: if attempts == 1 {
                    taken_port
                } else {
                    free_port()?
                },
                bin: bin.clone(),
                dir: tempfile::tempdir()?,
                extra_args: Vec::new(),
            };
            server.spawn()?;
            Ok(server)
        })
        .expect("started on the second attempt");
        assert_eq!(attempts, 2);
        assert_ne!(nats.monitor_port, taken_port);
        TcpStream::connect((Ipv4Addr::LOCALHOST, nats.port())).expect("client port open");

        // Any other failure is reported at once.
        let mut calls = 0;
        let e = retry_port_clash(|| -> Result<()> {
            calls += 1;
            err("exited (exit status: 1): bad config")
        })
        .expect_err("fails");
        assert_eq!(calls, 1, "{e}");
    }
}
