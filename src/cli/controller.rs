//! `registry-gate controller`: pull-secret sync, off the admission path, with the Secret
//! permissions the webhook does not hold.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use registry_gate::controller::audit::AuditOptions;
use registry_gate::controller::connection::ConnectionOptions;
use registry_gate::controller::match_condition::MatchConditionOptions;
use registry_gate::controller::{self, ControllerOptions, SyncMetrics};
use registry_gate::metrics::Metrics;
use registry_gate::policy::PolicyStore;
use registry_gate::policy::source::{self, ConfigMapName};
use tokio::task::JoinSet;

use super::{LogFormat, init_logging, kube_client, read};

#[derive(clap::Args)]
pub struct ControllerArgs {
    /// registry-gate's own namespace: where the registries' source pull Secrets live.
    #[arg(long, default_value = "registry-gate", env = "POD_NAMESPACE")]
    namespace: String,
    /// Policy file (YAML or JSON), reloaded when it changes.
    #[arg(
        long,
        env = "REGISTRY_GATE_POLICY",
        conflicts_with = "policy_configmap",
        required_unless_present = "policy_configmap"
    )]
    policy: Option<PathBuf>,
    /// Policy ConfigMap as NAMESPACE/NAME (key policy.yaml), watched through the API server.
    #[arg(long, env = "REGISTRY_GATE_POLICY_CONFIGMAP")]
    policy_configmap: Option<ConfigMapName>,
    /// Kubeconfig; otherwise KUBECONFIG or the in-cluster account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Operations address (plain HTTP): /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9091")]
    metrics_listen: SocketAddr,
    /// Seconds between full passes over every namespace, a backstop for missed events.
    #[arg(long, default_value_t = 600)]
    resync_seconds: u64,
    /// Secret writes per second at most, across all namespaces.
    #[arg(long, default_value_t = 50)]
    writes_per_second: u32,
    /// Seconds between audits of every running Pod and workload against the policy (one also
    /// follows each policy change); 0 turns the audit off.
    #[arg(long, default_value_t = 300)]
    audit_interval_seconds: u64,
    /// Objects per list request of the audit: what bounds its memory.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(10..=5000))]
    audit_page_size: u32,
    /// Seconds between connection tests of every registry (as `registry test`, with the
    /// credentials of its source pull Secret), exported as registry_gate_registry_test_*
    /// metrics; 0 (the default) turns them off, as they are outbound connections.
    #[arg(long, default_value_t = 0)]
    registry_test_interval_seconds: u64,
    /// Each step's limit in a connection test (lookup, connection, handshake, request).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    registry_test_timeout_seconds: u64,
    /// PEM file of CA certificates the connection tests trust besides Mozilla's roots (for
    /// registries with a private CA).
    #[arg(long)]
    registry_test_ca_file: Option<PathBuf>,
    /// The MutatingWebhookConfiguration whose pull-secrets.registry-gate.io webhook gets the
    /// matchCondition that skips Pods needing no pull secret, kept in step with the policy
    /// (docs/match-condition.md); an empty name leaves the configuration alone.
    #[arg(long, default_value = "registry-gate")]
    mutating_webhook_configuration: String,
    /// Seconds between checks that the match condition is still there and current.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    match_condition_recheck_seconds: u64,
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let store = Arc::new(PolicyStore::new(Metrics::new()));
    let loaded = match &args.policy {
        Some(path) => {
            let text = read(path)?;
            source::load(&store, &text, &path.display().to_string())
                .with_context(|| format!("{} is not a valid policy", path.display()))?;
            Some(source::Fingerprint::of(&text))
        }
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = kube_client(args.kubeconfig.as_deref()).await?;
        let listener = tokio::net::TcpListener::bind(args.metrics_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;
        let options = ControllerOptions {
            namespace: args.namespace,
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            writes_per_second: args.writes_per_second,
        };
        let (metrics, ready) = (SyncMetrics::new(), Arc::new(AtomicBool::new(false)));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            }
        };
        // The first task to end, for whatever reason, stops the rest, and only a signal counts
        // as a clean stop. Two sets: the reconciler and the operations port stop when told,
        // finishing what is in flight; the others hold nothing that must finish (a refresh or an
        // audit cut short runs again at the next start) and are aborted at once. Waiting for
        // them too, which never watched the stop signal, made every stop take the full 20 s.
        let mut graceful = JoinSet::new();
        let mut background = JoinSet::new();
        match (args.policy, args.policy_configmap, loaded) {
            (Some(path), _, Some(loaded)) => {
                background.spawn(source::watch_file(path, loaded, store.clone(), Duration::from_millis(500)));
            }
            (_, Some(configmap), _) => {
                background.spawn(source::watch_configmap(client.clone(), configmap, store.clone()));
            }
            _ => anyhow::bail!("no policy source"),
        }
        background.spawn(controller::ecr::refresh(client.clone(), options.namespace.clone(), metrics.ecr()));
        if args.audit_interval_seconds > 0 {
            let audit = AuditOptions {
                namespace: options.namespace.clone(),
                interval: Duration::from_secs(args.audit_interval_seconds),
                page_size: args.audit_page_size,
            };
            background.spawn(controller::audit::run(client.clone(), store.clone(), audit, metrics.audit()));
        }
        if args.registry_test_interval_seconds > 0 {
            let extra_roots = match &args.registry_test_ca_file {
                Some(path) => registry_gate::registry_test::read_ca_file(path).context("--registry-test-ca-file")?,
                None => Vec::new(),
            };
            let connection = ConnectionOptions {
                namespace: options.namespace.clone(),
                interval: Duration::from_secs(args.registry_test_interval_seconds),
                timeout: Duration::from_secs(args.registry_test_timeout_seconds),
                extra_roots,
            };
            background.spawn(controller::connection::run(client.clone(), store.clone(), connection, metrics.connection()));
        }
        if !args.mutating_webhook_configuration.is_empty() {
            let condition = MatchConditionOptions {
                configuration: args.mutating_webhook_configuration.clone(),
                recheck: Duration::from_secs(args.match_condition_recheck_seconds),
            };
            background.spawn(controller::match_condition::run(
                client.clone(),
                store.clone(),
                condition,
                metrics.match_condition(),
            ));
        }
        graceful.spawn(controller::run(client, store.clone(), options, metrics.clone(), ready.clone(), stopped()));
        let operations = controller::serve_operations(listener, store, metrics, ready, stopped());
        graceful.spawn(async move {
            if let Err(e) = operations.await {
                tracing::error!(target: "registry_gate::controller", error = %e, "operations server failed");
            }
        });
        let signal = super::serve::shutdown_signal();
        let stopped_early = |ended: Result<(), tokio::task::JoinError>| {
            tracing::error!(target: "registry_gate::controller", panicked = ended.is_err(), "a task stopped; shutting down");
            true
        };
        let failed = tokio::select! {
            () = signal => false,
            Some(ended) = graceful.join_next() => stopped_early(ended),
            Some(ended) = background.join_next() => stopped_early(ended),
        };
        let _ = stop_tx.send(true);
        background.abort_all();
        let drained = async { while graceful.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(20), drained).await.is_err() {
            graceful.abort_all();
        }
        if failed {
            anyhow::bail!("a controller task stopped unexpectedly");
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
