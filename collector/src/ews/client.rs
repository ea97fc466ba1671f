//! The HTTP implementation of [`Ews`]: reqwest + rustls, Basic or NTLM auth, impersonation,
//! connection reuse, bounded concurrency and retries with back-off. Responses are parsed while
//! they stream in (a blocking task reads the body through a sync bridge), so a large GetItem
//! response is never buffered whole.
//!
//! NTLM authenticates a *connection* (IIS keeps an NTLM-authenticated HTTP/1.1 connection
//! authenticated), and its three messages must travel on one connection. So with NTLM every
//! concurrent request gets a *lane*: one HTTP/1.1 connection the client owns (`conn.rs`; a
//! pool would pick connections by itself), used by one request at a time. A lane shakes hands
//! when its connection is new (NEGOTIATE → 401 + CHALLENGE → AUTHENTICATE, both carrying the
//! request; a server that does not ask for authentication answers the first) and then sends
//! requests without credentials on it; a 401 there (the server dropped the authentication)
//! means one more handshake; a connection the server closed is replaced before a request. There are at most
//! `per_server_concurrency` lanes, so at most that many handshakes while connections live.
//! An AUTHENTICATE refused on the connection that got the CHALLENGE means wrong credentials:
//! the request fails at once as access denied, naming NTLM and the user.

use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::{debug, warn};

use super::conn::{self, Connector};
use super::ntlm::{self, NtlmHandshake};
use super::xml::Element;
use super::{
    DISTINGUISHED_FOLDERS, ErrorContext, ErrorKind, Ews, EwsError, EwsWrite, FindPage, Folder,
    HierarchyPage, ItemId, ItemSummary, ItemsPage, Mailbox, MimeItem, parse, request,
};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::throttle::{Backoff, Limiter};

/// How the client authenticates (`[ews] auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EwsAuth {
    /// HTTP Basic on every request (must be enabled on the EWS virtual directory; only over
    /// HTTPS outside labs).
    Basic,
    /// NTLMv2 (Windows authentication, on by default on Exchange's EWS virtual directory).
    #[default]
    Ntlm,
}

impl EwsAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "Basic",
            Self::Ntlm => "NTLM",
        }
    }
}

/// Everything the HTTP client needs.
#[derive(Debug, Clone)]
pub struct HttpEwsConfig {
    /// `https://<server>/EWS/Exchange.asmx`
    pub url: String,
    pub username: String,
    pub password: Secret,
    pub auth: EwsAuth,
    /// `RequestServerVersion`, default `Exchange2013_SP1`.
    pub server_version: String,
    /// Send `ExchangeImpersonation` for the target mailbox.
    pub impersonation: bool,
    /// Extra PEM CA certificate(s) to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (labs only).
    pub insecure_skip_verify: bool,
    pub request_timeout: Duration,
    pub per_server_concurrency: usize,
    pub per_account_concurrency: usize,
    pub backoff: Backoff,
}

/// EWS over HTTP.
#[derive(Debug)]
pub struct HttpEws {
    /// Basic: one pooled client for every request.
    http: reqwest::Client,
    /// NTLM: idle lanes (see the module docs) and how to open their connections.
    lanes: std::sync::Mutex<Vec<Lane>>,
    connector: Connector,
    /// `HTTP/<host>` service name for NTLM.
    host: String,
    cfg: HttpEwsConfig,
    limiter: Limiter,
    metrics: Arc<Metrics>,
}

/// An NTLM lane: one connection of its own.
#[derive(Debug, Default)]
struct Lane {
    sender: Option<conn::Sender>,
    /// The connection completed a handshake and was not seen to lose it since.
    authenticated: bool,
}

