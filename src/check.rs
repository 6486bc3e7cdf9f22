//! `registry-gate check`: the webhook's verdict on images and manifests, offline, for CI
//! pipelines and for "why was my image denied".

use serde::Deserialize;
use serde::Serialize;

use crate::admission;
use crate::admission::workload::{ObjectView, WorkloadKind};
use crate::image::Reference;
use crate::policy::{Decision, Labels, Mode, Namespace, Policy};
use crate::yaml;

/// The namespace assumed for images given on the command line and objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The policy `serve` and `check` use when given none, compiled in so that the binary alone
/// decides the same way wherever it runs.
pub const BUNDLED_POLICY: &str = include_str!("../policy/default.yaml");
/// Where [`BUNDLED_POLICY`] comes from, for messages.
pub const BUNDLED_POLICY_PATH: &str = "policy/default.yaml";

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
        Decision::Excepted(exception, registry) => {
            report.decision = "allowed";
            report.registry = registry.map(|r| r.name.clone());
            report.pull_secret = registry.and_then(|r| r.pull_secret.clone());
            report.reason = Some(crate::admission::exception_note(exception));
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

/// An object of the manifests whose images `check` did not decide, because the webhook would
/// not see them either: its kind is not one registry-gate reviews. Only objects with something
/// image-like are reported; a ConfigMap or a Service is not.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedObject {
    /// `Kind/name`.
    pub object: String,
    /// Which YAML document of the file, from 1, and the line it starts on.
    pub document: usize,
    pub line: usize,
    pub reason: String,
}

/// What the mutating webhook would do to one Pod, or why it would do nothing.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodPatch {
    /// `Kind/name`: a Pod, or a workload (never patched).
    pub object: String,
    pub namespace: String,
    pub line: usize,
    /// The JSON Patch `/mutate` answers for this Pod at CREATE; `null` when it answers none.
    pub patch: Option<serde_json::Value>,
    /// The pull secrets the patch adds, in order.
    pub added: Vec<String>,
    /// `spec.imagePullSecrets` names once the patch is applied (for a workload: as written).
    pub image_pull_secrets: Vec<String>,
    /// Why there is no patch, when there is none.
    pub note: Option<String>,
}

/// Everything `check` finds in some manifests.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ManifestReport {
    pub images: Vec<ImageReport>,
    pub skipped: Vec<SkippedObject>,
    /// One per Pod and workload, when asked for.
    pub patches: Vec<PodPatch>,
}

/// Checks every image of every Pod and workload in a multi-document YAML (or JSON) manifest;
/// other kinds are skipped. See [`inspect_manifests`].
pub fn check_manifests(
    policy: &Policy,
    text: &str,
    default_namespace: &Namespace<'_>,
) -> Result<Vec<ImageReport>, ManifestError> {
    Ok(inspect_manifests(policy, text, default_namespace, false)?.images)
}

/// Checks every image of every Pod and workload in a multi-document YAML (or JSON) manifest,
/// and reports the objects of other kinds that look as if they hold images. Lists are opened
/// as kubectl opens them: any object with `items` (`List`, `PodList`, `DeploymentList`, ...),
/// lists within lists included. With `patches`, also what the mutating webhook would add to
/// each Pod.
///
/// Namespace labels, which registries with a `namespaceSelector` need, come from the Namespace
/// objects in the same text, and for `default_namespace` from the caller; any other
/// namespace's labels are unknown, and such registries do not admit it.
pub fn inspect_manifests(
    policy: &Policy,
    text: &str,
    default_namespace: &Namespace<'_>,
    patches: bool,
) -> Result<ManifestReport, ManifestError> {
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
    let mut inspector = Inspector {
        policy,
        default_namespace: default_namespace.name,
        known: &known,
        patches,
        report: ManifestReport::default(),
    };
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
                None => inspector.object(&object, index + 1, document.line)?,
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
    Ok(inspector.report)
}

/// What [`inspect_manifests`] carries from object to object.
struct Inspector<'a> {
    policy: &'a Policy,
    default_namespace: &'a str,
    known: &'a std::collections::HashMap<String, Labels>,
    patches: bool,
    report: ManifestReport,
}

