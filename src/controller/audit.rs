//! The audit: every running Pod and every Pod-template workload re-decided against the policy in
//! force, after each policy change and on an interval, so that what runs today is measured
//! against today's rules (a Pod admitted before a registry was removed, or while the webhook was
//! down, shows up here).
//!
//! Memory is bounded by one page, not by the cluster: objects are listed page by page
//! (`--audit-page-size`), each page is read through the webhook's lean views (only names, owners
//! and image fields are decoded; nothing is cached), and what is kept across pages is bounded:
//! counts by (namespace, kind, registry, reason) up to [`MAX_SERIES`], [`MAX_EXAMPLES`] example
//! findings, and the image inventory up to [`MAX_INVENTORY`] entries.
//!
//! The result goes to metrics (`registry_gate_audit_*`) and to the ConfigMap
//! `registry-gate-audit` in registry-gate's namespace: a summary people read, and the inventory
//! of (namespace, image) pairs in use, which the policy door reads to warn about an edit that
//! would refuse running workloads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use prometheus::{Encoder, Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};

use crate::admission::workload::{ObjectView, SpecView, WorkloadKind};
pub use crate::policy::in_use::{AUDIT_CONFIGMAP, INVENTORY_KEY, InUse, Inventory};
use crate::policy::{self, Decision, Denial, Labels, Policy, PolicyStore};

/// The audit ConfigMap's key holding the summary people read (YAML); the inventory is under
/// [`INVENTORY_KEY`].
pub const SUMMARY_KEY: &str = "summary.yaml";

/// Distinct (namespace, kind, registry, reason) label sets exported; more are counted in
/// `registry_gate_audit_violations_unlabelled` instead, so that hostile image hosts cannot grow
/// the metrics without bound.
pub const MAX_SERIES: usize = 1000;
/// Findings kept verbatim for the summary.
pub const MAX_EXAMPLES: usize = 20;
/// Distinct (namespace, image) pairs kept in the inventory (about 100 bytes each, so the
/// ConfigMap stays far below the API server's 1 MiB object limit).
pub const MAX_INVENTORY: usize = 5000;
/// What the inventory may hold in all, whatever the pairs' lengths: a Pod's image string is
/// chosen by whoever writes it, and a ConfigMap over 1 MiB would make every pass fail to write.
pub const MAX_INVENTORY_BYTES: usize = 512 * 1024;
/// Image strings longer than this are not in the inventory (no reference the runtime pulls is;
/// they are still counted as violations).
const MAX_INVENTORY_IMAGE_BYTES: usize = 1024;

/// How the audit runs.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// registry-gate's own namespace, where the audit ConfigMap is written.
    pub namespace: String,
    /// Time between passes when the policy does not change.
    pub interval: Duration,
    /// Objects per list request.
    pub page_size: u32,
}

/// The kinds audited, and where the API serves them. Pods that have finished are left out: they
/// pull nothing any more.
const KINDS: &[(&str, &str, Option<&str>)] = &[
    ("Pod", "/api/v1/pods", Some("status.phase!=Succeeded,status.phase!=Failed")),
    ("Deployment", "/apis/apps/v1/deployments", None),
    ("StatefulSet", "/apis/apps/v1/statefulsets", None),
    ("DaemonSet", "/apis/apps/v1/daemonsets", None),
    ("ReplicaSet", "/apis/apps/v1/replicasets", None),
    ("ReplicationController", "/api/v1/replicationcontrollers", None),
    ("Job", "/apis/batch/v1/jobs", None),
    ("CronJob", "/apis/batch/v1/cronjobs", None),
];

/// Why an image fails the policy, as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    InvalidReference,
    Unregistered,
    NamespaceNotAllowed,
    DenyListed,
    TagRule,
}

