//! `registry-gate policy import`: Gatekeeper and Kyverno policies converted, then decided by
//! registry-gate, with the prefix-string bypasses they had closed and each change of meaning
//! noted (docs/migrating.md). The peer policies below are written here in the shape of the
//! peers' published examples (Gatekeeper's `K8sAllowedRepos`, Kyverno's
//! `restrict-image-registries`); they are not copies of them.

use std::path::Path;
use std::process::{Command, Output};

fn registry_gate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-gate"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

const GATEKEEPER: &str = r#"apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sAllowedRepos
metadata:
  name: allowed-repos
spec:
  enforcementAction: deny
  match:
    kinds:
      - apiGroups: [""]
        kinds: ["Pod"]
    excludedNamespaces: ["kube-system"]
  parameters:
    repos:
      - "gcr.io/acme-prod"
      - "docker.io/library/"
      - "nginx"
      - "registry.corp.example:5000/"
"#;

const KYVERNO: &str = r#"apiVersion: kyverno.io/v1
kind: ClusterPolicy
metadata:
  name: restrict-image-registries
spec:
  validationFailureAction: Enforce
  rules:
    - name: validate-registries
      match:
        any:
          - resources:
              kinds: [Pod]
      exclude:
        any:
          - resources:
              namespaces: [kube-system]
      validate:
        message: "Unknown image registry."
        pattern:
          spec:
            =(ephemeralContainers):
              - image: "eu.foo.io/* | ghcr.io/acme/*"
            =(initContainers):
              - image: "eu.foo.io/* | ghcr.io/acme/*"
            containers:
              - image: "eu.foo.io/* | ghcr.io/acme/*"
"#;

/// Imports `peer_text`, writes the policy, and returns (policy path, notes).
fn import(dir: &Path, from: &str, peer_text: &str) -> String {
    std::fs::write(dir.join("peer.yaml"), peer_text).expect("written");
    let output = registry_gate(dir, &["policy", "import", "--from", from, "peer.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(dir.join("imported.yaml"), &output.stdout).expect("written");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn allowed(dir: &Path, image: &str) -> bool {
    let output = registry_gate(dir, &["check", "-p", "imported.yaml", "--namespace", "shop", image]);
    match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("{image}: exit {other:?}: {}", String::from_utf8_lossy(&output.stderr)),
    }
}

#[test]
fn a_gatekeeper_constraint_converts_and_closes_the_prefix_bypasses() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let notes = import(dir.path(), "gatekeeper", GATEKEEPER);
    let validate = registry_gate(dir.path(), &["policy", "validate", "imported.yaml"]);
    assert_eq!(validate.status.code(), Some(0), "{}", String::from_utf8_lossy(&validate.stderr));
    let policy = std::fs::read_to_string(dir.path().join("imported.yaml")).expect("policy");
    assert!(policy.contains("exemptNamespaces: [\"kube-system\"]"), "{policy}");
    // What the constraint meant is admitted.
    for image in [
        "gcr.io/acme-prod/api:1",
        "nginx:1.27",
        "docker.io/library/redis:7",
        "registry.corp.example:5000/team/app:2",
    ] {
        assert!(allowed(dir.path(), image), "{image} should be admitted");
    }
    // The strings `startswith` let through are not: a look-alike project, a look-alike host,
    // another Docker Hub user whose name starts with nginx.
    for image in [
        "gcr.io/acme-prod-evil/miner:1",
        "nginxinc/nginx-unprivileged:1",
        "registry.corp.example:5000.evil.example/x:1",
    ] {
        assert!(!allowed(dir.path(), image), "{image} should be refused");
    }
    // Each change of meaning is noted.
    assert!(
        notes.contains("\"gcr.io/acme-prod\": Gatekeeper also admitted any image merely starting with it"),
        "{notes}"
    );
    assert!(notes.contains("\"nginx\": read as Docker Hub's docker.io/library/nginx"), "{notes}");
}

#[test]
fn a_kyverno_policy_converts_with_its_exclusions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let notes = import(dir.path(), "kyverno", KYVERNO);
    let policy = std::fs::read_to_string(dir.path().join("imported.yaml")).expect("policy");
    assert!(
        policy.contains("mode: enforce") && policy.contains("exemptNamespaces: [\"kube-system\"]"),
        "{policy}"
    );
    assert!(allowed(dir.path(), "eu.foo.io/team/app:1"));
    assert!(allowed(dir.path(), "ghcr.io/acme/api:2"));
    assert!(!allowed(dir.path(), "ghcr.io/acme-evil/api:2"));
    // Upper case in the host is the same registry to the runtime; registry-gate reads it so.
    assert!(allowed(dir.path(), "EU.FOO.IO/team/app:1"));
    assert!(!notes.contains("not converted"), "{notes}");
}

#[test]
fn what_cannot_be_converted_is_reported_and_nothing_widens() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let wide = KYVERNO.replace("eu.foo.io/* | ghcr.io/acme/*", "* | ghcr.io/acme/* | foo.*.io/*");
    let notes = import(dir.path(), "kyverno", &wide);
    assert!(notes.contains("\"*\" not converted: it admits every image"), "{notes}");
    assert!(notes.contains("\"foo.*.io/*\" not converted"), "{notes}");
    assert!(!allowed(dir.path(), "evil.example/x:1"));
    // A file with nothing to import is an error, exit 2.
    std::fs::write(dir.path().join("empty.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        .expect("written");
    let output = registry_gate(dir.path(), &["policy", "import", "--from", "gatekeeper", "empty.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no K8sAllowedRepos constraint found"));
}
