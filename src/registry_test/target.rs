//! What to test: a registry host, and perhaps a repository for the pull scope, taken from a
//! policy entry or from what a person typed (`registry.example:5000`, `https://ghcr.io`,
//! `ghcr.io/acme/app`).

use serde::Serialize;

use crate::image::grammar::{is_domain_and_port, is_remote_name};
use crate::policy::{Registry, RegistryType};

/// Docker Hub's name in policies and image references.
pub const DOCKER_HUB: &str = crate::image::DOCKER_HUB;
/// Where Docker Hub's registry API answers: `docker.io` itself is a web site.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Docker Hub's other names, folded into [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// A registry to test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The policy entry's name, when the target is one.
    pub name: Option<String>,
    /// The policy entry's type, when the target is one: it only refines hints.
    pub registry_type: Option<RegistryType>,
    /// `name[:port]` as the policy compares it: lower case, no `:443`, Docker Hub as `docker.io`.
    pub host: String,
    /// The repository whose pull scope a token is asked for; `None` tests `/v2/` alone.
    pub repository: Option<String>,
    pub repository_from: Option<RepositorySource>,
}

/// Where [`Target::repository`] came from, which changes the advice when a token grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepositorySource {
    /// The path of the URL that was typed.
    Url,
    /// The path of the policy entry's `url`: a prefix, which may name no repository at all.
    Policy,
    /// Given on its own (`--repository`).
    Option,
}

/// Why a target cannot be tested. Messages never repeat what was typed: a value pasted in the
/// wrong place may be a credential, and user info holds one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing was given.
    #[error("no registry given")]
    Empty,
    /// `user:password@host`: credentials never go in a URL. What was typed is not repeated.
    #[error("the URL has user info (not repeated here); credentials never go in a URL")]
    UserInfo,
    /// A scheme other than `https://` or `http://`. What was typed is not repeated: it may hold
    /// user info after the scheme.
    #[error("the URL has a scheme other than https:// or http://")]
    Scheme,
    /// The host is not `name[:port]` or `[IPv6][:port]`.
    #[error("the registry host is not name[:port] (not repeated here)")]
    BadHost,
    /// The port is not 1-65535.
    #[error("the registry host has a port that is not 1-65535")]
    BadPort,
    /// The repository path does not follow the reference grammar (lower-case components).
    #[error(
        "the repository is not a repository path: lower-case components separated by / (not repeated here)"
    )]
    BadRepository,
    /// A wildcard policy entry names no host to connect to.
    #[error("registry {0:?} has a wildcard host; test one of its registries by URL instead")]
    Wildcard(String),
}

