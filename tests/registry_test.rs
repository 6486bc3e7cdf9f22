//! `registry-gate registry test` through the built binary, against a real registry (Debian's
//! docker-registry, distribution 2.8) started on loopback by each test, with TLS from a test CA
//! and Basic (htpasswd) or Bearer (token) authentication; and against small fake servers for the
//! answers a real registry will not give (each is called a fake where it is made).
//!
//! Every test checks the stage that failed, its exit code and reason, and that no password,
//! `auth` string or token appears on standard output or standard error.

mod registry;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use registry::distribution::{Auth, TestRegistry, free_port};
use registry::issuer::{Account, Grant, ISSUER, SERVICE, TestTokenIssuer};
use registry::pki::TestCa;
use registry::server::{FakeServer, authorization, respond};
use serde_json::Value;

const USER: &str = "ci-robot";
/// Recognizable fake credentials: none may ever be printed.
const PASSWORD: &str = "FAKE-PASSWORD-5e1f0c";
const WRONG_PASSWORD: &str = "FAKE-WRONG-PASSWORD-93b2";
/// An account of the test token issuer whose tokens grant nothing.
const NO_PULL_USER: &str = "no-pull";
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

// === Running the binary ===

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: stdout is not JSON:\n{}\n{}", self.stdout, self.stderr))
    }

    fn both(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// Runs `registry-gate registry test ARGS` with `stdin`, and checks that nothing secret shows:
/// the passwords, their `auth` forms, and every token in `tokens`.
async fn registry_test(args: Vec<String>, stdin: Option<&str>) -> Run {
    let stdin = stdin.map(str::to_owned);
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_registry-gate"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["registry", "test"])
            .args(&args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("piped");
            if let Err(error) = pipe.write_all(text.as_bytes()) {
                assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
            }
        }
        let output = child.wait_with_output().expect("the binary finishes");
        Run {
            code: output.status.code().expect("an exit code"),
            stdout: String::from_utf8(output.stdout).expect("UTF-8"),
            stderr: String::from_utf8(output.stderr).expect("UTF-8"),
        }
    })
    .await
    .expect("joined");
    assert_no_secrets(&run, &[]);
    run
}

fn assert_no_secrets(run: &Run, tokens: &[String]) {
    let text = run.both();
    let mut secrets = vec![PASSWORD.to_owned(), WRONG_PASSWORD.to_owned()];
    for password in [PASSWORD, WRONG_PASSWORD] {
        for user in [USER, NO_PULL_USER, "AWS"] {
            secrets.push(STANDARD.encode(format!("{user}:{password}")));
        }
    }
    for token in tokens {
        secrets.push(token.clone());
        // Any part of a JWT would do: its signature is the part nothing else shares.
        secrets.extend(token.rsplit('.').next().map(str::to_owned));
    }
    for secret in secrets {
        assert!(!text.contains(&secret), "a credential or token was printed:\n{text}");
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_owned()).collect()
}

/// Files a test hands to the binary: the CA, a docker config, a policy.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Files(tempfile::tempdir().expect("a temporary directory"))
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).expect("written");
        path.to_str().expect("UTF-8").to_owned()
    }

    fn docker_config(&self, host: &str, user: &str, password: &str) -> String {
        let auth = STANDARD.encode(format!("{user}:{password}"));
        self.write("config.json", &serde_json::json!({"auths": {host: {"auth": auth}}}).to_string())
    }
}

/// The failed stage, its reason, and the exit code, checked together; the JSON shape too.
fn assert_failed(run: &Run, stage: &str, reason: &str, code: i32) -> Value {
    let json = run.json();
    assert_json_shape(&json);
    assert_eq!(json["failed_stage"], stage, "{}", run.both());
    assert_eq!(run.code, code, "{}", run.both());
    assert_eq!(json["exit_code"], code);
    let last = json["stages"].as_array().and_then(|s| s.last()).expect("a stage");
    assert_eq!((last["stage"].as_str(), last["status"].as_str()), (Some(stage), Some("failed")));
    assert_eq!(last["reason"], reason, "{}", run.both());
    assert_eq!(json["message"], last["message"]);
    json
}

fn assert_passed(run: &Run) -> Value {
    let json = run.json();
    assert_json_shape(&json);
    assert_eq!(run.code, 0, "{}", run.both());
    assert_eq!(json["failed_stage"], Value::Null);
    json
}

