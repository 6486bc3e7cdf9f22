//! Which `auths` keys the kubelet uses for a registry's images.
//!
//! The kubelet (`credentialprovider.BasicDockerKeyring`) drops a key's `https://` or `http://`,
//! drops a leading `/v1` or `/v2` from its path, and then uses the entry for an image when the
//! ports are equal, the hosts have as many labels and each key label glob-matches the image's
//! (case-sensitively), and the key's path is a prefix of the image's. When nothing matches a
//! Docker Hub image it falls back to the entry keyed `index.docker.io` (as in
//! `https://index.docker.io/v1/`).
//!
//! A registry here is a host pattern (maybe wildcard) and a path prefix. A key covers it when it
//! covers some of its images the way they are normally written, canonical: lower case, no
//! `:443`, Docker Hub as `docker.io`. For a wildcard registry, any host the wildcard matches
//! counts: the policy already warns that one Secret for many hosts is unusual.

use crate::image::DOCKER_HUB;
use crate::policy::{HostPattern, RegistryPattern};

/// The Docker Hub host the kubelet falls back to for Docker Hub images.
const DOCKER_HUB_FALLBACK: &str = "index.docker.io";
/// Docker Hub's other names, which the docker CLI accepts in keys and the kubelet does not
/// (except [`DOCKER_HUB_FALLBACK`] without a path).
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

const CASE_REASON: &str =
    "the kubelet compares hosts and paths case-sensitively; write the key in lower case";
const PORT_REASON: &str = "the kubelet treats :443 as a port other than none; drop :443 from the key";
const REGISTRY_1_REASON: &str = "the kubelet does not use registry-1.docker.io entries for docker.io images; key the entry https://index.docker.io/v1/ or docker.io";
const INDEX_PATH_REASON: &str = "the kubelet uses an index.docker.io entry for Docker Hub only without a path; key the entry https://index.docker.io/v1/, or docker.io with the path";

/// An `auths` key as the kubelet reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AuthKey {
    /// `host[:port]` as written, user info dropped.
    host: String,
    /// The path without a leading `/v1/` or `/v2/` and without surrounding `/`; empty for the
    /// whole host.
    path: String,
}

impl AuthKey {
    /// `None` for a key the kubelet ignores or that can match no image (another scheme, no host).
    pub(super) fn parse(key: &str) -> Option<Self> {
        let rest = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        if rest.contains("://") {
            return None;
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        if host.is_empty() {
            return None;
        }
        let path = path.strip_prefix("/v1/").or_else(|| path.strip_prefix("/v2/")).unwrap_or(path);
        Some(AuthKey { host: host.to_owned(), path: path.trim_matches('/').to_owned() })
    }

    /// The kubelet's name for the key, which orders the entries it tries.
    pub(super) fn kubelet_key(&self) -> String {
        if self.path.is_empty() { self.host.clone() } else { format!("{}/{}", self.host, self.path) }
    }

    /// Whether the kubelet uses this key for (some of) the registry's images.
    pub(super) fn covers(&self, registry: &RegistryPattern) -> bool {
        host_covers(&self.host, &registry.host) && paths_overlap(&self.path, &registry.path)
    }

    /// Whether this is the entry the kubelet falls back to for Docker Hub images.
    pub(super) fn is_docker_hub_fallback_for(&self, registry: &RegistryPattern) -> bool {
        registry.host.key() == DOCKER_HUB && self.host == DOCKER_HUB_FALLBACK && self.path.is_empty()
    }

    /// Why a key that the docker CLI would use for the registry is not used by the kubelet;
    /// `None` when it covers the registry, or would not even for the docker CLI.
    pub(super) fn near_miss(&self, registry: &RegistryPattern) -> Option<&'static str> {
        if self.covers(registry) || self.is_docker_hub_fallback_for(registry) {
            return None;
        }
        let lower_host = self.host.to_ascii_lowercase();
        let without_port = lower_host.strip_suffix(":443").unwrap_or(&lower_host);
        let alias = DOCKER_HUB_ALIASES.contains(&without_port);
        let lenient = AuthKey {
            host: if alias { DOCKER_HUB.to_owned() } else { without_port.to_owned() },
            path: self.path.to_ascii_lowercase(),
        };
        if !lenient.covers(registry) {
            return None;
        }
        Some(if lower_host != self.host || lenient.path != self.path {
            CASE_REASON
        } else if without_port != lower_host {
            PORT_REASON
        } else if without_port == DOCKER_HUB_FALLBACK {
            INDEX_PATH_REASON
        } else {
            REGISTRY_1_REASON
        })
    }
}

