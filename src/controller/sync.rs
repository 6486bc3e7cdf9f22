//! Pull-secret sync: what one namespace should hold, and the writes that make it so.
//!
//! For each registry with a `pullSecret` whose scope admits the namespace (and which the policy
//! does not exempt), the namespace holds a copy of the registry's source Secret, which lives in
//! registry-gate's own namespace. Registries that share a `pullSecret` share one copy.
//!
//! A copy is ours when it carries [`MANAGED_LABEL`]; nothing without it is ever written or
//! deleted. A Secret of the same name that is not ours is a conflict: reported (Event, metric,
//! log) and left alone. A copy whose content differs from its source (edited by hand, or the
//! source rotated) is rewritten; one no longer wanted (registry removed, namespace out of scope,
//! source deleted) is deleted. A source that fails its check changes nothing: existing copies
//! keep their last good content. Nothing is written when nothing changed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};

use crate::credentials::{self, SourceProblem};
use crate::policy::{Namespace, Policy, Registry};

/// The label that marks a Secret as a copy registry-gate manages.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_VALUE: &str = "registry-gate";
/// `NAMESPACE/NAME` of the source a copy was made from.
pub const SOURCE_ANNOTATION: &str = "registry-gate.io/source";
/// The content hash of the source data the copy holds, to see drift without comparing data.
pub const HASH_ANNOTATION: &str = "registry-gate.io/content-hash";
/// The registries (policy entry names) the copy serves.
pub const REGISTRIES_ANNOTATION: &str = "registry-gate.io/registries";
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// How one registry's copy in one namespace stands, for metrics and the status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CopyState {
    /// The copy exists with the source's current content.
    Synced,
    /// A Secret of that name exists and is not registry-gate's.
    Conflict,
    /// The source Secret does not exist.
    MissingSource,
    /// The source Secret fails its check; the copy (if any) keeps its last good content.
    InvalidSource,
    /// A write failed; it is retried.
    Failed,
}

impl CopyState {
    pub const ALL: [CopyState; 5] = [
        CopyState::Synced,
        CopyState::Conflict,
        CopyState::MissingSource,
        CopyState::InvalidSource,
        CopyState::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CopyState::Synced => "synced",
            CopyState::Conflict => "conflict",
            CopyState::MissingSource => "missing-source",
            CopyState::InvalidSource => "invalid-source",
            CopyState::Failed => "failed",
        }
    }
}

/// A source Secret as the sync needs it.
pub struct Source<'s> {
    pub namespace: &'s str,
    pub secret: &'s Secret,
}

/// The copy one namespace should hold under one name, and the registries it serves.
#[derive(Debug)]
pub struct WantedCopy<'p> {
    pub name: String,
    pub registries: Vec<&'p Registry>,
}

/// The copies a namespace should hold by the policy alone, by Secret name.
pub fn wanted_copies<'p>(policy: &'p Policy, namespace: &Namespace<'_>) -> BTreeMap<String, WantedCopy<'p>> {
    let mut wanted: BTreeMap<String, WantedCopy<'p>> = BTreeMap::new();
    if policy.is_exempt(namespace.name) {
        return wanted;
    }
    for registry in &policy.registries {
        let Some(name) = registry.pull_secret.as_deref() else { continue };
        if !registry.admits_namespace(namespace) {
            continue;
        }
        wanted
            .entry(name.to_owned())
            .or_insert_with(|| WantedCopy { name: name.to_owned(), registries: Vec::new() })
            .registries
            .push(registry);
    }
    wanted
}

/// What a source offers its copies: content with its hash, or why it offers nothing.
pub enum SourceVerdict {
    Ready { data: BTreeMap<String, ByteString>, hash: String },
    Missing,
    Invalid(Vec<(String, SourceProblem)>),
}

/// Checks a source against every registry it serves.
pub fn judge_source(source: Option<&Secret>, registries: &[&Registry]) -> SourceVerdict {
    let Some(secret) = source else { return SourceVerdict::Missing };
    let data: BTreeMap<String, Vec<u8>> =
        secret.data.iter().flatten().map(|(key, value)| (key.clone(), value.0.clone())).collect();
    let problems: Vec<(String, SourceProblem)> = registries
        .iter()
        .filter_map(|registry| {
            credentials::check_source(secret.type_.as_deref(), &data, registry)
                .err()
                .map(|problem| (registry.name.clone(), problem))
        })
        .collect();
    if !problems.is_empty() {
        return SourceVerdict::Invalid(problems);
    }
    let hash = credentials::content_hash(&data);
    SourceVerdict::Ready { data: secret.data.clone().unwrap_or_default(), hash }
}

