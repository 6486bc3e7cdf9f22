//! Hostile and malformed input, as data: every case under tests/data/bad-requests/ (whose
//! README describes the format) names a body, or how to generate one, and the exact answer it
//! must get. The webhook cases all run against one server, over HTTP/1.1 and most of them again
//! over HTTP/2; afterwards the server must still be healthy and still admit an ordinary Pod, and
//! none of its tasks may have panicked. The `check -f` cases run the binary as CI pipelines do.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use registry_gate::metrics::Metrics;
use registry_gate::policy::{Policy, PolicyStore};
use registry_gate::server::tls::CertificateFiles;
use registry_gate::server::{ServeOptions, Server};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The policy of tests/server.rs, which the cases' messages refer to.
const POLICY: &str = r#"
apiVersion: registry-gate.io/v1
kind: RegistryPolicy
mode: enforce
exemptNamespaces: [kube-system]
registries:
  - {name: hub-official, type: Public, url: docker.io/library}
  - {name: team-ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}
  - {name: corp, type: Generic, url: "registry.corp.example:5000", pullSecret: corp-pull, namespaces: [shop, "prod-*"]}
  - {name: acr, type: ACR, url: "*.azurecr.io", pullSecret: acr-creds}
deny:
  - {url: docker.io/library/busybox, reason: use ghcr.io/acme/debug instead}
"#;

const UID: &str = "3f1e0b7c-1d2a-4c55-9a0e-2b7c1c6c9d10";

