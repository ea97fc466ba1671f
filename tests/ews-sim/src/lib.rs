//! EWS simulator: behaves like Exchange Web Services as Microsoft documents it, over mail
//! loaded from a maildir tree or made by `mailvault-mailgen`, mutable while it runs, with
//! Exchange-like throttling and switchable fault injection. See `docs/ews-simulator.md`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailvault_ews_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::generated(7)).await?;
//! println!("EWS at {}", sim.url());
//! # Ok(()) }
//! ```

pub mod mime;
mod ntlm;
pub mod ops;
mod server;
pub mod store;
pub mod tls;
pub mod xml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use mailvault_mailgen::GenConfig;

pub use store::{ItemRef, StoreError};

/// A user that may log in (HTTP Basic or NTLM).
#[derive(Clone)]
pub struct Account {
    /// `user`, `DOMAIN\user` or `user@domain` (compared case-insensitively by the user part).
    pub name: String,
    pub password: String,
    /// Holds the ApplicationImpersonation role: may use `ExchangeImpersonation` and name other
    /// mailboxes.
    pub impersonation: bool,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("impersonation", &self.impersonation)
            .finish()
    }
}

/// Simulator configuration.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub domain: String,
    pub listen: SocketAddr,
    pub accounts: Vec<Account>,
    /// Mail to load from `<user>/<folder>[/<sub>…]/<file>`.
    pub maildir: Option<PathBuf>,
    /// Mail to generate.
    pub generate: Option<GenConfig>,
    /// Concurrent requests allowed per account (the impersonated mailbox when impersonating),
    /// like EWSMaxConcurrency; more get `ErrorServerBusy` (or HTTP 503).
    pub max_concurrent_per_account: usize,
    /// `BackOffMilliseconds` sent with a concurrency-limit `ErrorServerBusy`.
    pub busy_backoff_ms: u64,
    /// Answer over-limit requests with HTTP 503 instead of an `ErrorServerBusy` fault.
    pub busy_as_http_503: bool,
    /// Seed of the fault-injection dice.
    pub fault_seed: u64,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<tls::TlsIdentity>,
    /// Accept HTTP Basic (`WWW-Authenticate: Basic`).
    pub basic_auth: bool,
    /// Accept NTLM under the `NTLM` and `Negotiate` schemes (raw NTLMSSP tokens, no SPNEGO).
    pub ntlm_auth: bool,
}

impl SimConfig {
    /// Empty store, account `svc-mailvault` / `secret` with impersonation rights, loopback
    /// on a free port.
    pub fn new(domain: &str) -> Self {
        SimConfig {
            domain: domain.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            accounts: vec![Account {
                name: "svc-mailvault".into(),
                password: "secret".into(),
                impersonation: true,
            }],
            maildir: None,
            generate: None,
            max_concurrent_per_account: 10,
            busy_backoff_ms: 500,
            busy_as_http_503: false,
            fault_seed: 1,
            tls: None,
            basic_auth: true,
            ntlm_auth: true,
        }
    }

    /// Generated mail (mailgen defaults with `seed`) in `contoso.com`.
    pub fn generated(seed: u64) -> Self {
        let mut c = SimConfig::new("contoso.com");
        c.generate = Some(GenConfig {
            seed,
            ..GenConfig::default()
        });
        c
    }
}

/// Which fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SOAP fault `ErrorServerBusy` with `BackOffMilliseconds` (HTTP 500).
    ServerBusy,
    Http503,
    Http500,
    /// The response XML cut in half.
    TruncatedXml,
    /// A response that is not well-formed XML.
    MalformedXml,
    /// `ErrorInvalidSyncStateData` for a SyncFolderItems/SyncFolderHierarchy request.
    InvalidSyncState,
    /// A well-formed response whose one response message is `ResponseClass="Error"` with this
    /// `ResponseCode` (e.g. `ErrorQuotaExceeded` for a CreateItem); nothing is changed.
    ResponseError(&'static str),
}

/// Random faults: each request draws once (probabilities, 0.0–1.0), plus added latency.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub server_busy: f64,
    pub http_503: f64,
    pub http_500: f64,
    pub truncated_xml: f64,
    pub malformed_xml: f64,
    pub invalid_sync_state: f64,
    /// `BackOffMilliseconds` of injected `ErrorServerBusy`.
    pub backoff_ms: u64,
    /// Delay added to every request, inside the concurrency slot.
    pub latency: Option<Duration>,
}

