//! Prometheus metrics for audit dashboards (`manifests/monitoring/`).
//!
//! Labels are bounded: policy entry names, `unregistered` and `invalid` for registries; fixed
//! words for operations, kinds and results. A registry's counters are resolved the first time it
//! decides an image ([`DecisionCounters`]) and kept, so that counting on the hot path is one
//! atomic add, with no lock and no label hashing; registries that never match export no series,
//! which keeps a 10,000-entry policy from costing megabytes and a 30,000-line scrape.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 10 µs to 1 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// Registry label for images that match no entry, and for strings that are no reference.
pub const UNREGISTERED: &str = "unregistered";
pub const INVALID: &str = "invalid";
/// Registry label for images refused by a deny rule.
pub const DENY_RULE: &str = "deny-rule";

/// Every metric registry-gate exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `registry_gate_admission_requests_total{operation,kind,result}`; result is allowed,
    /// denied, audited, exempt or error.
    pub requests: RequestCounters,
    /// `registry_gate_image_decisions_total{registry,decision}`.
    image_decisions: IntCounterVec,
    /// `registry_gate_pull_secret_injections_total{registry}`.
    injections: IntCounterVec,
    /// `registry_gate_admission_duration_seconds`: AdmissionReview in to response out.
    pub duration: Histogram,
    pub policy_generation: IntGauge,
    pub policy_registries: IntGauge,
    pub policy_last_reload: Gauge,
    pub policy_reload_failures: IntCounter,
    /// `registry_gate_connections_open`: webhook connections past their TLS handshake.
    pub connections_open: IntGauge,
    /// `registry_gate_connections_opened_total{protocol}`: connections past their TLS
    /// handshake, by the protocol ALPN chose (`h2` or `http/1.1`). Beside the request count it
    /// shows whether the API server keeps its connections: a handful over a day is reuse, one
    /// per review is a handshake per review.
    pub connections_opened: IntCounterVec,
    /// `registry_gate_connections_closed_total{reason}`: connections the server closed itself:
    /// `limit` (refused at the connection limit), `idle` (no request for the idle timeout),
    /// `no-request` (no request within the header timeout of the handshake).
    pub connections_closed: IntCounterVec,
    /// `registry_gate_requests_shed_total`: requests answered 503 because the memory set aside
    /// for request bodies was in use, by everyone or by their own client.
    pub requests_shed: IntCounter,
    /// `registry_gate_requests_shed_per_client_total`: of those, the requests whose own client
    /// (peer address) held its share of that memory.
    pub requests_shed_per_client: IntCounter,
    /// `registry_gate_audit_lines_suppressed_total`: audit log lines dropped by the rate limit.
    pub audit_lines_suppressed: IntCounter,
    /// `registry_gate_tls_certificate_expiry_timestamp_seconds`: when the serving certificate in
    /// use expires, set at every load and reload.
    pub tls_certificate_expiry: IntGauge,
}

/// `registry_gate_admission_requests_total`, counted once per review. The label sets the server
/// uses are few and fixed, so each is resolved on first use and kept: counting is then one
/// atomic add, with no label hashing and no read of the vector's lock (whose count both cores
/// would otherwise write on every review).
#[derive(Clone)]
pub struct RequestCounters {
    counters: IntCounterVec,
    resolved: std::sync::Arc<[OnceLock<IntCounter>]>,
}

/// The labels [`RequestCounters`] keeps resolved; any other is looked up each time.
const REQUEST_OPERATIONS: [&str; 6] = ["CREATE", "UPDATE", "DELETE", "CONNECT", "other", "unknown"];
/// Workload kinds named in the request counter; any other is counted as `other`, keeping the
/// labels bounded.
pub const COUNTED_KINDS: [&str; 8] = [
    "Pod",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicationController",
];
const REQUEST_KINDS: [&str; 11] = [
    COUNTED_KINDS[0],
    COUNTED_KINDS[1],
    COUNTED_KINDS[2],
    COUNTED_KINDS[3],
    COUNTED_KINDS[4],
    COUNTED_KINDS[5],
    COUNTED_KINDS[6],
    COUNTED_KINDS[7],
    "ConfigMap",
    "other",
    "unknown",
];
const REQUEST_RESULTS: [&str; 5] = ["allowed", "denied", "audited", "exempt", "error"];

