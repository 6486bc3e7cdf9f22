//! `registry-gate test DIR`: a policy's intent kept in CI, in the spirit of `kyverno test` and
//! `gator verify`. A test file names a policy, some manifests, and what must come of them: which
//! objects and images are allowed or denied, why, and which pull secrets a Pod gets. Every
//! expectation is decided by the same code as `check` (and so as the webhook).
//!
//! ```yaml
//! apiVersion: registry-gate.io/v1
//! kind: PolicyTest
//! policy: ../policy.yaml            # relative to this file
//! manifests: [pods.yaml]            # idem
//! namespaceLabels:                  # optional, for registries with a namespaceSelector
//!   shop: {team: payments}
//! expect:
//!   - {object: Pod/web, namespace: shop, verdict: allowed, pullSecrets: [ghcr-pull]}
//!   - {object: Deployment/miner, namespace: shop, verdict: denied, reason: not in any registered registry}
//!   - {image: "nginx:latest", namespace: shop, verdict: denied}
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::check::{self, ImageReport, ManifestReport};
use crate::policy::{Labels, Namespace, Policy};
use crate::yaml::{self, Node, Value};

/// The `kind` of a test file.
pub const KIND: &str = "PolicyTest";
/// Test files larger than this are refused (a test file is a page of YAML).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One expectation's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    /// `file:line`.
    pub at: String,
    /// What was expected, in words.
    pub expected: String,
    /// `None` when it held; otherwise what was found instead.
    pub failure: Option<String>,
}

/// A test file that cannot be run.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TestFileError {
    pub file: String,
    pub message: String,
}

