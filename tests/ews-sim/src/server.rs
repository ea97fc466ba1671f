//! HTTP side: authentication, SOAP envelope, impersonation, throttling, fault injection,
//! counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ntlm;
use crate::ops::{self, Ctx, Fault};
use crate::store::Store;
use crate::xml::{self, El, NS_E, NS_T, SOAP11, SOAP12, esc};
use crate::{Account, FaultKind, FaultRule, Faults, RequestRecord, SimConfig, Stats};

pub(crate) struct Shared {
    pub store: RwLock<Store>,
    pub config: SimConfig,
    pub faults: Mutex<FaultState>,
    pub counters: Mutex<Counters>,
    pub changed: tokio::sync::watch::Sender<u64>,
    pub hold: tokio::sync::watch::Sender<bool>,
    /// Bumped to make every open connection close (idle ones at once, busy ones after their
    /// current response).
    pub close_connections: tokio::sync::watch::Sender<u64>,
    /// Connections being served now.
    pub open_connections: tokio::sync::watch::Sender<usize>,
    pub tick: AtomicU64,
    /// Item ids deleted the moment a GetItem/ExportItems request names them (the race of an
    /// item deleted between SyncFolderItems and GetItem).
    pub vanish_on_fetch: Mutex<std::collections::HashSet<String>>,
}

pub(crate) struct FaultState {
    pub faults: Faults,
    pub rules: Vec<FaultRule>,
    pub rng: ChaCha8Rng,
}

impl FaultState {
    pub fn new(seed: u64) -> Self {
        FaultState {
            faults: Faults::default(),
            rules: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: BTreeMap<String, u64>,
    pub inflight: HashMap<String, usize>,
    pub inflight_total: usize,
    pub max_concurrent: usize,
    pub max_concurrent_per_account: usize,
    pub busy: u64,
    pub injected: BTreeMap<String, u64>,
    pub auth_failures: u64,
    pub ntlm_logons: u64,
    pub connections: u64,
    pub tls_failures: u64,
    pub impersonation_denied: u64,
    pub faults_sent: BTreeMap<String, u64>,
    /// Requests per account that passed authentication and the SOAP header checks and have
    /// not been answered yet, admitted or not.
    pub attempts: HashMap<String, usize>,
    pub max_attempted_per_account: usize,
    pub items_fetched: u64,
    pub log: Vec<RequestRecord>,
}

/// Most entries kept in the request log (older ones are dropped first).
const LOG_CAP: usize = 1 << 20;

impl Shared {
    pub fn lock_counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn lock_faults(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn read_store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn write_store(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn notify(&self) {
        let t = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        self.changed.send_replace(t);
    }

    pub fn stats(&self) -> Stats {
        let c = self.lock_counters();
        Stats {
            requests: c.requests.clone(),
            total_requests: c.requests.values().sum(),
            in_flight: c.inflight_total,
            max_concurrent: c.max_concurrent,
            max_concurrent_per_account: c.max_concurrent_per_account,
            busy_responses: c.busy,
            injected: c.injected.clone(),
            auth_failures: c.auth_failures,
            ntlm_logons: c.ntlm_logons,
            connections: c.connections,
            tls_failures: c.tls_failures,
            impersonation_denied: c.impersonation_denied,
            faults: c.faults_sent.clone(),
            max_attempted_per_account: c.max_attempted_per_account,
            items_fetched: c.items_fetched,
        }
    }
}

/// Counts a request against its account until it is answered (admitted or refused), so
/// tests can see whether a client ever *tried* to exceed the concurrency limit.
struct Attempt<'a> {
    shared: &'a Shared,
    key: String,
}

impl<'a> Attempt<'a> {
    fn new(shared: &'a Shared, key: &str) -> Self {
        let mut c = shared.lock_counters();
        let n = c.attempts.entry(key.to_owned()).or_insert(0);
        *n += 1;
        let n = *n;
        c.max_attempted_per_account = c.max_attempted_per_account.max(n);
        Attempt {
            shared,
            key: key.to_owned(),
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut c = self.shared.lock_counters();
        if let Some(n) = c.attempts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Releases an account's concurrency slot when the request ends (also on cancellation).
struct Slot<'a> {
    shared: &'a Shared,
    key: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        {
            let mut c = self.shared.lock_counters();
            if let Some(n) = c.inflight.get_mut(&self.key) {
                *n = n.saturating_sub(1);
            }
            c.inflight_total = c.inflight_total.saturating_sub(1);
        }
        self.shared.notify();
    }
}

const SERVER_VERSIONS: &[&str] = &[
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
    "Exchange2019",
    "V2015_10_05",
    "V2016_01_06",
    "V2016_04_13",
    "V2016_07_13",
    "V2016_10_10",
    "V2017_01_07",
    "V2017_04_14",
    "V2017_07_11",
    "V2017_10_09",
    "V2018_01_08",
];

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{SOAP11}\"><s:Header><h:ServerVersionInfo MajorVersion=\"15\" MinorVersion=\"2\" MajorBuildNumber=\"1258\" MinorBuildNumber=\"12\" Version=\"V2017_07_11\" xmlns:h=\"{NS_T}\" xmlns=\"{NS_T}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"/></s:Header><s:Body xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">{body}</s:Body></s:Envelope>"
    )
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn fault_response(f: &Fault) -> Response {
    let backoff = f
        .backoff_ms
        .map(|ms| {
            format!(
                "<t:MessageXml xmlns:t=\"{NS_T}\"><t:Value Name=\"BackOffMilliseconds\">{ms}</t:Value></t:MessageXml>"
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{SOAP11}\"><s:Body><s:Fault><faultcode xmlns:a=\"{NS_T}\">a:{code}</faultcode><faultstring xml:lang=\"en-US\">{msg}</faultstring><detail><e:ResponseCode xmlns:e=\"{NS_E}\">{code}</e:ResponseCode><e:Message xmlns:e=\"{NS_E}\">{msg}</e:Message>{backoff}</detail></s:Fault></s:Body></s:Envelope>",
        code = f.code,
        msg = esc(&f.message),
    );
    xml_response(StatusCode::INTERNAL_SERVER_ERROR, body)
}

fn busy_fault(ms: u64) -> Fault {
    Fault {
        code: "ErrorServerBusy",
        message: "The server cannot service this request right now. Try again later.".into(),
        backoff_ms: Some(ms),
    }
}

/// 401 offering the schemes the simulator accepts, in the order IIS lists them for an EWS
/// virtual directory with Windows and Basic authentication: `Negotiate`, `NTLM`, `Basic`.
fn unauthorized(config: &SimConfig) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "401 - Unauthorized: Access is denied due to invalid credentials.",
    )
        .into_response();
    let h = r.headers_mut();
    if config.ntlm_auth {
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Negotiate"),
        );
        h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("NTLM"));
    }
    if config.basic_auth {
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mailvault-ews-sim\""),
        );
    }
    r
}

