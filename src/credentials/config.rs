//! A `.dockerconfigjson` document read as the kubelet reads it, and the credential rules of each
//! registry type.
//!
//! The kubelet decodes the document with Go's `encoding/json` into `{auths: map[string]{username,
//! password, email, auth string}}`: field names match case-insensitively, `null` counts as
//! absent, and a value of the wrong type fails the whole document. A non-empty `auth` replaces
//! `username` and `password` with its base64-decoded `user:password`, padded or not.
//!
//! The document is parsed into `serde_json::Value` and inspected by hand: a typed
//! deserialisation error would quote the offending value, which may be a credential.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::key::AuthKey;
use super::{SourceProblem, shorten};
use crate::policy::{RegistryPattern, RegistryType};

/// Go's `base64.StdEncoding`, which the kubelet uses for an `auth` ending in `=`: canonical
/// padding, and (not being `Strict`) any trailing bits.
const PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);
/// Go's `base64.RawStdEncoding`, for any other `auth`.
const UNPADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// The fields the kubelet reads from an entry, all strings.
const STRING_FIELDS: [&str; 4] = ["username", "password", "email", "auth"];
/// Fields the docker CLI reads and the kubelet ignores.
const TOKEN_FIELDS: [&str; 2] = ["identitytoken", "registrytoken"];

/// User names GCR and GAR accept: a key file (`_json_key`), the same base64-encoded
/// (`_json_key_base64`), or a short-lived OAuth access token (`oauth2accesstoken`).
const GOOGLE_USERNAMES: &[&str] = &["_json_key", "_json_key_base64", "oauth2accesstoken"];
const AWS_USERNAMES: &[&str] = &["AWS"];
const SCALEWAY_USERNAMES: &[&str] = &["nologin"];

/// The parts of a docker config the check needs.
pub(super) struct DockerConfig {
    /// Sorted by key, so that problems name the same entry every time.
    pub entries: Vec<Entry>,
}

/// One `auths` entry.
///
/// Deliberately not `Debug`: it holds credentials, and a `{:?}` must not be able to print them.
pub(super) struct Entry {
    /// The key as written.
    raw: String,
    /// `None` for a key the kubelet can use for no image.
    key: Option<AuthKey>,
    credentials: Credentials,
    /// The first non-empty token field, which the kubelet ignores.
    token: Option<&'static str>,
}

/// What the kubelet would send: from `auth` when it is set, else `username` and `password`.
struct Credentials {
    username: Vec<u8>,
    password: Vec<u8>,
    from_auth: bool,
}

impl DockerConfig {
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, SourceProblem> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(SourceProblem::NotJson { detail: "it is empty".to_owned() });
        }
        let document: Value = serde_json::from_slice(bytes).map_err(|e| SourceProblem::NotJson {
            // Position and category only: serde_json's message could in principle quote input.
            detail: format!("{} at line {} column {}", category(&e), e.line(), e.column()),
        })?;
        let malformed = |reason| SourceProblem::MalformedConfig { reason };
        let top = match &document {
            Value::Object(top) => top,
            Value::Null => return Err(SourceProblem::NoAuths),
            _ => return Err(malformed("is not a JSON object")),
        };
        match field(top, "HttpHeaders") {
            None | Some(Value::Null) => {}
            Some(Value::Object(headers)) if headers.values().all(is_string_or_null) => {}
            Some(_) => return Err(malformed("has HttpHeaders that are not an object of strings")),
        }
        let auths = match field(top, "auths") {
            Some(Value::Object(auths)) if !auths.is_empty() => auths,
            None | Some(Value::Null) | Some(Value::Object(_)) => return Err(SourceProblem::NoAuths),
            Some(_) => return Err(malformed("has \"auths\" that is not an object")),
        };
        let mut entries =
            auths.iter().map(|(key, value)| Entry::parse(key, value)).collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.raw.cmp(&b.raw));
        Ok(DockerConfig { entries })
    }
}

