//! ECR pull credentials that renew themselves.
//!
//! An ECR password (`aws ecr get-login-password`) lasts 12 hours, so a source pull Secret for an
//! ECR registry written by hand goes stale twice a day. Instead, give registry-gate an AWS key in
//! an **ECR key Secret**; it calls ECR's `GetAuthorizationToken` with it, writes the answer into
//! the registry's source pull Secret, and the sync ([`super::sync`]) carries that Secret into
//! every namespace allowed to use the registry, as for any other source.
//!
//! # The ECR key Secret
//!
//! It lives in registry-gate's own namespace, next to the source pull Secrets:
//!
//! ```yaml
//! apiVersion: v1
//! kind: Secret
//! metadata:
//!   name: ecr-key-prod
//!   namespace: registry-gate
//!   labels:
//!     registry-gate.io/ecr-key: "true"          # what makes it an ECR key
//!   annotations:
//!     registry-gate.io/pull-secret: ecr-prod    # the source pull Secret to write
//! type: Opaque
//! stringData:
//!   accessKeyId: AKIA...                        # an IAM user's key, allowed
//!   secretAccessKey: ...                        #   ecr:GetAuthorizationToken
//!   region: eu-west-1                           # the registry's region
//!   # sessionToken: ...                         # only for temporary credentials
//!   # endpoint: https://...                     # a VPC endpoint, or an emulator
//!   # public: "true"                            # ECR Public (public.ecr.aws)
//! ```
//!
//! - `region` picks the API endpoint, `https://api.ecr.REGION.amazonaws.com` (`.com.cn` in
//!   China). One token serves every registry of the account in that region: the pull Secret
//!   holds it for the host of the `proxyEndpoint` ECR answers with,
//!   `ACCOUNT.dkr.ecr.REGION.amazonaws.com`, which is what the policy's ECR entry must name.
//! - `public: "true"` asks ECR Public instead (`https://api.ecr-public.us-east-1.amazonaws.com`,
//!   whose only region is `us-east-1`; `region` may then be left out), and the pull Secret holds
//!   the token for `public.ecr.aws`.
//! - `endpoint` replaces the default API URL: `https://` anywhere, plain `http://` only on
//!   loopback (an emulator next to the controller), since the answer is a registry password.
//! - Values are trimmed of surrounding whitespace, so a trailing newline from `echo` is harmless.
//!
//! The pull Secret named by the annotation is a `kubernetes.io/dockerconfigjson` Secret in the
//! same namespace. registry-gate creates it, labelled `app.kubernetes.io/managed-by=registry-gate`
//! and annotated `registry-gate.io/refreshed-from: KEYNAME`, and rewrites it on every refresh.
//! One it did not create (no such label) is never overwritten: the key then gets a Warning Event,
//! and nothing is written until that Secret is deleted or labelled. Two keys naming the same pull
//! Secret are refused the same way: the first one seen writes it. Deleting a key stops its
//! refresh and nothing else: its pull Secret stays, with a token good for the hours it has left.
//!
//! # When it refreshes
//!
//! A token is renewed before it expires, by its own `expiresAt`: at `expiresAt - max(25% of its
//! lifetime, 1 h)`, nine hours into a 12-hour token. A failed call or write is retried after 5 s,
//! doubling up to 10 min, each wait ±20% at random so that many keys failing together (an AWS
//! outage, a restarted controller) do not retry together. Until a retry succeeds, the pull Secret
//! keeps the last token, which stays good for the hours left of its lifetime.
//!
//! Exported: `registry_gate_credential_expiry_timestamp_seconds{secret}`, when the token in each
//! pull Secret expires, to alert well before it does; and
//! `registry_gate_credential_refresh_failures_total{secret}`.
//!
//! Keys, tokens and passwords never appear in logs, Events, metrics or errors: an error names the
//! Secret, the data key or the endpoint, and an AWS error message is repeated only with every
//! credential of the call cut out of it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::Value;

use super::sync::{DOCKER_CONFIG_TYPE, MANAGED_LABEL, MANAGED_VALUE, is_managed};
use crate::credentials::DOCKER_CONFIG_JSON_KEY;
use crate::policy::is_dns_subdomain;

/// The label that makes a Secret in registry-gate's namespace an ECR key.
pub const KEY_LABEL: &str = "registry-gate.io/ecr-key";
pub const KEY_LABEL_VALUE: &str = "true";
/// On an ECR key: the name of the source pull Secret to write.
pub const PULL_SECRET_ANNOTATION: &str = "registry-gate.io/pull-secret";
/// On a written pull Secret: the ECR key it was refreshed from.
pub const REFRESHED_FROM_ANNOTATION: &str = "registry-gate.io/refreshed-from";
/// On a written pull Secret: when its token expires (RFC 3339), for people reading it.
pub const EXPIRES_ANNOTATION: &str = "registry-gate.io/credential-expires-at";
/// ECR Public's API exists in this region only.
pub const ECR_PUBLIC_REGION: &str = "us-east-1";
/// The registry host ECR Public tokens are for.
pub const ECR_PUBLIC_HOST: &str = "public.ecr.aws";

/// One `GetAuthorizationToken` call, connection and answer included, takes at most this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A larger answer is refused unread: a real one is a few hundred bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Never earlier than this before expiry, however short the token's lifetime.
const MIN_MARGIN: Duration = Duration::from_secs(3600);
/// However short-lived (or already expired) a token, the next refresh waits at least this long.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(600);
const BACKOFF_JITTER: f64 = 0.2;
/// An AWS error message is cut to this many characters before it reaches an Event.
const MAX_MESSAGE_CHARS: usize = 300;
const TARGET: &str = "registry_gate::controller::ecr";

/// Why a token could not be fetched or written.
///
/// Every message names Secrets, data keys, annotations and endpoints; never an access key id,
/// secret key, session token, authorization token or password, not even part of one.
#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    /// The ECR key Secret is missing a data key or annotation, or one of them is unusable;
    /// `problem` names which, never its value.
    #[error("ECR key Secret {secret:?} {problem}")]
    InvalidKey { secret: String, problem: String },
    /// No answer could be had from the endpoint: name resolution, connection, TLS or a broken
    /// transfer. `detail` is the transport's own description.
    #[error("cannot call {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// The call took longer than [`CALL_TIMEOUT`].
    #[error("no answer from {endpoint} within {} s", CALL_TIMEOUT.as_secs())]
    Timeout { endpoint: String },
    /// The answer was larger than [`MAX_RESPONSE_BYTES`]; it was not read further.
    #[error("the answer from {endpoint} is larger than {MAX_RESPONSE_BYTES} bytes")]
    ResponseTooLarge { endpoint: String },
    /// AWS (or whatever answered) refused the call: wrong key or signature, no permission, a
    /// throttle, an outage. `code` is the AWS error code when there is one; `message` is AWS's
    /// message with every credential of the call cut out, and shortened.
    #[error("{endpoint} refused GetAuthorizationToken (HTTP {status}, {code}): {message}")]
    Refused { endpoint: String, status: u16, code: String, message: String },
    /// A success status, but not a `GetAuthorizationToken` answer; `reason` says what is wrong
    /// in fixed words, never quoting the answer.
    #[error("the answer from {endpoint} is not a usable GetAuthorizationToken result: {reason}")]
    MalformedResponse { endpoint: String, reason: &'static str },
    /// The pull Secret exists and registry-gate did not create it; it is left alone.
    #[error(
        "Secret {namespace}/{name} exists without the {MANAGED_LABEL}={MANAGED_VALUE} label; registry-gate does not overwrite it (delete it, or label it to hand it over)"
    )]
    NotOurs { namespace: String, name: String },
    /// Another ECR key already writes the same pull Secret.
    #[error("pull Secret {pull_secret:?} is already written from ECR key {other:?}")]
    Contended { pull_secret: String, other: String },
    /// Reading or writing the pull Secret through the API server failed.
    #[error("API request for {what} failed: {source}")]
    Api { what: String, source: kube::Error },
}