/// 401 carrying an NTLM CHALLENGE under the scheme the client used (`NTLM` or `Negotiate`).
fn ntlm_challenge_response(scheme: &str, token: &[u8]) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "").into_response();
    let v = format!(
        "{scheme} {}",
        base64::engine::general_purpose::STANDARD.encode(token)
    );
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// What one client connection has proved so far. NTLM authenticates the connection (as IIS
/// does): after a successful handshake, requests on the same connection need no
/// `Authorization` header; a new connection needs a new handshake.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    auth: Mutex<ConnAuth>,
}

#[derive(Debug, Default)]
struct ConnAuth {
    pending: Option<ntlm::Pending>,
    /// Index into `SimConfig::accounts` of the account NTLM authenticated.
    account: Option<usize>,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnAuth> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `DOMAIN\user`, `user@domain` and `user` all name the account `user`.
fn account_key(name: &str) -> String {
    let n = name.rsplit('\\').next().unwrap_or(name);
    n.split('@').next().unwrap_or(n).to_ascii_lowercase()
}

fn basic(accounts: &[Account], cred: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, pass) = raw.split_once(':')?;
    let key = account_key(user);
    accounts
        .iter()
        .position(|a| account_key(&a.name) == key && a.password == pass)
}

/// The account a request acts as, or the 401 (challenge or refusal) to answer it with.
fn authenticate<'a>(
    shared: &'a Shared,
    conn: &Conn,
    headers: &HeaderMap,
) -> Result<&'a Account, Box<Response>> {
    let cfg = &shared.config;
    let refuse = |why: &dyn std::fmt::Display| {
        tracing::debug!(reason = %why, "authentication failed");
        shared.lock_counters().auth_failures += 1;
        Box::new(unauthorized(cfg))
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some((scheme, cred)) = header.and_then(|v| v.split_once(' ')) else {
        // No (usable) credentials: fine on a connection NTLM already authenticated.
        if let Some(i) = conn.lock().account {
            return Ok(&cfg.accounts[i]);
        }
        return Err(refuse(&"no usable Authorization header"));
    };
    if scheme.eq_ignore_ascii_case("basic") && cfg.basic_auth {
        return match basic(&cfg.accounts, cred) {
            Some(i) => Ok(&cfg.accounts[i]),
            None => Err(refuse(&"Basic: unknown user or wrong password")),
        };
    }
    let is_ntlm = scheme.eq_ignore_ascii_case("ntlm") || scheme.eq_ignore_ascii_case("negotiate");
    if !(is_ntlm && cfg.ntlm_auth) {
        return Err(refuse(&format_args!("scheme {scheme} not enabled")));
    }
    let Ok(token) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else {
        return Err(refuse(&"NTLM token is not base64"));
    };
    let mut state = conn.lock();
    match ntlm::message_type(&token) {
        Ok(1) => {
            // A new handshake replaces whatever the connection had proved before.
            state.account = None;
            match ntlm::challenge(&token) {
                Ok((pending, challenge)) => {
                    state.pending = Some(pending);
                    Err(Box::new(ntlm_challenge_response(scheme, &challenge)))
                }
                Err(e) => Err(refuse(&e)),
            }
        }
        Ok(3) => {
            let Some(pending) = state.pending.take() else {
                return Err(refuse(&ntlm::NtlmError::NoPendingChallenge));
            };
            match ntlm::authenticate(pending, &token, &cfg.accounts, account_key) {
                Ok(i) => {
                    state.account = Some(i);
                    shared.lock_counters().ntlm_logons += 1;
                    Ok(&cfg.accounts[i])
                }
                Err(e) => Err(refuse(&e)),
            }
        }
        Ok(t) => Err(refuse(&ntlm::NtlmError::UnexpectedType(t))),
        Err(e) => Err(refuse(&e)),
    }
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: &Conn,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !uri.path().eq_ignore_ascii_case("/EWS/Exchange.asmx") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "EWS expects SOAP over POST").into_response();
    }
    let account = match authenticate(&shared, conn, &headers) {
        Ok(a) => a,
        Err(response) => return *response,
    };
    let doc = match xml::parse(&body) {
        Ok(d) => d,
        Err(e) => {
            return fault_response(&Fault::new(
                "ErrorSchemaValidation",
                format!("The request failed schema validation: {e}"),
            ));
        }
    };
    if !(doc.is(SOAP11, "Envelope") || doc.is(SOAP12, "Envelope")) {
        return fault_response(&Fault::new(
            "ErrorSchemaValidation",
            "The request failed schema validation: the root element is not a SOAP Envelope.",
        ));
    }
    let Some(op) = doc.child("Body").and_then(|b| b.children.first()) else {
        return fault_response(&Fault::new(
            "ErrorSchemaValidation",
            "The request failed schema validation: empty SOAP Body.",
        ));
    };
    let op_name = op.name.clone();
    shared
        .lock_counters()
        .requests
        .entry(op_name.clone())
        .and_modify(|n| *n += 1)
        .or_insert(1);
    shared.notify();
    let soap_header = doc.child("Header");
    let result = prepare(&shared, account, soap_header);
    let (mailbox, throttle_key) = match result {
        Ok(x) => x,
        Err(f) => {
            record_fault(&shared, f.code);
            return fault_response(&f);
        }
    };
    let attempt = Attempt::new(&shared, &throttle_key);
    let arrived = std::time::Instant::now();
    let body_hash = {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        h.finish()
    };
    let account_key = throttle_key.clone();
    let (response, outcome) = admitted(&shared, account, &op_name, op, mailbox, throttle_key).await;
    {
        let mut c = shared.lock_counters();
        if c.log.len() >= LOG_CAP {
            c.log.remove(0);
        }
        c.log.push(RequestRecord {
            arrived,
            answered: std::time::Instant::now(),
            account: account_key,
            operation: op_name,
            body_hash,
            outcome,
        });
    }
    drop(attempt);
    shared.notify();
    response
}

