//! A real Prometheus (Debian's package, `ops/scripts/install-tools.sh prometheus`) scraping
//! given targets every second, with its storage in a temporary directory and its HTTP API on a
//! free loopback port.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::{
    HarnessError, Proc, Result, err, free_port, http_get_status, retry_port_clash, tools_bin,
    wait_ready,
};

/// A Prometheus server scraping `/metrics` of its targets (job `mailvault`) every second.
#[derive(Debug)]
pub struct Prometheus {
    proc: Option<Proc>,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with a scrape config for `targets` and waits until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Result<Self> {
        Self::start_with_rules(targets, &[])
    }

    /// Like [`Prometheus::start`], with these rule files loaded and evaluated every second.
    /// Prometheus refuses to start on a rule file it cannot parse.
    pub fn start_with_rules(targets: &[SocketAddr], rule_files: &[PathBuf]) -> Result<Self> {
        let bin = tools_bin("prometheus").map_err(|e| {
            HarnessError(format!(
                "Prometheus is needed and could not be installed; run ops/scripts/install-tools.sh \
                 (or `install-tools.sh prometheus`): {e}"
            ))
        })?;
        retry_port_clash(|| {
            let dir = tempfile::Builder::new()
                .prefix("mailvault-prometheus-")
                .tempdir()?;
            let port = free_port()?;
            let config = dir.path().join("prometheus.yml");
            let list = targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let rules = rule_files
                .iter()
                .map(|f| format!("\"{}\"", f.display()))
                .collect::<Vec<_>>()
                .join(", ");
            fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     rule_files: [{rules}]\n\
                     scrape_configs:\n  - job_name: mailvault\n    static_configs:\n      - targets: [{list}]\n"
                ),
            )?;
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn");
            let mut proc = Proc::spawn(&mut cmd, dir.path(), "prometheus")?;
            wait_ready(&mut proc, "prometheus", || {
                http_get_status(port, "/-/ready") == Some(200)
            })?;
            Ok(Self {
                proc: Some(proc),
                port,
                dir,
            })
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The generated scrape configuration and the storage live here.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The body of `GET path` from Prometheus's HTTP server (status 200 only).
    pub fn get(&self, path: &str) -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // HTTP/1.0: the body ends when the connection closes (no chunked encoding).
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| HarnessError(format!("prometheus {path}: no HTTP header in {text}")))?;
        if head.split_whitespace().nth(1) != Some("200") {
            return err(format!("prometheus {path}: {head}\n{body}"));
        }
        Ok(body.to_owned())
    }

    /// The raw JSON of an instant query (`/api/v1/query`).
    pub fn query_json(&self, promql: &str) -> Result<String> {
        self.get(&format!("/api/v1/query?query={}", percent_encode(promql)))
    }

    /// The values of every series an instant query returns (empty while nothing was
    /// scraped). A minimal reader of Prometheus's vector result: `"value":[<time>,"<v>"]`.
    pub fn query_values(&self, promql: &str) -> Result<Vec<f64>> {
        let json = self.query_json(promql)?;
        if !json.contains("\"status\":\"success\"") {
            return err(format!("prometheus query {promql:?}: {json}"));
        }
        let mut out = Vec::new();
        for part in json.split("\"value\":[").skip(1) {
            let v = part
                .split_once(",\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(v, _)| v)
                .ok_or_else(|| HarnessError(format!("prometheus query {promql:?}: {json}")))?;
            out.push(
                v.parse()
                    .map_err(|e| HarnessError(format!("value {v:?} of {promql:?}: {e}")))?,
            );
        }
        Ok(out)
    }

    /// The raw JSON of the loaded rules with their health and last error (`/api/v1/rules`).
    pub fn rules_json(&self) -> Result<String> {
        self.get("/api/v1/rules")
    }

    /// What Prometheus says about its targets (`/api/v1/targets`), for failure messages.
    pub fn targets(&self) -> String {
        self.get("/api/v1/targets")
            .unwrap_or_else(|e| format!("(targets unavailable: {e})"))
    }

    /// Prometheus's log so far.
    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode("up{job=\"mailvault\"}"),
            "up%7Bjob%3D%22mailvault%22%7D"
        );
    }
}
