//! `registry-gate test DIR`: the example suite passes, a wrong expectation fails with what was
//! found instead, and a broken test file is an error (docs/policy-tests.md).

use std::path::Path;
use std::process::{Command, Output};

fn registry_gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_registry-gate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_suite_passes() {
    let output = registry_gate(&["test", "examples/policy-tests"]);
    assert_eq!(output.status.code(), Some(0), "{}{}", text(&output.stdout), text(&output.stderr));
    assert!(text(&output.stdout).ends_with("7 passed, 0 failed (1 files)\n"), "{}", text(&output.stdout));
}

/// A copy of the example suite in `dir`, with `edit` applied to the test file.
fn suite(dir: &Path, edit: impl Fn(&str) -> String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let test =
        std::fs::read_to_string(root.join("examples/policy-tests/registry-gate-test.yaml")).expect("example");
    let test = test.replace(
        "../../policy/example-all-types.yaml",
        &root.join("policy/example-all-types.yaml").display().to_string(),
    );
    std::fs::write(dir.join("t.yaml"), edit(&test)).expect("written");
    std::fs::copy(root.join("examples/policy-tests/workloads.yaml"), dir.join("workloads.yaml"))
        .expect("copied");
}

#[test]
fn wrong_expectations_fail_saying_what_was_found() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    suite(dir.path(), |test| {
        test.replace(
            "{object: Pod/miner, namespace: shop, verdict: denied",
            "{object: Pod/miner, namespace: shop, verdict: allowed",
        )
        .replace("pullSecrets: [ghcr-acme]", "pullSecrets: [other-pull]")
        .replace("reason: not pinned by a digest", "reason: something else")
        .replace("object: Deployment/api", "object: Deployment/absent")
    });
    let output = registry_gate(&["test", dir.path().to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("t.yaml:11: Pod/miner in shop is allowed (\"not in any registered registry\"), but it is denied: quay.io/evil/miner is not in any registered registry"), "{stdout}");
    assert!(stdout.contains("t.yaml:9: Pod/web in shop is allowed with pull secrets [\"other-pull\"], but its imagePullSecrets would be [\"ghcr-acme\"]"), "{stdout}");
    assert!(stdout.contains("but no reason contains \"something else\""), "{stdout}");
    assert!(
        stdout.contains(
            "Deployment/absent in shop is allowed, but no such object with images in the manifests"
        ),
        "{stdout}"
    );
    assert!(stdout.ends_with("3 passed, 4 failed (1 files)\n"), "{stdout}");
    let json = registry_gate(&["test", dir.path().to_str().expect("UTF-8"), "-o", "json"]);
    let outcomes: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(outcomes.as_array().map(Vec::len), Some(7));
    assert!(outcomes[0]["failure"].is_string() && outcomes[1]["failure"].is_string(), "{outcomes}");
}

#[test]
fn a_broken_test_file_is_an_error() {
    for (edit, want) in [
        ("verdict: allowed, reason: OPS", "verdict: maybe, reason: OPS"),
        ("policy: ", "policy: missing-"),
        ("expect:", "expectations:"),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        suite(dir.path(), |test| test.replacen(edit, want, 1));
        let output = registry_gate(&["test", dir.path().to_str().expect("UTF-8")]);
        assert_eq!(output.status.code(), Some(2), "{want}: {}", text(&output.stdout));
        assert!(text(&output.stderr).starts_with("error: "), "{}", text(&output.stderr));
    }
    let empty = tempfile::tempdir().expect("a temporary directory");
    let output = registry_gate(&["test", empty.path().to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("no PolicyTest file"), "{}", text(&output.stderr));
}