impl Target {
    /// A registry as typed: `host[:port]`, an optional `https://` or `http://` (the caller decides
    /// whether plain HTTP is allowed), an optional path naming the repository, and a tag or
    /// digest on it (dropped). `https://host/v2/` is the host alone.
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TargetError::Empty);
        }
        let rest = ["https://", "http://"]
            .iter()
            .find_map(|scheme| {
                text.get(..scheme.len())
                    .filter(|s| s.eq_ignore_ascii_case(scheme))
                    .map(|_| &text[scheme.len()..])
            })
            .unwrap_or(text);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(TargetError::UserInfo);
        }
        if rest.contains("://") {
            return Err(TargetError::Scheme);
        }
        let host = canonical_host(authority)?;
        let path = path.trim_end_matches('/');
        let path = match path.strip_prefix("v2") {
            Some("") => "",
            Some(rest) if rest.starts_with('/') => &rest[1..],
            _ => path,
        };
        let path = strip_tag_or_digest(path);
        let mut target =
            Target { name: None, registry_type: None, host, repository: None, repository_from: None };
        if !path.is_empty() {
            target = target.with_repository(path, RepositorySource::Url)?;
        }
        Ok(target)
    }

    /// A policy entry: its host, and its path as the repository. A path is a prefix in a
    /// policy (`ghcr.io/acme` covers `ghcr.io/acme/...`), so it may name no repository; give one
    /// with [`Target::with_repository`] for a meaningful pull scope.
    pub fn from_registry(registry: &Registry) -> Result<Target, TargetError> {
        let pattern = &registry.pattern;
        if pattern.host.is_wildcard() {
            return Err(TargetError::Wildcard(registry.name.clone()));
        }
        let (repository, repository_from) = if pattern.path.is_empty() {
            (None, None)
        } else {
            (Some(pattern.path.to_string()), Some(RepositorySource::Policy))
        };
        Ok(Target {
            name: Some(registry.name.clone()),
            registry_type: Some(registry.registry_type),
            host: pattern.host.key().to_owned(),
            repository,
            repository_from,
        })
    }

    /// The same target with another repository. On Docker Hub a one-component name is an
    /// official image (`nginx` is `library/nginx`), except when it comes from a policy entry,
    /// where it is a namespace prefix.
    pub fn with_repository(
        mut self,
        repository: &str,
        from: RepositorySource,
    ) -> Result<Target, TargetError> {
        let repository = repository.trim_matches('/');
        if !is_remote_name(repository) {
            return Err(TargetError::BadRepository);
        }
        let official = self.is_docker_hub() && from != RepositorySource::Policy && !repository.contains('/');
        self.repository =
            Some(if official { format!("library/{repository}") } else { repository.to_owned() });
        self.repository_from = Some(from);
        Ok(self)
    }

    pub fn is_docker_hub(&self) -> bool {
        self.host == DOCKER_HUB
    }

    /// The host name the API is reached at, without brackets or port.
    pub fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            return DOCKER_HUB_API_HOST;
        }
        let (name, _) = split_port(&self.host);
        name.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port: the one in the host, else 443 (80 for plain HTTP).
    pub fn port(&self, plain_http: bool) -> u16 {
        match split_port(&self.host) {
            (_, Some(port)) => port.parse().unwrap_or(443),
            (_, None) if plain_http => 80,
            (_, None) => 443,
        }
    }

    /// `https://api-host[:port]/v2/`, for messages.
    pub fn endpoint(&self, plain_http: bool) -> String {
        let scheme = if plain_http { "http" } else { "https" };
        let port = self.port(plain_http);
        let host = bracketed(self.api_host());
        if port == if plain_http { 80 } else { 443 } {
            format!("{scheme}://{host}/v2/")
        } else {
            format!("{scheme}://{host}:{port}/v2/")
        }
    }

    /// Whether the host looks like a private ECR registry
    /// (`ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]`).
    pub fn looks_like_ecr(&self) -> bool {
        let (name, _) = split_port(&self.host);
        self.registry_type == Some(RegistryType::Ecr)
            || (name.contains(".dkr.ecr")
                && (name.ends_with(".amazonaws.com") || name.ends_with(".amazonaws.com.cn")))
    }

    /// Whether the host is ECR Public.
    pub fn looks_like_ecr_public(&self) -> bool {
        self.registry_type == Some(RegistryType::EcrPublic) || self.host == "public.ecr.aws"
    }
}

/// An IPv6 address in brackets, anything else as it is.
pub fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// `name` and `port` of `name[:port]` or `[v6][:port]`.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let after_bracket = host.rfind(']').map_or(0, |i| i + 1);
    match host[after_bracket..].rfind(':') {
        Some(i) => (&host[..after_bracket + i], Some(&host[after_bracket + i + 1..])),
        None => (host, None),
    }
}

/// The canonical `name[:port]`: lower case, no `:443`, Docker Hub's aliases folded.
fn canonical_host(authority: &str) -> Result<String, TargetError> {
    if authority.is_empty() || !is_domain_and_port(authority) {
        return Err(TargetError::BadHost);
    }
    let lower = authority.to_ascii_lowercase();
    if let (_, Some(port)) = split_port(&lower)
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(TargetError::BadPort);
    }
    let host = lower.strip_suffix(":443").unwrap_or(&lower);
    if DOCKER_HUB_ALIASES.contains(&host) {
        return Ok(DOCKER_HUB.to_owned());
    }
    Ok(host.to_owned())
}