fn build_client(
    cfg: &HttpEwsConfig,
    roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, EwsError> {
    let mut b = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .pool_max_idle_per_host(cfg.per_server_concurrency.max(1))
        .danger_accept_invalid_certs(cfg.insecure_skip_verify);
    for c in roots {
        b = b.add_root_certificate(c.clone());
    }
    b.build().map_err(|e| EwsError::Permanent {
        code: "HttpClient".into(),
        message: e.to_string(),
        context: Box::default(),
    })
}

/// Text of a transport error with its causes (reqwest's own text omits e.g. the TLS reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Whether a transport error is rustls refusing the server (certificate or protocol), as
/// opposed to a network failure worth retrying.
fn is_tls_rejection(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        // `io::Error::source` skips the error it wraps (reqwest's connector nests two
        // io::Errors around rustls's): look inside.
        let mut inner: &(dyn std::error::Error + 'static) = c;
        loop {
            if inner.downcast_ref::<rustls::Error>().is_some() {
                return true;
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(i) => inner = i,
                None => break,
            }
        }
        cur = c.source();
    }
    false
}

impl HttpEws {
    pub fn new(cfg: HttpEwsConfig, metrics: Arc<Metrics>) -> Result<Self, EwsError> {
        let mut roots = Vec::new();
        let mut ders = Vec::new();
        if let Some(path) = &cfg.ca_file {
            let ca_err = |message: String| EwsError::Permanent {
                code: "CaFile".into(),
                message,
                context: Box::default(),
            };
            let pem = std::fs::read(path)
                .map_err(|e| ca_err(format!("reading {}: {e}", path.display())))?;
            roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_err(format!("parsing {}: {e}", path.display())))?;
            use rustls::pki_types::pem::PemObject as _;
            ders = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(format!("parsing {}: {e}", path.display())))?;
            if roots.is_empty() || ders.is_empty() {
                return Err(ca_err(format!(
                    "{}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| EwsError::Permanent {
            code: "Url".into(),
            message: format!("{}: {e}", cfg.url),
            context: Box::default(),
        })?;
        let connector = Connector::new(&url, &ders, cfg.insecure_skip_verify, cfg.request_timeout)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let http = build_client(&cfg, &roots)?;
        Ok(Self {
            limiter: Limiter::new(cfg.per_server_concurrency, cfg.per_account_concurrency),
            http,
            lanes: std::sync::Mutex::new(Vec::new()),
            connector,
            host,
            cfg,
            metrics,
        })
    }

    /// Sends one operation with retries; `parse_fn` turns the envelope into the result.
    async fn call<T: Send + 'static>(
        &self,
        ctx: ErrorContext,
        mailbox: &Mailbox,
        body: String,
        parse_fn: fn(&Element) -> Result<T, EwsError>,
        retry_if: fn(&T) -> Option<Duration>,
    ) -> Result<T, EwsError> {
        let headers = request::Headers {
            server_version: &self.cfg.server_version,
            impersonate: self.cfg.impersonation.then_some(mailbox.smtp.as_str()),
        };
        let xml = request::envelope(headers, &body);
        let mut attempt = 0u32;
        loop {
            let e = {
                // Exchange charges an impersonated request to the target mailbox's budget,
                // otherwise to the service account's.
                let account = if self.cfg.impersonation {
                    mailbox.smtp.as_str()
                } else {
                    self.cfg.username.as_str()
                };
                let _permits = self.limiter.acquire(account).await;
                Metrics::add(&self.metrics.ews_requests, 1);
                let res = self
                    .send_once(ctx.operation, &xml, mailbox)
                    .await
                    .and_then(|root| parse_fn(&root));
                // A result can itself ask for a retry (e.g. ErrorServerBusy inside a GetItem
                // batch).
                let e = match res {
                    Ok(v) => match retry_if(&v) {
                        None => return Ok(v),
                        Some(back_off) => EwsError::Throttled {
                            back_off: Some(back_off).filter(|d| !d.is_zero()),
                            code: "ErrorServerBusy".into(),
                            context: Box::default(),
                        },
                    },
                    Err(e) => e,
                };
                // The back-off is the account's, not this request's: pause the account before
                // the permits go, so no other folder or mailbox task of it slips in.
                if let Some(back_off) = e.back_off() {
                    self.limiter.pause(account, back_off);
                }
                e
            };
            let e = e.with_context(&ctx);
            if e.kind() == ErrorKind::Throttled {
                Metrics::add(&self.metrics.throttled, 1);
            }
            // A write that failed in transit may have been done: CreateItem/UploadItems are
            // retried here only when the server refused them (throttling); the restorer checks
            // for the copy before writing again.
            let retryable = match e.kind() {
                ErrorKind::Transient => !NOT_IDEMPOTENT.contains(&ctx.operation),
                k => k.is_retryable(),
            };
            if !retryable || attempt >= self.cfg.backoff.max_retries {
                return Err(e);
            }
            let delay = self.cfg.backoff.delay(attempt, e.back_off());
            warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "EWS call failed, retrying");
            Metrics::add(&self.metrics.ews_retries, 1);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        operation: &str,
        xml: &str,
        mailbox: &Mailbox,
    ) -> Result<Element, EwsError> {
        let resp = match self.cfg.auth {
            EwsAuth::Basic => self.send_basic(operation, xml, mailbox).await?,
            EwsAuth::Ntlm => self.send_ntlm(operation, xml, mailbox).await?,
        };
        let status = resp.status();
        debug!(%status, "EWS response");
        if status.as_u16() == 503 || status.as_u16() == 429 {
            let back_off = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(EwsError::Throttled {
                back_off,
                code: format!("HTTP {}", status.as_u16()),
                context: Box::default(),
            });
        }
        if status.as_u16() == 401 {
            return Err(self.auth_failed(
                "the server refused the credentials (wrong user name or password, or the scheme \
                 is disabled on the EWS virtual directory)",
            ));
        }
        if status.as_u16() == 403 {
            return Err(EwsError::AccessDenied {
                code: "HTTP 403".into(),
                message: format!("authorisation failed for {}", self.cfg.username),
                context: Box::default(),
            });
        }
        if !(status.is_success() || status.as_u16() == 500) {
            let msg = format!("unexpected HTTP status {status}");
            return Err(if status.is_server_error() {
                EwsError::transient(msg)
            } else {
                EwsError::Permanent {
                    code: format!("HTTP {}", status.as_u16()),
                    message: msg,
                    context: Box::default(),
                }
            });
        }
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let reader = StreamReader::new(stream);
        let parsed = tokio::task::spawn_blocking(move || {
            let bridge = SyncIoBridge::new(reader);
            parse::parse_envelope(BufReader::with_capacity(64 * 1024, bridge))
        })
        .await
        .map_err(|e| EwsError::transient(format!("parser task failed: {e}")))?;
        match parsed {
            // An HTTP 500 without a parsable SOAP fault is a server error page: transient.
            Err(e) if status.as_u16() == 500 => Err(EwsError::transient(format!(
                "HTTP 500 without a SOAP fault: {e}"
            ))),
            other => other,
        }
    }

    fn auth_failed(&self, why: &str) -> EwsError {
        EwsError::AccessDenied {
            code: "HTTP 401".into(),
            message: format!(
                "{} authentication as {} failed: {why}",
                self.cfg.auth.as_str(),
                self.cfg.username
            ),
            context: Box::default(),
        }
    }

    /// One HTTP POST of `xml` with Basic credentials, on the pooled client.
    async fn send_basic(
        &self,
        operation: &str,
        xml: &str,
        mailbox: &Mailbox,
    ) -> Result<reqwest::Response, EwsError> {
        let req = self
            .http
            .post(&self.cfg.url)
            .basic_auth(&self.cfg.username, Some(self.cfg.password.expose()))
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("Accept", "text/xml")
            .header(
                "SOAPAction",
                format!(
                    "\"http://schemas.microsoft.com/exchange/services/2006/messages/{operation}\""
                ),
            )
            .header("X-AnchorMailbox", &mailbox.smtp);
        req.body(xml.to_owned()).send().await.map_err(|e| {
            let text = error_chain(&e);
            if is_tls_rejection(&e) {
                // Retrying cannot help: the server's certificate is not trusted (or TLS
                // cannot be agreed on).
                EwsError::Permanent {
                    code: "TLS".into(),
                    message: format!(
                        "TLS handshake with {} failed: {text} (trust the issuing CA with \
                         ews.ca_file)",
                        self.cfg.url
                    ),
                    context: Box::default(),
                }
            } else {
                EwsError::transient(format!("HTTP request failed: {text}"))
            }
        })
    }

    /// One POST on a lane's own connection (opened first when the lane has none or the server
    /// closed it — except for an AUTHENTICATE, which only its own connection can carry).
    async fn lane_send(
        &self,
        lane: &mut Lane,
        operation: &str,
        xml: &str,
        mailbox: &Mailbox,
        step: Step<'_>,
    ) -> Result<reqwest::Response, EwsError> {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        // A connection the server closed while idle: the request was not sent on it yet.
        if let Some(s) = &mut lane.sender
            && s.ready().await.is_err()
        {
            lane.sender = None;
        }
        let sender = match &mut lane.sender {
            Some(s) => s,
            None if matches!(step, Step::Authenticate(_)) => {
                // The CHALLENGE belonged to the closed connection: this handshake is lost.
                return Err(EwsError::transient(
                    "the server closed the connection during the NTLM handshake",
                ));
            }
            slot @ None => {
                lane.authenticated = false;
                slot.insert(self.connector.connect().await?)
            }
        };
        let mut req = hyper::Request::post(self.connector.path())
            .header(hyper::header::HOST, self.connector.authority())
            .header(hyper::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header(hyper::header::ACCEPT, "text/xml")
            .header(
                "SOAPAction",
                format!(
                    "\"http://schemas.microsoft.com/exchange/services/2006/messages/{operation}\""
                ),
            )
            .header("X-AnchorMailbox", &mailbox.smtp);
        if let Step::Negotiate(token) | Step::Authenticate(token) = step {
            req = req.header(hyper::header::AUTHORIZATION, format!("NTLM {token}"));
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                xml.to_owned(),
            )))
            .map_err(|e| EwsError::Permanent {
                code: "HttpRequest".into(),
                message: e.to_string(),
                context: Box::default(),
            })?;
        let sent = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(resp)) => Ok(conn::into_reqwest(resp, deadline)),
            Ok(Err(e)) => {
                lane.sender = None;
                Err(EwsError::transient(format!(
                    "HTTP request failed: {}",
                    error_chain(&e)
                )))
            }
            Err(_) => {
                lane.sender = None;
                Err(EwsError::transient("HTTP request timed out"))
            }
        }
    }

    /// Sends over an NTLM lane, shaking hands when the lane's connection is not authenticated.
    async fn send_ntlm(
        &self,
        operation: &str,
        xml: &str,
        mailbox: &Mailbox,
    ) -> Result<reqwest::Response, EwsError> {
        let mut guard = LaneGuard::checkout(self);
        let lane = &mut guard.lane;
        if let Some(s) = &mut lane.sender
            && s.ready().await.is_err()
        {
            // Closed by the server while idle: a new connection needs a handshake.
            lane.sender = None;
            lane.authenticated = false;
        }
        if lane.authenticated && lane.sender.is_some() {
            let resp = self
                .lane_send(lane, operation, xml, mailbox, Step::Plain)
                .await?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            debug!("NTLM connection no longer authenticated; shaking hands again");
            let _ = resp.bytes().await;
        }
        lane.authenticated = false;
        let mut hs = NtlmHandshake::new(&self.cfg.username, self.cfg.password.expose(), &self.host)
            .map_err(|e| self.auth_failed(&e.to_string()))?;
        let negotiate = hs
            .negotiate()
            .map_err(|e| self.auth_failed(&e.to_string()))?;
        // The NEGOTIATE carries the request itself: a server that does not ask for
        // authentication just answers it (once; nothing is sent twice then).
        let resp = self
            .lane_send(lane, operation, xml, mailbox, Step::Negotiate(&negotiate))
            .await?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        let values: Vec<String> = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        // Read the 401 to its end: the connection carries the next message.
        let _ = resp.bytes().await;
        let Some(challenge) = ntlm::challenge_token(values.iter().map(String::as_str)) else {
            return Err(self.auth_failed(&format!(
                "the server offers no NTLM challenge (WWW-Authenticate: {})",
                values.join(", ")
            )));
        };
        let authenticate = hs
            .authenticate(challenge)
            .map_err(|e| self.auth_failed(&e.to_string()))?;
        let resp = self
            .lane_send(
                lane,
                operation,
                xml,
                mailbox,
                Step::Authenticate(&authenticate),
            )
            .await?;
        if resp.status().as_u16() == 401 {
            let _ = resp.bytes().await;
            return Err(self.auth_failed(
                "the server refused the AUTHENTICATE message (wrong user name or password?)",
            ));
        }
        Metrics::add(&self.metrics.ntlm_handshakes, 1);
        lane.authenticated = true;
        Ok(resp)
    }

    /// ExportItems (full-fidelity blobs).
    pub async fn export_items(
        &self,
        mailbox: &Mailbox,
        ids: &[ItemId],
    ) -> Result<Vec<Result<parse::ExportedItem, EwsError>>, EwsError> {
        self.call(
            ctx("ExportItems", mailbox, None),
            mailbox,
            request::export_items(ids),
            parse::export_items,
            |_| None,
        )
        .await
    }
}

