//! The policy in force, shared with every request through `arc-swap`: a request loads one
//! snapshot and decides all its images against it, while a reload swaps in a new one whole.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::{Policy, PolicyError};
use crate::metrics::{DecisionCounters, Metrics};

/// A compiled policy with its resolved counters.
pub struct PolicySnapshot {
    pub policy: Policy,
    pub counters: DecisionCounters,
    /// Counts loads since start; logged with every decision that cites the policy.
    pub generation: u64,
    /// Where it came from (file path, ConfigMap name, or the built-in default).
    pub source: String,
}

/// Holds the last good policy. Empty until a first policy loads, which keeps `/readyz` failing.
pub struct PolicyStore {
    current: ArcSwapOption<PolicySnapshot>,
    metrics: Metrics,
}

impl PolicyStore {
    pub fn new(metrics: Metrics) -> Self {
        PolicyStore { current: ArcSwapOption::empty(), metrics }
    }

    /// The policy in force, if any has loaded, as an owned handle (for code off the hot path).
    pub fn current(&self) -> Option<Arc<PolicySnapshot>> {
        self.current.load_full()
    }

    /// The policy in force for the length of one request. arc-swap's guard borrows the snapshot
    /// without touching the `Arc`'s shared count, which both cores would otherwise fight over
    /// on every review.
    pub fn in_force(&self) -> arc_swap::Guard<Option<Arc<PolicySnapshot>>> {
        self.current.load()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Puts a policy in force and returns its generation.
    pub fn install(&self, policy: Policy, source: &str) -> u64 {
        let generation = self.current().map_or(1, |snapshot| snapshot.generation + 1);
        let counters = self.metrics.decision_counters(policy.registries.len());
        self.metrics.policy_loaded(policy.registries.len());
        tracing::info!(
            target: "registry_gate::policy",
            generation,
            source,
            registries = policy.registries.len(),
            deny_rules = policy.deny.len(),
            mode = policy.mode.name(),
            "policy loaded"
        );
        for warning in &policy.warnings {
            tracing::warn!(target: "registry_gate::policy", generation, source, %warning, "policy warning");
        }
        self.current.store(Some(Arc::new(PolicySnapshot {
            policy,
            counters,
            generation,
            source: source.to_owned(),
        })));
        generation
    }

    /// Records a refused policy. The last good one stays in force, and the log says so loudly.
    pub fn reject(&self, error: &PolicyError, source: &str) {
        self.metrics.policy_reload_failures.inc();
        let in_force = self.current().map(|s| s.generation);
        tracing::error!(
            target: "registry_gate::policy",
            source,
            problems = error.problems.len(),
            kept_generation = in_force,
            "policy refused; {}: {error}",
            if in_force.is_some() { "the last good policy stays in force" } else { "no policy is in force yet" },
        );
    }
}