fn data_file(name: &str) -> String {
    let path = format!("{}/tests/data/bad-requests/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

// === The corpus format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "default_endpoint")]
    endpoint: String,
    #[serde(default = "default_method")]
    method: String,
    /// Absent: `application/json`, as the API server sends; `null`: no header at all.
    #[serde(default = "default_content_type")]
    content_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Sent without a length, in chunks (HTTP/1.1 chunked encoding, HTTP/2 DATA frames).
    #[serde(default)]
    chunked: bool,
    /// Sent over HTTP/2 as well as HTTP/1.1. Large bodies whose point is not the transport are
    /// sent once, to keep the test quick.
    #[serde(default = "yes")]
    http2: bool,
    body: Body,
    expect: Expect,
}

fn yes() -> bool {
    true
}

fn default_endpoint() -> String {
    "/validate".to_owned()
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_content_type() -> Option<String> {
    Some("application/json".to_owned())
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Body {
    /// Any JSON value, serialized compactly.
    Json(Value),
    /// Bytes exactly as written.
    Text(String),
    Base64(String),
    /// `prefix`, then `unit` `times` times, then `suffix`.
    Repeat(Repeat),
    /// An AdmissionReview built from a fixture and edited.
    Review(Box<ReviewSpec>),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Repeat {
    #[serde(default)]
    prefix: String,
    unit: String,
    times: usize,
    #[serde(default)]
    suffix: String,
}

impl Repeat {
    fn text(&self) -> String {
        [self.prefix.as_str(), &self.unit.repeat(self.times), &self.suffix].concat()
    }

    /// The text as a JSON string. Escaping is per character, so the escaped unit is repeated:
    /// escaping megabytes in an unoptimized build takes most of a second.
    fn json_string(&self) -> String {
        let escaped = |text: &str| {
            let quoted = serde_json::to_string(text).expect("JSON");
            quoted[1..quoted.len() - 1].to_owned()
        };
        let unit = escaped(&self.unit);
        ["\"", &escaped(&self.prefix), &unit.repeat(self.times), &escaped(&self.suffix), "\""].concat()
    }
}

/// A review of `object` (the Pod fixture unless said otherwise) by `kind` and `operation`, then
/// edited: JSON-pointer edits on the value first, then byte edits on its serialization.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReviewSpec {
    object: Option<ObjectSpec>,
    old: Option<ObjectSpec>,
    /// `request.kind.kind`; the object's own kind by default.
    kind: Option<String>,
    operation: Option<String>,
    /// Values to set, by JSON pointer into the whole review. A missing last key is added; `-`
    /// appends to an array.
    #[serde(default)]
    set: BTreeMap<String, Value>,
    /// Strings built by repetition, set like `set`.
    #[serde(default)]
    set_text: BTreeMap<String, Repeat>,
    /// JSON text built by repetition, in place of the value at a pointer (which `set` may add):
    /// large arrays are spliced in as text, faster than built as values.
    #[serde(default)]
    splice: BTreeMap<String, Repeat>,
    #[serde(default)]
    remove: Vec<String>,
    /// Nested brackets in place of the value at a pointer.
    nest: Option<Nest>,
    /// Pads an annotation so that the body is exactly this many bytes.
    pad_to: Option<usize>,
    #[serde(default)]
    edits: Vec<Edit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nest {
    at: String,
    open: String,
    /// Empty for nesting that is never closed.
    #[serde(default)]
    close: String,
    /// What the innermost level holds.
    #[serde(default)]
    core: String,
    depth: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ObjectSpec {
    /// A file of tests/data/objects, by name.
    Fixture(String),
    /// The Deployment fixture relabelled as another workload kind.
    Workload(String),
    /// The policy ConfigMap with a policy text.
    Configmap(PolicyText),
    Inline(Value),
}

/// The test policy (or `text`), edited.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyText {
    text: Option<String>,
    #[serde(default)]
    replace: Vec<(String, String)>,
    #[serde(default)]
    append: Option<Repeat>,
}

impl PolicyText {
    fn text(&self) -> String {
        let mut text = self.text.clone().unwrap_or_else(|| POLICY.to_owned());
        for (from, to) in &self.replace {
            assert!(text.contains(from.as_str()), "the policy has no {from:?} to replace");
            text = text.replace(from.as_str(), to);
        }
        if let Some(append) = &self.append {
            text.push_str(&append.text());
        }
        text
    }
}

/// A byte edit of the serialized review.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Edit {
    /// Every occurrence of `from`, which must occur, becomes `to` (or the bytes of `to_base64`,
    /// or the text of `to_repeat`).
    Replace {
        from: String,
        #[serde(default)]
        to: String,
        to_base64: Option<String>,
        to_repeat: Option<Repeat>,
    },
    /// Keeps this many bytes; a negative count drops that many from the end.
    Truncate(isize),
    Append(String),
    PrependBase64(String),
}

/// The answer a case must get.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: u16,
    /// Required for status 200.
    allowed: Option<bool>,
    /// Fragments of `response.status.message` (status 200) or of the body (other statuses).
    #[serde(default)]
    message: Vec<String>,
    /// Fragments that must each appear in some warning; no warnings when empty.
    #[serde(default)]
    warnings: Vec<String>,
    /// Fragments of the decoded JSON patch; no patch when empty.
    #[serde(default)]
    patch: Vec<String>,
    /// The uid the answer must echo; the fixture reviews' uid by default.
    uid: Option<String>,
}

// === Building bodies ===

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/data/objects/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn build_object(spec: &ObjectSpec) -> Value {
    match spec {
        ObjectSpec::Fixture(name) => fixture(name),
        ObjectSpec::Workload(kind) => {
            let mut object = fixture("deployment");
            object["kind"] = json!(kind);
            object
        }
        ObjectSpec::Configmap(policy) => json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "registry-gate-policy", "namespace": "registry-gate"},
            "data": {"policy.yaml": policy.text()}
        }),
        ObjectSpec::Inline(value) => value.clone(),
    }
}

/// Sets `value` at `pointer`, adding the last key of an object or appending at `-`.
fn set(root: &mut Value, pointer: &str, value: Value) {
    let (parent, last) = pointer.rsplit_once('/').unwrap_or_else(|| panic!("bad pointer {pointer:?}"));
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent =
        root.pointer_mut(parent).unwrap_or_else(|| panic!("nothing at {parent:?} to set {last:?} in"));
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let index: usize = last.parse().unwrap_or_else(|_| panic!("bad index in {pointer:?}"));
            items[index] = value;
        }
        other => panic!("cannot set {pointer:?} in {other}"),
    }
}

fn remove(root: &mut Value, pointer: &str) {
    let (parent, last) = pointer.rsplit_once('/').unwrap_or_else(|| panic!("bad pointer {pointer:?}"));
    let removed = root.pointer_mut(parent).and_then(Value::as_object_mut).and_then(|map| map.remove(last));
    assert!(removed.is_some(), "nothing to remove at {pointer:?}");
}

