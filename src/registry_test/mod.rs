//! The registry connection test (`registry-gate registry test`, and the controller's periodic
//! checks): the Docker Registry HTTP API v2 handshake, one stage at a time, so that a failure
//! says which step broke and what to do about it.
//!
//! The stages, in the order they run ([`Stage`]):
//!
//! 1. `dns`: the API host resolves (Docker Hub's API is `registry-1.docker.io`);
//! 2. `connect`: a TCP connection opens;
//! 3. `tls`: the handshake succeeds and the certificate is valid for the host (rustls on ring,
//!    Mozilla's roots plus any CA given);
//! 4. `not-a-registry`: `GET /v2/` answers like a registry: 200 with `Docker-Distribution-Api-Version`
//!    (anonymous access), or 401;
//! 5. `challenge`: the 401's `WWW-Authenticate` is a Basic or Bearer challenge that can be answered;
//! 6. `token-endpoint` (Bearer only): the realm answers with a token;
//! 7. `credentials`: the registry accepts the user name and password (Basic), or the token;
//! 8. `permission`: nothing answers 403, and a JWT token's `access` claim grants `pull` on the
//!    repository.
//!
//! Without credentials the test shows whether anyone may pull: a Basic registry's test stops
//! after the challenge, and a Bearer registry is asked for an anonymous token, as a runtime
//! does for a public image (Docker Hub, GHCR and Quay answer `/v2/` with 401 to everyone, and
//! their anonymous tokens pull public images). Nothing fetches a manifest (Docker Hub counts
//! manifest fetches against its pull quota); `/v2/` and the token say enough.
//!
//! Secrets stay secret: [`Credentials`] has no `Display` and a `Debug` that hides the password,
//! tokens are sent as sensitive headers and never kept in the [`Report`], and no message repeats
//! a response body. Text a server chose (a realm, a certificate name) is printed only through
//! [`shown`], which replaces control characters and caps its length, since the server may be
//! hostile.

pub mod challenge;
mod connect;
mod docker_config;
mod target;
mod token;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::StatusCode;
use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use serde::{Serialize, Serializer};

pub use challenge::{AuthScheme, ChallengeError};
pub use docker_config::DockerConfigError;
pub use target::{DOCKER_HUB_API_HOST, RepositorySource, Target, TargetError};

use challenge::{Auth, Bearer};
use connect::{Answer, Endpoint, OpenError, StepError};
use token::IssuedToken;

/// The header every registry v2 API answer carries (`registry/2.0`).
const API_VERSION_HEADER: &str = "docker-distribution-api-version";
/// Body bytes read from a `GET /v2/` answer, which is not used (`{}` or an error list).
const IGNORED_BODY_BYTES: usize = 4 * 1024;
/// Longest text from a server (or typed by someone) repeated in a message.
const MAX_SHOWN_CHARS: usize = 200;
/// Each stage's limit when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// ECR's Basic challenge names this service.
const ECR_SERVICE: &str = "ecr.amazonaws.com";
/// ECR Public's Bearer challenge names this service.
const ECR_PUBLIC_SERVICE: &str = "public.ecr.aws";

// === Stages ===

/// A stage of the test; each failure belongs to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The API host does not resolve.
    Dns,
    /// No TCP connection to any of its addresses.
    Connect,
    /// The TLS handshake fails: unknown authority, name mismatch, expired certificate, not TLS.
    Tls,
    /// `GET /v2/` does not answer like a registry: another status, no API version header, not HTTP.
    NotARegistry,
    /// The 401's `WWW-Authenticate` is missing, malformed, or offers no supported scheme.
    Challenge,
    /// The Bearer realm cannot be reached, or answers with no usable token.
    TokenEndpoint,
    /// The credentials (or the token issued for them) are refused: 401, or ECR Public's 400 for
    /// an expired token.
    Credentials,
    /// 403 somewhere, or a token that grants no `pull` on the repository.
    Permission,
}

impl Stage {
    /// Every stage, in the order they run.
    pub const ALL: [Stage; 8] = [
        Stage::Dns,
        Stage::Connect,
        Stage::Tls,
        Stage::NotARegistry,
        Stage::Challenge,
        Stage::TokenEndpoint,
        Stage::Credentials,
        Stage::Permission,
    ];

    /// The stage's name: in reports, in JSON, and as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::NotARegistry => "not-a-registry",
            Stage::Challenge => "challenge",
            Stage::TokenEndpoint => "token-endpoint",
            Stage::Credentials => "credentials",
            Stage::Permission => "permission",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// How a stage went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Ok,
    Failed,
    /// Not applicable here (no TLS with plain HTTP, no credentials given, a scope that cannot be
    /// read); the message says why.
    Skipped,
}

/// One stage that ran (or was skipped on purpose).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageReport {
    pub stage: Stage,
    pub status: StageStatus,
    /// Machine-readable cause of a failure (`unknown-authority`, `name-mismatch`, `expired`,
    /// `rejected`, `scope-not-granted`, ...); `None` unless failed.
    pub reason: Option<&'static str>,
    pub message: String,
    pub elapsed_ms: u64,
}