/// An AWS access key. Its `Debug` shows only that it is there.
#[derive(Clone, PartialEq, Eq)]
struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl AwsCredentials {
    fn new(access_key_id: String, secret_access_key: String, session_token: Option<String>) -> Self {
        AwsCredentials { access_key_id, secret_access_key, session_token }
    }

    /// Every value of the key, for cutting out of text that came back from the endpoint.
    fn values(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.access_key_id.as_str()),
            Some(self.secret_access_key.as_str()),
            self.session_token.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which ECR API a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Private registries, `ACCOUNT.dkr.ecr.REGION.amazonaws.com`.
    Ecr,
    /// ECR Public, `public.ecr.aws`.
    EcrPublic,
}

impl Service {
    /// The AWS JSON 1.1 operation, as named in `X-Amz-Target`.
    fn target(self) -> &'static str {
        match self {
            Service::Ecr => "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            Service::EcrPublic => "SpencerFrontendService.GetAuthorizationToken",
        }
    }

    /// The name in the SigV4 credential scope.
    fn signing_name(self) -> &'static str {
        match self {
            Service::Ecr => "ecr",
            Service::EcrPublic => "ecr-public",
        }
    }

    fn default_endpoint(self, region: &str) -> String {
        match self {
            Service::Ecr if region.starts_with("cn-") => format!("https://api.ecr.{region}.amazonaws.com.cn"),
            Service::Ecr => format!("https://api.ecr.{region}.amazonaws.com"),
            Service::EcrPublic => format!("https://api.ecr-public.{ECR_PUBLIC_REGION}.amazonaws.com"),
        }
    }
}

/// Where `GetAuthorizationToken` is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    uri: Uri,
}

impl Endpoint {
    /// An `https://` URL with no path, or `http://` on a loopback host. Refusal reasons do not
    /// repeat the text: it came from a Secret, and a pasted key may sit in the wrong field.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let uri: Uri = text.parse().map_err(|_| "is not a URL")?;
        let host = uri.host().ok_or("has no host")?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(host) => {}
            Some("http") => return Err("uses plain http:// on a host that is not loopback"),
            _ => return Err("is not an https:// URL"),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("has a path or query; give scheme and host only");
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("has user info");
        }
        Ok(Endpoint { uri })
    }

    /// What the `Host` header carries and SigV4 signs: the authority as written.
    fn host_header(&self) -> &str {
        self.uri.authority().map_or("", |a| a.as_str())
    }

    fn request_uri(&self) -> String {
        format!("{}://{}/", self.uri.scheme_str().unwrap_or("https"), self.host_header())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.uri.scheme_str().unwrap_or("https"), self.host_header())
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An ECR key Secret, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrKey {
    /// The key Secret's name.
    pub name: String,
    /// The source pull Secret to write, in the same namespace.
    pub pull_secret: String,
    pub service: Service,
    pub region: String,
    pub endpoint: Endpoint,
    credentials: AwsCredentials,
}

impl EcrKey {
    /// Reads a key Secret (see the module documentation for its shape).
    pub fn from_secret(secret: &Secret) -> Result<Self, EcrError> {
        let name = secret.name_any();
        let invalid = |problem: String| EcrError::InvalidKey { secret: name.clone(), problem };
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            // Only objects not yet through the API server (manifests, tests) have stringData.
            .chain(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())))
            .collect();
        let value = |key: &str| -> Result<Option<String>, EcrError> {
            let Some(bytes) = data.get(key) else { return Ok(None) };
            let text =
                std::str::from_utf8(bytes).map_err(|_| invalid(format!("has a {key} that is not text")))?;
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            // Header values and HMAC input: printable ASCII only, which every AWS credential is.
            if !text.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "has a {key} with spaces or characters outside printable ASCII"
                )));
            }
            Ok(Some(text.to_owned()))
        };
        let required =
            |key: &str| value(key)?.ok_or_else(|| invalid(format!("has no {key} (or it is empty)")));

        let public = match value("public")?.as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(invalid("has a public that is neither \"true\" nor \"false\"".into())),
        };
        let service = if public { Service::EcrPublic } else { Service::Ecr };
        let region = match (service, value("region")?) {
            (Service::EcrPublic, None) => ECR_PUBLIC_REGION.to_owned(),
            (Service::EcrPublic, Some(region)) if region != ECR_PUBLIC_REGION => {
                return Err(invalid(format!(
                    "is for ECR Public, whose API is in {ECR_PUBLIC_REGION} only; its region differs"
                )));
            }
            (_, Some(region)) if is_region(&region) => region,
            (_, Some(_)) => return Err(invalid("has a region that is not an AWS region name".into())),
            (Service::Ecr, None) => return Err(invalid("has no region (or it is empty)".into())),
        };
        let endpoint =
            match value("endpoint")? {
                Some(text) => Endpoint::parse(&text)
                    .map_err(|reason| invalid(format!("has an endpoint that {reason}")))?,
                None => Endpoint::parse(&service.default_endpoint(&region))
                    .expect("default endpoints are valid URLs"),
            };
        let credentials = AwsCredentials::new(
            required("accessKeyId")?,
            required("secretAccessKey")?,
            value("sessionToken")?,
        );

        let pull_secret = secret
            .annotations()
            .get(PULL_SECRET_ANNOTATION)
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| invalid(format!("has no {PULL_SECRET_ANNOTATION} annotation")))?;
        if !is_dns_subdomain(&pull_secret) {
            return Err(invalid(format!(
                "has a {PULL_SECRET_ANNOTATION} annotation that is not a Secret name"
            )));
        }
        if pull_secret == name {
            return Err(invalid(format!("names itself in {PULL_SECRET_ANNOTATION}")));
        }
        Ok(EcrKey { name, pull_secret, service, region, endpoint, credentials })
    }
}

