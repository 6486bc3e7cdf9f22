//! `registry-gate policy diff` as an admin or a pipeline calls it: what an edit breaks in some
//! manifests, its exit codes, and its JSON shape (docs/policy-diff.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary with paths inside `dir`.
fn registry_gate(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-gate"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("file written");
    path
}

fn policy(registries: &str, rest: &str) -> String {
    format!("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n{rest}registries:\n{registries}")
}

const GHCR: &str = "  - {name: ghcr, type: GHCR, url: ghcr.io/acme}\n";
const QUAY: &str = "  - {name: quay, type: Quay, url: quay.io/acme, pullSecret: quay-pull}\n";

fn pod(name: &str, namespace: &str, image: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  containers: [{{name: app, image: '{image}'}}]\n"
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_removed_registry_breaks_the_images_that_use_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(&format!("{GHCR}{QUAY}"), ""));
    write(dir.path(), "new.yaml", &policy(GHCR, ""));
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    spec:\n      containers:\n        - {name: web, image: 'ghcr.io/acme/web:1'}\n        - {name: cache, image: 'quay.io/acme/cache:2'}\n";
    write(dir.path(), "app.yaml", deployment);

    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("removes  registry quay (registries[1])"), "{text}");
    let broken: Vec<&str> = text.lines().filter(|l| l.starts_with("breaks")).collect();
    assert_eq!(broken.len(), 1, "only the quay image breaks:\n{text}");
    for part in [
        "quay.io/acme/cache:2",
        "Deployment/web",
        "spec.template.spec.containers[1].image",
        "namespace shop",
        "not in any registered registry",
    ] {
        assert!(broken[0].contains(part), "{part} in {}", broken[0]);
    }
}

#[test]
fn a_removed_registry_that_no_manifest_uses_breaks_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(&format!("{GHCR}{QUAY}"), ""));
    write(dir.path(), "new.yaml", &policy(GHCR, ""));
    write(dir.path(), "app.yaml", &pod("web", "shop", "ghcr.io/acme/web:1"));
    let without = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml"]);
    assert_eq!(without.status.code(), Some(1), "without manifests, a removal may break");
    let with = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml"]);
    assert_eq!(with.status.code(), Some(0), "{}", stdout(&with));
    assert!(stdout(&with).contains("no image in the manifests changes its verdict"), "{}", stdout(&with));
}

#[test]
fn an_added_registry_allows_and_exits_zero() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(GHCR, ""));
    write(dir.path(), "new.yaml", &policy(&format!("{GHCR}{QUAY}"), ""));
    write(dir.path(), "app.yaml", &pod("cache", "shop", "quay.io/acme/cache:2"));
    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("allows   registry quay (registries[1]): registry added"), "{text}");

    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(
        text.contains("newly-allowed quay.io/acme/cache:2 (Pod/cache spec.containers[0].image, namespace shop): denied -> via quay with pull secret quay-pull"),
        "{text}"
    );
}

#[test]
fn narrowed_namespaces_break_only_the_pod_outside_the_new_scope() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(GHCR, ""));
    let scoped = "  - {name: ghcr, type: GHCR, url: ghcr.io/acme, namespaces: [prod-*]}\n";
    write(dir.path(), "new.yaml", &policy(scoped, ""));
    let manifests =
        format!("{}{}", pod("api", "prod-eu", "ghcr.io/acme/api:1"), pod("api", "dev", "ghcr.io/acme/api:1"));
    write(dir.path(), "app.yaml", &manifests);
    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("narrows  registry ghcr (registries[0].namespaces)"), "{text}");
    let broken: Vec<&str> = text.lines().filter(|l| l.starts_with("breaks")).collect();
    assert_eq!(broken.len(), 1, "{text}");
    assert!(broken[0].contains("namespace dev"), "{}", broken[0]);
    assert!(
        broken[0].contains("may not be used in namespace \"dev\"; it admits namespaces prod-*"),
        "{}",
        broken[0]
    );
}

#[test]
fn a_new_deny_rule_breaks_the_images_it_covers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(GHCR, ""));
    write(
        dir.path(),
        "new.yaml",
        &policy(GHCR, "deny: [{url: ghcr.io/acme/legacy, reason: retired in May}]\n"),
    );
    let manifests = format!(
        "{}{}",
        pod("old", "shop", "ghcr.io/acme/legacy/app:1"),
        pod("new", "shop", "ghcr.io/acme/app:2")
    );
    write(dir.path(), "app.yaml", &manifests);
    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("denies   deny ghcr.io/acme/legacy (deny[0])"), "{text}");
    let broken: Vec<&str> = text.lines().filter(|l| l.starts_with("breaks")).collect();
    assert_eq!(broken.len(), 1, "{text}");
    assert!(broken[0].contains("Pod/old") && broken[0].contains("retired in May"), "{}", broken[0]);
}