/// What an NTLM lane request carries.
#[derive(Clone, Copy)]
enum Step<'a> {
    /// No credentials: the connection is authenticated already.
    Plain,
    /// NEGOTIATE (base64).
    Negotiate(&'a str),
    /// AUTHENTICATE (base64), only on the connection that got the CHALLENGE.
    Authenticate(&'a str),
}

/// A lane taken out of the idle list for one request; put back when dropped.
struct LaneGuard<'a> {
    ews: &'a HttpEws,
    lane: Lane,
}

impl<'a> LaneGuard<'a> {
    fn checkout(ews: &'a HttpEws) -> Self {
        let lane = ews
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        Self { ews, lane }
    }
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        // A request cancelled mid-handshake leaves `authenticated` false: the next user of the
        // lane shakes hands again.
        let lane = std::mem::take(&mut self.lane);
        self.ews
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(lane);
    }
}

/// Operations that must not be repeated blindly after a transport failure.
const NOT_IDEMPOTENT: &[&str] = &["CreateItem", "UploadItems"];

fn ctx(op: &'static str, mailbox: &Mailbox, folder: Option<&str>) -> ErrorContext {
    ErrorContext {
        operation: op,
        mailbox: Some(mailbox.smtp.clone()),
        folder: folder.map(str::to_owned),
        item: None,
    }
}