fn review_body(spec: &ReviewSpec) -> Vec<u8> {
    let object = spec.object.as_ref().map_or_else(|| fixture("pod"), build_object);
    let kind = spec.kind.clone().unwrap_or_else(|| object["kind"].as_str().unwrap_or("Pod").to_owned());
    let mut review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"].as_str().unwrap_or("shop"),
            "operation": spec.operation.as_deref().unwrap_or("CREATE"),
            "userInfo": {"username": "alice@example.com", "groups": ["developers"]},
            "object": object,
            "oldObject": spec.old.as_ref().map(build_object),
            "dryRun": false
        }
    });
    for (pointer, value) in &spec.set {
        set(&mut review, pointer, value.clone());
    }
    for pointer in &spec.remove {
        remove(&mut review, pointer);
    }
    // Strings that stand in for spliced text until the review is serialized.
    let placeholder = |i: usize| format!("<splice {i}>");
    let mut splices: Vec<(String, String)> = Vec::new();
    for (pointer, repeat) in &spec.set_text {
        set(&mut review, pointer, json!(placeholder(splices.len())));
        splices.push((placeholder(splices.len()), repeat.json_string()));
    }
    for (pointer, repeat) in &spec.splice {
        set(&mut review, pointer, json!(placeholder(splices.len())));
        splices.push((placeholder(splices.len()), repeat.text()));
    }
    if let Some(nest) = &spec.nest {
        set(&mut review, &nest.at, json!(placeholder(splices.len())));
        let nesting = nest.open.repeat(nest.depth) + &nest.core + &nest.close.repeat(nest.depth);
        splices.push((placeholder(splices.len()), nesting));
    }
    let padding = spec.pad_to.map(|_| placeholder(splices.len()));
    if let Some(padding) = &padding {
        let annotations = "/request/object/metadata/annotations";
        if review.pointer(annotations).is_none() {
            set(&mut review, annotations, json!({}));
        }
        set(&mut review, &format!("{annotations}/padding"), json!(padding));
    }
    let mut body = sorted_json(&review);
    for (placeholder, text) in &splices {
        body = replace(&body, format!("{placeholder:?}").as_bytes(), text.as_bytes());
    }
    if let (Some(size), Some(padding)) = (spec.pad_to, &padding) {
        let quoted = format!("{padding:?}");
        let bare = body.len() - quoted.len() + 2;
        assert!(size >= bare, "a review is already {bare} bytes, more than {size}");
        body = replace(&body, quoted.as_bytes(), format!("\"{}\"", "x".repeat(size - bare)).as_bytes());
    }
    if let Some(size) = spec.pad_to {
        assert_eq!(body.len(), size, "padded to the byte");
    }
    for edit in &spec.edits {
        body = match edit {
            Edit::Replace { from, to, to_base64, to_repeat } => {
                let to = match (to_base64, to_repeat) {
                    (Some(encoded), _) => base64_bytes(encoded),
                    (None, Some(repeat)) => repeat.text().into_bytes(),
                    (None, None) => to.clone().into_bytes(),
                };
                replace(&body, from.as_bytes(), &to)
            }
            Edit::Truncate(keep) => {
                let keep = if *keep < 0 { body.len() - keep.unsigned_abs() } else { keep.unsigned_abs() };
                body[..keep].to_vec()
            }
            Edit::Append(text) => [body, text.clone().into_bytes()].concat(),
            Edit::PrependBase64(encoded) => [base64_bytes(encoded), body].concat(),
        };
    }
    body
}