#[test]
fn identical_policies_print_no_change() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = policy(&format!("{GHCR}{QUAY}"), "mode: audit\n");
    write(dir.path(), "old.yaml", &text);
    write(dir.path(), "new.yaml", &text);
    write(dir.path(), "app.yaml", &pod("web", "shop", "quay.io/acme/web:1"));
    for extra in [&[][..], &["-f", "app.yaml"][..]] {
        let mut args = vec!["policy", "diff", "old.yaml", "new.yaml"];
        args.extend_from_slice(extra);
        let output = registry_gate(dir.path(), &args);
        assert_eq!(output.status.code(), Some(0));
        assert_eq!(stdout(&output), "no change\n");
    }
}

#[test]
fn an_invalid_or_missing_policy_exits_two_naming_the_field() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(GHCR, ""));
    write(dir.path(), "new.yaml", &policy("  - {name: ghcr, type: GHCR, url: 'ghcr.io/Acme'}\n", ""));
    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml"]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    assert!(errors.contains("new.yaml: the policy is invalid"), "{errors}");
    assert!(errors.contains("registries[0].url"), "{errors}");
    assert_eq!(stdout(&output), "");

    let missing = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "gone.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("gone.yaml"), "{}", stderr(&missing));
    let bad_manifest = write(dir.path(), "bad.yaml", "just: text\n");
    let output = registry_gate(
        dir.path(),
        &["policy", "diff", "old.yaml", "old.yaml", "-f", bad_manifest.to_str().expect("UTF-8")],
    );
    assert_eq!(output.status.code(), Some(2), "a manifest without kind");
}

