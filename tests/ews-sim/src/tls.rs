//! HTTPS for the simulator: a server identity (certificate chain + key, PEM) and, for tests and
//! the demo, a throw-away CA that issues one on the fly.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailvault_ews_sim::{SimConfig, Simulator, tls};
//! let pki = tls::self_signed(&["localhost", "127.0.0.1"])?;
//! let mut cfg = SimConfig::generated(7);
//! cfg.tls = Some(pki.identity.clone());
//! let sim = Simulator::start(cfg).await?;
//! // Clients trust `pki.ca_pem` (e.g. the collector's `ews.ca_file`).
//! println!("EWS at {}", sim.url()); // https://127.0.0.1:PORT/EWS/Exchange.asmx
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM CERTIFICATE found")]
    NoCertificate { what: String },
    #[error("{what}: bad PEM: {source}")]
    Pem {
        what: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate and key do not make a TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What the server presents: its certificate chain (leaf first) and private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field(
                "cert_chain_pem",
                &format!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    /// Reads a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1) from PEM files.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, TlsError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        Ok(TlsIdentity {
            cert_chain_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ring, HTTP/1.1 via ALPN).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate chain".into(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                what: "certificate chain".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "private key".into(),
                source,
            }
        })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        // EWS clients speak HTTP/1.1 (NTLM needs a connection of its own anyway).
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// A throw-away PKI: a CA certificate for clients to trust and a server identity it issued.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    /// The CA certificate (PEM): what a client puts in its trust store (`ews.ca_file`).
    pub ca_pem: String,
    /// Leaf certificate (then the CA certificate) and the leaf's key.
    pub identity: TlsIdentity,
}

/// Makes a fresh CA ("mailvault-ews-sim test CA") and a server certificate for `names` (DNS
/// names or IP addresses, e.g. `localhost`, `127.0.0.1`), valid for server authentication.
/// Keys are ECDSA P-256, generated anew on every call.
pub fn self_signed(names: &[&str]) -> Result<SelfSigned, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "mailvault-ews-sim test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<Vec<String>>(),
    )?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca)?;
    Ok(SelfSigned {
        ca_pem: ca.pem(),
        identity: TlsIdentity {
            cert_chain_pem: format!("{}{}", leaf_cert.pem(), ca.pem()),
            key_pem: leaf_key.serialize_pem(),
        },
    })
}
