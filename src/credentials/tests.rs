//! `check_source`, rule by rule, and the promise that no problem repeats a credential.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::{Value, json};

use super::*;
use crate::policy::Policy;

const PASSWORD: &str = "hunter2-FAKE-SECRET";
const USER: &str = "svc-FAKE-USER";
const TOKEN: &str = "eyFAKE-TOKEN-hunter2";
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIFAKE-KEY-hunter2\n-----END PRIVATE KEY-----\n";
const CLIENT_EMAIL: &str = "puller-FAKE@project.iam.gserviceaccount.com";
const GHCR: (&str, &str) = ("GHCR", "ghcr.io/acme");
const ECR: (&str, &str) = ("ECR", "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
const ECR_HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

/// A registry as the policy builds it.
fn registry((registry_type, url): (&str, &str)) -> Registry {
    let pull_secret = if registry_type == "Public" { String::new() } else { ", pullSecret: pull".to_owned() };
    let text = format!(
        "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {{name: r, type: {registry_type}, url: \"{url}\"{pull_secret}}}\n"
    );
    let mut policy = Policy::parse(&text).unwrap_or_else(|e| panic!("{registry_type} {url}: {e:?}"));
    policy.registries.remove(0)
}

fn data(config: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([(DOCKER_CONFIG_JSON_KEY.to_owned(), config.as_bytes().to_vec())])
}

fn check(config: &Value, target: (&str, &str)) -> Result<(), SourceProblem> {
    check_source(Some(DOCKER_CONFIG_JSON_TYPE), &data(&config.to_string()), &registry(target))
}

fn auth(user: &str, password: &str) -> String {
    STANDARD.encode(format!("{user}:{password}"))
}

fn with_auth(key: &str, user: &str, password: &str) -> Value {
    json!({"auths": {key: {"auth": auth(user, password)}}})
}

fn with_fields(key: &str, user: &str, password: &str) -> Value {
    json!({"auths": {key: {"username": user, "password": password}}})
}

fn service_account_key() -> String {
    json!({
        "type": "service_account",
        "project_id": "project",
        "private_key_id": "0123456789abcdef",
        "private_key": PRIVATE_KEY,
        "client_email": CLIENT_EMAIL,
    })
    .to_string()
}

fn problem(result: Result<(), SourceProblem>) -> SourceProblem {
    result.expect_err("the source must be refused")
}

#[test]
fn generic_registries_take_any_user_and_password() {
    for target in [
        ("Generic", "registry.corp.example:5000"),
        GHCR,
        ("GitLab", "registry.gitlab.com/acme"),
        ("Harbor", "harbor.corp.example/project"),
        ("Quay", "quay.io/acme"),
        ("ACR", "acmecorp.azurecr.io"),
        ("Artifactory", "acme.jfrog.io"),
        ("Nexus", "nexus.corp.example:8443"),
    ] {
        let host = target.1.split('/').next().unwrap_or_default();
        assert_eq!(check(&with_auth(host, USER, PASSWORD), target), Ok(()), "{target:?} auth");
        assert_eq!(check(&with_fields(host, USER, PASSWORD), target), Ok(()), "{target:?} fields");
    }
}

#[test]
fn public_registries_take_no_secret_at_all() {
    let target = ("Public", "docker.io/library");
    assert_eq!(check(&with_auth("docker.io", USER, PASSWORD), target), Err(SourceProblem::PublicRegistry));
    assert_eq!(check_source(None, &BTreeMap::new(), &registry(target)), Err(SourceProblem::PublicRegistry));
}

#[test]
fn the_secret_must_be_a_docker_config_json_secret() {
    let good = data(&with_auth("ghcr.io", USER, PASSWORD).to_string());
    let ghcr = registry(GHCR);
    for (secret_type, found) in [
        (None, "Opaque"),
        (Some("Opaque"), "Opaque"),
        (Some("kubernetes.io/dockercfg"), "kubernetes.io/dockercfg"),
        (Some(""), ""),
    ] {
        assert_eq!(
            check_source(secret_type, &good, &ghcr),
            Err(SourceProblem::WrongType { found: found.to_owned() }),
            "{secret_type:?}"
        );
    }
    assert_eq!(check_source(Some(DOCKER_CONFIG_JSON_TYPE), &good, &ghcr), Ok(()));
}

#[test]
fn the_docker_config_must_be_under_its_key() {
    let ghcr = registry(GHCR);
    let legacy =
        BTreeMap::from([(".dockercfg".to_owned(), b"{}".to_vec()), ("extra".to_owned(), Vec::new())]);
    let found = problem(check_source(Some(DOCKER_CONFIG_JSON_TYPE), &legacy, &ghcr));
    assert_eq!(found, SourceProblem::MissingKey { keys_found: vec![".dockercfg".into(), "extra".into()] });
    assert!(found.to_string().contains("\".dockercfg\", \"extra\""), "{found}");
    let empty = problem(check_source(Some(DOCKER_CONFIG_JSON_TYPE), &BTreeMap::new(), &ghcr));
    assert_eq!(empty.to_string(), "the Secret has no .dockerconfigjson key (it has none)");
}

#[test]
fn the_docker_config_must_be_json() {
    let ghcr = registry(GHCR);
    for (text, detail) in [
        ("", "it is empty"),
        (" \n", "it is empty"),
        ("{", "it ends early at line 1 column 1"),
        ("auths:\n  ghcr.io: {}", "syntax error at line 1 column 1"),
        ("{\"auths\": {}} trailing", "syntax error at line 1 column 15"),
    ] {
        let found = check_source(Some(DOCKER_CONFIG_JSON_TYPE), &data(text), &ghcr);
        assert_eq!(found, Err(SourceProblem::NotJson { detail: detail.to_owned() }), "{text:?}");
    }
}

#[test]
fn the_docker_config_must_have_the_kubelets_shape() {
    for (config, reason) in [
        (json!([]), "is not a JSON object"),
        (json!("auths"), "is not a JSON object"),
        (json!({"auths": "ghcr.io"}), "has \"auths\" that is not an object"),
        (json!({"auths": ["ghcr.io"]}), "has \"auths\" that is not an object"),
        (
            json!({"auths": {"ghcr.io": {"auth": auth(USER, PASSWORD)}}, "HttpHeaders": {"X-Count": 1}}),
            "has HttpHeaders that are not an object of strings",
        ),
    ] {
        assert_eq!(check(&config, GHCR), Err(SourceProblem::MalformedConfig { reason }), "{config}");
    }
    let headers =
        json!({"auths": {"ghcr.io": {"auth": auth(USER, PASSWORD)}}, "HttpHeaders": {"User-Agent": "x"}});
    assert_eq!(check(&headers, GHCR), Ok(()));
}

#[test]
fn the_docker_config_must_have_auths() {
    for config in [
        json!({}),
        json!({"auths": {}}),
        json!({"auths": null}),
        json!(null),
        json!({"credsStore": "desktop"}),
    ] {
        assert_eq!(check(&config, GHCR), Err(SourceProblem::NoAuths), "{config}");
    }
    let capitalised = json!({"Auths": {"ghcr.io": {"auth": auth(USER, PASSWORD)}}});
    assert_eq!(check(&capitalised, GHCR), Ok(()), "Go matches field names case-insensitively");
}

#[test]
fn any_malformed_entry_refuses_the_secret_not_only_the_registrys() {
    let good = json!({"auth": auth(USER, PASSWORD)});
    for (other, reason) in [
        (json!("ghcr.io"), "is not an object"),
        (json!(["x"]), "is not an object"),
        (json!({"username": 12345, "password": PASSWORD}), "has a username that is not a string"),
        (json!({"username": USER, "password": true}), "has a password that is not a string"),
        (json!({"email": {}}), "has an email that is not a string"),
        (json!({"auth": 7}), "has an auth that is not a string"),
        (json!({"auth": "not base64!"}), "has an auth that is not base64"),
        (json!({"Auth": "not base64!"}), "has an auth that is not base64"),
        (
            json!({"auth": format!("{}=", STANDARD_NO_PAD.encode(format!("{USER}:{PASSWORD}x")))}),
            "has an auth that is not base64",
        ),
        (
            json!({"auth": STANDARD.encode(format!("{USER}{PASSWORD}"))}),
            "has an auth that is not base64 of user:password",
        ),
    ] {
        let config = json!({"auths": {"ghcr.io": good, "quay.io": other}});
        assert_eq!(
            check(&config, GHCR),
            Err(SourceProblem::MalformedEntry { key: "quay.io".into(), reason }),
            "{other}"
        );
    }
    let unused = json!({"auths": {"ghcr.io": good, "quay.io": null, "gcr.io": {"username": null, "identitytoken": 5}}});
    assert_eq!(check(&unused, GHCR), Ok(()), "null and fields the kubelet does not read are fine");
}

#[test]
fn auth_is_decoded_as_the_kubelet_decodes_it() {
    let unpadded = STANDARD_NO_PAD.encode(format!("{USER}:{PASSWORD}x"));
    assert!(!unpadded.ends_with('='));
    let wrapped = {
        let encoded = auth(USER, PASSWORD);
        format!("{}\n{}\n", &encoded[..10], &encoded[10..])
    };
    for encoded in [auth(USER, PASSWORD), unpadded, wrapped] {
        let config = json!({"auths": {"ghcr.io": {"auth": encoded}}});
        assert_eq!(check(&config, GHCR), Ok(()), "{config}");
    }
    let colons = with_auth("ghcr.io", USER, "pass:with:colons");
    assert_eq!(check(&colons, GHCR), Ok(()), "only the first colon separates");
}

#[test]
fn auth_wins_over_username_and_password() {
    let ecr_auth_admin_fields =
        json!({"auths": {ECR_HOST: {"auth": auth("AWS", TOKEN), "username": "admin"}}});
    assert_eq!(check(&ecr_auth_admin_fields, ECR), Ok(()));
    let admin_auth_aws_fields =
        json!({"auths": {ECR_HOST: {"auth": auth("admin", TOKEN), "username": "AWS", "password": TOKEN}}});
    assert!(matches!(problem(check(&admin_auth_aws_fields, ECR)), SourceProblem::UnexpectedUsername { .. }));
    let empty_auth = json!({"auths": {ECR_HOST: {"auth": "", "username": "AWS", "password": TOKEN}}});
    assert_eq!(check(&empty_auth, ECR), Ok(()), "an empty auth is no auth");
}

#[test]
fn the_covering_entry_must_carry_a_user_name_and_password() {
    let missing = |entry: Value, field: &'static str| {
        let config = json!({"auths": {"ghcr.io": entry}});
        assert_eq!(
            check(&config, GHCR),
            Err(SourceProblem::MissingCredential { key: "ghcr.io".into(), field }),
            "{config}"
        );
    };
    missing(json!({}), "auth, or username and password");
    missing(json!(null), "auth, or username and password");
    missing(json!({"email": "a@example.com"}), "auth, or username and password");
    missing(json!({"username": USER}), "password");
    missing(json!({"username": USER, "password": ""}), "password");
    missing(json!({"password": PASSWORD}), "username");
    missing(json!({"auth": auth(USER, "")}), "password in its auth");
    missing(json!({"auth": auth(USER, ""), "password": PASSWORD}), "password in its auth");
    missing(json!({"auth": auth("", PASSWORD)}), "user name in its auth");
}

