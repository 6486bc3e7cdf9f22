//! Certificates for the tests: one test CA (ECDSA P-256) that signs the registry's, the token
//! issuer's and the fakes' serving certificates, and the token issuer's signing certificate.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// A serving certificate and its key, in PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    /// A rustls server configuration presenting this certificate, HTTP/1.1 only.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The test CA. Its certificate goes to `--ca-file`; without it, the registries are signed by an
/// unknown authority.
pub struct TestCa {
    pub cert_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "registry-gate test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(3650);
        params.not_after = now + Duration::days(1);
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        TestCa { cert_pem: issuer.pem(), issuer }
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid now.
    pub fn server(&self, names: &[&str]) -> ServerCert {
        let now = OffsetDateTime::now_utc();
        self.server_valid(names, now - Duration::hours(1), now + Duration::days(1))
    }

    /// A serving certificate that expired a year ago.
    pub fn expired_server(&self, names: &[&str]) -> ServerCert {
        let now = OffsetDateTime::now_utc();
        self.server_valid(names, now - Duration::days(800), now - Duration::days(365))
    }

    fn server_valid(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> ServerCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("server key");
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// The test token issuer's signing key and its self-signed certificate, which goes into the
/// registry's `rootcertbundle` and into every token's `x5c` header.
pub struct SigningCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8, for ring.
    pub key_pkcs8: Vec<u8>,
}

impl SigningCert {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "registry-gate test token issuer");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        let cert = params.self_signed(&key).expect("signing certificate");
        SigningCert { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pkcs8: key.serialize_der() }
    }
}
