//! The compiled matcher against a deliberately naive model of the policy's meaning, over random
//! policies and images. The model scans every entry with plain string operations; the matcher
//! must reach the same decision, the same registry and the same deny rule.

use std::cmp::Reverse;

use proptest::prelude::*;
use registry_gate::image::Reference;
use registry_gate::policy::{Decision, Denial, Namespace, Policy, RegistryPattern};

const HOSTS: &[&str] = &[
    "ghcr.io",
    "GHCR.io",
    "registry.example.com",
    "registry.example.com:5000",
    "registry.example.com:443",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "a.azurecr.io",
    "*.azurecr.io",
    "x.*.corp.example",
    "x.y.corp.example",
    "*.example.com",
    "[::1]:5000",
    "myrepo.com",
    "myrepo.com.evil.io",
    "localhost:5000",
];
const PATHS: &[&str] = &["", "acme", "acme/team", "acme-evil", "library", "library/nginx", "team", "x/y/z"];
const IMAGE_PATHS: &[&str] = &[
    "acme/team/app",
    "acme/app",
    "acme-evil/app",
    "nginx",
    "library/nginx",
    "acme",
    "team/a",
    "x/y/z/w",
    "x/y",
];
const NAMESPACES: &[&str] = &["prod-1", "dev", "other"];
/// Few hosts and many paths, so that hosts hold more prefixes than the matcher scans and it
/// hashes them instead, at several depths.
const CROWDED_HOSTS: &[&str] = &["ghcr.io", "GHCR.io", "*.azurecr.io", "a.azurecr.io", "docker.io"];
const CROWDED_PATHS: &[&str] = &[
    "",
    "acme",
    "acme/team",
    "acme/team/x",
    "acme-evil",
    "library",
    "library/nginx",
    "team",
    "team/a",
    "x",
    "x/y",
    "x/y/z",
    "o1",
    "o2",
    "o3",
    "o4",
    "o5",
    "o6",
    "o7",
    "o8",
];
const CROWDED_IMAGE_PATHS: &[&str] = &[
    "acme/team/x/app",
    "acme/team/app",
    "acme/app",
    "acme-evil/app",
    "nginx",
    "library/nginx",
    "team/a/b",
    "team/b",
    "x/y/z/w",
    "x/y",
    "x",
    "o3/app",
    "o8",
    "o9/app",
];

#[derive(Debug, Clone)]
struct Entry {
    url: String,
    namespaces: Option<&'static str>,
}

fn url(hosts: &'static [&'static str], paths: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(hosts), prop::sample::select(paths))
        .prop_map(|(host, path)| if path.is_empty() { host.to_owned() } else { format!("{host}/{path}") })
}

fn entry(hosts: &'static [&'static str], paths: &'static [&'static str]) -> impl Strategy<Value = Entry> {
    let scope = prop::option::of(prop::sample::select(&["prod-*", "dev", "dev,prod-1"][..]));
    (url(hosts, paths), scope).prop_map(|(url, namespaces)| Entry { url, namespaces })
}

fn image(hosts: &'static [&'static str], paths: &'static [&'static str]) -> impl Strategy<Value = String> {
    let host = prop::option::of(prop::sample::select(hosts).prop_filter("a real host", |h| !h.contains('*')));
    (host, prop::sample::select(paths)).prop_map(|(host, path)| match host {
        Some(host) => format!("{host}/{path}:1"),
        None => path.to_owned(),
    })
}

/// Writes the policy YAML, dropping entries that repeat a registry (the policy refuses those).
fn policy_text(entries: &[Entry], deny: &[String]) -> (String, Vec<Entry>, Vec<String>) {
    let canonical = |url: &str| RegistryPattern::parse(url).expect("pool URLs are valid").to_string();
    let mut kept: Vec<Entry> = Vec::new();
    for entry in entries {
        if !kept.iter().any(|k| canonical(&k.url) == canonical(&entry.url)) {
            kept.push(entry.clone());
        }
    }
    let mut kept_deny: Vec<String> = Vec::new();
    for url in deny {
        if !kept_deny.iter().any(|k| canonical(k) == canonical(url)) {
            kept_deny.push(url.clone());
        }
    }
    let mut text = String::from("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n");
    text += if kept.is_empty() { "registries: []\n" } else { "registries:\n" };
    for (i, entry) in kept.iter().enumerate() {
        text += &format!("  - name: r{i}\n    type: Generic\n    url: \"{}\"\n", entry.url);
        if let Some(namespaces) = entry.namespaces {
            text += &format!("    namespaces: [{namespaces}]\n");
        }
    }
    text += "deny:\n";
    for url in &kept_deny {
        text += &format!("  - url: \"{url}\"\n");
    }
    (text, kept, kept_deny)
}

// === The naive model ===

fn canonical_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix(":443").unwrap_or(&lower).to_owned();
    if lower == "index.docker.io" || lower == "registry-1.docker.io" { "docker.io".to_owned() } else { lower }
}

