//! The check a registry's source pull Secret must pass before the controller copies it into the
//! namespaces that may use the registry, and the content hash that tells a copy from its source.
//!
//! A source Secret is read the way the kubelet reads an image pull secret, because the copies
//! are handed to the kubelet unchanged. It must hold:
//!
//! - type `kubernetes.io/dockerconfigjson`, with the docker config under `.dockerconfigjson`;
//! - an `auths` object in which every entry is one the kubelet can parse. One malformed entry,
//!   even for another host, makes the kubelet refuse the whole Secret, and with it every pull of
//!   a Pod that lists it: registry-gate injects the copies into Pods, so a bad source would break
//!   Pods that never pull from its registry;
//! - an entry whose key the kubelet would use for the registry's images, with the credentials the
//!   registry type implies: for GCR and GAR `_json_key` with a service account key file (or
//!   `_json_key_base64`, or `oauth2accesstoken` with a token), `AWS` for ECR and ECR Public,
//!   `nologin` for Scaleway, and any user name and password for the rest.
//!
//! Where the kubelet and the docker CLI differ, the kubelet wins: the kubelet compares `auths`
//! hosts exactly (case and port included), knows Docker Hub as `docker.io` and `index.docker.io`
//! only, and reads `auth` or `username` and `password`, never `identitytoken` or
//! `registrytoken`. A key the docker CLI would use but the kubelet would not is reported as
//! [`SourceProblem::KeyNotMatched`], with the spelling the kubelet needs.
//!
//! Everything here is pure: the controller fetches the Secret and acts on the verdict. A
//! [`SourceProblem`] ends up in logs, Events and status, so it names Secret keys, `auths` keys,
//! fields and hosts, and never a user name, password, token, `auth` string or key file.

mod config;
mod hash;
mod key;
pub mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::policy::{Registry, RegistryType};
use config::{DockerConfig, Entry};
pub use hash::content_hash;

/// The Secret type the kubelet reads `.dockerconfigjson` from.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The data key of a [`DOCKER_CONFIG_JSON_TYPE`] Secret that holds the docker config.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// What the API server records for a Secret created without a type.
const DEFAULT_SECRET_TYPE: &str = "Opaque";
/// Keys listed in a problem: enough to spot the misspelled one, bounded for Events.
const MAX_KEYS_LISTED: usize = 16;
/// Longest key, type or host a problem repeats; Events and log lines stay short.
const MAX_SHOWN_LEN: usize = 200;

/// What is wrong with a registry's source pull Secret.
///
/// Messages name Secret keys, `auths` keys (with any user info removed), fields, types and
/// hosts; never a credential value. User names are left out too: some types take a secret-ish
/// one (an application id), and the expected name says enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceProblem {
    /// The registry is `Public`: it is pulled anonymously, so there is nothing to copy. The
    /// policy refuses a `pullSecret` on one, so seeing this means a caller skipped that rule.
    #[error("the registry is Public and pulled without credentials; it takes no pull secret")]
    PublicRegistry,
    /// The Secret is not `kubernetes.io/dockerconfigjson`; the kubelet ignores other types
    /// (`Opaque` is what a Secret created without a type gets). The legacy
    /// `kubernetes.io/dockercfg` is refused too: its copies would need another data key.
    #[error("the Secret has type {found:?}; a pull secret must be {DOCKER_CONFIG_JSON_TYPE}")]
    WrongType { found: String },
    /// No `.dockerconfigjson` data key; `keys_found` lists the data keys there are (names only).
    #[error("the Secret has no {DOCKER_CONFIG_JSON_KEY} key (it has {})", list(.keys_found))]
    MissingKey { keys_found: Vec<String> },
    /// `.dockerconfigjson` is empty or not JSON; `detail` is where parsing stopped, never the
    /// text around it.
    #[error("{DOCKER_CONFIG_JSON_KEY} is not JSON: {detail}")]
    NotJson { detail: String },
    /// The JSON is not shaped like a docker config (not an object, `auths` not an object,
    /// `HttpHeaders` not strings): the kubelet refuses the whole Secret.
    #[error("{DOCKER_CONFIG_JSON_KEY} {reason}; the kubelet refuses the whole Secret")]
    MalformedConfig { reason: &'static str },
    /// There is no `auths` object, or it is empty: no credentials for any registry.
    #[error("{DOCKER_CONFIG_JSON_KEY} has no entries under \"auths\"")]
    NoAuths,
    /// An `auths` entry the kubelet cannot parse (not an object, a field that is not a string,
    /// an `auth` that is not base64 of `user:password`). Reported for any entry, not only the
    /// registry's, because the kubelet then refuses the whole Secret.
    #[error("auths entry {key:?} {reason}; the kubelet refuses the whole Secret")]
    MalformedEntry { key: String, reason: &'static str },
    /// No `auths` key covers the registry's host (and, where the key has a path, any of the
    /// registry's repositories). `keys_found` lists the first keys there are (at most 16).
    #[error("no auths entry covers {registry} (entries: {})", list(.keys_found))]
    NoEntryForRegistry { registry: String, keys_found: Vec<String> },
    /// A key the docker CLI would use for the registry, but the kubelet would not: upper case,
    /// an explicit `:443`, `registry-1.docker.io`, `index.docker.io` with a path. `reason` says
    /// how to write it.
    #[error("auths entry {key:?} is not used for {registry}: {reason}")]
    KeyNotMatched { key: String, registry: String, reason: &'static str },
    /// The entry covering the registry lacks a credential; `field` names what is missing.
    #[error("auths entry {key:?} has no {field}")]
    MissingCredential { key: String, field: &'static str },
    /// The entry covering the registry has only an `identitytoken` or `registrytoken`
    /// (`field`): the docker CLI uses those, the kubelet does not read them from pull secrets.
    #[error(
        "auths entry {key:?} has no password, only {field}, which the kubelet does not read from pull secrets; give auth, or username and password"
    )]
    TokenOnly { key: String, field: &'static str },
    /// The entry's user name is not one the registry type accepts (GCR and GAR: `_json_key`,
    /// `_json_key_base64` or `oauth2accesstoken`; ECR and ECR Public: `AWS`; Scaleway:
    /// `nologin`). The name found is not repeated.
    #[error(
        "auths entry {key:?} has a user name {registry_type} registries do not accept; it must be {}",
        .expected.join(" or ")
    )]
    UnexpectedUsername { key: String, registry_type: RegistryType, expected: &'static [&'static str] },
    /// A GCR or GAR entry with user `_json_key` (or `_json_key_base64`) whose password is not a
    /// service account key file; `reason` says which part is wrong, never what it holds.
    #[error("auths entry {key:?} has a password that is not a service account key: it {reason}")]
    NotAServiceAccountKey { key: String, reason: &'static str },
}

