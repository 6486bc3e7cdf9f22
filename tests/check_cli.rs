//! `registry-gate check` without --policy, with objects it skips, and with --show-patch
//! (docs/check.md).

use std::process::{Command, Output};

use base64::Engine;
use registry_gate::admission::review::Request;
use registry_gate::admission::{self, Webhook};
use registry_gate::metrics::Metrics;
use registry_gate::policy::{Policy, PolicyStore};

fn registry_gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-gate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const POLICY: &str = "policy/example-all-types.yaml";
const SKIPPED: &str = "tests/data/manifests/skipped.yaml";
const PULL_SECRETS: &str = "tests/data/manifests/pull-secrets.yaml";

#[test]
fn without_a_policy_the_bundled_one_decides_and_says_so() {
    let allowed = registry_gate(&["check", "nginx"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert!(stdout(&allowed).contains("via hub-official-images"), "{}", stdout(&allowed));
    assert!(
        stderr(&allowed).contains("using the bundled policy (policy/default.yaml)"),
        "{}",
        stderr(&allowed)
    );

    let denied = registry_gate(&["check", "-o", "json", "evil.example/x"]);
    assert_eq!(denied.status.code(), Some(1));
    let reports: serde_json::Value = serde_json::from_slice(&denied.stdout).expect("JSON on stdout");
    assert_eq!(reports[0]["decision"], "denied");
    assert!(stderr(&denied).contains("bundled policy"));

    // The deny rule of the bundled policy, which example-all-types.yaml words differently.
    let busybox = registry_gate(&["check", "busybox"]);
    assert_eq!(busybox.status.code(), Some(1));
    assert!(stdout(&busybox).contains("an example deny rule"), "{}", stdout(&busybox));

    // A policy given is used and not announced.
    let given = registry_gate(&["check", "-p", POLICY, "nginx"]);
    assert_eq!(given.status.code(), Some(0));
    assert!(!stderr(&given).contains("bundled"), "{}", stderr(&given));
}

#[test]
fn the_bundled_policy_is_the_file_serve_embeds() {
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/default.yaml")).expect("file");
    assert_eq!(registry_gate::check::BUNDLED_POLICY, file);
    Policy::parse(registry_gate::check::BUNDLED_POLICY).expect("the bundled policy is valid");
}

#[test]
fn skipped_objects_are_reported_but_pass_unless_asked() {
    let output = registry_gate(&["check", "-p", POLICY, "-f", SKIPPED]);
    assert_eq!(output.status.code(), Some(0), "skipped objects do not fail by default: {}", stdout(&output));
    let text = stdout(&output);
    let skipped: Vec<&str> = text.lines().filter(|line| line.starts_with("skipped  ")).collect();
    assert_eq!(skipped.len(), 2, "{text}");
    assert!(skipped[0].starts_with("skipped  Workflow/nightly: looks like it has a Pod template"), "{text}");
    assert!(skipped[0].contains("(spec.template.spec.containers)"), "{text}");
    assert!(skipped[0].contains("kind Workflow is not one the webhook is registered for"), "{text}");
    assert!(skipped[0].contains("(document 2, line 8)"), "{text}");
    assert!(skipped[1].starts_with("skipped  Notebook/lab: kind Notebook carries no Pod spec"), "{text}");
    assert!(!text.contains("ConfigMap"), "a ConfigMap is not reported: {text}");
    assert!(text.contains("allowed  nginx (Pod/web"), "{text}");

    let failing = registry_gate(&["check", "-p", POLICY, "-f", SKIPPED, "--fail-on-skipped"]);
    assert_eq!(failing.status.code(), Some(1));

    // Nothing skipped: --fail-on-skipped changes nothing.
    let clean = registry_gate(&["check", "-p", POLICY, "-f", PULL_SECRETS, "--fail-on-skipped"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
}

#[test]
fn json_stays_an_array_and_json_report_carries_skipped_objects() {
    let array = registry_gate(&["check", "-p", POLICY, "-o", "json", "-f", SKIPPED]);
    assert_eq!(array.status.code(), Some(0));
    let reports: serde_json::Value = serde_json::from_slice(&array.stdout).expect("JSON on stdout");
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "only the Pod's image: {reports}");
    assert!(stderr(&array).contains("skipped  Workflow/nightly"), "{}", stderr(&array));

    let report =
        registry_gate(&["check", "-p", POLICY, "-o", "json-report", "-f", SKIPPED, "--fail-on-skipped"]);
    assert_eq!(report.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON on stdout");
    assert_eq!(report["policy"], serde_json::json!({ "source": POLICY, "bundled": false }));
    assert_eq!(report["images"][0]["image"], "nginx");
    let skipped = report["skipped"].as_array().expect("a list");
    let objects: Vec<&str> = skipped.iter().filter_map(|s| s["object"].as_str()).collect();
    assert_eq!(objects, ["Workflow/nightly", "Notebook/lab"]);
    assert_eq!((skipped[0]["document"].as_u64(), skipped[0]["line"].as_u64()), (Some(2), Some(8)));
    assert!(report.get("patches").is_none(), "patches only with --show-patch");
}

/// What `/mutate` answers for `pod`, created in its own namespace.
fn mutate_answer(policy: &str, pod: &serde_json::Value) -> Option<serde_json::Value> {
    let store = PolicyStore::new(Metrics::new());
    store.install(Policy::parse(&std::fs::read_to_string(policy).expect("policy")).expect("valid"), "test");
    let snapshot = store.current().expect("installed");
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "1",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "namespace": pod["metadata"]["namespace"],
            "name": pod["metadata"]["name"],
            "operation": "CREATE",
            "object": pod,
        }
    })
    .to_string();
    let request = Request::parse(body.as_bytes()).expect("a review");
    let answer = admission::answer(Webhook::Mutate, request, &snapshot, None);
    assert!(answer.response.allowed);
    let patch = answer.response.patch?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(patch).expect("base64");
    Some(serde_json::from_slice(&bytes).expect("JSON"))
}

#[test]
fn show_patch_prints_what_mutate_answers() {
    let output =
        registry_gate(&["check", "-p", POLICY, "-o", "json-report", "--show-patch", "-f", PULL_SECRETS]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let patches = report["patches"].as_array().expect("patches with --show-patch");
    let text = std::fs::read_to_string(PULL_SECRETS).expect("manifest");
    let pods: Vec<serde_json::Value> = registry_gate::yaml::parse_documents(&text)
        .expect("YAML")
        .iter()
        .map(|node| node.to_json())
        .collect();
    assert_eq!(patches.len(), pods.len(), "one entry per Pod and workload");
    for (pod, shown) in pods.iter().zip(patches) {
        let name = format!("{}/{}", pod["kind"].as_str().unwrap_or_default(), pod["metadata"]["name"]);
        if pod["kind"] != "Pod" {
            assert!(shown["patch"].is_null(), "{name}: workloads are never mutated");
            assert!(shown["note"].as_str().is_some_and(|n| n.contains("never mutates workloads")), "{shown}");
            continue;
        }
        let expected = mutate_answer(POLICY, pod);
        assert_eq!(shown["patch"], expected.clone().unwrap_or_default(), "{name}");
        // The secrets the Pod ends with are those of the patched Pod.
        let mut patched = pod.clone();
        if let Some(patch) = expected {
            let patch: json_patch::Patch = serde_json::from_value(patch).expect("RFC 6902");
            json_patch::patch(&mut patched, &patch).expect("the patch applies");
        }
        let names: Vec<serde_json::Value> = patched["spec"]["imagePullSecrets"]
            .as_array()
            .map(|list| list.iter().map(|s| s["name"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(shown["imagePullSecrets"], serde_json::Value::Array(names), "{name}");
    }
    // The Pod pulling from ghcr.io/acme and quay.io/acme gets both secrets in one add.
    assert_eq!(
        patches[0]["patch"],
        serde_json::json!([{ "op": "add", "path": "/spec/imagePullSecrets",
            "value": [{ "name": "ghcr-acme" }, { "name": "quay-robot" }] }])
    );
    assert_eq!(patches[1]["added"], serde_json::json!(["ghcr-acme"]), "quay-robot is already there");

    let text = registry_gate(&["check", "-p", POLICY, "--show-patch", "-f", PULL_SECRETS]);
    let text = stdout(&text);
    assert!(
        text.contains(
            "patch    Pod/api (namespace shop): [{\"op\":\"add\",\"path\":\"/spec/imagePullSecrets\""
        ),
        "{text}"
    );
    assert!(text.contains("         imagePullSecrets: ghcr-acme, quay-robot\n"), "{text}");
    assert!(
        text.contains("patch    Deployment/api (namespace shop): none, the webhook never mutates workloads"),
        "{text}"
    );
}

#[test]
fn show_patch_in_an_exempt_namespace_matches_mutate_too() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("pod.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: kube-system}\nspec:\n  containers: [{name: a, image: ghcr.io/acme/agent:1}]\n",
    )
    .expect("written");
    let output = registry_gate(&[
        "check",
        "-p",
        POLICY,
        "-o",
        "json-report",
        "--show-patch",
        "-f",
        path.to_str().expect("UTF-8"),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "agent", "namespace": "kube-system" },
        "spec": { "containers": [{ "name": "a", "image": "ghcr.io/acme/agent:1" }] },
    });
    assert_eq!(mutate_answer(POLICY, &pod), None, "/mutate leaves exempt namespaces alone");
    assert!(report["patches"][0]["patch"].is_null(), "{report}");
    assert!(report["patches"][0]["note"].as_str().is_some_and(|n| n.contains("exempt")), "{report}");
}

#[test]
fn show_patch_refuses_the_json_array() {
    let output = registry_gate(&["check", "-p", POLICY, "-o", "json", "--show-patch", "-f", PULL_SECRETS]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("use -o json-report"), "{}", stderr(&output));
}

#[test]
fn an_exception_admits_in_its_namespace_until_its_date_and_the_webhook_says_so() {
    let image = "quay.io/legacy-vendor/agent:4.2";
    let inside = registry_gate(&["check", "-p", POLICY, "--namespace", "monitoring", "-o", "json", image]);
    assert_eq!(inside.status.code(), Some(0), "{}", stderr(&inside));
    let report: serde_json::Value = serde_json::from_slice(&inside.stdout).expect("JSON");
    assert_eq!(report[0]["decision"], "allowed");
    let reason = report[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("admitted by an exception") && reason.contains("until 2099-12-31 (UTC): OPS-1234"),
        "{reason}"
    );
    let outside = registry_gate(&["check", "-p", POLICY, "--namespace", "shop", image]);
    assert_eq!(outside.status.code(), Some(1), "{}", stdout(&outside));

    // The validating webhook admits the Pod and tells whoever creates it, with the ticket.
    let store = PolicyStore::new(Metrics::new());
    store.install(Policy::parse(&std::fs::read_to_string(POLICY).expect("policy")).expect("valid"), "test");
    let snapshot = store.current().expect("installed");
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "monitoring",
                    "name": "agent", "operation": "CREATE",
                    "object": {"metadata": {"name": "agent", "namespace": "monitoring"},
                               "spec": {"containers": [{"name": "a", "image": image}]}}}
    })
    .to_string();
    let request = Request::parse(body.as_bytes()).expect("a review");
    let answer = admission::answer(Webhook::Validate, request, &snapshot, None);
    let review: serde_json::Value = serde_json::from_slice(&answer.response.to_review_json()).expect("JSON");
    assert_eq!(review["response"]["allowed"], true, "{review}");
    let warning = review["response"]["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.starts_with("registry-gate: spec.containers[0].image \"quay.io/legacy-vendor/agent:4.2\": admitted by an exception"), "{warning}");
}