#[test]
fn tokens_alone_are_not_read_by_the_kubelet() {
    for field in ["identitytoken", "registrytoken"] {
        let config = json!({"auths": {"acmecorp.azurecr.io": {field: TOKEN}}});
        assert_eq!(
            check(&config, ("ACR", "acmecorp.azurecr.io")),
            Err(SourceProblem::TokenOnly { key: "acmecorp.azurecr.io".into(), field }),
        );
    }
    // What `docker login` with an identity token writes.
    let acr = json!({"auths": {"acmecorp.azurecr.io": {
        "auth": auth("00000000-0000-0000-0000-000000000000", ""),
        "identitytoken": TOKEN,
    }}});
    assert_eq!(
        check(&acr, ("ACR", "acmecorp.azurecr.io")),
        Err(SourceProblem::TokenOnly { key: "acmecorp.azurecr.io".into(), field: "identitytoken" })
    );
    let both =
        json!({"auths": {"acmecorp.azurecr.io": {"auth": auth(USER, PASSWORD), "identitytoken": TOKEN}}});
    assert_eq!(check(&both, ("ACR", "acmecorp.azurecr.io")), Ok(()));
}

#[test]
fn some_entry_must_cover_the_registry() {
    let config = json!({"auths": {
        "quay.io": {"auth": auth(USER, PASSWORD)},
        "https://ghcr.io/other": {"auth": auth(USER, PASSWORD)},
        "https://FAKE-USER:hunter2-FAKE-SECRET@gcr.io": {"auth": auth(USER, PASSWORD)},
    }});
    let found = problem(check(&config, GHCR));
    assert_eq!(
        found,
        SourceProblem::NoEntryForRegistry {
            registry: "ghcr.io/acme".into(),
            keys_found: vec![
                "https://[user info removed]@gcr.io".into(),
                "https://ghcr.io/other".into(),
                "quay.io".into()
            ],
        }
    );
    let many: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("r{i:02}.example.com"), json!({"auth": auth(USER, PASSWORD)}))).collect();
    let SourceProblem::NoEntryForRegistry { keys_found, .. } = problem(check(&json!({"auths": many}), GHCR))
    else {
        panic!("no entry expected");
    };
    assert_eq!(keys_found.len(), MAX_KEYS_LISTED);
    assert_eq!(keys_found[0], "r00.example.com");
}

