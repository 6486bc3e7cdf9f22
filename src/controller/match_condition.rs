//! Keeps the mutating webhook's `registry-gate-needs-pull-secret` matchCondition in step with
//! the policy, so that the API server does not call the webhook for Pods that need no pull
//! secret ([`crate::policy::match_condition`] says how the condition is derived and why it can
//! only send too many Pods, never too few).
//!
//! The condition is written after each policy change and checked again on an interval, which
//! also puts it back if an apply of the manifests removed it. Only the one webhook's one
//! condition is touched: every other field and condition stays as the install wrote it. When
//! the policy in force has no condition that fits ([`crate::policy::match_condition::MAX_HOSTS`]),
//! the condition is removed and every Pod is sent.
//!
//! Between a policy change and the write (a poll of 200 ms and one request), a Pod on a host
//! that just gained a pull secret may be admitted without it, as it would be before the
//! controller had copied the new Secret into its namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MatchCondition, MutatingWebhookConfiguration};
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tokio::time::Instant;

use crate::policy::{PolicyStore, match_condition};

/// The webhook whose condition this keeps, as the manifests name it.
pub const MUTATING_WEBHOOK: &str = "pull-secrets.registry-gate.io";

/// Who the API server records as the writer of the condition (`managedFields`).
const FIELD_MANAGER: &str = "registry-gate-controller";

/// How often the policy's generation is looked at.
const POLL: Duration = Duration::from_millis(200);

/// How soon a failed read or write is first tried again; the wait doubles with each failure
/// in a row, up to the recheck interval, so that an install without the configuration is not
/// asked every few seconds forever.
const RETRY: Duration = Duration::from_secs(5);

/// What the task needs.
#[derive(Debug, Clone)]
pub struct MatchConditionOptions {
    /// The MutatingWebhookConfiguration that holds [`MUTATING_WEBHOOK`].
    pub configuration: String,
    /// How often the configuration is checked even when the policy has not changed.
    pub recheck: Duration,
}

/// `registry_gate_match_condition_in_step`.
#[derive(Clone)]
pub struct MatchConditionMetrics {
    registry: Registry,
    in_step: IntGauge,
}

impl MatchConditionMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let in_step = IntGauge::new(
            "registry_gate_match_condition_in_step",
            "Whether the mutating webhook's registry-gate-needs-pull-secret condition was last \
             found or made the one of the policy in force (1), or could not be (0)",
        )
        .expect("static metric definition");
        registry.register(Box::new(in_step.clone())).expect("metric names are unique");
        MatchConditionMetrics { registry, in_step }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for MatchConditionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`set_condition`] did to a configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit {
    /// The webhook already carries the wanted condition (or none, when none is wanted).
    Unchanged,
    /// The condition was added, replaced or removed.
    Changed,
    /// The configuration has no webhook of that name.
    NoSuchWebhook,
}

/// Makes `webhook` of `configuration` carry `expression` as the condition [`match_condition::NAME`]
/// (appended after the install's own conditions), or no such condition when `expression` is
/// `None`. Nothing else is changed.
pub fn set_condition(
    configuration: &mut MutatingWebhookConfiguration,
    webhook: &str,
    expression: Option<&str>,
) -> Edit {
    let Some(webhook) = configuration.webhooks.iter_mut().flatten().find(|w| w.name == webhook) else {
        return Edit::NoSuchWebhook;
    };
    let conditions = webhook.match_conditions.get_or_insert_with(Vec::new);
    let current = conditions.iter().find(|c| c.name == match_condition::NAME).map(|c| c.expression.as_str());
    if current == expression {
        return Edit::Unchanged;
    }
    conditions.retain(|c| c.name != match_condition::NAME);
    if let Some(expression) = expression {
        conditions.push(MatchCondition { name: match_condition::NAME.into(), expression: expression.into() });
    }
    Edit::Changed
}

