//! The `registry-gate` command line. Everything it does lives in the library; this file only
//! reads arguments and files, prints, and picks exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use registry_gate::check::{self, DEFAULT_NAMESPACE, ImageReport};
use registry_gate::metrics::Metrics;
use registry_gate::policy::source::{self, ConfigMapName};
use registry_gate::policy::{Policy, PolicyStore};
use registry_gate::server::tls::CertificateFiles;
use registry_gate::server::{ServeOptions, Server};

/// The policy `serve` uses when given none.
const DEFAULT_POLICY: &str = include_str!("../policy/default.yaml");

#[derive(Parser)]
#[command(
    name = "registry-gate",
    version,
    about = "Admits images only from registered registries, with their pull secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the admission webhook (HTTPS) and its operations port (metrics, health).
    Serve {
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
        /// Kubeconfig for --policy-configmap; otherwise KUBECONFIG or the in-cluster account.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Json)]
        log_format: LogFormat,
        #[command(flatten)]
        limits: ServeLimits,
    },
    /// Write a development CA and a serving certificate (ECDSA P-256): ca.crt, tls.crt, tls.key.
    Certs {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// DNS names and IP addresses to cover (default: localhost, 127.0.0.1, ::1 and the
        /// in-cluster Service names).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Decide images (or every image of a manifest) against a policy, as the webhook would.
    /// Exit code 0: all allowed; 1: something denied; 2: usage or policy error.
    Check {
        /// The policy file (YAML or JSON).
        #[arg(long, short = 'p')]
        policy: PathBuf,
        /// Namespace the images would run in (manifests' own namespaces win).
        #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Multi-document YAML of Pods and workloads; `-` reads standard input.
        #[arg(long = "filename", short = 'f')]
        manifests: Vec<PathBuf>,
        /// Image references, e.g. ghcr.io/acme/api:1.2 or nginx.
        images: Vec<String>,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print every problem of a policy file (exit 1 if any), or a summary of what it registers.
    Validate { file: PathBuf },
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
        options.certificate_poll = std::time::Duration::from_millis(self.certificate_poll_millis.max(1));
    }
}

/// Where `serve` reads its policy.
enum PolicySource {
    File(PathBuf),
    ConfigMap { configmap: ConfigMapName, kubeconfig: Option<PathBuf> },
    BuiltIn,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Exit code for a usage, file or policy error (clap uses 2 for its own usage errors too).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    // One crypto provider for the whole process, before anything builds a TLS configuration.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            listen,
            metrics_listen,
            tls_cert,
            tls_key,
            certs_dir,
            policy,
            policy_configmap,
            kubeconfig,
            log_format,
            limits,
        } => {
            init_logging(log_format);
            let source = match (policy, policy_configmap) {
                (Some(path), _) => PolicySource::File(path),
                (None, Some(configmap)) => PolicySource::ConfigMap { configmap, kubeconfig },
                (None, None) => PolicySource::BuiltIn,
            };
            serve(listen, metrics_listen, tls_cert.zip(tls_key), &certs_dir, source, &limits)
        }
        Command::Certs { out, names } => write_certs(&out, names),
        Command::Check { policy, namespace, output, manifests, images } => {
            run_check(&policy, &namespace, output, &manifests, &images)
        }
        Command::Policy { command: PolicyCommand::Validate { file } } => validate(&file),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_ERROR)
    })
}

fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = read(path)?;
    Policy::parse(&text).with_context(|| format!("{} is not a valid policy", path.display()))
}

