//! Serving a service's metrics: the Prometheus text exposition format (0.0.4) and a small
//! plain-HTTP endpoint with `GET /metrics` and `GET /healthz`.
//!
//! Each service keeps its own counters (a `Metrics` struct per crate); this module only turns
//! their [`Sample`]s into text ([`encode`]) and serves whatever a render closure returns
//! ([`MetricsServer::start`]). The endpoint exposes counters only — no configuration, no
//! mailbox or user names — so it needs neither TLS nor authentication; bind it to loopback or
//! a private network all the same.
//!
//! A metric's family and type follow from its name, as the project names metrics
//! (`docs/telemetry.md`): `…_total` is a counter, `…_sum` and `…_count` are the two series of a
//! summary named without the suffix, anything else is a gauge.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A sample's value. Counters stay integers so large byte counts keep every digit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) if x.is_nan() => f.write_str("NaN"),
            Value::Float(x) if x.is_infinite() => {
                f.write_str(if x > 0.0 { "+Inf" } else { "-Inf" })
            }
            // Display of f64 never uses an exponent; Prometheus parses plain decimals.
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

/// One series: metric name, label pairs (bounded values only), help text, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    pub help: &'static str,
    pub value: Value,
}

impl Sample {
    pub fn new(name: &'static str, help: &'static str, value: Value) -> Sample {
        Sample {
            name,
            labels: Vec::new(),
            help,
            value,
        }
    }
}

