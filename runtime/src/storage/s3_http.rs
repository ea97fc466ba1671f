//! The HTTP client the S3 store uses for S3-compatible endpoints: the SDK's hyper stack, with
//! one difference — the client acknowledges what it has read at once (Linux `TCP_QUICKACK`).
//!
//! Why: Garage (2.5) does not set `TCP_NODELAY` on the connections it accepts and writes a
//! response's headers and its body with separate writes. Nagle's algorithm then holds the body
//! until the client acknowledges the headers, and the client — in delayed-ACK ("ping-pong")
//! mode on a kept-alive connection — waits its delayed-ACK timer (40 ms on Linux) first.
//! Captured on loopback: headers, ~40 ms of silence, the client's bare ACK, then the body.
//! That put ~40 ms on most small ranged GETs (GetItem p50 41 ms, p99 92–140 ms). The SDK's own
//! connector sets `TCP_NODELAY` on the client side already; that does not help, the held
//! segment is the server's. `TCP_QUICKACK` is not sticky (the kernel returns to delayed ACKs by
//! itself), so it is set again before every read: the ACK for the headers just read then goes
//! out at once and the server's body follows without waiting.
//!
//! TLS stays as the SDK does it (rustls, the platform's root certificates; ring as the crypto
//! provider like the rest of this workspace). Proxies from the environment (`HTTPS_PROXY`) are
//! not applied here; a store behind a proxy sets `s3.tcp_quickack = false` and gets the SDK's
//! default client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("loading the platform's root certificates for an https S3 endpoint: {0}")]
    Roots(#[source] io::Error),
}

/// A TCP stream that acknowledges received data at once (see the module comment).
#[derive(Debug)]
pub struct QuickAckStream {
    io: TokioIo<TcpStream>,
}

impl QuickAckStream {
    fn ack_now(&self) {
        // Linux only; elsewhere the stream behaves like the SDK's. A failure here only means
        // the delayed ACK stays delayed, which is slower but correct.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(self.io.inner()).set_tcp_quickack(true);
    }
}

impl Read for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.ack_now();
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAckStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// hyper-util's TCP connector (with `TCP_NODELAY`, like the SDK's), handing out
/// [`QuickAckStream`]s.
#[derive(Debug, Clone)]
pub struct QuickAckConnector {
    tcp: TcpConnector,
}

impl tower_service::Service<Uri> for QuickAckConnector {
    type Response = QuickAckStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAckStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(QuickAckStream { io })
        })
    }
}

/// The [`HttpClient`] handed to the S3 SDK: one pooled hyper client for every operation.
#[derive(Debug, Clone)]
pub struct QuickAckHttpClient {
    client: Client<HttpsConnector<QuickAckConnector>, SdkBody>,
}

impl QuickAckHttpClient {
    /// `https` says whether the endpoint uses TLS: only then must root certificates load
    /// (a container without any still reaches an `http://` Garage).
    pub fn new(connect_timeout: Duration, https: bool) -> Result<Self, HttpClientError> {
        let mut tcp = TcpConnector::new();
        // The URI scheme is checked by the TLS layer above, which also handles plain http.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(e) if https => return Err(HttpClientError::Roots(e)),
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| HttpClientError::Roots(io::Error::other(e)))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let connector = builder
            .https_or_http()
            .enable_http1()
            .wrap_connector(QuickAckConnector { tcp });
        let client = Client::builder(TokioExecutor::new())
            // As the SDK's default: idle connections live 90 s.
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self { client })
    }
}

impl HttpClient for QuickAckHttpClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The connect timeout is fixed when the client is built; attempt timeouts are enforced
        // by the SDK's orchestrator above the connector.
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for QuickAckHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        HttpConnectorFuture::new(async move {
            let response = response.await.map_err(classify)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Sorts hyper's errors the way the SDK's own connector does, so retries behave the same:
/// connect and I/O failures are retried, misuse is not.
fn classify(err: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper_err = find_source::<hyper::Error>(&err);
    let timeout = hyper_err.is_some_and(|h| h.is_timeout());
    let user = hyper_err.is_some_and(|h| h.is_user());
    let incomplete = hyper_err.is_some_and(|h| h.is_incomplete_message());
    let io = err.is_connect()
        || find_source::<io::Error>(&err).is_some()
        || hyper_err.is_some_and(|h| h.is_closed() || h.is_canceled());
    let boxed: BoxError = Box::new(err);
    if timeout {
        ConnectorError::timeout(boxed)
    } else if user {
        ConnectorError::user(boxed)
    } else if incomplete {
        ConnectorError::other(boxed, Some(ErrorKind::TransientError))
    } else if io {
        ConnectorError::io(boxed)
    } else {
        ConnectorError::other(boxed, None)
    }
}

fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}
