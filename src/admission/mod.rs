//! AdmissionReview in, decision out.
//!
//! - [`review`]: the wire format, read through a lean borrowing view.
//! - [`workload`]: where images live in each kind of object.
//! - this module: the validating and mutating decisions.
//!
//! What fails closed, and why:
//! - A Pod or workload whose object cannot be read is **denied**: an image that cannot be seen
//!   cannot be vouched for.
//! - An image string the kubelet would refuse, a bare image ID, or a host-less name is denied.
//! - A body that is not an AdmissionReview gets HTTP 400; with `failurePolicy: Fail` the API
//!   server denies the request.
//! - A kind registry-gate does not know is **allowed** with a warning: it carries no Pod spec,
//!   so there is nothing to check, and denying it would break resources a misconfigured webhook
//!   rule happened to send.
//! - A request without a kind, or with an operation the API server never sends (anything but
//!   CREATE, UPDATE, DELETE and CONNECT, spelled so), is **denied**: it is malformed, and what
//!   it would do cannot be known.
//! - DELETE and CONNECT are allowed: they start no image.
//! - An UPDATE checks only images that are not already in the old object, so scaling, labelling
//!   or deleting (finalizer removal is an UPDATE) an object admitted under an older policy is
//!   never blocked; any newly introduced image is checked in full.

pub mod audit;
pub mod review;
pub mod workload;

use serde::Serialize;

use crate::image::Reference;
use crate::metrics::RegistryLabel;
use crate::policy::{Decision, Denial, Labels, Mode, Namespace, PolicySnapshot, Registry};
use review::{Request, Response};
use workload::{PodSpec, WorkloadKind};

/// Which webhook is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    /// Rejects (or, in audit mode, warns about) images from unregistered registries.
    Validate,
    /// Adds the pull secrets of matched registries to Pods.
    Mutate,
}

/// How a request ended, for the `result` label of the request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// Denied images admitted with warnings, in audit mode.
    Audited,
    Exempt,
    /// The object could not be read (denied, fail closed).
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Audited => "audited",
            Outcome::Exempt => "exempt",
            Outcome::Error => "error",
        }
    }
}

/// The answer to one request, and how it ended.
pub struct Answer {
    pub response: Response,
    pub outcome: Outcome,
}

/// The operations of `admission.k8s.io/v1`, as the API server spells them.
const OPERATIONS: [&str; 4] = ["CREATE", "UPDATE", "DELETE", "CONNECT"];

/// Why a request is malformed in a way no decision can be made on, if it is.
fn malformed(request: &Request<'_>) -> Option<String> {
    if request.kind().is_empty() {
        return Some("the request names no kind (request.kind.kind)".to_owned());
    }
    let operation = request.operation();
    if !OPERATIONS.contains(&operation) {
        return Some(format!(
            "the request's operation {operation:?} is not one of {}",
            OPERATIONS.join(", ")
        ));
    }
    None
}

/// Answers one AdmissionRequest against one policy snapshot. `namespace_labels` are the labels
/// of the request's namespace when known; registries scoped by labels admit nothing without
/// them.
pub fn answer(
    webhook: Webhook,
    mut request: Request<'_>,
    snapshot: &PolicySnapshot,
    namespace_labels: Option<&Labels>,
) -> Answer {
    let uid = request.uid();
    if let Some(why) = malformed(&request) {
        return unreadable(uid, request.kind(), request.name(), &why);
    }
    let allow = |outcome| Answer { response: Response::allow(uid), outcome };
    if !matches!(request.operation(), "CREATE" | "UPDATE") {
        return allow(Outcome::Allowed);
    }
    let Some(kind) = WorkloadKind::of(request.kind()) else {
        let mut answer = allow(Outcome::Allowed);
        answer
            .response
            .warnings
            .push(format!("registry-gate does not check objects of kind {:?}", request.kind()));
        return answer;
    };
    if webhook == Webhook::Mutate && (kind != WorkloadKind::Pod || request.operation() != "CREATE") {
        // Workloads are never mutated (GitOps tools would see drift), and a Pod's pull secrets
        // cannot change after creation.
        return allow(Outcome::Allowed);
    }
    let policy = &snapshot.policy;
    if policy.is_exempt(request.namespace()) {
        return allow(Outcome::Exempt);
    }
    let (object, old_object) = (request.object.take(), request.old_object.take());
    let Some(object) = object else {
        return unreadable(request.uid(), request.kind(), request.name(), "the request carries no object");
    };
    let spec = kind.pod_spec(object);
    let old_spec = old_object.map(|old| kind.pod_spec(old));
    let namespace = Namespace { name: request.namespace(), labels: namespace_labels };
    match webhook {
        Webhook::Validate => validate(&request, namespace, kind, &spec, old_spec.as_ref(), snapshot),
        Webhook::Mutate => mutate(&request, namespace, &spec, snapshot),
    }
}

