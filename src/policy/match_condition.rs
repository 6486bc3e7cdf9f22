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
//!   on that host, unless the Pod already lists the pull secret of every entry on that host.
//!
//! That last part skips Pods whose template names the pull secrets, and the second call the API
//! server makes after another mutating webhook (a sidecar injector) has changed a Pod that
//! registry-gate had already given its secrets (`reinvocationPolicy: IfNeeded`).
//!
//! The condition is not the policy: the validating webhook still sees every Pod, and the mutating
//! webhook still decides what to add. A policy too large for a condition that the API server
//! evaluates cheaply gets none ([`MAX_HOSTS`], [`MAX_SUFFIXES`], [`MAX_NAMES`]), and every Pod is
//! sent.

use std::collections::{BTreeMap, BTreeSet};
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

/// Pull-secret names at most, over all hosts (a host's names are compared with the Pod's).
pub const MAX_NAMES: usize = 4_000;

/// Docker Hub's names as the first component of an image string.
const DOCKER_HUB_NAMES: [&str; 3] = [DOCKER_HUB, "index.docker.io", "registry-1.docker.io"];

/// The strings an image's first component is compared with, each with the pull secrets of the
/// entries it may match.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hosts {
    /// Whole hosts, lower case, as an image may write them.
    exact: BTreeMap<String, BTreeSet<String>>,
    /// Endings of hosts that a wildcard covers.
    suffixes: BTreeMap<String, BTreeSet<String>>,
    /// The pull secrets of the entries a short name (`nginx`, `team/app`) may match.
    short_names: BTreeSet<String>,
}

impl Hosts {
    fn of(policy: &Policy) -> Hosts {
        let mut hosts = Hosts::default();
        let with_secret = policy
            .registries
            .iter()
            .filter_map(|registry| Some((&registry.pattern.host, registry.pull_secret.as_deref()?)));
        let is_docker_hub = |host: &HostPattern| host.matches(DOCKER_HUB) || host.covers_docker_hub_alias();
        let short_name_host = policy.short_name_host.key();
        for (host, secret) in with_secret {
            let portless = host.name().len() == host.key().len();
            if host.is_wildcard() {
                let key = host.key();
                let after_last_wildcard = &key[key.rfind('*').map_or(0, |at| at + 1)..];
                add(&mut hosts.suffixes, after_last_wildcard, portless, secret);
            } else {
                add(&mut hosts.exact, host.key(), portless, secret);
            }
            if is_docker_hub(host) {
                for name in DOCKER_HUB_NAMES {
                    add(&mut hosts.exact, name, true, secret);
                }
            }
            if host.matches(short_name_host) || (short_name_host == DOCKER_HUB && is_docker_hub(host)) {
                hosts.short_names.insert(secret.to_owned());
            }
        }
        hosts
    }

    /// Pull-secret names the expression spells out, over all hosts.
    fn secret_names(&self) -> usize {
        let names =
            |table: &BTreeMap<String, BTreeSet<String>>| table.values().map(BTreeSet::len).sum::<usize>();
        names(&self.exact) + names(&self.suffixes) + self.short_names.len()
    }
}

/// Files `secret` under `host`, and under `host:443` when it has no port (the same endpoint,
/// which the webhook folds away before matching).
fn add(table: &mut BTreeMap<String, BTreeSet<String>>, host: &str, portless: bool, secret: &str) {
    let host = host.to_ascii_lowercase();
    if portless {
        table.entry(format!("{host}:443")).or_default().insert(secret.to_owned());
    }
    table.entry(host).or_default().insert(secret.to_owned());
}

/// The condition's CEL expression for `policy`, or `None` when the policy has more hosts than a
/// cheap condition can hold (then the webhook should have no such condition, and is sent every
/// Pod). `false` when no registry has a pull secret.
pub fn needs_pull_secret(policy: &Policy) -> Option<String> {
    expression(&Hosts::of(policy))
}

/// A CEL list literal of the names.
fn list(names: &BTreeSet<String>) -> String {
    let quoted: Vec<String> = names.iter().map(|name| quoted(name)).collect();
    format!("[{}]", quoted.join(", "))
}

