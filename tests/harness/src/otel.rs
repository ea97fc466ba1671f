//! A real OpenTelemetry collector (rotel, `ops/scripts/install-tools.sh otel`) receiving OTLP
//! on loopback and writing every span and metric data point it received to its debug log,
//! which tests read.
//!
//! Why not OTLP → collector → Prometheus as in production: no collector installable here has a
//! Prometheus exporter or remote-write exporter (rotel 0.0.1-alpha10 exports OTLP, Datadog,
//! ClickHouse, X-Ray, Kafka), and Debian's Prometheus (2.42 in bookworm, 2.53 in trixie) is
//! built without the OTLP receiver. So the tests stop at the collector's receiver.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use super::{HarnessError, Proc, Result, free_port, retry_port_clash, tools_bin, wait_ready};

/// rotel with its OTLP/HTTP and OTLP/gRPC receivers on free loopback ports; what it receives
/// goes to its debug log (and no further).
#[derive(Debug)]
pub struct OtelCollector {
    proc: Proc,
    http_port: u16,
    grpc_port: u16,
    dir: TempDir,
}

impl OtelCollector {
    /// Starts the collector and waits until its OTLP/HTTP receiver accepts connections.
    pub fn start() -> Result<Self> {
        let rotel = tools_bin("rotel").map_err(|e| {
            HarnessError(format!(
                "rotel is needed and could not be installed; run ops/scripts/install-tools.sh \
                 otel: {e}"
            ))
        })?;
        retry_port_clash(|| {
            let dir = tempfile::Builder::new()
                .prefix("mailvault-otel-")
                .tempdir()?;
            let http_port = free_port()?;
            let grpc_port = free_port()?;
            let mut cmd = Command::new(&rotel);
            cmd.arg("start")
                .arg(format!("--otlp-http-endpoint=127.0.0.1:{http_port}"))
                .arg(format!("--otlp-grpc-endpoint=127.0.0.1:{grpc_port}"))
                // Received data is logged (ids, parents, links, attributes, values), then dropped.
                .arg("--exporter=blackhole")
                .arg("--debug-log=traces")
                .arg("--debug-log=metrics")
                .arg("--debug-log-verbosity=detailed")
                .arg("--batch-timeout=100ms");
            let mut proc = Proc::spawn(&mut cmd, dir.path(), "rotel")?;
            wait_ready(&mut proc, "rotel", || {
                TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, http_port))).is_ok()
            })?;
            Ok(Self {
                proc,
                http_port,
                grpc_port,
                dir,
            })
        })
    }

    /// Base URL of the OTLP/HTTP receiver (`[telemetry] otlp_endpoint`).
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `127.0.0.1:PORT` of the OTLP/gRPC receiver.
    pub fn grpc_address(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// Everything the collector logged so far: what it received, and its own messages.
    pub fn log(&self) -> String {
        ["rotel.stdout.log", "rotel.stderr.log"]
            .iter()
            .map(|f| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let log = self.log();
        log.split("Span #")
            .skip(1)
            .map(entry)
            .map(|text| {
                let fields = fields(text);
                let get = |k: &str| {
                    fields
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                ReceivedSpan {
                    trace_id: get("Trace ID"),
                    span_id: get("ID"),
                    parent_id: get("Parent ID"),
                    name: get("Name"),
                    text: text.to_owned(),
                }
            })
            .collect()
    }

    /// The data point values of metric `name` in the last export that had it (`None` before
    /// the first), with the block they came from.
    pub fn last_metric(&self, name: &str) -> Option<(Vec<String>, String)> {
        let log = self.log();
        log.split("Metric #")
            .skip(1)
            .map(entry)
            .filter(|text| fields(text).iter().any(|(k, v)| k == "Name" && v == name))
            .last()
            .map(|text| {
                let values = fields(text)
                    .into_iter()
                    .filter(|(k, _)| k == "Value")
                    .map(|(_, v)| v)
                    .collect();
                (values, text.to_owned())
            })
    }

    /// The tail of the collector's output, for failure messages.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// Where its logs are.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// One span from the collector's debug log (`--debug-log-verbosity=detailed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    pub name: String,
    /// The whole entry: attributes, events and links (with their trace and span ids).
    pub text: String,
}

/// One entry of the debug log: up to the next resource or scope (what follows the last
/// entry of a scope belongs to something else).
fn entry(text: &str) -> &str {
    let end = ["\nResource", "\nScope"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The `key : value` and `-> key: value` lines of a debug log entry, up to the next entry.
fn fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("-> ");
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Trace id and span id of a W3C `traceparent` (version 00, sampled), as the services put
/// on NATS messages; panics on anything else.
pub fn parse_traceparent(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00", "traceparent version in {tp:?}");
    assert_eq!(parts[3], "01", "sampled: {tp:?}");
    (parts[1].to_owned(), parts[2].to_owned())
}