/// A request whose envelope and SOAP header are valid: throttling, fault injection, the
/// operation. Returns the response and a short outcome for the request log.
async fn admitted(
    shared: &Arc<Shared>,
    account: &Account,
    op_name: &str,
    op: &El,
    mailbox: Option<usize>,
    throttle_key: String,
) -> (Response, String) {
    // Throttling: per-account concurrency limit.
    let slot = {
        let mut c = shared.lock_counters();
        let n = c.inflight.entry(throttle_key.clone()).or_insert(0);
        if *n >= shared.config.max_concurrent_per_account {
            c.busy += 1;
            drop(c);
            shared.notify();
            if shared.config.busy_as_http_503 {
                return (
                    (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response(),
                    "concurrency_limit_503".into(),
                );
            }
            return (
                fault_response(&busy_fault(shared.config.busy_backoff_ms)),
                format!("concurrency_limit_busy:{}", shared.config.busy_backoff_ms),
            );
        }
        *n += 1;
        let per = *n;
        c.inflight_total += 1;
        c.max_concurrent = c.max_concurrent.max(c.inflight_total);
        c.max_concurrent_per_account = c.max_concurrent_per_account.max(per);
        Slot {
            shared,
            key: throttle_key,
        }
    };
    shared.notify();

    // Tests may hold requests inside the server (to observe concurrency deterministically).
    let mut hold = shared.hold.subscribe();
    while *hold.borrow_and_update() {
        if hold.changed().await.is_err() {
            break;
        }
    }

    let (fault, latency) = pick_fault(shared, op_name);
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    let mut post: Option<FaultKind> = None;
    if let Some(kind) = fault {
        shared
            .lock_counters()
            .injected
            .entry(format!("{kind:?}"))
            .and_modify(|n| *n += 1)
            .or_insert(1);
        match kind {
            FaultKind::ServerBusy => {
                shared.lock_counters().busy += 1;
                drop(slot);
                let ms = shared.lock_faults().faults.backoff_ms;
                return (fault_response(&busy_fault(ms)), format!("busy:{ms}"));
            }
            FaultKind::Http503 => {
                drop(slot);
                return (
                    (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response(),
                    "http503".into(),
                );
            }
            FaultKind::Http500 => {
                drop(slot);
                return (
                    (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
                    "http500".into(),
                );
            }
            FaultKind::InvalidSyncState
                if op_name == "SyncFolderItems" || op_name == "SyncFolderHierarchy" =>
            {
                drop(slot);
                let msg = format!(
                    "<m:{op_name}Response xmlns:m=\"{}\" xmlns:t=\"{NS_T}\"><m:ResponseMessages><m:{op_name}ResponseMessage ResponseClass=\"Error\"><m:MessageText>Synchronization state data is corrupt or otherwise invalid.</m:MessageText><m:ResponseCode>ErrorInvalidSyncStateData</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:{op_name}ResponseMessage></m:ResponseMessages></m:{op_name}Response>",
                    xml::NS_M
                );
                return (
                    xml_response(StatusCode::OK, envelope(&msg)),
                    "invalid_sync_state".into(),
                );
            }
            FaultKind::ResponseError(code) => {
                drop(slot);
                let msg = format!(
                    "<m:{op_name}Response xmlns:m=\"{}\" xmlns:t=\"{NS_T}\"><m:ResponseMessages><m:{op_name}ResponseMessage ResponseClass=\"Error\"><m:MessageText>Injected failure.</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:{op_name}ResponseMessage></m:ResponseMessages></m:{op_name}Response>",
                    xml::NS_M
                );
                return (
                    xml_response(StatusCode::OK, envelope(&msg)),
                    format!("error:{code}"),
                );
            }
            other => post = Some(other),
        }
    }

    if op_name == "GetItem" || op_name == "ExportItems" {
        vanish_named_items(shared, op);
        let n = op.child("ItemIds").map_or(0, |i| i.children.len()) as u64;
        shared.lock_counters().items_fetched += n;
    }
    let ctx = Ctx {
        mailbox,
        can_impersonate: account.impersonation,
    };
    let result = if ops::is_mutating(op_name) {
        let mut store = shared.write_store();
        ops::dispatch(&mut store, &ctx, op)
    } else {
        let store = shared.read_store();
        ops::dispatch_read(&store, &ctx, op)
    };
    drop(slot);
    match result {
        Ok(body) => {
            let text = envelope(&body);
            match post {
                Some(FaultKind::TruncatedXml) => {
                    let mut cut = text.len() / 2;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    (
                        xml_response(StatusCode::OK, text[..cut].to_owned()),
                        "truncated_xml".into(),
                    )
                }
                Some(FaultKind::MalformedXml) => (
                    xml_response(
                        StatusCode::OK,
                        text.replacen("<s:Body", "<s:Body <<not-xml", 1),
                    ),
                    "malformed_xml".into(),
                ),
                _ => (xml_response(StatusCode::OK, text), "ok".into()),
            }
        }
        Err(f) => {
            record_fault(shared, f.code);
            (fault_response(&f), format!("fault:{}", f.code))
        }
    }
}

/// Deletes the items of `op` that tests marked with `delete_on_fetch`, before the operation
/// runs (as if a user deleted them just before the request arrived).
fn vanish_named_items(shared: &Shared, op: &El) {
    let mut marked = shared
        .vanish_on_fetch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if marked.is_empty() {
        return;
    }
    let Some(ids) = op.child("ItemIds") else {
        return;
    };
    for el in &ids.children {
        if let Some(id) = el.attr("Id")
            && marked.remove(id)
        {
            let mut store = shared.write_store();
            if let Some((mb, serial)) = store.find_item(id) {
                let _ = store.remove_item(mb, serial);
            }
        }
    }
}

fn record_fault(shared: &Shared, code: &str) {
    let mut c = shared.lock_counters();
    if code == "ErrorImpersonateUserDenied" {
        c.impersonation_denied += 1;
    }
    c.faults_sent
        .entry(code.to_owned())
        .and_modify(|n| *n += 1)
        .or_insert(1);
}

/// Validates the SOAP header (server version, impersonation) and returns the target mailbox
/// and the key its concurrency budget is charged to.
fn prepare(
    shared: &Shared,
    account: &Account,
    h: Option<&El>,
) -> Result<(Option<usize>, String), Fault> {
    if let Some(v) = h.and_then(|h| h.child("RequestServerVersion")) {
        let ver = v.attr("Version").unwrap_or("");
        if !SERVER_VERSIONS.contains(&ver) {
            return Err(Fault::new(
                "ErrorInvalidServerVersion",
                "The specified server version is invalid.",
            ));
        }
    }
    let store = shared.read_store();
    if let Some(imp) = h.and_then(|h| h.child("ExchangeImpersonation")) {
        let sid = imp.child("ConnectingSID").ok_or_else(|| {
            Fault::new(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of request.",
            )
        })?;
        let addr = ["PrimarySmtpAddress", "SmtpAddress", "PrincipalName"]
            .iter()
            .find_map(|n| sid.child_text(n))
            .ok_or_else(|| {
                Fault::new(
                    "ErrorInvalidExchangeImpersonationHeaderData",
                    "The impersonation header does not name a user by SMTP address or principal name.",
                )
            })?;
        if !account.impersonation {
            return Err(Fault::new(
                "ErrorImpersonateUserDenied",
                "The account does not have permission to impersonate the requested user.",
            ));
        }
        let addr = if addr.contains('@') {
            addr.to_owned()
        } else {
            format!("{addr}@{}", store.domain)
        };
        let mb = store.mailbox_index(&addr).ok_or_else(|| {
            Fault::new(
                "ErrorNonExistentMailbox",
                format!("The SMTP address has no mailbox associated with it: {addr}"),
            )
        })?;
        return Ok((Some(mb), store.mailboxes[mb].address.to_ascii_lowercase()));
    }
    let own = format!("{}@{}", account_key(&account.name), store.domain);
    Ok((store.mailbox_index(&own), account_key(&account.name)))
}

/// Scripted rules first (in order), then the random fractions.
fn pick_fault(shared: &Shared, op: &str) -> (Option<FaultKind>, Option<Duration>) {
    let mut fs = shared.lock_faults();
    let latency = fs.faults.latency;
    if let Some(i) = fs
        .rules
        .iter()
        .position(|r| r.remaining > 0 && r.operation.as_deref().is_none_or(|o| o == op))
    {
        let kind = fs.rules[i].kind;
        fs.rules[i].remaining -= 1;
        if fs.rules[i].remaining == 0 {
            fs.rules.remove(i);
        }
        return (Some(kind), latency);
    }
    let f = fs.faults.clone();
    let mut r = |p: f64| p > 0.0 && fs.rng.random_bool(p.min(1.0));
    let kind = if r(f.server_busy) {
        Some(FaultKind::ServerBusy)
    } else if r(f.http_503) {
        Some(FaultKind::Http503)
    } else if r(f.http_500) {
        Some(FaultKind::Http500)
    } else if r(f.truncated_xml) {
        Some(FaultKind::TruncatedXml)
    } else if r(f.malformed_xml) {
        Some(FaultKind::MalformedXml)
    } else if (op == "SyncFolderItems" || op == "SyncFolderHierarchy") && r(f.invalid_sync_state) {
        Some(FaultKind::InvalidSyncState)
    } else {
        None
    };
    (kind, latency)
}