/// The family a series belongs to, and the family's type.
pub(crate) fn family(name: &str) -> (&str, &'static str) {
    if name.ends_with("_total") {
        (name, "counter")
    } else if let Some(base) = name.strip_suffix("_sum") {
        (base, "summary")
    } else if let Some(base) = name.strip_suffix("_count") {
        (base, "summary")
    } else {
        (name, "gauge")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The samples as Prometheus text (format 0.0.4): one `# HELP` and `# TYPE` per family, its
/// series together (Prometheus rejects a family that appears twice), families in the order
/// they first appear. The help of a family is that of its first series.
pub fn encode(samples: &[Sample]) -> String {
    let mut families: Vec<(&str, &'static str, Vec<&Sample>)> = Vec::new();
    for s in samples {
        let (name, kind) = family(s.name);
        match families.iter_mut().find(|(f, _, _)| *f == name) {
            Some((_, _, members)) => members.push(s),
            None => families.push((name, kind, vec![s])),
        }
    }
    let mut out = String::new();
    for (name, kind, members) in families {
        let help = members.first().map(|s| s.help).unwrap_or_default();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in members {
            out.push_str(s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

/// The optional `[metrics]` section of a service config. Without it (or without `listen`)
/// nothing is served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the plain-HTTP endpoint (`GET /metrics`, `GET /healthz`), e.g.
    /// `"127.0.0.1:9464"` or `"0.0.0.0:9464"` in a pod. Port 0 picks a free port.
    #[serde(default)]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The address to serve on, if configured; `Err` names what is wrong with `listen`.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        match &self.listen {
            None => Ok(None),
            Some(l) => l.parse().map(Some).map_err(|e| {
                format!("metrics.listen {l:?} is not an address like \"127.0.0.1:9464\": {e}")
            }),
        }
    }

    /// Pushes what is wrong with the section (for a service's config validation).
    pub fn problems(&self, problems: &mut Vec<String>) {
        if let Err(p) = self.address() {
            problems.push(p);
        }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServeError {
    #[error("{0}")]
    Config(String),
    #[error("binding the metrics endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Starts the endpoint when `config` asks for one (`None` when metrics are off). Keep the
/// server alive as long as the service runs: dropping it stops the endpoint.
pub async fn serve(
    config: &MetricsConfig,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> Result<Option<MetricsServer>, MetricsServeError> {
    match config.address().map_err(MetricsServeError::Config)? {
        Some(addr) => MetricsServer::start(addr, render).await.map(Some),
        None => Ok(None),
    }
}

/// What the endpoint serves at `/metrics`: a fresh rendering per request.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The running endpoint. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `render()` at `GET /metrics` and 200 at `GET /healthz` until
    /// dropped.
    pub async fn start(
        addr: SocketAddr,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<MetricsServer, MetricsServeError> {
        let bind = |source| MetricsServeError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let render: Render = Arc::new(render);
        let task = tokio::spawn(accept_loop(listener, render));
        tracing::info!(addr = %local, "metrics endpoint listening (GET /metrics, /healthz)");
        Ok(MetricsServer { addr: local, task })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, render: Render) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(respond(&req, &render)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let plain = "text/plain; charset=utf-8";
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, plain, "not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "method not allowed\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/metrics" {
        text(StatusCode::OK, CONTENT_TYPE_TEXT, render())
    } else {
        text(StatusCode::OK, plain, "ok\n".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn families_are_typed_by_name_and_kept_together() {
        let samples = vec![
            Sample::new("a_items_total", "Items.", Value::Int(3)),
            Sample::new("a_flush_seconds_sum", "Flush time.", Value::Float(0.25)),
            Sample {
                name: "a_events_total",
                labels: vec![("kind", "stored")],
                help: "Events.",
                value: Value::Int(1),
            },
            Sample::new("a_flush_seconds_count", "ignored", Value::Int(2)),
            Sample {
                name: "a_events_total",
                labels: vec![("kind", "say \"hi\"\\\n")],
                help: "ignored",
                value: Value::Int(0),
            },
            Sample::new("a_queue_items", "Line one\nback\\slash", Value::Int(7)),
        ];
        assert_eq!(
            encode(&samples),
            "# HELP a_items_total Items.\n\
             # TYPE a_items_total counter\n\
             a_items_total 3\n\
             # HELP a_flush_seconds Flush time.\n\
             # TYPE a_flush_seconds summary\n\
             a_flush_seconds_sum 0.25\n\
             a_flush_seconds_count 2\n\
             # HELP a_events_total Events.\n\
             # TYPE a_events_total counter\n\
             a_events_total{kind=\"stored\"} 1\n\
             a_events_total{kind=\"say \\\"hi\\\"\\\\\\n\"} 0\n\
             # HELP a_queue_items Line one\\nback\\\\slash\n\
             # TYPE a_queue_items gauge\n\
             a_queue_items 7\n"
        );
    }

    #[test]
    fn values_print_as_prometheus_reads_them() {
        assert_eq!(Value::Int(u64::MAX).to_string(), "18446744073709551615");
        assert_eq!(Value::Float(1.5e-6).to_string(), "0.0000015");
        assert_eq!(Value::Float(2.0).to_string(), "2");
        assert_eq!(Value::Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
    }

    #[test]
    fn config_is_optional_and_validated() {
        let none = MetricsConfig::default();
        assert_eq!(none.address(), Ok(None));
        let ok = MetricsConfig {
            listen: Some("127.0.0.1:9464".into()),
        };
        assert_eq!(
            ok.address(),
            Ok(Some("127.0.0.1:9464".parse().expect("addr")))
        );
        let mut p = Vec::new();
        MetricsConfig {
            listen: Some("localhost".into()),
        }
        .problems(&mut p);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("metrics.listen"), "{p:?}");
    }

    async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = hits.clone();
        let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), move || {
            let n = h.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            encode(&[Sample::new("x_renders_total", "Renders.", Value::Int(n))])
        })
        .await
        .expect("start");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let m = get(addr, "GET", "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(
            m.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{m}"
        );
        assert!(m.ends_with("x_renders_total 1\n"), "{m}");
        let m = get(addr, "GET", "/metrics").await;
        assert!(
            m.ends_with("x_renders_total 2\n"),
            "rendered per request: {m}"
        );

        let h = get(addr, "GET", "/healthz").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(get(addr, "GET", "/").await.starts_with("HTTP/1.1 404"));
        let post = get(addr, "POST", "/metrics").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");

        drop(server);
        // Stopping is asynchronous (the accept task is aborted); poll briefly for it.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                std::time::Instant::now() < end,
                "still accepting after drop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_it() {
        let first = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), String::new)
            .await
            .expect("start");
        let e = MetricsServer::start(first.local_addr(), String::new)
            .await
            .expect_err("address in use");
        assert!(
            e.to_string().contains(&first.local_addr().to_string()),
            "{e}"
        );
    }
}