#[test]
fn keys_only_the_docker_cli_would_use_say_how_to_write_them() {
    for (key, target, reason_part) in [
        ("GHCR.io", GHCR, "case-sensitively"),
        ("https://ghcr.io:443", GHCR, ":443"),
        ("registry-1.docker.io", ("DockerHub", "docker.io/acme"), "registry-1.docker.io"),
        ("https://index.docker.io/acme", ("DockerHub", "docker.io/acme"), "without a path"),
    ] {
        let found = problem(check(&with_auth(key, USER, PASSWORD), target));
        let SourceProblem::KeyNotMatched { key: shown, registry, reason } = &found else {
            panic!("{key}: {found:?}");
        };
        assert_eq!((shown.as_str(), registry.as_str()), (key, target.1), "{found}");
        assert!(reason.contains(reason_part), "{key}: {reason}");
    }
}

#[test]
fn every_spelling_of_the_registry_host_is_covered() {
    for key in [
        "ghcr.io",
        "https://ghcr.io",
        "http://ghcr.io",
        "https://ghcr.io/v1/",
        "https://ghcr.io/v2/",
        "ghcr.io/acme",
    ] {
        assert_eq!(check(&with_auth(key, USER, PASSWORD), GHCR), Ok(()), "{key}");
    }
    let ported = ("Generic", "registry.corp.example:5000/team");
    assert_eq!(check(&with_auth("https://registry.corp.example:5000/v2/", USER, PASSWORD), ported), Ok(()));
    assert!(matches!(
        problem(check(&with_auth("registry.corp.example", USER, PASSWORD), ported)),
        SourceProblem::NoEntryForRegistry { .. }
    ));
}