impl RequestCounters {
    fn new(counters: IntCounterVec) -> Self {
        let size = REQUEST_OPERATIONS.len() * REQUEST_KINDS.len() * REQUEST_RESULTS.len();
        RequestCounters { counters, resolved: (0..size).map(|_| OnceLock::new()).collect() }
    }

    /// One review answered.
    pub fn inc(&self, operation: &str, kind: &str, result: &str) {
        let at = |labels: &[&str], label: &str| labels.iter().position(|known| *known == label);
        let labels = [operation, kind, result];
        match (at(&REQUEST_OPERATIONS, operation), at(&REQUEST_KINDS, kind), at(&REQUEST_RESULTS, result)) {
            (Some(o), Some(k), Some(r)) => {
                let index = (o * REQUEST_KINDS.len() + k) * REQUEST_RESULTS.len() + r;
                self.resolved[index].get_or_init(|| self.counters.with_label_values(&labels)).inc();
            }
            _ => self.counters.with_label_values(&labels).inc(),
        }
    }
}

/// Counters of one policy's registries, each resolved on first use and then only added to.
pub struct DecisionCounters {
    registries: Vec<OnceLock<RegistryCounters>>,
    image_decisions: IntCounterVec,
    injections: IntCounterVec,
    unregistered: IntCounter,
    invalid: IntCounter,
    deny_listed: IntCounter,
}

struct RegistryCounters {
    allowed: IntCounter,
    denied: IntCounter,
    injected: IntCounter,
}

/// A policy entry as the counters know it: its position in the policy, and its name (the label).
#[derive(Debug, Clone, Copy)]
pub struct RegistryLabel<'a> {
    pub position: usize,
    pub name: &'a str,
}

impl DecisionCounters {
    /// The counters of a registry of the policy these counters were made for.
    fn registry(&self, registry: RegistryLabel<'_>) -> Option<&RegistryCounters> {
        let name = registry.name;
        Some(self.registries.get(registry.position)?.get_or_init(|| RegistryCounters {
            allowed: self.image_decisions.with_label_values(&[name, "allowed"]),
            denied: self.image_decisions.with_label_values(&[name, "denied"]),
            injected: self.injections.with_label_values(&[name]),
        }))
    }

    /// An image allowed by `registry`.
    pub fn allowed(&self, registry: RegistryLabel<'_>) {
        if let Some(counters) = self.registry(registry) {
            counters.allowed.inc();
        }
    }

    /// An image denied although it matched `registry` (namespace scope).
    pub fn denied_by(&self, registry: RegistryLabel<'_>) {
        if let Some(counters) = self.registry(registry) {
            counters.denied.inc();
        }
    }

    pub fn unregistered(&self) {
        self.unregistered.inc();
    }

    pub fn invalid(&self) {
        self.invalid.inc();
    }

    pub fn deny_listed(&self) {
        self.deny_listed.inc();
    }