/// Every file under `dir` (or `dir` itself, if a file) whose `kind` is [`KIND`], sorted.
pub fn find_test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let child = entry.path();
            if kind.is_dir() {
                pending.push(child);
            } else if kind.is_file()
                && child.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && entry.metadata()?.len() <= MAX_FILE_BYTES
                && std::fs::read_to_string(&child).is_ok_and(|t| is_test_file(&t))
            {
                found.push(child);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_test_file(text: &str) -> bool {
    text.lines().any(|l| l.trim() == format!("kind: {KIND}"))
}

/// What one expectation asks.
struct Expectation {
    line: usize,
    subject: Subject,
    namespace: String,
    allowed: bool,
    reason: Option<String>,
    pull_secrets: Option<Vec<String>>,
}

enum Subject {
    Object(String),
    Image(String),
}

/// Runs one test file.
pub fn run_file(path: &Path) -> Result<Vec<Outcome>, TestFileError> {
    let file = path.display().to_string();
    let error = |message: String| TestFileError { file: file.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let documents = yaml::parse_documents(&text).map_err(|e| error(format!("not valid YAML: {e}")))?;
    let [root] = documents.as_slice() else {
        return Err(error("a test file is one YAML document".into()));
    };
    let json = root.to_json();
    if json["kind"] != KIND || json["apiVersion"] != crate::policy::API_VERSION {
        return Err(error(format!("not a {} {KIND}", crate::policy::API_VERSION)));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let policy_path = json["policy"].as_str().ok_or_else(|| error("policy: is required (a path)".into()))?;
    let policy_text = std::fs::read_to_string(base.join(policy_path))
        .map_err(|e| error(format!("policy: cannot read {policy_path}: {e}")))?;
    let policy = Policy::parse(&policy_text).map_err(|e| error(format!("policy {policy_path}: {e}")))?;
    let mut labels: std::collections::HashMap<String, Labels> = std::collections::HashMap::new();
    if let Some(given) = json["namespaceLabels"].as_object() {
        for (namespace, pairs) in given {
            let pairs: Labels = serde_json::from_value(pairs.clone())
                .map_err(|e| error(format!("namespaceLabels.{namespace}: {e}")))?;
            labels.insert(namespace.clone(), check::namespace_labels(namespace, &pairs));
        }
    }
    let mut report = ManifestReport::default();
    for (i, manifest) in json["manifests"].as_array().into_iter().flatten().enumerate() {
        let name = manifest.as_str().ok_or_else(|| error(format!("manifests[{i}]: must be a path")))?;
        let text = std::fs::read_to_string(base.join(name))
            .map_err(|e| error(format!("manifests[{i}]: cannot read {name}: {e}")))?;
        // Namespace labels given here reach objects in any namespace of the manifests.
        let mut with_labels = String::new();
        for (namespace, pairs) in &labels {
            let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": pairs}});
            with_labels += &format!("{object}\n---\n");
        }
        let found = check::inspect_manifests(
            &policy,
            &(with_labels + &text),
            &Namespace::named(check::DEFAULT_NAMESPACE),
            true,
        )
        .map_err(|e| error(format!("manifests[{i}] {name}: {e}")))?;
        report.images.extend(found.images);
        report.patches.extend(found.patches);
    }
    let expectations = decode_expectations(root).map_err(error)?;
    Ok(expectations.iter().map(|expectation| judge(&policy, &report, &labels, expectation, &file)).collect())
}

fn decode_expectations(root: &Node) -> Result<Vec<Expectation>, String> {
    let Value::Mapping(fields) = &root.value else { return Err("must be a mapping".into()) };
    let Some((_, list)) = fields.iter().find(|(k, _)| k.as_str() == Some("expect")) else {
        return Err("expect: is required (a list)".into());
    };
    let Value::Sequence(items) = &list.value else { return Err("expect: must be a list".into()) };
    let mut expectations = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let json = item.to_json();
        let at = |message: &str| format!("expect[{i}] (line {}): {message}", item.line);
        let subject = match (json["object"].as_str(), json["image"].as_str()) {
            (Some(object), None) if object.contains('/') => Subject::Object(object.to_owned()),
            (None, Some(image)) => Subject::Image(image.to_owned()),
            _ => return Err(at("give exactly one of object (Kind/name) and image")),
        };
        let allowed = match json["verdict"].as_str() {
            Some("allowed") => true,
            Some("denied") => false,
            _ => return Err(at("verdict: is allowed or denied")),
        };
        let pull_secrets = match &json["pullSecrets"] {
            serde_json::Value::Null => None,
            value => Some(
                serde_json::from_value::<Vec<String>>(value.clone())
                    .map_err(|_| at("pullSecrets: must be a list of Secret names"))?,
            ),
        };
        if pull_secrets.is_some() && !matches!(&subject, Subject::Object(o) if o.starts_with("Pod/")) {
            return Err(at("pullSecrets: only a Pod gets pull secrets injected"));
        }
        expectations.push(Expectation {
            line: item.line,
            subject,
            namespace: json["namespace"].as_str().unwrap_or(check::DEFAULT_NAMESPACE).to_owned(),
            allowed,
            reason: json["reason"].as_str().map(str::to_owned),
            pull_secrets,
        });
    }
    Ok(expectations)
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

fn judge(
    policy: &Policy,
    report: &ManifestReport,
    labels: &std::collections::HashMap<String, Labels>,
    expectation: &Expectation,
    file: &str,
) -> Outcome {
    let (subject, images): (String, Vec<ImageReport>) = match &expectation.subject {
        Subject::Object(object) => (
            format!("{object} in {}", expectation.namespace),
            report
                .images
                .iter()
                .filter(|i| {
                    i.object.as_deref() == Some(object.as_str()) && i.namespace == expectation.namespace
                })
                .cloned()
                .collect(),
        ),
        Subject::Image(image) => {
            let namespace = match labels.get(&expectation.namespace) {
                Some(labels) => Namespace::labelled(&expectation.namespace, labels),
                None => Namespace::named(&expectation.namespace),
            };
            (
                format!("image {image} in {}", expectation.namespace),
                vec![check::check_image(policy, image, &namespace)],
            )
        }
    };
    let mut expected = format!("{subject} is {}", verdict(expectation.allowed));
    if let Some(reason) = &expectation.reason {
        expected += &format!(" ({reason:?})");
    }
    let mut failure = None;
    if images.is_empty() {
        failure = Some("no such object with images in the manifests".to_owned());
    } else {
        let allowed = images.iter().all(ImageReport::is_allowed);
        let reasons: Vec<&str> = images.iter().filter_map(|i| i.reason.as_deref()).collect();
        if allowed != expectation.allowed {
            failure = Some(format!("it is {}: {}", verdict(allowed), reasons.join("; ")));
        } else if let Some(reason) = &expectation.reason
            && !reasons.iter().any(|r| r.contains(reason.as_str()))
        {
            failure = Some(format!("no reason contains {reason:?}: {}", reasons.join("; ")));
        }
    }
    if let (None, Some(want), Subject::Object(object)) =
        (&failure, &expectation.pull_secrets, &expectation.subject)
    {
        expected += &format!(" with pull secrets {want:?}");
        let patch =
            report.patches.iter().find(|p| p.object == *object && p.namespace == expectation.namespace);
        let got = patch.map(|p| p.image_pull_secrets.clone()).unwrap_or_default();
        let (mut got_sorted, mut want_sorted) = (got.clone(), want.clone());
        got_sorted.sort();
        want_sorted.sort();
        if got_sorted != want_sorted {
            failure = Some(format!("its imagePullSecrets would be {got:?}"));
        }
    }
    Outcome { at: format!("{file}:{}", expectation.line), expected, failure }
}