/// Denied images named one by one in a denial message; the rest are counted. A review can
/// carry 20,000 images, and a message (and an audit line) listing them all is megabytes.
const LISTED_PROBLEMS: usize = 20;
/// Denied images named in an audit line beyond the first, which gets its own fields.
const LOGGED_OTHERS: usize = 9;

/// Fail closed: an object whose images cannot be read is denied.
pub fn unreadable(uid: &str, kind: &str, name: &str, why: &str) -> Answer {
    // The reader's words may quote the offending value whole (serde's "invalid type: string
    // ..."), and kind and name come from the client: all three are clipped.
    let (kind, name, why) = (clip(kind), clip(name), clip(why));
    let message = format!("registry-gate cannot check {kind} {name:?}: {why}");
    if let Some(permit) = audit::AUDIT_LINES.permit() {
        tracing::warn!(
            target: "registry_gate::audit",
            uid,
            kind = %kind,
            name = %name,
            reason = %why,
            suppressed_before = permit.suppressed_before,
            "denied: object unreadable"
        );
    }
    Answer { response: Response::deny(uid, message), outcome: Outcome::Error }
}

/// One denied image: where it sits, what it is, and why.
struct Problem<'r> {
    location: workload::ImageLocation,
    image: &'r str,
    reason: String,
}

impl std::fmt::Display for Problem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}: {}", self.location, clip(self.image), clip(&self.reason))
    }
}

/// The longest image or reason quoted back in an answer or a log line. A valid reference is
/// under 800 bytes; an invalid one can be a whole 3 MiB body, which quoted twenty times (and
/// escaped) made a 6 MB answer and a 1.5 MB log line.
const QUOTED_MAX_BYTES: usize = 512;

/// `text`, cut at [`QUOTED_MAX_BYTES`] on a character boundary, saying how much was left out.
pub(crate) fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= QUOTED_MAX_BYTES {
        return std::borrow::Cow::Borrowed(text);
    }
    let cut = (0..=QUOTED_MAX_BYTES).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..cut], text.len()))
}

