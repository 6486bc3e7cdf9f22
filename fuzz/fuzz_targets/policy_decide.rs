#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use registry_gate::image::DOCKER_HUB;
use registry_gate::policy::{Decision, Denial, DenyRule, Namespace, Policy, Registry, RegistryPattern};

/// Wildcards in every position the matcher treats differently: leading, inner, several, with a
/// port; many labels; IPv6; `:443`; deny rules on wildcard hosts; namespace scopes.
const WIDE: &str = r#"
apiVersion: registry-gate.io/v1
kind: RegistryPolicy
exemptNamespaces: [kube-system]
registries:
  - {name: hub-official, type: Public, url: docker.io/library}
  - {name: ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}
  - {name: ecr-any-region, type: ECR, url: "123456789012.dkr.ecr.*.amazonaws.com", pullSecret: ecr}
  - {name: ecr-any-account, type: ECR, url: "*.dkr.ecr.us-east-1.amazonaws.com/team"}
  - {name: ecr-dual-stack, type: ECR, url: "123456789012.dkr-ecr.*.on.aws"}
  - {name: acr, type: ACR, url: "*.azurecr.io", pullSecret: acr-creds}
  - {name: acr-team, type: ACR, url: "acmeteam.azurecr.io/team", namespaces: ["prod-*"]}
  - {name: deep, type: Generic, url: "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.example.com/x/y/z"}
  - {name: deep-wild, type: Generic, url: "a.*.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.example.com"}
  - {name: inner, type: Generic, url: "registry.*.*.corp.example:5000"}
  - {name: ported, type: Generic, url: "*.corp.example:5000", namespaces: [lab, "dev-*"]}
  - {name: two-leading, type: Generic, url: "*.*.build.example"}
  - {name: corp, type: Generic, url: "registry.corp.example:5000", pullSecret: corp-pull, namespaces: [shop, "prod-*"]}
  - {name: loopback-v6, type: Generic, url: "[::1]:5000"}
  - {name: local, type: Generic, url: "localhost:5000/dev"}
  - {name: https-port, type: Generic, url: "https://Registry.Example.com:443/team/"}
deny:
  - {url: docker.io/library/busybox, reason: debug images}
  - {url: "123456789012.dkr.ecr.*.amazonaws.com/forbidden"}
  - {url: "*.azurecr.io/untrusted"}
  - {url: "registry.corp.example:5000/shop/legacy"}
  - {url: "a.*.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.example.com/x"}
"#;

const MIRRORED: &str = r#"
apiVersion: registry-gate.io/v1
kind: RegistryPolicy
mode: audit
shortNameRegistry: Mirror.Corp.Example:5000
registries:
  - {name: mirror, type: Generic, url: "mirror.corp.example:5000/library"}
  - {name: gar, type: GAR, url: europe-west4-docker.pkg.dev/acme-prod/containers}
  - {name: any-region, type: Generic, url: "registry.*.example.com:443"}
deny:
  - {url: docker.io/library/busybox}
  - {url: "*.docker.io/evil"}
"#;

/// `monitoring` is where the example policy's exception applies.
const NAMESPACES: [&str; 9] =
    ["shop", "prod-payments", "lab", "dev-x", "kube-system", "marketing", "", "prod-", "monitoring"];

fn policies() -> &'static [Policy; 3] {
    static POLICIES: OnceLock<[Policy; 3]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        [WIDE, MIRRORED, include_str!("../../policy/example-all-types.yaml")]
            .map(|text| Policy::parse(text).expect("the fuzz policies are valid"))
    })
}

/// The naive meaning of an entry: a plain comparison against the host and path. Docker Hub's
/// other names are folded into docker.io before lookup, so a wildcard over one covers it.
fn covers(pattern: &RegistryPattern, host: &str, path: &str) -> bool {
    let prefix = &*pattern.path;
    let under = |rest: &str| rest.is_empty() || rest.starts_with('/');
    let hub = host == DOCKER_HUB && pattern.host.covers_docker_hub_alias();
    (hub || pattern.host.matches(host)) && (prefix.is_empty() || path.strip_prefix(prefix).is_some_and(under))
}

/// An entry's naive meaning: `match: exact` admits its one repository and nothing under it.
fn entry_covers(registry: &Registry, host: &str, path: &str) -> bool {
    match registry.exact {
        true => covers(&registry.pattern, host, path) && path == &*registry.pattern.path,
        false => covers(&registry.pattern, host, path),
    }
}

fn check(policy: &Policy, image: &str, namespace: &str) {
    let (reference, decision) = policy.check(image, &Namespace::named(namespace));
    if let Decision::Denied(denial) = &decision {
        drop(policy.denial_message(reference.as_ref(), denial, &Namespace::named(namespace)));
    }
    let Some(reference) = reference else { return };
    let domain = if reference.is_short_name() { policy.short_name_host.key() } else { reference.domain() };
    // A host longer than the canonicalisation buffer is refused when it needs rewriting (upper
    // case, `:443`) and may fit a wildcard when it does not; no DNS name is that long, so either
    // answer is acceptable.
    if domain.len() > 272 {
        return;
    }
    let lower = domain.to_ascii_lowercase();
    let host = match lower.strip_suffix(":443").unwrap_or(&lower) {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        host => host,
    };
    let path = reference.path().to_string();
    // A short name pulled from a mirror still names a Docker Hub image, so Hub's deny rules apply.
    let mirrored = reference.is_short_name() && host != DOCKER_HUB;
    let deny_covers = |rule: &DenyRule| {
        covers(&rule.pattern, host, &path) || (mirrored && covers(&rule.pattern, DOCKER_HUB, &path))
    };
    let denied = policy.deny.iter().any(deny_covers);
    let allowed = policy.registries.iter().any(|registry| entry_covers(registry, host, &path));
    let in_scope = |r: &Registry| r.admits_namespace(&Namespace::named(namespace));
    let consistent = match decision {
        Decision::Allowed(r) => {
            !denied
                && entry_covers(r, host, &path)
                && in_scope(r)
                && r.tag_rules.broken_by(&reference).is_none()
        }
        Decision::Denied(Denial::NamespaceNotAllowed(r)) => {
            !denied && entry_covers(r, host, &path) && !in_scope(r)
        }
        Decision::Denied(Denial::TagRule(r, rule)) => {
            !denied
                && entry_covers(r, host, &path)
                && in_scope(r)
                && r.tag_rules.broken_by(&reference) == Some(rule)
        }
        Decision::Denied(Denial::DenyListed(rule)) => deny_covers(rule),
        Decision::Denied(Denial::Unregistered) => !denied && !allowed,
        Decision::Denied(Denial::InvalidReference(_)) => false,
        // Admitted by an exception in force that names the image (or its repository) and the
        // namespace; the rules alone would have refused it.
        Decision::Excepted(exception, _) => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            !exception.is_expired(i64::try_from(now).unwrap_or(i64::MAX))
                && exception.covers(&reference, policy.short_name_host.key(), namespace)
        }
    };
    assert!(consistent, "{image:?} in {namespace:?}: {decision:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let namespace = NAMESPACES[usize::from(selector) % NAMESPACES.len()];
    let text = String::from_utf8_lossy(rest);
    // The rest of the selector lengthens the first label, so that long labels and long hosts
    // come up without the fuzzer having to grow the input that far.
    let padding = "a".repeat(usize::from(selector / 8) * 16);
    let host_and_path = text.split_once('\n').map(|(host, path)| format!("{padding}{host}/{path}"));
    for policy in policies() {
        check(policy, &text, namespace);
        if let Some(image) = &host_and_path {
            check(policy, image, namespace);
        }
    }
});