/// Compact JSON with every object's keys in sorted order: byte edits name neighbouring keys, so
/// the layout must not depend on whether serde_json preserves insertion order.
fn sorted_json(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, key).expect("JSON");
                    out.push(b':');
                    write(value, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => serde_json::to_writer(&mut *out, scalar).expect("JSON"),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn base64_bytes(encoded: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64 in the corpus")
}

/// Replaces every occurrence of `from`, which must occur: an edit that silently matched nothing
/// would test the unedited review.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert!(!from.is_empty());
    let mut out = Vec::with_capacity(haystack.len() + to.len());
    let (mut rest, mut found) = (haystack, false);
    while let Some(at) = find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
        found = true;
    }
    out.extend_from_slice(rest);
    assert!(found, "the review has no {:?} to replace", String::from_utf8_lossy(from));
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(offset) = haystack[start..].iter().position(|&b| b == needle[0]) {
        let at = start + offset;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

fn body_bytes(body: &Body) -> Vec<u8> {
    match body {
        Body::Json(value) => serde_json::to_vec(value).expect("JSON"),
        Body::Text(text) => text.clone().into_bytes(),
        Body::Base64(encoded) => base64_bytes(encoded),
        Body::Repeat(repeat) => repeat.text().into_bytes(),
        Body::Review(spec) => review_body(spec),
    }
}

// === A server on loopback ===

struct TestServer {
    webhook: SocketAddr,
    operations: SocketAddr,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start() -> Self {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_certificates(dir.path());
        let store = Arc::new(PolicyStore::new(Metrics::new()));
        store.install(Policy::parse(POLICY).expect("valid test policy"), "test");
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut options = ServeOptions::new(loopback, loopback, files);
        // Room for the 3 MiB bodies of both protocols at once, and for a slow debug build.
        options.body_budget_bytes = 64 * 1024 * 1024;
        options.request_timeout = Duration::from_secs(30);
        let server = Server::bind(options, store).await.expect("server binds");
        let (webhook, operations) = (server.webhook_addr(), server.operations_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let run = server.run(async {
            let _ = stopped.await;
        });
        // Whatever `run` returns, a server that stopped early fails every later case.
        let task = tokio::spawn(async move {
            let _ = run.await;
        });
        let ca = std::fs::read(dir.path().join("ca.crt")).expect("CA written");
        TestServer { webhook, operations, ca, _dir: dir, stop: Some(stop), task }
    }

    async fn operations(&self, path: &str) -> (u16, String) {
        let stream = TcpStream::connect(self.operations).await.expect("operations port");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1");
        tokio::spawn(connection);
        let request = hyper::Request::get(path).header("host", "localhost").body(Full::new(Bytes::new()));
        let response = sender.send_request(request.expect("request")).await.expect("response");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("drains in time")
            .expect("no panic");
    }
}

fn write_certificates(dir: &Path) -> CertificateFiles {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    registry_gate::certs::generate(&names).expect("certificates").write(dir).expect("written")
}

type RequestBody = BoxBody<Bytes, Infallible>;

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<RequestBody>),
    Http2(hyper::client::conn::http2::SendRequest<RequestBody>),
}

/// An HTTPS client on one kept-alive connection, opened again when the server closed it.
struct Client {
    addr: SocketAddr,
    ca: Vec<u8>,
    http2: bool,
    sender: Option<Sender>,
}

/// What came back: status, content type and body.
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Client {
    fn new(server: &TestServer, http2: bool) -> Self {
        Client { addr: server.webhook, ca: server.ca.clone(), http2, sender: None }
    }

    async fn connect_tls(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(certificate.expect("PEM certificate")).expect("CA accepted");
        }
        let mut config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![if self.http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        // As the server does: without it, HTTP/2 answers wait for delayed acknowledgements.
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let name = ServerName::try_from("localhost").expect("valid name");
        TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    }

    async fn connect(&self) -> Result<Sender, String> {
        let io = TokioIo::new(self.connect_tls().await?);
        Ok(if self.http2 {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(connection);
            Sender::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(connection);
            Sender::Http1(sender)
        })
    }

    async fn send(&mut self, request: hyper::Request<RequestBody>) -> Result<Reply, String> {
        // A connection the server closed after its last answer (as it may after an error) is
        // replaced; one that fails mid-request is a failed case.
        let reusable = match &mut self.sender {
            Some(Sender::Http1(sender)) => sender.ready().await.is_ok(),
            Some(Sender::Http2(sender)) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = Some(self.connect().await?);
        }
        let response = match self.sender.as_mut().expect("connected") {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(request).await,
        };
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(format!("no answer: {e}"));
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        // The server answers 400 after reading the body, and may close the connection after
        // any other refusal.
        if status != 200 && status != 400 {
            self.sender = None;
        }
        Ok(Reply { status, content_type, body: body.to_vec() })
    }
}

/// Sends a request over a new HTTP/1.1 connection by hand, reading the answer while the body is
/// still being written. A body the server refuses unread (413) is answered before it is sent in
/// full, and the server then stops reading; hyper's client reports the failed write rather than
/// the answer it has already received.
async fn refused_http1(server: &TestServer, case: &Case, body: Vec<u8>) -> Result<Reply, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut head = format!("{} {} HTTP/1.1\r\nhost: localhost\r\n", case.method, case.endpoint);
    if let Some(content_type) = &case.content_type {
        head += &format!("content-type: {content_type}\r\n");
    }
    for (name, value) in &case.headers {
        head += &format!("{name}: {value}\r\n");
    }
    let bytes = if case.chunked {
        head += "transfer-encoding: chunked\r\n\r\n";
        let mut bytes = Vec::with_capacity(body.len() + 1024);
        for chunk in body.chunks(64 * 1024) {
            bytes.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    } else {
        head += &format!("content-length: {}\r\n\r\n", body.len());
        body
    };
    let tls = Client::new(server, false).connect_tls().await?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        // Whether the server reads it all is the server's business; its answer tells.
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&bytes).await;
        let _ = writer.flush().await;
    });
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // Until the answer is complete: the server may keep the connection open for another request.
    while parse_http1(&answer).is_err() {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
    }
    writing.abort();
    parse_http1(&answer)
}