#[test]
fn docker_hub_is_covered_by_its_kubelet_spellings() {
    let hub = ("DockerHub", "docker.io/acme");
    for key in ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "https://docker.io/acme"] {
        assert_eq!(check(&with_auth(key, USER, PASSWORD), hub), Ok(()), "{key}");
    }
    // The kubelet consults index.docker.io only when no key matched.
    let shadowed = json!({"auths": {
        "docker.io": {"username": USER},
        "https://index.docker.io/v1/": {"auth": auth(USER, PASSWORD)},
    }});
    assert_eq!(
        check(&shadowed, hub),
        Err(SourceProblem::MissingCredential { key: "docker.io".into(), field: "password" })
    );
}

#[test]
fn wildcard_registries_are_covered_by_any_host_they_match() {
    let acr = ("ACR", "*.azurecr.io");
    for key in ["acmecorp.azurecr.io", "https://acme.azurecr.io/v2/", "*.azurecr.io"] {
        assert_eq!(check(&with_auth(key, USER, PASSWORD), acr), Ok(()), "{key}");
    }
    assert!(matches!(
        problem(check(&with_auth("acme.azurecr.cn", USER, PASSWORD), acr)),
        SourceProblem::NoEntryForRegistry { .. }
    ));
    let ecr = ("ECR", "123456789012.dkr.ecr.*.amazonaws.com");
    assert_eq!(check(&with_auth(ECR_HOST, "AWS", TOKEN), ecr), Ok(()));
}

