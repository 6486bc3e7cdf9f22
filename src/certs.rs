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

/// Writes `contents` to `path`. A private file is written to a new file readable by its owner
/// alone and renamed over `path`: opening an existing file keeps its mode, so overwriting a
/// world-readable `tls.key` in place left the new key world-readable.
fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    if !private {
        return std::fs::write(path, contents);
    }
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".{}.new", std::process::id()));
    let staging = PathBuf::from(staging);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&staging).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&staging, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            Err(e)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_key_is_private_even_over_a_world_readable_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("registry-gate-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = dir.join(TLS_KEY);
        std::fs::write(&key, "old key").expect("old key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");

        let files = generate(&["localhost".to_owned()]).expect("certificates").write(&dir).expect("written");
        let mode = std::fs::metadata(&files.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "tls.key mode {mode:o}");
        assert!(std::fs::read_to_string(&files.key).expect("key").contains("PRIVATE KEY"));
        let leftovers = std::fs::read_dir(&dir).expect("dir").filter_map(Result::ok).count();
        assert_eq!(leftovers, 3, "ca.crt, tls.crt and tls.key, no staging file");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