/// A registry's known departure from the protocol, handled, and named in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quirk {
    /// `docker-hub-api-host`, `ecr-basic-challenge` or `ecr-public-expired-token`.
    pub name: &'static str,
    pub message: String,
}

/// The target as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    /// The policy entry's name, if the target is one.
    pub name: Option<String>,
    /// The policy entry's type, if the target is one.
    #[serde(rename = "type")]
    pub registry_type: Option<&'static str>,
    /// `name[:port]` as the policy writes it (`docker.io` for Docker Hub).
    pub host: String,
    /// The API root the test talks to.
    pub endpoint: String,
    /// The repository of the pull scope, if any.
    pub repository: Option<String>,
    pub repository_from: Option<RepositorySource>,
}

/// The outcome of a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub target: TargetReport,
    /// The stages that ran, in order; the last one failed when [`Report::failed_stage`] is set.
    pub stages: Vec<StageReport>,
    /// Whether `GET /v2/` answered 200 without credentials; `None` when it was not reached. A 200
    /// says nothing about credentials: such a registry does not look at them at `/v2/`.
    pub anonymous_access: Option<bool>,
    /// Whether a client without credentials may pull: true when `/v2/` answers 200 without
    /// them, or when the token endpoint gives an anonymous token that the registry accepts and
    /// that grants pull on the repository (Docker Hub, GHCR and Quay for public images); false
    /// when Basic authentication is asked for, the token endpoint refuses anonymous clients, or
    /// the anonymous token grants nothing on the repository. `None` when not learned:
    /// credentials were given, no repository was named, the token is opaque, or the test
    /// stopped before.
    pub anonymous_pull: Option<bool>,
    /// The scheme the 401 asked for; `None` when there was no 401.
    pub auth_scheme: Option<AuthScheme>,
    /// Whether credentials were given.
    pub credentials_given: bool,
    /// Whether the registry (or its token endpoint) was asked to accept them.
    pub credentials_tested: bool,
    pub quirks: Vec<Quirk>,
    /// Weakened checks asked for (no certificate verification, plain HTTP).
    pub warnings: Vec<String>,
    pub failed_stage: Option<Stage>,
    /// What the test found, in one sentence: the failure, or what succeeded.
    pub message: String,
}

impl Report {
    pub fn is_success(&self) -> bool {
        self.failed_stage.is_none()
    }
}

// === Inputs ===

/// A user name and password (or token). Deliberately without `Display`, and with a `Debug`
/// that hides the password.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: String,
}

/// Why credentials cannot be used for Basic authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// An empty user name.
    #[error("the user name is empty")]
    EmptyUsername,
    /// Basic authentication joins user and password with `:`, so a user name cannot hold one.
    #[error("the user name contains a colon, which Basic authentication cannot carry")]
    ColonInUsername,
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Result<Self, CredentialsError> {
        let (username, password) = (username.into(), password.into());
        if username.is_empty() {
            return Err(CredentialsError::EmptyUsername);
        }
        if username.contains(':') {
            return Err(CredentialsError::ColonInUsername);
        }
        if password.is_empty() {
            return Err(CredentialsError::EmptyPassword);
        }
        Ok(Credentials { username, password })
    }

    /// The entry for `target` in a docker config (`~/.docker/config.json`, or the
    /// `.dockerconfigjson` of a pull Secret).
    pub fn from_docker_config(config: &[u8], target: &Target) -> Result<Self, DockerConfigError> {
        docker_config::credentials_for(config, target)
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    #[cfg(test)]
    fn password(&self) -> &str {
        &self.password
    }

    /// `Basic base64(user:password)`, marked sensitive.
    fn basic(&self) -> HeaderValue {
        let encoded = STANDARD.encode(format!("{}:{}", self.username, self.password));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

/// How to test.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Each step's limit: a lookup, a connection, a handshake, one request and its answer.
    pub timeout: Duration,
    /// CA certificates trusted besides Mozilla's roots (a private registry's CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Accept any certificate for any name. Whoever can intercept the connection then receives
    /// the credentials; announce it loudly. Recorded in [`Report::warnings`].
    pub insecure_skip_tls_verify: bool,
    /// Plain HTTP, to loopback addresses only: a registry on this machine without TLS.
    pub plain_http: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            timeout: DEFAULT_TIMEOUT,
            extra_roots: Vec::new(),
            insecure_skip_tls_verify: false,
            plain_http: false,
        }
    }
}

/// The largest CA file read (a bundle of a few hundred certificates).
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// CA certificates to trust besides Mozilla's roots, from a PEM file (a private registry's CA).
pub fn read_ca_file(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context;
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_CA_FILE_BYTES,
        "{} is larger than {MAX_CA_FILE_BYTES} bytes",
        path.display()
    );
    let certificates = rustls::pki_types::pem::PemObject::pem_slice_iter(&bytes)
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "{} holds no CERTIFICATE block", path.display());
    Ok(certificates)
}

