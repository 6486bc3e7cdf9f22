//! The `registry-gate` binary as CI pipelines call it: exit codes, JSON shape, manifests.

use std::process::{Command, Output};

fn registry_gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-gate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("the binary runs")
}

const POLICY: &str = "policy/example-all-types.yaml";

#[test]
fn allowed_images_exit_zero() {
    let output = registry_gate(&["check", "--policy", POLICY, "nginx", "ghcr.io/acme/api:1"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn json_output_names_each_image_and_why() {
    let output = registry_gate(&[
        "check",
        "-p",
        POLICY,
        "-o",
        "json",
        "nginx",
        "ghcr.io/acme-evil/api",
        "docker///bad",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let nginx = &reports[0];
    assert_eq!(nginx["decision"], "allowed");
    assert_eq!(nginx["registry"], "hub-official-images");
    assert_eq!(nginx["pullSecret"], serde_json::Value::Null);
    assert_eq!(nginx["reference"]["normalized"], "docker.io/library/nginx:latest");
    assert_eq!(nginx["reference"]["path"], "library/nginx");
    let evil = &reports[1];
    assert_eq!(evil["decision"], "denied");
    assert!(
        evil["reason"].as_str().is_some_and(|r| r.contains("registered on ghcr.io: ghcr.io/acme")),
        "{evil}"
    );
    let invalid = &reports[2];
    assert_eq!((invalid["valid"].as_bool(), invalid["reference"].is_null()), (Some(false), true));
    assert_eq!(invalid["error"], "invalid reference format");
    for key in ["image", "valid", "error", "reference", "decision", "registry", "pullSecret", "reason"] {
        assert!(invalid.get(key).is_some(), "every report has {key}");
    }
}

#[test]
fn manifests_report_every_image_with_its_field_path() {
    let output =
        registry_gate(&["check", "-p", POLICY, "-o", "json", "-f", "tests/data/manifests/workloads.yaml"]);
    assert_eq!(output.status.code(), Some(1), "two images are denied");
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let rows: Vec<(String, String, String)> = reports
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (format!("{} {}", text("object"), text("location")), text("namespace"), text("decision"))
        })
        .collect();
    let row = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        rows,
        [
            row("Pod/web spec.containers[0].image", "shop", "allowed"),
            row("Pod/web spec.initContainers[0].image", "shop", "allowed"),
            row("Pod/web spec.volumes[0].image.reference", "shop", "denied"),
            row(
                "CronJob/report spec.jobTemplate.spec.template.spec.containers[0].image",
                "default",
                "denied"
            ),
        ]
    );
}

#[test]
fn exempt_namespaces_are_allowed_and_say_so() {
    let output = registry_gate(&["check", "-p", POLICY, "-n", "kube-system", "evil.example.com/x"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("exempt"));
}

#[test]
fn a_broken_policy_or_missing_file_exits_two() {
    let missing = registry_gate(&["check", "-p", "does/not/exist.yaml", "nginx"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does/not/exist.yaml"));
    let manifest_as_policy = registry_gate(&["check", "-p", "tests/data/manifests/workloads.yaml", "nginx"]);
    assert_eq!(manifest_as_policy.status.code(), Some(2));
    let nothing = registry_gate(&["check", "-p", POLICY]);
    assert_eq!(nothing.status.code(), Some(2));
}

#[test]
fn policy_validate_lists_problems_and_exits_one() {
    let valid = registry_gate(&["policy", "validate", POLICY]);
    assert_eq!(valid.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&valid.stdout).contains("20 registries"));
    let invalid = registry_gate(&["policy", "validate", "tests/data/manifests/workloads.yaml"]);
    assert_eq!(invalid.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&invalid.stderr);
    assert!(errors.contains("holds more than one YAML document"), "{errors}");
}

#[test]
fn namespace_labels_come_from_flags_or_namespace_objects() {
    // production-ecr admits prod-* namespaces labelled team=payments outside the sandbox tier.
    let ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com/api:1";
    let check = |args: &[&str]| {
        let mut all = vec!["check", "-p", POLICY, "-o", "json"];
        all.extend_from_slice(args);
        let output = registry_gate(&all);
        // A usage error prints nothing on stdout.
        let reports: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (output.status.code(), reports[0]["reason"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(check(&["-n", "prod-eu", "-l", "team=payments", ecr]).0, Some(0));
    let (code, reason) = check(&["-n", "prod-eu", ecr]);
    assert_eq!(code, Some(1));
    assert!(
        reason.contains("it admits namespaces prod-* labelled team=payments,tier notin (sandbox)"),
        "{reason}"
    );
    assert_eq!(check(&["-n", "prod-eu", "-l", "team=payments", "-l", "tier=sandbox", ecr]).0, Some(1));
    assert_eq!(check(&["-n", "prod-eu", "-l", "team", ecr]).0, Some(2), "a label without =");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let manifests = dir.path().join("app.yaml");
    let pod = |namespace: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: api, namespace: {namespace}}}\nspec:\n  containers: [{{name: api, image: '{ecr}'}}]\n"
        )
    };
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod-pay\n  labels: {{team: payments}}\n{}{}",
        pod("prod-pay"),
        pod("prod-other")
    );
    std::fs::write(&manifests, text).expect("manifest written");
    let output =
        registry_gate(&["check", "-p", POLICY, "-o", "json", "-f", manifests.to_str().expect("UTF-8")]);
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(reports[0]["namespace"], "prod-pay");
    assert_eq!(reports[0]["decision"], "allowed", "{}", reports[0]);
    assert_eq!(reports[1]["decision"], "denied");
    let reason = reports[1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("labels are not known"), "{reason}");
}

#[test]
fn match_condition_is_printed_as_a_match_conditions_entry() {
    let output = registry_gate(&["policy", "match-condition", POLICY]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let entry: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(entry["name"], "registry-gate-needs-pull-secret");
    let expression = entry["expression"].as_str().expect("an expression");
    // The example policy gives ghcr.io/acme and docker.io/acme a pull secret (so Docker Hub's
    // other names and short names count too), and public.ecr.aws none.
    for host in
        ["'ghcr.io': ['ghcr-acme']", "'ghcr.io:443': ['ghcr-acme']", "'index.docker.io': ['dockerhub-acme']"]
    {
        assert!(expression.contains(host), "{host} missing: {expression}");
    }
    assert!(expression.starts_with("[{") && expression.contains("((!i.contains('/') ||"), "{expression}");
    assert!(!expression.contains("public.ecr.aws"), "{expression}");
}

#[test]
fn match_condition_refuses_a_policy_too_large_for_one() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("large.yaml");
    let mut text = String::from("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n");
    for i in 0..1_001 {
        text += &format!("  - {{name: r{i}, type: Generic, url: r{i}.example.com, pullSecret: s}}\n");
    }
    std::fs::write(&path, text).expect("policy written");
    let output = registry_gate(&["policy", "match-condition", path.to_str().expect("UTF-8 path")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("should carry no such condition"), "{stderr}");
}
