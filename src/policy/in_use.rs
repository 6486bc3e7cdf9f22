//! What runs today, as the controller's audit last saw it, and which of it a policy edit would
//! refuse.
//!
//! The audit (`controller::audit`) publishes every (namespace, image) pair in use to the
//! ConfigMap `registry-gate-audit`. The webhook follows that one ConfigMap (it may already list
//! and watch ConfigMaps in its own namespace, for the policy) and answers a policy edit that
//! would refuse images in use with a warning, without any read access to Pods or workloads of
//! its own. `policy diff --in-use` reads the same inventory.

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use super::{Decision, Labels, Namespace, Policy};

/// The ConfigMap (in registry-gate's namespace) the audit writes its findings to.
pub const AUDIT_CONFIGMAP: &str = "registry-gate-audit";
/// Its key holding the inventory ([`Inventory`], JSON).
pub const INVENTORY_KEY: &str = "images.json";
/// Examples a warning names.
const EXAMPLES: usize = 3;

/// The (namespace, image) pairs in use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The policy generation the audit decided with (informational).
    pub generation: u64,
    /// Unix time the audit pass finished.
    pub finished: i64,
    /// Whether pairs were left out because of the audit's cap.
    pub truncated: bool,
    pub images: Vec<InUse>,
}

/// One image in one namespace, and how many running Pods and workloads use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InUse {
    pub namespace: String,
    pub image: String,
    pub pods: u32,
    pub workloads: u32,
    /// One object using it, `Kind/name`, for messages.
    pub example: String,
}

/// What a new policy would refuse among the images in use that the old one admits.
#[derive(Debug, Default, PartialEq)]
pub struct Impact {
    pub pods: u64,
    pub workloads: u64,
    pub namespaces: BTreeSet<String>,
    /// `namespace/Kind/name uses IMAGE: why`, at most a few.
    pub examples: Vec<String>,
}

impl Impact {
    /// The warning for the person applying the edit, if it refuses anything in use.
    pub fn warning(&self, inventory: &Inventory) -> Option<String> {
        if self.pods == 0 && self.workloads == 0 {
            return None;
        }
        let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let namespaces = self.namespaces.len() as u64;
        let partial =
            if inventory.truncated { " (the audit's inventory is truncated, so perhaps more)" } else { "" };
        Some(format!(
            "this policy would refuse images that {} and {} in {} use today{partial}, as of the audit of {}: {}",
            plural(self.pods, "running Pod", "running Pods"),
            plural(self.workloads, "workload", "workloads"),
            plural(namespaces, "namespace", "namespaces"),
            time::OffsetDateTime::from_unix_timestamp(inventory.finished)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_else(|| "an unknown time".into()),
            self.examples.join("; ")
        ))
    }
}

/// An image in use that a new policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refused<'i> {
    #[serde(flatten)]
    pub in_use: &'i InUse,
    /// What a denied user would read.
    pub reason: String,
}

/// The images in use that `new` refuses and `old` admitted (all that `new` refuses when there is
/// no old policy). Exempt namespaces refuse nothing. `labels` gives a namespace's labels when
/// known, for registries scoped by a selector.
pub fn newly_refused<'i, 'l>(
    old: Option<&Policy>,
    new: &Policy,
    inventory: &'i Inventory,
    labels: impl Fn(&str) -> Option<&'l Labels>,
) -> Vec<Refused<'i>> {
    let mut refused = Vec::new();
    for in_use in &inventory.images {
        let namespace = match labels(&in_use.namespace) {
            Some(labels) => Namespace::labelled(&in_use.namespace, labels),
            None => Namespace::named(&in_use.namespace),
        };
        let refuses = |policy: &Policy| {
            !policy.is_exempt(namespace.name)
                && matches!(policy.check(&in_use.image, &namespace).1, Decision::Denied(_))
        };
        if !refuses(new) || old.is_some_and(refuses) {
            continue;
        }
        let (reference, decision) = new.check(&in_use.image, &namespace);
        let reason = match decision {
            Decision::Denied(denial) => new.denial_message(reference.as_ref(), &denial, &namespace),
            Decision::Allowed(_) | Decision::Excepted(..) => String::new(),
        };
        refused.push(Refused { in_use, reason });
    }
    refused
}

impl Impact {
    /// Totals over `refused`, with the first few as examples.
    pub fn of(refused: &[Refused<'_>]) -> Self {
        let mut impact = Impact::default();
        for Refused { in_use, reason } in refused {
            impact.pods += u64::from(in_use.pods);
            impact.workloads += u64::from(in_use.workloads);
            impact.namespaces.insert(in_use.namespace.clone());
            if impact.examples.len() < EXAMPLES {
                impact
                    .examples
                    .push(format!("{}/{} uses {}: {reason}", in_use.namespace, in_use.example, in_use.image));
            }
        }
        impact
    }
}

/// The audit's last inventory, as the webhook follows it; cheap to clone.
#[derive(Clone, Default)]
pub struct InUseFeed(Arc<ArcSwapOption<Inventory>>);

impl InUseFeed {
    pub fn current(&self) -> Option<Arc<Inventory>> {
        self.0.load_full()
    }