impl Entry {
    fn parse(raw: &str, value: &Value) -> Result<Self, SourceProblem> {
        let malformed = |reason| SourceProblem::MalformedEntry { key: shown_key(raw), reason };
        let empty = Map::new();
        let object = match value {
            Value::Object(object) => object,
            Value::Null => &empty,
            _ => return Err(malformed("is not an object")),
        };
        let mut strings = [""; STRING_FIELDS.len()];
        for (slot, name) in strings.iter_mut().zip(STRING_FIELDS) {
            *slot = match field(object, name) {
                None | Some(Value::Null) => "",
                Some(Value::String(text)) => text,
                Some(_) => return Err(malformed(not_a_string(name))),
            };
        }
        let [username, password, _email, auth] = strings;
        let credentials = if auth.is_empty() {
            Credentials { username: username.into(), password: password.into(), from_auth: false }
        } else {
            let decoded = decode_auth(auth).ok_or_else(|| malformed("has an auth that is not base64"))?;
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| malformed("has an auth that is not base64 of user:password"))?;
            Credentials {
                username: decoded[..colon].to_vec(),
                password: decoded[colon + 1..].to_vec(),
                from_auth: true,
            }
        };
        let token = TOKEN_FIELDS
            .into_iter()
            .find(|name| field(object, name).and_then(Value::as_str).is_some_and(|token| !token.is_empty()));
        Ok(Entry { raw: raw.to_owned(), key: AuthKey::parse(raw), credentials, token })
    }

    /// The key as a problem may show it.
    pub(super) fn shown_key(&self) -> String {
        shown_key(&self.raw)
    }

    /// Whether the kubelet uses this entry for (some of) the registry's images.
    pub(super) fn covers(&self, registry: &RegistryPattern) -> bool {
        self.key.as_ref().is_some_and(|key| key.covers(registry))
    }

    /// Whether this is the entry the kubelet falls back to for Docker Hub images.
    pub(super) fn is_docker_hub_fallback_for(&self, registry: &RegistryPattern) -> bool {
        self.key.as_ref().is_some_and(|key| key.is_docker_hub_fallback_for(registry))
    }

    /// See [`AuthKey::near_miss`].
    pub(super) fn near_miss(&self, registry: &RegistryPattern) -> Option<&'static str> {
        self.key.as_ref().and_then(|key| key.near_miss(registry))
    }

    /// The kubelet's name for the key, which orders the entries it tries.
    pub(super) fn kubelet_key(&self) -> String {
        self.key.as_ref().map(AuthKey::kubelet_key).unwrap_or_default()
    }

    /// Whether the entry's credentials are ones `registry_type` accepts.
    pub(super) fn check(&self, registry_type: RegistryType) -> Result<(), SourceProblem> {
        let key = || self.shown_key();
        let Credentials { username, password, from_auth } = &self.credentials;
        if password.is_empty() {
            if let Some(field) = self.token {
                return Err(SourceProblem::TokenOnly { key: key(), field });
            }
            let field = match (username.is_empty(), from_auth) {
                (true, false) => "auth, or username and password",
                (false, false) => "password",
                (_, true) => "password in its auth",
            };
            return Err(SourceProblem::MissingCredential { key: key(), field });
        }
        if username.is_empty() {
            let field = if *from_auth { "user name in its auth" } else { "username" };
            return Err(SourceProblem::MissingCredential { key: key(), field });
        }
        if let Some(expected) = required_usernames(registry_type)
            && !expected.iter().any(|name| name.as_bytes() == username.as_slice())
        {
            return Err(SourceProblem::UnexpectedUsername { key: key(), registry_type, expected });
        }
        // Only Google's registries define what a `_json_key` password is.
        let key_file_problem = match username.as_slice() {
            _ if !matches!(registry_type, RegistryType::Gcr | RegistryType::Gar) => None,
            b"_json_key" => check_service_account_key(password).err(),
            b"_json_key_base64" => match std::str::from_utf8(password).ok().and_then(decode_auth) {
                Some(json) => check_service_account_key(&json).err(),
                None => Some("is not base64 (user _json_key_base64 takes the key file's JSON in base64)"),
            },
            _ => None,
        };
        match key_file_problem {
            Some(reason) => Err(SourceProblem::NotAServiceAccountKey { key: key(), reason }),
            None => Ok(()),
        }
    }
}

/// The user names a registry type requires, when it requires particular ones.
/// The first is the one `secret render` writes when none is given.
pub(super) fn required_usernames(registry_type: RegistryType) -> Option<&'static [&'static str]> {
    match registry_type {
        RegistryType::Gcr | RegistryType::Gar => Some(GOOGLE_USERNAMES),
        RegistryType::Ecr | RegistryType::EcrPublic => Some(AWS_USERNAMES),
        RegistryType::Scaleway => Some(SCALEWAY_USERNAMES),
        RegistryType::DockerHub
        | RegistryType::Ghcr
        | RegistryType::GitHubEnterprise
        | RegistryType::GitLab
        | RegistryType::Acr
        | RegistryType::Quay
        | RegistryType::Harbor
        | RegistryType::Nexus
        | RegistryType::Artifactory
        | RegistryType::Generic
        | RegistryType::Public => None,
    }
}

