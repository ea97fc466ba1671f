//! Connecting to NATS the same way from every service: a client name the server shows in its
//! connection list, an optional credentials file (JWT + NKey seed, what an operator-mode NATS
//! hands out per service) and an optional private CA for TLS.
//!
//! User and password may also sit in the URL (`nats://user:pass@host:4222`); [`redact_url`]
//! keeps them out of errors and logs. Several servers of a cluster are given comma-separated.

use std::path::PathBuf;

pub mod permissions;
pub use permissions::Component;

/// The `creds_file` / `ca_file` keys of a service's `[nats]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// NATS credentials file (`.creds`: user JWT and NKey seed). Never logged.
    pub creds_file: Option<PathBuf>,
    /// File holding the NKey seed (`SU...`) of this component's user, as `mailvault nats
    /// users` writes it for a server configured with NKey users. Never logged.
    pub nkey_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for the server's TLS certificate, in addition to the
    /// system's roots. Setting it requires TLS.
    pub ca_file: Option<PathBuf>,
    /// Connect with `nats://` (no TLS) to a server off this machine.
    pub allow_plaintext: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("NATS credentials file {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to NATS at {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("NATS: {0}")]
    Plaintext(String),
}

/// Connects `component` (shown to the server as `name`) to `url` with `auth`. Replies come on
/// the component's own inbox prefix, the only one its NATS user may read.
pub async fn connect(
    component: Component,
    name: &str,
    url: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, NatsConnectError> {
    // async-nats builds its TLS config from rustls' process-wide provider, and a workspace
    // build enables two (ring here, aws-lc-rs through tonic), so rustls would refuse to pick
    // one and panic at the first tls:// connect. Ring, like every other client here; an error
    // only means a provider was installed already.
    crate::install_crypto_provider();
    // With a CA file the client requires TLS whatever the URL says.
    if auth.ca_file.is_none() {
        for one in url.split(',') {
            crate::plaintext::check(
                &redact_url(one.trim()),
                "credentials and mail",
                "[nats] allow_plaintext = true",
                auth.allow_plaintext,
            )
            .map_err(NatsConnectError::Plaintext)?;
        }
    }
    // A service may start while NATS restarts (a rolling update, a crash): wait for it a while
    // instead of exiting at once; wrong credentials, TLS or addresses still fail at once.
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match attempt(component, name, url, auth).await {
            Ok(client) => return Ok(client),
            Err((e, true)) if started.elapsed() + wait < INITIAL_CONNECT_PATIENCE => {
                tracing::warn!(error = %e, retry_in = ?wait, "NATS is not reachable yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// How long [`connect`] keeps trying a NATS that refuses or does not answer.
pub const INITIAL_CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// One connection attempt; the flag says whether another may succeed (the server was not
/// reachable) rather than fail the same way (credentials, TLS, address).
async fn attempt(
    component: Component,
    name: &str,
    url: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, (NatsConnectError, bool)> {
    let fatal = |e| (e, false);
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(component.inbox_prefix());
    if let Some(path) = &auth.nkey_file {
        let seed = crate::secret_file::read_secret_file(path).map_err(|source| {
            fatal(NatsConnectError::Credentials {
                path: path.clone(),
                source,
            })
        })?;
        let seed = String::from_utf8(seed).map_err(|_| {
            fatal(NatsConnectError::Credentials {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not an NKey seed"),
            })
        })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(creds) = &auth.creds_file {
        opts = opts.credentials_file(creds).await.map_err(|source| {
            fatal(NatsConnectError::Credentials {
                path: creds.clone(),
                source,
            })
        })?;
    }
    if let Some(ca) = &auth.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let failed = |cause: String| NatsConnectError::Connect {
        url: redact_url(url),
        cause,
    };
    let servers = url
        .split(',')
        .map(|one| one.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fatal(failed(e.to_string())))?;
    // async-nats parses a user and password in the URL but never sends them.
    if let Some(s) = servers.iter().find(|s| s.username().is_some()) {
        opts = opts.user_and_password(
            s.username().unwrap_or_default().to_owned(),
            s.password().unwrap_or_default().to_owned(),
        );
    }
    opts.connect(servers).await.map_err(|e| {
        use async_nats::ConnectErrorKind as K;
        let again = matches!(e.kind(), K::Io | K::TimedOut | K::Dns | K::MaxReconnects);
        (failed(e.to_string()), again)
    })
}

/// `url` without the password (and user) it may carry, for errors and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, one),
            };
            let host_start = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..host_start];
            let shown = match authority.rsplit_once('@') {
                Some((_, host)) => format!("<redacted>@{host}{}", &rest[host_start..]),
                None => rest.to_owned(),
            };
            match scheme {
                Some(s) => format!("{s}://{shown}"),
                None => shown,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How often [`spawn_backlog_probe`] asks JetStream.
pub const BACKLOG_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps a backlog gauge current: every `every`, the messages the durable pull `consumer` has
/// not had acknowledged yet — not yet delivered (`num_pending`) plus delivered and awaiting
/// their ack (`num_ack_pending`) — as JetStream counts them, handed to `set`. Every replica
/// sharing the consumer reports the same number. A failed probe is logged and leaves the last
/// value. Runs until the task is aborted.
pub fn spawn_backlog_probe(
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    every: std::time::Duration,
    set: impl Fn(u64) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match consumer.info().await {
                Ok(info) => set(info.num_pending + info.num_ack_pending as u64),
                Err(e) => tracing::warn!(error = %e, "reading the consumer's backlog"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("nats://svc:s3cret@nats.contoso.com:4222"),
            "nats://<redacted>@nats.contoso.com:4222"
        );
        assert_eq!(
            redact_url("tls://a:b@n1:4222,tls://n2:4222"),
            "tls://<redacted>@n1:4222,tls://n2:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("u:p@host:4222"), "<redacted>@host:4222");
    }
}