#[test]
fn ecr_takes_the_aws_user() {
    for target in [ECR, ("ECRPublic", "public.ecr.aws/acme")] {
        let host = target.1.split('/').next().unwrap_or_default();
        assert_eq!(check(&with_auth(host, "AWS", TOKEN), target), Ok(()), "{target:?}");
        for user in ["admin", "aws", USER] {
            assert_eq!(
                check(&with_auth(host, user, TOKEN), target),
                Err(SourceProblem::UnexpectedUsername {
                    key: host.into(),
                    registry_type: registry(target).registry_type,
                    expected: &["AWS"],
                }),
                "{target:?} {user}"
            );
        }
    }
}

#[test]
fn scaleway_takes_the_nologin_user() {
    let target = ("Scaleway", "rg.fr-par.scw.cloud/acme");
    assert_eq!(check(&with_fields("rg.fr-par.scw.cloud", "nologin", PASSWORD), target), Ok(()));
    assert_eq!(
        check(&with_fields("rg.fr-par.scw.cloud", USER, PASSWORD), target),
        Err(SourceProblem::UnexpectedUsername {
            key: "rg.fr-par.scw.cloud".into(),
            registry_type: RegistryType::Scaleway,
            expected: &["nologin"],
        })
    );
}

#[test]
fn google_registries_take_a_key_file_or_an_access_token() {
    let key_file = service_account_key();
    for target in [("GCR", "gcr.io/project"), ("GAR", "europe-docker.pkg.dev/project")] {
        let host = target.1.split('/').next().unwrap_or_default();
        for (user, password) in [
            ("_json_key", key_file.clone()),
            ("_json_key_base64", STANDARD.encode(&key_file)),
            ("_json_key_base64", STANDARD_NO_PAD.encode(format!("{key_file} "))),
            ("oauth2accesstoken", TOKEN.to_owned()),
        ] {
            assert_eq!(check(&with_auth(host, user, &password), target), Ok(()), "{target:?} {user}");
            assert_eq!(check(&with_fields(host, user, &password), target), Ok(()), "{target:?} {user}");
        }
        assert_eq!(
            check(&with_auth(host, "admin", &key_file), target),
            Err(SourceProblem::UnexpectedUsername {
                key: host.into(),
                registry_type: registry(target).registry_type,
                expected: &["_json_key", "_json_key_base64", "oauth2accesstoken"],
            })
        );
    }
}

