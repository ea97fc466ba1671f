//! Whether a connection would carry credentials or mail in plain text off this machine.
//!
//! Every network hop supports TLS; plain text is accepted only to a loopback address (a sidecar,
//! a test, an SSH tunnel) or where a setting says so in so many words (`allow_plaintext`,
//! `--allow-plaintext`). What is refused names the address and the setting.

use std::net::IpAddr;

/// Schemes that are TLS.
const TLS_SCHEMES: &[&str] = &["https", "tls", "wss"];

/// The host of `url` (`scheme://[user[:pass]@]host[:port][/…]`), brackets of IPv6 removed.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    hostport.split(':').next().unwrap_or_default()
}

/// `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `url` is TLS by its scheme.
pub fn is_tls_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| TLS_SCHEMES.iter().any(|t| s.eq_ignore_ascii_case(t)))
}

/// Refuses sending `what` to `url` in plain text unless it stays on this machine or `allowed`.
/// `setting` is what the operator sets to allow it anyway.
pub fn check(url: &str, what: &str, setting: &str, allowed: bool) -> Result<(), String> {
    if allowed || is_tls_url(url) || is_loopback_host(host_of(url)) {
        return Ok(());
    }
    Err(format!(
        "refusing to send {what} in plain text to {}: use TLS (https://, tls://), or set \
         {setting} if the network path is protected otherwise",
        host_of(url)
    ))
}

/// Refuses listening in plain text on an address other machines reach, unless `allowed`.
pub fn check_listen(
    addr: std::net::SocketAddr,
    what: &str,
    setting: &str,
    allowed: bool,
) -> Result<(), String> {
    if allowed || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing to serve {what} in plain text on {addr}: configure TLS, listen on loopback, \
         or set {setting} if a mesh or proxy in front provides TLS"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_schemes() {
        assert_eq!(host_of("http://user:pw@ex.example:80/x"), "ex.example");
        assert_eq!(host_of("nats://[::1]:4222"), "::1");
        assert_eq!(host_of("nats://10.0.0.1"), "10.0.0.1");
        assert!(is_loopback_host("127.0.0.9") && is_loopback_host("::1"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(!is_loopback_host("exchange.contoso.com") && !is_loopback_host("10.0.0.1"));
        assert!(is_tls_url("HTTPS://x") && is_tls_url("tls://x") && !is_tls_url("nats://x"));
    }

    #[test]
    fn plain_text_off_this_machine_needs_saying_so() {
        assert!(
            check(
                "https://mail.contoso.com/EWS",
                "the EWS password",
                "x",
                false
            )
            .is_ok()
        );
        assert!(check("http://127.0.0.1:8080/EWS", "the EWS password", "x", false).is_ok());
        let e = check(
            "http://mail.contoso.com/EWS",
            "the EWS password",
            "[ews] allow_plaintext",
            false,
        )
        .expect_err("refused");
        assert!(
            e.contains("mail.contoso.com") && e.contains("[ews] allow_plaintext"),
            "{e}"
        );
        assert!(check("http://mail.contoso.com/EWS", "the EWS password", "x", true).is_ok());
        let public: std::net::SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        assert!(check_listen(public, "the API", "x", false).is_err());
        assert!(check_listen(public, "the API", "x", true).is_ok());
        let local: std::net::SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        assert!(check_listen(local, "the API", "x", false).is_ok());
    }
}