/// A GetItem batch where some response messages were ErrorServerBusy is retried as a whole.
#[allow(clippy::ptr_arg)] // must match `fn(&T)` with T = Vec<…>
fn batch_throttled<T>(res: &Vec<Result<T, EwsError>>) -> Option<Duration> {
    res.iter()
        .filter_map(|r| r.as_ref().err())
        .find(|e| e.kind() == ErrorKind::Throttled)
        .map(|e| e.back_off().unwrap_or_default())
}

#[async_trait]
impl Ews for HttpEws {
    async fn sync_folder_hierarchy(
        &self,
        mailbox: &Mailbox,
        root: Option<&str>,
        sync_state: Option<&str>,
    ) -> Result<HierarchyPage, EwsError> {
        self.call(
            ctx("SyncFolderHierarchy", mailbox, root),
            mailbox,
            request::sync_folder_hierarchy(root, sync_state),
            parse::sync_folder_hierarchy,
            |_| None,
        )
        .await
    }

    async fn get_distinguished_folders(
        &self,
        mailbox: &Mailbox,
        ids: &[&str],
    ) -> Result<Vec<(String, Folder)>, EwsError> {
        let ids: Vec<&str> = if ids.is_empty() {
            DISTINGUISHED_FOLDERS.to_vec()
        } else {
            ids.to_vec()
        };
        let res = self
            .call(
                ctx("GetFolder", mailbox, None),
                mailbox,
                request::get_distinguished_folders(&mailbox.smtp, &ids),
                parse::get_folder,
                batch_throttled,
            )
            .await?;
        let mut out = Vec::new();
        for (name, r) in ids.iter().zip(res) {
            match r {
                Ok(f) => out.push(((*name).to_owned(), f)),
                // A server may not know every well-known folder (e.g. `journal`): skip it.
                Err(e) if !e.kind().is_retryable() => {
                    debug!(folder = name, error = %e, "distinguished folder not available");
                }
                Err(e) => return Err(e.with_context(&ctx("GetFolder", mailbox, Some(name)))),
            }
        }
        Ok(out)
    }