/// A scripted fault: the next `remaining` requests of `operation` (any when `None`) get
/// `kind`. Rules run before the random faults, in the order added.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub operation: Option<String>,
    pub kind: FaultKind,
    pub remaining: u32,
}

/// Counters readable from tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests per operation (every authenticated, parsed request, throttled or not).
    pub requests: BTreeMap<String, u64>,
    pub total_requests: u64,
    pub in_flight: usize,
    pub max_concurrent: usize,
    pub max_concurrent_per_account: usize,
    /// `ErrorServerBusy`/503 answers for the concurrency limit and injected busy faults.
    pub busy_responses: u64,
    pub injected: BTreeMap<String, u64>,
    /// 401s for missing or bad credentials (every 401 except those carrying an NTLM
    /// CHALLENGE).
    pub auth_failures: u64,
    /// NTLM handshakes completed (each authenticates one connection).
    pub ntlm_logons: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes that failed (e.g. a client that does not trust the certificate).
    pub tls_failures: u64,
    pub impersonation_denied: u64,
    /// SOAP faults sent, by response code.
    pub faults: BTreeMap<String, u64>,
    /// Peak of concurrent requests of one account *sent* by the client, counting those the
    /// concurrency limit refused (`max_concurrent_per_account` only counts admitted ones, so it
    /// can never exceed the limit; this one shows whether a client tried to).
    pub max_attempted_per_account: usize,
    /// Item ids named in GetItem/ExportItems requests that reached the store (after
    /// throttling and injected faults): how often content was fetched.
    pub items_fetched: u64,
}

impl Stats {
    pub fn count(&self, op: &str) -> u64 {
        self.requests.get(op).copied().unwrap_or(0)
    }
}

/// One answered request (after authentication and the SOAP header checks), in answer order.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub arrived: std::time::Instant,
    pub answered: std::time::Instant,
    /// The account (impersonated mailbox when impersonating) the request is charged to.
    pub account: String,
    pub operation: String,
    /// Hash of the request body: a client's retry of the same request has the same hash.
    pub body_hash: u64,
    /// `ok`, `busy:<BackOffMilliseconds>` (injected), `concurrency_limit_busy:<ms>`,
    /// `concurrency_limit_503`, `http503`, `http500`, `invalid_sync_state`, `truncated_xml`,
    /// `malformed_xml` or `fault:<ResponseCode>`.
    pub outcome: String,
}

/// One item as the store holds it.
#[derive(Clone, Debug)]
pub struct ItemInfo {
    pub id: String,
    pub change_key: String,
    pub item_class: String,
    pub is_read: bool,
    /// Unsent (`IsDraft`): items made by CreateItem without `PR_MESSAGE_FLAGS` clearing
    /// `MSGFLAG_UNSENT`.
    pub is_draft: bool,
    pub mime: Arc<[u8]>,
}