/// A key for a message: user info (`https://user:token@host`) and query dropped, length capped.
fn shown_key(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let shown = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}[user info removed]@{host}{path}"),
        None => format!("{scheme}{authority}{path}"),
    };
    shorten(&shown)
}

/// A field by name as Go's `encoding/json` finds it: exact, else ASCII case-insensitive.
fn field<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    object.get(name).or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn is_string_or_null(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Null)
}

fn not_a_string(field: &str) -> &'static str {
    match field {
        "username" => "has a username that is not a string",
        "password" => "has a password that is not a string",
        "email" => "has an email that is not a string",
        _ => "has an auth that is not a string",
    }
}

/// `auth` decoded as the kubelet decodes it (`decodeDockerConfigFieldAuth`): Go's decoders skip
/// line breaks, and the padding decides which decoder.
fn decode_auth(auth: &str) -> Option<Vec<u8>> {
    let cleaned: Vec<u8> = auth.bytes().filter(|&b| b != b'\r' && b != b'\n').collect();
    let engine = if auth.trim().ends_with('=') { &PADDED } else { &UNPADDED };
    engine.decode(cleaned).ok()
}

/// Whether `json` is a Google service account key file; `Err` says which part is wrong.
fn check_service_account_key(json: &[u8]) -> Result<(), &'static str> {
    let Ok(Value::Object(key)) = serde_json::from_slice::<Value>(json) else {
        return Err("is not a JSON object (user _json_key takes the key file's JSON)");
    };
    if key.get("type").and_then(Value::as_str) != Some("service_account") {
        return Err("has no \"type\": \"service_account\"");
    }
    let present = |name| key.get(name).and_then(Value::as_str).is_some_and(|text| !text.is_empty());
    if !present("client_email") {
        return Err("has no client_email");
    }
    if !present("private_key") {
        return Err("has no private_key");
    }
    Ok(())
}

/// serde_json's error category in words.
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
    use crate::credentials::DOCKER_CONFIG_JSON_KEY;

    #[test]
    fn auth_decodes_padded_unpadded_and_across_line_breaks() {
        assert_eq!(decode_auth("dXNlcjpwYXNz").as_deref(), Some(&b"user:pass"[..]));
        assert_eq!(decode_auth("dXNlcjpwYXNzMQ==").as_deref(), Some(&b"user:pass1"[..]));
        assert_eq!(decode_auth("dXNlcjpwYXNzMQ").as_deref(), Some(&b"user:pass1"[..]));
        assert_eq!(decode_auth("dXNlcjpw\nYXNzMQ==\n").as_deref(), Some(&b"user:pass1"[..]));
        assert_eq!(decode_auth("dXNlcjpwYXNzMQ="), None, "padding must be complete");
        assert_eq!(decode_auth("dXNlcjpwYXNz=="), None, "padding where none belongs");
        assert_eq!(decode_auth("not base64!"), None);
        assert_eq!(decode_auth("dXNlcjpwYXNz".replace('d', "-").as_str()), None, "URL-safe alphabet");
    }

    #[test]
    fn shown_keys_lose_user_info_and_queries() {
        assert_eq!(shown_key("https://ghcr.io/v2/"), "https://ghcr.io/v2/");
        assert_eq!(shown_key("https://me:tok@ghcr.io/acme?x#y"), "https://[user info removed]@ghcr.io/acme");
        assert_eq!(shown_key("me@ghcr.io"), "[user info removed]@ghcr.io");
        assert_eq!(shown_key(DOCKER_CONFIG_JSON_KEY), DOCKER_CONFIG_JSON_KEY);
        let long = format!("{}.example.com", "a".repeat(300));
        assert!(shown_key(&long).len() < 210);
    }

    #[test]
    fn field_names_match_case_insensitively_exact_first() {
        let object: Map<String, Value> =
            serde_json::from_str(r#"{"Auth": "a", "USERNAME": "u", "username": "exact"}"#).expect("json");
        assert_eq!(field(&object, "auth"), Some(&Value::from("a")));
        assert_eq!(field(&object, "username"), Some(&Value::from("exact")));
        assert_eq!(field(&object, "password"), None);
    }
}
