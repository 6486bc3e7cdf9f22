//! The CEL `matchCondition` that lets the API server skip the mutating webhook for Pods that
//! need no pull secret.
//!
//! Every call to a webhook costs the API server a review to encode, a round trip and an answer
//! to decode, whatever the webhook decides (benches/RESULTS.md: about 0.6 ms per mutating call,
//! against 0.04 ms of registry-gate's own time). Most Pods in most clusters pull only from
//! registries that need no pull secret (public images, registries the nodes' own credentials
//! cover), and for those the mutating call can only answer "no change".
//!
//! The condition is derived from the policy's hosts that have a pull secret, and it is a
//! **superset**: it may send a Pod that needs nothing (then the webhook answers with no patch, as
//! without the condition), but never skips one that needs a secret. To stay on that side it reads
//! image strings more loosely than the webhook does:
//!
//! - the host is everything before the first `/`, in ASCII lower case, compared with each host
//!   as written, with `:443`, and (for Docker Hub) under its other names;
//! - a first component counts as a short name (Docker Hub, or `shortNameRegistry`) unless it has
//!   a `.` or a `:` or is `localhost`; upper case, which the parser reads as a host, counts both
//!   ways;
//! - a wildcard host matches every host ending in what follows its last `*`, whatever the
//!   labels before it;
//! - paths and namespaces are ignored: a host with a pull secret for one path sends every image
//!   on that host.
//!
//! The condition is not the policy: the validating webhook still sees every Pod, and the mutating
//! webhook still decides what to add. A policy too large for a condition that the API server
//! evaluates cheaply gets none ([`MAX_HOSTS`], [`MAX_SUFFIXES`]), and every Pod is sent.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{HostPattern, Policy};
use crate::image::DOCKER_HUB;

/// The name of the condition in the mutating webhook's `matchConditions`.
pub const NAME: &str = "registry-gate-needs-pull-secret";

/// Exact host strings at most. The hosts are a map literal, built once per evaluation; the
/// API server's cost limit per evaluation (1,000,000 units) then leaves room for Pods with
/// thousands of images.
pub const MAX_HOSTS: usize = 2_000;

/// Wildcard suffixes at most: each is an `endsWith` per image.
pub const MAX_SUFFIXES: usize = 32;

/// Docker Hub's names as the first component of an image string.
const DOCKER_HUB_NAMES: [&str; 3] = [DOCKER_HUB, "index.docker.io", "registry-1.docker.io"];

/// The strings an image's first component is compared with.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hosts {
    /// Whole hosts, lower case, as an image may write them.
    exact: BTreeSet<String>,
    /// Endings of hosts that a wildcard covers.
    suffixes: BTreeSet<String>,
    /// Whether a short name (`nginx`, `team/app`) resolves to a host with a pull secret.
    short_names: bool,
}

impl Hosts {
    fn of(policy: &Policy) -> Hosts {
        let mut hosts = Hosts::default();
        let secret_hosts: Vec<&HostPattern> = policy
            .registries
            .iter()
            .filter(|registry| registry.pull_secret.is_some())
            .map(|registry| &registry.pattern.host)
            .collect();
        let docker_hub =
            secret_hosts.iter().any(|host| host.matches(DOCKER_HUB) || host.covers_docker_hub_alias());
        for host in &secret_hosts {
            if host.is_wildcard() {
                let key = host.key();
                let after_last_wildcard = &key[key.rfind('*').map_or(0, |at| at + 1)..];
                hosts.add(after_last_wildcard, host.name().len() == key.len(), |h| &mut h.suffixes);
            } else {
                hosts.add(host.key(), host.name().len() == host.key().len(), |h| &mut h.exact);
            }
        }
        if docker_hub {
            for name in DOCKER_HUB_NAMES {
                hosts.add(name, true, |h| &mut h.exact);
            }
        }
        let short_name_host = policy.short_name_host.key();
        hosts.short_names = (short_name_host == DOCKER_HUB && docker_hub)
            || secret_hosts.iter().any(|host| host.matches(short_name_host));
        hosts
    }

    /// Adds `host`, and `host:443` when it has no port (the same endpoint, which the webhook
    /// folds away before matching).
    fn add(&mut self, host: &str, portless: bool, to: fn(&mut Hosts) -> &mut BTreeSet<String>) {
        let host = host.to_ascii_lowercase();
        if portless {
            to(self).insert(format!("{host}:443"));
        }
        to(self).insert(host);
    }
}

/// The condition's CEL expression for `policy`, or `None` when the policy has more hosts than a
/// cheap condition can hold (then the webhook should have no such condition, and is sent every
/// Pod). `false` when no registry has a pull secret.
pub fn needs_pull_secret(policy: &Policy) -> Option<String> {
    expression(&Hosts::of(policy))
}

