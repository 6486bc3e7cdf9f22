//! `registry-gate check`: the webhook's verdict on images and manifests, offline, for CI
//! pipelines and for "why was my image denied".

use serde::Serialize;

use serde::Deserialize;

use crate::admission::workload::{ObjectView, WorkloadKind};
use crate::image::Reference;
use crate::policy::{Decision, Labels, Mode, Namespace, Policy};
use crate::yaml;

/// The namespace assumed for images given on the command line and objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One image's verdict, in the shape of `check --output json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    pub image: String,
    /// `Kind/name` of the object the image came from, for manifests.
    pub object: Option<String>,
    /// Field path of the image in that object: `spec.template.spec.containers[0].image`.
    pub location: Option<String>,
    pub namespace: String,
    pub valid: bool,
    pub error: Option<String>,
    pub reference: Option<ReferenceReport>,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    pub registry: Option<String>,
    pub pull_secret: Option<String>,
    pub reason: Option<String>,
}

/// How the runtime reads the image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReferenceReport {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// The full `domain/path[:tag][@digest]` form that is pulled.
    pub normalized: String,
}

impl ImageReport {
    pub fn is_allowed(&self) -> bool {
        self.decision == "allowed"
    }
}

/// A manifest file that cannot be read as Kubernetes objects.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML: {0}")]
    Syntax(#[from] yaml::SyntaxError),
    /// A document is not an object with a `kind`.
    #[error("document {document} (line {line}) is not a Kubernetes object: it has no kind")]
    NoKind { document: usize, line: usize },
    /// The object's Pod spec does not have the shape Kubernetes gives it.
    #[error("{object} (line {line}): {source}")]
    Shape { object: String, line: usize, source: serde_json::Error },
    /// A list's `items` is not a list of objects, which kubectl would refuse too.
    #[error("document {document} (line {line}): {what}")]
    BadList { document: usize, line: usize, what: String },
}

/// Checks one image string as if it sat in a Pod in `namespace`.
pub fn check_image(policy: &Policy, image: &str, namespace: &Namespace<'_>) -> ImageReport {
    let mut report = ImageReport {
        image: image.to_owned(),
        object: None,
        location: None,
        namespace: namespace.name.to_owned(),
        valid: false,
        error: None,
        reference: None,
        decision: "denied",
        registry: None,
        pull_secret: None,
        reason: None,
    };
    let (reference, decision) = policy.check(image, namespace);
    report.valid = reference.is_some();
    report.reference = reference.as_ref().map(reference_report);
    if let Decision::Denied(crate::policy::Denial::InvalidReference(e)) = &decision {
        report.error = Some(e.to_string());
    }
    if policy.is_exempt(namespace.name) {
        report.decision = "allowed";
        report.reason = Some(format!("namespace {:?} is exempt from the policy", namespace.name));
        return report;
    }
    match &decision {
        Decision::Allowed(registry) => {
            report.decision = "allowed";
            report.registry = Some(registry.name.clone());
            report.pull_secret = registry.pull_secret.clone();
        }
        Decision::Denied(denial) => {
            report.reason = Some(policy.denial_message(reference.as_ref(), denial, namespace));
        }
    }
    report
}

fn reference_report(reference: &Reference<'_>) -> ReferenceReport {
    ReferenceReport {
        domain: reference.domain().to_owned(),
        path: reference.path().to_string(),
        tag: reference.tag().map(str::to_owned),
        digest: reference.digest().map(str::to_owned),
        normalized: reference.to_string(),
    }
}

/// The label the API server gives every namespace: its own name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels of a namespace as the API server would store them: as given, plus its name label.
pub fn namespace_labels(name: &str, given: &Labels) -> Labels {
    let mut labels = given.clone();
    labels.insert(NAME_LABEL.to_owned(), name.to_owned());
    labels
}

