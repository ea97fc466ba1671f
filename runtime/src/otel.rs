//! OpenTelemetry in every service: W3C trace context carried in NATS headers, one `tracing`
//! subscriber that turns the services' spans into OpenTelemetry spans, and OTLP push (spans and
//! the very counters `/metrics` serves) when a `[telemetry]` section names an endpoint.
//!
//! Trace context always flows, exporter or not: the span ids written into the `traceparent`
//! headers of published messages come from the SDK's tracer, which exists even when nothing is
//! exported, so a downstream service that does export still finds its parents.
//!
//! OTLP goes over HTTP with protobuf bodies (`http/protobuf`, the OTLP default), on the
//! workspace's own hyper + rustls (ring) stack: no gRPC stack in the collector and the
//! aggregator, and the same endpoint works with the OpenTelemetry Collector, with Prometheus'
//! own OTLP receiver (metrics) and through ordinary HTTP proxies and ingresses.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use serde::{Deserialize, Deserializer};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use opentelemetry::trace::{SpanContext, TraceId};

use crate::metrics::{Sample, Value, family};

/// The W3C trace-context header every mailvault message carries.
pub const TRACEPARENT: &str = "traceparent";

/// Most links one batch span gets (the SDK's default span limit): a batch of more deliveries
/// links the first ones and counts the rest in the span's `deliveries` field.
pub const MAX_LINKS: usize = 128;

/// Writes trace context into the headers of a NATS message.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads trace context from the headers of a NATS message.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// The remote span a message's headers name (`None`: no header, or not a valid
/// `traceparent` — a malformed header is ignored, never an error).
pub fn remote_context(headers: Option<&async_nats::HeaderMap>) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers?));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Ties the span of a batch to the messages it handles, the OpenTelemetry way for batch
/// consumers: the child of the only one, or linked to each (up to [`MAX_LINKS`]). Call it
/// before the span is first entered.
pub fn connect_batch(span: &tracing::Span, parents: &[SpanContext]) {
    match parents {
        [] => {}
        [one] => {
            // Fails only once the span has started, which the caller rules out.
            let _ = span.set_parent(Context::new().with_remote_span_context(one.clone()));
        }
        many => {
            for sc in many.iter().take(MAX_LINKS) {
                span.add_link(sc.clone());
            }
        }
    }
}

/// The `traceparent` value naming `span` (`None` when the span is disabled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` value naming a span context (e.g. one read from a message, to pass on).
pub fn traceparent_of(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Puts `span`'s trace context into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The only OTLP protocol spoken (see the module documentation for why).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn yes() -> bool {
    true
}

fn default_export_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The optional `[telemetry]` section of a service config: OTLP push. Without
/// `otlp_endpoint` nothing is exported (trace context still flows through NATS headers).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `"http://otel-collector:4318"`; spans go to
    /// `<base>/v1/traces`, metrics to `<base>/v1/metrics` (as `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `"http/protobuf"` (the only one).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// How often metrics are pushed, and the longest a finished span waits to be sent.
    #[serde(default = "default_export_interval", deserialize_with = "duration")]
    pub export_interval: Duration,
    /// Deadline of one export request.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// PEM file of the CA(s) that signed an `https` endpoint's certificate; replaces the
    /// platform's root certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File of `Name: value` lines sent as HTTP headers with every export request — what a
    /// hosted or authenticating receiver asks for (`Authorization: Bearer …`, an API key).
    /// Blank lines and `#` comments are skipped. The values are never logged or printed.
    #[serde(default)]
    pub headers_file: Option<PathBuf>,
    /// `service.name` resource attribute (default: the binary's name, e.g.
    /// `mailvault-aggregator`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// `service.instance.id` resource attribute (default: the host name, the pod's name in
    /// Kubernetes).
    #[serde(default)]
    pub service_instance: Option<String>,
    /// Export spans (default true).
    #[serde(default = "yes")]
    pub traces: bool,
    /// Export metrics (default true).
    #[serde(default = "yes")]
    pub metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            protocol: OtlpProtocol::default(),
            export_interval: default_export_interval(),
            timeout: default_timeout(),
            ca_file: None,
            headers_file: None,
            service_name: None,
            service_instance: None,
            traces: true,
            metrics: true,
        }
    }
}