/// Whether a key host covers a registry host pattern (see the module documentation).
fn host_covers(key_host: &str, pattern: &HostPattern) -> bool {
    // No `?` globs: the kubelet parses keys as URLs, where `?` starts the query.
    if !key_host.contains('*') {
        // A key host that is not canonical matches no canonical image host for the kubelet,
        // and `matches` compares canonical hosts byte for byte, so the two agree.
        return pattern.matches(key_host);
    }
    let (key_name, key_port) = split_port(key_host);
    let (pattern_name, pattern_port) = split_port(pattern.key());
    if key_port != pattern_port || key_name.split('.').count() != pattern_name.split('.').count() {
        return false;
    }
    key_name
        .split('.')
        .zip(pattern_name.split('.'))
        .all(|(key, pattern)| pattern == "*" || glob(key, pattern))
}

/// Whether a key path and a registry path prefix share any image: the key's is a prefix of the
/// registry's (string-wise, as the kubelet compares), or lies inside it.
fn paths_overlap(key: &str, registry: &str) -> bool {
    key.is_empty()
        || registry.starts_with(key)
        || key.strip_prefix(registry).is_some_and(|rest| registry.is_empty() || rest.starts_with('/'))
}

/// `name` and `port` of `name[:port]`, brackets of an IPv6 name kept.
fn split_port(host: &str) -> (&str, &str) {
    let name_end = if host.starts_with('[') { host.find(']').map_or(host.len(), |i| i + 1) } else { 0 };
    match host[name_end..].rfind(':') {
        Some(colon) => (&host[..name_end + colon], &host[name_end + colon + 1..]),
        None => (host, ""),
    }
}