fn validate(
    request: &Request<'_>,
    namespace: Namespace<'_>,
    kind: WorkloadKind,
    spec: &PodSpec<'_>,
    old_spec: Option<&PodSpec<'_>>,
    snapshot: &PolicySnapshot,
) -> Answer {
    let policy = &snapshot.policy;
    // Images the object already had were admitted before; see the module notes on UPDATE.
    let previous = previous_images(old_spec, request.operation(), kind);
    let mut problems = Vec::new();
    let mut excepted = Vec::new();
    let mut denied = 0usize;
    for (location, image) in spec.images(kind.spec_path()) {
        if previous.as_ref().is_some_and(|seen| seen.binary_search(&image).is_ok()) {
            continue;
        }
        let (reference, decision) = policy.check(image, &namespace);
        match &decision {
            Decision::Allowed(registry) => snapshot.counters.allowed(label(registry)),
            Decision::Excepted(exception, registry) => {
                if let Some(registry) = registry {
                    snapshot.counters.allowed(label(registry));
                }
                // The person deploying sees that an exception, with an end, let the image in.
                if excepted.len() < LISTED_PROBLEMS {
                    excepted.push(format!(
                        "registry-gate: {location} {:?}: {}",
                        clip(image),
                        exception_note(exception)
                    ));
                }
            }
            Decision::Denied(denial) => {
                count_denial(snapshot, denial);
                denied += 1;
                // Only the images that will be named are explained: the explanation is the
                // expensive part, and a review may deny thousands.
                if problems.len() < LISTED_PROBLEMS {
                    let reason = policy.denial_message(reference.as_ref(), denial, &namespace);
                    problems.push(Problem { location, image, reason });
                }
            }
        }
    }
    let Some(first) = problems.first() else {
        let mut response = Response::allow(request.uid());
        response.warnings = excepted;
        return Answer { response, outcome: Outcome::Allowed };
    };
    let unlisted = denied - problems.len();
    if let Some(permit) = audit::AUDIT_LINES.permit() {
        let others: Vec<String> = problems
            .iter()
            .skip(1)
            .take(LOGGED_OTHERS)
            .map(|p| format!("{} {}", p.location, clip(p.image)))
            .collect();
        tracing::warn!(
            target: "registry_gate::audit",
            uid = %clip(request.uid()),
            user = %clip(request.username()),
            namespace = %clip(namespace.name),
            kind = %clip(request.kind()),
            name = %clip(request.name()),
            field = %first.location,
            image = %clip(first.image),
            reason = %clip(&first.reason),
            denied_images = denied,
            others = others.join("; "),
            decision = if policy.mode == Mode::Audit { "audited" } else { "denied" },
            policy_generation = snapshot.generation,
            suppressed_before = permit.suppressed_before,
            "images not allowed"
        );
    }
    let more = (unlisted > 0).then(|| format!("and {unlisted} more images not allowed"));
    if policy.mode == Mode::Audit {
        let mut response = Response::allow(request.uid());
        response.warnings = problems
            .iter()
            .map(|p| format!("registry-gate (audit mode) would deny: {p}"))
            .chain(more.map(|more| format!("registry-gate (audit mode) would deny {more}")))
            .chain(excepted)
            .collect();
        return Answer { response, outcome: Outcome::Audited };
    }
    let subject = if request.name().is_empty() {
        request.kind().to_owned()
    } else {
        format!("{} {:?}", request.kind(), request.name())
    };
    let count = if denied == 1 { "an image".to_owned() } else { format!("{denied} images") };
    let listed: Vec<String> = problems.iter().map(ToString::to_string).chain(more).collect();
    let message = format!(
        "registry-gate: {subject} uses {count} from unregistered or forbidden registries:\n- {}",
        listed.join("\n- ")
    );
    Answer { response: Response::deny(request.uid(), message), outcome: Outcome::Denied }
}

/// What an image admitted by an exception is told: which exception, why, and until when.
pub fn exception_note(exception: &crate::policy::Exception) -> String {
    format!(
        "admitted by an exception for {} until {} (UTC): {}",
        exception.describe(),
        exception.expires,
        exception.reason
    )
}

/// How the metrics name a policy entry.
fn label(registry: &Registry) -> RegistryLabel<'_> {
    RegistryLabel { position: registry.position, name: &registry.name }
}

fn count_denial(snapshot: &PolicySnapshot, denial: &Denial<'_>) {
    match denial {
        Denial::InvalidReference(_) => snapshot.counters.invalid(),
        Denial::Unregistered => snapshot.counters.unregistered(),
        Denial::NamespaceNotAllowed(registry) | Denial::TagRule(registry, _) => {
            snapshot.counters.denied_by(label(registry))
        }
        Denial::DenyListed(_) => snapshot.counters.deny_listed(),
    }
}

