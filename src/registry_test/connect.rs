//! Connections opened one stage at a time, so that a failure names its stage: DNS
//! (`lookup_host`), TCP, TLS (rustls on ring, Mozilla's roots plus any given), then one
//! HTTP/1.1 exchange (hyper) over the stream.
//!
//! Every step has the caller's timeout, and everything read from the server is bounded: the
//! answer's head by hyper's buffer, its body by the caller's limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::header::{HOST, HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::shown;
use super::target::bracketed;

/// An answer's status line and headers together may be at most this long (hyper refuses the
/// answer past it, and reads at most this much more before noticing). Real registries send
/// under 2 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Addresses tried, in the resolver's order: enough for dual-stack hosts with a few of each.
const MAX_ADDRESSES_TRIED: usize = 4;
const AGENT: &str = concat!("registry-gate/", env!("CARGO_PKG_VERSION"), " (registry test)");

/// A stream HTTP can run over: TCP, or TLS over TCP. `Sync` too, so that a test can run on any
/// worker thread of a multi-threaded runtime (the controller's).
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Io for T {}

/// Why a step failed: a short machine-readable `reason` and a message for people. Neither ever
/// holds a credential; server-provided text appears only through [`shown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub reason: &'static str,
    pub message: String,
}

fn step_error(reason: &'static str, message: impl Into<String>) -> StepError {
    StepError { reason, message: message.into() }
}

/// One HTTP answer, body bounded.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The body was longer than the limit; `body` holds what was read before it.
    pub truncated: bool,
}

/// Where requests go: a resolved host with its TLS configuration. Each request gets its own
/// connection (the first one reuses the stream the staged open made), so that no answer body
/// has to be drained for keep-alive.
pub struct Endpoint {
    /// Without brackets: what SNI and the certificate check take.
    host: String,
    /// `Host` header: `host[:port]`, port only when not the scheme's default.
    authority: String,
    addrs: Vec<SocketAddr>,
    tls: Option<Arc<ClientConfig>>,
    loopback_only: bool,
    timeout: Duration,
    ready: Option<Box<dyn Io>>,
}

/// Which step of [`open`] failed.
pub enum OpenError {
    Dns(StepError),
    Connect(StepError),
    Tls(StepError),
}

/// Resolves `host`, connects, and shakes hands, each step with `timeout`. `tls` is `None` for
/// plain HTTP, which is allowed to loopback addresses only.
pub async fn open(
    host: &str,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<Endpoint, OpenError> {
    let addresses = resolve(host, port, timeout).await.map_err(OpenError::Dns)?;
    let loopback_only = tls.is_none();
    let (tcp, _) = connect(&addresses, timeout, loopback_only).await.map_err(OpenError::Connect)?;
    let stream: Box<dyn Io> = match &tls {
        Some(config) => handshake(tcp, host, config.clone(), timeout).await.map_err(OpenError::Tls)?.0,
        None => Box::new(tcp),
    };
    Ok(Endpoint::new(host, port, addresses, tls, timeout, stream))
}

impl Endpoint {
    /// An endpoint whose first request goes over `stream`, opened step by step by the caller.
    pub fn new(
        host: &str,
        port: u16,
        addrs: Vec<SocketAddr>,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
        stream: Box<dyn Io>,
    ) -> Self {
        let default_port = if tls.is_some() { 443 } else { 80 };
        let authority =
            if port == default_port { bracketed(host) } else { format!("{}:{port}", bracketed(host)) };
        let loopback_only = tls.is_none();
        Endpoint { host: host.to_owned(), authority, addrs, tls, loopback_only, timeout, ready: Some(stream) }
    }

    /// `GET path` with an optional `Authorization`, reading at most `body_limit` bytes of body.
    pub async fn get(
        &mut self,
        path: &str,
        authorization: Option<HeaderValue>,
        body_limit: usize,
    ) -> Result<Answer, StepError> {
        let stream = match self.ready.take() {
            Some(stream) => stream,
            None => self.reconnect().await?,
        };
        let mut request = Request::get(path)
            .header(HOST, &self.authority)
            .header(USER_AGENT, AGENT)
            .body(Empty::<Bytes>::new())
            .map_err(|_| step_error("request", "the request path is not valid in a URL"))?;
        if let Some(mut value) = authorization {
            value.set_sensitive(true);
            request.headers_mut().insert(hyper::header::AUTHORIZATION, value);
        }
        match tokio::time::timeout(self.timeout, exchange(stream, request, body_limit)).await {
            Ok(result) => result,
            Err(_) => Err(step_error("timeout", format!("no answer within {}", seconds(self.timeout)))),
        }
    }

    /// A fresh connection to an address that answered before.
    async fn reconnect(&self) -> Result<Box<dyn Io>, StepError> {
        let (tcp, _) = connect(&self.addrs, self.timeout, self.loopback_only).await?;
        match &self.tls {
            Some(config) => Ok(handshake(tcp, &self.host, config.clone(), self.timeout).await?.0),
            None => Ok(Box::new(tcp)),
        }
    }
}

async fn exchange(
    stream: Box<dyn Io>,
    request: Request<Empty<Bytes>>,
    body_limit: usize,
) -> Result<Answer, StepError> {
    let not_http =
        |e: hyper::Error| step_error("not-http", format!("the server did not answer in HTTP/1.1 ({e})"));
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(not_http)?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await.map_err(not_http)?;
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(not_http)?.into_data() else { continue };
        if bytes.len() + data.len() > body_limit {
            truncated = true;
            break;
        }
        bytes.extend_from_slice(&data);
    }
    drop(driver);
    Ok(Answer { status: parts.status, headers: parts.headers, body: bytes, truncated })
}

