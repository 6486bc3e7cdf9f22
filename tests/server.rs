//! registry-gate's server over real HTTPS on loopback, driven by a real TLS client that verifies
//! the chain from the generated CA: decisions for every image location and workload kind, audit
//! warnings, the mutation patch applied to the object, certificate rotation under a live
//! connection, body limits, malformed input, health and metrics.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use registry_gate::metrics::Metrics;
use registry_gate::policy::{Policy, PolicyStore};
use registry_gate::server::tls::CertificateFiles;
use registry_gate::server::{ServeOptions, Server};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

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

// === A server on loopback ===

struct TestServer {
    webhook: SocketAddr,
    operations: SocketAddr,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), registry_gate::server::ServeError>>,
}

impl TestServer {
    async fn start(policy: &str) -> Self {
        Self::start_with(policy, |_| {}).await
    }

    async fn start_with(policy: &str, configure: impl FnOnce(&mut ServeOptions)) -> Self {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_certificates(dir.path());
        let store = Arc::new(PolicyStore::new(Metrics::new()));
        store.install(Policy::parse(policy).expect("valid test policy"), "test");
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let mut options = ServeOptions::new(loopback, loopback, files);
        options.certificate_poll = Duration::from_millis(50);
        options.header_timeout = Duration::from_millis(500);
        options.shutdown_grace = Duration::ZERO;
        configure(&mut options);
        let server = Server::bind(options, store).await.expect("server binds");
        let (webhook, operations) = (server.webhook_addr(), server.operations_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer { webhook, operations, dir, stop: Some(stop), task }
    }

    fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("CA written")
    }

    async fn client(&self) -> Client {
        Client::connect(self.webhook, &self.ca(), false).await.expect("TLS connection")
    }

    async fn review(&self, path: &str, review: &Value) -> Value {
        let (status, body) = self.client().await.post(path, serde_json::to_vec(review).expect("JSON")).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("an AdmissionReview comes back")
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
            .expect("no panic")
            .expect("no background task failed");
    }
}

