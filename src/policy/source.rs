//! Where the policy comes from, and how edits reach the running webhook.
//!
//! Every source ends in the same place: parse, validate and compile off the hot path, then
//! [`PolicyStore::install`] (one `ArcSwap::store`), or [`PolicyStore::reject`], which keeps the
//! last good policy and says so loudly.
//!
//! - A file is polled for changes to its content. The kubelet updates mounted ConfigMaps by
//!   swapping a `..data` symlink; reading the file by path sees the new target, so polling needs no
//!   special case for it. (A ConfigMap volume itself takes up to a minute to update; the ConfigMap
//!   watcher below takes well under a second.)
//! - A ConfigMap is watched through the API server (kube-rs watcher, which reconnects with backoff
//!   after errors); a refused edit is also recorded as a Warning Event on the ConfigMap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use super::{Policy, PolicyError, PolicyStore};

/// The ConfigMap key that holds the policy.
pub const CONFIGMAP_KEY: &str = "policy.yaml";
/// The Event reason for a refused policy edit.
pub const REJECTED_REASON: &str = "PolicyRejected";
/// The Event reason for an admitted edit that switches enforcement off somewhere.
pub const WEAKENED_REASON: &str = "PolicyWeakened";
/// The API caps an Event's note at 1 KiB.
const NOTE_MAX_BYTES: usize = 1000;

/// Parses `text` and puts it in force, or refuses it and keeps the last good policy.
pub fn load(store: &PolicyStore, text: &str, source: &str) -> Result<u64, PolicyError> {
    match Policy::parse(text) {
        Ok(policy) => Ok(store.install(policy, source)),
        Err(error) => {
            store.reject(&error, source);
            Err(error)
        }
    }
}

/// What the file reloader remembers of the text it last read: a SHA-256, not the text, which for
/// a large policy would keep a second copy of the file alive for the life of the process (1 MB at
/// 10,000 entries, benches/RESULTS.md). Cryptographic so that no edit can look unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(text: &str) -> Self {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref());
        Fingerprint(bytes)
    }
}

/// Reloads a policy file whenever its content differs from the text read at start (`loaded` is
/// its fingerprint) or from the last text seen, polling every `interval`.
pub async fn watch_file(path: PathBuf, loaded: Fingerprint, store: Arc<PolicyStore>, interval: Duration) {
    let source = path.display().to_string();
    let mut last = loaded;
    loop {
        tokio::time::sleep(interval).await;
        let current = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) => {
                // Mid-swap or deleted: keep the policy in force and look again next time.
                tracing::debug!(target: "registry_gate::policy", source, error = %e, "policy file unreadable");
                continue;
            }
        };
        let fingerprint = Fingerprint::of(&current);
        if fingerprint == last {
            continue;
        }
        let _ = load(&store, &current, &source);
        last = fingerprint;
    }
}

/// A ConfigMap named `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapName {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ConfigMapName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ConfigMapName { namespace: namespace.to_owned(), name: name.to_owned() })
            }
            _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for ConfigMapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Event recorder of this process, reporting as `registry-gate` and the Pod's name.
pub fn recorder(client: Client) -> Recorder {
    let reporter = Reporter {
        controller: "registry-gate".into(),
        instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
    };
    Recorder::new(client, reporter)
}

/// Records who weakened the policy in `namespace/name`, and how, as a Warning Event on it.
pub async fn record_weakening(
    recorder: &Recorder,
    namespace: &str,
    name: &str,
    user: &str,
    weakened: &[String],
) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    };
    let note = format!("{user} weakened the policy: {}", weakened.join("; "));
    let event = Event {
        type_: EventType::Warning,
        reason: WEAKENED_REASON.into(),
        note: Some(truncate_note(note)),
        action: "Edit".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::warn!(target: "registry_gate::policy", error = %e, "cannot record the policy Event");
    }
}