// === The test ===

/// Runs the test. It never panics and never returns early without a report: every outcome,
/// including timeouts, is a [`Report`] whose `failed_stage` says where it stopped.
pub async fn test_registry(
    target: &Target,
    credentials: Option<&Credentials>,
    options: &TestOptions,
) -> Report {
    let mut run = Run {
        target,
        credentials,
        options,
        report: new_report(target, credentials.is_some(), options),
        clock: Instant::now(),
        tls: None,
        ecr: target.looks_like_ecr(),
        ecr_public: target.looks_like_ecr_public(),
    };
    let outcome = run.stages().await;
    run.finish(outcome)
}

fn new_report(target: &Target, credentials_given: bool, options: &TestOptions) -> Report {
    let mut quirks = Vec::new();
    if target.is_docker_hub() {
        quirks.push(Quirk {
            name: "docker-hub-api-host",
            message: format!("Docker Hub's registry API answers at {DOCKER_HUB_API_HOST}, not docker.io; the test goes there"),
        });
    }
    let mut warnings = Vec::new();
    if options.insecure_skip_tls_verify && !options.plain_http {
        warnings.push(
            "certificates are not verified (--insecure-skip-tls-verify): anyone on the network path can pose as the registry and receive the credentials".to_owned(),
        );
    }
    if options.plain_http {
        warnings.push("plain HTTP (--plain-http): nothing is encrypted; loopback addresses only".to_owned());
    }
    Report {
        target: TargetReport {
            name: target.name.clone(),
            registry_type: target.registry_type.map(|t| t.name()),
            host: target.host.clone(),
            endpoint: target.endpoint(options.plain_http),
            repository: target.repository.clone(),
            repository_from: target.repository_from,
        },
        stages: Vec::new(),
        anonymous_access: None,
        anonymous_pull: None,
        auth_scheme: None,
        credentials_given,
        credentials_tested: false,
        quirks,
        warnings,
        failed_stage: None,
        message: String::new(),
    }
}

/// Where and why the test stopped.
struct Failure {
    stage: Stage,
    reason: &'static str,
    message: String,
    elapsed_ms: u64,
}

struct Run<'a> {
    target: &'a Target,
    credentials: Option<&'a Credentials>,
    options: &'a TestOptions,
    report: Report,
    /// When the current stage started.
    clock: Instant,
    /// Built on first use: a plain-HTTP test may still meet an https:// token realm.
    tls: Option<Arc<ClientConfig>>,
    /// Whether ECR's conventions apply (its host, type, or its Basic challenge).
    ecr: bool,
    /// Whether ECR Public's apply (its host, type, or its Bearer service).
    ecr_public: bool,
}