/// Status, content type and body of an HTTP/1.1 answer with a content length.
fn parse_http1(answer: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no answer: {}", shorten(&text)))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|line| line.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {}", shorten(head)))?;
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    let length: usize = header("content-length").and_then(|l| l.parse().ok()).ok_or("no content length")?;
    if body.len() != length {
        return Err(format!("a body of {} bytes, announced {length}", body.len()));
    }
    Ok(Reply {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body: body.as_bytes().to_vec(),
    })
}

fn request(case: &Case, body: Vec<u8>) -> hyper::Request<RequestBody> {
    let mut builder = hyper::Request::builder()
        .method(case.method.as_str())
        .uri(format!("https://localhost{}", case.endpoint));
    if let Some(content_type) = &case.content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
    }
    for (name, value) in &case.headers {
        builder = builder.header(name, value);
    }
    let body = if case.chunked {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> =
            body.chunks(64 * 1024).map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk)))).collect();
        StreamBody::new(futures_util::stream::iter(chunks)).boxed()
    } else {
        Full::new(Bytes::from(body)).boxed()
    };
    builder.body(body).expect("a valid request")
}

// === Checking answers ===

fn contains_all(text: &str, fragments: &[String]) -> Result<(), String> {
    match fragments.iter().find(|f| !text.contains(f.as_str())) {
        Some(missing) => Err(format!("no {missing:?} in {}", shorten(text))),
        None => Ok(()),
    }
}

fn shorten(text: &str) -> String {
    if text.len() <= 600 {
        return format!("{text:?}");
    }
    let end = (0..=600).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{:?}... ({} bytes)", &text[..end], text.len())
}

/// Whether `reply` is exactly the answer `expect` describes, and a well-formed one.
fn check(expect: &Expect, reply: &Reply) -> Result<(), String> {
    if reply.status != expect.status {
        return Err(format!(
            "status {} (expected {}): {}",
            reply.status,
            expect.status,
            shorten(&String::from_utf8_lossy(&reply.body))
        ));
    }
    if reply.status != 200 {
        let text =
            std::str::from_utf8(&reply.body).map_err(|_| "an error body that is not UTF-8".to_owned())?;
        return contains_all(text, &expect.message);
    }
    if reply.content_type != "application/json" {
        return Err(format!("content type {:?}", reply.content_type));
    }
    let answer: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("not JSON ({e}): {}", shorten(&String::from_utf8_lossy(&reply.body))))?;
    if (answer["apiVersion"].as_str(), answer["kind"].as_str())
        != (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    {
        return Err(format!("not an AdmissionReview: {}", shorten(&answer.to_string())));
    }
    let response = &answer["response"];
    let uid = expect.uid.as_deref().unwrap_or(UID);
    if response["uid"] != uid {
        return Err(format!("uid {} (expected {uid:?})", shorten(&response["uid"].to_string())));
    }
    let allowed = expect.allowed.expect("checked when the corpus is read");
    if response["allowed"] != allowed {
        return Err(format!(
            "allowed is {} (expected {allowed}): {}",
            response["allowed"],
            shorten(&response.to_string())
        ));
    }
    let message = response["status"]["message"].as_str();
    if allowed {
        if !response["status"].is_null() {
            return Err(format!("an admission with a status: {}", response["status"]));
        }
    } else {
        if (response["status"]["code"].as_u64(), response["status"]["reason"].as_str())
            != (Some(403), Some("Forbidden"))
        {
            return Err(format!(
                "a denial without 403 Forbidden: {}",
                shorten(&response["status"].to_string())
            ));
        }
        contains_all(message.unwrap_or_default(), &expect.message)?;
    }
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if expect.warnings.is_empty() && !warnings.is_empty() {
        return Err(format!("unexpected warnings {warnings:?}"));
    }
    for fragment in &expect.warnings {
        if !warnings.iter().any(|w| w.contains(fragment.as_str())) {
            return Err(format!("no warning with {fragment:?} in {warnings:?}"));
        }
    }
    match (response["patch"].as_str(), expect.patch.is_empty()) {
        (None, true) => {}
        (Some(patch), true) => return Err(format!("an unexpected patch {patch}")),
        (None, false) => return Err("no patch".to_owned()),
        (Some(encoded), false) => {
            if response["patchType"] != "JSONPatch" {
                return Err(format!("patch type {}", response["patchType"]));
            }
            let patch = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("patch is not base64: {e}"))?;
            let patch = String::from_utf8(patch).map_err(|_| "patch is not UTF-8".to_owned())?;
            serde_json::from_str::<Value>(&patch).map_err(|e| format!("patch is not JSON: {e}"))?;
            contains_all(&patch, &expect.patch)?;
        }
    }
    Ok(())
}