fn expression(hosts: &Hosts) -> Option<String> {
    if hosts.exact.len() > MAX_HOSTS || hosts.suffixes.len() > MAX_SUFFIXES {
        return None;
    }
    if hosts.exact.is_empty() && hosts.suffixes.is_empty() && !hosts.short_names {
        return Some("false".into());
    }
    let mut map = String::from("{");
    for (i, host) in hosts.exact.iter().enumerate() {
        let separator = if i == 0 { "" } else { ", " };
        let _ = write!(map, "{separator}{}: true", quoted(host));
    }
    map.push('}');
    let mut host_matches = String::from("h in hosts");
    for suffix in &hosts.suffixes {
        let _ = write!(host_matches, " || h.endsWith({})", quoted(suffix));
    }
    // Each image is named `i`; `[x].exists(h, ...)` binds a value to a name without `cel.bind`,
    // which older API servers lack.
    let host_of_image = format!("[i.split('/')[0].lowerAscii()].exists(h, {host_matches})");
    let needs = if hosts.short_names {
        format!(
            "!i.contains('/') || [i.split('/')[0]].exists(f, \
             !(f.contains('.') || f.contains(':') || f == 'localhost')) || {host_of_image}"
        )
    } else {
        format!("i.contains('/') && {host_of_image}")
    };
    Some(format!(
        "[{map}].exists(hosts, (\
         (has(object.spec.containers) ? object.spec.containers.map(c, has(c.image) ? c.image : '') : []) + \
         (has(object.spec.initContainers) ? object.spec.initContainers.map(c, has(c.image) ? c.image : '') : []) + \
         (has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers.map(c, has(c.image) ? c.image : '') : []) + \
         (has(object.spec.volumes) ? object.spec.volumes.filter(v, has(v.image) && has(v.image.reference)).map(v, v.image.reference) : [])\
         ).exists(i, {needs}))"
    ))
}

/// A CEL string literal: single quotes, with backslashes and quotes escaped. Policy hosts are
/// DNS names, ports and IPv6 brackets, so this only guards against a future change there.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if matches!(c, '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(registries: &str, extra: &str) -> Policy {
        let text = format!(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n{extra}registries:\n{registries}"
        );
        Policy::parse(&text).expect("valid test policy")
    }

    #[test]
    fn no_pull_secret_means_never_called() {
        let p = policy("  - {name: hub, type: Public, url: docker.io/library}\n", "");
        assert_eq!(needs_pull_secret(&p).as_deref(), Some("false"));
    }

    #[test]
    fn hosts_are_lower_case_with_and_without_443() {
        let p = policy(
            "  - {name: a, type: GHCR, url: GHCR.io/acme, pullSecret: s}\n  \
             - {name: b, type: Generic, url: 'registry.corp.example:5000', pullSecret: t}\n  \
             - {name: c, type: Public, url: quay.io}\n",
            "",
        );
        let hosts = Hosts::of(&p);
        let exact: Vec<&str> = hosts.exact.iter().map(String::as_str).collect();
        assert_eq!(exact, ["ghcr.io", "ghcr.io:443", "registry.corp.example:5000"]);
        assert!(hosts.suffixes.is_empty());
        assert!(!hosts.short_names, "short names resolve to Docker Hub, which has no pull secret");
    }

    #[test]
    fn docker_hub_brings_its_other_names_and_short_names() {
        let p = policy("  - {name: hub, type: DockerHub, url: docker.io/acme, pullSecret: hub}\n", "");
        let hosts = Hosts::of(&p);
        for name in DOCKER_HUB_NAMES {
            assert!(hosts.exact.contains(name), "{name} missing from {:?}", hosts.exact);
        }
        assert!(hosts.short_names);
    }

    #[test]
    fn a_mirror_for_short_names_with_a_secret_sends_short_names() {
        let p = policy(
            "  - {name: mirror, type: Generic, url: mirror.example.com, pullSecret: m}\n",
            "shortNameRegistry: mirror.example.com\n",
        );
        assert!(Hosts::of(&p).short_names);
        let p = policy(
            "  - {name: mirror, type: Generic, url: mirror.example.com}\n  \
             - {name: other, type: Generic, url: other.example.com, pullSecret: o}\n",
            "shortNameRegistry: mirror.example.com\n",
        );
        assert!(!Hosts::of(&p).short_names);
    }

    #[test]
    fn wildcards_become_suffixes_after_the_last_star() {
        let p = policy(
            "  - {name: acr, type: ACR, url: '*.azurecr.io', pullSecret: a}\n  \
             - {name: mid, type: Generic, url: 'registry.*.corp.example:5000', pullSecret: b}\n",
            "",
        );
        let suffixes: Vec<String> = Hosts::of(&p).suffixes.into_iter().collect();
        assert_eq!(suffixes, [".azurecr.io", ".azurecr.io:443", ".corp.example:5000"]);
    }

    #[test]
    fn too_many_hosts_means_no_condition() {
        let many: String = (0..=MAX_HOSTS / 2)
            .map(|i| format!("  - {{name: r{i}, type: Generic, url: r{i}.example.com, pullSecret: s}}\n"))
            .collect();
        assert_eq!(needs_pull_secret(&policy(&many, "")), None);
        let few: String = (0..MAX_HOSTS / 2 - 1)
            .map(|i| format!("  - {{name: r{i}, type: Generic, url: r{i}.example.com, pullSecret: s}}\n"))
            .collect();
        assert!(needs_pull_secret(&policy(&few, "")).is_some());
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quoted("ghcr.io"), "'ghcr.io'");
        assert_eq!(quoted(r"a'b\c"), r"'a\'b\\c'");
    }
}
