//! ECR credentials (src/controller/ecr.rs) against moto, an AWS API emulator: moto's server mode
//! (PyPI `moto[server]`, `python3 -m moto.server`), started by these tests on 127.0.0.1 with a
//! free port, one emulator per test.
//!
//! moto checks SigV4 signatures once its IAM enforcement is on: each test creates IAM users and
//! access keys while it is off, turns it on (`/moto-api/reset-auth`), and from then on a wrong
//! signature, an unknown key or a missing permission is refused as AWS would refuse it. So the
//! token fetched below also proves that the signer agrees with botocore's, which moto uses to
//! check it.
//!
//! What the emulator does not do, and what stands in for it:
//! - moto's `GetAuthorizationToken` answers a fixed `expiresAt` of 2015-01-01, so the expiry is
//!   checked to be that value (and to schedule a retry a minute later), not to be in the future.
//! - moto has no ECR Public (no version up to 5.2.5 does): `ecr_public_request_and_answer` checks
//!   the ECR Public request and the documented answer shape against a canned loopback responder.
//! - A wrong endpoint (nothing listening, a silent server, an oversized or non-JSON answer) is a
//!   small loopback server of this file.
//!
//! `refresh_writes_the_pull_secret_through_the_api_server` runs the whole refresh against the
//! real kube-apiserver of the end-to-end tests (tests/controlplane) and the emulator.
//!
//! Without Python or moto the tests fail, saying how to install it; they never skip.

#[allow(dead_code)]
#[path = "e2e/cluster.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use registry_gate::controller::ecr::{
    self, AuthorizationToken, EcrClient, EcrError, EcrKey, EcrMetrics, KEY_LABEL, KEY_LABEL_VALUE,
    PULL_SECRET_ANNOTATION, REFRESHED_FROM_ANNOTATION,
};
use registry_gate::credentials::check_source;
use registry_gate::policy::Policy;
use serde_json::Value;

/// moto's default account, in the proxy endpoint and the password it makes up.
const ACCOUNT: &str = "123456789012";
/// What moto answers for `expiresAt`, whatever the day: 2015-01-01T00:00:00Z.
const MOTO_EXPIRES_AT: i64 = 1_420_070_400;
const INSTALL_HINT: &str = "install the AWS API emulator with: pip install 'moto[server]'";

/// A running moto server on loopback, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn start() -> Moto {
        let probe = Command::new("python3").args(["-c", "import moto.server, flask, flask_cors"]).output();
        match probe {
            Err(e) => panic!("cannot run python3 ({e}), which runs the AWS API emulator; {INSTALL_HINT}"),
            Ok(out) if !out.status.success() => panic!(
                "moto's server mode is not installed ({}); {INSTALL_HINT}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
            ),
            Ok(_) => {}
        }
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{port}.log"));
        let out = std::fs::File::create(&log).expect("a log file under target/tmp");
        let err = out.try_clone().expect("a second handle on the log");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto: {e}; {INSTALL_HINT}"));
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited ({status}) before answering:\n{}", moto.log_text());
            }
            if http(port, "GET", "/moto-api/", &[], "").is_ok_and(|(status, _)| status == 200) {
                return moto;
            }
            assert!(Instant::now() < deadline, "moto did not answer within 60 s:\n{}", moto.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        cluster::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    /// An IAM query-protocol call, made while enforcement is off: the signature is not checked,
    /// but its credential scope is how moto's server tells which service is asked.
    fn iam(&self, query: &str) -> String {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0";
        let (status, body) = http(
            self.port,
            "POST",
            "/",
            &[("Authorization", auth), ("Content-Type", "application/x-www-form-urlencoded")],
            &format!("{query}&Version=2010-05-08"),
        )
        .expect("moto answers IAM");
        assert_eq!(status, 200, "IAM {query}: {body}");
        body
    }

    /// An IAM user with an access key; with `may_pull`, allowed `ecr:GetAuthorizationToken`.
    fn user(&self, name: &str, may_pull: bool) -> (String, String) {
        self.iam(&format!("Action=CreateUser&UserName={name}"));
        if may_pull {
            let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:GetAuthorizationToken","Resource":"*"}]}"#;
            let encoded: String = policy
                .bytes()
                .map(
                    |b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") },
                )
                .collect();
            self.iam(&format!(
                "Action=PutUserPolicy&UserName={name}&PolicyName=pull&PolicyDocument={encoded}"
            ));
        }
        let created = self.iam(&format!("Action=CreateAccessKey&UserName={name}"));
        (xml(&created, "AccessKeyId"), xml(&created, "SecretAccessKey"))
    }

    /// From now on every call must be signed by a known key with the permission it needs.
    fn enforce_iam(&self) {
        let (status, body) =
            http(self.port, "POST", "/moto-api/reset-auth", &[("Content-Type", "text/plain")], "0")
                .expect("moto answers");
        assert_eq!(status, 200, "reset-auth: {body}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// One HTTP/1.1 exchange on a fresh connection; the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn xml(text: &str, tag: &str) -> String {
    let start =
        text.find(&format!("<{tag}>")).unwrap_or_else(|| panic!("no <{tag}> in {text}")) + tag.len() + 2;
    let end = start + text[start..].find(&format!("</{tag}>")).expect("closing tag");
    text[start..end].to_owned()
}

/// An ECR key Secret as an admin would write it.
fn key_secret(name: &str, pull_secret: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(KEY_LABEL.to_owned(), KEY_LABEL_VALUE.to_owned())])),
            annotations: Some(BTreeMap::from([(PULL_SECRET_ANNOTATION.to_owned(), pull_secret.to_owned())])),
            ..ObjectMeta::default()
        },
        data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    }
}

