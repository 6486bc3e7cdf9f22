//! Development certificates: a CA and a serving certificate signed by it (ECDSA P-256), so that
//! `serve` works on a fresh machine and the API server can be given the CA as `caBundle`.
//! Production clusters use cert-manager (manifests/overlays/cert-manager).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::server::tls::CertificateFiles;

/// File names inside a certificates directory, as Kubernetes TLS Secrets name their keys.
pub const CA_CERT: &str = "ca.crt";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// How long a development serving certificate is valid.
const VALIDITY_DAYS: i64 = 365;

/// The names a development certificate covers unless told otherwise: loopback, and the
/// in-cluster Service names of the default manifests.
pub fn default_names() -> Vec<String> {
    [
        "localhost",
        "127.0.0.1",
        "::1",
        "registry-gate",
        "registry-gate.registry-gate",
        "registry-gate.registry-gate.svc",
        "registry-gate.registry-gate.svc.cluster.local",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A generated CA and serving certificate, PEM-encoded.
pub struct DevCertificates {
    pub ca_cert: String,
    pub tls_cert: String,
    pub tls_key: String,
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Generates a CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<DevCertificates, CertsError> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "registry-gate development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(VALIDITY_DAYS * 2);
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let tls_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, names.first().map_or("registry-gate", String::as_str));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let issuer = Issuer::new(ca_params, ca_key);
    let tls_cert = params.signed_by(&tls_key, &issuer)?;
    Ok(DevCertificates { ca_cert: ca_cert.pem(), tls_cert: tls_cert.pem(), tls_key: tls_key.serialize_pem() })
}

impl DevCertificates {
    /// Writes `ca.crt`, `tls.crt` and `tls.key` (owner-only) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<CertificateFiles, CertsError> {
        let write = |name: &str, contents: &str, private: bool| {
            let path = dir.join(name);
            write_file(&path, contents, private)
                .map_err(|source| CertsError::Write { path: path.clone(), source })?;
            Ok::<PathBuf, CertsError>(path)
        };
        std::fs::create_dir_all(dir).map_err(|source| CertsError::Write { path: dir.to_owned(), source })?;
        write(CA_CERT, &self.ca_cert, false)?;
        let cert = write(TLS_CERT, &self.tls_cert, false)?;
        let key = write(TLS_KEY, &self.tls_key, true)?;
        Ok(CertificateFiles { cert, key })
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    options.open(path)?.write_all(contents.as_bytes())
}

/// The serving pair in `dir`, generated first if it is not there.
pub fn ensure(dir: &Path) -> Result<CertificateFiles, CertsError> {
    let files = CertificateFiles { cert: dir.join(TLS_CERT), key: dir.join(TLS_KEY) };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    tracing::info!(target: "registry_gate::tls", dir = %dir.display(), "generating development certificates");
    generate(&default_names())?.write(dir)
}