/// One folder.
#[derive(Clone, Debug)]
pub struct FolderInfo {
    pub id: String,
    pub display_name: String,
    pub distinguished: Option<&'static str>,
    /// Display names from the top of the information store.
    pub path: Vec<String>,
    pub total: usize,
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Loads the mail and serves on `config.listen` until the handle is shut down or dropped.
    pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
        let mut store = store::Store::new(&config.domain);
        if let Some(dir) = &config.maildir {
            store
                .load_maildir(dir)
                .map_err(|e| anyhow::anyhow!("loading maildir {}: {e}", dir.display()))?;
        }
        if let Some(gen_cfg) = &config.generate {
            let mut g = gen_cfg.clone();
            g.domain = config.domain.clone();
            let corpus = mailvault_mailgen::generate(&g);
            store.load_corpus(&corpus);
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let (hold, _) = tokio::sync::watch::channel(false);
        let (close_connections, _) = tokio::sync::watch::channel(0u64);
        let (open_connections, _) = tokio::sync::watch::channel(0usize);
        let shared = Arc::new(server::Shared {
            store: std::sync::RwLock::new(store),
            faults: std::sync::Mutex::new(server::FaultState::new(config.fault_seed)),
            config,
            counters: std::sync::Mutex::new(server::Counters::default()),
            changed,
            hold,
            close_connections,
            open_connections,
            tick: AtomicU64::new(0),
            vanish_on_fetch: Default::default(),
        });
        let acceptor = match &shared.config.tls {
            Some(id) => Some(tokio_rustls::TlsAcceptor::from(id.server_config()?)),
            None => None,
        };
        let tls = acceptor.is_some();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), acceptor, stop_rx));
        Ok(SimHandle {
            addr,
            tls,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// Largest request body accepted (413 above).
const MAX_BODY: usize = 512 * 1024 * 1024;
/// Time a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` fires, then closes the open ones (each after the request
/// it is serving) and waits for them. Each connection is served by HTTP/1.1 with keep-alive and
/// has its own authentication state (NTLM authenticates a connection, as on IIS).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<server::Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            // Reap finished connection tasks as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        shared.lock_counters().connections += 1;
        // Nagle + the client's delayed ACK would stall responses written in pieces by ~40 ms.
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let conn = Arc::new(server::Conn::default());
            match acceptor {
                None => serve_connection(tcp, shared, conn).await,
                Some(a) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, shared, conn).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        shared.lock_counters().tls_failures += 1;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        shared.lock_counters().tls_failures += 1;
                    }
                },
            }
        });
    }
    drop(listener);
    shared.close_connections.send_modify(|g| *g += 1);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(io: S, shared: Arc<server::Shared>, conn: Arc<server::Conn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut close = shared.close_connections.subscribe();
    close.borrow_and_update();
    struct Open(Arc<server::Shared>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.open_connections.send_modify(|n| *n -= 1);
        }
    }
    shared.open_connections.send_modify(|n| *n += 1);
    let _open = Open(shared.clone());
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move {
            use http_body_util::BodyExt as _;
            let (parts, body) = req.into_parts();
            let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    use axum::response::IntoResponse as _;
                    let status = if e.is::<http_body_util::LengthLimitError>() {
                        axum::http::StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        axum::http::StatusCode::BAD_REQUEST
                    };
                    return Ok::<_, std::convert::Infallible>(
                        (status, "request body not read").into_response(),
                    );
                }
            };
            Ok(server::handle(shared, &conn, parts.method, parts.uri, parts.headers, body).await)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    let mut http = std::pin::pin!(http);
    let r = tokio::select! {
        r = http.as_mut() => r,
        _ = close.changed() => {
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<server::Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl SimHandle {
    /// The EWS endpoint, `http://127.0.0.1:PORT/EWS/Exchange.asmx` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/EWS/Exchange.asmx", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    // ------------------------------------------------------------ inspection

    pub fn mailboxes(&self) -> Vec<String> {
        self.shared
            .read_store()
            .mailboxes
            .iter()
            .map(|m| m.address.clone())
            .collect()
    }

    /// The locale a mailbox's folder names are in.
    pub fn mailbox_locale(&self, mailbox: &str) -> Option<String> {
        let s = self.shared.read_store();
        s.mailbox_index(mailbox)
            .map(|i| s.mailboxes[i].locale.clone())
    }

    /// Every folder of a mailbox below the top of the information store (depth first).
    pub fn folders(&self, mailbox: &str) -> Vec<FolderInfo> {
        let s = self.shared.read_store();
        let Some(mb) = s.mailbox_index(mailbox) else {
            return Vec::new();
        };
        let Some(top) = s.distinguished_folder(mb, "msgfolderroot") else {
            return Vec::new();
        };
        let m = &s.mailboxes[mb];
        s.descendants(mb, top)
            .into_iter()
            .map(|f| {
                let fo = &m.folders[f as usize];
                let mut path = vec![fo.display_name.clone()];
                let mut p = fo.parent;
                while let Some(x) = p {
                    if x == top {
                        break;
                    }
                    path.insert(0, m.folders[x as usize].display_name.clone());
                    p = m.folders[x as usize].parent;
                }
                FolderInfo {
                    id: store::folder_id(m.key, f),
                    display_name: fo.display_name.clone(),
                    distinguished: fo.distinguished,
                    path,
                    total: fo.items.len(),
                }
            })
            .collect()
    }

    /// The id of a distinguished folder (`inbox`, `calendar`, …) of a mailbox.
    pub fn distinguished_folder_id(&self, mailbox: &str, distinguished: &str) -> Option<String> {
        let s = self.shared.read_store();
        let mb = s.mailbox_index(mailbox)?;
        let f = s.distinguished_folder(mb, distinguished)?;
        Some(store::folder_id(s.mailboxes[mb].key, f))
    }

    /// Items of a folder (by folder id), oldest first.
    pub fn items(&self, folder_id: &str) -> Vec<ItemInfo> {
        let s = self.shared.read_store();
        let Some((store::IdKind::Folder, key, serial)) = store::decode_id(folder_id) else {
            return Vec::new();
        };
        let Some(mb) = s.mailbox_by_key(key) else {
            return Vec::new();
        };
        let m = &s.mailboxes[mb];
        let Some(f) = m.folders.get(serial as usize) else {
            return Vec::new();
        };
        f.items
            .iter()
            .filter_map(|i| m.items.get(i))
            .map(|it| ItemInfo {
                id: store::item_id(m.key, it.serial),
                change_key: store::change_key(b'C', it.serial, it.version),
                item_class: it.item_class.clone(),
                is_read: it.is_read,
                is_draft: it.draft,
                mime: it.mime.clone(),
            })
            .collect()
    }

    pub fn item(&self, item_id: &str) -> Option<ItemInfo> {
        let s = self.shared.read_store();
        let (mb, serial) = s.find_item(item_id)?;
        let m = &s.mailboxes[mb];
        let it = m.items.get(&serial)?;
        Some(ItemInfo {
            id: item_id.to_owned(),
            change_key: store::change_key(b'C', serial, it.version),
            item_class: it.item_class.clone(),
            is_read: it.is_read,
            is_draft: it.draft,
            mime: it.mime.clone(),
        })
    }

    pub fn total_items(&self) -> usize {
        self.shared
            .read_store()
            .mailboxes
            .iter()
            .map(|m| m.items.len())
            .sum()
    }

    // ------------------------------------------------------------ mutation

    fn folder_target(s: &store::Store, folder_id: &str) -> Result<(usize, u32), StoreError> {
        match store::decode_id(folder_id) {
            Some((store::IdKind::Folder, key, serial)) => {
                let mb = s
                    .mailbox_by_key(key)
                    .ok_or_else(|| StoreError::NoMailbox(folder_id.to_owned()))?;
                let serial = u32::try_from(serial)
                    .map_err(|_| StoreError::NoFolder(folder_id.to_owned()))?;
                if (serial as usize) < s.mailboxes[mb].folders.len() {
                    Ok((mb, serial))
                } else {
                    Err(StoreError::NoFolder(folder_id.to_owned()))
                }
            }
            _ => Err(StoreError::NoFolder(folder_id.to_owned())),
        }
    }

    /// Adds an item (unread) to a folder.
    pub fn add_item(
        &self,
        folder_id: &str,
        mime: &[u8],
        item_class: &str,
    ) -> Result<ItemRef, StoreError> {
        let mut s = self.shared.write_store();
        let (mb, f) = Self::folder_target(&s, folder_id)?;
        let serial = s.add_item(mb, f, mime.into(), item_class, false);
        s.item_ref(mb, serial).ok_or(StoreError::NoItem)
    }

    /// Replaces an item's content (new ChangeKey, same id).
    pub fn change_item(&self, item_id: &str, mime: &[u8]) -> Result<ItemRef, StoreError> {
        let mut s = self.shared.write_store();
        let (mb, serial) = s.find_item(item_id).ok_or(StoreError::NoItem)?;
        s.replace_content(mb, serial, mime.into())?;
        s.item_ref(mb, serial).ok_or(StoreError::NoItem)
    }

    /// Moves an item to another folder of the same mailbox; returns its new id.
    pub fn move_item(&self, item_id: &str, to_folder_id: &str) -> Result<ItemRef, StoreError> {
        let mut s = self.shared.write_store();
        let (mb, serial) = s.find_item(item_id).ok_or(StoreError::NoItem)?;
        let (tmb, f) = Self::folder_target(&s, to_folder_id)?;
        if tmb != mb {
            return Err(StoreError::NoFolder(to_folder_id.to_owned()));
        }
        let n = s.move_item(mb, serial, f)?;
        s.item_ref(mb, n).ok_or(StoreError::NoItem)
    }

    pub fn delete_item(&self, item_id: &str) -> Result<(), StoreError> {
        let mut s = self.shared.write_store();
        let (mb, serial) = s.find_item(item_id).ok_or(StoreError::NoItem)?;
        s.remove_item(mb, serial)
    }

    /// Sets the read flag (a change bumps the ChangeKey and is a ReadFlagChange in sync).
    pub fn set_read(&self, item_id: &str, read: bool) -> Result<ItemRef, StoreError> {
        let mut s = self.shared.write_store();
        let (mb, serial) = s.find_item(item_id).ok_or(StoreError::NoItem)?;
        s.set_read(mb, serial, read)?;
        s.item_ref(mb, serial).ok_or(StoreError::NoItem)
    }

    /// Creates a folder; returns its id.
    pub fn create_folder(&self, parent_folder_id: &str, name: &str) -> Result<String, StoreError> {
        let mut s = self.shared.write_store();
        let (mb, p) = Self::folder_target(&s, parent_folder_id)?;
        let f = s.create_folder(mb, p, name, None)?;
        Ok(store::folder_id(s.mailboxes[mb].key, f))
    }

    pub fn rename_folder(&self, folder_id: &str, name: &str) -> Result<(), StoreError> {
        let mut s = self.shared.write_store();
        let (mb, f) = Self::folder_target(&s, folder_id)?;
        s.rename_folder(mb, f, name);
        Ok(())
    }

    /// Makes every outstanding sync state (of one mailbox, or all) invalid: the next sync
    /// with one gets `ErrorInvalidSyncStateData`.
    pub fn invalidate_sync_states(&self, mailbox: Option<&str>) {
        let mut s = self.shared.write_store();
        let mb = mailbox.and_then(|m| s.mailbox_index(m));
        if mailbox.is_some() && mb.is_none() {
            return;
        }
        s.invalidate_sync_states(mb);
    }

    // ------------------------------------------------------------ faults and counters

    /// Marks an item as damaged: GetItem answers `ErrorCorruptData` for it from now on.
    pub fn corrupt_item(&self, item_id: &str) -> Result<(), StoreError> {
        let mut s = self.shared.write_store();
        let (mb, serial) = s.find_item(item_id).ok_or(StoreError::NoItem)?;
        let it = s.mailboxes[mb]
            .items
            .get_mut(&serial)
            .ok_or(StoreError::NoItem)?;
        it.corrupt = true;
        Ok(())
    }

    /// Deletes the item the moment a GetItem or ExportItems request names it, before the
    /// request is answered: the item was listed by SyncFolderItems and is gone when its
    /// content is fetched (answer `ErrorItemNotFound`, and a Delete in the next sync).
    pub fn delete_on_fetch(&self, item_id: &str) {
        self.shared
            .vanish_on_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(item_id.to_owned());
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock_faults().faults = faults;
    }

    pub fn clear_faults(&self) {
        let mut f = self.shared.lock_faults();
        f.faults = Faults::default();
        f.rules.clear();
    }

    /// Adds a scripted fault rule.
    pub fn inject(&self, rule: FaultRule) {
        self.shared.lock_faults().rules.push(rule);
    }

    /// Holds every request that got a concurrency slot until [`SimHandle::release`] (to
    /// observe concurrency in tests without timing).
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Closes every open client connection (idle ones at once, busy ones after the response
    /// they are sending), like IIS ending idle keep-alive connections: an NTLM client must
    /// authenticate its next connection anew.
    /// Closes every open connection (idle ones at once, busy ones after their current
    /// response) and returns once they are all closed, so the next request surely comes on a
    /// new connection.
    pub async fn close_connections(&self) {
        let mut open = self.shared.open_connections.subscribe();
        self.shared.close_connections.send_modify(|g| *g += 1);
        // The sender lives as long as the simulator, so waiting cannot fail.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every answered request since the start or the last [`SimHandle::reset_stats`].
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.lock_counters().log.clone()
    }

    pub fn reset_stats(&self) {
        let mut c = self.shared.lock_counters();
        let inflight = std::mem::take(&mut c.inflight);
        let total = c.inflight_total;
        let attempts = std::mem::take(&mut c.attempts);
        *c = server::Counters::default();
        c.inflight = inflight;
        c.inflight_total = total;
        c.attempts = attempts;
    }

    /// Waits until `cond` holds for the counters (re-checked on every counter change).
    pub async fn wait_for(&self, mut cond: impl FnMut(&Stats) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            if cond(&self.stats()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