fn expression(hosts: &Hosts) -> Option<String> {
    if hosts.exact.len() > MAX_HOSTS
        || hosts.suffixes.len() > MAX_SUFFIXES
        || hosts.secret_names() > MAX_NAMES
    {
        return None;
    }
    if hosts.exact.is_empty() && hosts.suffixes.is_empty() && hosts.short_names.is_empty() {
        return Some("false".into());
    }
    let map: Vec<String> =
        hosts.exact.iter().map(|(host, names)| format!("{}: {}", quoted(host), list(names))).collect();
    // A host needs the call when one of its entries' pull secrets is not listed in the Pod yet:
    // a Pod that lists them all (its template names them, or the webhook has added them and is
    // asked again after another webhook's change) would get no patch.
    let unlisted = |names: &str| format!("{names}.exists(n, !(n in listed))");
    let mut host_matches = format!("(h in hosts && {})", unlisted("hosts[h]"));
    for (suffix, names) in &hosts.suffixes {
        let _ = write!(host_matches, " || (h.endsWith({}) && {})", quoted(suffix), unlisted(&list(names)));
    }
    // Each image is named `i`; `[x].exists(h, ...)` binds a value to a name without `cel.bind`,
    // which older API servers lack.
    let mut needs = format!("(i.contains('/') && [i.split('/')[0].lowerAscii()].exists(h, {host_matches}))");
    if !hosts.short_names.is_empty() {
        needs = format!(
            "((!i.contains('/') || [i.split('/')[0]].exists(f, \
             !(f.contains('.') || f.contains(':') || f == 'localhost'))) && {}) || {needs}",
            unlisted(&list(&hosts.short_names))
        );
    }
    Some(format!(
        "[{{{}}}].exists(hosts, \
         [has(object.spec.imagePullSecrets) ? object.spec.imagePullSecrets.map(s, has(s.name) ? s.name : '') : []].exists(listed, (\
         (has(object.spec.containers) ? object.spec.containers.map(c, has(c.image) ? c.image : '') : []) + \
         (has(object.spec.initContainers) ? object.spec.initContainers.map(c, has(c.image) ? c.image : '') : []) + \
         (has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers.map(c, has(c.image) ? c.image : '') : []) + \
         (has(object.spec.volumes) ? object.spec.volumes.filter(v, has(v.image) && has(v.image.reference)).map(v, v.image.reference) : [])\
         ).exists(i, {needs})))",
        map.join(", ")
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

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn no_pull_secret_means_never_called() {
        let p = policy("  - {name: hub, type: Public, url: docker.io/library}\n", "");
        assert_eq!(needs_pull_secret(&p).as_deref(), Some("false"));
    }

    #[test]
    fn hosts_are_lower_case_with_and_without_443_and_carry_their_entries_secrets() {
        let p = policy(
            "  - {name: a, type: GHCR, url: GHCR.io/acme, pullSecret: s}\n  \
             - {name: a2, type: GHCR, url: ghcr.io/other, pullSecret: s2}\n  \
             - {name: b, type: Generic, url: 'registry.corp.example:5000', pullSecret: t}\n  \
             - {name: c, type: Public, url: quay.io}\n",
            "",
        );
        let hosts = Hosts::of(&p);
        let exact: Vec<&str> = hosts.exact.keys().map(String::as_str).collect();
        assert_eq!(exact, ["ghcr.io", "ghcr.io:443", "registry.corp.example:5000"]);
        assert_eq!(names(&hosts.exact["ghcr.io:443"]), ["s", "s2"]);
        assert_eq!(names(&hosts.exact["registry.corp.example:5000"]), ["t"]);
        assert!(hosts.suffixes.is_empty());
        assert!(hosts.short_names.is_empty(), "short names resolve to Docker Hub, which has no pull secret");
        let expression = expression(&hosts).expect("a condition");
        assert!(expression.contains("'ghcr.io': ['s', 's2']"), "{expression}");
    }

    #[test]
    fn docker_hub_brings_its_other_names_and_short_names() {
        let p = policy("  - {name: hub, type: DockerHub, url: docker.io/acme, pullSecret: hub}\n", "");
        let hosts = Hosts::of(&p);
        for name in DOCKER_HUB_NAMES {
            assert_eq!(names(&hosts.exact[name]), ["hub"], "{name}");
        }
        assert_eq!(names(&hosts.short_names), ["hub"]);
    }

    #[test]
    fn a_mirror_for_short_names_with_a_secret_sends_short_names() {
        let p = policy(
            "  - {name: mirror, type: Generic, url: mirror.example.com, pullSecret: m}\n",
            "shortNameRegistry: mirror.example.com\n",
        );
        assert_eq!(names(&Hosts::of(&p).short_names), ["m"]);
        let p = policy(
            "  - {name: mirror, type: Generic, url: mirror.example.com}\n  \
             - {name: other, type: Generic, url: other.example.com, pullSecret: o}\n",
            "shortNameRegistry: mirror.example.com\n",
        );
        assert!(Hosts::of(&p).short_names.is_empty());
    }

    #[test]
    fn wildcards_become_suffixes_after_the_last_star() {
        let p = policy(
            "  - {name: acr, type: ACR, url: '*.azurecr.io', pullSecret: a}\n  \
             - {name: mid, type: Generic, url: 'registry.*.corp.example:5000', pullSecret: b}\n",
            "",
        );
        let hosts = Hosts::of(&p);
        let suffixes: Vec<&str> = hosts.suffixes.keys().map(String::as_str).collect();
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
        let set: BTreeSet<String> = ["b".to_owned(), "a".to_owned()].into();
        assert_eq!(list(&set), "['a', 'b']");
    }
}