/// `scheme://host/path` of an endpoint with any `user:password@` replaced: a URL may carry
/// credentials, and configs are printed (`--check`) and logged.
pub fn redact_endpoint(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => endpoint.to_owned(),
    }
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(redact_endpoint),
            )
            .field("protocol", &self.protocol)
            .field("export_interval", &self.export_interval)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("headers_file", &self.headers_file)
            .field("service_name", &self.service_name)
            .field("service_instance", &self.service_instance)
            .field("traces", &self.traces)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl TelemetryConfig {
    /// Pushes what is wrong with the section (for a service's config validation).
    pub fn problems(&self, p: &mut Vec<String>) {
        if let Some(e) = &self.otlp_endpoint {
            match e.parse::<hyper::Uri>() {
                Ok(u) if !matches!(u.scheme_str(), Some("http" | "https")) => p.push(format!(
                    "telemetry.otlp_endpoint {:?} must start with http:// or https://",
                    redact_endpoint(e)
                )),
                Ok(u) if u.host().is_none_or(str::is_empty) => p.push(format!(
                    "telemetry.otlp_endpoint {:?} names no host",
                    redact_endpoint(e)
                )),
                Ok(u) if u.query().is_some() => p.push(format!(
                    "telemetry.otlp_endpoint {:?} must not have a query",
                    redact_endpoint(e)
                )),
                Ok(u) => {
                    if self.ca_file.is_some() && u.scheme_str() != Some("https") {
                        p.push("telemetry.ca_file needs an https:// otlp_endpoint".to_owned());
                    }
                }
                // The parse error may quote the URL, credentials and all: not shown.
                Err(_) => p.push(format!(
                    "telemetry.otlp_endpoint {:?} is not a URL like \"http://otel-collector:4318\"",
                    redact_endpoint(e)
                )),
            }
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            p.push(format!("telemetry.ca_file {} is not a file", ca.display()));
        }
        if let Some(h) = &self.headers_file
            && !h.is_file()
        {
            p.push(format!(
                "telemetry.headers_file {} is not a file",
                h.display()
            ));
        }
        if self.export_interval < Duration::from_millis(100) {
            p.push("telemetry.export_interval must be at least 100ms".to_owned());
        }
        if self.timeout.is_zero() {
            p.push("telemetry.timeout must not be zero".to_owned());
        }
        for (key, v) in [
            ("service_name", &self.service_name),
            ("service_instance", &self.service_instance),
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                p.push(format!("telemetry.{key} must not be empty"));
            }
        }
    }

    fn base(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(|e| e.trim_end_matches('/'))
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("log filter {directive:?}: {source}")]
    Filter {
        directive: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("telemetry.ca_file {path}: {cause}")]
    Ca { path: PathBuf, cause: String },
    /// `cause` names the line, never its value.
    #[error("telemetry.headers_file {path}: {cause}")]
    Headers { path: PathBuf, cause: String },
    #[error("OTLP TLS setup: {0}")]
    Tls(String),
    #[error("OTLP {signal} exporter: {cause}")]
    Exporter { signal: &'static str, cause: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The OTLP exporters' HTTP client: hyper + rustls, run on the service's tokio runtime (the
/// SDK exports from threads of its own, which have no runtime).
#[derive(Debug, Clone)]
struct OtlpHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    /// From `headers_file`, marked sensitive (kept out of `Debug` output).
    headers: Arc<Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>>,
}

/// Reads a `headers_file`: `Name: value` per line, blank lines and `#` comments skipped.
fn read_headers(
    path: &std::path::Path,
) -> Result<Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>, OtelError> {
    let err = |cause: String| OtelError::Headers {
        path: path.to_path_buf(),
        cause,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(err(format!("line {}: not `Name: value`", n + 1)));
        };
        let name = hyper::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| err(format!("line {}: not a header name", n + 1)))?;
        let mut value = hyper::header::HeaderValue::from_str(value.trim()).map_err(|_| {
            err(format!(
                "line {}: the value is not a valid header value",
                n + 1
            ))
        })?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}

/// Largest response body read (OTLP answers are a few bytes; partial-success messages small).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

