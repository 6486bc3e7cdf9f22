//! Namespace labels for the webhook, for registries scoped by a `namespaceSelector`.
//!
//! An AdmissionReview names the object's namespace but not its labels, so the webhook keeps a
//! cache of every Namespace's labels from a read-only watch (`list` and `watch` on namespaces,
//! metadata only), off the hot path: a decision reads the cache and never waits for the API
//! server. A namespace the cache has not seen (created a moment ago, or no watch at all) has
//! unknown labels, and registries scoped by labels do not admit it: the decision fails closed
//! and says why, and the workload's controller retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::policy::Labels;

/// The namespaces' labels as last seen; cheap to clone.
#[derive(Clone, Default)]
pub struct NamespaceLabels {
    watched: Option<Watched>,
}

#[derive(Clone)]
struct Watched {
    store: Store<PartialObjectMeta<Namespace>>,
    /// Set once the first full list has arrived.
    synced: Arc<AtomicBool>,
}

impl NamespaceLabels {
    /// No watch: every namespace's labels are unknown.
    pub fn unwatched() -> Self {
        NamespaceLabels { watched: None }
    }

    /// A cache filled by a watch on Namespaces, and the task that keeps it filled. The task
    /// returns only if the watch stream ends, which it does not on its own (errors are retried
    /// with backoff).
    pub fn watch(client: kube::Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let labels =
            NamespaceLabels { watched: Some(Watched { store: store.clone(), synced: synced.clone() }) };
        // An Api of metadata only makes metadata-only list and watch requests.
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let task = async move {
            let ready = async move {
                if store.wait_until_ready().await.is_ok() {
                    synced.store(true, Ordering::Relaxed);
                    tracing::info!(target: "registry_gate::namespaces", namespaces = store.len(), "namespace labels loaded");
                }
            };
            // Only the labels are kept: annotations and managed fields are the bulk of a
            // Namespace's metadata.
            let stream = watcher(api, watcher::Config::default())
                .backoff(crate::watch::WatchBackoff::default())
                .modify(|namespace| {
                    namespace.metadata.annotations = None;
                    namespace.metadata.managed_fields = None;
                })
                .reflect(writer)
                .for_each(|event| async move {
                    if let Err(e) = event {
                        tracing::warn!(target: "registry_gate::namespaces", error = %e, "namespace watch");
                    }
                });
            tokio::join!(ready, stream);
        };
        (labels, task)
    }

    /// Whether decisions can be made: no watch, or a watch that has listed every namespace.
    pub fn is_ready(&self) -> bool {
        self.watched.as_ref().is_none_or(|w| w.synced.load(Ordering::Relaxed))
    }

    /// A namespace's labels, if the watch has seen it.
    pub fn get(&self, name: &str) -> Option<NamespaceEntry> {
        let watched = self.watched.as_ref()?;
        watched.store.get(&ObjectRef::new(name)).map(NamespaceEntry)
    }
}

/// One cached namespace; holds its labels for as long as a decision needs them.
pub struct NamespaceEntry(Arc<PartialObjectMeta<Namespace>>);

impl NamespaceEntry {
    pub fn labels(&self) -> &Labels {
        self.0.metadata.labels.as_ref().unwrap_or(&crate::policy::NO_LABELS)
    }
}
