//! `registry-gate check`: images, or every image of some manifests, decided offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use registry_gate::check::{self, DEFAULT_NAMESPACE, ImageReport};
use registry_gate::policy::Namespace;

use super::policy::load_policy;
use super::read;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The policy file (YAML or JSON).
    #[arg(long, short = 'p')]
    policy: PathBuf,
    /// Namespace the images would run in (manifests' own namespaces win).
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// A label of that namespace, KEY=VALUE (repeatable), for registries scoped by a
    /// namespaceSelector. Namespace objects in the manifests bring their own labels.
    #[arg(long = "namespace-label", short = 'l', value_parser = parse_label)]
    namespace_labels: Vec<(String, String)>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Multi-document YAML of Pods and workloads; `-` reads standard input.
    #[arg(long = "filename", short = 'f')]
    manifests: Vec<PathBuf>,
    /// Image references, e.g. ghcr.io/acme/api:1.2 or nginx.
    images: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.manifests.is_empty() && args.images.is_empty() {
        anyhow::bail!("nothing to check: name images, or manifests with -f");
    }
    let policy = load_policy(&args.policy)?;
    let labels = check::namespace_labels(&args.namespace, &args.namespace_labels.into_iter().collect());
    let namespace = Namespace::labelled(&args.namespace, &labels);
    let mut reports: Vec<ImageReport> =
        args.images.iter().map(|image| check::check_image(&policy, image, &namespace)).collect();
    for path in &args.manifests {
        let text = read(path)?;
        let found = check::check_manifests(&policy, &text, &namespace)
            .with_context(|| format!("in {}", path.display()))?;
        reports.extend(found);
    }
    match args.output {
        Output::Text => print!("{}", check::render_text(&reports, policy.mode)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    Ok(if reports.iter().all(ImageReport::is_allowed) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `KEY=VALUE`, as kubectl writes labels.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}