impl Run<'_> {
    async fn stages(&mut self) -> Result<String, Failure> {
        let mut registry = self.open_registry().await?;
        let answer = registry
            .get("/v2/", None, IGNORED_BODY_BYTES)
            .await
            .map_err(|e| self.fail(Stage::NotARegistry, e))?;
        let api_version =
            answer.headers.get(API_VERSION_HEADER).map(|v| shown(&String::from_utf8_lossy(v.as_bytes())));
        let with_version = api_version.as_deref().map_or(String::new(), |v| format!(" (API version {v})"));
        match answer.status {
            StatusCode::OK if api_version.as_deref().is_some_and(|v| v.starts_with("registry/2")) => {
                self.ok(
                    Stage::NotARegistry,
                    format!("GET /v2/ answered 200 without credentials{with_version}"),
                );
                self.report.anonymous_access = Some(true);
                self.report.anonymous_pull = Some(true);
                return Ok(self.anonymous_success());
            }
            StatusCode::UNAUTHORIZED => {
                self.ok(
                    Stage::NotARegistry,
                    format!("GET /v2/ answered 401: the registry asks for authentication{with_version}"),
                );
                self.report.anonymous_access = Some(false);
            }
            StatusCode::FORBIDDEN => {
                self.ok(Stage::NotARegistry, format!("GET /v2/ answered 403{with_version}"));
                self.report.anonymous_access = Some(false);
                return Err(self.fail_with(
                    Stage::Permission,
                    "forbidden",
                    "GET /v2/ answered 403 Forbidden before any credentials were sent: the registry, or a proxy before it, refuses this client (an IP allow-list?)".to_owned(),
                ));
            }
            _ => {
                let (reason, message) = not_a_registry(&answer, api_version.as_deref());
                return Err(self.fail_with(Stage::NotARegistry, reason, message));
            }
        }

        let auth = self.read_challenge(&answer)?;
        match (auth, self.credentials) {
            (Auth::Basic(_), Some(credentials)) => self.basic(&mut registry, credentials).await,
            (Auth::Basic(_), None) => {
                self.report.anonymous_pull = Some(false);
                self.skip_credentials();
                Ok("the registry is reachable and asks for Basic authentication; anonymous access is refused at /v2/, and no credentials were given to test".to_owned())
            }
            // Without credentials too: Docker Hub, GHCR and Quay answer /v2/ with 401 to
            // everyone, and give anonymous tokens that pull public images.
            (Auth::Bearer(bearer), credentials) => self.bearer(&mut registry, &bearer, credentials).await,
        }
    }

    fn skip_credentials(&mut self) {
        self.skip(Stage::Credentials, "no credentials given: only anonymous access was tested".to_owned());
    }

    /// The dns, connect and tls stages, one at a time.
    async fn open_registry(&mut self) -> Result<Endpoint, Failure> {
        let timeout = self.options.timeout;
        let plain = self.options.plain_http;
        let tls = if plain { None } else { Some(self.tls_config().map_err(|e| self.fail(Stage::Tls, e))?) };
        let host = self.target.api_host().to_owned();
        let port = self.target.port(plain);

        let addresses = connect::resolve(&host, port, timeout).await.map_err(|e| self.fail(Stage::Dns, e))?;
        let listed: Vec<String> = addresses.iter().take(4).map(|a| a.ip().to_string()).collect();
        let more = if addresses.len() > 4 { ", ..." } else { "" };
        self.ok(Stage::Dns, format!("{} resolves to {}{more}", shown(&host), listed.join(", ")));

        let (tcp, address) =
            connect::connect(&addresses, timeout, plain).await.map_err(|e| self.fail(Stage::Connect, e))?;
        self.ok(Stage::Connect, format!("connected to {address}"));

        let stream: Box<dyn connect::Io> = match &tls {
            Some(config) => {
                let (stream, version) = connect::handshake(tcp, &host, config.clone(), timeout)
                    .await
                    .map_err(|e| self.fail(Stage::Tls, e))?;
                let verified = if self.options.insecure_skip_tls_verify {
                    "certificate NOT verified (--insecure-skip-tls-verify)".to_owned()
                } else {
                    format!("certificate valid for {}", shown(&host))
                };
                self.ok(Stage::Tls, format!("{version}, {verified}"));
                stream
            }
            None => {
                self.skip(Stage::Tls, "plain HTTP (--plain-http): no TLS".to_owned());
                Box::new(tcp)
            }
        };
        Ok(Endpoint::new(&host, port, addresses, tls, timeout, stream))
    }

    /// The challenge stage: what the 401 asks for, and the quirks it reveals.
    fn read_challenge(&mut self, answer: &Answer) -> Result<Auth, Failure> {
        let headers = answer.headers.get_all(WWW_AUTHENTICATE).iter().map(HeaderValue::as_bytes);
        let auth = challenge::parse_headers(headers)
            .and_then(|challenges| challenge::select(&challenges, self.options.plain_http))
            .map_err(|e| self.challenge_failure(e))?;
        self.report.auth_scheme = Some(auth.scheme());
        let described = match &auth {
            Auth::Basic(basic) => {
                if basic.param("service") == Some(ECR_SERVICE) || self.ecr {
                    self.ecr = true;
                    self.report.quirks.push(Quirk {
                        name: "ecr-basic-challenge",
                        message: "ECR answers GET /v2/ with a Basic challenge rather than Bearer: the user name is AWS and the password a token from `aws ecr get-login-password`, good for 12 hours".to_owned(),
                    });
                }
                match basic.param("realm") {
                    Some(realm) => format!("Basic, realm {:?}", shown(realm)),
                    None => "Basic".to_owned(),
                }
            }
            Auth::Bearer(bearer) => {
                if bearer.service.as_deref() == Some(ECR_PUBLIC_SERVICE) {
                    self.ecr_public = true;
                }
                let service =
                    bearer.service.as_deref().map_or(String::new(), |s| format!(", service {:?}", shown(s)));
                format!("Bearer, token endpoint {}{service}", bearer.realm.shown)
            }
        };
        self.ok(Stage::Challenge, described);
        Ok(auth)
    }

    fn anonymous_success(&mut self) -> String {
        if self.credentials.is_some() {
            self.skip(
                Stage::Credentials,
                "the registry answers /v2/ without authentication, so it does not look at credentials there; they could not be checked".to_owned(),
            );
            "the registry answers anonymously; the credentials given could not be checked, since /v2/ does not ask for them".to_owned()
        } else {
            self.skip(Stage::Credentials, "no credentials given".to_owned());
            "the registry answers anonymously (GET /v2/ 200)".to_owned()
        }
    }

    async fn basic(&mut self, registry: &mut Endpoint, credentials: &Credentials) -> Result<String, Failure> {
        let answer = registry
            .get("/v2/", Some(credentials.basic()), IGNORED_BODY_BYTES)
            .await
            .map_err(|e| self.fail(Stage::Credentials, e))?;
        self.report.credentials_tested = true;
        match answer.status {
            StatusCode::OK => {
                self.ok(
                    Stage::Credentials,
                    "GET /v2/ with the user name and password answered 200".to_owned(),
                );
                self.skip(
                    Stage::Permission,
                    "Basic authentication carries no scope to read: permission on a repository shows only when pulling, which this test does not do".to_owned(),
                );
                Ok("the registry accepts the credentials (Basic authentication)".to_owned())
            }
            StatusCode::UNAUTHORIZED => Err(self.fail_with(
                Stage::Credentials,
                "rejected",
                format!(
                    "the registry refused the user name and password (401){}",
                    self.ecr_hint(credentials)
                ),
            )),
            StatusCode::FORBIDDEN => {
                self.ok(
                    Stage::Credentials,
                    "the credentials are known to the registry (403, not 401)".to_owned(),
                );
                Err(self.fail_with(
                    Stage::Permission,
                    "forbidden",
                    "GET /v2/ with the credentials answered 403 Forbidden: the account may not use this registry".to_owned(),
                ))
            }
            status => Err(self.fail_with(
                Stage::Credentials,
                "unexpected-status",
                format!("GET /v2/ with the user name and password answered {}", status_text(status)),
            )),
        }
    }

    /// The Bearer handshake: a token from the realm (asked for anonymously without
    /// credentials), then `/v2/` with it, then what it grants.
    async fn bearer(
        &mut self,
        registry: &mut Endpoint,
        bearer: &Bearer,
        credentials: Option<&Credentials>,
    ) -> Result<String, Failure> {
        let realm = &bearer.realm;
        let tls = if realm.https {
            Some(self.tls_config().map_err(|e| self.token_endpoint_failure("tls", e))?)
        } else {
            None
        };
        let mut endpoint =
            connect::open(&realm.host, realm.port, tls, self.options.timeout).await.map_err(|e| match e {
                OpenError::Dns(e) => self.token_endpoint_failure("dns", e),
                OpenError::Connect(e) => self.token_endpoint_failure("connect", e),
                OpenError::Tls(e) => self.token_endpoint_failure("tls", e),
            })?;
        let path = token_path(bearer, self.target.repository.as_deref());
        let answer = endpoint
            .get(&path, credentials.map(Credentials::basic), token::MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| self.token_endpoint_failure("request", e))?;
        match answer.status {
            StatusCode::OK => {}
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) if credentials.is_none() => {
                self.ok(
                    Stage::TokenEndpoint,
                    format!("{} answers {}: no anonymous token", realm.shown, status_text(status)),
                );
                self.report.anonymous_pull = Some(false);
                self.skip_credentials();
                return Ok(format!(
                    "the registry asks for Bearer authentication and its token endpoint {} gives no anonymous token; no credentials were given to test",
                    realm.shown
                ));
            }
            StatusCode::UNAUTHORIZED => {
                self.ok(Stage::TokenEndpoint, format!("{} answers", realm.shown));
                self.report.credentials_tested = true;
                return Err(self.fail_with(
                    Stage::Credentials,
                    "rejected",
                    format!("the token endpoint {} refused the user name and password (401)", realm.shown),
                ));
            }
            StatusCode::FORBIDDEN => {
                self.ok(Stage::TokenEndpoint, format!("{} answers", realm.shown));
                self.report.credentials_tested = true;
                return Err(self.fail_with(
                    Stage::Permission,
                    "forbidden",
                    format!("the token endpoint {} refused a token for this scope (403)", realm.shown),
                ));
            }
            StatusCode::BAD_REQUEST if self.ecr_public => {
                self.ok(Stage::TokenEndpoint, format!("{} answers", realm.shown));
                self.report.credentials_tested = true;
                return Err(self.ecr_public_expired("the token endpoint"));
            }
            status => {
                return Err(self.fail_with(
                    Stage::TokenEndpoint,
                    "status",
                    format!("the token endpoint {} answered {}", realm.shown, status_text(status)),
                ));
            }
        }
        let issued =
            if answer.truncated { Err("is larger than 64 KiB") } else { token::parse_response(&answer.body) };
        let issued = issued.map_err(|what| {
            self.fail_with(
                Stage::TokenEndpoint,
                "malformed",
                format!("the answer of the token endpoint {} {what}", realm.shown),
            )
        })?;
        let Some(authorization) = issued.authorization() else {
            return Err(self.fail_with(
                Stage::TokenEndpoint,
                "malformed",
                "the token cannot be sent in a header".to_owned(),
            ));
        };
        let kind = match (credentials, issued.claims.is_some()) {
            (Some(_), true) => "a JWT",
            (Some(_), false) => "an opaque",
            (None, true) => "an anonymous JWT",
            (None, false) => "an anonymous opaque",
        };
        let lifetime = issued.expires_in.map_or(String::new(), |s| format!(", valid for {s} s"));
        self.ok(Stage::TokenEndpoint, format!("{} issued {kind} token{lifetime}", realm.shown));

        let answer = registry
            .get("/v2/", Some(authorization), IGNORED_BODY_BYTES)
            .await
            .map_err(|e| self.fail(Stage::Credentials, e))?;
        self.report.credentials_tested = credentials.is_some();
        match answer.status {
            StatusCode::OK if credentials.is_none() => self.ok(
                Stage::Credentials,
                "no credentials given: GET /v2/ with the anonymous token answered 200".to_owned(),
            ),
            StatusCode::OK => self.ok(Stage::Credentials, "GET /v2/ with the token answered 200".to_owned()),
            StatusCode::UNAUTHORIZED => {
                return Err(self.fail_with(
                    Stage::Credentials,
                    "token-rejected",
                    "the registry refused the token its own token endpoint issued (401): the registry and the token service disagree (issuer, service or signing certificate)".to_owned(),
                ));
            }
            StatusCode::FORBIDDEN => {
                self.ok(Stage::Credentials, "the token is known to the registry (403, not 401)".to_owned());
                return Err(self.fail_with(
                    Stage::Permission,
                    "forbidden",
                    "GET /v2/ with the token answered 403 Forbidden".to_owned(),
                ));
            }
            StatusCode::BAD_REQUEST if self.ecr_public => return Err(self.ecr_public_expired("the registry")),
            status => {
                return Err(self.fail_with(
                    Stage::Credentials,
                    "unexpected-status",
                    format!("GET /v2/ with the token answered {}", status_text(status)),
                ));
            }
        }
        match credentials {
            Some(_) => self.permission(&issued),
            None => Ok(self.anonymous_permission(&issued)),
        }
    }

    /// What an anonymous token grants on the repository: whether anyone may pull it. Not a
    /// failure either way, as the test without credentials only reports what anyone gets.
    fn anonymous_permission(&mut self, issued: &IssuedToken) -> String {
        let Some(repository) = self.target.repository.clone() else {
            self.skip(
                Stage::Permission,
                "no repository to check (name one in the URL or with --repository)".to_owned(),
            );
            return "the registry gives anonymous tokens and accepts them at /v2/; name a repository (--repository) to see whether anyone may pull it".to_owned();
        };
        let Some(access) = issued.claims.as_ref().and_then(|claims| claims.access.as_deref()) else {
            self.skip(
                Stage::Permission,
                "the anonymous token is opaque or has no access claim, so its scope cannot be read"
                    .to_owned(),
            );
            return format!(
                "the registry gives anonymous tokens and accepts them at /v2/; whether anyone may pull {repository} shows only when pulling"
            );
        };
        let granted = token::grants_pull(access, &repository);
        self.report.anonymous_pull = Some(granted);
        if granted {
            self.ok(Stage::Permission, format!("the anonymous token grants pull on {repository}"));
            return format!(
                "anyone may pull {repository}: the registry gives anonymous tokens that grant it"
            );
        }
        let hint = match self.target.repository_from {
            Some(RepositorySource::Policy) => {
                " (the repository is the policy entry's path, a prefix that may name no repository: name one with --repository)"
            }
            _ => "",
        };
        self.ok(Stage::Permission, format!("the anonymous token grants no pull on {repository}{hint}"));
        format!(
            "anonymous pull of {repository} is refused: the anonymous token grants nothing on it; no credentials were given to test"
        )
    }

    /// What the token says it grants on the repository.
    fn permission(&mut self, issued: &IssuedToken) -> Result<String, Failure> {
        let Some(repository) = self.target.repository.clone() else {
            self.skip(
                Stage::Permission,
                "no repository to check (name one in the URL or with --repository): /v2/ alone was tested"
                    .to_owned(),
            );
            return Ok("the registry accepts the credentials (Bearer token)".to_owned());
        };
        let access = match issued.claims.as_ref().map(|claims| claims.access.as_deref()) {
            None => {
                self.skip(
                    Stage::Permission,
                    "the token is opaque (not a JWT), so its scope cannot be read; pull permission shows only when pulling, which this test does not do".to_owned(),
                );
                return Ok("the registry accepts the credentials (Bearer token)".to_owned());
            }
            Some(None) => {
                self.skip(
                    Stage::Permission,
                    "the token has no access claim to read its scope from".to_owned(),
                );
                return Ok("the registry accepts the credentials (Bearer token)".to_owned());
            }
            Some(Some(access)) => access,
        };
        if token::grants_pull(access, &repository) {
            self.ok(Stage::Permission, format!("the token grants pull on {repository}"));
            return Ok(format!("the registry accepts the credentials, and they may pull {repository}"));
        }
        let actions = token::actions_on(access, &repository);
        let granted = if actions.is_empty() {
            "nothing".to_owned()
        } else {
            actions.iter().map(|a| shown(a)).collect::<Vec<_>>().join(", ")
        };
        let hint = match self.target.repository_from {
            Some(RepositorySource::Policy) => {
                "; the repository is the policy entry's path, a prefix that may name no repository: name one with --repository"
            }
            _ => "; the account may not pull it, or it does not exist",
        };
        Err(self.fail_with(
            Stage::Permission,
            "scope-not-granted",
            format!("no permission for the scope repository:{repository}:pull: the token was issued but grants {granted} on it{hint}"),
        ))
    }

    fn ecr_hint(&self, credentials: &Credentials) -> &'static str {
        match (self.ecr, credentials.username() == "AWS") {
            (true, false) => {
                "; ECR takes the user name AWS, with a password from `aws ecr get-login-password`"
            }
            (true, true) => "; ECR passwords from `aws ecr get-login-password` expire after 12 hours",
            (false, _) => "",
        }
    }

    fn ecr_public_expired(&mut self, who: &str) -> Failure {
        self.report.quirks.push(Quirk {
            name: "ecr-public-expired-token",
            message: "ECR Public answers an expired token with 400 Bad Request rather than 401; reported as expired credentials".to_owned(),
        });
        self.fail_with(
            Stage::Credentials,
            "expired",
            format!("{who} answered 400: the ECR Public token has expired (they last 12 hours); get a new one with `aws ecr-public get-login-password --region us-east-1`"),
        )
    }

    fn challenge_failure(&self, error: ChallengeError) -> Failure {
        let reason = match error {
            ChallengeError::Missing => "missing",
            ChallengeError::Unsupported { .. } => "unsupported",
            ChallengeError::NoRealm | ChallengeError::BadRealm { .. } => "realm",
            ChallengeError::TooLong
            | ChallengeError::NotPrintable
            | ChallengeError::Malformed(_)
            | ChallengeError::TooMany
            | ChallengeError::Duplicate { .. } => "malformed",
        };
        self.fail_with(Stage::Challenge, reason, error.to_string())
    }

    fn token_endpoint_failure(&self, step: &'static str, error: StepError) -> Failure {
        let message = format!("the token endpoint cannot be used ({step}): {}", error.message);
        let reason = match step {
            "dns" => "dns",
            "connect" => "connect",
            "tls" => "tls",
            _ => error.reason,
        };
        self.fail_with(Stage::TokenEndpoint, reason, message)
    }

    fn tls_config(&mut self) -> Result<Arc<ClientConfig>, StepError> {
        if let Some(config) = &self.tls {
            return Ok(config.clone());
        }
        let config =
            connect::client_config(&self.options.extra_roots, self.options.insecure_skip_tls_verify)?;
        self.tls = Some(config.clone());
        Ok(config)
    }

    // === Recording ===

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&mut self, stage: Stage, status: StageStatus, message: String) {
        let elapsed_ms = self.elapsed_ms();
        self.report.stages.push(StageReport { stage, status, reason: None, message, elapsed_ms });
        self.clock = Instant::now();
    }

    fn ok(&mut self, stage: Stage, message: String) {
        self.record(stage, StageStatus::Ok, message);
    }

    fn skip(&mut self, stage: Stage, message: String) {
        self.record(stage, StageStatus::Skipped, message);
    }

    fn fail(&self, stage: Stage, error: StepError) -> Failure {
        self.fail_with(stage, error.reason, error.message)
    }

    fn fail_with(&self, stage: Stage, reason: &'static str, message: String) -> Failure {
        Failure { stage, reason, message, elapsed_ms: self.elapsed_ms() }
    }

    fn finish(mut self, outcome: Result<String, Failure>) -> Report {
        match outcome {
            Ok(message) => self.report.message = message,
            Err(failure) => {
                self.report.stages.push(StageReport {
                    stage: failure.stage,
                    status: StageStatus::Failed,
                    reason: Some(failure.reason),
                    message: failure.message.clone(),
                    elapsed_ms: failure.elapsed_ms,
                });
                self.report.failed_stage = Some(failure.stage);
                self.report.message = failure.message;
            }
        }
        self.report
    }
}