/// Checks a source pull Secret (its `type` and `data`) for `registry`.
///
/// `Ok` when the kubelet would pull the registry's images with it: type
/// `kubernetes.io/dockerconfigjson`; `.dockerconfigjson` valid JSON whose `auths` entries all
/// parse; and an entry covering the registry with the credentials its type implies. When
/// several entries cover it the kubelet tries each in turn, so one good entry is enough; when
/// none is good the problem of the first the kubelet would try is returned.
///
/// A Secret without a type is taken as `Opaque`, the type the API server gives it. ECR Public
/// can be pulled anonymously, but a source Secret for it must hold `AWS` credentials like ECR's.
/// A `Public` registry takes no pull secret: that is [`SourceProblem::PublicRegistry`] whatever
/// the Secret holds, so that nothing is ever copied for one.
pub fn check_source(
    secret_type: Option<&str>,
    data: &BTreeMap<String, Vec<u8>>,
    registry: &Registry,
) -> Result<(), SourceProblem> {
    if !registry.registry_type.takes_pull_secret() {
        return Err(SourceProblem::PublicRegistry);
    }
    let found = secret_type.unwrap_or(DEFAULT_SECRET_TYPE);
    if found != DOCKER_CONFIG_JSON_TYPE {
        return Err(SourceProblem::WrongType { found: shorten(found) });
    }
    let Some(bytes) = data.get(DOCKER_CONFIG_JSON_KEY) else {
        let keys_found = data.keys().take(MAX_KEYS_LISTED).map(|k| shorten(k)).collect();
        return Err(SourceProblem::MissingKey { keys_found });
    };
    let config = DockerConfig::parse(bytes)?;
    let pattern = &registry.pattern;
    let mut covering: Vec<&Entry> = config.entries.iter().filter(|e| e.covers(pattern)).collect();
    if covering.is_empty() {
        // The kubelet's Docker Hub fallback, which it consults only when no key matched.
        covering = config.entries.iter().filter(|e| e.is_docker_hub_fallback_for(pattern)).collect();
    }
    // The kubelet tries keys in reverse lexical order: the more specific path first.
    covering.sort_by_cached_key(|entry| std::cmp::Reverse(entry.kubelet_key()));
    let Some((first, rest)) = covering.split_first() else {
        return Err(no_entry(&config, registry));
    };
    match first.check(registry.registry_type) {
        Ok(()) => Ok(()),
        Err(_) if rest.iter().any(|entry| entry.check(registry.registry_type).is_ok()) => Ok(()),
        Err(problem) => Err(problem),
    }
}

/// Why no entry covers the registry: a near miss when there is one, for its actionable hint.
fn no_entry(config: &DockerConfig, registry: &Registry) -> SourceProblem {
    let near_miss =
        config.entries.iter().find_map(|entry| entry.near_miss(&registry.pattern).map(|r| (entry, r)));
    match near_miss {
        Some((entry, reason)) => SourceProblem::KeyNotMatched {
            key: entry.shown_key(),
            registry: shorten(&registry.pattern.to_string()),
            reason,
        },
        None => SourceProblem::NoEntryForRegistry {
            registry: shorten(&registry.pattern.to_string()),
            keys_found: config.entries.iter().take(MAX_KEYS_LISTED).map(Entry::shown_key).collect(),
        },
    }
}

/// At most [`MAX_SHOWN_LEN`] bytes of `text`, cut on a character boundary.
fn shorten(text: &str) -> String {
    if text.len() <= MAX_SHOWN_LEN {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Quoted names for a message, or `none`.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
}
