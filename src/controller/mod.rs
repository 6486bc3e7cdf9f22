//! `registry-gate controller`: the second process, which keeps pull secrets real. It never sits
//! on the admission path and holds the Secret permissions the webhook does not.
//!
//! One reconciler, keyed by Namespace (kube-runtime's `Controller`): for a namespace it computes
//! the pull-secret copies the policy wants there ([`sync`]) and makes them so. What triggers it:
//!
//! - a Namespace created or changed (its own watch);
//! - a managed copy changed or deleted (a watch on the managed label, mapped to its namespace;
//!   the reconcile then lists that namespace's copies, so what it compares is never older than
//!   the event);
//! - a source Secret in registry-gate's namespace changed, or the policy changed: every
//!   namespace;
//! - a slow full resync (`--resync-seconds`) as a backstop.
//!
//! ECR key Secrets in registry-gate's namespace are turned into fresh pull secrets before their
//! tokens expire ([`ecr`]); the sync then carries them everywhere like any other source.
//!
//! Writes go through one rate limit (`--writes-per-second`), so a rotation across a thousand
//! namespaces never floods the API server. Problems are reported once per change, not once per
//! namespace: a source that fails its check gets one Warning Event on it, a conflict one in its
//! namespace.

pub mod audit;
pub mod connection;
pub mod ecr;
pub mod match_condition;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus::{Encoder, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::time::Instant;

use crate::policy::{self, PolicyStore};
use sync::{CopyState, SourceVerdict, Written};

/// How the controller runs.
#[derive(Clone)]
pub struct ControllerOptions {
    /// registry-gate's own namespace, where the source Secrets live; no copies are made in it.
    pub namespace: String,
    /// How often every namespace is reconciled even when nothing was seen to change.
    pub resync: Duration,
    /// Secret writes per second at most, across all namespaces.
    pub writes_per_second: u32,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A write or read against the API server failed (retried with backoff; never fatal).
    #[error("API request for {what} failed: {source}")]
    Api { what: String, source: kube::Error },
    /// No policy is in force yet; the namespace is looked at again shortly.
    #[error("no policy is in force yet")]
    NoPolicy,
}

/// What the sync exports, beside the policy metrics the policy store keeps.
#[derive(Clone)]
pub struct SyncMetrics {
    registry: Registry,
    /// `registry_gate_pull_secret_copies{registry,state}`: namespaces per state.
    copies: IntGaugeVec,
    /// `registry_gate_pull_secret_last_sync_timestamp_seconds{registry}`.
    last_sync: IntGaugeVec,
    /// `registry_gate_pull_secret_writes_total`: creates, replaces and deletes.
    writes: IntCounter,
    /// The ECR token refresh's own metrics (credential expiry, failures).
    ecr: ecr::EcrMetrics,
    /// The audit's metrics (violations of running workloads).
    audit: audit::AuditMetrics,
    /// The periodic registry connection tests' metrics.
    connection: connection::ConnectionMetrics,
    /// Whether the mutating webhook's match condition is the policy's.
    match_condition: match_condition::MatchConditionMetrics,
}

impl SyncMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let copies = IntGaugeVec::new(
            Opts::new(
                "registry_gate_pull_secret_copies",
                "Namespaces whose copy of a registry's pull secret is in each state",
            ),
            &["registry", "state"],
        )
        .expect("static metric definition");
        let last_sync = IntGaugeVec::new(
            Opts::new(
                "registry_gate_pull_secret_last_sync_timestamp_seconds",
                "When a copy of the registry's pull secret was last found or made current (Unix time)",
            ),
            &["registry"],
        )
        .expect("static metric definition");
        let writes = IntCounter::new(
            "registry_gate_pull_secret_writes_total",
            "Pull-secret copies created, replaced or deleted",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(copies.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_sync.clone()),
            Box::new(writes.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        SyncMetrics {
            registry,
            copies,
            last_sync,
            writes,
            ecr: ecr::EcrMetrics::new(),
            audit: audit::AuditMetrics::new(),
            connection: connection::ConnectionMetrics::new(),
            match_condition: match_condition::MatchConditionMetrics::new(),
        }
    }

    /// The ECR refresh's metrics, exported with these.
    pub fn ecr(&self) -> ecr::EcrMetrics {
        self.ecr.clone()
    }

    /// The connection tests' metrics, exported with these.
    pub fn connection(&self) -> connection::ConnectionMetrics {
        self.connection.clone()
    }

    /// The match condition's metric, exported with these.
    pub fn match_condition(&self) -> match_condition::MatchConditionMetrics {
        self.match_condition.clone()
    }

    /// The audit's metrics, exported with these.
    pub fn audit(&self) -> audit::AuditMetrics {
        self.audit.clone()
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
            + &self.ecr.render()
            + &self.audit.render()
            + &self.connection.render()
            + &self.match_condition.render()
    }
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A shared pace for writes: each takes the next free slot, `1 / rate` after the previous one.
struct WritePace {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl WritePace {
    fn new(per_second: u32) -> Self {
        WritePace {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    options: ControllerOptions,
    policy: Arc<PolicyStore>,
    sources: Store<Secret>,
    recorder: Recorder,
    metrics: SyncMetrics,
    pace: WritePace,
    /// The state of each (registry, namespace) copy, for the metrics and the status report.
    states: Mutex<BTreeMap<(String, String), CopyState>>,
    /// Problems already reported, so that each is reported once per change: by source name
    /// for sources, by `namespace/name` for conflicts.
    reported: Mutex<HashMap<String, String>>,
    /// The resource version of each copy as this process last wrote it, by (namespace, name).
    own_writes: OwnWrites,
}

/// The copies this process has just written, so that the watch event each write causes does
/// not bring its namespace back for a reconcile that would only list the copy it just wrote
/// (which doubled the API requests of a rotation). Only the event carrying exactly the version
/// written is skipped: an edit by anyone else makes a new version and is reconciled.
#[derive(Default)]
struct OwnWrites(Mutex<HashMap<(String, String), String>>);

impl OwnWrites {
    fn record(&self, namespace: &str, name: &str, version: Option<String>) {
        let Ok(mut writes) = self.0.lock() else { return };
        match version {
            Some(version) => writes.insert((namespace.to_owned(), name.to_owned()), version),
            None => writes.remove(&(namespace.to_owned(), name.to_owned())),
        };
    }

    fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut writes) = self.0.lock() {
            writes.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    /// Whether `copy` is, version for version, what this process last wrote (the entry is
    /// consumed: the echo comes once).
    fn is_echo(&self, copy: &Secret) -> bool {
        let (Some(namespace), Some(version)) = (copy.namespace(), copy.resource_version()) else {
            return false;
        };
        let Ok(mut writes) = self.0.lock() else { return false };
        let key = (namespace, copy.name_any());
        if writes.get(&key) == Some(&version) {
            writes.remove(&key);
            true
        } else {
            false
        }
    }
}

/// The name of the ConfigMap where the controller writes a status people can read.
pub const STATUS_CONFIGMAP: &str = "registry-gate-sync-status";

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    policy: Arc<PolicyStore>,
    options: ControllerOptions,
    metrics: SyncMetrics,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let managed = format!("{}={}", sync::MANAGED_LABEL, sync::MANAGED_VALUE);

    // The sources (registry-gate's namespace only) are cached: every reconcile reads them. The
    // copies are not: a reconcile lists its namespace's copies afresh, since a cache fed by a
    // second watch can lag the event that triggered the reconcile and hide a hand edit.
    let (sources, sources_writer) = reflector::store();
    let source_events = reflector::reflector(
        sources_writer,
        watcher(Api::<Secret>::namespaced(client.clone(), &options.namespace), watcher::Config::default()),
    )
    .backoff(crate::watch::WatchBackoff::default())
    .touched_objects();

    let context = Arc::new(Context {
        client: client.clone(),
        options: options.clone(),
        policy: policy.clone(),
        sources: sources.clone(),
        recorder: crate::policy::source::recorder(client.clone()),
        metrics,
        pace: WritePace::new(options.writes_per_second),
        states: Mutex::new(BTreeMap::new()),
        reported: Mutex::new(HashMap::new()),
        own_writes: OwnWrites::default(),
    });

    // Every namespace is reconciled when a source changes or a new policy is in force.
    let (all_tx, all_rx) = tokio::sync::mpsc::channel::<()>(1);
    let source_trigger = {
        let all_tx = all_tx.clone();
        source_events.for_each(move |_| {
            let all_tx = all_tx.clone();
            async move {
                let _ = all_tx.try_send(());
            }
        })
    };
    // The watch fills the source cache; until it holds a full list, a source not yet seen would
    // look deleted and its copies would be removed.
    let mut watches = tokio::task::JoinSet::new();
    watches.spawn(source_trigger);
    let stores_ready = async {
        let _ = sources.wait_until_ready().await;
    };
    tokio::select! {
        () = stores_ready => {}
        _ = watches.join_next() => {
            tracing::error!(target: "registry_gate::controller", "a Secret watch ended before its first list");
            return;
        }
    }
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(target: "registry_gate::controller", namespace = %options.namespace, "watching; syncing pull secrets");
    let policy_trigger = {
        let policy = policy.clone();
        async move {
            let mut seen = None;
            loop {
                let generation = policy.current().map(|snapshot| snapshot.generation);
                if generation != seen {
                    seen = generation;
                    let _ = all_tx.try_send(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let reconcile_all = stream::unfold(all_rx, |mut rx| async move { rx.recv().await.map(|()| ((), rx)) });

    let status = {
        let context = context.clone();
        async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                last = write_status(&context, last).await;
            }
        }
    };
    let mapper_namespace = {
        let context = context.clone();
        move |secret: Secret| {
            if context.own_writes.is_echo(&secret) {
                return None;
            }
            secret.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        }
    };
    let controller = Controller::new(namespaces, watcher::Config::default())
        .trigger_backoff(crate::watch::WatchBackoff::default())
        .watches(Api::<Secret>::all(client), watcher::Config::default().labels(&managed), mapper_namespace)
        .reconcile_all_on(reconcile_all)
        .with_config(
            kube::runtime::controller::Config::default().concurrency(reconcilers(options.writes_per_second)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(target: "registry_gate::controller", error = %e, "reconcile");
            }
        });
    tokio::select! {
        () = controller => {}
        _ = watches.join_next() => tracing::error!(target: "registry_gate::controller", "a Secret watch ended"),
        () = policy_trigger => {}
        () = status => {}
    }
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// Reconciles running at once. Each spends most of its time waiting for the API server (a LIST,
/// then a write), so the write rate a fixed number reaches is that number over the API server's
/// latency: 4 stalled near 100 writes/s at 20-40 ms. One reconciler per 25 writes/s allowed
/// (4 to 32) lets the limit, not the concurrency, set the pace.
fn reconcilers(writes_per_second: u32) -> u16 {
    (writes_per_second / 25).clamp(4, 32) as u16
}

fn error_policy(namespace: Arc<Namespace>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(target: "registry_gate::controller", namespace = %namespace.name_any(), error = %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

/// Makes one namespace hold exactly the copies the policy wants there.
async fn reconcile(namespace: Arc<Namespace>, context: Arc<Context>) -> Result<Action, ControllerError> {
    let name = namespace.name_any();
    let resync = Action::requeue(context.options.resync);
    if name == context.options.namespace || namespace.meta().deletion_timestamp.is_some() {
        return Ok(resync);
    }
    let snapshot = context.policy.current().ok_or(ControllerError::NoPolicy)?;
    let labels = namespace.metadata.labels.as_ref().unwrap_or(&policy::NO_LABELS);
    let wanted = sync::wanted_copies(&snapshot.policy, &policy::Namespace::labelled(&name, labels));
    let api: Api<Secret> = Api::namespaced(context.client.clone(), &name);
    let listed = api
        .list(&ListParams::default().labels(&format!("{}={}", sync::MANAGED_LABEL, sync::MANAGED_VALUE)))
        .await
        .map_err(|source| ControllerError::Api { what: format!("the copies in {name}"), source })?;
    // Managed Secrets that are not copies from this installation's sources (another
    // installation's, an ECR-refreshed source) are foreign here: never rewritten or deleted.
    let ours: HashMap<String, Secret> = listed
        .items
        .into_iter()
        .filter(|copy| sync::is_copy_from(copy, &context.options.namespace))
        .map(|copy| (copy.name_any(), copy))
        .collect();
    let mut states: Vec<(String, CopyState)> = Vec::new();
    // A failed write does not end the pass: the other copies are still made, every state is
    // recorded (the failed one as `failed`, which the gauges and alerts read), and the first
    // error is returned at the end so that the namespace is retried.
    let mut first_error: Option<ControllerError> = None;

    for wanted in wanted.values() {
        let source_ref = ObjectRef::<Secret>::new(&wanted.name).within(&context.options.namespace);
        let source = context.sources.get(&source_ref);
        let existing = ours.get(&wanted.name);
        let state = match sync::judge_source(source.as_deref(), &wanted.registries) {
            SourceVerdict::Missing => {
                context.report_source(&wanted.name, None).await;
                if let Some(copy) = existing {
                    context.pace.wait().await;
                    match sync::delete_copy(&api, copy).await {
                        Ok(_) => {
                            context.own_writes.forget(&name, &wanted.name);
                            context.metrics.writes.inc();
                            log_write(&name, &wanted.name, "deleted: its source is gone");
                        }
                        Err(e) => {
                            first_error.get_or_insert(api_error(&name, &wanted.name, e));
                        }
                    }
                }
                CopyState::MissingSource
            }
            SourceVerdict::Invalid(problems) => {
                let summary = problems
                    .iter()
                    .map(|(registry, p)| format!("{registry}: {p}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                context.report_source(&wanted.name, Some((source.as_deref(), summary))).await;
                CopyState::InvalidSource
            }
            SourceVerdict::Ready { data, hash } => {
                context.report_source(&wanted.name, None).await;
                if existing.is_some_and(|copy| sync::holds(copy, &hash)) {
                    CopyState::Synced
                } else {
                    let source = source.as_deref().expect("a ready source exists");
                    let copy = sync::copy_of(
                        sync::Source { namespace: &context.options.namespace, secret: source },
                        &name,
                        wanted,
                        &data,
                        &hash,
                    );
                    context.pace.wait().await;
                    match sync::put_copy(&api, existing, copy).await {
                        Err(e) => {
                            first_error.get_or_insert(api_error(&name, &wanted.name, e));
                            CopyState::Failed
                        }
                        Ok(Written::Conflict) => {
                            context.report_conflict(&name, &wanted.name).await;
                            CopyState::Conflict
                        }
                        Ok(Written::Created(version) | Written::Replaced(version)) => {
                            let what = if existing.is_some() { "updated" } else { "created" };
                            context.own_writes.record(&name, &wanted.name, version);
                            context.metrics.writes.inc();
                            context.forget(&format!("{name}/{}", wanted.name));
                            log_write(&name, &wanted.name, what);
                            CopyState::Synced
                        }
                    }
                }
            }
        };
        for registry in &wanted.registries {
            states.push((registry.name.clone(), state));
        }
    }

    // Copies no longer wanted: registry removed, namespace out of scope or exempt.
    for (copy_name, copy) in &ours {
        if !wanted.contains_key(copy_name) {
            context.pace.wait().await;
            match sync::delete_copy(&api, copy).await {
                Ok(_) => {
                    context.own_writes.forget(&name, copy_name);
                    context.metrics.writes.inc();
                    log_write(&name, copy_name, "deleted: no registry wants it here");
                }
                Err(e) => {
                    first_error.get_or_insert(api_error(&name, copy_name, e));
                }
            }
        }
    }
    context.record_states(&name, states);
    first_error.map_or(Ok(resync), Err)
}

fn api_error(namespace: &str, secret: &str, source: kube::Error) -> ControllerError {
    ControllerError::Api { what: format!("Secret {namespace}/{secret}"), source }
}

fn log_write(namespace: &str, secret: &str, what: &str) {
    tracing::info!(target: "registry_gate::controller", namespace, secret, "pull secret copy {what}");
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Context {
    /// Records the states of one namespace's copies and brings the gauges up to date.
    fn record_states(&self, namespace: &str, states: Vec<(String, CopyState)>) {
        let Ok(mut all) = self.states.lock() else { return };
        all.retain(|(_, ns), _| ns != namespace);
        let now = now_seconds();
        for (registry, state) in states {
            if state == CopyState::Synced {
                self.metrics.last_sync.with_label_values(&[&registry]).set(now);
            }
            all.insert((registry, namespace.to_owned()), state);
        }
        let mut counts: BTreeMap<(&str, CopyState), i64> = BTreeMap::new();
        for ((registry, _), state) in all.iter() {
            *counts.entry((registry.as_str(), *state)).or_default() += 1;
        }
        // Every (registry, state) pair known is set, zeros included, so that a state that
        // empties does not keep its last count.
        self.metrics.copies.reset();
        for ((registry, _), _) in all.iter() {
            for state in CopyState::ALL {
                let count = counts.get(&(registry.as_str(), state)).copied().unwrap_or(0);
                self.metrics.copies.with_label_values(&[registry.as_str(), state.label()]).set(count);
            }
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut reported) = self.reported.lock() {
            reported.remove(key);
        }
    }

    /// Whether `problem` is news for `key`; remembers it.
    fn is_news(&self, key: &str, problem: &str) -> bool {
        let Ok(mut reported) = self.reported.lock() else { return false };
        if reported.get(key).map(String::as_str) == Some(problem) {
            return false;
        }
        reported.insert(key.to_owned(), problem.to_owned());
        true
    }

    /// Reports a source's problem once per change (`None`: the source is fine or gone).
    async fn report_source(&self, name: &str, problem: Option<(Option<&Secret>, String)>) {
        let key = format!("source:{name}");
        let Some((secret, summary)) = problem else {
            self.forget(&key);
            return;
        };
        if !self.is_news(&key, &summary) {
            return;
        }
        tracing::warn!(target: "registry_gate::controller", source = name, problem = %summary, "source pull secret refused; copies keep their last good content");
        if let Some(secret) = secret {
            let note = format!("not copied; copies keep their last good content: {summary}");
            self.publish(EventType::Warning, "InvalidPullSecret", note, secret.object_ref(&())).await;
        }
    }

    /// Reports a Secret of a wanted copy's name that is not registry-gate's, once.
    async fn report_conflict(&self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        if !self.is_news(&key, "conflict") {
            return;
        }
        tracing::warn!(target: "registry_gate::controller", namespace, secret = name, "a Secret registry-gate did not create has the pull secret's name; left alone");
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        };
        let note = format!(
            "registry-gate wanted to put its copy of pull secret {name:?} here, but a Secret of that name exists without the {}={} label; it was left alone and Pods here get its content",
            sync::MANAGED_LABEL,
            sync::MANAGED_VALUE
        );
        self.publish(EventType::Warning, "PullSecretConflict", note, reference).await;
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String, reference: ObjectReference) {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: "Sync".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(target: "registry_gate::controller", error = %e, "cannot record an Event");
        }
    }
}

/// Writes the status ConfigMap when it changed: per registry, how many namespaces are in each
/// state, and up to 20 namespaces of each state other than synced. Returns what it wrote.
async fn write_status(context: &Context, last: String) -> String {
    let text = {
        let Ok(states) = context.states.lock() else { return last };
        let mut by_registry: BTreeMap<&str, BTreeMap<CopyState, Vec<&str>>> = BTreeMap::new();
        for ((registry, namespace), state) in states.iter() {
            by_registry.entry(registry).or_default().entry(*state).or_default().push(namespace);
        }
        let mut text = String::new();
        for (registry, states) in by_registry {
            text += &format!("{registry}:\n");
            for (state, namespaces) in states {
                text += &format!("  {}: {}", state.label(), namespaces.len());
                if state != CopyState::Synced {
                    let shown: Vec<&str> = namespaces.iter().take(20).copied().collect();
                    text += &format!(
                        " [{}{}]",
                        shown.join(", "),
                        if namespaces.len() > 20 { ", ..." } else { "" }
                    );
                }
                text += "\n";
            }
        }
        text
    };
    if text == last {
        return last;
    }
    let api: Api<ConfigMap> = Api::namespaced(context.client.clone(), &context.options.namespace);
    let configmap = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": STATUS_CONFIGMAP, "namespace": context.options.namespace},
        "data": {"status.yaml": text},
    });
    let params = PatchParams::apply("registry-gate-controller").force();
    match api.patch(STATUS_CONFIGMAP, &params, &Patch::Apply(&configmap)).await {
        Ok(_) => text,
        Err(e) => {
            tracing::warn!(target: "registry_gate::controller", error = %e, "cannot write the status ConfigMap");
            last
        }
    }
}

/// The controller's operations port: `/metrics` (the policy's and the sync's), `/healthz`, and
/// `/readyz`, ready once a policy is in force and the Secret watches have listed everything.
pub async fn serve_operations(
    listener: tokio::net::TcpListener,
    policy: Arc<PolicyStore>,
    metrics: SyncMetrics,
    ready: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let readiness = {
        let policy = policy.clone();
        move || {
            let (policy, ready) = (policy.clone(), ready.clone());
            async move {
                let watching = ready.load(std::sync::atomic::Ordering::Relaxed);
                match (policy.current(), watching) {
                    (Some(snapshot), true) => (
                        axum::http::StatusCode::OK,
                        format!("ready: policy generation {}\n", snapshot.generation),
                    ),
                    (None, _) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no valid policy loaded yet\n".to_owned(),
                    ),
                    (_, false) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: the Secret watches have not listed yet\n".to_owned(),
                    ),
                }
            }
        }
    };
    let router = axum::Router::new()
        .route("/metrics", get(move || async move { policy.metrics().render() + &metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