/// The images of the old object of an UPDATE, sorted for binary search; `None` for a CREATE or
/// no old object. Sorted rather than scanned: an UPDATE may carry tens of thousands of images on
/// each side, and a scan per new image would be quadratic.
fn previous_images<'o>(
    old: Option<&'o PodSpec<'_>>,
    operation: &str,
    kind: WorkloadKind,
) -> Option<Vec<&'o str>> {
    if operation != "UPDATE" {
        return None;
    }
    let mut images: Vec<&str> = old?.images(kind.spec_path()).map(|(_, image)| image).collect();
    images.sort_unstable();
    Some(images)
}

fn mutate(
    request: &Request<'_>,
    namespace: Namespace<'_>,
    spec: &PodSpec<'_>,
    snapshot: &PolicySnapshot,
) -> Answer {
    let missing = missing_pull_secrets(&snapshot.policy, spec, &namespace);
    let response = Response::allow(request.uid());
    if missing.is_empty() {
        return Answer { response, outcome: Outcome::Allowed };
    }
    for (_, registry) in &missing {
        snapshot.counters.injected(label(registry));
    }
    let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    let patch = pull_secret_patch(spec, &names);
    tracing::info!(
        target: "registry_gate::audit",
        uid = %clip(request.uid()),
        namespace = %clip(request.namespace()),
        name = %clip(request.name()),
        secrets = ?names,
        "pull secrets added"
    );
    Answer { response: response.with_patch(&patch), outcome: Outcome::Allowed }
}

/// The pull secrets the mutating webhook adds to a Pod: the secret of each allowed image's
/// registry that the Pod does not name yet, once each, in image order, with the registry that
/// asks for it. Pure, so that `registry-gate check --show-patch` prints what `/mutate` answers.
pub fn missing_pull_secrets<'p>(
    policy: &'p crate::policy::Policy,
    spec: &PodSpec<'_>,
    namespace: &Namespace<'_>,
) -> Vec<(&'p str, &'p Registry)> {
    // Sets, not lists: a hostile Pod may carry tens of thousands of images and pull secrets,
    // and a scan per image would be quadratic.
    let existing: std::collections::BTreeSet<&str> =
        spec.image_pull_secrets.iter().filter_map(|s| s.name.as_deref()).collect();
    let mut added = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    for (_, image) in spec.images(WorkloadKind::Pod.spec_path()) {
        let Ok(reference) = Reference::parse(image) else { continue };
        if let Decision::Allowed(registry) | Decision::Excepted(_, Some(registry)) =
            policy.decide(&reference, namespace)
            && let Some(secret) = registry.pull_secret.as_deref()
            && !existing.contains(secret)
            && added.insert(secret)
        {
            missing.push((secret, registry));
        }
    }
    missing
}