/// Aborts the connection task when the exchange is over, however it ended.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, StepError> {
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(timeout, lookup).await {
        Err(_) => Err(step_error(
            "timeout",
            format!("{} was not resolved within {}", shown(host), seconds(timeout)),
        )),
        Ok(Err(e)) => Err(step_error("not-found", format!("{} cannot be resolved: {e}", shown(host)))),
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                return Err(step_error("not-found", format!("{} has no address", shown(host))));
            }
            Ok(addresses)
        }
    }
}

pub async fn connect(
    addresses: &[SocketAddr],
    timeout: Duration,
    loopback_only: bool,
) -> Result<(TcpStream, SocketAddr), StepError> {
    let candidates: Vec<SocketAddr> =
        addresses.iter().copied().filter(|a| !loopback_only || a.ip().is_loopback()).collect();
    if candidates.is_empty() {
        return Err(step_error(
            "not-loopback",
            "plain HTTP (--plain-http) is for loopback registries only, and this host resolves to other addresses",
        ));
    }
    let mut failures = Vec::new();
    let mut reason = "refused";
    for address in candidates.iter().take(MAX_ADDRESSES_TRIED) {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, *address));
            }
            Ok(Err(e)) => {
                if e.kind() != io::ErrorKind::ConnectionRefused {
                    reason = "unreachable";
                }
                failures.push(format!("{address}: {e}"));
            }
            Err(_) => {
                reason = "timeout";
                failures.push(format!("{address}: no answer within {}", seconds(timeout)));
            }
        }
    }
    Err(step_error(reason, format!("cannot connect: {}", failures.join("; "))))
}

pub async fn handshake(
    tcp: TcpStream,
    host: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<(Box<dyn Io>, String), StepError> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| step_error("handshake", format!("{} is not a name TLS can check", shown(host))))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => return Err(step_error("timeout", format!("no TLS handshake within {}", seconds(timeout)))),
        Ok(Err(e)) => return Err(tls_failure(&e, host)),
        Ok(Ok(stream)) => stream,
    };
    let version = match stream.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
        _ => "TLS",
    };
    Ok((Box::new(stream), version.to_owned()))
}

/// A failed handshake in words, with a reason that tells the usual causes apart.
fn tls_failure(error: &io::Error, host: &str) -> StepError {
    let rustls_error = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let host = shown(host);
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(certificate)) => certificate_failure(certificate, &host),
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => step_error(
            "not-tls",
            "the server did not answer in TLS (a plain-HTTP registry? --plain-http tests one on loopback)",
        ),
        Some(rustls::Error::AlertReceived(alert)) => {
            step_error("handshake", format!("the server ended the handshake with the TLS alert {alert:?}"))
        }
        Some(rustls::Error::PeerIncompatible(what)) => step_error(
            "incompatible",
            format!("the server offers no TLS version or cipher this client accepts ({what:?})"),
        ),
        Some(other) => step_error("handshake", format!("TLS handshake failed: {other}")),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            step_error("handshake", "the server closed the connection during the TLS handshake")
        }
        None => step_error("handshake", format!("TLS handshake failed: {error}")),
    }
}

fn certificate_failure(error: &CertificateError, host: &str) -> StepError {
    match error {
        CertificateError::UnknownIssuer => step_error(
            "unknown-authority",
            format!(
                "the certificate of {host} is signed by an authority that is not trusted (not one of the public CAs): give the registry's CA with --ca-file"
            ),
        ),
        CertificateError::NotValidForName => {
            step_error("name-mismatch", format!("the certificate is not valid for the name {host}"))
        }
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<String> = presented.iter().take(4).map(|name| shown(name)).collect();
            let more = if presented.len() > 4 { ", ..." } else { "" };
            step_error(
                "name-mismatch",
                format!(
                    "the certificate is not valid for the name {host}: it names {}{more}",
                    names.join(", ")
                ),
            )
        }
        CertificateError::Expired => step_error("expired", format!("the certificate of {host} has expired")),
        CertificateError::ExpiredContext { not_after, .. } => {
            step_error("expired", format!("the certificate of {host} expired {}", ago(*not_after)))
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => step_error(
            "not-yet-valid",
            format!("the certificate of {host} is not valid yet (is this machine's clock right?)"),
        ),
        CertificateError::Revoked => step_error("revoked", format!("the certificate of {host} is revoked")),
        other => step_error("bad-certificate", format!("the certificate of {host} is refused: {other}")),
    }
}

/// `3 days ago`, for an expiry.
fn ago(time: UnixTime) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let seconds = now.saturating_sub(time.as_secs());
    match seconds {
        0..120 => format!("{seconds} seconds ago"),
        120..7200 => format!("{} minutes ago", seconds / 60),
        7200..172_800 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

pub fn seconds(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

/// The client configuration: ring, Mozilla's roots and `extra_roots`, or no verification at
/// all when `insecure` (which the caller must announce loudly). HTTP/1.1 only.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
    insecure: bool,
) -> Result<Arc<ClientConfig>, StepError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| step_error("config", format!("TLS configuration: {e}")))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (index, certificate) in extra_roots.iter().enumerate() {
            roots.add(certificate.clone()).map_err(|e| {
                step_error("config", format!("CA certificate {} of --ca-file is not usable: {e}", index + 1))
            })?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `--insecure-skip-tls-verify`: any certificate for any name. The handshake's own signatures
/// are still checked, so the connection is at least with whoever holds the key it presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