/// `us-east-1`, `cn-north-1`, `us-gov-west-1`: lower-case letters, digits and dashes.
pub(crate) fn is_region(text: &str) -> bool {
    (4..=32).contains(&text.len())
        && text.contains('-')
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// What `GetAuthorizationToken` gave: a registry password and when it stops working.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationToken {
    /// The registry host the password is for: the `proxyEndpoint`'s host for ECR,
    /// [`ECR_PUBLIC_HOST`] for ECR Public.
    pub registry_host: String,
    /// `AWS`, as far as anyone has seen.
    pub username: String,
    password: String,
    pub expires_at: SystemTime,
}

impl AuthorizationToken {
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The `.dockerconfigjson` that pulls from [`Self::registry_host`] with this token.
    pub fn docker_config_json(&self) -> Vec<u8> {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password));
        let config = serde_json::json!({
            "auths": {
                &self.registry_host: {"username": self.username, "password": self.password, "auth": auth}
            }
        });
        serde_json::to_vec(&config).expect("a JSON value serializes")
    }

    /// Seconds since the Unix epoch, for the metric and the annotation.
    pub fn expires_at_seconds(&self) -> i64 {
        unix_seconds(self.expires_at)
    }
}

impl fmt::Debug for AuthorizationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationToken")
            .field("registry_host", &self.registry_host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at_seconds())
            .finish()
    }
}

/// Calls `GetAuthorizationToken`. One per controller: it keeps connections for reuse.
#[derive(Clone)]
pub struct EcrClient {
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for EcrClient {
    fn default() -> Self {
        Self::new()
    }
}

impl EcrClient {
    /// TLS on ring, trusting the Mozilla roots compiled in: the controller's image need not carry
    /// a CA bundle, and AWS endpoints chain to those roots.
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .expect("ring supports rustls' default protocol versions")
            .https_or_http()
            .enable_http1()
            .build();
        EcrClient { http: HttpClient::builder(TokioExecutor::new()).build(https) }
    }

    /// Fetches a token with `key`: one signed call, at most [`CALL_TIMEOUT`] in all.
    pub async fn get_authorization_token(&self, key: &EcrKey) -> Result<AuthorizationToken, EcrError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call(key, SystemTime::now())).await {
            Ok(result) => result,
            Err(_) => Err(EcrError::Timeout { endpoint: key.endpoint.to_string() }),
        }
    }

    async fn call(&self, key: &EcrKey, now: SystemTime) -> Result<AuthorizationToken, EcrError> {
        let endpoint = key.endpoint.to_string();
        let request = signed_request(key, now);
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| EcrError::Unreachable { endpoint: endpoint.clone(), detail: error_chain(&e) })?;
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned());
        if response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
        {
            return Err(EcrError::ResponseTooLarge { endpoint });
        }
        let body = match Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(EcrError::ResponseTooLarge { endpoint });
            }
            Err(e) => return Err(EcrError::Unreachable { endpoint, detail: error_chain(e.as_ref()) }),
        };
        if !status.is_success() {
            return Err(refusal(endpoint, status, error_type, &body, &key.credentials));
        }
        parse_token(key.service, &body, &endpoint)
    }
}

/// The signed `GetAuthorizationToken` request: AWS JSON 1.1, `POST /`, body `{}`.
fn signed_request(key: &EcrKey, now: SystemTime) -> Request<Full<Bytes>> {
    const BODY: &[u8] = b"{}";
    const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
    let amz_date = amz_date(now);
    let host = key.endpoint.host_header();
    let target = key.service.target();
    let mut headers = vec![
        ("content-type", CONTENT_TYPE),
        ("host", host),
        ("x-amz-date", amz_date.as_str()),
        ("x-amz-target", target),
    ];
    if let Some(token) = key.credentials.session_token.as_deref() {
        headers.push(("x-amz-security-token", token));
    }
    let signed = sigv4::sign(
        &key.credentials,
        &sigv4::Request { method: "POST", path: "/", query: "", headers: &headers, payload: BODY },
        &sigv4::Scope { date_time: &amz_date, region: &key.region, service: key.service.signing_name() },
    );
    let mut builder = Request::post(key.endpoint.request_uri())
        .header(hyper::header::USER_AGENT, concat!("registry-gate/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::AUTHORIZATION, signed.authorization);
    for (name, value) in &headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("names and values were checked when the key was read")
}

/// `YYYYMMDD'T'HHMMSS'Z'` in UTC, the SigV4 timestamp.
fn amz_date(now: SystemTime) -> String {
    utc(now, "", "")
}

/// `at` in UTC as `YYYY-MM-DDTHH:MM:SSZ` (with `-` and `:`), or SigV4's compact form (without).
/// By hand, because the `time` crate formats only with a feature this crate does not ask for.
fn utc(at: SystemTime, date_separator: &str, time_separator: &str) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(unix_seconds(at))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{date_separator}{:02}{date_separator}{:02}T{:02}{time_separator}{:02}{time_separator}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// The error and its sources, `: `-joined, as transports describe them (no request content).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The refusal in an error answer: AWS JSON errors carry `__type` and `message`; a gateway or
/// an emulator may answer XML or text instead, whose `<Code>` and `<Message>` are taken if any.
fn refusal(
    endpoint: String,
    status: StatusCode,
    header_code: Option<String>,
    body: &[u8],
    credentials: &AwsCredentials,
) -> EcrError {
    let (mut code, mut message) = (None, None);
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
        code = ["__type", "code", "Code"].iter().find_map(|k| fields.get(*k)?.as_str().map(str::to_owned));
        message = ["message", "Message"].iter().find_map(|k| fields.get(*k)?.as_str().map(str::to_owned));
    } else if let Ok(text) = std::str::from_utf8(body) {
        code = xml_element(text, "Code");
        message = xml_element(text, "Message");
    }
    // `com.amazon.coral.service#UnrecognizedClientException` → the part after `#`.
    let code = code
        .or(header_code)
        .map(|c| c.rsplit('#').next().unwrap_or_default().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "no error code".to_owned());
    let message = message.map_or_else(|| "no message".to_owned(), |m| scrub(&m, credentials));
    EcrError::Refused { endpoint, status: status.as_u16(), code: scrub(&code, credentials), message }
}

fn xml_element(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + text[start..].find(&format!("</{name}>"))?;
    Some(text[start..end].trim().to_owned())
}

/// `text` with every credential value cut out, then shortened: an AWS message may quote the
/// request it refused (the canonical request of a bad signature holds the session token).
/// Cutting before shortening means no prefix of a value survives a cut in its middle.
fn scrub(text: &str, credentials: &AwsCredentials) -> String {
    let mut clean = text.to_owned();
    for value in credentials.values() {
        clean = clean.replace(value, "<redacted>");
    }
    let clean: String = clean.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() <= MAX_MESSAGE_CHARS {
        return clean;
    }
    let mut short: String = clean.chars().take(MAX_MESSAGE_CHARS).collect();
    short.push_str("...");
    short
}

/// Reads a successful answer. ECR answers `authorizationData` as a list with a
/// `proxyEndpoint`; ECR Public as one object without, its registry being `public.ecr.aws`.
fn parse_token(service: Service, body: &[u8], endpoint: &str) -> Result<AuthorizationToken, EcrError> {
    let bad = |reason| EcrError::MalformedResponse { endpoint: endpoint.to_owned(), reason };
    let answer: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let data = match (service, answer.get("authorizationData")) {
        (Service::Ecr, Some(Value::Array(items))) => {
            items.first().ok_or_else(|| bad("authorizationData is empty"))?
        }
        (Service::EcrPublic, Some(item @ Value::Object(_))) => item,
        (_, None) => return Err(bad("no authorizationData")),
        (Service::Ecr, Some(_)) => return Err(bad("authorizationData is not a list")),
        (Service::EcrPublic, Some(_)) => return Err(bad("authorizationData is not an object")),
    };
    let token = data
        .get("authorizationToken")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no authorizationToken string"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad("authorizationToken is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("authorizationToken is not base64 of text"))?;
    let (username, password) =
        decoded.split_once(':').ok_or_else(|| bad("authorizationToken is not base64 of user:password"))?;
    if username.is_empty() || password.is_empty() {
        return Err(bad("authorizationToken has an empty user name or password"));
    }
    let expires_at = match data.get("expiresAt") {
        Some(Value::Number(n)) => n.as_f64(),
        // Not what the JSON protocol sends, but harmless to accept.
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|seconds| seconds.is_finite() && *seconds >= 0.0 && *seconds < 1e11)
    .map(|seconds| UNIX_EPOCH + Duration::from_secs_f64(seconds))
    .ok_or_else(|| bad("no expiresAt time"))?;
    let registry_host = match service {
        Service::EcrPublic => ECR_PUBLIC_HOST.to_owned(),
        Service::Ecr => {
            let proxy =
                data.get("proxyEndpoint").and_then(Value::as_str).ok_or_else(|| bad("no proxyEndpoint"))?;
            let uri: Uri = proxy.parse().map_err(|_| bad("proxyEndpoint is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) {
                return Err(bad("proxyEndpoint is not an http(s) URL"));
            }
            let host =
                uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("proxyEndpoint has no host"))?;
            let host = host.to_ascii_lowercase();
            match uri.port_u16() {
                Some(port) if port != 443 => format!("{host}:{port}"),
                _ => host,
            }
        }
    };
    Ok(AuthorizationToken {
        registry_host,
        username: username.to_owned(),
        password: password.to_owned(),
        expires_at,
    })
}