/// Checks every image of every Pod and workload in a multi-document YAML (or JSON) manifest;
/// other kinds are skipped. Lists are opened as kubectl opens them: any object with `items`
/// (`List`, `PodList`, `DeploymentList`, ...), lists within lists included.
///
/// Namespace labels, which registries with a `namespaceSelector` need, come from the Namespace
/// objects in the same text, and for `default_namespace` from the caller; any other
/// namespace's labels are unknown, and such registries do not admit it.
pub fn check_manifests(
    policy: &Policy,
    text: &str,
    default_namespace: &Namespace<'_>,
) -> Result<Vec<ImageReport>, ManifestError> {
    let documents = yaml::parse_documents(text)?;
    let objects: Vec<serde_json::Value> = documents.iter().map(yaml::Node::to_json).collect();
    let mut known: std::collections::HashMap<String, Labels> = objects
        .iter()
        .filter(|object| object.get("kind").and_then(|k| k.as_str()) == Some("Namespace"))
        .filter_map(|object| {
            let metadata = object.get("metadata")?;
            let name = metadata.get("name")?.as_str()?;
            let given: Labels = serde_json::from_value(metadata.get("labels")?.clone()).unwrap_or_default();
            Some((name.to_owned(), namespace_labels(name, &given)))
        })
        .collect();
    if let Some(labels) = default_namespace.labels {
        known.insert(default_namespace.name.to_owned(), labels.clone());
    }
    let mut reports = Vec::new();
    for (index, (document, object)) in documents.iter().zip(objects).enumerate() {
        if object.is_null() {
            continue; // an empty document, as between two `---`
        }
        let at = |what: String| ManifestError::BadList { document: index + 1, line: document.line, what };
        // Depth-first through nested lists; YAML's own depth limit bounds the nesting.
        let mut pending = vec![object];
        while let Some(object) = pending.pop() {
            if object.get("kind").and_then(|k| k.as_str()).is_none() {
                return Err(ManifestError::NoKind { document: index + 1, line: document.line });
            }
            match object.get("items") {
                None => check_object(
                    policy,
                    &object,
                    default_namespace.name,
                    &known,
                    document.line,
                    &mut reports,
                )?,
                Some(serde_json::Value::Array(items)) => {
                    for item in items.iter().rev() {
                        if !item.is_object() {
                            return Err(at(format!("a list item is {item}, not an object")));
                        }
                        pending.push(item.clone());
                    }
                }
                Some(other) => return Err(at(format!("items is {other}, not a list"))),
            }
        }
    }
    Ok(reports)
}

fn check_object(
    policy: &Policy,
    object: &serde_json::Value,
    default_namespace: &str,
    known: &std::collections::HashMap<String, Labels>,
    line: usize,
    reports: &mut Vec<ImageReport>,
) -> Result<(), ManifestError> {
    let kind_name = object.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    let Some(kind) = WorkloadKind::of(kind_name) else {
        return Ok(());
    };
    let metadata = object.get("metadata");
    let field = |name: &str| metadata.and_then(|m| m.get(name)).and_then(|v| v.as_str());
    let label = format!("{kind_name}/{}", field("name").unwrap_or("(unnamed)"));
    let namespace = field("namespace").unwrap_or(default_namespace);
    let view = ObjectView::deserialize(object).map_err(|source| ManifestError::Shape {
        object: label.clone(),
        line,
        source,
    })?;
    let spec = kind.pod_spec(view);
    for (location, image) in spec.images(kind.spec_path()) {
        let scope = Namespace { name: namespace, labels: known.get(namespace) };
        let mut report = check_image(policy, image, &scope);
        report.object = Some(label.clone());
        report.location = Some(location.to_string());
        reports.push(report);
    }
    Ok(())
}

/// One line per image, for people.
pub fn render_text(reports: &[ImageReport], mode: Mode) -> String {
    let mut out = String::new();
    for report in reports {
        let whereabouts = match (&report.object, &report.location) {
            (Some(object), Some(location)) => format!(" ({object} {location})"),
            _ => String::new(),
        };
        if report.is_allowed() {
            let registry = report.registry.as_deref().map(|r| format!(" via {r}")).unwrap_or_default();
            let secret =
                report.pull_secret.as_deref().map(|s| format!(", pull secret {s}")).unwrap_or_default();
            let note = report.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            out.push_str(&format!("allowed  {}{whereabouts}{registry}{secret}{note}\n", report.image));
        } else {
            let audit = if mode == Mode::Audit { " [audit mode: admitted with a warning]" } else { "" };
            let reason = report.reason.as_deref().unwrap_or_default();
            out.push_str(&format!("denied   {}{whereabouts}: {reason}{audit}\n", report.image));
        }
    }
    out
}
