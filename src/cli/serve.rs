//! `registry-gate serve`: the admission webhook (HTTPS) and its operations port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use registry_gate::metrics::Metrics;
use registry_gate::policy::PolicyStore;
use registry_gate::policy::source::{self, ConfigMapName};
use registry_gate::server::tls::CertificateFiles;
use registry_gate::server::{ServeOptions, Server};
use tokio::task::JoinSet;

use super::{LogFormat, init_logging, kube_client, read};

/// The policy `serve` uses when given none (shared with `check`).
const DEFAULT_POLICY: &str = registry_gate::check::BUNDLED_POLICY;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Webhook address (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443", env = "REGISTRY_GATE_LISTEN")]
    listen: SocketAddr,
    /// Operations address (plain HTTP): /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9090", env = "REGISTRY_GATE_METRICS_LISTEN")]
    metrics_listen: SocketAddr,
    /// Serving certificate (PEM chain). Without --tls-cert/--tls-key, development
    /// certificates in --certs-dir are used, and generated there when absent.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// Policy file (YAML or JSON), reloaded when it changes; without it and without
    /// --policy-configmap, the bundled policy/default.yaml.
    #[arg(long, env = "REGISTRY_GATE_POLICY", conflicts_with = "policy_configmap")]
    policy: Option<PathBuf>,
    /// Policy ConfigMap as NAMESPACE/NAME (key policy.yaml), watched through the API server.
    /// Until it has loaded, the webhook is not ready.
    #[arg(long, env = "REGISTRY_GATE_POLICY_CONFIGMAP")]
    policy_configmap: Option<ConfigMapName>,
    /// Kubeconfig for --policy-configmap and the namespace watch; otherwise KUBECONFIG or the
    /// in-cluster account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch Namespaces for their labels, which registries with a namespaceSelector need. On by
    /// default with --policy-configmap or --kubeconfig; without a watch, such registries admit
    /// nothing.
    #[arg(long)]
    watch_namespaces: Option<bool>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[command(flatten)]
    limits: ServeLimits,
}

/// What bounds the webhook port (see the server's `limits` module for the arithmetic).
#[derive(clap::Args)]
struct ServeLimits {
    /// Webhook connections open at once; one more is closed at once.
    #[arg(long, default_value_t = 512, env = "REGISTRY_GATE_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Seconds a connection may go without a request before it is closed.
    #[arg(long, default_value_t = 120, env = "REGISTRY_GATE_IDLE_TIMEOUT_SECONDS")]
    idle_timeout_seconds: u64,
    /// MiB of request bodies held in memory at once; a request that does not fit gets 503.
    #[arg(long, default_value_t = 32, env = "REGISTRY_GATE_BODY_MEMORY_MIB")]
    body_memory_mib: usize,
    /// MiB of request bodies one client (peer IP address) may hold at once, so that one client
    /// cannot take the whole of --body-memory-mib; a request over it gets 503. Default: a
    /// quarter of --body-memory-mib, at least 4. Never less than 3 (one largest body).
    #[arg(long, env = "REGISTRY_GATE_BODY_MEMORY_PER_CLIENT_MIB")]
    body_memory_per_client_mib: Option<usize>,
    /// How often the certificate files are checked for a rotation, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    certificate_poll_millis: u64,
    /// How often a --policy file is checked for edits, in milliseconds.
    #[arg(long, default_value_t = 500)]
    policy_poll_millis: u64,
}

impl ServeLimits {
    fn apply(&self, options: &mut ServeOptions) {
        options.max_connections = self.max_connections;
        options.idle_timeout = std::time::Duration::from_secs(self.idle_timeout_seconds);
        options.body_budget_bytes = self.body_memory_mib.saturating_mul(1024 * 1024);
        options.body_budget_per_client_bytes =
            self.body_memory_per_client_mib.map(|mib| mib.saturating_mul(1024 * 1024));
        options.certificate_poll = std::time::Duration::from_millis(self.certificate_poll_millis.max(1));
    }
}