/// AWS Signature Version 4, enough of it for signing one JSON request in a header.
///
/// The steps are AWS's: hash a canonical form of the request, sign that hash with a key derived
/// from the secret key for one day, region and service, and send the signature with the names of
/// the headers it covers. Only the headers given are signed, so everything that reaches the
/// server and matters (host, time, target, session token) must be passed in.
mod sigv4 {
    use ring::{digest, hmac};

    use super::AwsCredentials;

    pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

    pub(super) struct Request<'a> {
        pub method: &'a str,
        /// Already URI-encoded; `/` for the JSON protocols.
        pub path: &'a str,
        /// Already in canonical form (sorted, encoded); empty for the JSON protocols.
        pub query: &'a str,
        /// Every header to sign, `host` and `x-amz-date` included.
        pub headers: &'a [(&'a str, &'a str)],
        pub payload: &'a [u8],
    }

    pub(super) struct Scope<'a> {
        /// `YYYYMMDD'T'HHMMSS'Z'`, the same text as the `x-amz-date` header.
        pub date_time: &'a str,
        pub region: &'a str,
        pub service: &'a str,
    }

    /// The steps before the signature are kept so that tests can hold each to AWS's values.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) struct Signed {
        pub canonical_request: String,
        pub string_to_sign: String,
        pub signature: String,
        pub authorization: String,
    }

    pub(super) fn sign(credentials: &AwsCredentials, request: &Request<'_>, scope: &Scope<'_>) -> Signed {
        // Names in lower case, sorted; values trimmed with inner runs of spaces made one, so that
        // what a proxy may normalize does not change what was signed.
        let mut headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(name, value)| {
                (name.to_ascii_lowercase(), value.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .collect();
        headers.sort();
        let signed_headers = headers.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(";");
        let canonical_headers: String =
            headers.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
        let canonical_request = format!(
            "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
            request.method,
            request.path,
            request.query,
            hex(digest::digest(&digest::SHA256, request.payload).as_ref()),
        );

        let date = scope.date_time.get(..8).unwrap_or(scope.date_time);
        let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{credential_scope}\n{}",
            scope.date_time,
            hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref()),
        );

        // The signing key is a chain of HMACs, each keyed by the last, so a leaked signing key is
        // good for one day, region and service only.
        let secret = format!("AWS4{}", credentials.secret_access_key);
        let mut key = hmac_sha256(secret.as_bytes(), date.as_bytes());
        for part in [scope.region, scope.service, "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
        let authorization = format!(
            "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        );
        Signed { canonical_request, string_to_sign, signature, authorization }
    }

    pub(super) fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message).as_ref().to_vec()
    }

    pub(super) fn hex(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(bytes.len() * 2);
        for byte in bytes {
            text.push(DIGITS[usize::from(byte >> 4)] as char);
            text.push(DIGITS[usize::from(byte & 0x0f)] as char);
        }
        text
    }
}

/// How long to wait before renewing a token that expires at `expires_at`: until
/// `max(25% of its lifetime, 1 h)` before expiry; half its lifetime when that is under an hour;
/// and never less than a minute, so that a token already expired on arrival (a skewed clock, an
/// emulator) is not asked for again at once, over and over.
pub fn refresh_delay(now: SystemTime, expires_at: SystemTime) -> Duration {
    let Ok(lifetime) = expires_at.duration_since(now) else { return MIN_REFRESH };
    let margin = (lifetime / 4).max(MIN_MARGIN);
    lifetime.checked_sub(margin).filter(|d| !d.is_zero()).unwrap_or(lifetime / 2).max(MIN_REFRESH)
}

/// The wait after the `failures`-th failure in a row (from 1): 5 s doubling to 10 min, scaled by
/// `1 + 0.2 * jitter` for a `jitter` in `[-1, 1]`.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    base.mul_f64(1.0 + BACKOFF_JITTER * jitter.clamp(-1.0, 1.0))
}

/// A number in `[-1, 1]` from the system's random source. Jitter only spreads retries out, so a
/// failing source falls back to the clock's nanoseconds rather than to no jitter.
fn jitter() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    let raw = match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()),
    };
    f64::from(raw) / f64::from(u32::MAX) * 2.0 - 1.0
}