impl Inspector<'_> {
    fn object(
        &mut self,
        object: &serde_json::Value,
        document: usize,
        line: usize,
    ) -> Result<(), ManifestError> {
        let kind_name = object.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        let metadata = object.get("metadata");
        let field = |name: &str| metadata.and_then(|m| m.get(name)).and_then(|v| v.as_str());
        let label = format!("{kind_name}/{}", field("name").unwrap_or("(unnamed)"));
        let Some(kind) = WorkloadKind::of(kind_name) else {
            if let Some(reason) = skip_reason(kind_name, object) {
                self.report.skipped.push(SkippedObject { object: label, document, line, reason });
            }
            return Ok(());
        };
        let namespace = field("namespace").unwrap_or(self.default_namespace);
        let view = ObjectView::deserialize(object).map_err(|source| ManifestError::Shape {
            object: label.clone(),
            line,
            source,
        })?;
        let spec = kind.pod_spec(view);
        let scope = Namespace { name: namespace, labels: self.known.get(namespace) };
        for (location, image) in spec.images(kind.spec_path()) {
            let mut report = check_image(self.policy, image, &scope);
            report.object = Some(label.clone());
            report.location = Some(location.to_string());
            self.report.images.push(report);
        }
        if self.patches {
            let patch = pod_patch(self.policy, kind, &spec, &scope);
            self.report.patches.push(PodPatch {
                object: label,
                namespace: namespace.to_owned(),
                line,
                ..patch
            });
        }
        Ok(())
    }
}

/// What `/mutate` answers for a Pod CREATE with this spec, through the same functions.
fn pod_patch(
    policy: &Policy,
    kind: WorkloadKind,
    spec: &admission::workload::PodSpec<'_>,
    namespace: &Namespace<'_>,
) -> PodPatch {
    let mut image_pull_secrets: Vec<String> =
        spec.image_pull_secrets.iter().filter_map(|s| s.name.as_deref()).map(str::to_owned).collect();
    let mut patch = PodPatch {
        object: String::new(),
        namespace: namespace.name.to_owned(),
        line: 0,
        patch: None,
        added: Vec::new(),
        image_pull_secrets: Vec::new(),
        note: None,
    };
    // The same order of checks as `admission::answer` for `Webhook::Mutate`.
    if kind != WorkloadKind::Pod {
        patch.note = Some(
            "the webhook never mutates workloads (GitOps tools would see drift); \
             the Pods they create get their pull secrets when created"
                .to_owned(),
        );
    } else if policy.is_exempt(namespace.name) {
        patch.note = Some(format!("namespace {:?} is exempt from the policy", namespace.name));
    } else {
        let added: Vec<&str> = admission::missing_pull_secrets(policy, spec, namespace)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if added.is_empty() {
            patch.note = Some("no pull secret to add".to_owned());
        } else {
            patch.patch = serde_json::to_value(admission::pull_secret_patch(spec, &added)).ok();
            patch.added = added.iter().map(|name| (*name).to_owned()).collect();
            image_pull_secrets.extend(patch.added.iter().cloned());
        }
    }
    patch.image_pull_secrets = image_pull_secrets;
    patch
}

/// Kinds that hold configuration, routing or access rules, never an image the kubelet pulls:
/// a string field named `image` in them (a ConfigMap key, a CRD's schema) is not reported.
const NEVER_PULLED: &[&str] = &[
    "APIService",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "CustomResourceDefinition",
    "Endpoints",
    "EndpointSlice",
    "Event",
    "HorizontalPodAutoscaler",
    "Ingress",
    "IngressClass",
    "Lease",
    "LimitRange",
    "MutatingWebhookConfiguration",
    "Namespace",
    "NetworkPolicy",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "PriorityClass",
    "ResourceQuota",
    "Role",
    "RoleBinding",
    "Secret",
    "Service",
    "ServiceAccount",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
];