impl OtlpHttp {
    fn new(cfg: &TelemetryConfig, runtime: tokio::runtime::Handle) -> Result<Self, OtelError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &cfg.ca_file {
            Some(path) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject as _;
                let ca_err = |cause: String| OtelError::Ca {
                    path: path.clone(),
                    cause,
                };
                let mut roots = rustls::RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?
                {
                    roots
                        .add(cert.map_err(|e| ca_err(e.to_string()))?)
                        .map_err(|e| ca_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no certificate in it".into()));
                }
                builder.with_tls_config(
                    rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .map_err(|e| OtelError::Tls(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            }
            None if cfg.base().is_some_and(|b| b.starts_with("https:")) => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| OtelError::Tls(format!("platform root certificates: {e}")))?,
            // Plain http: no roots needed (a container may have none).
            None => builder.with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| OtelError::Tls(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(cfg.timeout));
        let connector = builder.https_or_http().enable_http1().wrap_connector(tcp);
        let headers = match &cfg.headers_file {
            Some(path) => read_headers(path)?,
            None => Vec::new(),
        };
        Ok(OtlpHttp {
            client: Client::builder(TokioExecutor::new()).build(connector),
            runtime,
            timeout: cfg.timeout,
            headers: Arc::new(headers),
        })
    }
}

#[async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let headers = self.headers.clone();
        let task = self.runtime.spawn(async move {
            let (mut parts, body) = request.into_parts();
            for (name, value) in headers.iter() {
                parts.headers.insert(name.clone(), value.clone());
            }
            let exchange = async {
                let response = client
                    .request(Request::from_parts(parts, Full::new(body)))
                    .await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await?;
                Ok::<_, HttpError>(Response::from_parts(parts, body.to_bytes()))
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| HttpError::from(format!("no answer within {timeout:?}")))?
        });
        task.await?
    }
}

/// Where the metrics exported over OTLP come from: the samples `/metrics` renders.
pub type SampleSource = Arc<dyn Fn() -> Vec<Sample> + Send + Sync>;

fn attributes(labels: &[(&'static str, &'static str)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect()
}

/// One observable instrument per metric family name, reading the service's own counters at
/// each export: nothing is counted twice, and the names are exactly those of `/metrics`.
/// `…_total`, `…_sum` and `…_count` are monotonic counters, anything else a gauge.
fn register(
    meter: &opentelemetry::metrics::Meter,
    source: &SampleSource,
) -> Vec<Box<dyn Any + Send + Sync>> {
    let mut kept: Vec<Box<dyn Any + Send + Sync>> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in source() {
        if !seen.insert(s.name) {
            continue;
        }
        let (name, help, src) = (s.name, s.help, source.clone());
        let gauge = family(name).1 == "gauge";
        // The four instrument kinds differ only in builder and value type.
        macro_rules! observe {
            ($builder:ident, $variant:ident) => {
                kept.push(Box::new(
                    meter
                        .$builder(name)
                        .with_description(help)
                        .with_callback(move |o| {
                            for x in src().into_iter().filter(|x| x.name == name) {
                                if let Value::$variant(v) = x.value {
                                    o.observe(v, &attributes(&x.labels));
                                }
                            }
                        })
                        .build(),
                ))
            };
        }
        match (gauge, s.value) {
            (false, Value::Int(_)) => observe!(u64_observable_counter, Int),
            (false, Value::Float(_)) => observe!(f64_observable_counter, Float),
            (true, Value::Int(_)) => observe!(u64_observable_gauge, Int),
            (true, Value::Float(_)) => observe!(f64_observable_gauge, Float),
        }
    }
    kept
}

fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The running telemetry of a service. Call [`Telemetry::shutdown`] before the process ends:
/// it sends what is still buffered.
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: Option<SdkMeterProvider>,
    _instruments: Vec<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.meter.is_some())
            .finish_non_exhaustive()
    }
}

