//! The `registry-gate` command line. Everything it does lives in the library; this file only
//! reads arguments and files, prints, and picks exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use registry_gate::check::{self, DEFAULT_NAMESPACE, ImageReport};
use registry_gate::policy::Policy;

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

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Exit code for a usage, file or policy error (clap uses 2 for its own usage errors too).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