/// Why an answer to `GET /v2/` is not a registry's.
fn not_a_registry(answer: &Answer, api_version: Option<&str>) -> (&'static str, String) {
    let status = status_text(answer.status);
    if answer.status.is_redirection() {
        let location = answer
            .headers
            .get(hyper::header::LOCATION)
            .map_or("nowhere".to_owned(), |l| shown(&String::from_utf8_lossy(l.as_bytes())));
        return (
            "redirect",
            format!(
                "GET /v2/ answered {status}, redirecting to {location}: a registry answers /v2/ itself (is the host right?)"
            ),
        );
    }
    match (answer.status, api_version) {
        (StatusCode::OK, _) => (
            "no-api-version",
            "GET /v2/ answered 200 without Docker-Distribution-Api-Version: registry/2.0, so this is a web server, not a registry API (is the host right?)".to_owned(),
        ),
        (_, Some(version)) => (
            "status",
            format!("GET /v2/ answered {status} (API version {version}): the registry is there but not answering normally"),
        ),
        (_, None) => ("status", format!("GET /v2/ answered {status}: there is no registry API at this address")),
    }
}

/// The token request: the realm with `service`, the challenge's own `scope`, and the pull scope
/// of the repository.
fn token_path(bearer: &Bearer, repository: Option<&str>) -> String {
    let mut path = bearer.realm.path_and_query.clone();
    let mut separator = if path.contains('?') { '&' } else { '?' };
    let pull_scope = repository.map(|repository| format!("repository:{repository}:pull"));
    let challenge_scope = bearer.scope.clone().filter(|scope| Some(scope) != pull_scope.as_ref());
    let params = [("service", bearer.service.clone()), ("scope", challenge_scope), ("scope", pull_scope)];
    for (name, value) in params {
        if let Some(value) = value {
            path.push(separator);
            path.push_str(name);
            path.push('=');
            path.push_str(&percent_encode(&value));
            separator = '&';
        }
    }
    path
}