#[test]
fn json_output_has_the_documented_fields() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(&format!("{GHCR}{QUAY}"), ""));
    write(dir.path(), "new.yaml", &policy(GHCR, "mode: audit\n"));
    write(dir.path(), "app.yaml", &pod("cache", "shop", "quay.io/acme/cache:2"));
    let output = registry_gate(
        dir.path(),
        &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml", "-o", "json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["old"], "old.yaml");
    assert_eq!(report["new"], "new.yaml");
    assert_eq!(report["breaking"], true);
    assert_eq!(report["manifestsChecked"], true);
    let changes = report["changes"].as_array().expect("changes is a list");
    let rows: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|c| {
            assert!(c["message"].is_string(), "{c}");
            (
                c["class"].as_str().unwrap_or(""),
                c["field"].as_str().unwrap_or(""),
                c["subject"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(rows, [("allows", "mode", "mode"), ("removes", "registries[1]", "registry quay")]);
    let images = report["images"].as_array().expect("images is a list");
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image["class"], "breaks");
    assert_eq!(image["old"]["decision"], "allowed");
    assert_eq!(image["old"]["registry"], "quay");
    assert_eq!(image["old"]["pullSecret"], "quay-pull");
    assert_eq!(image["new"]["decision"], "denied");
    assert_eq!(image["new"]["object"], "Pod/cache");
    assert_eq!(image["new"]["location"], "spec.containers[0].image");
    assert_eq!(image["new"]["namespace"], "shop");
    assert_eq!(image["new"]["image"], "quay.io/acme/cache:2");
    assert!(image["new"]["reason"].as_str().is_some_and(|r| r.contains("quay.io/acme/cache")), "{image}");
}

#[test]
fn the_audit_inventory_lists_what_runs_and_would_be_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(&format!("{GHCR}{QUAY}"), "exemptNamespaces: [kube-system]\n"));
    write(dir.path(), "new.yaml", &policy(GHCR, "exemptNamespaces: [kube-system]\n"));
    // The images.json of ConfigMap registry-gate-audit, as the controller's audit writes it.
    let entry = |namespace: &str, image: &str, pods: u32, workloads: u32, example: &str| serde_json::json!({"namespace": namespace, "image": image, "pods": pods, "workloads": workloads, "example": example});
    let inventory = serde_json::json!({"generation": 7, "finished": 1_796_000_000, "truncated": false, "images": [
        entry("shop", "ghcr.io/acme/web:1", 3, 1, "Deployment/web"),
        entry("shop", "quay.io/acme/cache:2", 3, 1, "Deployment/web"),
        entry("blog", "quay.io/acme/blog:5", 1, 0, "Pod/blog-0"),
        entry("kube-system", "quay.io/acme/agent:1", 4, 1, "DaemonSet/agent"),
    ]});
    write(dir.path(), "in-use.json", &inventory.to_string());

    let output =
        registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "--in-use", "in-use.json"]);
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("in use and refused: 4 Pods and 1 workloads in 2 namespaces (audit of 2026-"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("breaks-running")).collect();
    assert_eq!(lines.len(), 2, "the exempt namespace and the GHCR image break nothing:\n{text}");
    assert!(
        lines[0].starts_with(
            "breaks-running shop Deployment/web uses quay.io/acme/cache:2 (3 Pods, 1 workloads): "
        ),
        "{text}"
    );
    assert!(lines[1].contains("blog Pod/blog-0 uses quay.io/acme/blog:5"), "{text}");

    let json = registry_gate(
        dir.path(),
        &["policy", "diff", "old.yaml", "new.yaml", "--in-use", "in-use.json", "-o", "json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(report["inUseChecked"], true);
    assert_eq!(report["inUse"][1]["namespace"], "blog");
    assert!(
        report["inUse"][1]["reason"].as_str().is_some_and(|r| r.contains("quay.io/acme/blog")),
        "{report}"
    );

    // Nothing in use breaks: exit 0 although a registry is removed.
    write(
        dir.path(),
        "unused.json",
        &serde_json::json!({"generation": 1, "finished": 0, "truncated": false, "images": [
        entry("shop", "ghcr.io/acme/web:1", 3, 1, "Deployment/web")]})
        .to_string(),
    );
    let output =
        registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "--in-use", "unused.json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("nothing in use is refused"), "{}", stdout(&output));

    // Not an inventory: exit 2 naming the file.
    write(dir.path(), "bad.json", "{\"images\": 3}");
    let output =
        registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "--in-use", "bad.json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("bad.json is not the images.json of registry-gate-audit"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn stricter_tag_rules_and_exact_matches_narrow() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "old.yaml", &policy(GHCR, ""));
    write(
        dir.path(),
        "new.yaml",
        &policy(
            "  - {name: ghcr, type: GHCR, url: ghcr.io/acme, tagRules: {requireDigest: true}}\n",
            "tagRules: {denyLatest: true}\n",
        ),
    );
    write(
        dir.path(),
        "app.yaml",
        &(pod("pinned", "shop", &format!("ghcr.io/acme/a:1@sha256:{}", "b".repeat(64)))
            + &pod("floating", "shop", "ghcr.io/acme/a:1")),
    );
    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "new.yaml", "-f", "app.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(text.contains("narrows  registry ghcr (registries[0].tagRules.denyLatest): now refuses images pulling a moving latest"), "{text}");
    assert!(
        text.contains("(registries[0].tagRules.requireDigest): now refuses images not pinned by a digest"),
        "{text}"
    );
    let broken: Vec<&str> = text.lines().filter(|l| l.starts_with("breaks")).collect();
    assert_eq!(broken.len(), 1, "{text}");
    assert!(broken[0].contains("Pod/floating"), "{text}");

    write(
        dir.path(),
        "exact.yaml",
        &policy("  - {name: ghcr, type: GHCR, url: ghcr.io/acme/a, match: exact}\n", ""),
    );
    write(dir.path(), "prefix.yaml", &policy("  - {name: ghcr, type: GHCR, url: ghcr.io/acme/a}\n", ""));
    let text = stdout(&registry_gate(dir.path(), &["policy", "diff", "prefix.yaml", "exact.yaml"]));
    assert!(text.contains("narrows  registry ghcr (registries[0].match): match becomes exact"), "{text}");
}

#[test]
fn exceptions_added_extended_and_removed_are_listed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let exception = |image: &str, expires: &str| {
        format!("exceptions:\n  - {{image: '{image}', expires: '{expires}', reason: OPS-9}}\n")
    };
    write(dir.path(), "old.yaml", &(policy(GHCR, "") + &exception("quay.io/x/a:1", "2999-01-01")));
    write(dir.path(), "longer.yaml", &(policy(GHCR, "") + &exception("quay.io/x/a:1", "2999-06-01")));
    write(dir.path(), "other.yaml", &(policy(GHCR, "") + &exception("quay.io/x/b:1", "2999-01-01")));
    let text = stdout(&registry_gate(dir.path(), &["policy", "diff", "old.yaml", "longer.yaml"]));
    assert!(
        text.contains(
            "allows   exception image quay.io/x/a:1 (exceptions[0]): extended from 2999-01-01 to 2999-06-01"
        ),
        "{text}"
    );
    let output = registry_gate(dir.path(), &["policy", "diff", "old.yaml", "other.yaml"]);
    let text = stdout(&output);
    assert!(text.contains("admits image quay.io/x/b:1 until 2999-01-01 (OPS-9)"), "{text}");
    assert!(text.contains("denies   exception image quay.io/x/a:1 (exceptions[0]): removed"), "{text}");
    assert_eq!(output.status.code(), Some(1), "a removed exception denies again");
}
