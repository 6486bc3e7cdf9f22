//! Credentials for one registry out of a docker config (`~/.docker/config.json`, or a pull
//! Secret's `.dockerconfigjson`): `{"auths": {KEY: {"auth": base64(user:password)}}}` or
//! `{"username", "password"}` in place of `auth`.
//!
//! The entry is chosen the way the docker CLI and the kubelet agree on: a key's `https://` and
//! a leading `/v1/` or `/v2/` are dropped, the host compares case-insensitively without `:443`,
//! Docker Hub's names (`https://index.docker.io/v1/`, `docker.io`, `registry-1.docker.io`) are
//! one, and a key with a path applies only to repositories under it (the longest wins).
//!
//! `credentials::check_source` judges a pull Secret the way the kubelet will; this only reads the
//! credentials out. Like it, the document is inspected as a `serde_json::Value` so that no error
//! can quote a value.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::Credentials;
use super::shown;
use super::target::{DOCKER_HUB, Target};

/// `auth` is base64, padded or not, as Go's decoders in the docker CLI and kubelet accept it.
const AUTH_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// Keys listed when none fits: enough to spot a typo, short enough for a terminal.
const MAX_KEYS_LISTED: usize = 16;
const DOCKER_HUB_NAMES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Why no credentials came out of a docker config. Messages name keys (user info removed) and
/// fields; never a user name, password, token or `auth` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerConfigError {
    /// Not JSON; `detail` is where parsing stopped, never the text around it.
    #[error("the docker config is not JSON: {detail}")]
    NotJson { detail: String },
    /// JSON, but not `{"auths": {...}}` with objects as entries.
    #[error("the docker config {0}")]
    NotAConfig(&'static str),
    /// No entry for the registry. `keys` lists the first keys found; `helpers` is set when the
    /// config delegates to a credential helper (`credsStore`, `credHelpers`), which keeps the
    /// credentials outside the file.
    #[error(
        "the docker config has no auths entry for {host} (entries: {}){}",
        if .keys.is_empty() { "none".to_owned() } else { .keys.join(", ") },
        if *.helpers { "; it names a credential helper (credsStore/credHelpers), which keeps credentials outside the file: give them with --username and --password-stdin" } else { "" }
    )]
    NoEntry { host: String, keys: Vec<String>, helpers: bool },
    /// The entry for the registry cannot be used; `reason` says why in fixed words.
    #[error("auths entry {key:?} {reason}")]
    BadEntry { key: String, reason: &'static str },
}

/// The credentials `config` holds for `target`.
pub fn credentials_for(config: &[u8], target: &Target) -> Result<Credentials, DockerConfigError> {
    let document: Value = serde_json::from_slice(config).map_err(|e| DockerConfigError::NotJson {
        detail: format!("{} at line {} column {}", category(&e), e.line(), e.column()),
    })?;
    let Value::Object(top) = document else {
        return Err(DockerConfigError::NotAConfig("is not a JSON object"));
    };
    let helpers = ["credsStore", "credHelpers"].iter().any(|name| top.contains_key(*name));
    let empty = Map::new();
    let auths = match top.get("auths") {
        Some(Value::Object(auths)) => auths,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(DockerConfigError::NotAConfig("has \"auths\" that is not an object")),
    };
    let wanted = host_of(&target.host);
    let best = auths
        .iter()
        .filter_map(|(key, entry)| {
            let (host, path) = parse_key(key)?;
            let applies = host == wanted
                && (path.is_empty()
                    || target.repository.as_deref().is_some_and(|repo| {
                        repo == path
                            || repo.strip_prefix(path.as_str()).is_some_and(|rest| rest.starts_with('/'))
                    }));
            applies.then_some((path.len(), key, entry))
        })
        .max_by_key(|(depth, key, _)| (*depth, std::cmp::Reverse(key.as_str())));
    let Some((_, key, entry)) = best else {
        return Err(DockerConfigError::NoEntry {
            host: shown(&target.host),
            keys: auths.keys().take(MAX_KEYS_LISTED).map(|key| format!("{:?}", shown_key(key))).collect(),
            helpers,
        });
    };
    read_entry(key, entry)
}

fn read_entry(key: &str, entry: &Value) -> Result<Credentials, DockerConfigError> {
    let bad = |reason| DockerConfigError::BadEntry { key: shown_key(key), reason };
    let Value::Object(entry) = entry else {
        return Err(bad("is not an object"));
    };
    let string = |name: &str| match entry.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(text)) => Ok(text.as_str()),
        Some(_) => Err(bad("has a field that is not a string")),
    };
    let auth = string("auth")?;
    let (username, password) = if auth.is_empty() {
        (string("username")?.to_owned(), string("password")?.to_owned())
    } else {
        let cleaned: String = auth.chars().filter(|c| !c.is_whitespace()).collect();
        let decoded = AUTH_BASE64.decode(cleaned).map_err(|_| bad("has an auth that is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("has an auth that is not UTF-8 text"))?;
        let (user, password) =
            decoded.split_once(':').ok_or_else(|| bad("has an auth that is not base64 of user:password"))?;
        (user.to_owned(), password.to_owned())
    };
    if password.is_empty() {
        if !string("identitytoken")?.is_empty() {
            return Err(bad(
                "holds only an identitytoken (an OAuth refresh token from docker login with a browser); give a user name and a password or access token",
            ));
        }
        return Err(bad("has no password"));
    }
    Credentials::new(username, password).map_err(|_| bad("has an empty user name, or one with a colon"))
}

/// The host part of a canonical `Target::host`, Docker Hub's names folded.
fn host_of(host: &str) -> String {
    if DOCKER_HUB_NAMES.contains(&host) { DOCKER_HUB.to_owned() } else { host.to_owned() }
}

/// A key as `(host, path)`: scheme, user info, query and a leading `v1`/`v2` dropped, host in
/// lower case without `:443`, Docker Hub's names folded. `None` for a key with no host.
fn parse_key(key: &str) -> Option<(String, String)> {
    let key = key.trim();
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| {
            key.get(..scheme.len()).filter(|s| s.eq_ignore_ascii_case(scheme)).map(|_| &key[scheme.len()..])
        })
        .unwrap_or(key);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_ascii_lowercase();
    let host = host.strip_suffix(":443").unwrap_or(&host);
    if host.is_empty() {
        return None;
    }
    let path = path.trim_matches('/');
    let path = match path.split_once('/') {
        Some(("v1" | "v2", rest)) => rest,
        None if path == "v1" || path == "v2" => "",
        _ => path,
    };
    Some((host_of(host), path.trim_matches('/').to_owned()))
}