fn key(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> EcrKey {
    EcrKey::from_secret(&key_secret(
        "ecr-key",
        "ecr-pull",
        &[
            ("accessKeyId", access_key_id),
            ("secretAccessKey", secret_access_key),
            ("region", "us-west-2"),
            ("endpoint", endpoint),
        ],
    ))
    .expect("a valid key")
}

/// `token`'s docker config passes the check every source pull Secret must pass, for a policy
/// entry of `registry_type` at `url`.
fn assert_usable(token: &AuthorizationToken, registry_type: &str, url: &str) {
    let policy = Policy::parse(&format!(
        "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {{name: aws, type: {registry_type}, url: \"{url}\", pullSecret: ecr-pull}}\n"
    ))
    .expect("a valid policy");
    let data = BTreeMap::from([(".dockerconfigjson".to_owned(), token.docker_config_json())]);
    check_source(Some("kubernetes.io/dockerconfigjson"), &data, &policy.registries[0])
        .expect("the pull secret built from the token passes its check");
}

#[tokio::test]
async fn token_from_the_emulator_is_a_usable_ecr_pull_secret() {
    let moto = Moto::start();
    let (id, secret) = moto.user("puller", true);
    moto.enforce_iam();

    let token = EcrClient::new()
        .get_authorization_token(&key(&moto.endpoint(), &id, &secret))
        .await
        .unwrap_or_else(|e| panic!("GetAuthorizationToken: {e}\n{}", moto.log_text()));
    // The region reaches the emulator only through the signature's credential scope.
    let host = format!("{ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com");
    assert_eq!(token.registry_host, host);
    assert_eq!(token.username, "AWS");
    assert_eq!(token.password(), format!("{ACCOUNT}-auth-token"));
    let config: Value = serde_json::from_slice(&token.docker_config_json()).expect("JSON");
    let auth = config["auths"][&host]["auth"].as_str().expect("an auth string");
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth).expect("base64");
    assert!(decoded.starts_with(b"AWS:"), "auth decodes to AWS:...");

    assert_eq!(token.expires_at_seconds(), MOTO_EXPIRES_AT, "moto's fixed expiresAt");
    assert_eq!(
        ecr::refresh_delay(SystemTime::now(), token.expires_at),
        Duration::from_secs(60),
        "a token expired on arrival is fetched again a minute later, not at once"
    );
    assert_usable(&token, "ECR", &host);
}

#[tokio::test]
async fn refusals_from_the_emulator() {
    let moto = Moto::start();
    let (id, secret) = moto.user("puller", true);
    let (other_id, other_secret) = moto.user("stranger", false);
    moto.enforce_iam();
    let client = EcrClient::new();
    let endpoint = moto.endpoint();

    let wrong_secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let cases = [
        (key(&endpoint, &id, wrong_secret), "SignatureDoesNotMatch"),
        (key(&endpoint, "AKIAIOSFODNN7EXAMPLE", &secret), "InvalidClientTokenId"),
        (key(&endpoint, &other_id, &other_secret), "AccessDenied"),
    ];
    for (key, expected) in cases {
        let error = client.get_authorization_token(&key).await.expect_err(expected);
        let EcrError::Refused { status, code, .. } = &error else {
            panic!("{expected}: not a refusal: {error}");
        };
        assert!((400..500).contains(status), "{expected}: HTTP {status}");
        assert!(code.contains(expected), "{expected}: {error}");
        let shown = format!("{error} {error:?}");
        for value in [wrong_secret, secret.as_str(), other_secret.as_str(), other_id.as_str(), id.as_str()] {
            assert!(!shown.contains(value), "{shown}");
        }
    }
}

