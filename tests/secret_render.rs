//! `registry-gate secret render` as an admin runs it: values from the environment, files and
//! standard input; errors that name the field, exit 2 and print nothing on stdout; and no
//! credential ever on stderr, nor in clear on stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use registry_gate::controller::ecr::EcrKey;
use registry_gate::credentials::{DOCKER_CONFIG_JSON_KEY, check_source};
use registry_gate::policy::{Policy, Registry};
use serde_json::{Value, json};

const POLICY: &str = "policy/example-all-types.yaml";
/// Recognizable fake credentials: none may show on stderr, or in clear on stdout.
const SECRET: &str = "FAKE-SECRET-7f3a9c";
const ACCESS_KEY: &str = "AKIAFAKE7F3A9C000000";
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIFAKE-SECRET-7f3a9c\n-----END PRIVATE KEY-----\n";

/// How the value reaches the command, besides its arguments.
#[derive(Default)]
struct Input<'a> {
    env: Vec<(&'a str, &'a str)>,
    stdin: Option<&'a str>,
}

fn run(args: &[&str], input: &Input<'_>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_registry-gate"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env_remove("RG_TEST_UNSET")
        .stdin(if input.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in &input.env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the binary runs");
    if let Some(text) = input.stdin {
        let mut stdin = child.stdin.take().expect("piped");
        // A command that fails before reading its input closes the pipe first.
        if let Err(error) = stdin.write_all(text.as_bytes()) {
            assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
        }
    }
    child.wait_with_output().expect("the binary finishes")
}

fn env<'a>(pairs: &[(&'a str, &'a str)]) -> Input<'a> {
    Input { env: pairs.to_vec(), stdin: None }
}

fn stdin(text: &str) -> Input<'_> {
    Input { env: Vec::new(), stdin: Some(text) }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn registry(name: &str) -> Registry {
    let text = std::fs::read_to_string(format!("{}/{POLICY}", env!("CARGO_MANIFEST_DIR"))).expect("policy");
    let policy = Policy::parse(&text).expect("the example policy is valid");
    policy.registries.into_iter().find(|r| r.name == name).expect("the registry is in the example")
}

/// A successful render: exit 0, nothing on stderr, a Secret manifest on stdout.
fn manifest(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    assert!(output.stderr.is_empty(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).expect("a JSON manifest on stdout")
}

fn decoded_data(manifest: &Value) -> BTreeMap<String, Vec<u8>> {
    manifest["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| (k.clone(), STANDARD.decode(v.as_str().expect("string")).expect("base64")))
        .collect()
}

/// The pull Secret's only `auths` entry, after checking the Secret as the controller will.
fn checked_entry(manifest: &Value, registry_name: &str) -> (String, Value) {
    let registry = registry(registry_name);
    assert_eq!(manifest["apiVersion"], "v1");
    assert_eq!(manifest["kind"], "Secret");
    assert_eq!(manifest["metadata"]["name"], registry.pull_secret.as_deref().expect("a pullSecret"));
    assert_eq!(manifest["metadata"]["namespace"], "registry-gate");
    assert_eq!(manifest["metadata"]["labels"]["registry-gate.io/pull-secret-source"], "true");
    let secret_type = manifest["type"].as_str().expect("type");
    assert_eq!(secret_type, "kubernetes.io/dockerconfigjson");
    let data = decoded_data(manifest);
    check_source(Some(secret_type), &data, &registry).expect("the controller accepts the Secret");
    let config: Value = serde_json::from_slice(&data[DOCKER_CONFIG_JSON_KEY]).expect("docker config JSON");
    let auths = config["auths"].as_object().expect("auths");
    assert_eq!(auths.len(), 1);
    let (key, entry) = auths.iter().next().expect("one entry");
    (key.clone(), entry.clone())
}

fn service_account_key() -> String {
    serde_json::to_string_pretty(&json!({
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "0123456789abcdef",
        "private_key": PRIVATE_KEY,
        "client_email": "puller@acme-prod.iam.gserviceaccount.com",
    }))
    .expect("JSON")
}

#[test]
fn renders_a_token_from_the_environment() {
    let output = run(
        &[
            "secret",
            "render",
            "-p",
            POLICY,
            "team-ghcr",
            "-o",
            "json",
            "--username",
            "octocat",
            "--password-from",
            "env:RG_TEST_GHCR_TOKEN",
        ],
        &env(&[("RG_TEST_GHCR_TOKEN", SECRET)]),
    );
    let (key, entry) = checked_entry(&manifest(&output), "team-ghcr");
    assert_eq!(key, "ghcr.io");
    assert_eq!((entry["username"].as_str(), entry["password"].as_str()), (Some("octocat"), Some(SECRET)));
    assert_eq!(entry["auth"], STANDARD.encode(format!("octocat:{SECRET}")));
}

#[test]
fn renders_docker_hub_under_its_index_key_as_yaml() {
    let output = run(
        &[
            "secret",
            "render",
            "-p",
            POLICY,
            "hub-acme",
            "--username-from",
            "env:RG_TEST_USER",
            "--password-from",
            "env:RG_TEST_PAT",
        ],
        &env(&[("RG_TEST_USER", "acme-ci"), ("RG_TEST_PAT", SECRET)]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let yaml = String::from_utf8(output.stdout.clone()).expect("UTF-8");
    let documents = registry_gate::yaml::parse_documents(&yaml).expect("YAML on stdout");
    assert_eq!(documents.len(), 1);
    let (key, entry) = checked_entry(&documents[0].to_json(), "hub-acme");
    assert_eq!(key, "https://index.docker.io/v1/");
    assert_eq!(entry["username"], "acme-ci");
}

#[test]
fn renders_a_gcr_key_file_from_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("key.json");
    std::fs::write(&path, format!("{}\n", service_account_key())).expect("written");
    let source = format!("file:{}", path.display());
    let output = run(
        &["secret", "render", "-p", POLICY, "gcr-project", "-o", "json", "--password-from", &source],
        &Input::default(),
    );
    let (key, entry) = checked_entry(&manifest(&output), "gcr-project");
    assert_eq!(key, "eu.gcr.io");
    assert_eq!(entry["username"], "_json_key");
    assert_eq!(entry["password"], service_account_key(), "the key file as written, its last newline dropped");
}

#[test]
fn renders_tokens_from_standard_input() {
    for (name, username, host) in [
        ("production-ecr", "AWS", "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
        ("scaleway", "nologin", "rg.fr-par.scw.cloud"),
    ] {
        let output = run(
            &["secret", "render", "-p", POLICY, name, "-o", "json", "--password-from", "-"],
            &stdin(&format!("{SECRET}\r\n")),
        );
        let (key, entry) = checked_entry(&manifest(&output), name);
        assert_eq!(key, host);
        assert_eq!((entry["username"].as_str(), entry["password"].as_str()), (Some(username), Some(SECRET)));
    }
}

#[test]
fn renders_robot_accounts_and_registries_given_by_flags() {
    let output = run(
        &[
            "secret",
            "render",
            "-p",
            POLICY,
            "harbor",
            "-o",
            "json",
            "--username",
            "robot$library+ci",
            "--password-from",
            "stdin",
        ],
        &stdin(SECRET),
    );
    let (key, entry) = checked_entry(&manifest(&output), "harbor");
    assert_eq!((key.as_str(), entry["username"].as_str()), ("harbor.acme.example", Some("robot$library+ci")));

    let output = run(
        &[
            "secret",
            "render",
            "--type",
            "Generic",
            "--url",
            "registry.lab.example:5000/team",
            "--name",
            "lab-pull",
            "--namespace",
            "ops",
            "-o",
            "json",
            "--username",
            "ci",
            "--password-from",
            "env:RG_TEST_LAB",
        ],
        &env(&[("RG_TEST_LAB", SECRET)]),
    );
    let manifest = manifest(&output);
    assert_eq!(
        (manifest["metadata"]["name"].as_str(), manifest["metadata"]["namespace"].as_str()),
        (Some("lab-pull"), Some("ops"))
    );
    let config: Value =
        serde_json::from_slice(&decoded_data(&manifest)[DOCKER_CONFIG_JSON_KEY]).expect("JSON");
    assert_eq!(config["auths"]["registry.lab.example:5000"]["password"], SECRET);
}

#[test]
fn renders_the_ecr_key_secret_the_controller_reads() {
    let output = run(
        &[
            "secret",
            "render",
            "-p",
            POLICY,
            "production-ecr",
            "--ecr-key",
            "-o",
            "json",
            "--access-key-id-from",
            "env:RG_TEST_AK",
            "--secret-access-key-from",
            "-",
        ],
        &Input { env: vec![("RG_TEST_AK", ACCESS_KEY)], stdin: Some(SECRET) },
    );
    let manifest = manifest(&output);
    assert_eq!(manifest["type"], "Opaque");
    assert_eq!(manifest["metadata"]["name"], "production-ecr-creds-ecr-key");
    assert_eq!(manifest["metadata"]["labels"]["registry-gate.io/ecr-key"], "true");
    let data = decoded_data(&manifest);
    assert_eq!(data["region"], b"us-east-1", "the region comes from the registry URL");
    assert_eq!(data["secretAccessKey"], SECRET.as_bytes());
    let secret: Secret = serde_json::from_value(manifest).expect("a Secret");
    let key = EcrKey::from_secret(&secret).expect("the controller reads the key");
    assert_eq!((key.pull_secret.as_str(), key.region.as_str()), ("production-ecr-creds", "us-east-1"));
}

/// An error: exit 2, stdout empty, and stderr saying `expected`.
fn assert_refused(output: &Output, expected: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        output.stdout.is_empty(),
        "nothing is printed on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(text.contains(expected), "{text:?} should say {expected:?}");
}

#[test]
fn a_missing_environment_variable_is_named() {
    let output = run(
        &[
            "secret",
            "render",
            "-p",
            POLICY,
            "team-ghcr",
            "--username",
            "octocat",
            "--password-from",
            "env:RG_TEST_UNSET",
        ],
        &Input::default(),
    );
    assert_refused(&output, "password: the environment variable RG_TEST_UNSET is not set");
}

#[test]
fn an_unreadable_file_is_named() {
    let output = run(
        &["secret", "render", "-p", POLICY, "gcr-project", "--password-from", "file:/nonexistent/key.json"],
        &Input::default(),
    );
    assert_refused(&output, "key file: cannot read /nonexistent/key.json");
}

#[test]
fn a_malformed_key_file_is_named_by_its_missing_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("key.json");
    let mut key: Value = serde_json::from_str(&service_account_key()).expect("JSON");
    key.as_object_mut().expect("object").remove("private_key");
    key["private_key_id"] = json!(SECRET);
    std::fs::write(&path, key.to_string()).expect("written");
    let source = format!("file:{}", path.display());
    let output = run(
        &["secret", "render", "-p", POLICY, "gcr-project", "--password-from", &source],
        &Input::default(),
    );
    assert_refused(&output, "key file: no private_key");
}

#[test]
fn registries_without_a_pull_secret_are_refused() {
    for (name, expected) in [
        ("govcloud-ecr-fips", "registry \"govcloud-ecr-fips\" has no pullSecret"),
        ("hub-official-images", "registry \"hub-official-images\" is Public"),
    ] {
        let output = run(
            &["secret", "render", "-p", POLICY, name, "--password-from", "env:RG_TEST_TOKEN"],
            &env(&[("RG_TEST_TOKEN", SECRET)]),
        );
        assert_refused(&output, expected);
    }
}

#[test]
fn an_unknown_registry_is_refused_with_the_known_ones() {
    let output = run(
        &["secret", "render", "-p", POLICY, "team-ghrc", "--password-from", "env:RG_TEST_TOKEN"],
        &env(&[("RG_TEST_TOKEN", SECRET)]),
    );
    assert_refused(&output, "no registry named \"team-ghrc\"");
    assert!(stderr(&output).contains("\"team-ghcr\""), "{}", stderr(&output));
}

/// Every way a value can reach the command, in every error: stderr never shows it.
#[test]
fn no_error_shows_a_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad_key = dir.path().join("bad.json");
    std::fs::write(&bad_key, format!("{{\"type\": \"service_account\", \"client_email\": \"{SECRET}\""))
        .expect("written");
    let two_lines = dir.path().join("two-lines");
    std::fs::write(&two_lines, format!("{SECRET}\n{SECRET}\n")).expect("written");
    let bad_key = format!("file:{}", bad_key.display());
    let two_lines = format!("file:{}", two_lines.display());
    let with_secret = env(&[("RG_TEST_TOKEN", SECRET), ("RG_TEST_USER", SECRET)]);
    let cases: Vec<(Vec<&str>, Input<'_>, &str)> = vec![
        (
            vec!["team-ghcr", "--username", "octocat", "--password-from", SECRET],
            Input::default(),
            "--password-from: not a source",
        ),
        (
            vec!["team-ghcr", "--username", "octocat", "--password", SECRET],
            Input::default(),
            "--password: a password is never taken",
        ),
        (
            vec!["team-ghcr", SECRET, "--password-from", "env:RG_TEST_TOKEN"],
            env(&[("RG_TEST_TOKEN", SECRET)]),
            "expected one registry name",
        ),
        (
            vec![SECRET, "--password-from", "env:RG_TEST_TOKEN"],
            env(&[("RG_TEST_TOKEN", SECRET)]),
            "not a DNS label",
        ),
        (
            vec!["gcr-project", "--password-from", "env:RG_TEST_TOKEN"],
            env(&[("RG_TEST_TOKEN", SECRET)]),
            "key file: is not JSON",
        ),
        (vec!["gcr-project", "--password-from", &bad_key], Input::default(), "key file: is not JSON"),
        (
            vec!["team-ghcr", "--username", "octocat", "--password-from", &two_lines],
            Input::default(),
            "password: has a line break",
        ),
        (
            vec!["team-ghcr", "--username-from", "env:RG_TEST_USER", "--password-from", "-"],
            Input { stdin: Some(""), ..with_secret },
            "password: standard input is empty",
        ),
        (
            vec!["team-ghcr", "--username-from", "-", "--password-from", "-"],
            stdin(SECRET),
            "standard input is taken already",
        ),
        (
            vec!["scaleway", "--username", "admin", "--password-from", "-"],
            stdin(SECRET),
            "username: Scaleway registries take the user name nologin",
        ),
        (vec!["team-ghcr", "--password-from", "-"], stdin(SECRET), "username: GHCR registries need one"),
        (
            vec!["team-ghcr", "--username-from", "env:RG_TEST_USER", "--password-from", "-"],
            Input { env: vec![("RG_TEST_USER", "octo:FAKE-SECRET-7f3a9c")], stdin: Some(SECRET) },
            "username: contains ':'",
        ),
        (
            vec![
                "team-ghcr",
                "--ecr-key",
                "--access-key-id-from",
                "env:RG_TEST_TOKEN",
                "--secret-access-key-from",
                "-",
            ],
            Input { env: vec![("RG_TEST_TOKEN", SECRET)], stdin: Some(SECRET) },
            "ECR keys are for ECR and ECRPublic",
        ),
        (
            vec![
                "production-ecr",
                "--ecr-key",
                "--access-key-id-from",
                "env:RG_TEST_TOKEN",
                "--secret-access-key-from",
                "-",
            ],
            Input { env: vec![("RG_TEST_TOKEN", SECRET)], stdin: Some("two words FAKE-SECRET-7f3a9c") },
            "secretAccessKey: has spaces",
        ),
        (
            vec![
                "production-ecr",
                "--ecr-key",
                "--region",
                "eu-west-1",
                "--access-key-id-from",
                "env:RG_TEST_TOKEN",
                "--secret-access-key-from",
                "-",
            ],
            Input { env: vec![("RG_TEST_TOKEN", SECRET)], stdin: Some(SECRET) },
            "region: differs",
        ),
        (
            vec!["production-ecr", "--ecr-key", "--access-key-id-from", "env:RG_TEST_TOKEN"],
            env(&[("RG_TEST_TOKEN", SECRET)]),
            "secretAccessKey: give --secret-access-key-from",
        ),
    ];
    for (extra, input, expected) in cases {
        let mut args = vec!["secret", "render", "-p", POLICY];
        args.extend(extra);
        let output = run(&args, &input);
        assert_refused(&output, expected);
        let text = stderr(&output);
        assert!(!text.contains(SECRET) && !text.contains("7f3a9c"), "{args:?} shows the secret: {text}");
    }
}

/// On success the values are on stdout only inside the base64 data, never in clear.
#[test]
fn values_are_on_stdout_only_in_base64() {
    for format in ["yaml", "json"] {
        let output = run(
            &[
                "secret",
                "render",
                "-p",
                POLICY,
                "team-ghcr",
                "-o",
                format,
                "--username",
                "octocat",
                "--password-from",
                "env:RG_TEST_TOKEN",
            ],
            &env(&[("RG_TEST_TOKEN", SECRET)]),
        );
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert!(output.stderr.is_empty());
        let text = String::from_utf8(output.stdout).expect("UTF-8");
        assert!(!text.contains(SECRET) && !text.contains("7f3a9c"), "{text}");
        let manifest = registry_gate::yaml::parse_documents(&text).expect("YAML or JSON")[0].to_json();
        let data = decoded_data(&manifest);
        let config = String::from_utf8(data[DOCKER_CONFIG_JSON_KEY].clone()).expect("UTF-8");
        assert!(config.contains(SECRET), "the value is in the decoded data");
    }
    let output = run(
        &[
            "secret",
            "render",
            "-p",
            POLICY,
            "production-ecr",
            "--ecr-key",
            "--access-key-id-from",
            "env:RG_TEST_AK",
            "--secret-access-key-from",
            "env:RG_TEST_SK",
        ],
        &env(&[("RG_TEST_AK", ACCESS_KEY), ("RG_TEST_SK", SECRET)]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(!text.contains(SECRET) && !text.contains(ACCESS_KEY), "{text}");
}
