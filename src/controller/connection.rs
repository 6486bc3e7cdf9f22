//! Periodic connection tests: every registry of the policy tested as `registry-gate registry
//! test` tests it, with the credentials of its source pull Secret, so that an expired token or
//! an unreachable registry shows on the dashboard (and fires `RegistryGateRegistryUnreachable`)
//! before a deploy fails on ImagePullBackOff.
//!
//! Off unless `--registry-test-interval-seconds` is set: the tests are outbound connections
//! from the cluster to every registry, which some clusters' egress rules refuse and some
//! registries count. Entries with a wildcard host have no one host to test and are skipped.
//! Results are metrics only (labels: the entry's name and the failed stage, both bounded by
//! the policy), and a log line when a registry's result changes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::credentials::DOCKER_CONFIG_JSON_KEY;
use crate::policy::PolicyStore;
use crate::registry_test::{Credentials, Report, Stage, Target, TestOptions, test_registry};

/// Tests running at once.
const CONCURRENCY: usize = 8;

/// How the tests run.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// registry-gate's own namespace, where the source pull Secrets are.
    pub namespace: String,
    /// Time between rounds.
    pub interval: Duration,
    /// Each step's limit (lookup, connection, handshake, request).
    pub timeout: Duration,
    /// CA certificates trusted besides Mozilla's roots.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// `registry_gate_registry_test_*`.
#[derive(Clone)]
pub struct ConnectionMetrics {
    registry: Registry,
    success: IntGaugeVec,
    last_run: IntGaugeVec,
    failures: IntCounterVec,
}

impl ConnectionMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let success = IntGaugeVec::new(
            Opts::new(
                "registry_gate_registry_test_success",
                "Whether the last connection test of the registry passed (1) or failed (0)",
            ),
            &["registry"],
        )
        .expect("static metric definition");
        let last_run = IntGaugeVec::new(
            Opts::new(
                "registry_gate_registry_test_last_run_timestamp_seconds",
                "When the registry was last tested (Unix time)",
            ),
            &["registry"],
        )
        .expect("static metric definition");
        let failures = IntCounterVec::new(
            Opts::new(
                "registry_gate_registry_test_failures_total",
                "Failed connection tests of the registry, by the stage that failed",
            ),
            &["registry", "stage"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(success.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_run.clone()),
            Box::new(failures.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        ConnectionMetrics { registry, success, last_run, failures }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Records one registry's result. Every stage's counter exists from the first result on, at
    /// zero, so that a failure is an increase the alert can see (and name) at once.
    pub fn record(&self, registry: &str, report: &Report) {
        for stage in Stage::ALL {
            let counter = self.failures.with_label_values(&[registry, stage.as_str()]);
            if report.failed_stage == Some(stage) {
                counter.inc();
            }
        }
        self.success.with_label_values(&[registry]).set(i64::from(report.is_success()));
        self.last_run.with_label_values(&[registry]).set(now_seconds());
    }

    /// Drops the series of registries no longer in the policy.
    fn retain(&self, tested: &HashSet<String>, known: &mut HashSet<String>) {
        for gone in known.difference(tested) {
            let _ = self.success.remove_label_values(&[gone]);
            let _ = self.last_run.remove_label_values(&[gone]);
            for stage in Stage::ALL {
                let _ = self.failures.remove_label_values(&[gone, stage.as_str()]);
            }
        }
        known.clone_from(tested);
    }
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Tests every registry every `interval`, until the task is dropped.
pub async fn run(
    client: Client,
    policy: Arc<PolicyStore>,
    options: ConnectionOptions,
    metrics: ConnectionMetrics,
) {
    let secrets: Api<Secret> = Api::namespaced(client, &options.namespace);
    let test_options = TestOptions {
        timeout: options.timeout,
        extra_roots: options.extra_roots.clone(),
        ..TestOptions::default()
    };
    let mut known = HashSet::new();
    let mut last: BTreeMap<String, Option<Stage>> = BTreeMap::new();
    loop {
        if let Some(snapshot) = policy.current() {
            // (name, target, pull secret) for every entry with one host.
            let entries: Vec<(String, Target, Option<String>)> = snapshot
                .policy
                .registries
                .iter()
                .filter_map(|r| Some((r.name.clone(), Target::from_registry(r).ok()?, r.pull_secret.clone())))
                .collect();
            let results: Vec<(String, Report)> = stream::iter(entries)
                .map(|(name, target, pull_secret)| {
                    let (secrets, test_options) = (&secrets, &test_options);
                    async move {
                        let credentials = match &pull_secret {
                            Some(secret) => credentials(secrets, secret, &target).await,
                            None => None,
                        };
                        let report = test_registry(&target, credentials.as_ref(), test_options).await;
                        (name, report)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let tested: HashSet<String> = results.iter().map(|(name, _)| name.clone()).collect();
            for (name, report) in &results {
                metrics.record(name, report);
                let before = last.insert(name.clone(), report.failed_stage);
                if before != Some(report.failed_stage) {
                    match report.failed_stage {
                        // The report's message names hosts and stages, never a credential.
                        Some(stage) => {
                            tracing::warn!(target: "registry_gate::connection", registry = %name, stage = %stage, message = %report.message, "registry connection test failed")
                        }
                        None => {
                            tracing::info!(target: "registry_gate::connection", registry = %name, message = %report.message, "registry connection test passed")
                        }
                    }
                }
            }
            last.retain(|name, _| tested.contains(name));
            metrics.retain(&tested, &mut known);
        }
        tokio::time::sleep(options.interval).await;
    }
}

/// The credentials for `target` in the source pull Secret `name`, when it exists and holds
/// them; otherwise the test runs without, and says so in its report. (The sync reports
/// missing or malformed sources; this does not repeat it.)
async fn credentials(secrets: &Api<Secret>, name: &str, target: &Target) -> Option<Credentials> {
    let secret = secrets.get_opt(name).await.ok().flatten()?;
    let config = secret.data.as_ref()?.get(DOCKER_CONFIG_JSON_KEY)?;
    Credentials::from_docker_config(&config.0, target).ok()
}