    async fn sync_folder_items(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        sync_state: Option<&str>,
        max_changes: u32,
    ) -> Result<ItemsPage, EwsError> {
        self.call(
            ctx("SyncFolderItems", mailbox, Some(folder_id)),
            mailbox,
            request::sync_folder_items(folder_id, sync_state, max_changes),
            parse::sync_folder_items,
            |_| None,
        )
        .await
    }

    async fn get_items_mime(
        &self,
        mailbox: &Mailbox,
        ids: &[ItemId],
    ) -> Result<Vec<Result<MimeItem, EwsError>>, EwsError> {
        let res = self
            .call(
                ctx("GetItem", mailbox, None),
                mailbox,
                request::get_items_mime(ids),
                parse::get_items_mime,
                batch_throttled,
            )
            .await?;
        if res.len() != ids.len() {
            return Err(EwsError::malformed(format!(
                "GetItem returned {} response messages for {} ids",
                res.len(),
                ids.len()
            ))
            .with_context(&ctx("GetItem", mailbox, None)));
        }
        Ok(res
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                r.map_err(|e| {
                    e.with_context(&ErrorContext {
                        operation: "GetItem",
                        mailbox: Some(mailbox.smtp.clone()),
                        folder: None,
                        item: Some(id.id.clone()),
                    })
                })
            })
            .collect())
    }

    /// FindFolder with paging (public folders).
    async fn find_folders(
        &self,
        mailbox: &Mailbox,
        parent: request::FolderRef<'_>,
        offset: u32,
        page: u32,
    ) -> Result<FindPage<Folder>, EwsError> {
        self.call(
            ctx("FindFolder", mailbox, None),
            mailbox,
            request::find_folder(parent, offset, page),
            parse::find_folder,
            |_| None,
        )
        .await
    }

    /// FindItem with paging (public folders).
    async fn find_items(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        offset: u32,
        page: u32,
    ) -> Result<FindPage<ItemSummary>, EwsError> {
        self.call(
            ctx("FindItem", mailbox, Some(folder_id)),
            mailbox,
            request::find_item(request::FolderRef::Id(folder_id), offset, page),
            parse::find_item,
            |_| None,
        )
        .await
    }
}