/// Runs until the task is aborted: writes the condition of each new policy, and checks it again
/// every `options.recheck`.
pub async fn run(
    client: Client,
    policy: Arc<PolicyStore>,
    options: MatchConditionOptions,
    metrics: MatchConditionMetrics,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    // The policy generation last written for, and when to look again regardless.
    let mut written: Option<u64> = None;
    let mut due = Instant::now();
    let mut failures: u32 = 0;
    let mut last_problem = String::new();
    loop {
        tokio::time::sleep(POLL).await;
        let Some(snapshot) = policy.current() else { continue };
        if written == Some(snapshot.generation) && Instant::now() < due {
            continue;
        }
        written = Some(snapshot.generation);
        let expression = match_condition::needs_pull_secret(&snapshot.policy);
        match keep(&api, &options.configuration, expression.as_deref()).await {
            Ok(edit) => {
                due = Instant::now() + options.recheck;
                failures = 0;
                metrics.in_step.set(1);
                last_problem.clear();
                if edit == Edit::Changed {
                    tracing::info!(
                        target: "registry_gate::controller",
                        configuration = %options.configuration,
                        webhook = MUTATING_WEBHOOK,
                        policy_generation = snapshot.generation,
                        condition = if expression.is_some() { "set" } else { "removed: the policy has too many hosts" },
                        "match condition updated"
                    );
                }
            }
            Err(problem) => {
                // The configuration is often applied last, after the controller starts.
                due = Instant::now() + RETRY.saturating_mul(1 << failures.min(16)).min(options.recheck);
                failures = failures.saturating_add(1);
                metrics.in_step.set(0);
                // Once per distinct problem, not once per retry.
                if problem != last_problem {
                    tracing::warn!(
                        target: "registry_gate::controller",
                        configuration = %options.configuration,
                        problem = %problem,
                        "cannot keep the mutating webhook's match condition; will retry"
                    );
                    last_problem = problem;
                }
            }
        }
    }
}

/// Reads the configuration and writes it back if its condition is not `expression`. A write
/// carries the version read, so an edit made in between fails and is retried, never lost.
async fn keep(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    expression: Option<&str>,
) -> Result<Edit, String> {
    let mut configuration = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read MutatingWebhookConfiguration {name}: {e}"))?
        .ok_or_else(|| format!("MutatingWebhookConfiguration {name} does not exist"))?;
    match set_condition(&mut configuration, MUTATING_WEBHOOK, expression) {
        Edit::NoSuchWebhook => {
            Err(format!("MutatingWebhookConfiguration {name} has no webhook {MUTATING_WEBHOOK}"))
        }
        Edit::Unchanged => Ok(Edit::Unchanged),
        Edit::Changed => {
            let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            api.replace(name, &params, &configuration)
                .await
                .map_err(|e| format!("cannot update MutatingWebhookConfiguration {name}: {e}"))?;
            Ok(Edit::Changed)
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;

    use super::*;

    fn configuration(conditions: &[(&str, &str)]) -> MutatingWebhookConfiguration {
        let conditions =
            conditions.iter().map(|(n, e)| MatchCondition { name: (*n).into(), expression: (*e).into() });
        MutatingWebhookConfiguration {
            webhooks: Some(vec![
                MutatingWebhook { name: "other.example.com".into(), ..Default::default() },
                MutatingWebhook {
                    name: MUTATING_WEBHOOK.into(),
                    match_conditions: Some(conditions.collect()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    fn conditions(configuration: &MutatingWebhookConfiguration) -> Vec<(String, String)> {
        configuration.webhooks.as_ref().expect("webhooks")[1]
            .match_conditions
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.expression.clone()))
            .collect()
    }

    #[test]
    fn adds_after_the_install_s_own_conditions_and_keeps_them() {
        let mut c = configuration(&[("not-a-mirror-pod", "true")]);
        assert_eq!(set_condition(&mut c, MUTATING_WEBHOOK, Some("false")), Edit::Changed);
        assert_eq!(
            conditions(&c),
            [("not-a-mirror-pod".into(), "true".into()), (match_condition::NAME.into(), "false".into())]
        );
        assert_eq!(set_condition(&mut c, MUTATING_WEBHOOK, Some("false")), Edit::Unchanged);
        assert!(
            c.webhooks.as_ref().expect("webhooks")[0].match_conditions.is_none(),
            "other webhook touched"
        );
    }

    #[test]
    fn replaces_and_removes_only_its_own() {
        let mut c = configuration(&[(match_condition::NAME, "old"), ("not-a-mirror-pod", "true")]);
        assert_eq!(set_condition(&mut c, MUTATING_WEBHOOK, Some("new")), Edit::Changed);
        assert_eq!(
            conditions(&c),
            [("not-a-mirror-pod".into(), "true".into()), (match_condition::NAME.into(), "new".into())]
        );
        assert_eq!(set_condition(&mut c, MUTATING_WEBHOOK, None), Edit::Changed);
        assert_eq!(conditions(&c), [("not-a-mirror-pod".into(), "true".into())]);
        assert_eq!(set_condition(&mut c, MUTATING_WEBHOOK, None), Edit::Unchanged);
    }

    #[test]
    fn a_missing_webhook_is_reported() {
        let mut c = configuration(&[]);
        assert_eq!(set_condition(&mut c, "elsewhere.example.com", Some("false")), Edit::NoSuchWebhook);
        let mut empty = MutatingWebhookConfiguration::default();
        assert_eq!(set_condition(&mut empty, MUTATING_WEBHOOK, Some("false")), Edit::NoSuchWebhook);
    }
}