    pub fn set(&self, inventory: Option<Inventory>) {
        self.0.store(inventory.map(Arc::new));
    }

    /// Follows the audit ConfigMap in `namespace` until the task is dropped. A ConfigMap that is
    /// missing, or whose inventory does not read, leaves the feed empty: no warning is better
    /// than a wrong one.
    pub async fn follow(self, client: Client, namespace: String) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={AUDIT_CONFIGMAP}"));
        let mut events = watcher(api, config).backoff(crate::watch::WatchBackoff::default()).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(configmap) | watcher::Event::InitApply(configmap)) => {
                    let text = configmap.data.as_ref().and_then(|data| data.get(INVENTORY_KEY));
                    let inventory = text.and_then(|text| match serde_json::from_str::<Inventory>(text) {
                        Ok(inventory) => Some(inventory),
                        Err(e) => {
                            tracing::warn!(target: "registry_gate::policy", error = %e, "the audit's inventory does not read; no in-use warnings");
                            None
                        }
                    });
                    self.set(inventory);
                }
                Ok(watcher::Event::Delete(_)) => self.set(None),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(target: "registry_gate::policy", error = %e, "watching the audit ConfigMap failed; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(registries: &str) -> Policy {
        Policy::parse(&format!(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nexemptNamespaces: [kube-system]\nregistries:\n{registries}"
        ))
        .expect("a valid test policy")
    }

    fn in_use(namespace: &str, image: &str, pods: u32, workloads: u32) -> InUse {
        InUse { namespace: namespace.into(), image: image.into(), pods, workloads, example: "Pod/p".into() }
    }

    const HUB: &str = "  - {name: hub, type: Public, url: docker.io/library}\n";
    const QUAY: &str = "  - {name: quay, type: Quay, url: quay.io/acme}\n";

    #[test]
    fn only_what_the_old_policy_admitted_and_the_new_refuses_counts() {
        let inventory = Inventory {
            generation: 1,
            finished: 0,
            truncated: false,
            images: vec![
                in_use("shop", "nginx:1.27", 3, 1),
                in_use("shop", "quay.io/acme/api:2", 2, 1),
                in_use("blog", "quay.io/acme/web:1", 1, 0),
                in_use("kube-system", "quay.io/acme/agent:1", 5, 1),
                in_use("shop", "evil.example/x", 4, 0),
            ],
        };
        let (old, new) = (policy(&format!("{HUB}{QUAY}")), policy(HUB));
        let impact = Impact::of(&newly_refused(Some(&old), &new, &inventory, |_| None));
        assert_eq!((impact.pods, impact.workloads), (3, 1), "evil.example was refused before");
        assert_eq!(impact.namespaces.iter().map(String::as_str).collect::<Vec<_>>(), ["blog", "shop"]);
        assert!(
            impact.examples[0].starts_with("shop/Pod/p uses quay.io/acme/api:2: "),
            "{:?}",
            impact.examples
        );
        let warning = impact.warning(&inventory).expect("a warning");
        assert!(
            warning.starts_with("this policy would refuse images that 3 running Pods and 1 workload in 2 namespaces use today, as of the audit of 1970-01-01T00:00:00Z: "),
            "{warning}"
        );
        // Without an old policy, everything the new one refuses counts.
        let all = Impact::of(&newly_refused(None, &new, &inventory, |_| None));
        assert_eq!((all.pods, all.workloads), (7, 1), "quay api and web, and evil.example");
        // An edit that refuses nothing in use warns of nothing.
        assert_eq!(
            Impact::of(&newly_refused(Some(&new), &old, &inventory, |_| None)).warning(&inventory),
            None
        );
    }

    #[test]
    fn selectors_are_decided_with_the_labels_given() {
        let new = policy(
            "  - {name: corp, type: Generic, url: corp.example, namespaceSelector: {matchLabels: {tier: prod}}}\n",
        );
        let inventory =
            Inventory { images: vec![in_use("a", "corp.example/x", 1, 0)], ..Inventory::default() };
        let prod = Labels::from([("tier".to_owned(), "prod".to_owned())]);
        assert!(newly_refused(None, &new, &inventory, |_| Some(&prod)).is_empty());
        assert_eq!(newly_refused(None, &new, &inventory, |_| None).len(), 1, "unknown labels admit nothing");
    }

    #[test]
    fn a_truncated_inventory_says_so() {
        let inventory = Inventory {
            truncated: true,
            images: vec![in_use("a", "evil.example/x", 1, 0)],
            ..Inventory::default()
        };
        let warning = Impact::of(&newly_refused(None, &policy(HUB), &inventory, |_| None))
            .warning(&inventory)
            .expect("a warning");
        assert!(warning.contains("truncated, so perhaps more"), "{warning}");
    }
}