fn run_check(
    policy_path: &Path,
    namespace: &str,
    output: Output,
    manifests: &[PathBuf],
    images: &[String],
) -> anyhow::Result<ExitCode> {
    if manifests.is_empty() && images.is_empty() {
        anyhow::bail!("nothing to check: name images, or manifests with -f");
    }
    let policy = load_policy(policy_path)?;
    let mut reports: Vec<ImageReport> =
        images.iter().map(|image| check::check_image(&policy, image, namespace)).collect();
    for path in manifests {
        let text = read(path)?;
        let found = check::check_manifests(&policy, &text, namespace)
            .with_context(|| format!("in {}", path.display()))?;
        reports.extend(found);
    }
    match output {
        Output::Text => print!("{}", check::render_text(&reports, policy.mode)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    Ok(if reports.iter().all(ImageReport::is_allowed) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let text = read(path)?;
    let policy = match Policy::parse(&text) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    for warning in &policy.warnings {
        eprintln!("{}: warning: {warning}", path.display());
    }
    println!(
        "{}: valid ({} mode, {} registries, {} deny rules, short names from {})",
        path.display(),
        policy.mode.name(),
        policy.registries.len(),
        policy.deny.len(),
        policy.short_name_host.key()
    );
    for registry in &policy.registries {
        let secret = match (&registry.pull_secret, registry.registry_type.credentials()) {
            (Some(secret), Some(credentials)) => {
                format!(
                    "pull secret {secret} (username: {}; password: {})",
                    credentials.username, credentials.password
                )
            }
            (None, Some(_)) => "no pull secret (node credentials or anonymous)".to_owned(),
            (_, None) => "anonymous".to_owned(),
        };
        let scope = match &registry.namespaces {
            Some(patterns) => patterns.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            None => "all namespaces".to_owned(),
        };
        println!(
            "  {:<24} {:<16} {:<48} {scope}; {secret}",
            registry.name,
            registry.registry_type.name(),
            registry.pattern
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    certs_dir: &Path,
    policy_source: PolicySource,
    limits: &ServeLimits,
) -> anyhow::Result<ExitCode> {
    let tls = match tls {
        Some((cert, key)) => CertificateFiles { cert, key },
        None => registry_gate::certs::ensure(certs_dir)?,
    };
    let store = Arc::new(PolicyStore::new(Metrics::new()));
    // A file or the built-in policy must be valid to start; a ConfigMap may arrive later (the
    // webhook is not ready until it does).
    let mut loaded_text = String::new();
    match &policy_source {
        PolicySource::File(path) => {
            loaded_text = read(path)?;
            source::load(&store, &loaded_text, &path.display().to_string())
                .with_context(|| format!("{} is not a valid policy", path.display()))?;
        }
        PolicySource::BuiltIn => {
            source::load(&store, DEFAULT_POLICY, "built-in policy/default.yaml")
                .context("the built-in policy is invalid")?;
        }
        PolicySource::ConfigMap { .. } => {}
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut options = ServeOptions::new(listen, metrics_listen, tls);
        limits.apply(&mut options);
        let client = match &policy_source {
            PolicySource::ConfigMap { kubeconfig, .. } => Some(kube_client(kubeconfig.as_deref()).await?),
            _ => None,
        };
        options.policy_events = client.clone();
        let server = Server::bind(options, store.clone()).await?;
        let watcher = match (policy_source, client) {
            (PolicySource::File(path), _) => {
                let poll = std::time::Duration::from_millis(limits.policy_poll_millis.max(1));
                Some(tokio::spawn(source::watch_file(path, loaded_text, store, poll)))
            }
            (PolicySource::ConfigMap { configmap, .. }, Some(client)) => {
                Some(tokio::spawn(source::watch_configmap(client, configmap, store)))
            }
            _ => None,
        };
        tracing::info!(
            target: "registry_gate::server",
            webhook = %server.webhook_addr(),
            operations = %server.operations_addr(),
            "serving"
        );
        server.run(shutdown_signal()).await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A client from the given kubeconfig, else KUBECONFIG, else the in-cluster service account.
async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
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

fn write_certs(out: &Path, names: Vec<String>) -> anyhow::Result<ExitCode> {
    let names = if names.is_empty() { registry_gate::certs::default_names() } else { names };
    let files = registry_gate::certs::generate(&names)?.write(out)?;
    println!(
        "wrote {}, {} and {} for {}",
        out.join(registry_gate::certs::CA_CERT).display(),
        files.cert.display(),
        files.key.display(),
        names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
