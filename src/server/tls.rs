//! TLS for the webhook port: rustls (ring), with a certificate that reloads when its files
//! change, so cert-manager can rotate it with no restart and no failed handshake.
//!
//! The resolver hands every new handshake the current certificate from an `ArcSwap`; a poll of
//! the files' modification times and sizes swaps in a new one. Polling, rather than inotify,
//! survives the kubelet's `..data` symlink swap without special cases, and a one-second poll is
//! far quicker than any rotation schedule. A bad new pair (unreadable, mismatched, not PEM) is
//! refused loudly and the serving certificate stays; so is one that has expired or is not valid
//! yet, and a certificate within a week of expiry is warned about at every load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the serving certificate chain and its key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The certificate file holds no PEM certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    /// The key file holds no PEM private key.
    #[error("{path} holds no PEM private key (PKCS#8, SEC1 or PKCS#1): {detail}")]
    NoKey { path: PathBuf, detail: String },
    /// The key is of a type rustls cannot sign with, or does not belong to the certificate.
    #[error("the key in {key} cannot serve the certificate in {cert}: {detail}")]
    Unusable { cert: PathBuf, key: PathBuf, detail: String },
    /// The certificate is not valid now: every client would refuse it.
    #[error("the certificate in {path} is not valid now: {detail}")]
    NotValidNow { path: PathBuf, detail: String },
}

impl CertificateFiles {
    /// Reads and checks the pair.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        self.load_with_expiry().map(|(certified, _)| certified)
    }

    /// Reads and checks the pair; also when the certificate expires (Unix time).
    pub fn load_with_expiry(&self) -> Result<(CertifiedKey, i64), TlsError> {
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: self.cert.clone() });
        }
        let expires = check_validity(&self.cert, &chain[0])?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::NoKey { path: self.key.clone(), detail: e.to_string() })?;
        let unusable =
            |detail: String| TlsError::Unusable { cert: self.cert.clone(), key: self.key.clone(), detail };
        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| unusable(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(|e| unusable(e.to_string()))?;
        Ok((certified, expires))
    }

    /// Modification times and sizes: what the poll compares.
    fn fingerprint(&self) -> Option<[(SystemTime, u64); 2]> {
        let stat =
            |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Some([stat(&self.cert)?, stat(&self.key)?])
    }
}

/// Refuses a serving certificate that has expired or is not valid yet: serving it would fail
/// every handshake, and the API server would report only "x509: certificate has expired".
/// Returns when it expires (Unix time).
fn check_validity(path: &Path, certificate: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let not_valid = |detail: String| TlsError::NotValidNow { path: path.to_owned(), detail };
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|e| not_valid(format!("it cannot be parsed as X.509: {e}")))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now < validity.not_before {
        return Err(not_valid(format!("it is valid only from {}", validity.not_before)));
    }
    if now > validity.not_after {
        return Err(not_valid(format!("it expired at {}", validity.not_after)));
    }
    if let Some(left) = validity.time_to_expiration()
        && left < time::Duration::days(7)
    {
        tracing::warn!(target: "registry_gate::tls", cert = %path.display(), expires = %validity.not_after, "serving certificate expires within a week");
    }
    Ok(validity.not_after.timestamp())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Serves the current certificate to every handshake.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: CertificateFiles,
    current: ArcSwap<CertifiedKey>,
    /// `registry_gate_tls_certificate_expiry_timestamp_seconds`, set at every load.
    expiry: prometheus::IntGauge,
}

impl ReloadingCertificate {
    /// Loads the pair; a server must not start without a usable certificate.
    pub fn new(files: CertificateFiles, expiry: prometheus::IntGauge) -> Result<Arc<Self>, TlsError> {
        let (certified, expires) = files.load_with_expiry()?;
        expiry.set(expires);
        Ok(Arc::new(ReloadingCertificate { files, current: ArcSwap::from_pointee(certified), expiry }))
    }

    /// Polls the files every `interval` and swaps in a changed pair, until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut seen = self.files.fingerprint();
        loop {
            tokio::time::sleep(interval).await;
            let now = self.files.fingerprint();
            if now == seen || now.is_none() {
                continue;
            }
            match self.files.load_with_expiry() {
                Ok((certified, expires)) => {
                    self.current.store(Arc::new(certified));
                    self.expiry.set(expires);
                    seen = now;
                    tracing::info!(target: "registry_gate::tls", cert = %self.files.cert.display(), "serving certificate reloaded");
                }
                // Files are often written one after the other; a half-written pair is retried at
                // the next poll, and only a pair that stays bad is worth an error each time.
                Err(e) => {
                    seen = now;
                    tracing::error!(target: "registry_gate::tls", error = %e, "new certificate refused; still serving the previous one");
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3) that serves HTTP/2 and HTTP/1.1.
pub fn server_config(certificate: Arc<ReloadingCertificate>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