/// A key for a message: user info dropped, length capped.
fn shown_key(key: &str) -> String {
    let (scheme, rest) = match key.find("://") {
        Some(i) => key.split_at(i + 3),
        None => ("", key),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => shown(&format!("{scheme}[user info removed]@{host}{path}")),
        None => shown(key),
    }
}

/// serde_json's error category in words, never its message (which may quote input).
fn category(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Eof => "it ends early",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Io => "read error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const SECRET: &str = "FAKE-SECRET-4c1d";

    fn target(text: &str) -> Target {
        Target::parse(text).expect("target")
    }

    fn config(auths: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).expect("json")
    }

    fn auth(user: &str, password: &str) -> String {
        STANDARD.encode(format!("{user}:{password}"))
    }

    #[test]
    fn reads_auth_or_username_and_password() {
        let bytes = config(serde_json::json!({
            "ghcr.io": {"auth": auth("octocat", SECRET)},
            "https://registry.example:5000/v2/": {"username": "ci", "password": SECRET},
        }));
        let ghcr = credentials_for(&bytes, &target("ghcr.io")).expect("ghcr");
        assert_eq!((ghcr.username(), ghcr.password()), ("octocat", SECRET));
        let local = credentials_for(&bytes, &target("registry.example:5000")).expect("local");
        assert_eq!(local.username(), "ci");
        let unpadded =
            config(serde_json::json!({"ghcr.io": {"auth": auth("a", "bc").trim_end_matches('=')}}));
        assert_eq!(credentials_for(&unpadded, &target("ghcr.io")).expect("unpadded").password(), "bc");
    }

    #[test]
    fn docker_hub_keys_and_case_and_port() {
        for key in ["https://index.docker.io/v1/", "docker.io", "registry-1.docker.io", "INDEX.DOCKER.IO"] {
            let bytes = config(serde_json::json!({ key: {"auth": auth("hub", SECRET)} }));
            let found = credentials_for(&bytes, &target("docker.io/nginx")).expect(key);
            assert_eq!(found.username(), "hub", "{key}");
        }
        let bytes = config(serde_json::json!({"GHCR.io:443": {"auth": auth("u", SECRET)}}));
        assert!(credentials_for(&bytes, &target("https://ghcr.io")).is_ok());
    }

    #[test]
    fn the_longest_path_covering_the_repository_wins() {
        let bytes = config(serde_json::json!({
            "ghcr.io": {"auth": auth("whole-host", SECRET)},
            "ghcr.io/acme": {"auth": auth("acme", SECRET)},
            "ghcr.io/acme-evil": {"auth": auth("evil", SECRET)},
        }));
        let pick = |text| credentials_for(&bytes, &target(text)).expect("found").username().to_owned();
        assert_eq!(pick("ghcr.io/acme/app"), "acme");
        assert_eq!(pick("ghcr.io/acme"), "acme");
        assert_eq!(pick("ghcr.io/acme-evilish/app"), "whole-host");
        assert_eq!(pick("ghcr.io"), "whole-host");
    }

    #[test]
    fn problems_never_show_credentials() {
        let cases = [
            (b"not json".to_vec(), "not JSON"),
            (b"[]".to_vec(), "not a JSON object"),
            (config(serde_json::json!({"other.example": {"auth": auth("u", SECRET)}})), "no auths entry"),
            (config(serde_json::json!({"ghcr.io": {"auth": "!!!"}})), "not base64"),
            (config(serde_json::json!({"ghcr.io": {"auth": STANDARD.encode(SECRET)}})), "user:password"),
            (config(serde_json::json!({"ghcr.io": {"username": "u"}})), "no password"),
            (config(serde_json::json!({"ghcr.io": {"identitytoken": SECRET}})), "identitytoken"),
            (config(serde_json::json!({"ghcr.io": {"password": 5}})), "not a string"),
            (config(serde_json::json!({"https://u:p@ghcr.io": []})), "not an object"),
        ];
        for (bytes, expected) in cases {
            let message =
                credentials_for(&bytes, &target("ghcr.io")).map(|_| ()).expect_err(expected).to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains(SECRET) && !message.contains("u:p"), "{message}");
        }
        let helpers = serde_json::to_vec(&serde_json::json!({"credsStore": "desktop"})).expect("json");
        let message =
            credentials_for(&helpers, &target("ghcr.io")).map(|_| ()).expect_err("helper").to_string();
        assert!(message.contains("credential helper"), "{message}");
    }

    #[test]
    fn keys_are_shown_without_user_info() {
        assert_eq!(shown_key("https://me:tok@ghcr.io"), "https://[user info removed]@ghcr.io");
        assert_eq!(shown_key("me:tok@ghcr.io/acme"), "[user info removed]@ghcr.io/acme");
        assert_eq!(shown_key("ghcr.io/a@b"), "ghcr.io/a@b");
    }
}