impl Reason {
    pub fn of(denial: &Denial<'_>) -> Self {
        match denial {
            Denial::InvalidReference(_) => Reason::InvalidReference,
            Denial::Unregistered => Reason::Unregistered,
            Denial::NamespaceNotAllowed(_) => Reason::NamespaceNotAllowed,
            Denial::DenyListed(_) => Reason::DenyListed,
            Denial::TagRule(..) => Reason::TagRule,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Reason::InvalidReference => "invalid-reference",
            Reason::Unregistered => "unregistered",
            Reason::NamespaceNotAllowed => "namespace-not-allowed",
            Reason::DenyListed => "deny-listed",
            Reason::TagRule => "tag-rule",
        }
    }
}

/// One page of a list, read lean.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(default)]
    metadata: PageMetadata,
    #[serde(default, borrow)]
    items: Vec<Item<'a>>,
}

#[derive(Default, Deserialize)]
struct PageMetadata {
    #[serde(rename = "continue", default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    metadata: ItemMetadata<'a>,
    #[serde(default, borrow)]
    spec: SpecView<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemMetadata<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    namespace: Cow<'a, str>,
    #[serde(borrow, default)]
    owner_references: Vec<OwnerReference<'a>>,
}

#[derive(Deserialize)]
struct OwnerReference<'a> {
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(default)]
    controller: Option<bool>,
}

impl ItemMetadata<'_> {
    /// A workload made by another audited workload (a Deployment's ReplicaSet, a CronJob's Job)
    /// carries its owner's template, already audited; counting it again would double every
    /// finding. Pods are always audited: they are what runs.
    fn is_owned_by_audited_workload(&self) -> bool {
        self.owner_references.iter().any(|owner| {
            owner.controller == Some(true) && KINDS[1..].iter().any(|(kind, ..)| *kind == owner.kind)
        })
    }
}