/// Field names and types of `-o json`, as docs/registry-test.md documents them.
fn assert_json_shape(json: &Value) {
    let object = json.as_object().expect("one object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "anonymous_access",
            "anonymous_pull",
            "auth_scheme",
            "credentials_from",
            "credentials_given",
            "credentials_tested",
            "exit_code",
            "failed_stage",
            "message",
            "quirks",
            "stages",
            "target",
            "warnings"
        ]
    );
    let target = json["target"].as_object().expect("target");
    let mut target_keys: Vec<&str> = target.keys().map(String::as_str).collect();
    target_keys.sort_unstable();
    assert_eq!(target_keys, ["endpoint", "host", "name", "repository", "repository_from", "type"]);
    assert!(json["anonymous_access"].is_boolean() || json["anonymous_access"].is_null());
    assert!(json["anonymous_pull"].is_boolean() || json["anonymous_pull"].is_null());
    assert!(["basic", "bearer"].contains(&json["auth_scheme"].as_str().unwrap_or("basic")));
    assert!(json["credentials_given"].is_boolean() && json["credentials_tested"].is_boolean());
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    let names = [
        "dns",
        "connect",
        "tls",
        "not-a-registry",
        "challenge",
        "token-endpoint",
        "credentials",
        "permission",
    ];
    let mut last_index = 0;
    for stage in json["stages"].as_array().expect("stages") {
        let name = stage["stage"].as_str().expect("a stage name");
        let index = names.iter().position(|n| *n == name).expect("a known stage");
        assert!(index >= last_index, "stages in order");
        last_index = index;
        assert!(["ok", "failed", "skipped"].contains(&stage["status"].as_str().expect("status")));
        assert!(stage["message"].is_string() && stage["elapsed_ms"].is_u64());
        assert_eq!(stage["reason"].is_null(), stage["status"] != "failed");
    }
    for quirk in json["quirks"].as_array().expect("quirks") {
        assert!(quirk["name"].is_string() && quirk["message"].is_string());
    }
}

fn stage_status<'j>(json: &'j Value, stage: &str) -> Option<&'j str> {
    json["stages"].as_array()?.iter().find(|s| s["stage"] == stage)?["status"].as_str()
}

// === Setups ===

/// A TLS registry with htpasswd (Basic) authentication, and the CA file that trusts it.
async fn basic_registry(files: &Files) -> (TestRegistry, String) {
    let ca = TestCa::new();
    let registry = TestRegistry::start(
        Some(&ca.server(&["127.0.0.1", "localhost"])),
        Auth::Htpasswd(&[(USER, PASSWORD)]),
    )
    .await;
    (registry, files.write("ca.pem", &ca.cert_pem))
}

/// A TLS registry with token (Bearer) authentication, its test token issuer, and the CA file.
async fn token_registry(files: &Files) -> (TestRegistry, TestTokenIssuer, String) {
    token_registry_with(files, None).await
}

/// [`token_registry`] whose issuer gives requests without credentials `anonymous`.
async fn token_registry_with(
    files: &Files,
    anonymous: Option<Grant>,
) -> (TestRegistry, TestTokenIssuer, String) {
    let ca = TestCa::new();
    let issuer = TestTokenIssuer::start(
        &ca.server(&["127.0.0.1"]),
        vec![
            Account { username: USER, password: PASSWORD, grant: Grant::Pull },
            Account { username: NO_PULL_USER, password: PASSWORD, grant: Grant::Nothing },
        ],
        anonymous,
    )
    .await;
    let realm = issuer.realm();
    let auth = Auth::Token {
        realm: &realm,
        service: SERVICE,
        issuer: ISSUER,
        signing_cert_pem: &issuer.signing_cert_pem,
    };
    let registry = TestRegistry::start(Some(&ca.server(&["127.0.0.1"])), auth).await;
    (registry, issuer, files.write("ca.pem", &ca.cert_pem))
}