/// A loopback server that answers each connection with `respond`, run on its own thread.
fn responder(respond: impl Fn(TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            respond(stream);
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Reads one request: its head and as much body as `Content-Length` says.
fn read_request(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn wrong_endpoints() {
    let client = EcrClient::new();
    let (id, secret) = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");

    let closed = format!("http://127.0.0.1:{}", free_port());
    let error = client.get_authorization_token(&key(&closed, id, secret)).await.expect_err("nothing listens");
    assert!(matches!(error, EcrError::Unreachable { .. }), "{error}");

    let html = responder(|mut stream| {
        read_request(&mut stream);
        let body = "<html>hello</html>";
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    let error = client.get_authorization_token(&key(&html, id, secret)).await.expect_err("not ECR");
    assert!(matches!(error, EcrError::MalformedResponse { .. }), "{error}");

    let not_found = responder(|mut stream| {
        read_request(&mut stream);
        let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here!");
    });
    let error = client.get_authorization_token(&key(&not_found, id, secret)).await.expect_err("404");
    assert!(matches!(error, EcrError::Refused { status: 404, .. }), "{error}");

    let declared_huge = responder(|mut stream| {
        read_request(&mut stream);
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{{", 2 << 20);
    });
    let error = client.get_authorization_token(&key(&declared_huge, id, secret)).await.expect_err("huge");
    assert!(matches!(error, EcrError::ResponseTooLarge { .. }), "{error}");

    let streamed_huge = responder(|mut stream| {
        read_request(&mut stream);
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..40 {
            if write!(stream, "{:x}\r\n", chunk.len())
                .and_then(|()| stream.write_all(&chunk))
                .and_then(|()| stream.write_all(b"\r\n"))
                .is_err()
            {
                return;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
    });
    let error = client.get_authorization_token(&key(&streamed_huge, id, secret)).await.expect_err("huge");
    assert!(matches!(error, EcrError::ResponseTooLarge { .. }), "{error}");

    let silent = responder(|mut stream| {
        read_request(&mut stream);
        std::thread::sleep(Duration::from_secs(30));
    });
    let started = Instant::now();
    let error = client.get_authorization_token(&key(&silent, id, secret)).await.expect_err("silent");
    assert!(matches!(error, EcrError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "bounded by the 10 s call timeout");
}

/// moto has no ECR Public, so a canned responder answers with the shape AWS documents for it
/// (`authorizationData` one object, no `proxyEndpoint`) and keeps the request to check it.
#[tokio::test]
async fn ecr_public_request_and_answer() {
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<String>();
    let endpoint = responder(move |mut stream| {
        let _ = sent_tx.send(read_request(&mut stream));
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:public-password");
        let expires = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() + 12 * 3600;
        let body =
            format!(r#"{{"authorizationData":{{"authorizationToken":"{token}","expiresAt":{expires}.0}}}}"#);
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    let key = EcrKey::from_secret(&key_secret(
        "ecr-public-key",
        "ecr-public-pull",
        &[
            ("accessKeyId", "AKIAIOSFODNN7EXAMPLE"),
            ("secretAccessKey", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            ("public", "true"),
            ("endpoint", &endpoint),
        ],
    ))
    .expect("a valid key");
    let token = EcrClient::new().get_authorization_token(&key).await.expect("a token");
    let request = sent_rx.recv_timeout(Duration::from_secs(5)).expect("the request").to_ascii_lowercase();
    assert!(request.starts_with("post / http/1.1\r\n"), "{request}");
    assert!(
        request.contains("\r\nx-amz-target: spencerfrontendservice.getauthorizationtoken\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\ncontent-type: application/x-amz-json-1.1\r\n"), "{request}");
    assert!(request.contains("/us-east-1/ecr-public/aws4_request, signedheaders="), "{request}");
    assert!(request.ends_with("\r\n\r\n{}"), "{request}");

    assert_eq!(token.registry_host, "public.ecr.aws");
    assert_eq!(token.password(), "public-password");
    let lifetime = token.expires_at.duration_since(SystemTime::now()).expect("in the future");
    assert!(lifetime > Duration::from_secs(11 * 3600), "{lifetime:?}");
    let delay = ecr::refresh_delay(SystemTime::now(), token.expires_at);
    assert!(
        (Duration::from_secs(8 * 3600 + 3500)..=Duration::from_secs(9 * 3600)).contains(&delay),
        "{delay:?}"
    );
    assert_usable(&token, "ECRPublic", "public.ecr.aws/acme");
}

/// `ecr::refresh` against the real kube-apiserver and the emulator: the pull Secret appears with
/// the token and the managed label; a Secret registry-gate did not make is never overwritten; two
/// keys for one pull Secret are refused; a key that stops working leaves the last token in place;
/// and no Event repeats a credential.
#[test]
fn refresh_writes_the_pull_secret_through_the_api_server() {
    let cp = cluster::control_plane();
    let moto = Moto::start();
    let (id, secret) = moto.user("puller", true);
    let (other_id, other_secret) = moto.user("stranger", false);
    moto.enforce_iam();
    let ns = "ecr-refresh";
    cp.kubectl(&["create", "namespace", ns]).ok().expect("namespace");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let metrics = EcrMetrics::new();
    let client = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
        kube::Client::try_from(config).expect("a client")
    });
    let refresh = runtime.spawn(ecr::refresh(client, ns.to_owned(), metrics.clone()));

    let apply = |object: Value| {
        cp.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string()).ok().expect("kubectl apply");
    };
    let key_object = |name: &str, pull: &str, id: &str, secret: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {KEY_LABEL: KEY_LABEL_VALUE}, "annotations": {PULL_SECRET_ANNOTATION: pull}},
            "stringData": {"accessKeyId": id, "secretAccessKey": secret, "region": "eu-central-1", "endpoint": moto.endpoint()}
        })
    };
    let get_secret = |name: &str| -> Option<Value> {
        let run = cp.kubectl(&["get", "secret", "-n", ns, name, "-o", "json"]);
        run.success().then(|| run.json().ok()).flatten()
    };
    let events = |reason: &str| -> Vec<String> {
        let run = cp.kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("reason={reason}"),
            "-o",
            "json",
        ]);
        let items = run.json().ok().and_then(|v| v["items"].as_array().cloned()).unwrap_or_default();
        items
            .iter()
            .map(|e| {
                let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                format!("{}: {}", field(&e["involvedObject"]["name"]), field(&e["message"]))
            })
            .collect()
    };
    let wait = Duration::from_secs(30);
    let every = Duration::from_millis(200);

    // A key: its pull Secret appears, labelled, annotated, holding the token.
    apply(key_object("ecr-key", "ecr-pull", &id, &secret));
    let written =
        cluster::wait_for("the pull Secret", wait, every, |_| get_secret("ecr-pull")).expect("written");
    assert_eq!(written["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(written["metadata"]["labels"]["app.kubernetes.io/managed-by"], "registry-gate");
    assert_eq!(written["metadata"]["annotations"][REFRESHED_FROM_ANNOTATION], "ecr-key");
    let config = written["data"][".dockerconfigjson"].as_str().expect("data");
    let config: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(config).expect("base64"))
            .expect("JSON");
    let host = format!("{ACCOUNT}.dkr.ecr.eu-central-1.amazonaws.com");
    assert_eq!(config["auths"][&host]["password"], format!("{ACCOUNT}-auth-token"));
    cluster::wait_for("the expiry metric", wait, every, |_| metrics.expiry_of("ecr-pull"))
        .map(|expiry| assert_eq!(expiry, MOTO_EXPIRES_AT))
        .expect("metric");

    // A Secret someone else made is never overwritten; the key that names it gets an Event.
    let foreign = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "hand-made"},
        "stringData": {".dockerconfigjson": "{\"auths\":{\"example.com\":{\"auth\":\"dTpw\"}}}"}
    });
    apply(foreign);
    let before = get_secret("hand-made").expect("exists")["metadata"]["resourceVersion"].clone();
    apply(key_object("ecr-key-2", "hand-made", &id, &secret));
    let note = cluster::wait_for("a refusal Event", wait, every, |_| {
        events("EcrRefreshFailed").into_iter().find(|e| e.starts_with("ecr-key-2:"))
    })
    .expect("Event");
    assert!(note.contains("without the app.kubernetes.io/managed-by=registry-gate label"), "{note}");
    assert!(metrics.failures_of("hand-made") >= 1);
    std::thread::sleep(Duration::from_secs(6)); // past the first retry
    assert_eq!(get_secret("hand-made").expect("exists")["metadata"]["resourceVersion"], before, "left alone");

    // A second key for the same pull Secret is refused.
    apply(key_object("ecr-key-3", "ecr-pull", &id, &secret));
    let note = cluster::wait_for("a contention Event", wait, every, |_| {
        events("InvalidEcrKey").into_iter().find(|e| e.starts_with("ecr-key-3:"))
    })
    .expect("Event");
    assert!(note.contains("already written from ECR key \"ecr-key\""), "{note}");

    // The key loses its permission: the refresh fails, the last token stays.
    let kept = get_secret("ecr-pull").expect("exists")["data"].clone();
    apply(key_object("ecr-key", "ecr-pull", &other_id, &other_secret));
    let note = cluster::wait_for("an AccessDenied Event", wait, every, |_| {
        events("EcrRefreshFailed")
            .into_iter()
            .find(|e| e.starts_with("ecr-key:") && e.contains("AccessDenied"))
    })
    .expect("Event");
    assert!(note.contains("HTTP 403"), "{note}");
    assert_eq!(get_secret("ecr-pull").expect("exists")["data"], kept, "the last token is kept");

    let all = cp.kubectl(&["get", "events", "-n", ns, "-o", "json"]).stdout;
    for value in [&id, &secret, &other_id, &other_secret] {
        assert!(!all.contains(value.as_str()), "an Event shows a credential");
    }
    refresh.abort();
    let _ = cp.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole chain, as deployed: the `registry-gate controller` binary refreshes the ECR pull
/// Secret from an ECR key (against the emulator) and its sync carries that Secret into a namespace
/// the policy's ECR entry admits, with the token; no key reaches its log.
#[test]
fn the_controller_carries_a_refreshed_ecr_token_into_every_namespace() {
    let cp = cluster::control_plane();
    let moto = Moto::start();
    let (id, secret) = moto.user("chain-puller", true);
    moto.enforce_iam();
    let (gate_ns, team_ns) = ("ecr-chain-gate", "ecr-chain-team");
    for ns in [gate_ns, team_ns] {
        cp.kubectl(&["create", "namespace", ns]).ok().expect("namespace");
    }
    let dir = tempfile::Builder::new()
        .prefix("ecr-chain-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a scratch directory");
    let host = format!("{ACCOUNT}.dkr.ecr.eu-central-1.amazonaws.com");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nexemptNamespaces: [kube-system]\nregistries:\n  - {{name: prod-ecr, type: ECR, url: {host}, pullSecret: ecr-pull, namespaces: [ecr-chain-team]}}\n"
        ),
    )
    .expect("policy written");
    let key = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ecr-key", "namespace": gate_ns, "labels": {KEY_LABEL: KEY_LABEL_VALUE},
                     "annotations": {PULL_SECRET_ANNOTATION: "ecr-pull"}},
        "stringData": {"accessKeyId": id, "secretAccessKey": secret, "region": "eu-central-1", "endpoint": moto.endpoint()}
    });
    cp.kubectl_stdin(&["apply", "-f", "-"], &key.to_string()).ok().expect("the ECR key");

    let log = dir.path().join("controller.log");
    let out = std::fs::File::create(&log).expect("a log file");
    let _controller = Running(
        Command::new(env!("CARGO_BIN_EXE_registry-gate"))
            .args(["controller", "--namespace", gate_ns, "--log-format", "json"])
            .arg("--policy")
            .arg(&policy)
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stderr(out.try_clone().expect("a second handle"))
            .stdout(out)
            .spawn()
            .expect("registry-gate controller starts"),
    );
    let started = Instant::now();
    let copy = cluster::wait_for(
        "the copy in the team namespace",
        Duration::from_secs(60),
        Duration::from_millis(200),
        |_| {
            let run = cp.kubectl(&["get", "secret", "-n", team_ns, "ecr-pull", "-o", "json"]);
            run.success().then(|| run.json().ok()).flatten()
        },
    )
    .unwrap_or_else(|e| {
        panic!("{e:#}\ncontroller log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    let elapsed = started.elapsed();
    assert_eq!(copy["metadata"]["labels"]["app.kubernetes.io/managed-by"], "registry-gate");
    let config = copy["data"][".dockerconfigjson"].as_str().expect("data");
    let config: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(config).expect("base64"))
            .expect("JSON");
    assert_eq!(
        config["auths"][&host]["password"],
        format!("{ACCOUNT}-auth-token"),
        "the copy holds the token"
    );
    println!(
        "ECR key applied -> token in the team namespace's copy {} ms after the controller started",
        elapsed.as_millis()
    );
    let text = std::fs::read_to_string(&log).expect("the controller's log");
    for value in [&id, &secret] {
        assert!(!text.contains(value.as_str()), "the controller's log shows a key");
    }
    for ns in [gate_ns, team_ns] {
        let _ = cp.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
}