#[async_trait]
impl EwsWrite for HttpEws {
    async fn create_folder(
        &self,
        mailbox: &Mailbox,
        parent: request::FolderRef<'_>,
        display_name: &str,
        folder_class: Option<&str>,
    ) -> Result<String, EwsError> {
        let parent_s = match parent {
            request::FolderRef::Id(id) | request::FolderRef::Distinguished(id) => id,
        };
        self.call(
            ctx("CreateFolder", mailbox, Some(parent_s)),
            mailbox,
            request::create_folder(parent, display_name, folder_class),
            parse::create_folder,
            |_| None,
        )
        .await
    }

    async fn find_items_by_message_id(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        internet_message_id: &str,
    ) -> Result<Vec<ItemId>, EwsError> {
        let page = self
            .call(
                ctx("FindItem", mailbox, Some(folder_id)),
                mailbox,
                request::find_items_by_message_id(folder_id, internet_message_id, 50),
                parse::find_item,
                |_| None,
            )
            .await?;
        Ok(page.entries.into_iter().map(|e| e.id).collect())
    }

    async fn create_item_mime(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        mime: &[u8],
        item_class: &str,
        is_read: bool,
    ) -> Result<ItemId, EwsError> {
        self.call(
            ctx("CreateItem", mailbox, Some(folder_id)),
            mailbox,
            request::create_item_mime(folder_id, mime, item_class, is_read),
            parse::create_item,
            |_| None,
        )
        .await
    }

    async fn upload_item(
        &self,
        mailbox: &Mailbox,
        folder_id: &str,
        data: &[u8],
    ) -> Result<ItemId, EwsError> {
        self.call(
            ctx("UploadItems", mailbox, Some(folder_id)),
            mailbox,
            request::upload_item(folder_id, data),
            parse::upload_item,
            |_| None,
        )
        .await
    }

    async fn set_is_read(
        &self,
        mailbox: &Mailbox,
        id: &ItemId,
        is_read: bool,
    ) -> Result<ItemId, EwsError> {
        self.call(
            ErrorContext {
                operation: "UpdateItem",
                mailbox: Some(mailbox.smtp.clone()),
                folder: None,
                item: Some(id.id.clone()),
            },
            mailbox,
            request::update_is_read(id, is_read),
            parse::update_item,
            |_| None,
        )
        .await
    }

    async fn delete_item_hard(&self, mailbox: &Mailbox, id: &ItemId) -> Result<(), EwsError> {
        let c = ErrorContext {
            operation: "DeleteItem",
            mailbox: Some(mailbox.smtp.clone()),
            folder: None,
            item: Some(id.id.clone()),
        };
        let res = self
            .call(
                c.clone(),
                mailbox,
                request::delete_item_hard(std::slice::from_ref(id)),
                parse::delete_item,
                batch_throttled,
            )
            .await?;
        match res.into_iter().next() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if e.kind() == ErrorKind::ItemNotFound => Ok(()),
            Some(Err(e)) => Err(e.with_context(&c)),
            None => {
                Err(EwsError::malformed("DeleteItem without a response message").with_context(&c))
            }
        }
    }
}