/// Why an object of a kind registry-gate does not review is worth reporting, if it is: it has a
/// `containers` list (a Pod template the webhook will not see) or a string field named `image`.
/// `metadata` is not searched: an annotation named `image` is not pulled.
fn skip_reason(kind: &str, object: &serde_json::Value) -> Option<String> {
    if NEVER_PULLED.contains(&kind) {
        return None;
    }
    let mut containers = None;
    let mut image = None;
    // Iterative, so the walk needs no stack of its own; the YAML reader's depth limit bounds
    // the paths.
    // (path, the field's own name if it is one, value)
    let mut pending: Vec<(String, &str, &serde_json::Value)> = match object.as_object() {
        Some(fields) => fields
            .iter()
            .rev()
            .filter(|(key, _)| *key != "metadata")
            .map(|(key, value)| (key.clone(), key.as_str(), value))
            .collect(),
        None => return None,
    };
    while let Some((path, key, value)) = pending.pop() {
        match value {
            serde_json::Value::Array(_) if key == "containers" => {
                containers = Some(path);
                break; // the stronger sign; nothing found later changes the reason
            }
            serde_json::Value::String(text) if key == "image" && image.is_none() => {
                image = Some(format!("{path} = {text:?}"));
            }
            serde_json::Value::Object(fields) => {
                pending.extend(fields.iter().rev().map(|(k, v)| (format!("{path}.{k}"), k.as_str(), v)));
            }
            serde_json::Value::Array(items) => {
                pending.extend(items.iter().enumerate().rev().map(|(i, v)| (format!("{path}[{i}]"), "", v)));
            }
            _ => {}
        }
    }
    match (containers, image) {
        (Some(path), _) => Some(format!(
            "looks like it has a Pod template ({path}) but kind {kind} is not one the webhook is \
             registered for, so its images are not checked"
        )),
        (None, Some(field)) => {
            Some(format!("kind {kind} carries no Pod spec registry-gate checks ({field})"))
        }
        (None, None) => None,
    }
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

/// One line per skipped object, for people.
pub fn render_skipped(skipped: &[SkippedObject]) -> String {
    skipped
        .iter()
        .map(|s| format!("skipped  {}: {} (document {}, line {})\n", s.object, s.reason, s.document, s.line))
        .collect()
}

/// The patch `/mutate` would answer for each Pod, and the pull secrets the Pod ends with.
pub fn render_patches(patches: &[PodPatch]) -> String {
    let mut out = String::new();
    for pod in patches {
        let secrets = match pod.image_pull_secrets.as_slice() {
            [] => "(none)".to_owned(),
            names => names.join(", "),
        };
        match (&pod.patch, &pod.note) {
            (Some(patch), _) => {
                out.push_str(&format!("patch    {} (namespace {}): {patch}\n", pod.object, pod.namespace));
                out.push_str(&format!("         imagePullSecrets: {secrets}\n"));
            }
            (None, note) => {
                let note = note.as_deref().unwrap_or("no patch");
                out.push_str(&format!(
                    "patch    {} (namespace {}): none, {note}; imagePullSecrets: {secrets}\n",
                    pod.object, pod.namespace
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(include_str!("../policy/example-all-types.yaml")).expect("valid policy")
    }

    fn skipped(text: &str) -> Vec<SkippedObject> {
        let namespace = Namespace { name: DEFAULT_NAMESPACE, labels: None };
        inspect_manifests(&policy(), text, &namespace, false).expect("readable").skipped
    }

    #[test]
    fn the_bundled_policy_is_valid() {
        let policy = Policy::parse(BUNDLED_POLICY).expect("valid");
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
    }

    #[test]
    fn only_unreviewed_objects_with_images_are_skipped() {
        let text = "\
kind: ConfigMap
metadata: {name: c}
data: {image: nginx}
---
kind: Service
metadata: {name: s, annotations: {image: nginx}}
---
kind: Widget
metadata: {name: w, annotations: {image: nginx}}
spec: {size: 3}
---
kind: PodTemplate
metadata: {name: t}
template: {spec: {containers: [{name: a, image: nginx}]}}
---
kind: Runner
metadata: {name: r}
spec: {steps: [{run: x}, {image: ghcr.io/acme/x}]}
---
kind: Deployment
metadata: {name: d}
spec: {template: {spec: {containers: [{name: a, image: nginx}]}}}
";
        let found = skipped(text);
        let objects: Vec<&str> = found.iter().map(|s| s.object.as_str()).collect();
        assert_eq!(objects, ["PodTemplate/t", "Runner/r"], "{found:?}");
        assert!(found[0].reason.contains("Pod template (template.spec.containers)"), "{}", found[0].reason);
        assert_eq!(found[0].document, 4);
        assert_eq!(
            found[1].reason,
            "kind Runner carries no Pod spec registry-gate checks (spec.steps[1].image = \"ghcr.io/acme/x\")"
        );
    }

    #[test]
    fn lists_report_their_skipped_items() {
        let text = "kind: List\nitems:\n- {kind: Job, metadata: {name: j}, spec: {template: {spec: {containers: []}}}}\n- {kind: Rollout, metadata: {name: r}, spec: {template: {spec: {containers: [{image: nginx}]}}}}\n";
        let found = skipped(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].object, "Rollout/r");
    }

    #[test]
    fn patches_are_asked_for() {
        let text = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: ghcr.io/acme/a}]}\n";
        let namespace = Namespace { name: DEFAULT_NAMESPACE, labels: None };
        let without = inspect_manifests(&policy(), text, &namespace, false).expect("readable");
        assert!(without.patches.is_empty());
        let with = inspect_manifests(&policy(), text, &namespace, true).expect("readable");
        assert_eq!(with.patches[0].added, ["ghcr-acme"]);
        assert_eq!(with.patches[0].image_pull_secrets, ["ghcr-acme"]);
        assert_eq!(
            with.patches[0].patch,
            Some(
                serde_json::json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "ghcr-acme"}]}])
            )
        );
    }
}