/// Where `serve` reads its policy.
enum PolicySource {
    File(PathBuf),
    ConfigMap { configmap: ConfigMapName },
    BuiltIn,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let in_cluster = args.policy_configmap.is_some() || args.kubeconfig.is_some();
    let watch_namespaces = args.watch_namespaces.unwrap_or(in_cluster);
    let kubeconfig = args.kubeconfig;
    let policy_source = match (args.policy, args.policy_configmap) {
        (Some(path), _) => PolicySource::File(path),
        (None, Some(configmap)) => PolicySource::ConfigMap { configmap },
        (None, None) => PolicySource::BuiltIn,
    };
    let tls = match args.tls_cert.zip(args.tls_key) {
        Some((cert, key)) => CertificateFiles { cert, key },
        None => registry_gate::certs::ensure(&args.certs_dir)?,
    };
    let (listen, metrics_listen, limits) = (args.listen, args.metrics_listen, &args.limits);
    let store = Arc::new(PolicyStore::new(Metrics::new()));
    // A file or the built-in policy must be valid to start; a ConfigMap may arrive later (the
    // webhook is not ready until it does).
    // The reloader keeps the file's fingerprint, not its text.
    let mut loaded = None;
    match &policy_source {
        PolicySource::File(path) => {
            let text = read(path)?;
            source::load(&store, &text, &path.display().to_string())
                .with_context(|| format!("{} is not a valid policy", path.display()))?;
            loaded = Some(source::Fingerprint::of(&text));
        }
        PolicySource::BuiltIn => {
            source::load(&store, DEFAULT_POLICY, "built-in policy/default.yaml")
                .context("the built-in policy is invalid")?;
        }
        PolicySource::ConfigMap { .. } => {}
    }
    // 8 MiB worker stacks instead of 2: the JSON reader recurses once per nesting level (64 at
    // most), about 120 bytes a level when optimized but about 32 KiB unoptimized, so a debug
    // build (`cargo run`) would overflow 2 MiB at about 40 levels. Only touched pages cost
    // memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut options = ServeOptions::new(listen, metrics_listen, tls);
        limits.apply(&mut options);
        let needs_client = matches!(policy_source, PolicySource::ConfigMap { .. }) || watch_namespaces;
        let client = match needs_client {
            true => Some(kube_client(kubeconfig.as_deref()).await?),
            false => None,
        };
        if matches!(policy_source, PolicySource::ConfigMap { .. }) {
            options.policy_events = client.clone();
        }
        // The watches loop until aborted; should one stop (a panic), the webhook would go on
        // enforcing a policy no edit can change, or labels no edit reaches, so the process
        // stops instead, non-zero, and the Deployment restarts it.
        let mut watches = JoinSet::new();
        if let (true, Some(client)) = (watch_namespaces, &client) {
            let (labels, watch) = registry_gate::namespaces::NamespaceLabels::watch(client.clone());
            options.namespaces = labels;
            watches.spawn(async move {
                watch.await;
                "the namespace watch stopped"
            });
        }
        // The audit's inventory sits beside the policy ConfigMap; it only adds warnings to
        // policy edits, so it is followed only where edits come through the policy door.
        if let (PolicySource::ConfigMap { configmap }, Some(client)) = (&policy_source, &client) {
            let feed = options.in_use.clone();
            let (client, namespace) = (client.clone(), configmap.namespace.clone());
            watches.spawn(async move {
                feed.follow(client, namespace).await;
                "the audit inventory watch stopped"
            });
        }
        let server = Server::bind(options, store.clone()).await?;
        match (policy_source, client) {
            (PolicySource::File(path), _) => {
                let loaded = loaded.context("a policy file is read before serving")?;
                let poll = std::time::Duration::from_millis(limits.policy_poll_millis.max(1));
                watches.spawn(async move {
                    source::watch_file(path, loaded, store, poll).await;
                    "the policy reloader stopped"
                });
            }
            (PolicySource::ConfigMap { configmap }, Some(client)) => {
                watches.spawn(async move {
                    source::watch_configmap(client, configmap, store).await;
                    "the policy reloader stopped"
                });
            }
            _ => {}
        }
        tracing::info!(
            target: "registry_gate::server",
            webhook = %server.webhook_addr(),
            operations = %server.operations_addr(),
            "serving"
        );
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                Some(ended) = watches.join_next() => {
                    let why = ended.unwrap_or("a watch panicked");
                    tracing::error!(target: "registry_gate::server", reason = why, "shutting down");
                    let _ = failed_tx.send(why);
                }
            }
        };
        server.run(shutdown).await?;
        if let Ok(why) = failed_rx.await {
            anyhow::bail!("{why}");
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
pub(super) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return interrupt.await.unwrap_or_default(),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or_default();
}