fn truncate_note(mut note: String) -> String {
    if note.len() > NOTE_MAX_BYTES {
        let cut = (0..=NOTE_MAX_BYTES).rev().find(|i| note.is_char_boundary(*i)).unwrap_or(0);
        note.truncate(cut);
        note.push('…');
    }
    note
}

/// Watches the policy ConfigMap and reloads on every change, until the task is dropped.
pub async fn watch_configmap(client: Client, configmap: ConfigMapName, store: Arc<PolicyStore>) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &configmap.namespace);
    let recorder = recorder(client);
    let source = format!("ConfigMap {configmap}");
    let config = watcher::Config::default().fields(&format!("metadata.name={}", configmap.name));
    let mut changes =
        watcher(api, config).backoff(crate::watch::WatchBackoff::default()).applied_objects().boxed();
    let mut last_version: Option<String> = None;
    while let Some(change) = changes.next().await {
        let object = match change {
            Ok(object) => object,
            Err(e) => {
                tracing::warn!(target: "registry_gate::policy", source, error = %e, "watching the policy ConfigMap failed; retrying");
                continue;
            }
        };
        // A relist after a reconnect repeats the object; only a new version is an edit.
        let version = object.metadata.resource_version.clone();
        if version.is_some() && version == last_version {
            continue;
        }
        last_version = version;
        let Some(text) = object.data.as_ref().and_then(|data| data.get(CONFIGMAP_KEY)) else {
            let error = missing_key_error();
            store.reject(&error, &source);
            record_rejection(&recorder, &object, &error).await;
            continue;
        };
        if let Err(error) = load(&store, text, &source) {
            record_rejection(&recorder, &object, &error).await;
        }
    }
}

fn missing_key_error() -> PolicyError {
    PolicyError {
        problems: vec![super::Problem {
            field: format!("data.{CONFIGMAP_KEY}"),
            line: None,
            message: "is missing; the ConfigMap holds no policy".into(),
        }],
    }
}

async fn record_rejection(recorder: &Recorder, object: &ConfigMap, error: &PolicyError) {
    let note = format!("policy refused, the last good policy stays in force: {error}");
    let event = Event {
        type_: EventType::Warning,
        reason: REJECTED_REASON.into(),
        note: Some(truncate_note(note)),
        action: "Reload".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(target: "registry_gate::policy", error = %e, "cannot record the policy Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_names_are_namespace_slash_name() {
        let name: ConfigMapName = "registry-gate/registry-gate-policy".parse().expect("valid");
        assert_eq!(name.to_string(), "registry-gate/registry-gate-policy");
        for bad in ["policy", "/policy", "ns/", "a/b/c"] {
            assert!(bad.parse::<ConfigMapName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fingerprint_changes_with_any_byte() {
        let text = crate::check::BUNDLED_POLICY;
        let mut edited = text.to_owned();
        assert_eq!(Fingerprint::of(text), Fingerprint::of(&edited));
        edited.push(' ');
        assert_ne!(Fingerprint::of(text), Fingerprint::of(&edited));
        assert_ne!(Fingerprint::of(""), Fingerprint::of(" "));
    }

    #[tokio::test]
    async fn a_bad_file_edit_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("policy.yaml");
        let good = "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries: []\n";
        std::fs::write(&path, good).expect("written");
        let store = Arc::new(PolicyStore::new(crate::metrics::Metrics::new()));
        load(&store, good, "test").expect("valid");
        let watcher = tokio::spawn(watch_file(
            path.clone(),
            Fingerprint::of(good),
            store.clone(),
            Duration::from_millis(10),
        ));

        std::fs::write(&path, "registries: [\n").expect("written");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.current().map(|s| s.generation), Some(1), "the broken edit is refused");
        assert_eq!(store.metrics().policy_reload_failures.get(), 1);

        let edited = good.replace("[]", "[{name: a, type: Public, url: quay.io}]");
        std::fs::write(&path, edited).expect("written");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let snapshot = store.current().expect("a policy");
        assert_eq!((snapshot.generation, snapshot.policy.registries.len()), (2, 1));
        watcher.abort();
    }
}