/// Log line format of [`Telemetry::init`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogLines {
    #[default]
    Text,
    Json,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber — log lines on stderr filtered by `RUST_LOG`
    /// (default `info`), and OpenTelemetry spans of the `mailvault` crates at info and above
    /// whatever `RUST_LOG` says (their ids travel in NATS headers) — and, when `cfg` names an
    /// endpoint, the OTLP exporters: spans, and the metrics `metrics` returns.
    /// `service` is the default `service.name`. Must run inside a tokio runtime.
    pub fn init(
        cfg: &TelemetryConfig,
        service: &str,
        lines: LogLines,
        metrics: Option<SampleSource>,
    ) -> Result<Telemetry, OtelError> {
        let resource = Resource::builder()
            .with_service_name(
                cfg.service_name
                    .clone()
                    .unwrap_or_else(|| service.to_owned()),
            )
            .with_attributes(
                cfg.service_instance
                    .clone()
                    .or_else(host_name)
                    .map(|i| KeyValue::new("service.instance.id", i)),
            )
            .build();
        let http = match cfg.base() {
            Some(_) => Some(OtlpHttp::new(cfg, tokio::runtime::Handle::current())?),
            None => None,
        };
        let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
        if let (Some(base), Some(http)) = (cfg.base(), &http)
            && cfg.traces
        {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(http.clone())
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/traces"))
                .with_timeout(cfg.timeout)
                .build()
                .map_err(|e| OtelError::Exporter {
                    signal: "traces",
                    cause: e.to_string(),
                })?;
            let batch = BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(cfg.export_interval)
                        .build(),
                )
                .build();
            tracer = tracer.with_span_processor(batch);
        }
        let tracer = tracer.build();
        let mut meter = None;
        let mut instruments = Vec::new();
        if let (Some(base), Some(http), Some(source)) = (cfg.base(), &http, &metrics)
            && cfg.metrics
        {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_http_client(http.clone())
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/metrics"))
                .with_timeout(cfg.timeout)
                .build()
                .map_err(|e| OtelError::Exporter {
                    signal: "metrics",
                    cause: e.to_string(),
                })?;
            let reader = PeriodicReader::builder(exporter)
                .with_interval(cfg.export_interval)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(reader)
                .build();
            instruments = register(&provider.meter("mailvault"), source);
            meter = Some(provider);
        }

        let directive = std::env::var("RUST_LOG")
            .ok()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| "info".to_owned());
        let filter = tracing_subscriber::EnvFilter::try_new(&directive).map_err(|source| {
            OtelError::Filter {
                directive: directive.clone(),
                source,
            }
        })?;
        // Colours only for a person at a terminal: in a pod or a log file the escape codes
        // would be stored with every line.
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let fmt = match lines {
            LogLines::Text => fmt.boxed(),
            LogLines::Json => fmt.json().flatten_event(true).boxed(),
        };
        // The SDK's own diagnostics (export failures) are tracing events of the
        // `opentelemetry*` targets: they reach the log lines, never the exported spans.
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("mailvault"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("mailvault", tracing::Level::INFO),
            );
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(spans)
            .try_init()
            .map_err(|_| OtelError::AlreadyInstalled)?;
        if let Some(e) = &cfg.otlp_endpoint {
            tracing::info!(
                endpoint = %redact_endpoint(e),
                traces = cfg.traces,
                metrics = cfg.metrics && metrics.is_some(),
                interval = ?cfg.export_interval,
                "exporting telemetry over OTLP"
            );
        }
        Ok(Telemetry {
            tracer,
            meter,
            _instruments: instruments,
        })
    }

    /// Exports what is buffered and stops the exporters. Blocks (the SDK waits for its
    /// export threads): from async code, call it through `spawn_blocking`.
    pub fn shutdown(self) {
        if let Some(m) = &self.meter
            && let Err(e) = m.shutdown()
        {
            tracing::warn!(error = %e, "flushing metrics over OTLP");
        }
        if let Err(e) = self.tracer.shutdown() {
            tracing::warn!(error = %e, "flushing spans over OTLP");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(tp: &str) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(TRACEPARENT, tp);
        h
    }

    #[test]
    fn traceparent_is_read_from_headers_and_bad_ones_ignored() {
        let sc = remote_context(Some(&headers(TP))).expect("valid");
        assert_eq!(traceparent_of(&sc), TP);
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        assert!(remote_context(None).is_none());
        assert!(remote_context(Some(&async_nats::HeaderMap::new())).is_none());
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zzzzzzzzzzzzzzzz-01",
        ] {
            assert!(remote_context(Some(&headers(bad))).is_none(), "{bad}");
        }
    }

    /// A subscriber with the OpenTelemetry layer and no exporter, as a service without an
    /// endpoint runs.
    fn with_tracer<R>(f: impl FnOnce() -> R) -> R {
        let provider = SdkTracerProvider::builder().build();
        let sub = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(sub, f)
    }

    #[test]
    fn a_batch_of_one_continues_its_trace_and_passes_it_on() {
        with_tracer(|| {
            let parent = remote_context(Some(&headers(TP))).expect("valid");
            let span = tracing::info_span!("batch");
            connect_batch(&span, std::slice::from_ref(&parent));
            let tp = traceparent(&span).expect("span has a context");
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "same trace: {tp}"
            );
            assert!(!tp.contains("00f067aa0ba902b7"), "own span id: {tp}");
            let mut h = async_nats::HeaderMap::new();
            inject(&span, &mut h);
            assert_eq!(
                h.get(TRACEPARENT).map(|v| v.as_str().to_owned()),
                Some(tp.clone())
            );
            let sc = remote_context(Some(&h)).expect("round trip");
            assert_eq!(sc.trace_id(), parent.trace_id());
        });
    }

    #[test]
    fn a_batch_of_many_starts_its_own_trace() {
        with_tracer(|| {
            let a = remote_context(Some(&headers(TP))).expect("valid");
            let b = remote_context(Some(&headers(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )))
            .expect("valid");
            let span = tracing::info_span!("batch");
            connect_batch(&span, &[a.clone(), b.clone()]);
            let tp = traceparent(&span).expect("span has a context");
            assert!(
                !tp.contains(&a.trace_id().to_string()) && !tp.contains(&b.trace_id().to_string()),
                "linked, not a child: {tp}"
            );
        });
    }

    #[test]
    fn no_subscriber_no_header() {
        let span = tracing::info_span!("batch");
        assert_eq!(traceparent(&span), None);
        let mut h = async_nats::HeaderMap::new();
        inject(&span, &mut h);
        assert!(h.get(TRACEPARENT).is_none());
    }

    /// The exporters' HTTP client against a real HTTPS server (the EWS simulator, with a
    /// throw-away CA): trusted through `ca_file`, refused without it or with another CA. Any
    /// HTTP answer (the simulator knows no OTLP) proves the TLS session was established.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_https_endpoint_is_trusted_through_ca_file_only() {
        use opentelemetry_http::HttpClient as _;
        let pki = mailvault_ews_sim::tls::self_signed(&["localhost"]).expect("pki");
        let other = mailvault_ews_sim::tls::self_signed(&["localhost"]).expect("pki");
        let mut sim_cfg = mailvault_ews_sim::SimConfig::new("contoso.com");
        sim_cfg.tls = Some(pki.identity.clone());
        let sim = mailvault_ews_sim::Simulator::start(sim_cfg)
            .await
            .expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, wrong) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
        std::fs::write(&ca, &pki.ca_pem).expect("ca");
        std::fs::write(&wrong, &other.ca_pem).expect("other ca");
        let endpoint = format!("https://localhost:{}", sim.addr().port());
        let send = |ca_file: Option<PathBuf>| {
            let cfg = TelemetryConfig {
                otlp_endpoint: Some(endpoint.clone()),
                ca_file,
                timeout: Duration::from_secs(5),
                ..TelemetryConfig::default()
            };
            let url = format!("{endpoint}/v1/metrics");
            async move {
                let http = OtlpHttp::new(&cfg, tokio::runtime::Handle::current())?;
                let request = Request::post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(Bytes::from_static(b"\n\x00"))?;
                http.send_bytes(request).await
            }
        };
        let answer = send(Some(ca.clone()))
            .await
            .expect("trusted through ca_file");
        assert!(answer.status().as_u16() >= 200, "{answer:?}");
        assert_eq!(sim.stats().tls_failures, 0);

        send(Some(wrong)).await.expect_err("another CA");
        // The platform's roots do not know the throw-away CA either.
        send(None).await.expect_err("platform roots");
        // The server counts a refused handshake in its own task, after the client gave up.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while sim.stats().tls_failures < 2 && std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let failures = sim.stats().tls_failures;
        assert!(
            failures >= 2,
            "both refused during the handshake: {failures}"
        );

        let mut p = Vec::new();
        let bad = TelemetryConfig {
            otlp_endpoint: Some(endpoint.clone()),
            ca_file: Some(dir.path().join("missing.pem")),
            ..TelemetryConfig::default()
        };
        bad.problems(&mut p);
        assert!(p.iter().any(|m| m.contains("missing.pem")), "{p:?}");
        std::fs::write(dir.path().join("empty.pem"), "").expect("empty");
        let empty = TelemetryConfig {
            ca_file: Some(dir.path().join("empty.pem")),
            ..bad
        };
        let e = OtlpHttp::new(&empty, tokio::runtime::Handle::current()).expect_err("no cert");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        sim.shutdown().await;
    }

    /// `headers_file` reaches a real server that checks credentials (the EWS simulator's
    /// HTTP Basic): with the file's `Authorization` line the request is let in, without it or
    /// with a wrong password it is refused with 401 and counted as a failed logon. A malformed
    /// file is an error naming the line, never the value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn headers_file_lines_are_sent_with_every_export_request() {
        use base64::Engine as _;
        use opentelemetry_http::HttpClient as _;
        let sim =
            mailvault_ews_sim::Simulator::start(mailvault_ews_sim::SimConfig::new("contoso.com"))
                .await
                .expect("simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let basic = |user_pass: &str| {
            format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        let good = dir.path().join("good");
        std::fs::write(
            &good,
            format!(
                "# receiver credentials\n\n{}\nX-Scope-OrgID: tenant-1\n",
                basic("svc-mailvault:secret")
            ),
        )
        .expect("write");
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, basic("svc-mailvault:not-it")).expect("write");
        let endpoint = format!("http://{}", sim.addr());
        let send = |headers_file: Option<PathBuf>| {
            let cfg = TelemetryConfig {
                otlp_endpoint: Some(endpoint.clone()),
                headers_file,
                timeout: Duration::from_secs(5),
                ..TelemetryConfig::default()
            };
            // The simulator only authenticates its EWS path; the client sends the same
            // headers whatever the path.
            let url = format!("{endpoint}/EWS/Exchange.asmx");
            async move {
                let http = OtlpHttp::new(&cfg, tokio::runtime::Handle::current()).expect("client");
                let request = Request::post(url)
                    .header("content-type", "text/xml")
                    .body(Bytes::from_static(b"<not-soap/>"))
                    .expect("request");
                http.send_bytes(request).await.expect("an answer")
            }
        };
        let before = sim.stats().auth_failures;
        let let_in = send(Some(good.clone())).await;
        assert_ne!(let_in.status().as_u16(), 401, "{let_in:?}");
        assert_eq!(
            sim.stats().auth_failures,
            before,
            "the credentials were accepted"
        );
        assert_eq!(send(None).await.status().as_u16(), 401);
        assert_eq!(send(Some(wrong)).await.status().as_u16(), 401);
        assert_eq!(sim.stats().auth_failures, before + 2);

        let bad = dir.path().join("bad");
        std::fs::write(
            &bad,
            "Authorization: Bearer s3cr3t-token\nno colon here s3cr3t\n",
        )
        .expect("write");
        let cfg = TelemetryConfig {
            otlp_endpoint: Some(endpoint.clone()),
            headers_file: Some(bad),
            ..TelemetryConfig::default()
        };
        let e = OtlpHttp::new(&cfg, tokio::runtime::Handle::current()).expect_err("malformed");
        let msg = e.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "the value is not shown: {msg}");
        let mut p = Vec::new();
        TelemetryConfig {
            headers_file: Some(dir.path().join("missing")),
            ..cfg
        }
        .problems(&mut p);
        assert!(p.iter().any(|m| m.contains("headers_file")), "{p:?}");
        sim.shutdown().await;
    }

    #[test]
    fn config_defaults_validation_and_redaction() {
        let c: TelemetryConfig = toml::from_str("").expect("empty section");
        assert_eq!(c, TelemetryConfig::default());
        assert_eq!(c.export_interval, Duration::from_secs(10));
        let mut p = Vec::new();
        c.problems(&mut p);
        assert!(p.is_empty(), "{p:?}");

        assert!(toml::from_str::<TelemetryConfig>("otlp_endpoit = \"http://x\"").is_err());
        assert!(toml::from_str::<TelemetryConfig>("protocol = \"grpc\"").is_err());
        let c: TelemetryConfig = toml::from_str(
            "otlp_endpoint = \"https://u:s3cret@otel:4318/\"\nprotocol = \"http/protobuf\"\nexport_interval = \"2s\"",
        )
        .expect("parse");
        assert_eq!(c.base(), Some("https://u:s3cret@otel:4318"));
        assert_eq!(c.export_interval, Duration::from_secs(2));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***@otel:4318/"), "{shown}");

        let bad = TelemetryConfig {
            otlp_endpoint: Some("ftp://user:s3cret@otel".into()),
            export_interval: Duration::ZERO,
            timeout: Duration::ZERO,
            ca_file: Some("/nonexistent/ca.pem".into()),
            service_name: Some(" ".into()),
            ..TelemetryConfig::default()
        };
        let mut p = Vec::new();
        bad.problems(&mut p);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().all(|m| !m.contains("s3cret")), "{p:?}");
        let mut p = Vec::new();
        TelemetryConfig {
            otlp_endpoint: Some("http://otel:4318".into()),
            ca_file: Some("/".into()),
            ..TelemetryConfig::default()
        }
        .problems(&mut p);
        assert!(p.iter().any(|m| m.contains("needs an https")), "{p:?}");
    }
}
