//! `registry-gate check`: images, or every image of some manifests, decided offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use registry_gate::check::{self, BUNDLED_POLICY, BUNDLED_POLICY_PATH, DEFAULT_NAMESPACE, ImageReport};
use registry_gate::policy::{Namespace, Policy};
use serde::Serialize;

use super::policy::load_policy;
use super::read;

#[derive(clap::Args)]
#[command(after_help = "\
Objects of a kind registry-gate does not review (a custom resource with a Pod template, say) \
are reported as `skipped` when they hold a `containers` list or an `image` field; kinds that \
never carry images (ConfigMap, Service, ...) are not. They do not fail the check unless \
--fail-on-skipped is given.

-o json prints an array of image reports, as it always has; skipped objects go to standard error \
as text. -o json-report prints one object: {\"policy\", \"images\", \"skipped\", \"patches\"}. \
See docs/check.md.")]
pub struct CheckArgs {
    /// The policy file (YAML or JSON); without it, the bundled policy/default.yaml, the same
    /// one `serve` uses when given none.
    #[arg(long, short = 'p')]
    policy: Option<PathBuf>,
    /// Namespace the images would run in (manifests' own namespaces win).
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// A label of that namespace, KEY=VALUE (repeatable), for registries scoped by a
    /// namespaceSelector. Namespace objects in the manifests bring their own labels.
    #[arg(long = "namespace-label", short = 'l', value_parser = parse_label)]
    namespace_labels: Vec<(String, String)>,
    /// `text` for people; `json`: an array of image reports; `json-report`: images, skipped
    /// objects and patches in one object.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Multi-document YAML of Pods and workloads; `-` reads standard input.
    #[arg(long = "filename", short = 'f')]
    manifests: Vec<PathBuf>,
    /// Exit 1 when an object is skipped (its images are not checked), as when an image is denied.
    #[arg(long)]
    fail_on_skipped: bool,
    /// Print the JSON Patch the mutating webhook (/mutate) would answer for each Pod of the
    /// manifests at creation, and the imagePullSecrets the Pod would end with. Workloads are
    /// never mutated; the Pods they create are. Not with -o json (use -o json-report).
    #[arg(long)]
    show_patch: bool,
    /// Image references, e.g. ghcr.io/acme/api:1.2 or nginx.
    images: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
    JsonReport,
}

/// The shape of `-o json-report`.
#[derive(Serialize)]
struct JsonReport<'a> {
    policy: PolicyUsed,
    images: &'a [ImageReport],
    skipped: &'a [check::SkippedObject],
    /// Present only with --show-patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    patches: Option<&'a [check::PodPatch]>,
}

#[derive(Serialize)]
struct PolicyUsed {
    /// The file given with --policy, or policy/default.yaml.
    source: String,
    bundled: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.manifests.is_empty() && args.images.is_empty() {
        anyhow::bail!("nothing to check: name images, or manifests with -f");
    }
    if args.show_patch && args.output == Output::Json {
        anyhow::bail!("-o json is an array of image reports with no place for patches: use -o json-report");
    }
    let (policy, used) = match &args.policy {
        Some(path) => (load_policy(path)?, PolicyUsed { source: path.display().to_string(), bundled: false }),
        None => {
            // On standard error, so that JSON on standard output stays parseable and CI logs
            // still show which policy decided.
            eprintln!("using the bundled policy ({BUNDLED_POLICY_PATH})");
            let policy = Policy::parse(BUNDLED_POLICY).context("the bundled policy is invalid")?;
            (policy, PolicyUsed { source: BUNDLED_POLICY_PATH.to_owned(), bundled: true })
        }
    };
    let labels = check::namespace_labels(&args.namespace, &args.namespace_labels.into_iter().collect());
    let namespace = Namespace::labelled(&args.namespace, &labels);
    let mut found = check::ManifestReport {
        images: args.images.iter().map(|image| check::check_image(&policy, image, &namespace)).collect(),
        ..check::ManifestReport::default()
    };
    for path in &args.manifests {
        let text = read(path)?;
        let report = check::inspect_manifests(&policy, &text, &namespace, args.show_patch)
            .with_context(|| format!("in {}", path.display()))?;
        found.images.extend(report.images);
        found.skipped.extend(report.skipped);
        found.patches.extend(report.patches);
    }
    if args.show_patch && found.patches.is_empty() {
        eprintln!("--show-patch: no Pod or workload in the manifests (-f), so no patch to show");
    }
    match args.output {
        Output::Text => {
            print!("{}", check::render_text(&found.images, policy.mode));
            print!("{}", check::render_patches(&found.patches));
            print!("{}", check::render_skipped(&found.skipped));
        }
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&found.images)?);
            eprint!("{}", check::render_skipped(&found.skipped));
        }
        Output::JsonReport => {
            let report = JsonReport {
                policy: used,
                images: &found.images,
                skipped: &found.skipped,
                patches: args.show_patch.then_some(found.patches.as_slice()),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    let denied = !found.images.iter().all(ImageReport::is_allowed);
    let skipped = args.fail_on_skipped && !found.skipped.is_empty();
    Ok(if denied || skipped { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `KEY=VALUE`, as kubectl writes labels.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}