#[test]
fn json_key_passwords_must_be_service_account_keys() {
    let gcr = ("GCR", "gcr.io/project");
    let mut no_private_key: serde_json::Map<String, Value> =
        serde_json::from_str(&service_account_key()).expect("json");
    no_private_key.remove("private_key");
    let mut user_credentials = no_private_key.clone();
    user_credentials.insert("type".into(), json!("authorized_user"));
    let mut no_email: serde_json::Map<String, Value> =
        serde_json::from_str(&service_account_key()).expect("json");
    no_email.insert("client_email".into(), json!(""));
    for (user, password, reason_part) in [
        ("_json_key", PASSWORD.to_owned(), "is not a JSON object"),
        ("_json_key", "[1, 2]".to_owned(), "is not a JSON object"),
        ("_json_key", Value::Object(user_credentials).to_string(), "service_account"),
        ("_json_key", Value::Object(no_private_key).to_string(), "private_key"),
        ("_json_key", Value::Object(no_email).to_string(), "client_email"),
        ("_json_key", STANDARD.encode(service_account_key()), "is not a JSON object"),
        ("_json_key_base64", service_account_key(), "is not base64"),
        ("_json_key_base64", STANDARD.encode(PASSWORD), "is not a JSON object"),
    ] {
        let found = problem(check(&with_auth("gcr.io", user, &password), gcr));
        let SourceProblem::NotAServiceAccountKey { key, reason } = &found else {
            panic!("{user}: {found:?}")
        };
        assert_eq!(key, "gcr.io");
        assert!(reason.contains(reason_part), "{user}: {reason}");
    }
}

#[test]
fn one_good_covering_entry_is_enough() {
    let config = json!({"auths": {
        "ghcr.io/acme": {"username": USER},
        "https://ghcr.io/v2/": {"auth": auth(USER, PASSWORD)},
    }});
    assert_eq!(check(&config, GHCR), Ok(()));
}

#[test]
fn without_a_good_entry_the_first_the_kubelet_tries_is_reported() {
    let config = json!({"auths": {
        "ghcr.io": {"password": PASSWORD},
        "ghcr.io/acme": {"username": USER},
    }});
    assert_eq!(
        check(&config, GHCR),
        Err(SourceProblem::MissingCredential { key: "ghcr.io/acme".into(), field: "password" })
    );
}

/// The variant's name; exhaustive, so that a new variant must join the leak test below.
fn variant(problem: &SourceProblem) -> &'static str {
    match problem {
        SourceProblem::PublicRegistry => "PublicRegistry",
        SourceProblem::WrongType { .. } => "WrongType",
        SourceProblem::MissingKey { .. } => "MissingKey",
        SourceProblem::NotJson { .. } => "NotJson",
        SourceProblem::MalformedConfig { .. } => "MalformedConfig",
        SourceProblem::NoAuths => "NoAuths",
        SourceProblem::MalformedEntry { .. } => "MalformedEntry",
        SourceProblem::NoEntryForRegistry { .. } => "NoEntryForRegistry",
        SourceProblem::KeyNotMatched { .. } => "KeyNotMatched",
        SourceProblem::MissingCredential { .. } => "MissingCredential",
        SourceProblem::TokenOnly { .. } => "TokenOnly",
        SourceProblem::UnexpectedUsername { .. } => "UnexpectedUsername",
        SourceProblem::NotAServiceAccountKey { .. } => "NotAServiceAccountKey",
    }
}
const VARIANTS: usize = 13;

/// A Secret's type and data, and the registry it is checked for.
type Case<'a> = (Option<&'a str>, BTreeMap<String, Vec<u8>>, (&'a str, &'a str));