/// Whether a Secret is one registry-gate wrote (a copy, or an ECR-refreshed source).
pub fn is_managed(secret: &Secret) -> bool {
    secret.labels().get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_VALUE)
}

/// Whether a Secret is a copy this installation made: managed, and copied from a source in
/// `source_namespace`. A second registry-gate in the cluster (another namespace) labels its
/// copies the same way, and an ECR-refreshed source carries the label without being a copy:
/// neither is ever rewritten or deleted by this sync.
pub fn is_copy_from(secret: &Secret, source_namespace: &str) -> bool {
    is_managed(secret)
        && secret.annotations().get(SOURCE_ANNOTATION).is_some_and(|source| {
            source.strip_prefix(source_namespace).is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Whether a managed copy holds exactly `hash`'s content: its annotation says so and its data
/// agrees (a hand edit changes the data, not the annotation).
pub fn holds(copy: &Secret, hash: &str) -> bool {
    let data: BTreeMap<String, Vec<u8>> =
        copy.data.iter().flatten().map(|(key, value)| (key.clone(), value.0.clone())).collect();
    copy.annotations().get(HASH_ANNOTATION).map(String::as_str) == Some(hash)
        && credentials::content_hash(&data) == hash
        && copy.type_.as_deref() == Some(DOCKER_CONFIG_TYPE)
}

/// The copy of `source` for `namespace`, serving `registries`.
pub fn copy_of(
    source: Source<'_>,
    namespace: &str,
    wanted: &WantedCopy<'_>,
    data: &BTreeMap<String, ByteString>,
    hash: &str,
) -> Secret {
    let registries: BTreeSet<&str> = wanted.registries.iter().map(|r| r.name.as_str()).collect();
    let annotations = BTreeMap::from([
        (SOURCE_ANNOTATION.to_owned(), format!("{}/{}", source.namespace, source.secret.name_any())),
        (HASH_ANNOTATION.to_owned(), hash.to_owned()),
        (REGISTRIES_ANNOTATION.to_owned(), registries.into_iter().collect::<Vec<_>>().join(",")),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(wanted.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(MANAGED_LABEL.to_owned(), MANAGED_VALUE.to_owned())])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_TYPE.to_owned()),
        data: Some(data.clone()),
        ..Secret::default()
    }
}

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Created, now at this resource version.
    Created(Option<String>),
    /// Replaced, now at this resource version.
    Replaced(Option<String>),
    /// A Secret of that name exists and is not ours; it was left alone.
    Conflict,
}

/// Creates the copy, or replaces our existing copy. A name taken by a Secret that is not ours
/// is never written: creation fails on it, and replacement is conditional on the resource
/// version of the copy we saw, so a Secret swapped in meanwhile is not overwritten either.
pub async fn put_copy(
    api: &Api<Secret>,
    existing: Option<&Secret>,
    mut copy: Secret,
) -> kube::Result<Written> {
    match existing {
        Some(ours) => {
            copy.metadata.resource_version = ours.resource_version();
            let written = api.replace(&copy.name_any(), &PostParams::default(), &copy).await?;
            Ok(Written::Replaced(written.resource_version()))
        }
        None => match api.create(&PostParams::default(), &copy).await {
            Ok(written) => Ok(Written::Created(written.resource_version())),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Ours, not yet in the cache (then the next pass replaces it), or a stranger's.
                match api.get_opt(&copy.name_any()).await? {
                    Some(found) if is_copy_from(&found, &source_namespace(&copy)) => {
                        copy.metadata.resource_version = found.resource_version();
                        let written = api.replace(&copy.name_any(), &PostParams::default(), &copy).await?;
                        Ok(Written::Replaced(written.resource_version()))
                    }
                    _ => Ok(Written::Conflict),
                }
            }
            Err(e) => Err(e),
        },
    }
}

/// The source namespace a copy names (`NAMESPACE/NAME` in its source annotation).
fn source_namespace(copy: &Secret) -> String {
    copy.annotations()
        .get(SOURCE_ANNOTATION)
        .and_then(|source| source.split_once('/'))
        .map(|(namespace, _)| namespace.to_owned())
        .unwrap_or_default()
}