/// Query-string encoding: unreserved characters as they are, everything else `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Text chosen by a server (or typed by someone) made safe to print: control and
/// direction-changing characters replaced by `?`, at most 200 characters.
pub(crate) fn shown(text: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    let mut out: String =
        text.chars().take(MAX_SHOWN_CHARS).map(|c| if unsafe_char(c) { '?' } else { c }).collect();
    if text.chars().nth(MAX_SHOWN_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_stable_label_values() {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "dns",
                "connect",
                "tls",
                "not-a-registry",
                "challenge",
                "token-endpoint",
                "credentials",
                "permission"
            ]
        );
        assert_eq!(serde_json::to_value(Stage::NotARegistry).expect("json"), "not-a-registry");
        assert!(Stage::ALL.windows(2).all(|w| w[0] < w[1]), "ALL is in running order");
    }

    #[test]
    fn credentials_hide_the_password() {
        let credentials = Credentials::new("ci", "FAKE-SECRET-91").expect("valid");
        let debug = format!("{credentials:?}");
        assert!(debug.contains("ci") && !debug.contains("FAKE-SECRET-91"), "{debug}");
        assert_eq!(credentials.password(), "FAKE-SECRET-91");
        assert!(credentials.basic().is_sensitive());
        assert_eq!(Credentials::new("", "p").map(|_| ()), Err(CredentialsError::EmptyUsername));
        assert_eq!(Credentials::new("a:b", "p").map(|_| ()), Err(CredentialsError::ColonInUsername));
        assert_eq!(Credentials::new("a", "").map(|_| ()), Err(CredentialsError::EmptyPassword));
    }

    #[test]
    fn token_requests_carry_service_and_scopes() {
        let challenges = challenge::parse(
            r#"Bearer realm="https://auth.example/token?x=1",service="reg istry",scope="aws""#,
        )
        .expect("parses");
        let Ok(Auth::Bearer(bearer)) = challenge::select(&challenges, false) else { panic!("Bearer") };
        assert_eq!(
            token_path(&bearer, Some("acme/app")),
            "/token?x=1&service=reg%20istry&scope=aws&scope=repository%3Aacme%2Fapp%3Apull"
        );
        let challenges = challenge::parse(r#"Bearer realm="https://auth.example/token""#).expect("parses");
        let Ok(Auth::Bearer(bearer)) = challenge::select(&challenges, false) else { panic!("Bearer") };
        assert_eq!(token_path(&bearer, None), "/token");
    }

    #[test]
    fn shown_text_is_safe_to_print() {
        assert_eq!(shown("ok text"), "ok text");
        assert_eq!(shown("a\u{1b}[2Jb\r\nc"), "a?[2Jb??c");
        assert_eq!(shown("evil\u{202e}txt"), "evil?txt");
        let long = shown(&"x".repeat(1000));
        assert_eq!(long.len(), MAX_SHOWN_CHARS + 3);
    }

    #[test]
    fn reports_serialize_with_stable_names() {
        let target = Target::parse("ghcr.io/acme/app").expect("target");
        let mut report = new_report(&target, false, &TestOptions::default());
        report.stages.push(StageReport {
            stage: Stage::Dns,
            status: StageStatus::Failed,
            reason: Some("not-found"),
            message: "m".into(),
            elapsed_ms: 1,
        });
        report.failed_stage = Some(Stage::Dns);
        let json = serde_json::to_value(&report).expect("json");
        let mut keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = vec![
            "target",
            "stages",
            "anonymous_access",
            "anonymous_pull",
            "auth_scheme",
            "credentials_given",
            "credentials_tested",
            "quirks",
            "warnings",
            "failed_stage",
            "message",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["failed_stage"], "dns");
        assert_eq!(json["stages"][0]["status"], "failed");
        assert_eq!(json["target"]["endpoint"], "https://ghcr.io/v2/");
        assert_eq!(json["target"]["repository_from"], "url");
    }
}