/// `acme/app:1.2` or `acme/app@sha256:...` as `acme/app`.
fn strip_tag_or_digest(path: &str) -> &str {
    let path = path.split_once('@').map_or(path, |(name, _)| name);
    let last_slash = path.rfind('/').map_or(0, |i| i + 1);
    match path[last_slash..].find(':') {
        Some(i) => &path[..last_slash + i],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn parsed(text: &str) -> (String, Option<String>) {
        let target = Target::parse(text).expect("parses");
        (target.host, target.repository)
    }

    #[test]
    fn hosts_urls_and_image_references() {
        assert_eq!(parsed("registry.example:5000"), ("registry.example:5000".into(), None));
        assert_eq!(parsed("https://GHCR.io/"), ("ghcr.io".into(), None));
        assert_eq!(parsed("https://ghcr.io/v2/"), ("ghcr.io".into(), None));
        assert_eq!(parsed("ghcr.io:443/acme/app"), ("ghcr.io".into(), Some("acme/app".into())));
        assert_eq!(parsed("ghcr.io/acme/app:1.2"), ("ghcr.io".into(), Some("acme/app".into())));
        assert_eq!(parsed("localhost:5000/a/b@sha256:abcd"), ("localhost:5000".into(), Some("a/b".into())));
        assert_eq!(parsed("[::1]:5000/x"), ("[::1]:5000".into(), Some("x".into())));
        let target = Target::parse("http://127.0.0.1:5000").expect("parses");
        assert_eq!((target.api_host(), target.port(true)), ("127.0.0.1", 5000));
        assert_eq!(Target::parse("[::1]:5000").expect("parses").api_host(), "::1");
        assert_eq!(Target::parse("[::1]:5000").expect("parses").endpoint(false), "https://[::1]:5000/v2/");
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        for text in ["docker.io", "index.docker.io", "https://registry-1.docker.io/", "DOCKER.IO:443"] {
            let target = Target::parse(text).expect("parses");
            assert_eq!(
                (target.host.as_str(), target.api_host()),
                (DOCKER_HUB, DOCKER_HUB_API_HOST),
                "{text}"
            );
            assert_eq!(target.endpoint(false), "https://registry-1.docker.io/v2/");
        }
        assert_eq!(parsed("docker.io/nginx").1.as_deref(), Some("library/nginx"));
        assert_eq!(parsed("docker.io/acme/app").1.as_deref(), Some("acme/app"));
    }

    #[test]
    fn policy_entries() {
        let policy = Policy::parse(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n\
             - {name: hub, type: Public, url: docker.io/library}\n\
             - {name: team, type: GHCR, url: ghcr.io/acme, pullSecret: s}\n\
             - {name: acr, type: ACR, url: '*.azurecr.io', pullSecret: s}\n",
        )
        .expect("valid");
        let hub = Target::from_registry(&policy.registries[0]).expect("hub");
        assert_eq!((hub.host.as_str(), hub.repository.as_deref()), ("docker.io", Some("library")));
        assert_eq!(hub.repository_from, Some(RepositorySource::Policy));
        let team = Target::from_registry(&policy.registries[1]).expect("team");
        assert_eq!((team.name.as_deref(), team.registry_type), (Some("team"), Some(RegistryType::Ghcr)));
        let team = team.with_repository("acme/app", RepositorySource::Option).expect("repository");
        assert_eq!(team.repository.as_deref(), Some("acme/app"));
        assert_eq!(Target::from_registry(&policy.registries[2]), Err(TargetError::Wildcard("acr".into())));
    }

    #[test]
    fn refusals_do_not_repeat_user_info() {
        let error = Target::parse("https://me:hunter2@ghcr.io/acme").expect_err("user info");
        assert_eq!(error, TargetError::UserInfo);
        assert!(!error.to_string().contains("hunter2"));
        assert!(matches!(Target::parse(""), Err(TargetError::Empty)));
        assert_eq!(Target::parse("ftp://ghcr.io"), Err(TargetError::Scheme));
        let error = Target::parse("ftp://me:hunter2@ghcr.io").expect_err("scheme");
        assert!(!error.to_string().contains("hunter2"));
        assert_eq!(Target::parse("ghcr.io:0"), Err(TargetError::BadPort));
        assert_eq!(Target::parse("ghcr.io:99999"), Err(TargetError::BadPort));
        assert_eq!(Target::parse("-bad-.example"), Err(TargetError::BadHost));
        assert_eq!(Target::parse("ghp_FAKETOKEN"), Err(TargetError::BadHost));
        assert_eq!(Target::parse("ghcr.io/Acme"), Err(TargetError::BadRepository));
    }

    #[test]
    fn ecr_hosts() {
        assert!(Target::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").expect("ecr").looks_like_ecr());
        assert!(
            Target::parse("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com").expect("ecr").looks_like_ecr()
        );
        assert!(!Target::parse("ghcr.io").expect("ghcr").looks_like_ecr());
        assert!(Target::parse("public.ecr.aws").expect("ecr public").looks_like_ecr_public());
    }
}