/// Go's `filepath.Match` on one label, for `*` (any run of bytes); other bytes match
/// themselves. Character classes are left out: no registry host has `[` but an IPv6 one.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently stands in for.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&b) if b == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` take one more byte and try again from there.
                Some((star_p, star_t)) => {
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> AuthKey {
        AuthKey::parse(text).unwrap_or_else(|| panic!("{text:?} parses"))
    }

    fn pattern(url: &str) -> RegistryPattern {
        RegistryPattern::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn covers(k: &str, url: &str) -> bool {
        key(k).covers(&pattern(url))
    }

    #[test]
    fn keys_are_read_as_the_kubelet_reads_them() {
        for (text, host, path) in [
            ("ghcr.io", "ghcr.io", ""),
            ("registry.local:5000", "registry.local:5000", ""),
            ("https://ghcr.io", "ghcr.io", ""),
            ("http://ghcr.io/", "ghcr.io", ""),
            ("https://index.docker.io/v1/", "index.docker.io", ""),
            ("https://ghcr.io/v2/", "ghcr.io", ""),
            ("https://ghcr.io/v2/acme/", "ghcr.io", "acme"),
            ("ghcr.io/acme/team", "ghcr.io", "acme/team"),
            ("https://user:pass@ghcr.io/acme", "ghcr.io", "acme"),
            ("https://ghcr.io/acme?x=1#y", "ghcr.io", "acme"),
            ("[::1]:5000", "[::1]:5000", ""),
        ] {
            assert_eq!(key(text), AuthKey { host: host.into(), path: path.into() }, "{text}");
        }
        for text in ["", "https://", "/acme", "ftp://ghcr.io", "https://user@/x"] {
            assert_eq!(AuthKey::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn every_spelling_of_a_host_covers_it() {
        for k in
            ["ghcr.io", "https://ghcr.io", "http://ghcr.io", "https://ghcr.io/v1/", "https://ghcr.io/v2/"]
        {
            assert!(covers(k, "ghcr.io"), "{k}");
            assert!(covers(k, "ghcr.io/acme"), "{k}");
        }
        assert!(covers("registry.local:5000", "registry.local:5000"));
        assert!(!covers("registry.local", "registry.local:5000"), "the port is part of the host");
        assert!(!covers("registry.local:5000", "registry.local"));
        assert!(!covers("ghcr.io.evil.example", "ghcr.io"));
        assert!(!covers("evilghcr.io", "ghcr.io"));
        assert!(covers("[::1]:5000", "[::1]:5000"));
    }

    #[test]
    fn key_paths_must_share_images_with_the_registry() {
        assert!(covers("ghcr.io/acme", "ghcr.io/acme"));
        assert!(covers("https://ghcr.io/v2/acme/", "ghcr.io/acme"));
        assert!(covers("ghcr.io/acme", "ghcr.io/acme/team"), "a wider key covers a narrower registry");
        assert!(covers("ghcr.io/acme/team", "ghcr.io/acme"), "part of the registry is still covered");
        assert!(covers("ghcr.io/acme", "ghcr.io"), "part of the registry is still covered");
        assert!(!covers("ghcr.io/other", "ghcr.io/acme"));
        assert!(!covers("ghcr.io/acme-evil", "ghcr.io/acme"));
        assert!(!covers("ghcr.io/acme/team", "ghcr.io/acme/other"));
    }

    #[test]
    fn docker_hub_is_docker_io_or_the_index_fallback() {
        let hub = pattern("docker.io");
        assert!(key("docker.io").covers(&hub));
        assert!(key("https://docker.io/v1/").covers(&hub));
        for fallback in ["https://index.docker.io/v1/", "index.docker.io", "https://index.docker.io/v2/"] {
            assert!(!key(fallback).covers(&hub), "{fallback} is not a direct match");
            assert!(key(fallback).is_docker_hub_fallback_for(&hub), "{fallback}");
            assert!(key(fallback).is_docker_hub_fallback_for(&pattern("docker.io/acme")), "{fallback}");
        }
        assert!(!key("index.docker.io/acme").is_docker_hub_fallback_for(&hub));
        assert!(!key("index.docker.io").is_docker_hub_fallback_for(&pattern("ghcr.io")));
        assert!(!key("registry-1.docker.io").covers(&hub));
        assert!(!key("registry-1.docker.io").is_docker_hub_fallback_for(&hub));
    }

    #[test]
    fn wildcard_registries_take_any_host_they_match() {
        assert!(covers("acme.azurecr.io", "*.azurecr.io"));
        assert!(covers("https://acme.azurecr.io/v2/", "*.azurecr.io"));
        assert!(covers("*.azurecr.io", "*.azurecr.io"));
        assert!(!covers("azurecr.io", "*.azurecr.io"));
        assert!(!covers("a.b.azurecr.io", "*.azurecr.io"));
        assert!(!covers("acme.azurecr.cn", "*.azurecr.io"));
        assert!(covers(
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.*.amazonaws.com"
        ));
        assert!(!covers(
            "210987654321.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.*.amazonaws.com"
        ));
        assert!(covers("reg.corp.example:5000", "*.corp.example:5000"));
        assert!(!covers("reg.corp.example", "*.corp.example:5000"));
    }

    #[test]
    fn glob_keys_match_label_by_label() {
        assert!(covers("*.azurecr.io", "acme.azurecr.io"));
        assert!(covers("ac*.azurecr.io", "acme.azurecr.io"));
        assert!(!covers("a?me.azurecr.io", "acme.azurecr.io"), "the kubelet reads ? as a query");
        assert!(covers("*.*.io", "acme.azurecr.io"));
        assert!(!covers("b*.azurecr.io", "acme.azurecr.io"));
        assert!(!covers("*.azurecr.io", "azurecr.io"), "a glob label stands for one label");
        assert!(!covers("*.io", "acme.azurecr.io"));
        assert!(covers("*.corp.example:5000", "reg.corp.example:5000"));
        assert!(!covers("*.corp.example", "reg.corp.example:5000"));
        assert!(covers("*.io", "docker.io"));
    }

    #[test]
    fn globs_are_go_filepath_match_without_classes() {
        for (p, t, expected) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "abcbc", true),
            ("a*c", "abcb", false),
            ("*b*", "abc", true),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("a**", "a", true),
            ("abc", "abd", false),
        ] {
            assert_eq!(glob(p, t), expected, "{p:?} on {t:?}");
        }
    }

    #[test]
    fn spellings_only_the_docker_cli_accepts_are_near_misses() {
        let near = |k: &str, url: &str| key(k).near_miss(&pattern(url));
        assert_eq!(near("GHCR.io", "ghcr.io"), Some(CASE_REASON));
        assert_eq!(near("https://ghcr.io/Acme", "ghcr.io/acme"), Some(CASE_REASON));
        assert_eq!(near("ghcr.io:443", "ghcr.io"), Some(PORT_REASON));
        assert_eq!(near("https://GHCR.io:443/v2/", "ghcr.io"), Some(CASE_REASON));
        assert_eq!(near("registry-1.docker.io", "docker.io"), Some(REGISTRY_1_REASON));
        assert_eq!(near("https://registry-1.docker.io/v2/", "docker.io/library"), Some(REGISTRY_1_REASON));
        assert_eq!(near("index.docker.io/acme", "docker.io/acme"), Some(INDEX_PATH_REASON));
        assert_eq!(near("ghcr.io", "ghcr.io"), None, "covers");
        assert_eq!(near("index.docker.io", "docker.io"), None, "the fallback covers");
        assert_eq!(near("quay.io", "ghcr.io"), None, "no spelling of quay.io is ghcr.io");
        assert_eq!(near("ghcr.io/other", "ghcr.io/acme"), None);
    }
}