    /// A pull secret of `registry` added to a Pod.
    pub fn injected(&self, registry: RegistryLabel<'_>) {
        if let Some(counters) = self.registry(registry) {
            counters.injected.inc();
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("registry_gate_admission_requests_total", "AdmissionReviews answered"),
            &["operation", "kind", "result"],
        )
        .expect("static metric definition");
        let image_decisions = IntCounterVec::new(
            Opts::new("registry_gate_image_decisions_total", "Images decided, by policy entry"),
            &["registry", "decision"],
        )
        .expect("static metric definition");
        let injections = IntCounterVec::new(
            Opts::new("registry_gate_pull_secret_injections_total", "Pull secrets added to Pods"),
            &["registry"],
        )
        .expect("static metric definition");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "registry_gate_admission_duration_seconds",
                "Time to answer an AdmissionReview",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let policy_generation =
            IntGauge::new("registry_gate_policy_generation", "Policies loaded since start").expect("static");
        let policy_registries =
            IntGauge::new("registry_gate_policy_registries", "Registries in the policy in force")
                .expect("static");
        let policy_last_reload = Gauge::new(
            "registry_gate_policy_last_reload_timestamp_seconds",
            "When the policy in force was loaded (Unix time)",
        )
        .expect("static");
        let policy_reload_failures = IntCounter::new(
            "registry_gate_policy_reload_failures_total",
            "Policy loads refused; the previous policy stayed in force",
        )
        .expect("static");
        let connections_open = IntGauge::new(
            "registry_gate_connections_open",
            "Webhook connections open (past the TLS handshake)",
        )
        .expect("static");
        let connections_opened = IntCounterVec::new(
            Opts::new(
                "registry_gate_connections_opened_total",
                "Webhook connections past their TLS handshake, by the protocol chosen (h2 or http/1.1)",
            ),
            &["protocol"],
        )
        .expect("static metric definition");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "registry_gate_connections_closed_total",
                "Webhook connections closed by the server: at the limit, idle, or without a request",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let requests_shed = IntCounter::new(
            "registry_gate_requests_shed_total",
            "Requests answered 503 because the memory for request bodies was in use",
        )
        .expect("static");
        let requests_shed_per_client = IntCounter::new(
            "registry_gate_requests_shed_per_client_total",
            "Requests answered 503 because their client held its share of the memory for request bodies (also counted in registry_gate_requests_shed_total)",
        )
        .expect("static");
        let audit_lines_suppressed = IntCounter::new(
            "registry_gate_audit_lines_suppressed_total",
            "Audit log lines dropped by the audit log's rate limit",
        )
        .expect("static");
        let tls_certificate_expiry = IntGauge::new(
            "registry_gate_tls_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
        )
        .expect("static");
        for collector in [
            Box::new(tls_certificate_expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(image_decisions.clone()),
            Box::new(injections.clone()),
            Box::new(duration.clone()),
            Box::new(policy_generation.clone()),
            Box::new(policy_registries.clone()),
            Box::new(policy_last_reload.clone()),
            Box::new(policy_reload_failures.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_opened.clone()),
            Box::new(connections_closed.clone()),
            Box::new(requests_shed.clone()),
            Box::new(requests_shed_per_client.clone()),
            Box::new(audit_lines_suppressed.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests: RequestCounters::new(requests),
            image_decisions,
            injections,
            duration,
            policy_generation,
            policy_registries,
            policy_last_reload,
            policy_reload_failures,
            connections_open,
            connections_opened,
            connections_closed,
            requests_shed,
            requests_shed_per_client,
            audit_lines_suppressed,
            tls_certificate_expiry,
        }
    }

    /// The per-registry counters of a policy of `registries` entries about to be put in force.
    pub fn decision_counters(&self, registries: usize) -> DecisionCounters {
        let denied = |label: &str| self.image_decisions.with_label_values(&[label, "denied"]);
        DecisionCounters {
            registries: (0..registries).map(|_| OnceLock::new()).collect(),
            image_decisions: self.image_decisions.clone(),
            injections: self.injections.clone(),
            unregistered: denied(UNREGISTERED),
            invalid: denied(INVALID),
            deny_listed: denied(DENY_RULE),
        }
    }

    /// Records that a policy of `registries` entries was put in force.
    pub fn policy_loaded(&self, registries: usize) {
        self.policy_generation.inc();
        self.policy_registries.set(registries as i64);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.policy_last_reload.set(now.as_secs_f64());
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
