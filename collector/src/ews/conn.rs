//! One HTTP/1.1 connection the client owns (hyper + tokio-rustls), for NTLM: its three messages
//! must travel on one connection, and a connection pool decides for itself which connection a
//! request gets (reqwest hands a connection back to its pool asynchronously, so the request
//! after a 401 often gets a fresh one). Trust matches the reqwest client of Basic auth: the
//! webpki roots plus `ca_file`, or nothing checked with `insecure_skip_verify`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::{CertificateDer, ServerName};

use super::EwsError;

fn permanent(code: &str, message: String) -> EwsError {
    EwsError::Permanent {
        code: code.into(),
        message,
        context: Box::default(),
    }
}

/// Opens connections to the EWS endpoint.
pub(crate) struct Connector {
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    host: String,
    port: u16,
    /// `Host` header.
    authority: String,
    /// Path and query of the endpoint.
    path: String,
    timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A request on an owned connection.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

impl Connector {
    pub(crate) fn new(
        url: &reqwest::Url,
        extra_roots: &[CertificateDer<'static>],
        insecure: bool,
        timeout: Duration,
    ) -> Result<Self, EwsError> {
        let host = url
            .host_str()
            .ok_or_else(|| permanent("Url", format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| permanent("Url", format!("{url}: no port")))?;
        let tls = match url.scheme() {
            "https" => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| permanent("TLS", e.to_string()))?;
                let mut cfg = if insecure {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                        .with_no_client_auth()
                } else {
                    let mut roots = rustls::RootCertStore::empty();
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                    for c in extra_roots {
                        roots
                            .add(c.clone())
                            .map_err(|e| permanent("CaFile", format!("bad CA certificate: {e}")))?;
                    }
                    builder.with_root_certificates(roots).with_no_client_auth()
                };
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| permanent("Url", format!("{url}: {e}")))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
            }
            "http" => None,
            other => {
                return Err(permanent(
                    "Url",
                    format!("{url}: unsupported scheme {other}"),
                ));
            }
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Connector {
            tls,
            host,
            port,
            authority,
            path,
            timeout,
        })
    }

    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// A new connection (TCP, TLS, HTTP/1.1 handshake); its driver runs on a task of its own
    /// and ends when the sender is dropped or the server closes the connection.
    pub(crate) async fn connect(&self) -> Result<Sender, EwsError> {
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| EwsError::transient(format!("connecting to {}: timed out", self.authority)))?
        .map_err(|e| EwsError::transient(format!("connecting to {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((tls, name)) => {
                let stream = tokio::time::timeout(self.timeout, tls.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| {
                        EwsError::transient(format!(
                            "TLS handshake with {}: timed out",
                            self.authority
                        ))
                    })?
                    .map_err(|e| {
                        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                            Some(r) => permanent(
                                "TLS",
                                format!(
                                    "TLS handshake with {} failed: {r} (trust the issuing CA with \
                                 ews.ca_file)",
                                    self.authority
                                ),
                            ),
                            None => EwsError::transient(format!(
                                "TLS handshake with {}: {e}",
                                self.authority
                            )),
                        }
                    })?;
                handshake(stream).await
            }
        }
    }
}

async fn handshake<S>(io: S) -> Result<Sender, EwsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| EwsError::transient(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "EWS connection ended with an error");
        }
    });
    Ok(sender)
}

/// A hyper response as a reqwest one (so one code path reads both), its body bounded by
/// `deadline` like reqwest's request timeout.
pub(crate) fn into_reqwest(
    resp: hyper::Response<hyper::body::Incoming>,
    deadline: tokio::time::Instant,
) -> reqwest::Response {
    let (parts, body) = resp.into_parts();
    let data = Box::pin(http_body_util::BodyDataStream::new(body));
    let bounded = futures::stream::unfold(Some(data), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "EWS response body not complete within the request timeout",
                )),
                None,
            )),
        }
    });
    reqwest::Response::from(hyper::Response::from_parts(
        parts,
        reqwest::Body::wrap_stream(bounded),
    ))
}

/// `insecure_skip_verify`: any certificate is accepted (signatures are still checked, so the
/// handshake itself is sound).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