/// What the refresh exports.
#[derive(Clone)]
pub struct EcrMetrics {
    registry: Registry,
    /// `registry_gate_credential_expiry_timestamp_seconds{secret}`.
    expiry: IntGaugeVec,
    /// `registry_gate_credential_refresh_failures_total{secret}`.
    failures: IntCounterVec,
}

impl EcrMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let expiry = IntGaugeVec::new(
            Opts::new(
                "registry_gate_credential_expiry_timestamp_seconds",
                "When the registry credential in the source pull Secret expires (Unix time)",
            ),
            &["secret"],
        )
        .expect("static metric definition");
        let failures = IntCounterVec::new(
            Opts::new(
                "registry_gate_credential_refresh_failures_total",
                "Failed attempts to fetch or write a registry credential into its source pull Secret",
            ),
            &["secret"],
        )
        .expect("static metric definition");
        for collector in
            [Box::new(expiry.clone()) as Box<dyn prometheus::core::Collector>, Box::new(failures.clone())]
        {
            registry.register(collector).expect("metric names are unique");
        }
        EcrMetrics { registry, expiry, failures }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// The expiry the gauge shows for `secret`, if any.
    pub fn expiry_of(&self, secret: &str) -> Option<i64> {
        let metric = self.read("registry_gate_credential_expiry_timestamp_seconds", secret)?;
        Some(metric.get_gauge().get_value() as i64)
    }

    /// Failures counted for `secret`.
    pub fn failures_of(&self, secret: &str) -> u64 {
        self.read("registry_gate_credential_refresh_failures_total", secret)
            .map_or(0, |metric| metric.get_counter().get_value() as u64)
    }

    /// Read through `gather`: asking a vector for a label would create that series.
    fn read(&self, family: &str, secret: &str) -> Option<prometheus::proto::Metric> {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric())
            .find(|metric| metric.get_label().iter().any(|label| label.value() == secret))
            .cloned()
    }
}

impl Default for EcrMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The pull Secret that carries `token`, as written from `key` in `namespace`.
fn pull_secret(namespace: &str, key: &EcrKey, token: &AuthorizationToken) -> Secret {
    let expires = utc(token.expires_at, "-", ":");
    Secret {
        metadata: ObjectMeta {
            name: Some(key.pull_secret.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(MANAGED_LABEL.to_owned(), MANAGED_VALUE.to_owned())])),
            annotations: Some(BTreeMap::from([
                (REFRESHED_FROM_ANNOTATION.to_owned(), key.name.clone()),
                (EXPIRES_ANNOTATION.to_owned(), expires),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_JSON_KEY.to_owned(),
            ByteString(token.docker_config_json()),
        )])),
        ..Secret::default()
    }
}

/// Creates the pull Secret, or rewrites it when it is ours. One that is not ours is never
/// written: creation fails on a name taken meanwhile, and a rewrite is conditional on the
/// resource version read, so a Secret swapped in between is not overwritten either. Labels and
/// annotations others put on ours are kept.
async fn write_pull_secret(api: &Api<Secret>, namespace: &str, wanted: Secret) -> Result<(), EcrError> {
    let name = wanted.name_any();
    let what = || format!("Secret {namespace}/{name}");
    let existing = api.get_opt(&name).await.map_err(|source| EcrError::Api { what: what(), source })?;
    match existing {
        None => {
            api.create(&PostParams::default(), &wanted)
                .await
                .map_err(|source| EcrError::Api { what: what(), source })?;
        }
        Some(current) if !is_managed(&current) => {
            return Err(EcrError::NotOurs { namespace: namespace.to_owned(), name });
        }
        Some(mut current) => {
            current.labels_mut().extend(wanted.metadata.labels.unwrap_or_default());
            current.annotations_mut().extend(wanted.metadata.annotations.unwrap_or_default());
            current.type_ = wanted.type_;
            current.data = wanted.data;
            current.string_data = None;
            api.replace(&name, &PostParams::default(), &current)
                .await
                .map_err(|source| EcrError::Api { what: what(), source })?;
        }
    }
    Ok(())
}

/// What every key's refresh task shares.
struct Shared {
    namespace: String,
    api: Api<Secret>,
    http: EcrClient,
    recorder: Recorder,
    metrics: EcrMetrics,
}