fn read_corpus(name: &str) -> Vec<Case> {
    let corpus: Corpus =
        serde_json::from_str(&data_file(name)).unwrap_or_else(|e| panic!("{name} is not a corpus: {e}"));
    let mut names = std::collections::HashSet::new();
    for case in &corpus.cases {
        assert!(names.insert(case.name.as_str()), "{name}: two cases named {:?}", case.name);
        let expect = &case.expect;
        if expect.status == 200 {
            assert!(expect.allowed.is_some(), "{:?}: a 200 must say whether it is allowed", case.name);
            if expect.allowed == Some(false) {
                assert!(!expect.message.is_empty(), "{:?}: a denial must say what it says", case.name);
            }
        } else {
            assert!(
                expect.allowed.is_none() && expect.patch.is_empty(),
                "{:?}: no review in a {}",
                case.name,
                expect.status
            );
        }
    }
    corpus.cases
}

/// Panics on the server's worker threads; anything else that panics fails its test anyway.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_server_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().is_some_and(|name| name.starts_with("tokio-")) {
            SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
}

// === The tests ===

/// The server's runtime. Reading JSON nested to the 64 levels a review may have takes about 30
/// times more stack per level unoptimized than optimized: a debug build overflows a 2 MiB worker
/// stack from about 40 levels and aborts the process. Release builds read 64 levels on 2 MiB (see
/// the unit tests of admission::review), so debug builds of this test get what they need.
fn server_runtime() -> tokio::runtime::Runtime {
    let stack = if cfg!(debug_assertions) { 32 } else { 2 } * 1024 * 1024;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(stack)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn every_bad_request_gets_its_exact_answer_and_the_server_keeps_serving() {
    server_runtime().block_on(every_bad_request());
}

async fn every_bad_request() {
    count_server_panics();
    let mut cases = read_corpus("webhook.json");
    let webhook_cases = cases.len();
    cases.extend(read_corpus("policy-door.json"));
    let policy_cases = cases.len() - webhook_cases;
    assert!(
        webhook_cases >= 150 && policy_cases >= 15,
        "{webhook_cases} webhook and {policy_cases} policy cases"
    );

    let bodies: Vec<Vec<u8>> = cases.iter().map(|case| body_bytes(&case.body)).collect();
    let server = TestServer::start().await;
    let started = Instant::now();
    let (mut failures, mut sent) = (Vec::new(), 0);
    for http2 in [false, true] {
        let mut client = Client::new(&server, http2);
        let protocol = if http2 { "HTTP/2" } else { "HTTP/1.1" };
        for (case, body) in cases.iter().zip(&bodies).filter(|(case, _)| !http2 || case.http2) {
            sent += 1;
            let reply = async {
                if !http2 && case.expect.status == 413 {
                    refused_http1(&server, case, body.clone()).await
                } else {
                    client.send(request(case, body.clone())).await
                }
            };
            let outcome = match tokio::time::timeout(Duration::from_secs(20), reply).await {
                Err(_) => Err("no answer within 20 s".to_owned()),
                Ok(reply) => reply.and_then(|reply| check(&case.expect, &reply)),
            };
            if let Err(why) = outcome {
                failures.push(format!("{protocol} {} {:?}: {why}", case.endpoint, case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {sent} answers were wrong:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{} cases, {sent} requests, in {:?}", cases.len(), started.elapsed());

    // Still serving: healthy, and an ordinary Pod is still admitted on a new connection.
    assert_eq!(server.operations("/healthz").await.0, 200);
    let ordinary = Case {
        name: "ordinary".to_owned(),
        endpoint: default_endpoint(),
        method: default_method(),
        content_type: default_content_type(),
        headers: BTreeMap::new(),
        chunked: false,
        http2: true,
        body: Body::Review(Box::default()),
        expect: Expect {
            status: 200,
            allowed: Some(true),
            message: vec![],
            warnings: vec![],
            patch: vec![],
            uid: None,
        },
    };
    for http2 in [false, true] {
        let reply = Client::new(&server, http2).send(request(&ordinary, body_bytes(&ordinary.body))).await;
        check(&ordinary.expect, &reply.expect("an answer")).expect("an ordinary Pod is admitted");
    }
    let (status, metrics) = server.operations("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("registry_gate_admission_requests_total"), "{metrics}");
    assert_eq!(SERVER_PANICS.load(Ordering::SeqCst), 0, "a server task panicked");
    server.stop().await;
}

// === `check -f` ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckCorpus {
    cases: Vec<CheckCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckCase {
    name: String,
    manifest: Manifest,
    /// Given as `-f -` on standard input instead of as a file.
    #[serde(default)]
    stdin: bool,
    /// More arguments for `check`.
    #[serde(default)]
    args: Vec<String>,
    exit: i32,
    /// Fragments of standard output and standard error.
    #[serde(default)]
    stdout: Vec<String>,
    #[serde(default)]
    stderr: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Manifest {
    Text(String),
    Base64(String),
    Repeat(Repeat),
    /// A path where nothing is.
    Missing(()),
    /// A path that is a directory.
    Directory(()),
}

fn run_check(case: &CheckCase, index: usize, dir: &Path, policy: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let bytes = match &case.manifest {
        Manifest::Text(text) => Some(text.clone().into_bytes()),
        Manifest::Base64(encoded) => Some(base64_bytes(encoded)),
        Manifest::Repeat(repeat) => Some(repeat.text().into_bytes()),
        Manifest::Missing(_) | Manifest::Directory(_) => None,
    };
    let path = dir.join(format!("manifest-{index}.yaml"));
    match (&case.manifest, &bytes) {
        (Manifest::Directory(_), _) => std::fs::create_dir(&path).expect("directory"),
        (_, Some(bytes)) if !case.stdin => std::fs::write(&path, bytes).expect("manifest written"),
        _ => {}
    }
    let file = if case.stdin { "-".into() } else { path.display().to_string() };
    let mut command = Command::new(env!("CARGO_BIN_EXE_registry-gate"));
    command.arg("check").arg("--policy").arg(policy).args(["-f", &file]).args(&case.args);
    command.stdin(if case.stdin { Stdio::piped() } else { Stdio::null() });
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the binary runs");
    if case.stdin {
        let mut stdin = child.stdin.take().expect("standard input");
        stdin.write_all(bytes.as_deref().unwrap_or_default()).expect("manifest piped");
    }
    let output = child.wait_with_output().expect("the binary ends");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.code() != Some(case.exit) {
        return Err(format!(
            "exit {:?} (expected {}); stdout {}; stderr {}",
            output.status.code(),
            case.exit,
            shorten(&stdout),
            shorten(&stderr)
        ));
    }
    if stderr.contains("panicked") {
        return Err(format!("a panic: {}", shorten(&stderr)));
    }
    contains_all(&stdout, &case.stdout).map_err(|e| format!("stdout: {e}"))?;
    contains_all(&stderr, &case.stderr).map_err(|e| format!("stderr: {e}"))
}

#[test]
fn every_bad_manifest_gets_its_exact_verdict_from_check() {
    let corpus: CheckCorpus =
        serde_json::from_str(&data_file("check-f.json")).expect("check-f.json is a corpus");
    assert!(corpus.cases.len() >= 15, "{} cases", corpus.cases.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy written");
    // Four at a time: each case is a process of its own.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let (cases, dir, policy) = (&corpus.cases, dir.path(), policy.as_path());
                scope.spawn(move || {
                    (worker..cases.len())
                        .step_by(4)
                        .filter_map(|i| {
                            let case = &cases[i];
                            run_check(case, i, dir, policy).err().map(|why| format!("{:?}: {why}", case.name))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("a worker")).collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} verdicts were wrong:\n{}",
        failures.len(),
        corpus.cases.len(),
        failures.join("\n")
    );
}