/// Deletes our copy, only if it is still the object we saw (same uid and version).
pub async fn delete_copy(api: &Api<Secret>, copy: &Secret) -> kube::Result<()> {
    let preconditions = Preconditions { uid: copy.uid(), resource_version: copy.resource_version() };
    let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::default() };
    match api.delete(&copy.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: registry-gate.io/v1
kind: RegistryPolicy
exemptNamespaces: [kube-system]
registries:
  - {name: hub, type: Public, url: docker.io/library}
  - {name: ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}
  - {name: ghcr-team, type: GHCR, url: ghcr.io/acme/team, pullSecret: ghcr-acme}
  - {name: corp, type: Generic, url: "registry.corp.example:5000", pullSecret: corp-pull, namespaces: ["prod-*"]}
"#;

    #[test]
    fn copies_follow_scope_exemptions_and_shared_names() {
        let policy = Policy::parse(POLICY).expect("valid policy");
        let names = |namespace: &str| -> Vec<(String, Vec<String>)> {
            wanted_copies(&policy, &Namespace::labelled(namespace, &crate::policy::NO_LABELS))
                .into_values()
                .map(|w| (w.name, w.registries.iter().map(|r| r.name.clone()).collect()))
                .collect()
        };
        let shared = ("ghcr-acme".to_owned(), vec!["ghcr".to_owned(), "ghcr-team".to_owned()]);
        assert_eq!(names("shop"), std::slice::from_ref(&shared));
        assert_eq!(names("prod-eu"), [("corp-pull".to_owned(), vec!["corp".to_owned()]), shared]);
        assert!(names("kube-system").is_empty(), "exempt namespaces get no copies");
    }

    #[test]
    fn copies_follow_namespace_labels_as_admission_does() {
        let text = format!(
            "{POLICY}  - {{name: pay, type: Generic, url: pay.corp.example, pullSecret: pay-pull, namespaceSelector: {{matchLabels: {{team: payments}}}}}}\n"
        );
        let policy = Policy::parse(&text).expect("valid policy");
        let has_pay = |labels: &crate::policy::Labels| {
            wanted_copies(&policy, &Namespace::labelled("shop", labels)).contains_key("pay-pull")
        };
        let payments: crate::policy::Labels = [("team".to_owned(), "payments".to_owned())].into();
        let search: crate::policy::Labels = [("team".to_owned(), "search".to_owned())].into();
        assert!(has_pay(&payments));
        assert!(!has_pay(&search));
        assert!(!has_pay(&crate::policy::NO_LABELS));
        // The same scope decides admission.
        let image = crate::image::Reference::parse("pay.corp.example/api:1").expect("valid image");
        let allowed = |labels| {
            matches!(
                policy.decide(&image, &Namespace::labelled("shop", labels)),
                crate::policy::Decision::Allowed(_)
            )
        };
        assert!(allowed(&payments) && !allowed(&search));
    }

    #[test]
    fn only_copies_from_this_installations_namespace_are_ours() {
        let secret = |source: Option<&str>| Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(MANAGED_LABEL.to_owned(), MANAGED_VALUE.to_owned())])),
                annotations: source.map(|s| BTreeMap::from([(SOURCE_ANNOTATION.to_owned(), s.to_owned())])),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        assert!(is_copy_from(&secret(Some("registry-gate/ghcr-acme")), "registry-gate"));
        assert!(!is_copy_from(&secret(Some("registry-gate-staging/ghcr-acme")), "registry-gate"));
        assert!(!is_copy_from(&secret(Some("other/ghcr-acme")), "registry-gate"));
        // An ECR-refreshed source: managed, but a source, not a copy.
        assert!(!is_copy_from(&secret(None), "registry-gate"));
        assert!(!is_copy_from(&Secret::default(), "registry-gate"));
    }

    #[test]
    fn a_hand_edited_copy_does_not_hold_its_hash() {
        let policy = Policy::parse(POLICY).expect("valid policy");
        let wanted = wanted_copies(&policy, &Namespace::labelled("shop", &crate::policy::NO_LABELS))
            .remove("ghcr-acme")
            .expect("wanted");
        let data = BTreeMap::from([(".dockerconfigjson".to_owned(), ByteString(b"{\"auths\":{}}".to_vec()))]);
        let plain: BTreeMap<String, Vec<u8>> = data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        let hash = credentials::content_hash(&plain);
        let source = Secret {
            metadata: ObjectMeta { name: Some("ghcr-acme".into()), ..ObjectMeta::default() },
            ..Secret::default()
        };
        let mut copy =
            copy_of(Source { namespace: "registry-gate", secret: &source }, "shop", &wanted, &data, &hash);
        assert!(is_managed(&copy) && holds(&copy, &hash));
        assert_eq!(copy.annotations()[REGISTRIES_ANNOTATION], "ghcr,ghcr-team");
        assert_eq!(copy.annotations()[SOURCE_ANNOTATION], "registry-gate/ghcr-acme");
        copy.data.as_mut().expect("data").insert(".dockerconfigjson".into(), ByteString(b"{}".to_vec()));
        assert!(!holds(&copy, &hash), "edited data no longer holds the hash its annotation claims");
    }
}