impl Shared {
    async fn publish(&self, type_: EventType, reason: &str, note: String, reference: &ObjectReference) {
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Refresh".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(target: TARGET, error = %e, "cannot record an Event");
        }
    }

    /// Fetches a token with `key` and writes it; returns when it expires.
    async fn refresh_once(&self, key: &EcrKey) -> Result<SystemTime, EcrError> {
        let token = self.http.get_authorization_token(key).await?;
        write_pull_secret(&self.api, &self.namespace, pull_secret(&self.namespace, key, &token)).await?;
        Ok(token.expires_at)
    }

    /// Keeps one key's pull Secret fresh, until aborted.
    async fn keep_fresh(self: Arc<Self>, key: EcrKey, reference: ObjectReference) {
        let mut failures = 0u32;
        let mut reported: Option<String> = None;
        loop {
            let wait = match self.refresh_once(&key).await {
                Ok(expires_at) => {
                    failures = 0;
                    let now = SystemTime::now();
                    let wait = refresh_delay(now, expires_at);
                    self.metrics.expiry.with_label_values(&[&key.pull_secret]).set(unix_seconds(expires_at));
                    if expires_at <= now {
                        tracing::warn!(target: TARGET, key = %key.name, secret = %key.pull_secret, expires_at = unix_seconds(expires_at), "the token written was already expired on arrival; is a clock wrong?");
                    }
                    tracing::info!(target: TARGET, key = %key.name, secret = %key.pull_secret, expires_at = unix_seconds(expires_at), next_refresh_seconds = wait.as_secs(), "ECR credential refreshed");
                    if reported.take().is_some() {
                        let note = format!("wrote a fresh ECR credential into Secret {}", key.pull_secret);
                        self.publish(EventType::Normal, "EcrCredentialRefreshed", note, &reference).await;
                    }
                    wait
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.metrics.failures.with_label_values(&[&key.pull_secret]).inc();
                    let wait = backoff(failures, jitter());
                    let text = error.to_string();
                    tracing::warn!(target: TARGET, key = %key.name, secret = %key.pull_secret, error = %text, failures, retry_seconds = wait.as_secs(), "ECR credential refresh failed");
                    // Once per change of problem: a retry every ten minutes is no news.
                    if reported.as_deref() != Some(text.as_str()) {
                        let note = format!(
                            "could not refresh Secret {}; retrying with backoff: {text}",
                            key.pull_secret
                        );
                        self.publish(EventType::Warning, "EcrRefreshFailed", note, &reference).await;
                        reported = Some(text);
                    }
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A key's refresh task; dropping it stops the task.
struct Running {
    fingerprint: String,
    pull_secret: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every key seen, and what became of it.
#[derive(Default)]
struct Keys {
    running: HashMap<String, Running>,
    /// Keys that could not run (invalid, or their pull Secret taken by another key), by
    /// fingerprint, so that each problem is reported once and a blocked key can start when the
    /// key in its way goes.
    waiting: HashMap<String, (String, Secret)>,
}

/// What identifies a key's content: a change of it restarts the key's task, nothing else does
/// (a watch also reports metadata-only updates).
fn fingerprint(secret: &Secret) -> String {
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.iter().flatten().map(|(k, v)| (format!("data/{k}"), v.0.clone())).collect();
    data.extend(
        secret.string_data.iter().flatten().map(|(k, v)| (format!("string/{k}"), v.clone().into_bytes())),
    );
    if let Some(target) = secret.annotations().get(PULL_SECRET_ANNOTATION) {
        data.insert("annotation".into(), target.clone().into_bytes());
    }
    crate::credentials::content_hash(&data)
}

impl Keys {
    async fn apply(&mut self, shared: &Arc<Shared>, secret: Secret) {
        let name = secret.name_any();
        let print = fingerprint(&secret);
        if self.running.get(&name).is_some_and(|r| r.fingerprint == print)
            || self.waiting.get(&name).is_some_and(|(p, _)| *p == print)
        {
            return;
        }
        let freed = self.stop(&name);
        let reference = secret.object_ref(&());
        let started = match EcrKey::from_secret(&secret) {
            Err(error) => Err(error),
            Ok(key) => match self.running.iter().find(|(_, r)| r.pull_secret == key.pull_secret) {
                Some((other, _)) => {
                    Err(EcrError::Contended { pull_secret: key.pull_secret.clone(), other: other.clone() })
                }
                None => Ok(key),
            },
        };
        match started {
            Ok(key) => {
                tracing::info!(target: TARGET, key = %name, secret = %key.pull_secret, endpoint = %key.endpoint, "refreshing an ECR credential");
                let pull_secret = key.pull_secret.clone();
                let task = tokio::spawn(shared.clone().keep_fresh(key, reference));
                self.running.insert(name, Running { fingerprint: print, pull_secret, task });
            }
            Err(error) => {
                tracing::warn!(target: TARGET, key = %name, error = %error, "ECR key not used");
                shared
                    .publish(EventType::Warning, "InvalidEcrKey", format!("not used: {error}"), &reference)
                    .await;
                self.waiting.insert(name, (print, secret));
            }
        }
        if let Some(freed) = freed {
            self.retry_waiting(shared, &freed).await;
        }
    }

    /// Stops a key; returns the pull Secret it freed, if it was running.
    fn stop(&mut self, name: &str) -> Option<String> {
        self.waiting.remove(name);
        self.running.remove(name).map(|running| running.pull_secret.clone())
    }

    async fn delete(&mut self, shared: &Arc<Shared>, name: &str) {
        if let Some(freed) = self.stop(name) {
            tracing::info!(target: TARGET, key = name, secret = %freed, "ECR key removed; its pull Secret is no longer refreshed");
            let _ = shared.metrics.expiry.remove_label_values(&[&freed]);
            self.retry_waiting(shared, &freed).await;
        }
    }

    /// Starts a key that waited for `freed`.
    async fn retry_waiting(&mut self, shared: &Arc<Shared>, freed: &str) {
        let blocked = self.waiting.iter().find_map(|(name, (_, secret))| {
            let wants = secret.annotations().get(PULL_SECRET_ANNOTATION).map(|s| s.trim());
            (wants == Some(freed)).then(|| name.clone())
        });
        if let Some((_, secret)) = blocked.and_then(|name| self.waiting.remove(&name)) {
            Box::pin(self.apply(shared, secret)).await;
        }
    }
}

/// Keeps every ECR key's pull Secret in `namespace` fresh, until dropped (which stops every
/// refresh). Runs beside [`super::run`]: the pull Secrets it writes are sources like any other.
pub async fn refresh(client: Client, namespace: String, metrics: EcrMetrics) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let shared = Arc::new(Shared {
        namespace: namespace.clone(),
        api: api.clone(),
        http: EcrClient::new(),
        recorder: crate::policy::source::recorder(client),
        metrics,
    });
    let selector = format!("{KEY_LABEL}={KEY_LABEL_VALUE}");
    let mut events = std::pin::pin!(
        watcher(api, watcher::Config::default().labels(&selector))
            .backoff(crate::watch::WatchBackoff::default())
    );
    let mut keys = Keys::default();
    // Names listed since the watch (re)started; a key absent from a full list was deleted
    // while the watch was down.
    let mut listing: Option<Vec<String>> = None;
    tracing::info!(target: TARGET, namespace = %namespace, "watching ECR keys");
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(secret)) => {
                if let Some(listed) = listing.as_mut() {
                    listed.push(secret.name_any());
                }
                keys.apply(&shared, secret).await;
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let gone: Vec<String> = keys
                    .running
                    .keys()
                    .chain(keys.waiting.keys())
                    .filter(|name| !listed.contains(name))
                    .cloned()
                    .collect();
                for name in gone {
                    keys.delete(&shared, &name).await;
                }
            }
            Ok(watcher::Event::Apply(secret)) => keys.apply(&shared, secret).await,
            Ok(watcher::Event::Delete(secret)) => keys.delete(&shared, &secret.name_any()).await,
            Err(e) => tracing::warn!(target: TARGET, error = %e, "ECR key watch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS_KEY: &str = "AKIDEXAMPLE";
    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn credentials(token: Option<&str>) -> AwsCredentials {
        AwsCredentials::new(ACCESS_KEY.into(), SECRET_KEY.into(), token.map(str::to_owned))
    }

    // The worked example of AWS's "Signature Version 4 signing process" (AWS General Reference:
    // "Create a canonical request", "Create a string to sign" and "Calculate the signature",
    // docs.aws.amazon.com/general/latest/gr/sigv4-create-canonical-request.html,
    // sigv4-create-string-to-sign.html and sigv4-calculate-signature.html): IAM ListUsers at
    // 2015-08-30 12:36:00 UTC in us-east-1, with the documented example key AKIDEXAMPLE. Every
    // value below is quoted from there; botocore's SigV4Auth computes the same.
    #[test]
    fn signs_the_documented_example() {
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("Host", "iam.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let signed = sigv4::sign(
            &credentials(None),
            &sigv4::Request {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &headers,
                payload: b"",
            },
            &sigv4::Scope { date_time: "20150830T123600Z", region: "us-east-1", service: "iam" },
        );
        assert_eq!(
            signed.canonical_request,
            "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            signed.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\nf536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let mut key = sigv4::hmac_sha256(format!("AWS4{SECRET_KEY}").as_bytes(), b"20150830");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = sigv4::hmac_sha256(&key, part.as_bytes());
        }
        assert_eq!(sigv4::hex(&key), "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
        assert_eq!(signed.signature, "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    // "post-vanilla" from AWS's SigV4 test suite (aws-sig-v4-test-suite): a POST with no body.
    #[test]
    fn signs_the_test_suite_post_vanilla() {
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")];
        let signed = sigv4::sign(
            &credentials(None),
            &sigv4::Request { method: "POST", path: "/", query: "", headers: &headers, payload: b"" },
            &sigv4::Scope { date_time: "20150830T123600Z", region: "us-east-1", service: "service" },
        );
        assert_eq!(signed.signature, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
    }

    /// The request this module sends, with a session token, signed as botocore signs it
    /// (`SigV4Auth(Credentials(...), "ecr", "eu-west-1")` over the same headers and body).
    #[test]
    fn signs_get_authorization_token_with_a_session_token() {
        let key =
            key_with(&[("sessionToken", "FAKESESSIONTOKEN/with+chars=="), ("region", "eu-west-1")], false);
        let at = UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        let request = signed_request(&key, at);
        let header =
            |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(request.uri(), "https://api.ecr.eu-west-1.amazonaws.com/");
        assert_eq!(header("x-amz-date"), "20240229T235959Z");
        assert_eq!(header("x-amz-target"), "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken");
        assert_eq!(header("x-amz-security-token"), "FAKESESSIONTOKEN/with+chars==");
        assert_eq!(
            header("authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240229/eu-west-1/ecr/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=4578c88e9b84c7ed1fd2cec9fe12fea029246e1109f6580ecd6e48cea924f20e"
        );
    }

    #[test]
    fn ecr_public_uses_its_own_service_target_and_endpoint() {
        let key = key_with(&[], true);
        assert_eq!(key.region, "us-east-1");
        let request = signed_request(&key, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(request.uri(), "https://api.ecr-public.us-east-1.amazonaws.com/");
        let header =
            |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(header("x-amz-target"), "SpencerFrontendService.GetAuthorizationToken");
        assert_eq!(header("content-type"), "application/x-amz-json-1.1");
        assert!(header("authorization").contains("/us-east-1/ecr-public/aws4_request"));
    }

    fn key_secret(extra: &[(&str, &str)], public: bool) -> Secret {
        let mut data = BTreeMap::from([
            ("accessKeyId".to_owned(), ByteString(format!("{ACCESS_KEY}\n").into_bytes())),
            ("secretAccessKey".to_owned(), ByteString(SECRET_KEY.as_bytes().to_vec())),
            ("region".to_owned(), ByteString(b"us-west-2".to_vec())),
        ]);
        if public {
            data.remove("region");
            data.insert("public".into(), ByteString(b"true".to_vec()));
        }
        for (k, v) in extra {
            data.insert((*k).to_owned(), ByteString(v.as_bytes().to_vec()));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some("ecr-key".into()),
                namespace: Some("registry-gate".into()),
                annotations: Some(BTreeMap::from([(
                    PULL_SECRET_ANNOTATION.to_owned(),
                    "ecr-pull".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..Secret::default()
        }
    }

    fn key_with(extra: &[(&str, &str)], public: bool) -> EcrKey {
        EcrKey::from_secret(&key_secret(extra, public)).expect("a valid key")
    }

    #[test]
    fn reads_a_key_secret() {
        let key = key_with(&[], false);
        assert_eq!(key.name, "ecr-key");
        assert_eq!(key.pull_secret, "ecr-pull");
        assert_eq!(key.service, Service::Ecr);
        assert_eq!(key.endpoint.to_string(), "https://api.ecr.us-west-2.amazonaws.com");
        assert_eq!(key.credentials, credentials(None), "values are trimmed");
        let china = key_with(&[("region", "cn-north-1")], false);
        assert_eq!(china.endpoint.to_string(), "https://api.ecr.cn-north-1.amazonaws.com.cn");
        let emulated = key_with(&[("endpoint", "http://127.0.0.1:5000")], false);
        assert_eq!(emulated.endpoint.host_header(), "127.0.0.1:5000");
        assert!(!format!("{key:?}").contains(SECRET_KEY));
    }

    #[test]
    fn refuses_unusable_key_secrets() {
        let cases: Vec<(Secret, &str)> = vec![
            (key_secret(&[("accessKeyId", " ")], false), "has no accessKeyId"),
            (key_secret(&[("region", "US_EAST")], false), "region that is not"),
            (key_secret(&[("region", "eu-west-1")], true), "us-east-1 only"),
            (key_secret(&[("public", "yes")], false), "neither"),
            (key_secret(&[("endpoint", "http://api.ecr.example.com")], false), "not loopback"),
            (key_secret(&[("endpoint", "https://host/path")], false), "path"),
            (key_secret(&[("endpoint", SECRET_KEY)], false), "endpoint that"),
            (key_secret(&[("secretAccessKey", "two words")], false), "spaces"),
        ];
        for (secret, expected) in cases {
            let error = EcrKey::from_secret(&secret).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
            assert!(!error.contains(SECRET_KEY) && !error.contains(ACCESS_KEY), "{error}");
        }
        let mut unannotated = key_secret(&[], false);
        unannotated.metadata.annotations = None;
        assert!(EcrKey::from_secret(&unannotated).is_err());
    }

    fn answer(token: &str, expires: &str, proxy: &str) -> Vec<u8> {
        format!(
            r#"{{"authorizationData":[{{"authorizationToken":"{token}","expiresAt":{expires},"proxyEndpoint":"{proxy}"}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn reads_an_ecr_answer_into_a_docker_config() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:pass:with:colons");
        let body = answer(&token, "1700043200.5", "https://123456789012.dkr.ecr.us-west-2.amazonaws.com");
        let parsed = parse_token(Service::Ecr, &body, "e").expect("valid");
        assert_eq!(parsed.registry_host, "123456789012.dkr.ecr.us-west-2.amazonaws.com");
        assert_eq!((parsed.username.as_str(), parsed.password()), ("AWS", "pass:with:colons"));
        assert_eq!(parsed.expires_at_seconds(), 1_700_043_200);
        let config: Value = serde_json::from_slice(&parsed.docker_config_json()).expect("JSON");
        let entry = &config["auths"]["123456789012.dkr.ecr.us-west-2.amazonaws.com"];
        assert_eq!(entry["username"], "AWS");
        assert_eq!(entry["password"], "pass:with:colons");
        assert_eq!(entry["auth"], token.as_str());
        assert!(!format!("{parsed:?}").contains("pass:with"));
    }

    #[test]
    fn reads_an_ecr_public_answer() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:public-pass");
        let body =
            format!(r#"{{"authorizationData":{{"authorizationToken":"{token}","expiresAt":1700043200}}}}"#);
        let parsed = parse_token(Service::EcrPublic, body.as_bytes(), "e").expect("valid");
        assert_eq!(parsed.registry_host, "public.ecr.aws");
        assert_eq!(parsed.password(), "public-pass");
    }

    #[test]
    fn refuses_malformed_answers_without_quoting_them() {
        let good = base64::engine::general_purpose::STANDARD.encode("AWS:secret-password");
        let cases: Vec<Vec<u8>> = vec![
            b"<html>secret-password</html>".to_vec(),
            br#"{"authorizationData":[]}"#.to_vec(),
            br#"{"authorizationData":"secret-password"}"#.to_vec(),
            answer("c2VjcmV0LXBhc3N3b3Jk", "1", "https://h"),
            answer(&good, "\"soon\"", "https://h"),
            answer(&good, "1700000000", "secret-password"),
        ];
        for body in cases {
            let error = parse_token(Service::Ecr, &body, "https://e").expect_err("malformed").to_string();
            assert!(!error.contains("secret-password") && !error.contains(&good), "{error}");
        }
    }

    #[test]
    fn refusals_never_repeat_credentials() {
        let creds = credentials(Some("SESSIONTOKENVALUE"));
        let body = format!(
            r#"{{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"The Canonical String for this request should have been 'x-amz-security-token:SESSIONTOKENVALUE' for {ACCESS_KEY} with {SECRET_KEY}"}}"#
        );
        let error = refusal("https://e".into(), StatusCode::BAD_REQUEST, None, body.as_bytes(), &creds);
        let text = error.to_string();
        assert!(text.contains("HTTP 400, InvalidSignatureException"), "{text}");
        for value in creds.values() {
            assert!(!text.contains(value), "{text}");
        }
        let xml = "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>bad</Message></Error></ErrorResponse>";
        let text =
            refusal("https://e".into(), StatusCode::FORBIDDEN, None, xml.as_bytes(), &creds).to_string();
        assert!(text.contains("SignatureDoesNotMatch") && text.contains("bad"), "{text}");
        let long = format!(r#"{{"message":"{}{SECRET_KEY}"}}"#, "x".repeat(290));
        let text =
            refusal("https://e".into(), StatusCode::FORBIDDEN, None, long.as_bytes(), &creds).to_string();
        assert!(!text.contains(&SECRET_KEY[..8]), "a cut may not leave a prefix: {text}");
    }

    /// Every variant, built with credentials in reach, renders without them.
    #[test]
    fn no_error_variant_shows_a_credential() {
        let token = "SESSIONTOKENVALUE";
        let creds = credentials(Some(token));
        let password = "PASSWORDVALUE";
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
        let echoing = format!(r#"{{"__type":"X","message":"{ACCESS_KEY} {SECRET_KEY} {token}"}}"#);
        let errors = vec![
            EcrKey::from_secret(&key_secret(&[("region", SECRET_KEY)], false)).expect_err("bad region"),
            EcrKey::from_secret(&key_secret(&[("endpoint", token)], false)).expect_err("bad endpoint"),
            EcrError::Unreachable {
                endpoint: "https://api.ecr.us-west-2.amazonaws.com".into(),
                detail: "tcp connect error: Connection refused (os error 111)".into(),
            },
            EcrError::Timeout { endpoint: "https://api.ecr.us-west-2.amazonaws.com".into() },
            EcrError::ResponseTooLarge { endpoint: "https://api.ecr.us-west-2.amazonaws.com".into() },
            refusal("https://e".into(), StatusCode::FORBIDDEN, None, echoing.as_bytes(), &creds),
            parse_token(Service::Ecr, &answer(&auth, "\"never\"", "https://h"), "https://e")
                .expect_err("no expiry"),
            EcrError::NotOurs { namespace: "registry-gate".into(), name: "ecr-pull".into() },
            EcrError::Contended { pull_secret: "ecr-pull".into(), other: "ecr-key-2".into() },
            EcrError::Api {
                what: "Secret registry-gate/ecr-pull".into(),
                source: kube::Error::Api(
                    kube::core::Status::failure("secrets \"ecr-pull\" already exists", "AlreadyExists")
                        .with_code(409)
                        .boxed(),
                ),
            },
        ];
        let mut seen = std::collections::HashSet::new();
        for error in &errors {
            seen.insert(std::mem::discriminant(error));
            let shown = format!("{error} {error:?}");
            for value in [ACCESS_KEY, SECRET_KEY, token, password, auth.as_str()] {
                assert!(!shown.contains(value), "{shown} shows {value}");
            }
        }
        assert_eq!(seen.len(), 9, "every variant is rendered");
    }

    #[test]
    fn refreshes_well_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(refresh_delay(now, now + hours(12)), hours(9), "25% of 12 h is 3 h");
        assert_eq!(refresh_delay(now, now + hours(2)), hours(1), "at least an hour before");
        assert_eq!(refresh_delay(now, now + Duration::from_secs(1800)), Duration::from_secs(900));
        assert_eq!(refresh_delay(now, now - hours(1)), MIN_REFRESH, "expired on arrival");
        assert_eq!(refresh_delay(now, now + Duration::from_secs(10)), MIN_REFRESH);
    }

    #[test]
    fn backs_off_exponentially_with_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(8, 0.0), Duration::from_secs(600));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(600));
        assert_eq!(backoff(1, 1.0), Duration::from_secs(6));
        assert_eq!(backoff(1, -1.0), Duration::from_secs(4));
        for _ in 0..100 {
            let j = jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }

    #[test]
    fn metrics_name_the_pull_secret() {
        let metrics = EcrMetrics::new();
        metrics.expiry.with_label_values(&["ecr-pull"]).set(1_700_000_000);
        metrics.failures.with_label_values(&["ecr-pull"]).inc();
        let text = metrics.render();
        assert!(
            text.contains(
                "registry_gate_credential_expiry_timestamp_seconds{secret=\"ecr-pull\"} 1700000000"
            )
        );
        assert!(text.contains("registry_gate_credential_refresh_failures_total{secret=\"ecr-pull\"} 1"));
        assert_eq!(metrics.expiry_of("ecr-pull"), Some(1_700_000_000));
        assert_eq!(metrics.failures_of("ecr-pull"), 1);
    }

    #[test]
    fn the_pull_secret_is_labelled_and_passes_its_check() {
        let key = key_with(&[], false);
        let token = AuthorizationToken {
            registry_host: "123456789012.dkr.ecr.us-west-2.amazonaws.com".into(),
            username: "AWS".into(),
            password: "pw".into(),
            expires_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let secret = pull_secret("registry-gate", &key, &token);
        assert!(is_managed(&secret));
        assert_eq!(secret.annotations()[REFRESHED_FROM_ANNOTATION], "ecr-key");
        assert_eq!(secret.annotations()[EXPIRES_ANNOTATION], "2023-11-14T22:13:20Z");
        let policy = crate::policy::Policy::parse(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {name: ecr, type: ECR, url: 123456789012.dkr.ecr.us-west-2.amazonaws.com, pullSecret: ecr-pull}\n",
        )
        .expect("valid policy");
        let data: BTreeMap<String, Vec<u8>> =
            secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        crate::credentials::check_source(secret.type_.as_deref(), &data, &policy.registries[0])
            .expect("the kubelet would use it");
    }
}