/// The JSON Patch (RFC 6902) that appends `secrets` to the Pod's `imagePullSecrets`, creating
/// the list when the Pod has none.
pub fn pull_secret_patch<'s>(spec: &PodSpec<'_>, secrets: &[&'s str]) -> Vec<PatchOperation<'s>> {
    let names = secrets.iter().map(|&name| SecretName { name });
    if spec.image_pull_secrets.is_empty() {
        vec![PatchOperation {
            op: "add",
            path: "/spec/imagePullSecrets",
            value: PatchValue::List(names.collect()),
        }]
    } else {
        names
            .map(|name| PatchOperation {
                op: "add",
                path: "/spec/imagePullSecrets/-",
                value: PatchValue::One(name),
            })
            .collect()
    }
}

/// One operation of [`pull_secret_patch`]. Typed rather than a `serde_json::Value` tree, which
/// took a dozen allocations per patch on the mutating webhook's path.
#[derive(Debug, Serialize)]
pub struct PatchOperation<'s> {
    op: &'static str,
    path: &'static str,
    value: PatchValue<'s>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum PatchValue<'s> {
    /// The whole list, when the Pod has none.
    List(Vec<SecretName<'s>>),
    /// One more entry.
    One(SecretName<'s>),
}

/// A `LocalObjectReference`, as `imagePullSecrets` holds them.
#[derive(Debug, Serialize)]
struct SecretName<'s> {
    name: &'s str,
}

/// The answer to a review of the policy ConfigMap, and what the edit switches off, if anything.
pub struct PolicyReview {
    pub answer: Answer,
    /// The weakenings of an admitted edit (see [`crate::policy::Policy::weakenings`]), for the
    /// Event that names who made it.
    pub weakened: Vec<String>,
}

/// Answers a review of the policy ConfigMap itself: an invalid policy is refused, with the same
/// problems `registry-gate policy validate` prints, before the API server stores it. The reload
/// path stays defensive for edits that get past this (the webhook fails open so that an admin
/// can always repair the policy).
///
/// A valid edit is admitted with warnings the person applying it sees: the policy's own
/// warnings, what the edit switches off compared with the policy it replaces, and what
/// `in_use_warning` says the new policy would refuse among the images running today (given the
/// old policy, when it parses, and the new one).
pub fn answer_policy_review(
    request: &Request<'_>,
    in_use_warning: impl FnOnce(Option<&crate::policy::Policy>, &crate::policy::Policy) -> Option<String>,
) -> PolicyReview {
    use crate::policy::Policy;
    use crate::policy::source::CONFIGMAP_KEY;

    let uid = request.uid();
    let done = |answer| PolicyReview { answer, weakened: Vec::new() };
    if let Some(why) = malformed(request) {
        return done(unreadable(uid, request.kind(), request.name(), &why));
    }
    if !matches!(request.operation(), "CREATE" | "UPDATE") || request.kind() != "ConfigMap" {
        return done(Answer { response: Response::allow(uid), outcome: Outcome::Allowed });
    }
    let subject = format!("ConfigMap {}/{}", request.namespace(), request.name());
    let policy_text = |object: Option<&workload::ObjectView<'_>>| {
        object.and_then(|o| o.data.as_ref()).and_then(|data| data.get(CONFIGMAP_KEY)).cloned()
    };
    let Some(text) = policy_text(request.object.as_ref()) else {
        let message = format!("registry-gate: {subject} has no {CONFIGMAP_KEY} key, so it holds no policy");
        return done(Answer { response: Response::deny(uid, message), outcome: Outcome::Denied });
    };
    match Policy::parse(&text) {
        Ok(policy) => {
            let mut response = Response::allow(uid);
            response.warnings = policy.warnings.iter().map(|w| format!("registry-gate: {w}")).collect();
            // An old policy that does not parse enforced nothing that this edit could weaken.
            let old = policy_text(request.old_object.as_ref()).and_then(|text| Policy::parse(&text).ok());
            if let Some(warning) = in_use_warning(old.as_ref(), &policy) {
                response.warnings.push(format!("registry-gate: {warning}"));
            }
            let weakened = old.map(|old| old.weakenings(&policy)).unwrap_or_default();
            if !weakened.is_empty() {
                response
                    .warnings
                    .push(format!("registry-gate: this edit weakens the policy: {}", weakened.join("; ")));
                if let Some(permit) = audit::AUDIT_LINES.permit() {
                    tracing::warn!(
                        target: "registry_gate::audit",
                        uid,
                        user = request.username(),
                        configmap = %subject,
                        weakened = weakened.join("; "),
                        suppressed_before = permit.suppressed_before,
                        "policy weakened"
                    );
                }
            }
            PolicyReview { answer: Answer { response, outcome: Outcome::Allowed }, weakened }
        }
        Err(error) => {
            tracing::warn!(target: "registry_gate::audit", uid, user = request.username(), configmap = %subject, problems = error.problems.len(), "policy edit refused");
            let message = format!("registry-gate: {subject} key {CONFIGMAP_KEY}: {error}");
            done(Answer { response: Response::deny(uid, message), outcome: Outcome::Denied })
        }
    }
}
