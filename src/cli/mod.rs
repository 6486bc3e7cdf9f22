//! One file per command:
//!
//! - [`serve`]: the admission webhook and its operations port.
//! - [`controller`]: pull-secret sync, the second process.
//! - [`certs`]: development certificates.
//! - [`check`]: images and manifests decided offline, for CI.
//! - [`policy`]: `policy validate` and `policy diff`.
//! - [`registry`]: `registry test`, the connection test of one registry, stage by stage.
//! - [`test`]: `test DIR`, policy tests (expected verdicts and pull secrets) for CI.
//! - [`secret`]: `secret render`, a registry's source pull Secret from credentials kept off the
//!   command line.

mod certs;
mod check;
mod controller;
mod policy;
mod registry;
mod secret;
mod serve;
mod test;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for a usage, file or policy error (clap uses 2 for its own usage errors too).
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "registry-gate",
    version,
    about = "Admits images only from registered registries, with their pull secrets"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the admission webhook (HTTPS) and its operations port (metrics, health).
    Serve(serve::ServeArgs),
    /// Keep every registry's pull secret copied, current and valid in the namespaces that may
    /// use the registry (the second process; it holds the Secret permissions).
    Controller(controller::ControllerArgs),
    /// Write a development CA and a serving certificate (ECDSA P-256): ca.crt, tls.crt, tls.key.
    Certs(certs::CertsArgs),
    /// Decide images (or every image of a manifest) against a policy, as the webhook would.
    /// Exit code 0: all allowed; 1: something denied; 2: usage or policy error.
    Check(check::CheckArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Registry tools: `registry test` checks the connection to a registry and its credentials.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// Run the policy tests (kind PolicyTest) under a directory: expected verdicts, reasons and
    /// injected pull secrets. Exit code 0: all pass; 1: some fail; 2: unreadable tests.
    Test(test::TestArgs),
    /// Pull-secret tools.
    Secret {
        #[command(subcommand)]
        command: secret::SecretCommand,
    },
}

impl Cli {
    pub fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Serve(args) => serve::run(args),
            Command::Controller(args) => controller::run(args),
            Command::Certs(args) => certs::run(args),
            Command::Check(args) => check::run(args),
            Command::Policy { command } => policy::run(command),
            Command::Registry { command } => registry::run(command),
            Command::Secret { command } => secret::run(command),
            Command::Test(args) => test::run(args),
        };
        result.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
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

/// A file's text, or standard input for `-`.
fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
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