#[test]
fn no_problem_ever_repeats_a_credential() {
    let key_file = service_account_key();
    let secrets: Vec<String> = vec![
        PASSWORD.into(),
        USER.into(),
        TOKEN.into(),
        PRIVATE_KEY.into(),
        CLIENT_EMAIL.into(),
        key_file.clone(),
        STANDARD.encode(&key_file),
        auth(USER, PASSWORD),
        auth("AWS", PASSWORD),
        auth("_json_key", PASSWORD),
        auth("_json_key", &key_file),
        auth(USER, ""),
        auth("", PASSWORD),
        STANDARD.encode(format!("{USER}{PASSWORD}")),
    ];
    let gcr = ("GCR", "gcr.io/project");
    let mut not_service_account: serde_json::Map<String, Value> =
        serde_json::from_str(&key_file).expect("json");
    not_service_account.insert("type".into(), json!("authorized_user"));
    let cases: Vec<Case> = vec![
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&with_auth("docker.io", USER, PASSWORD).to_string()),
            ("Public", "docker.io/library"),
        ),
        (Some("Opaque"), data(&with_auth("ghcr.io", USER, PASSWORD).to_string()), GHCR),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            BTreeMap::from([("password".to_owned(), PASSWORD.as_bytes().to_vec())]),
            GHCR,
        ),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&format!("{{\"auths\":{{\"ghcr.io\":{{\"password\":\"{PASSWORD}\"}}")),
            GHCR,
        ),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&format!("{{\"auths\":{{\"ghcr.io\":{{\"auth\":\"{PASSWORD}\\q\"}}}}}}")),
            GHCR,
        ),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&format!("[\"{PASSWORD}\"]")), GHCR),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&json!({"auths": PASSWORD}).to_string()), GHCR),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&json!({"HttpHeaders": {"Authorization": 1}, "auths": {}}).to_string()),
            GHCR,
        ),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&json!({"auths": {}, "password": PASSWORD}).to_string()), GHCR),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&json!({"auths": {"ghcr.io": PASSWORD}}).to_string()), GHCR),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&json!({"auths": {"ghcr.io": {"auth": PASSWORD}}}).to_string()),
            GHCR,
        ),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(
                &json!({"auths": {"ghcr.io": {"auth": STANDARD.encode(format!("{USER}{PASSWORD}"))}}})
                    .to_string(),
            ),
            GHCR,
        ),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth("quay.io", USER, PASSWORD).to_string()), GHCR),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&with_auth(&format!("https://{USER}:{PASSWORD}@quay.io"), USER, PASSWORD).to_string()),
            GHCR,
        ),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth("GHCR.io", USER, PASSWORD).to_string()), GHCR),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&with_auth(&format!("https://{USER}:{PASSWORD}@GHCR.io"), USER, PASSWORD).to_string()),
            GHCR,
        ),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth("ghcr.io", USER, "").to_string()), GHCR),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth("ghcr.io", "", PASSWORD).to_string()), GHCR),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&json!({"auths": {"ghcr.io": {"username": USER}}}).to_string()),
            GHCR,
        ),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(
                &json!({"auths": {"ghcr.io": {"auth": auth(USER, ""), "identitytoken": TOKEN}}}).to_string(),
            ),
            GHCR,
        ),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth(ECR_HOST, USER, PASSWORD).to_string()), ECR),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth("gcr.io", USER, &key_file).to_string()), gcr),
        (Some(DOCKER_CONFIG_JSON_TYPE), data(&with_auth("gcr.io", "_json_key", PASSWORD).to_string()), gcr),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(
                &with_auth("gcr.io", "_json_key", &Value::Object(not_service_account).to_string())
                    .to_string(),
            ),
            gcr,
        ),
        (
            Some(DOCKER_CONFIG_JSON_TYPE),
            data(&with_auth("gcr.io", "_json_key_base64", &key_file).to_string()),
            gcr,
        ),
    ];
    let mut seen = BTreeSet::new();
    for (secret_type, data, target) in &cases {
        let found = problem(check_source(*secret_type, data, &registry(*target)));
        seen.insert(variant(&found));
        for text in [found.to_string(), format!("{found:?}"), format!("{found:#?}")] {
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{text} repeats {secret:?}");
            }
            for fragment in ["hunter2", "FAKE"] {
                assert!(!text.contains(fragment), "{text} repeats part of a credential");
            }
        }
    }
    assert_eq!(seen.len(), VARIANTS, "every variant is exercised: {seen:?}");
}