/// (host, path) of a policy URL, with the host canonical.
fn split_url(url: &str) -> (String, String) {
    let (host, path) = url.split_once('/').unwrap_or((url, ""));
    (canonical_host(host), path.to_owned())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == host;
    }
    if host.starts_with('[') {
        return false;
    }
    let (pattern_name, pattern_port) = pattern.split_at(pattern.find(':').unwrap_or(pattern.len()));
    let (name, port) = host.split_at(host.find(':').unwrap_or(host.len()));
    let pattern_labels: Vec<&str> = pattern_name.split('.').collect();
    let labels: Vec<&str> = name.split('.').collect();
    pattern_port == port
        && pattern_labels.len() == labels.len()
        && pattern_labels.iter().zip(&labels).all(|(p, l)| *p == "*" || p == l)
}

fn path_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Larger is more specific: deeper path, then exact host, then fewer wildcards, then wildcards
/// further left.
fn specificity(url: &str) -> (usize, bool, Reverse<u32>, u64) {
    let (host, path) = split_url(url);
    let depth = if path.is_empty() { 0 } else { path.split('/').count() };
    let name = host.split(':').next().unwrap_or_default();
    let mut mask = 0u64;
    for (from_right, label) in name.split('.').rev().enumerate() {
        if label == "*" {
            mask |= 1 << from_right;
        }
    }
    (depth, mask == 0, Reverse(mask.count_ones()), mask)
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Allowed(String),
    NotInNamespace(String),
    Denied(String),
    Unregistered,
}

fn model(entries: &[Entry], deny: &[String], image: &str, namespace: &str) -> Verdict {
    let reference = Reference::parse(image).expect("pool images are valid");
    let host = canonical_host(reference.domain());
    let path = reference.path().to_string();
    let covers = |url: &str| {
        let (pattern_host, prefix) = split_url(url);
        host_matches(&pattern_host, &host) && path_matches(&prefix, &path)
    };
    if let Some(rule) = deny.iter().filter(|u| covers(u)).max_by_key(|u| specificity(u)) {
        return Verdict::Denied(rule.clone());
    }
    let best =
        entries.iter().enumerate().filter(|(_, e)| covers(&e.url)).max_by_key(|(_, e)| specificity(&e.url));
    match best {
        None => Verdict::Unregistered,
        Some((i, entry)) => {
            let admitted = entry.namespaces.is_none_or(|list| {
                list.split(',')
                    .any(|p| p == namespace || p.strip_suffix('*').is_some_and(|s| namespace.starts_with(s)))
            });
            if admitted {
                Verdict::Allowed(format!("r{i}"))
            } else {
                Verdict::NotInNamespace(format!("r{i}"))
            }
        }
    }
}

fn matcher(policy: &Policy, deny: &[String], image: &str, namespace: &str) -> Verdict {
    let reference = Reference::parse(image).expect("pool images are valid");
    match policy.decide(&reference, &Namespace::named(namespace)) {
        Decision::Allowed(registry) => Verdict::Allowed(registry.name.clone()),
        Decision::Denied(Denial::NamespaceNotAllowed(registry)) => {
            Verdict::NotInNamespace(registry.name.clone())
        }
        Decision::Denied(Denial::DenyListed(rule)) => {
            Verdict::Denied(deny.iter().find(|u| **u == rule.url).cloned().unwrap_or_default())
        }
        Decision::Denied(Denial::Unregistered) => Verdict::Unregistered,
        Decision::Denied(Denial::InvalidReference(e)) => panic!("{image}: {e}"),
        // The model's policies set no tag rules and no exceptions.
        Decision::Excepted(exception, _) => panic!("{image}: excepted by {}", exception.reason),
        Decision::Denied(Denial::TagRule(registry, rule)) => panic!("{image}: {rule:?} of {}", registry.name),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_matcher_agrees_with_the_naive_model(
        entries in prop::collection::vec(entry(HOSTS, PATHS), 0..14),
        deny in prop::collection::vec(url(HOSTS, PATHS), 0..3),
        images in prop::collection::vec(image(HOSTS, IMAGE_PATHS), 1..24),
        namespace in prop::sample::select(NAMESPACES),
    ) {
        agree(&entries, &deny, &images, namespace)?;
    }

    #[test]
    fn crowded_hosts_agree_with_the_naive_model(
        entries in prop::collection::vec(entry(CROWDED_HOSTS, CROWDED_PATHS), 8..48),
        deny in prop::collection::vec(url(CROWDED_HOSTS, CROWDED_PATHS), 0..16),
        images in prop::collection::vec(image(CROWDED_HOSTS, CROWDED_IMAGE_PATHS), 1..24),
        namespace in prop::sample::select(NAMESPACES),
    ) {
        agree(&entries, &deny, &images, namespace)?;
    }
}

fn agree(
    entries: &[Entry],
    deny: &[String],
    images: &[String],
    namespace: &str,
) -> Result<(), TestCaseError> {
    let (text, entries, deny) = policy_text(entries, deny);
    let policy = Policy::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
    for image in images {
        prop_assert_eq!(
            matcher(&policy, &deny, image, namespace),
            model(&entries, &deny, image, namespace),
            "image {} in namespace {}, policy:\n{}",
            image,
            namespace,
            text
        );
    }
    Ok(())
}