/// `registry_gate_tls_certificate_expiry_timestamp_seconds` from a scrape.
fn certificate_expiry(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("registry_gate_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

/// The notAfter of the first certificate of a PEM file, in Unix time.
fn not_after(path: &Path) -> i64 {
    let pem = std::fs::read(path).expect("certificate file");
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let certificate = block.parse_x509().expect("X.509");
    certificate.validity().not_after.timestamp()
}

fn write_certificates(dir: &Path) -> CertificateFiles {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    registry_gate::certs::generate(&names).expect("certificates").write(dir).expect("written")
}

/// An HTTPS client on one kept-alive connection, verifying the server against a CA.
struct Client {
    sender: Sender,
    peer_certificate: Vec<u8>,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A TCP connection to `addr` from the address `source` (Linux routes all of 127/8 on the
/// loopback interface, so 127.0.0.2 is a second client of a server on 127.0.0.1).
async fn tcp_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket =
        if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

impl Client {
    async fn connect(addr: SocketAddr, ca_pem: &[u8], http2: bool) -> Result<Self, std::io::Error> {
        Client::connect_from(addr, ca_pem, http2, None).await
    }

    /// A client whose connection comes from `source`, or from wherever the system picks.
    async fn connect_from(
        addr: SocketAddr,
        ca_pem: &[u8],
        http2: bool,
        source: Option<IpAddr>,
    ) -> Result<Self, std::io::Error> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(certificate.expect("PEM certificate")).expect("CA accepted");
        }
        let mut config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        // A resumed session would report the old certificate after a rotation.
        config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
        let stream = match source {
            Some(source) => tcp_from(source, addr).await?,
            None => TcpStream::connect(addr).await?,
        };
        let server_name = ServerName::try_from("localhost").expect("valid name");
        let tls = TlsConnector::from(Arc::new(config)).connect(server_name, stream).await?;
        let peer_certificate = tls.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec();
        let io = TokioIo::new(tls);
        let sender = if http2 {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::Http2(sender)
        } else {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::Http1(sender)
        };
        Ok(Client { sender, peer_certificate })
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let request = hyper::Request::post(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = match &mut self.sender {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => sender.send_request(request).await,
        }
        .expect("response");
        let status = response.status().as_u16();
        (status, response.into_body().collect().await.expect("body").to_bytes().to_vec())
    }
}

// === AdmissionReviews ===

fn object(name: &str) -> Value {
    let path = format!("{}/tests/data/objects/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

fn review(kind: &str, operation: &str, object: &Value, old: Option<&Value>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f1e0b7c-1d2a-4c55-9a0e-2b7c1c6c9d10",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "name": object["metadata"]["name"],
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "alice@example.com", "groups": ["developers"]},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

fn response(review: &Value) -> &Value {
    &review["response"]
}

fn message(review: &Value) -> String {
    review["response"]["status"]["message"].as_str().unwrap_or_default().to_owned()
}

/// A workload object of `kind` with the Deployment fixture's template.
fn workload(kind: &str) -> Value {
    let mut object = object("deployment");
    object["kind"] = json!(kind);
    object
}

// === The tests ===

#[tokio::test]
async fn registered_images_are_allowed_and_others_denied_with_their_field_path() {
    let server = TestServer::start(POLICY).await;
    let allowed = server.review("/validate", &review("Pod", "CREATE", &object("pod"), None)).await;
    assert_eq!(response(&allowed)["allowed"], true, "{allowed}");
    assert_eq!(response(&allowed)["uid"], "3f1e0b7c-1d2a-4c55-9a0e-2b7c1c6c9d10");

    let mut pod = object("pod");
    pod["spec"]["containers"][0]["image"] = json!("ghcr.io/acme-evil/web:1.2");
    let denied = server.review("/validate", &review("Pod", "CREATE", &pod, None)).await;
    assert_eq!(response(&denied)["allowed"], false);
    assert_eq!(response(&denied)["status"]["code"], 403);
    let text = message(&denied);
    assert!(text.contains("spec.containers[0].image \"ghcr.io/acme-evil/web:1.2\""), "{text}");
    assert!(text.contains("registered on ghcr.io: ghcr.io/acme"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn every_image_location_of_a_pod_is_checked() {
    let server = TestServer::start(POLICY).await;
    let bad = "quay.io/stranger/tool:1";
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut pod = object("pod");
    pod["spec"]["initContainers"] = json!([{"name": "init", "image": bad}]);
    cases.push(("spec.initContainers[0].image", pod));
    let mut pod = object("pod");
    pod["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": bad}]);
    cases.push(("spec.ephemeralContainers[0].image", pod));
    let mut pod = object("pod");
    pod["spec"]["volumes"] =
        json!([{"name": "cfg", "emptyDir": {}}, {"name": "model", "image": {"reference": bad}}]);
    cases.push(("spec.volumes[1].image.reference", pod));
    let mut pod = object("pod");
    pod["spec"]["containers"].as_array_mut().expect("containers").push(json!({"name": "side", "image": bad}));
    cases.push(("spec.containers[1].image", pod));
    for (field, pod) in cases {
        let answer = server.review("/validate", &review("Pod", "CREATE", &pod, None)).await;
        assert_eq!(response(&answer)["allowed"], false, "{field}");
        assert!(message(&answer).contains(&format!("{field} \"{bad}\"")), "{field}: {}", message(&answer));
    }
    server.stop().await;
}

#[tokio::test]
async fn every_workload_kind_is_checked_at_its_template() {
    let server = TestServer::start(POLICY).await;
    let bad = "evil.example.com/miner:latest";
    for kind in ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "ReplicationController"] {
        let mut object = if kind == "Job" { object("job") } else { workload(kind) };
        object["spec"]["template"]["spec"]["containers"][0]["image"] = json!(bad);
        let answer = server.review("/validate", &review(kind, "CREATE", &object, None)).await;
        assert_eq!(response(&answer)["allowed"], false, "{kind}");
        assert!(
            message(&answer).contains("spec.template.spec.containers[0].image"),
            "{kind}: {}",
            message(&answer)
        );
    }
    let mut cron = object("cronjob");
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = json!(bad);
    let answer = server.review("/validate", &review("CronJob", "CREATE", &cron, None)).await;
    assert!(message(&answer).contains("spec.jobTemplate.spec.template.spec.containers[0].image"), "{answer}");
    // The unmodified fixtures are all allowed.
    for (kind, fixture) in [("Deployment", "deployment"), ("Job", "job"), ("CronJob", "cronjob")] {
        let answer = server.review("/validate", &review(kind, "CREATE", &object(fixture), None)).await;
        assert_eq!(response(&answer)["allowed"], true, "{kind}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn kubectl_debug_adds_an_ephemeral_container_by_update() {
    let server = TestServer::start(POLICY).await;
    let old = object("pod");
    let mut pod = old.clone();
    pod["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": "busybox:1.36", "targetContainerName": "web"}]);
    let mut request = review("Pod", "UPDATE", &pod, Some(&old));
    request["request"]["subResource"] = json!("ephemeralcontainers");
    let answer = server.review("/validate", &request).await;
    assert_eq!(response(&answer)["allowed"], false);
    let text = message(&answer);
    assert!(text.contains("spec.ephemeralContainers[0].image \"busybox:1.36\""), "{text}");
    assert!(
        text.contains("use ghcr.io/acme/debug instead"),
        "the deny rule's reason reaches the user: {text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_update_checks_only_images_the_old_object_did_not_have() {
    // An object admitted under an older policy can still be scaled, labelled or deleted.
    let server = TestServer::start(POLICY).await;
    let mut old = workload("Deployment");
    old["spec"]["template"]["spec"]["containers"][0]["image"] = json!("legacy.example.com/app:1");
    let mut scaled = old.clone();
    scaled["spec"]["replicas"] = json!(10);
    let answer = server.review("/validate", &review("Deployment", "UPDATE", &scaled, Some(&old))).await;
    assert_eq!(response(&answer)["allowed"], true, "{answer}");
    let mut changed = old.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("legacy.example.com/app:2");
    let answer = server.review("/validate", &review("Deployment", "UPDATE", &changed, Some(&old))).await;
    assert_eq!(response(&answer)["allowed"], false, "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn an_update_of_a_large_pod_names_only_its_new_images() {
    let server = TestServer::start(POLICY).await;
    let containers = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"name": format!("c{i}"), "image": format!("legacy{i}.example.com/app:1")}))
            .collect()
    };
    let mut old = object("pod");
    old["spec"]["ephemeralContainers"] = json!(containers(5_000));
    let mut new = old.clone();
    let mut ephemeral = containers(5_000);
    ephemeral.push(json!({"name": "debug", "image": "evil.example.com/debug"}));
    new["spec"]["ephemeralContainers"] = json!(ephemeral);
    let answer = server.review("/validate", &review("Pod", "UPDATE", &new, Some(&old))).await;
    assert_eq!(response(&answer)["allowed"], false);
    let text = message(&answer);
    assert!(text.contains("uses an image") && text.contains("evil.example.com/debug"), "{text}");
    assert!(!text.contains("legacy"), "images the old object had are not checked again: {text}");
    server.stop().await;
}

#[tokio::test]
async fn namespace_scope_and_exemptions() {
    let server = TestServer::start(POLICY).await;
    let mut pod = object("pod");
    pod["spec"]["containers"][0]["image"] = json!("registry.corp.example:5000/shop/api:2");
    let mut request = review("Pod", "CREATE", &pod, None);
    assert_eq!(response(&server.review("/validate", &request).await)["allowed"], true);
    request["request"]["namespace"] = json!("marketing");
    let answer = server.review("/validate", &request).await;
    assert!(message(&answer).contains("may not be used in namespace \"marketing\""), "{answer}");
    let mut exempt = review("Pod", "CREATE", &object("pod"), None);
    exempt["request"]["namespace"] = json!("kube-system");
    exempt["request"]["object"]["spec"]["containers"][0]["image"] = json!("anything.example/x");
    assert_eq!(response(&server.review("/validate", &exempt).await)["allowed"], true);
    server.stop().await;
}

#[tokio::test]
async fn audit_mode_admits_with_warnings() {
    let server = TestServer::start(&POLICY.replace("mode: enforce", "mode: audit")).await;
    let mut pod = object("pod");
    pod["spec"]["containers"][0]["image"] = json!("evil.example.com/miner");
    let answer = server.review("/validate", &review("Pod", "CREATE", &pod, None)).await;
    assert_eq!(response(&answer)["allowed"], true);
    let warnings = response(&answer)["warnings"].as_array().expect("warnings").clone();
    assert_eq!(warnings.len(), 1);
    let warning = warnings[0].as_str().unwrap_or_default();
    assert!(warning.contains("audit mode") && warning.contains("spec.containers[0].image"), "{warning}");
    let (_, metrics) = server.operations("/metrics").await;
    assert!(
        metrics.contains(
            r#"registry_gate_admission_requests_total{kind="Pod",operation="CREATE",result="audited"} 1"#
        ),
        "{metrics}"
    );
    server.stop().await;
}

fn apply_patch(object: &Value, answer: &Value) -> Option<Value> {
    use base64::Engine;
    let encoded = response(answer)["patch"].as_str()?;
    assert_eq!(response(answer)["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64 patch");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("an RFC 6902 patch");
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    Some(patched)
}

#[tokio::test]
async fn mutation_adds_each_missing_pull_secret_once_and_is_idempotent() {
    let server = TestServer::start(POLICY).await;
    let mut pod = object("pod");
    pod["spec"]["containers"].as_array_mut().expect("containers").extend([
        json!({"name": "b", "image": "ghcr.io/acme/b:1"}),
        json!({"name": "c", "image": "acme.azurecr.io/c:1"}),
        json!({"name": "d", "image": "nginx:1.27"}),
    ]);
    pod["spec"]["initContainers"] = json!([{"name": "i", "image": "registry.corp.example:5000/init:1"}]);
    let answer = server.review("/mutate", &review("Pod", "CREATE", &pod, None)).await;
    assert_eq!(response(&answer)["allowed"], true);
    let patched = apply_patch(&pod, &answer).expect("a patch");
    assert_eq!(
        patched["spec"]["imagePullSecrets"],
        json!([{"name": "ghcr-acme"}, {"name": "acr-creds"}, {"name": "corp-pull"}]),
        "one entry per secret, in image order; none for the public registry"
    );
    let mut without_spec_change = patched.clone();
    without_spec_change["spec"]["imagePullSecrets"] = Value::Null;
    assert_eq!(
        without_spec_change["spec"],
        {
            let mut p = pod.clone();
            p["spec"]["imagePullSecrets"] = Value::Null;
            p["spec"].clone()
        },
        "nothing else changes"
    );

    // Invoked again on its own output (reinvocationPolicy: IfNeeded), it has nothing to add.
    let again = server.review("/mutate", &review("Pod", "CREATE", &patched, None)).await;
    assert_eq!(response(&again)["allowed"], true);
    assert!(response(&again).get("patch").is_none(), "{again}");

    // Existing secrets are kept; only the missing one is appended.
    let mut partly = pod.clone();
    partly["spec"]["imagePullSecrets"] = json!([{"name": "own-secret"}, {"name": "acr-creds"}]);
    let answer = server.review("/mutate", &review("Pod", "CREATE", &partly, None)).await;
    let patched = apply_patch(&partly, &answer).expect("a patch");
    assert_eq!(
        patched["spec"]["imagePullSecrets"],
        json!([{"name": "own-secret"}, {"name": "acr-creds"}, {"name": "ghcr-acme"}, {"name": "corp-pull"}])
    );
    let (_, metrics) = server.operations("/metrics").await;
    assert!(
        metrics.contains(r#"registry_gate_pull_secret_injections_total{registry="team-ghcr"} 2"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn workloads_are_never_mutated() {
    let server = TestServer::start(POLICY).await;
    let answer =
        server.review("/mutate", &review("Deployment", "CREATE", &workload("Deployment"), None)).await;
    assert_eq!(response(&answer)["allowed"], true);
    assert!(response(&answer).get("patch").is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_while_old_ones_keep_working() {
    let server = TestServer::start(POLICY).await;
    let (_, metrics) = server.operations("/metrics").await;
    let first = not_after(&server.dir.path().join("tls.crt"));
    assert_eq!(certificate_expiry(&metrics), Some(first), "{metrics}");
    assert!(
        first
            > std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
                as i64
    );
    let body = serde_json::to_vec(&review("Pod", "CREATE", &object("pod"), None)).expect("JSON");
    let mut kept = server.client().await;
    assert_eq!(kept.post("/validate", body.clone()).await.0, 200);
    let old_certificate = kept.peer_certificate.clone();

    // Rotate to a pair from a new CA, as cert-manager would (new files in place).
    let rotated = tempfile::tempdir().expect("temp dir");
    write_certificates(rotated.path());
    for name in ["ca.crt", "tls.key", "tls.crt"] {
        std::fs::copy(rotated.path().join(name), server.dir.path().join(name)).expect("copied");
    }
    let new_ca = std::fs::read(rotated.path().join("ca.crt")).expect("new CA");
    let mut fresh = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(client) = Client::connect(server.webhook, &new_ca, false).await {
            fresh = Some(client);
            break;
        }
    }
    let mut fresh = fresh.expect("the new certificate is served within two seconds");
    assert_ne!(fresh.peer_certificate, old_certificate);
    // The expiry gauge follows the certificate in use (it is what the near-expiry alert reads).
    let (_, metrics) = server.operations("/metrics").await;
    assert_eq!(
        certificate_expiry(&metrics),
        Some(not_after(&server.dir.path().join("tls.crt"))),
        "{metrics}"
    );
    assert_eq!(fresh.post("/validate", body.clone()).await.0, 200);
    // The connection opened before the rotation still answers.
    assert_eq!(kept.post("/validate", body).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn http2_is_offered_by_alpn() {
    let server = TestServer::start(POLICY).await;
    let mut client = Client::connect(server.webhook, &server.ca(), true).await.expect("h2 connection");
    let body = serde_json::to_vec(&review("Pod", "CREATE", &object("pod"), None)).expect("JSON");
    for _ in 0..3 {
        let (status, answer) = client.post("/validate", body.clone()).await;
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&answer).contains("\"allowed\":true"));
    }
    let mut http1 = Client::connect(server.webhook, &server.ca(), false).await.expect("HTTP/1.1 connection");
    assert_eq!(http1.post("/validate", body).await.0, 200);
    // Connections are counted by protocol, once each however many reviews they carry.
    let (_, metrics) = server.operations("/metrics").await;
    for protocol in ["h2", "http/1.1"] {
        let line = format!(r#"registry_gate_connections_opened_total{{protocol="{protocol}"}} 1"#);
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bodies_up_to_three_mebibytes_are_read_and_larger_ones_refused() {
    let server = TestServer::start(POLICY).await;
    let mut pod = object("pod");
    let three_mib = 3 * 1024 * 1024;
    pod["metadata"]["annotations"] = json!({"padding": "x".repeat(three_mib - 4096)});
    let body = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
    assert!(body.len() <= three_mib && body.len() > three_mib - 8192);
    let (status, _) = server.client().await.post("/validate", body).await;
    assert_eq!(status, 200);
    pod["metadata"]["annotations"] = json!({"padding": "x".repeat(three_mib)});
    let body = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
    let (status, _) = server.client().await.post("/validate", body).await;
    assert_eq!(status, 413);
    server.stop().await;
}

#[tokio::test]
async fn malformed_input_gets_a_precise_answer() {
    let server = TestServer::start(POLICY).await;
    let post = |body: Vec<u8>| async { server.client().await.post("/validate", body).await };
    let (status, text) = post(b"{\"apiVersion\": 1".to_vec()).await;
    assert_eq!((status, String::from_utf8_lossy(&text).contains("not an AdmissionReview")), (400, true));
    let mut wrong_version = review("Pod", "CREATE", &object("pod"), None);
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, text) = post(serde_json::to_vec(&wrong_version).expect("JSON")).await;
    assert_eq!((status, String::from_utf8_lossy(&text).contains("v1beta1")), (400, true));
    let mut no_uid = review("Pod", "CREATE", &object("pod"), None);
    no_uid["request"]["uid"] = Value::Null;
    let (status, text) = post(serde_json::to_vec(&no_uid).expect("JSON")).await;
    assert_eq!((status, String::from_utf8_lossy(&text).contains("uid")), (400, true));

    // Fail closed: a Pod whose containers cannot be read is denied.
    let mut pod = object("pod");
    pod["spec"]["containers"] = json!("not a list");
    let answer = server.review("/validate", &review("Pod", "CREATE", &pod, None)).await;
    assert_eq!(response(&answer)["allowed"], false);
    assert!(message(&answer).contains("cannot check Pod"), "{answer}");
    // An unexpected kind carries no Pod spec: allowed, with a warning that says so.
    let answer = server
        .review("/validate", &review("Service", "CREATE", &json!({"metadata": {"name": "s"}}), None))
        .await;
    assert_eq!(response(&answer)["allowed"], true);
    assert!(response(&answer)["warnings"][0].as_str().unwrap_or_default().contains("Service"));
    // An invalid image reference is denied with the kubelet's own words.
    let mut pod = object("pod");
    pod["spec"]["containers"][0]["image"] = json!("ghcr.io/Acme/web");
    let answer = server.review("/validate", &review("Pod", "CREATE", &pod, None)).await;
    assert!(message(&answer).contains("repository name (Acme/web) must be lowercase"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn structurally_malformed_requests_fail_closed() {
    let server = TestServer::start(POLICY).await;
    let evil = |mut object: Value| {
        object["spec"]["containers"][0]["image"] = json!("evil.example.com/miner");
        object
    };
    // Each of these was admitted: the object read as an empty Pod, or the request was waved
    // through for want of a kind or a known operation.
    let mut cases = Vec::new();
    let mut as_array = review("Pod", "CREATE", &Value::Null, None);
    as_array["request"]["object"] = json!([evil(object("pod"))]);
    cases.push(("object is an array", as_array));
    let mut containers_as_arrays = review("Pod", "CREATE", &object("pod"), None);
    containers_as_arrays["request"]["object"]["spec"]["containers"] = json!([["evil.example.com/miner"]]);
    cases.push(("a container is an array", containers_as_arrays));
    for kind in [Value::Null, json!({}), json!({"kind": null}), json!({"kind": ""}), json!(["Pod"])] {
        let mut no_kind = review("Pod", "CREATE", &evil(object("pod")), None);
        no_kind["request"]["kind"] = kind;
        cases.push(("kind missing or malformed", no_kind));
    }
    for operation in [Value::Null, json!("create"), json!("PATCH"), json!("")] {
        let mut odd = review("Pod", "CREATE", &evil(object("pod")), None);
        odd["request"]["operation"] = operation;
        cases.push(("operation missing or unknown", odd));
    }
    let mut no_operation = review("Pod", "CREATE", &evil(object("pod")), None);
    no_operation["request"].as_object_mut().expect("request").remove("operation");
    cases.push(("operation absent", no_operation));
    for (what, body) in cases {
        for path in ["/validate", "/mutate", "/validate-policy"] {
            let (status, text) =
                server.client().await.post(path, serde_json::to_vec(&body).expect("JSON")).await;
            let text = String::from_utf8_lossy(&text);
            // Either a 400 (the API server then fails closed) or a denial, never an admission.
            let denied = status == 200
                && serde_json::from_str::<Value>(&text)
                    .is_ok_and(|answer| answer["response"]["allowed"] == false);
            assert!(status == 400 || denied, "{what} at {path}: {status} {text}");
        }
    }
    // A top-level array is no AdmissionReview either.
    let array = json!(["admission.k8s.io/v1", "AdmissionReview", {"uid": "1"}]);
    let (status, _) =
        server.client().await.post("/validate", serde_json::to_vec(&array).expect("JSON")).await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start(POLICY).await;
    // About 18 KB of nested arrays overflowed the reader's stack and aborted the process.
    for path in ["/validate", "/mutate", "/validate-policy"] {
        for depth in [100, 18_000, 1_000_000] {
            let body = format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"1","object":{}"#,
                "[".repeat(depth)
            );
            let (status, text) = server.client().await.post(path, body.into_bytes()).await;
            assert_eq!(status, 400, "{path} {depth}: {}", String::from_utf8_lossy(&text));
            assert!(String::from_utf8_lossy(&text).contains("deeper than 64"));
        }
    }
    let answer = server.review("/validate", &review("Pod", "CREATE", &object("pod"), None)).await;
    assert_eq!(response(&answer)["allowed"], true, "still serving");
    server.stop().await;
}

/// Log output captured in memory, for the tests that measure it.
#[derive(Clone, Default)]
struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn audit_lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "registry_gate::audit")
            .collect()
    }

    fn len(&self) -> usize {
        self.0.lock().expect("log buffer").len()
    }
}

// On one thread, so that the server's tasks log into this test's subscriber only.
#[tokio::test(flavor = "current_thread")]
async fn a_denial_flood_is_bounded_in_answer_size_and_log_volume() {
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_target(true)
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start(POLICY).await;

    // One review of 20,000 denied images wrote 8.9 MB of log and answered megabytes.
    let mut pod = object("pod");
    let containers: Vec<Value> = (0..20_000)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("evil{i}.example.com/x")}))
        .collect();
    pod["spec"]["containers"] = json!(containers);
    let body = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
    let (status, answer) = server.client().await.post("/validate", body).await;
    assert_eq!(status, 200);
    assert!(answer.len() < 16 * 1024, "the answer is {} bytes", answer.len());
    let answer: Value = serde_json::from_slice(&answer).expect("review");
    let text = message(&answer);
    assert!(
        text.contains("uses 20000 images") && text.contains("and 19980 more images not allowed"),
        "{text}"
    );
    assert!(text.contains("spec.containers[19].image") && !text.contains("spec.containers[20].image"));
    let lines = log.audit_lines();
    assert_eq!(lines.len(), 1, "one audit line per review");
    assert_eq!(
        (lines[0]["denied_images"].as_u64(), lines[0]["field"].as_str()),
        (Some(20_000), Some("spec.containers[0].image"))
    );
    assert!(log.len() < 4096, "{} bytes of log for one review", log.len());

    // A flood of denied reviews writes at most the audit budget per second, and says what it left out.
    let denied = serde_json::to_vec(&review("Pod", "CREATE", &evil_pod(), None)).expect("JSON");
    let mut client = server.client().await;
    let started = std::time::Instant::now();
    for _ in 0..400 {
        assert_eq!(client.post("/validate", denied.clone()).await.0, 200);
    }
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs() + 2;
    let lines = log.audit_lines().len() as u64;
    let budget = registry_gate::admission::audit::LINES_PER_SECOND;
    assert!(lines <= budget * seconds, "{lines} audit lines in under {seconds} s");
    let (_, metrics) = server.operations("/metrics").await;
    let suppressed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("registry_gate_audit_lines_suppressed_total "))
        .and_then(|n| n.parse::<u64>().ok());
    // 400 lines cannot fit in three one-second windows of 100.
    if elapsed < Duration::from_secs(2) {
        assert!(suppressed.is_some_and(|n| n > 0), "suppressed lines are counted: {suppressed:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn long_strings_are_clipped_in_answers() {
    let server = TestServer::start(POLICY).await;
    // Twenty 150 KB image strings made a 3 MB answer; backslashes, escaped, doubled it.
    for (unit, times) in [("a", 140_000), ("\\", 70_000)] {
        let mut pod = object("pod");
        let containers: Vec<Value> =
            (0..20).map(|i| json!({"name": format!("c{i}"), "image": unit.repeat(times)})).collect();
        pod["spec"]["containers"] = json!(containers);
        let body = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
        assert!(body.len() > 2_500_000 && body.len() <= 3 * 1024 * 1024, "{} bytes", body.len());
        let (status, answer) = server.client().await.post("/validate", body).await;
        assert_eq!(status, 200);
        assert!(answer.len() < 64 * 1024, "a {} byte answer", answer.len());
        let answer: Value = serde_json::from_slice(&answer).expect("review");
        let clipped = format!("({times} bytes in all)");
        assert!(message(&answer).contains(&clipped), "{}", &message(&answer)[..300]);
    }
    server.stop().await;
}

fn evil_pod() -> Value {
    let mut pod = object("pod");
    pod["spec"]["containers"][0]["image"] = json!("evil.example.com/miner");
    pod
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start(POLICY).await;
    assert_eq!(server.operations("/healthz").await.0, 200);
    let (status, ready) = server.operations("/readyz").await;
    assert_eq!(status, 200);
    assert!(ready.contains("generation 1"), "{ready}");
    let mut pod = object("pod");
    pod["spec"]["initContainers"] = json!([{"name": "i", "image": "unknown.example/x"}]);
    server.review("/validate", &review("Pod", "CREATE", &pod, None)).await;
    let (_, metrics) = server.operations("/metrics").await;
    for line in [
        r#"registry_gate_image_decisions_total{decision="allowed",registry="team-ghcr"} 1"#,
        r#"registry_gate_image_decisions_total{decision="denied",registry="unregistered"} 1"#,
        r#"registry_gate_admission_requests_total{kind="Pod",operation="CREATE",result="denied"} 1"#,
        "registry_gate_policy_registries 4",
        "registry_gate_admission_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_up_others() {
    let server = TestServer::start(POLICY).await;
    // Connects and never says hello: the handshake times out in its own task.
    let _stalled = TcpStream::connect(server.webhook).await.expect("connect");
    let answer = server.review("/validate", &review("Pod", "CREATE", &object("pod"), None)).await;
    assert_eq!(response(&answer)["allowed"], true);
    server.stop().await;
}

/// A TLS connection that has finished its handshake and says nothing more.
async fn raw_tls(server: &TestServer, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    raw_tls_from(server, alpn, None).await
}

/// [`raw_tls`] from the address `source`.
async fn raw_tls_from(
    server: &TestServer,
    alpn: &[u8],
    source: Option<IpAddr>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&server.ca()) {
        roots.add(certificate.expect("PEM certificate")).expect("CA accepted");
    }
    let mut config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let stream = match source {
        Some(source) => tcp_from(source, server.webhook).await.expect("connect"),
        None => TcpStream::connect(server.webhook).await.expect("connect"),
    };
    let name = ServerName::try_from("localhost").expect("valid name");
    TlsConnector::from(Arc::new(config)).connect(name, stream).await.expect("TLS handshake")
}

/// Whether the server closes the connection within `within` (end of stream or reset).
async fn closed_within(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // HTTP/2 settings and the like: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_not_queued() {
    let server = TestServer::start_with(POLICY, |options| {
        options.max_connections = 3;
        options.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.client().await);
    }
    // The fourth is closed at once, before its handshake completes.
    let refused = Client::connect(server.webhook, &server.ca(), false).await;
    assert!(refused.is_err(), "a connection past the limit must be refused");
    // The held ones still work, and a freed slot is taken again.
    let body = serde_json::to_vec(&review("Pod", "CREATE", &object("pod"), None)).expect("JSON");
    assert_eq!(held[0].post("/validate", body.clone()).await.0, 200);
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        if let Ok(client) = Client::connect(server.webhook, &server.ca(), false).await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again.expect("a slot frees when a connection closes").post("/validate", body).await.0, 200);
    let (_, metrics) = server.operations("/metrics").await;
    assert!(metrics.contains(r#"registry_gate_connections_closed_total{reason="limit"}"#), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let server = TestServer::start_with(POLICY, |options| {
        options.header_timeout = Duration::from_millis(300);
        options.idle_timeout = Duration::from_millis(600);
    })
    .await;
    // HTTP/2 has no header timeout of its own: a client that sends the preface and nothing
    // else was held forever.
    for (alpn, hello) in
        [(&b"h2"[..], &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]), (b"h2", b""), (b"http/1.1", b"")]
    {
        use tokio::io::AsyncWriteExt;
        let mut silent = raw_tls(&server, alpn).await;
        silent.write_all(hello).await.expect("write");
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "{alpn:?} {hello:?}");
    }
    // An HTTP/2 connection that served a request is closed after the idle timeout.
    let mut client = Client::connect(server.webhook, &server.ca(), true).await.expect("h2");
    let body = serde_json::to_vec(&review("Pod", "CREATE", &object("pod"), None)).expect("JSON");
    assert_eq!(client.post("/validate", body.clone()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let request = hyper::Request::post("https://localhost/validate").body(Full::new(Bytes::from(body)));
    let Sender::Http2(sender) = &mut client.sender else { unreachable!("an h2 client") };
    assert!(sender.send_request(request.expect("request")).await.is_err(), "closed when idle");
    let (_, metrics) = server.operations("/metrics").await;
    for reason in ["idle", "no-request"] {
        assert!(metrics.contains(&format!(r#"registry_gate_connections_closed_total{{reason="{reason}"}}"#)));
    }
    server.stop().await;
}

#[tokio::test]
async fn request_bodies_share_a_memory_budget() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(POLICY, |options| {
        options.body_budget_bytes = 4 * 1024 * 1024;
        options.request_timeout = Duration::from_secs(30);
    })
    .await;
    // A client declares a 3 MiB body and stalls after a few bytes, holding 3 MiB of budget.
    let mut stalled = raw_tls(&server, b"http/1.1").await;
    let head = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{\"apiVersion\"",
        3 * 1024 * 1024
    );
    stalled.write_all(head.as_bytes()).await.expect("write");
    stalled.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A typical review still fits in what is left.
    let body = serde_json::to_vec(&review("Pod", "CREATE", &object("pod"), None)).expect("JSON");
    assert_eq!(server.client().await.post("/validate", body.clone()).await.0, 200);
    // A 2 MiB one does not, and is answered at once, not queued.
    let mut pod = object("pod");
    pod["metadata"]["annotations"] = json!({"padding": "x".repeat(2 * 1024 * 1024)});
    let large = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
    let (status, text) = server.client().await.post("/validate", large.clone()).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&text));
    // Once the stalled client goes, its reservation returns.
    drop(stalled);
    let mut status = 0;
    for _ in 0..50 {
        status = server.client().await.post("/validate", large.clone()).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    let (_, metrics) = server.operations("/metrics").await;
    assert!(metrics.contains("registry_gate_requests_shed_total 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn one_client_stalling_on_large_bodies_holds_only_its_share_of_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MIB: usize = 1024 * 1024;
    let server = TestServer::start_with(POLICY, |options| {
        // A client's share is then its floor: one largest body (3 MiB) and 1 MiB beside it.
        options.body_budget_bytes = 8 * MIB;
        options.request_timeout = Duration::from_secs(30);
    })
    .await;
    let greedy: IpAddr = [127, 0, 0, 1].into();
    let other: IpAddr = [127, 0, 0, 2].into();
    // The load generator's budget filler: declare a body, send a byte of it and stall; after a
    // 503, halve the size, down to 1 KiB. Without a share per client it held all but the last
    // KiB of the budget, and every other client's review was shed.
    let mut held = Vec::new();
    let mut declared = 3 * MIB;
    while declared >= 1024 {
        let mut stalled = raw_tls_from(&server, b"http/1.1", Some(greedy)).await;
        let head = format!(
            "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n{{"
        );
        stalled.write_all(head.as_bytes()).await.expect("write");
        stalled.flush().await.expect("flush");
        // A 503 comes at once; no answer means the server is waiting for the body, its size held.
        let mut status_line = [0u8; 12];
        match tokio::time::timeout(Duration::from_millis(500), stalled.read_exact(&mut status_line)).await {
            Err(_) => held.push(stalled),
            Ok(read) => {
                read.expect("an answer");
                assert_eq!(&status_line, b"HTTP/1.1 503", "{declared} bytes declared");
                declared /= 2;
            }
        }
    }
    assert!(held.len() >= 2, "the greedy client holds bodies ({} of them)", held.len());
    // An ordinary review of about 8 KiB.
    let mut pod = object("pod");
    pod["metadata"]["annotations"] = json!({"padding": "x".repeat(8 * 1024)});
    let body = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
    // Another client is served, over both protocols, even with a 2 MiB review.
    for http2 in [false, true] {
        let mut client =
            Client::connect_from(server.webhook, &server.ca(), http2, Some(other)).await.expect("connect");
        let (status, text) = client.post("/validate", body.clone()).await;
        assert_eq!(status, 200, "http2 {http2}: {}", String::from_utf8_lossy(&text));
    }
    pod["metadata"]["annotations"] = json!({"padding": "x".repeat(2 * MIB)});
    let large = serde_json::to_vec(&review("Pod", "CREATE", &pod, None)).expect("JSON");
    let mut client =
        Client::connect_from(server.webhook, &server.ca(), false, Some(other)).await.expect("connect");
    assert_eq!(client.post("/validate", large).await.0, 200);
    // The greedy client, from any of its connections, waits until it lets go of its bodies.
    let (status, text) = server.client().await.post("/validate", body.clone()).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("from this client"));
    drop(held);
    let mut status = 0;
    for _ in 0..50 {
        status = server.client().await.post("/validate", body.clone()).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "its share returns when its connections close");
    // Every request shed was shed for its client's share: the budget as a whole never ran out.
    let (_, metrics) = server.operations("/metrics").await;
    let counter = |name: &str| -> u64 {
        let line = metrics.lines().find(|line| line.starts_with(&format!("{name} "))).expect(name);
        line[name.len() + 1..].parse().expect("a count")
    };
    let shed = counter("registry_gate_requests_shed_total");
    assert!(shed >= 2, "{metrics}");
    assert_eq!(counter("registry_gate_requests_shed_per_client_total"), shed, "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn policy_configmap_edits_are_checked_at_the_door() {
    let server = TestServer::start(POLICY).await;
    let configmap = |policy: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "registry-gate-policy", "namespace": "registry-gate"},
               "data": {"policy.yaml": policy}})
    };
    let mut request = review("ConfigMap", "UPDATE", &configmap(POLICY), None);
    request["request"]["namespace"] = json!("registry-gate");
    let answer = server.review("/validate-policy", &request).await;
    assert_eq!(response(&answer)["allowed"], true, "{answer}");

    let broken = POLICY.replace("type: GHCR", "type: ghcr").replace("url: docker.io/library}", "url: \"*\"}");
    request["request"]["object"] = configmap(&broken);
    let answer = server.review("/validate-policy", &request).await;
    assert_eq!(response(&answer)["allowed"], false);
    let text = message(&answer);
    assert!(text.contains("registries[0].url") && text.contains("registries[1].type"), "{text}");
    assert!(text.contains("line 8") && text.contains("did you mean \"GHCR\""), "{text}");

    request["request"]["object"] =
        json!({"metadata": {"name": "registry-gate-policy"}, "data": {"other": "x"}});
    let answer = server.review("/validate-policy", &request).await;
    assert!(message(&answer).contains("has no policy.yaml key"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_request_sent_just_after_shutdown_begins_is_answered() {
    let server =
        TestServer::start_with(POLICY, |options| options.shutdown_grace = Duration::from_millis(800)).await;
    let mut client = server.client().await;
    let body = serde_json::to_vec(&review("Pod", "CREATE", &object("pod"), None)).expect("JSON");
    assert_eq!(client.post("/validate", body.clone()).await.0, 200);
    // The connection is idle, kept alive; shutdown begins, and a request follows at once.
    let TestServer { stop, task, .. } = server;
    let _ = stop.expect("running").send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = hyper::Request::post("https://localhost/validate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let Sender::Http1(sender) = &mut client.sender else { unreachable!("an HTTP/1.1 client") };
    let response = sender.send_request(request).await.expect("answered, not dropped");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("clean");
}

#[tokio::test]
async fn weakening_policy_edits_are_admitted_with_warnings() {
    let server = TestServer::start(POLICY).await;
    let configmap = |policy: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "registry-gate-policy", "namespace": "registry-gate"},
               "data": {"policy.yaml": policy}})
    };
    let weaker = POLICY
        .replace("mode: enforce", "mode: audit")
        .replace("exemptNamespaces: [kube-system]", "exemptNamespaces: [kube-system, team-*]")
        .replace("deny:\n  - {url: docker.io/library/busybox, reason: use ghcr.io/acme/debug instead}\n", "");
    assert_ne!(weaker, POLICY);
    let mut request = review("ConfigMap", "UPDATE", &configmap(&weaker), Some(&configmap(POLICY)));
    request["request"]["namespace"] = json!("registry-gate");
    let answer = server.review("/validate-policy", &request).await;
    assert_eq!(response(&answer)["allowed"], true, "weakening is allowed, with warnings: {answer}");
    let warnings = response(&answer)["warnings"].to_string();
    for expected in ["enforce to audit", "\\\"team-*\\\"", "removes the deny rule docker.io/library/busybox"]
    {
        assert!(warnings.contains(expected), "{expected} in {warnings}");
    }
    // The same edit the other way strengthens the policy: no warning.
    let mut back = review("ConfigMap", "UPDATE", &configmap(POLICY), Some(&configmap(&weaker)));
    back["request"]["namespace"] = json!("registry-gate");
    let answer = server.review("/validate-policy", &back).await;
    assert!(!response(&answer)["warnings"].to_string().contains("weakens"), "{answer}");
    // A wildcard entry with a pull secret is admitted with the policy's own warning.
    let answer = server.review("/validate-policy", &request).await;
    assert!(response(&answer)["warnings"].to_string().contains("other tenants"), "{answer}");
    server.stop().await;
}

/// A self-signed pair for "localhost" that expired yesterday.
fn write_expired_certificate(dir: &Path) -> CertificateFiles {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let certificate = params.self_signed(&key).expect("certificate");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("tls.crt"), certificate.pem()).expect("written");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("written");
    CertificateFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key") }
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_start_and_at_rotation() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let expired = write_expired_certificate(&dir.path().join("expired"));
    let store = Arc::new(PolicyStore::new(Metrics::new()));
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let error = Server::bind(ServeOptions::new(loopback, loopback, expired.clone()), store).await.err();
    let message = error.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("expired at"), "{message}");

    // A rotation to an expired pair is refused; the valid certificate keeps being served.
    let server = TestServer::start(POLICY).await;
    let before = server.client().await.peer_certificate;
    std::fs::copy(&expired.cert, server.dir.path().join("tls.crt")).expect("copied");
    std::fs::copy(&expired.key, server.dir.path().join("tls.key")).expect("copied");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.client().await;
    assert_eq!(after.peer_certificate, before, "still the valid certificate");
    server.stop().await;
}