/// One image of one object that the policy refuses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub namespace: String,
    /// `Kind/name`.
    pub object: String,
    /// Field path: `spec.containers[0].image`.
    pub location: String,
    pub image: String,
    pub reason: Reason,
    /// What a denied user would read.
    pub message: String,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Pass {
    /// Objects examined and objects with at least one refused image, by kind.
    pub examined: BTreeMap<&'static str, u64>,
    pub in_violation: BTreeMap<&'static str, u64>,
    /// Refused images by (namespace, kind, registry host, reason), at most [`MAX_SERIES`] keys.
    pub violations: BTreeMap<(String, &'static str, String, Reason), u64>,
    /// Refused images beyond [`MAX_SERIES`] label sets.
    pub unlabelled: u64,
    pub examples: Vec<Finding>,
    inventory: HashMap<(String, String), InUse>,
    /// What the inventory's entries add up to, bounded by [`MAX_INVENTORY_BYTES`].
    inventory_bytes: usize,
    pub inventory_truncated: bool,
}

impl Pass {
    /// Decides every image of one object and records what it finds.
    pub fn examine(
        &mut self,
        policy: &Policy,
        kind_name: &'static str,
        name: &str,
        namespace: &policy::Namespace<'_>,
        spec: &crate::admission::workload::PodSpec<'_>,
        spec_path: &'static str,
    ) {
        *self.examined.entry(kind_name).or_default() += 1;
        let exempt = policy.is_exempt(namespace.name);
        let mut refused = false;
        for (location, image) in spec.images(spec_path) {
            self.record_use(kind_name, name, namespace.name, image);
            if exempt {
                continue;
            }
            let (reference, decision) = policy.check(image, namespace);
            let Decision::Denied(denial) = decision else { continue };
            refused = true;
            let reason = Reason::of(&denial);
            let host = reference.as_ref().map(|r| r.domain().to_ascii_lowercase()).unwrap_or_default();
            let key = (namespace.name.to_owned(), kind_name, host, reason);
            if let Some(count) = self.violations.get_mut(&key) {
                *count += 1;
            } else if self.violations.len() < MAX_SERIES {
                self.violations.insert(key, 1);
            } else {
                self.unlabelled += 1;
            }
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(Finding {
                    namespace: namespace.name.to_owned(),
                    object: format!("{kind_name}/{name}"),
                    location: location.to_string(),
                    image: crate::admission::clip(image).into_owned(),
                    reason,
                    message: crate::admission::clip(&policy.denial_message(
                        reference.as_ref(),
                        &denial,
                        namespace,
                    ))
                    .into_owned(),
                });
            }
        }
        if refused {
            *self.in_violation.entry(kind_name).or_default() += 1;
        }
    }

    fn record_use(&mut self, kind_name: &'static str, name: &str, namespace: &str, image: &str) {
        let is_pod = kind_name == "Pod";
        let key = (namespace.to_owned(), image.to_owned());
        // Bytes a new entry adds to the JSON: its strings plus the field names and counts.
        let cost = namespace.len() + image.len() + kind_name.len() + name.len() + 80;
        if !self.inventory.contains_key(&key)
            && (self.inventory.len() >= MAX_INVENTORY
                || image.len() > MAX_INVENTORY_IMAGE_BYTES
                || self.inventory_bytes + cost > MAX_INVENTORY_BYTES)
        {
            self.inventory_truncated = true;
            return;
        }
        if !self.inventory.contains_key(&key) {
            self.inventory_bytes += cost;
        }
        let entry = self.inventory.entry(key).or_insert_with(|| InUse {
            namespace: namespace.to_owned(),
            image: image.to_owned(),
            pods: 0,
            workloads: 0,
            example: format!("{kind_name}/{name}"),
        });
        if is_pod {
            entry.pods = entry.pods.saturating_add(1);
        } else {
            entry.workloads = entry.workloads.saturating_add(1);
        }
    }

    /// The inventory, sorted by namespace and image.
    pub fn inventory(&self, generation: u64, finished: i64) -> Inventory {
        let mut images: Vec<InUse> = self.inventory.values().cloned().collect();
        images.sort_by(|a, b| (&a.namespace, &a.image).cmp(&(&b.namespace, &b.image)));
        Inventory { generation, finished, truncated: self.inventory_truncated, images }
    }

    /// Reads one page of a list and examines its objects. Returns the continue token.
    fn examine_page(
        &mut self,
        policy: &Policy,
        kind_name: &'static str,
        labels: &HashMap<String, Labels>,
        body: &str,
    ) -> Result<Option<String>, serde_json::Error> {
        let page: Page<'_> = serde_json::from_str(body)?;
        let workload = WorkloadKind::of(kind_name).expect("every audited kind holds a Pod spec");
        for item in page.items {
            if kind_name != "Pod" && item.metadata.is_owned_by_audited_workload() {
                continue;
            }
            let namespace = item.metadata.namespace.as_ref();
            let scope = match labels.get(namespace) {
                Some(labels) => policy::Namespace::labelled(namespace, labels),
                None => policy::Namespace::named(namespace),
            };
            let spec = workload.pod_spec(ObjectView { spec: item.spec, data: None });
            self.examine(policy, kind_name, &item.metadata.name, &scope, &spec, workload.spec_path());
        }
        Ok(page.metadata.next.filter(|next| !next.is_empty()))
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot list {what}: {source}")]
    List { what: String, source: kube::Error },
    #[error("cannot read the list of {what}: {source}")]
    Decode { what: String, source: serde_json::Error },
    #[error("cannot write the ConfigMap {AUDIT_CONFIGMAP}: {0}")]
    Write(kube::Error),
}

/// What the audit exports.
#[derive(Clone)]
pub struct AuditMetrics {
    registry: Registry,
    violations: IntGaugeVec,
    unlabelled: IntGauge,
    examined: IntGaugeVec,
    in_violation: IntGaugeVec,
    last_run: IntGauge,
    duration: Gauge,
    generation: IntGauge,
    failures: IntCounter,
}

impl AuditMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let violations = IntGaugeVec::new(
            Opts::new(
                "registry_gate_audit_violations",
                "Images in running Pods and workloads that the policy in force refuses, by namespace, kind, registry host and reason (last audit pass)",
            ),
            &["namespace", "kind", "registry", "reason"],
        )
        .expect("static metric definition");
        let unlabelled = IntGauge::new(
            "registry_gate_audit_violations_unlabelled",
            "Refused images of the last audit pass beyond the cap on label sets, counted here only",
        )
        .expect("static metric definition");
        let examined = IntGaugeVec::new(
            Opts::new("registry_gate_audit_objects", "Objects the last audit pass examined, by kind"),
            &["kind"],
        )
        .expect("static metric definition");
        let in_violation = IntGaugeVec::new(
            Opts::new(
                "registry_gate_audit_objects_in_violation",
                "Objects of the last audit pass with at least one refused image, by kind",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let last_run = IntGauge::new(
            "registry_gate_audit_last_run_timestamp_seconds",
            "When the last audit pass finished (Unix time)",
        )
        .expect("static metric definition");
        let duration =
            Gauge::new("registry_gate_audit_duration_seconds", "How long the last audit pass took")
                .expect("static metric definition");
        let generation = IntGauge::new(
            "registry_gate_audit_policy_generation",
            "The policy generation the last audit pass decided with",
        )
        .expect("static metric definition");
        let failures = IntCounter::new(
            "registry_gate_audit_failures_total",
            "Audit passes that stopped on an API error (retried)",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(violations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(unlabelled.clone()),
            Box::new(examined.clone()),
            Box::new(in_violation.clone()),
            Box::new(last_run.clone()),
            Box::new(duration.clone()),
            Box::new(generation.clone()),
            Box::new(failures.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        AuditMetrics {
            registry,
            violations,
            unlabelled,
            examined,
            in_violation,
            last_run,
            duration,
            generation,
            failures,
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    fn publish(&self, pass: &Pass, generation: u64, took: Duration) {
        self.violations.reset();
        for ((namespace, kind, registry, reason), count) in &pass.violations {
            self.violations
                .with_label_values(&[namespace.as_str(), kind, registry.as_str(), reason.label()])
                .set(*count as i64);
        }
        self.unlabelled.set(pass.unlabelled as i64);
        for (kind, ..) in KINDS {
            self.examined
                .with_label_values(&[kind])
                .set(pass.examined.get(kind).copied().unwrap_or(0) as i64);
            self.in_violation
                .with_label_values(&[kind])
                .set(pass.in_violation.get(kind).copied().unwrap_or(0) as i64);
        }
        self.last_run.set(now_seconds());
        self.duration.set(took.as_secs_f64());
        self.generation.set(generation as i64);
    }
}

impl Default for AuditMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Audits after every policy change (once it has held still for a moment) and every
/// `interval`, until the task is dropped.
pub async fn run(client: Client, policy: Arc<PolicyStore>, options: AuditOptions, metrics: AuditMetrics) {
    let mut audited: Option<u64> = None;
    let mut next_due = tokio::time::Instant::now();
    loop {
        let Some(snapshot) = policy.current() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let changed = audited != Some(snapshot.generation);
        if !changed && tokio::time::Instant::now() < next_due {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if changed && audited.is_some() {
            // Edits often come in bursts (apply, fix, apply): wait for the policy to settle.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if policy.current().map(|s| s.generation) != Some(snapshot.generation) {
                continue;
            }
        }
        let started = Instant::now();
        match audit_once(&client, &snapshot.policy, snapshot.generation, &options).await {
            Ok(pass) => {
                let took = started.elapsed();
                metrics.publish(&pass, snapshot.generation, took);
                let refused: u64 = pass.in_violation.values().sum();
                let examined: u64 = pass.examined.values().sum();
                tracing::info!(target: "registry_gate::audit", generation = snapshot.generation, examined, refused, took_ms = took.as_millis() as u64, "audit pass finished");
                audited = Some(snapshot.generation);
                next_due = tokio::time::Instant::now() + options.interval;
            }
            Err(e) => {
                metrics.failures.inc();
                tracing::warn!(target: "registry_gate::audit", error = %e, "audit pass failed; retrying in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// One pass over every audited kind, then the ConfigMap.
pub async fn audit_once(
    client: &Client,
    policy: &Policy,
    generation: u64,
    options: &AuditOptions,
) -> Result<Pass, AuditError> {
    let labels = namespace_labels(client, options.page_size).await?;
    let mut pass = Pass::default();
    for (kind_name, path, field_selector) in KINDS {
        let mut params = ListParams::default().limit(options.page_size);
        if let Some(selector) = field_selector {
            params = params.fields(selector);
        }
        loop {
            let request = kube::core::Request::new(*path).list(&params).map_err(|e| AuditError::List {
                what: kind_name.to_string(),
                source: kube::Error::BuildRequest(e),
            })?;
            let body = client
                .request_text(request)
                .await
                .map_err(|source| AuditError::List { what: kind_name.to_string(), source })?;
            let next = pass
                .examine_page(policy, kind_name, &labels, &body)
                .map_err(|source| AuditError::Decode { what: kind_name.to_string(), source })?;
            match next {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    write_configmap(client, &options.namespace, &pass, generation).await?;
    Ok(pass)
}

/// Every namespace's labels, for registries scoped by `namespaceSelector`.
async fn namespace_labels(client: &Client, page_size: u32) -> Result<HashMap<String, Labels>, AuditError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut labels = HashMap::new();
    let mut params = ListParams::default().limit(page_size);
    loop {
        let page = api
            .list_metadata(&params)
            .await
            .map_err(|source| AuditError::List { what: "namespaces".into(), source })?;
        for namespace in page.items {
            let name = namespace.metadata.name.unwrap_or_default();
            labels.insert(name, namespace.metadata.labels.unwrap_or_default());
        }
        match page.metadata.continue_.filter(|next| !next.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(labels),
        }
    }
}

/// The summary people read with `kubectl -n registry-gate get configmap registry-gate-audit`.
pub fn summary(pass: &Pass, generation: u64) -> String {
    let mut text = format!("policyGeneration: {generation}\nobjects:\n");
    for (kind, count) in &pass.examined {
        let refused = pass.in_violation.get(kind).copied().unwrap_or(0);
        text += &format!("  {kind}: {{examined: {count}, inViolation: {refused}}}\n");
    }
    let mut by_namespace: BTreeMap<&str, u64> = BTreeMap::new();
    for ((namespace, ..), count) in &pass.violations {
        *by_namespace.entry(namespace).or_default() += count;
    }
    text += "refusedImagesByNamespace:";
    if by_namespace.is_empty() {
        text += " {}\n";
    } else {
        text += "\n";
        for (namespace, count) in by_namespace {
            text += &format!("  {}: {count}\n", quote(namespace));
        }
    }
    if pass.unlabelled > 0 {
        text += &format!("refusedImagesNotByNamespace: {}\n", pass.unlabelled);
    }
    text += if pass.examples.is_empty() { "examples: []\n" } else { "examples:\n" };
    for finding in &pass.examples {
        text += &format!(
            "  - {{namespace: {}, object: {}, location: {}, image: {}, reason: {}, message: {}}}\n",
            quote(&finding.namespace),
            quote(&finding.object),
            quote(&finding.location),
            quote(&finding.image),
            finding.reason.label(),
            quote(&finding.message)
        );
    }
    text
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

async fn write_configmap(
    client: &Client,
    namespace: &str,
    pass: &Pass,
    generation: u64,
) -> Result<(), AuditError> {
    let inventory = pass.inventory(generation, now_seconds());
    let configmap = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": AUDIT_CONFIGMAP, "namespace": namespace},
        "data": {
            SUMMARY_KEY: summary(pass, generation),
            INVENTORY_KEY: serde_json::to_string(&inventory).unwrap_or_default(),
        },
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply("registry-gate-controller").force();
    api.patch(AUDIT_CONFIGMAP, &params, &Patch::Apply(&configmap)).await.map_err(AuditError::Write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nexemptNamespaces: [kube-system]\nregistries:\n  - {name: hub, type: Public, url: docker.io/library}\n  - {name: corp, type: Generic, url: registry.corp.example, namespaces: [prod]}\ndeny:\n  - {url: docker.io/library/busybox}\n";

    fn page(items: &str, next: &str) -> String {
        format!(r#"{{"kind":"List","metadata":{{"continue":"{next}"}},"items":[{items}]}}"#)
    }

    fn pod(namespace: &str, name: &str, images: &[&str]) -> String {
        let containers: Vec<String> =
            images.iter().map(|i| format!(r#"{{"name":"c","image":"{i}"}}"#)).collect();
        format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"{namespace}","uid":"x"}},"spec":{{"containers":[{}],"nodeName":"n"}},"status":{{"phase":"Running"}}}}"#,
            containers.join(",")
        )
    }

    #[test]
    fn a_page_is_decided_as_the_webhook_would() {
        let policy = Policy::parse(POLICY).expect("the test policy is valid");
        let mut pass = Pass::default();
        let body = page(
            &[
                pod("dev", "ok", &["nginx"]),
                pod("dev", "corp", &["registry.corp.example/app:1"]),
                pod("prod", "corp", &["registry.corp.example/app:1"]),
                pod("dev", "bad", &["evil.example/x", "busybox", "UPPER"]),
                pod("kube-system", "exempt", &["evil.example/x"]),
            ]
            .join(","),
            "token-2",
        );
        let next = pass.examine_page(&policy, "Pod", &HashMap::new(), &body).expect("test input");
        assert_eq!(next.as_deref(), Some("token-2"));
        assert_eq!(pass.examined["Pod"], 5);
        assert_eq!(pass.in_violation["Pod"], 2, "dev/corp and dev/bad");
        let reasons: Vec<(&str, &str, Reason)> = pass
            .violations
            .keys()
            .map(|(ns, _, host, reason)| (ns.as_str(), host.as_str(), *reason))
            .collect();
        assert!(reasons.contains(&("dev", "registry.corp.example", Reason::NamespaceNotAllowed)));
        assert!(reasons.contains(&("dev", "evil.example", Reason::Unregistered)));
        assert!(reasons.contains(&("dev", "docker.io", Reason::DenyListed)));
        assert!(reasons.contains(&("dev", "", Reason::InvalidReference)));
        assert!(!reasons.iter().any(|(ns, ..)| *ns == "kube-system" || *ns == "prod"));
        let example = pass
            .examples
            .iter()
            .find(|f| f.object == "Pod/bad" && f.reason == Reason::DenyListed)
            .expect("test input");
        assert_eq!(example.location, "spec.containers[1].image");
        // The inventory holds every image in use, exempt namespaces included.
        let inventory = pass.inventory(3, 0);
        assert_eq!(inventory.images.len(), 7);
        let corp = inventory.images.iter().find(|i| i.namespace == "prod").expect("test input");
        assert_eq!((corp.pods, corp.workloads, corp.example.as_str()), (1, 0, "Pod/corp"));
    }

    #[test]
    fn workloads_owned_by_audited_workloads_are_not_counted_twice() {
        let policy = Policy::parse(POLICY).expect("the test policy is valid");
        let mut pass = Pass::default();
        let replica_set = |name: &str, owner: &str| {
            format!(
                r#"{{"metadata":{{"name":"{name}","namespace":"dev","ownerReferences":[{{"kind":"{owner}","name":"d","controller":true}}]}},"spec":{{"template":{{"spec":{{"containers":[{{"image":"evil.example/x"}}]}}}}}}}}"#
            )
        };
        let body =
            page(&[replica_set("owned", "Deployment"), replica_set("loose", "SomethingElse")].join(","), "");
        assert_eq!(
            pass.examine_page(&policy, "ReplicaSet", &HashMap::new(), &body).expect("test input"),
            None
        );
        assert_eq!(pass.examined["ReplicaSet"], 1);
        assert_eq!(pass.examples[0].object, "ReplicaSet/loose");
        assert_eq!(pass.examples[0].location, "spec.template.spec.containers[0].image");
    }

    #[test]
    fn hostile_hosts_cannot_grow_the_label_sets_or_the_inventory_without_bound() {
        let policy = Policy::parse(POLICY).expect("the test policy is valid");
        let mut pass = Pass::default();
        let images: Vec<String> = (0..MAX_INVENTORY + 10).map(|i| format!("h{i}.example/x")).collect();
        for chunk in images.chunks(500) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let body = page(&pod("dev", "many", &refs), "");
            pass.examine_page(&policy, "Pod", &HashMap::new(), &body).expect("test input");
        }
        assert_eq!(pass.violations.len(), MAX_SERIES);
        assert_eq!(pass.unlabelled as usize, images.len() - MAX_SERIES);
        assert_eq!(pass.examples.len(), MAX_EXAMPLES);
        let inventory = pass.inventory(1, 0);
        assert!(inventory.truncated);
        assert_eq!(inventory.images.len(), MAX_INVENTORY);
    }

    #[test]
    fn long_image_strings_cannot_push_the_configmap_over_its_limit() {
        let policy = Policy::parse(POLICY).expect("the test policy is valid");
        let mut pass = Pass::default();
        // One invalid 100 KB string, then valid references as long as the grammar allows.
        let huge = "x".repeat(100_000);
        let long: Vec<String> =
            (0..4000).map(|i| format!("h{i}.example/{}", "a/".repeat(120) + "b")).collect();
        let mut images: Vec<&str> = vec![huge.as_str()];
        images.extend(long.iter().map(String::as_str));
        for chunk in images.chunks(200) {
            pass.examine_page(&policy, "Pod", &HashMap::new(), &page(&pod("dev", "p", chunk), ""))
                .expect("a page");
        }
        let inventory = pass.inventory(1, 0);
        assert!(inventory.truncated);
        assert!(!inventory.images.iter().any(|i| i.image == huge), "the 100 KB string is not kept");
        let json = serde_json::to_string(&inventory).expect("JSON");
        assert!(json.len() <= MAX_INVENTORY_BYTES, "{} bytes", json.len());
        assert!(summary(&pass, 1).len() < 64 * 1024, "examples are clipped");
        assert_eq!(pass.examined["Pod"], 21);
    }

    #[test]
    fn namespace_selectors_use_the_listed_labels() {
        let policy = Policy::parse(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {name: corp, type: Generic, url: registry.corp.example, namespaceSelector: {matchLabels: {tier: prod}}}\n",
        )
        .expect("test input");
        let labels: HashMap<String, Labels> = [
            ("a".to_owned(), Labels::from([("tier".to_owned(), "prod".to_owned())])),
            ("b".to_owned(), Labels::new()),
        ]
        .into();
        let mut pass = Pass::default();
        let body = page(
            &[pod("a", "p", &["registry.corp.example/x"]), pod("b", "p", &["registry.corp.example/x"])]
                .join(","),
            "",
        );
        pass.examine_page(&policy, "Pod", &labels, &body).expect("test input");
        let namespaces: Vec<&str> = pass.violations.keys().map(|(ns, ..)| ns.as_str()).collect();
        assert_eq!(namespaces, ["b"]);
    }

    #[test]
    fn the_summary_is_yaml_that_quotes_what_objects_hold() {
        let policy = Policy::parse(POLICY).expect("the test policy is valid");
        let mut pass = Pass::default();
        let body = page(&pod("dev", "x", &["evil.example/x:1\\\"\\n: {"]), "");
        pass.examine_page(&policy, "Pod", &HashMap::new(), &body).expect("test input");
        let text = summary(&pass, 4);
        let documents = crate::yaml::parse_documents(&text).expect("test input");
        let json = documents[0].to_json();
        assert_eq!(json["policyGeneration"], 4);
        assert_eq!(json["objects"]["Pod"]["inViolation"], 1);
        assert_eq!(json["examples"][0]["image"], "evil.example/x:1\"\n: {");
    }

    #[test]
    fn a_malformed_page_is_an_error_not_a_pass() {
        let policy = Policy::parse(POLICY).expect("the test policy is valid");
        let mut pass = Pass::default();
        assert!(pass.examine_page(&policy, "Pod", &HashMap::new(), "{\"items\": 3}").is_err());
        assert!(pass.examine_page(&policy, "Pod", &HashMap::new(), "<html>").is_err());
    }
}