// === A real registry: Basic ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_accepts_the_right_password_of_a_policy_entry() {
    let files = Files::new();
    let (registry, ca) = basic_registry(&files).await;
    let policy = files.write(
        "policy.yaml",
        &format!(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  \
             - {{name: lab, type: Generic, url: '{}/acme/app', pullSecret: lab-pull}}\n",
            registry.host()
        ),
    );
    let run = registry_test(
        args(&["lab", "-p", &policy, "--ca-file", &ca, "--username", USER, "--password-stdin", "-o", "json"]),
        Some(&format!("{PASSWORD}\n")),
    )
    .await;
    let json = assert_passed(&run);
    assert_eq!(json["target"]["name"], "lab");
    assert_eq!(json["target"]["type"], "Generic");
    assert_eq!(json["target"]["repository"], "acme/app");
    assert_eq!(json["target"]["repository_from"], "policy");
    assert_eq!(json["anonymous_access"], false);
    assert_eq!(json["auth_scheme"], "basic");
    assert_eq!(
        (json["credentials_given"].as_bool(), json["credentials_tested"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(json["credentials_from"], "password-stdin");
    for stage in ["dns", "connect", "tls", "not-a-registry", "challenge", "credentials"] {
        assert_eq!(stage_status(&json, stage), Some("ok"), "{stage}: {}", run.both());
    }
    assert_eq!(stage_status(&json, "token-endpoint"), None, "no token endpoint with Basic");
    assert_eq!(stage_status(&json, "permission"), Some("skipped"));
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_refuses_a_wrong_password_from_a_docker_config() {
    let files = Files::new();
    let (registry, ca) = basic_registry(&files).await;
    let config = files.docker_config(&registry.host(), USER, WRONG_PASSWORD);
    let run = registry_test(
        args(&[&registry.host(), "--ca-file", &ca, "--docker-config", &config, "-o", "json"]),
        None,
    )
    .await;
    let json = assert_failed(&run, "credentials", "rejected", 9);
    assert_eq!(json["credentials_from"], "docker-config");
    assert_eq!(json["credentials_tested"], true);
    assert!(json["message"].as_str().is_some_and(|m| m.contains("401")), "{}", run.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_anonymous_access_is_reported_refused() {
    let files = Files::new();
    let (registry, ca) = basic_registry(&files).await;
    let run = registry_test(args(&[&registry.host(), "--ca-file", &ca]), None).await;
    assert_eq!(run.code, 0, "{}", run.both());
    assert!(run.stdout.contains("anonymous access: refused"), "{}", run.stdout);
    assert!(run.stdout.contains("credentials:   none given: anonymous test only"), "{}", run.stdout);
    assert!(run.stdout.contains("skipped  credentials"), "{}", run.stdout);

    let json =
        assert_passed(&registry_test(args(&[&registry.host(), "--ca-file", &ca, "-o", "json"]), None).await);
    assert_eq!(
        (json["anonymous_access"].as_bool(), json["auth_scheme"].as_str()),
        (Some(false), Some("basic"))
    );
    assert_eq!(
        (json["credentials_given"].as_bool(), json["credentials_tested"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(stage_status(&json, "credentials"), Some("skipped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_registry_over_plain_http_on_loopback() {
    let registry = TestRegistry::start(None, Auth::Anonymous).await;
    let url = format!("http://{}/acme/app", registry.host());
    let run = registry_test(args(&[&url, "--plain-http", "-o", "json"]), None).await;
    let json = assert_passed(&run);
    assert_eq!(json["anonymous_access"], true);
    assert_eq!(json["auth_scheme"], Value::Null);
    assert_eq!(stage_status(&json, "tls"), Some("skipped"));
    assert!(run.stderr.contains("WARNING: --plain-http"), "{}", run.stderr);
    assert!(json["warnings"].as_array().is_some_and(|w| !w.is_empty()));

    // Credentials cannot be checked by a registry that does not ask for them: said, not faked.
    let files = Files::new();
    let config = files.docker_config(&registry.host(), USER, PASSWORD);
    let run =
        registry_test(args(&[&url, "--plain-http", "--docker-config", &config, "-o", "json"]), None).await;
    let json = assert_passed(&run);
    assert_eq!(
        (json["credentials_given"].as_bool(), json["credentials_tested"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(stage_status(&json, "credentials"), Some("skipped"));

    let refused = registry_test(args(&[&url]), None).await;
    assert_eq!(refused.code, 2, "http:// without --plain-http is refused: {}", refused.both());
}

// === A real registry: Bearer tokens from the test token issuer ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_accepts_the_right_password_and_grants_pull() {
    let files = Files::new();
    let (registry, issuer, ca) = token_registry(&files).await;
    let target = format!("{}/acme/app", registry.host());
    let run = registry_test(
        args(&[&target, "--ca-file", &ca, "--username", USER, "--password-stdin", "-o", "json"]),
        Some(PASSWORD),
    )
    .await;
    let json = assert_passed(&run);
    assert_eq!(json["auth_scheme"], "bearer");
    assert_eq!(json["anonymous_access"], false);
    for stage in [
        "dns",
        "connect",
        "tls",
        "not-a-registry",
        "challenge",
        "token-endpoint",
        "credentials",
        "permission",
    ] {
        assert_eq!(stage_status(&json, stage), Some("ok"), "{stage}: {}", run.both());
    }
    let tokens = issuer.issued();
    assert_eq!(tokens.len(), 1, "one token asked for");
    assert_no_secrets(&run, &tokens);

    // Text output of the same, and the repository given on its own.
    let run = registry_test(
        args(&[
            &registry.host(),
            "--ca-file",
            &ca,
            "--repository",
            "acme/app",
            "--username",
            USER,
            "--password-stdin",
        ]),
        Some(PASSWORD),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.both());
    assert!(
        run.stdout.contains("ok       permission      the token grants pull on acme/app"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("result: ok:"), "{}", run.stdout);
    assert_no_secrets(&run, &issuer.issued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_anonymous_tokens_show_who_may_pull() {
    // As Docker Hub, GHCR and Quay: /v2/ answers 401 to everyone, and the token endpoint gives
    // anonymous tokens that grant pull on public repositories only. The real registry checks
    // each anonymous token it is shown.
    let files = Files::new();
    let (registry, issuer, ca) = token_registry_with(&files, Some(Grant::PullUnder("public/"))).await;

    let public = format!("{}/public/app", registry.host());
    let run = registry_test(args(&[&public, "--ca-file", &ca]), None).await;
    assert_eq!(run.code, 0, "{}", run.both());
    assert!(run.stdout.contains("anonymous pull of public/app: allowed"), "{}", run.stdout);
    assert!(run.stdout.contains("issued an anonymous JWT token"), "{}", run.stdout);
    let json = assert_passed(&registry_test(args(&[&public, "--ca-file", &ca, "-o", "json"]), None).await);
    assert_eq!(
        (json["anonymous_access"].as_bool(), json["anonymous_pull"].as_bool()),
        (Some(false), Some(true)),
        "/v2/ refuses anonymous clients, the token lets them pull"
    );
    assert_eq!(
        (json["credentials_given"].as_bool(), json["credentials_tested"].as_bool()),
        (Some(false), Some(false))
    );
    for stage in ["token-endpoint", "credentials", "permission"] {
        assert_eq!(stage_status(&json, stage), Some("ok"), "{stage}: {json}");
    }

    let private = format!("{}/private/app", registry.host());
    let run = registry_test(args(&[&private, "--ca-file", &ca, "-o", "json"]), None).await;
    let json = assert_passed(&run);
    assert_eq!(json["anonymous_pull"], false, "{}", run.both());
    assert!(json["message"].as_str().is_some_and(|m| m.contains("anonymous pull of private/app is refused")));

    let run = registry_test(args(&[&registry.host(), "--ca-file", &ca, "-o", "json"]), None).await;
    let json = assert_passed(&run);
    assert_eq!(json["anonymous_pull"], Value::Null, "no repository named: {}", run.both());
    assert_eq!(stage_status(&json, "permission"), Some("skipped"));

    assert_eq!(issuer.issued().len(), 4, "one anonymous token per run");
    assert_no_secrets(&run, &issuer.issued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_a_token_endpoint_may_refuse_anonymous_clients() {
    let files = Files::new();
    let (registry, issuer, ca) = token_registry(&files).await;
    let target = format!("{}/acme/app", registry.host());
    let run = registry_test(args(&[&target, "--ca-file", &ca]), None).await;
    assert_eq!(run.code, 0, "{}", run.both());
    assert!(run.stdout.contains("anonymous pull of acme/app: refused"), "{}", run.stdout);
    let json = assert_passed(&registry_test(args(&[&target, "--ca-file", &ca, "-o", "json"]), None).await);
    assert_eq!(
        (json["anonymous_access"].as_bool(), json["anonymous_pull"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(stage_status(&json, "token-endpoint"), Some("ok"));
    assert_eq!(stage_status(&json, "credentials"), Some("skipped"));
    assert!(json["message"].as_str().is_some_and(|m| m.contains("gives no anonymous token")), "{json}");
    assert!(issuer.issued().is_empty(), "no token was issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_refuses_a_wrong_password() {
    let files = Files::new();
    let (registry, issuer, ca) = token_registry(&files).await;
    let config = files.docker_config(&registry.host(), USER, WRONG_PASSWORD);
    let target = format!("{}/acme/app", registry.host());
    let run =
        registry_test(args(&[&target, "--ca-file", &ca, "--docker-config", &config, "-o", "json"]), None)
            .await;
    assert_failed(&run, "credentials", "rejected", 9);
    assert!(issuer.issued().is_empty(), "no token for a wrong password");
    assert!(run.stdout.contains("token endpoint"), "{}", run.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_granting_no_pull_is_a_permission_failure() {
    let files = Files::new();
    let (registry, issuer, ca) = token_registry(&files).await;
    let target = format!("{}/acme/app", registry.host());
    let run = registry_test(
        args(&[&target, "--ca-file", &ca, "--username", NO_PULL_USER, "--password-stdin", "-o", "json"]),
        Some(PASSWORD),
    )
    .await;
    let json = assert_failed(&run, "permission", "scope-not-granted", 10);
    // The registry itself accepted the token: /v2/ needs no scope.
    assert_eq!(stage_status(&json, "credentials"), Some("ok"));
    assert!(
        json["message"].as_str().is_some_and(|m| m.contains("repository:acme/app:pull")),
        "{}",
        run.both()
    );
    assert_no_secrets(&run, &issuer.issued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_registry_does_not_trust() {
    // The registry trusts another signing certificate than the issuer's: it verifies the token
    // and refuses it, which also shows that the accepted tokens above were verified.
    let files = Files::new();
    let ca = TestCa::new();
    let issuer = TestTokenIssuer::start(
        &ca.server(&["127.0.0.1"]),
        vec![Account { username: USER, password: PASSWORD, grant: Grant::Pull }],
        None,
    )
    .await;
    let realm = issuer.realm();
    let other = registry::pki::SigningCert::new();
    let auth =
        Auth::Token { realm: &realm, service: SERVICE, issuer: ISSUER, signing_cert_pem: &other.cert_pem };
    let registry = TestRegistry::start(Some(&ca.server(&["127.0.0.1"])), auth).await;
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let config = files.docker_config(&registry.host(), USER, PASSWORD);
    let target = format!("{}/acme/app", registry.host());
    let run = registry_test(
        args(&[&target, "--ca-file", &ca_file, "--docker-config", &config, "-o", "json"]),
        None,
    )
    .await;
    let json = assert_failed(&run, "credentials", "token-rejected", 9);
    assert_eq!(stage_status(&json, "token-endpoint"), Some("ok"));
    assert_no_secrets(&run, &issuer.issued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_is_down() {
    let files = Files::new();
    let ca = TestCa::new();
    // The realm is a loopback port nobody listens on.
    let realm = format!("https://{}/token", free_port());
    let auth =
        Auth::Token { realm: &realm, service: SERVICE, issuer: ISSUER, signing_cert_pem: &ca.cert_pem };
    let registry = TestRegistry::start(Some(&ca.server(&["127.0.0.1"])), auth).await;
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let config = files.docker_config(&registry.host(), USER, PASSWORD);
    let run = registry_test(
        args(&[&registry.host(), "--ca-file", &ca_file, "--docker-config", &config, "-o", "json"]),
        None,
    )
    .await;
    let json = assert_failed(&run, "token-endpoint", "connect", 8);
    assert_eq!(stage_status(&json, "challenge"), Some("ok"));
}

// === Fakes for the other stages ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_challenge() {
    let ca = TestCa::new();
    // A fake registry whose challenge never closes its quote.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |_| {
        Arc::new(|_| {
            respond(401, &[API_VERSION, ("www-authenticate", "Bearer realm=\"https://127.0.0.1/token")], "{}")
        })
    })
    .await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    assert_failed(&run, "challenge", "malformed", 7);

    // A fake that offers only a scheme registries do not use.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |_| {
        Arc::new(|_| respond(401, &[API_VERSION, ("www-authenticate", "Negotiate")], "{}"))
    })
    .await;
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    assert_failed(&run, "challenge", "unsupported", 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve() {
    let run = registry_test(args(&["registry.invalid", "-o", "json"]), None).await;
    let json = assert_failed(&run, "dns", "not-found", 3);
    assert_eq!(json["stages"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["anonymous_access"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port() {
    let run = registry_test(args(&[&free_port().to_string(), "-o", "json", "--timeout", "2s"]), None).await;
    assert_failed(&run, "connect", "refused", 4);
}

/// A fake HTTPS server with `cert` that answers like an open registry.
async fn open_registry_fake(cert: &registry::pki::ServerCert) -> FakeServer {
    FakeServer::start(Some(cert.server_config()), |_| Arc::new(|_| respond(200, &[API_VERSION], "{}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_signed_by_an_unknown_authority() {
    let ca = TestCa::new();
    let fake = open_registry_fake(&ca.server(&["127.0.0.1"])).await;
    let run = registry_test(args(&[&fake.host(), "-o", "json"]), None).await;
    let json = assert_failed(&run, "tls", "unknown-authority", 5);
    assert!(json["message"].as_str().is_some_and(|m| m.contains("--ca-file")));

    let run = registry_test(args(&[&fake.host(), "--insecure-skip-tls-verify", "-o", "json"]), None).await;
    let json = assert_passed(&run);
    assert!(run.stderr.contains("WARNING: --insecure-skip-tls-verify"), "{}", run.stderr);
    assert!(json["warnings"][0].as_str().is_some_and(|w| w.contains("not verified")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_for_another_name() {
    let ca = TestCa::new();
    let fake = open_registry_fake(&ca.server(&["other.example"])).await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    let json = assert_failed(&run, "tls", "name-mismatch", 5);
    assert!(json["message"].as_str().is_some_and(|m| m.contains("other.example")), "{}", run.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_expired() {
    let ca = TestCa::new();
    let fake = open_registry_fake(&ca.expired_server(&["127.0.0.1"])).await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    assert_failed(&run, "tls", "expired", 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_registry() {
    let ca = TestCa::new();
    // A fake: a plain web server with no registry API.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |_| {
        Arc::new(|_| respond(404, &[("content-type", "text/html")], "<h1>Not Found</h1>"))
    })
    .await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    assert_failed(&run, "not-a-registry", "status", 6);

    // A fake web server answering 200 without the registry API header.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |_| {
        Arc::new(|_| respond(200, &[], "<html>"))
    })
    .await;
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    assert_failed(&run, "not-a-registry", "no-api-version", 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_basic_challenge_quirk() {
    let ca = TestCa::new();
    // A fake of ECR: Basic on /v2/, with ECR's realm and service, user AWS.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |_| {
        let expected = format!("Basic {}", STANDARD.encode(format!("AWS:{PASSWORD}")));
        Arc::new(move |request| match authorization(request) {
            Some(value) if value == expected => respond(200, &[API_VERSION], "{}"),
            _ => respond(
                401,
                &[
                    API_VERSION,
                    (
                        "www-authenticate",
                        r#"Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com""#,
                    ),
                ],
                r#"{"errors":[{"code":"DENIED","message":"Not Authorized"}]}"#,
            ),
        })
    })
    .await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let run = registry_test(
        args(&[&fake.host(), "--ca-file", &ca_file, "--username", "AWS", "--password-stdin", "-o", "json"]),
        Some(PASSWORD),
    )
    .await;
    let json = assert_passed(&run);
    assert_eq!(json["quirks"][0]["name"], "ecr-basic-challenge", "{}", run.both());
    assert_eq!(json["auth_scheme"], "basic");

    let run = registry_test(
        args(&[&fake.host(), "--ca-file", &ca_file, "--username", USER, "--password-stdin", "-o", "json"]),
        Some(PASSWORD),
    )
    .await;
    let json = assert_failed(&run, "credentials", "rejected", 9);
    assert!(json["message"].as_str().is_some_and(|m| m.contains("user name AWS")), "{}", run.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecr_public_expired_token_quirk() {
    let ca = TestCa::new();
    // A fake of ECR Public: a Bearer challenge for service public.ecr.aws, an opaque token for
    // any credentials, and 400 (not 401) when that token has expired, which this one has.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |addr| {
        let challenge = format!(r#"Bearer realm="https://{addr}/token/",service="public.ecr.aws",scope="aws""#);
        Arc::new(move |request| {
            if request.uri().path().starts_with("/token") {
                return respond(200, &[("content-type", "application/json")], r#"{"token":"FAKE-EXPIRED-TOKEN-77"}"#);
            }
            match authorization(request) {
                Some(value) if value.starts_with("Bearer ") => respond(
                    400,
                    &[API_VERSION],
                    r#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#,
                ),
                _ => respond(401, &[API_VERSION, ("www-authenticate", &challenge)], "{}"),
            }
        })
    })
    .await;
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    let run = registry_test(
        args(&[&fake.host(), "--ca-file", &ca_file, "--username", "AWS", "--password-stdin", "-o", "json"]),
        Some(PASSWORD),
    )
    .await;
    let json = assert_failed(&run, "credentials", "expired", 9);
    assert_eq!(json["quirks"][0]["name"], "ecr-public-expired-token", "{}", run.both());
    assert_eq!(stage_status(&json, "token-endpoint"), Some("ok"));
    assert_no_secrets(&run, &["FAKE-EXPIRED-TOKEN-77".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_bounded() {
    let ca = TestCa::new();
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem);
    // A fake registry whose token endpoint answers with 2 MiB: read up to 64 KiB, then refused.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |addr| {
        let challenge = format!(r#"Bearer realm="https://{addr}/token",service="fake""#);
        let huge = format!(r#"{{"token": "{}"}}"#, "a".repeat(2 << 20));
        Arc::new(move |request| {
            if request.uri().path() == "/token" {
                return respond(200, &[("content-type", "application/json")], &huge);
            }
            respond(401, &[API_VERSION, ("www-authenticate", &challenge)], "{}")
        })
    })
    .await;
    let run = registry_test(
        args(&[&fake.host(), "--ca-file", &ca_file, "--username", USER, "--password-stdin", "-o", "json"]),
        Some(PASSWORD),
    )
    .await;
    let json = assert_failed(&run, "token-endpoint", "malformed", 8);
    assert!(json["message"].as_str().is_some_and(|m| m.contains("64 KiB")), "{}", run.both());

    // A fake whose answer head never ends within the 64 KiB the client reads.
    let fake = FakeServer::start(Some(ca.server(&["127.0.0.1"]).server_config()), |_| {
        let long = "x".repeat(70 * 1024);
        Arc::new(move |_| respond(401, &[API_VERSION, ("x-padding", &long)], "{}"))
    })
    .await;
    let run = registry_test(args(&[&fake.host(), "--ca-file", &ca_file, "-o", "json"]), None).await;
    assert_failed(&run, "not-a-registry", "not-http", 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_in_the_tls_stage() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let run = registry_test(args(&[&addr.to_string(), "--timeout", "300ms", "-o", "json"]), None).await;
    assert_failed(&run, "tls", "timeout", 5);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    silent.abort();
}

// === The command line ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_never_taken_from_arguments() {
    let run = registry_test(args(&["ghcr.io", "--username", USER, "--password", PASSWORD]), None).await;
    assert_eq!(run.code, 2, "{}", run.both());
    assert!(run.stderr.contains("--password-stdin"), "{}", run.stderr);
    let run = registry_test(args(&[&format!("https://{USER}:{PASSWORD}@ghcr.io/acme")]), None).await;
    assert_eq!(run.code, 2, "{}", run.both());
    assert!(run.stderr.contains("user info"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_help() {
    let run = registry_test(args(&["no-such-registry"]), None).await;
    assert_eq!(run.code, 2, "{}", run.both());
    assert!(run.stderr.contains("no registry named \"no-such-registry\""), "{}", run.stderr);
    assert!(
        run.stderr.contains("local-development"),
        "the bundled policy's names are listed: {}",
        run.stderr
    );
    let run = registry_test(args(&["--help"]), None).await;
    assert_eq!(run.code, 0);
    for line in ["3   dns", "5   tls", "8   token-endpoint", "10  permission"] {
        assert!(run.stdout.contains(line), "--help documents exit code {line}: {}", run.stdout);
    }
}
