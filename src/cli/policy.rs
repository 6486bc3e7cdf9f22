//! `registry-gate policy`: policy tools for CI and for admins.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use registry_gate::check::{self, DEFAULT_NAMESPACE, ImageReport};
use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace as KubeNamespace};
use kube::Api;
use kube::api::ListParams;
use registry_gate::policy::diff::{self, Change, ImageChange};
use registry_gate::policy::import::{self as policy_import, Peer};
use registry_gate::policy::in_use::{
    AUDIT_CONFIGMAP, INVENTORY_KEY, Impact, Inventory, Refused, newly_refused,
};
use registry_gate::policy::{Labels, Mode, Namespace, Policy, match_condition};
use serde::Serialize;

use super::{EXIT_ERROR, kube_client, read};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print every problem of a policy file (exit 1 if any), or a summary of what it registers.
    Validate { file: PathBuf },
    /// Print what NEW removes, narrows, denies or newly allows compared with OLD, and, with -f,
    /// every manifest image whose verdict changes (docs/policy-diff.md).
    /// Exit code 0: nothing breaks; 1: something is removed, narrowed or denied (with -f: an
    /// image of the manifests breaks); 2: unreadable or invalid input.
    Diff(DiffArgs),
    /// Convert Gatekeeper K8sAllowedRepos constraints or Kyverno image-registry policies into a
    /// registry-gate policy (stdout), with a note on stderr for each meaning that changes or
    /// could not be carried over (docs/migrating.md). Exit 0: converted; 2: nothing to convert.
    Import {
        /// The peer the file comes from.
        #[arg(long, value_enum)]
        from: ImportFrom,
        /// Multi-document YAML or JSON (`-` reads standard input).
        file: PathBuf,
    },
    /// Print the matchConditions entry (JSON) that lets the API server skip the mutating
    /// webhook for Pods that need no pull secret under this policy (docs/match-condition.md).
    /// `registry-gate controller` keeps it in the MutatingWebhookConfiguration by itself; this
    /// is for installs that manage the webhook configuration elsewhere. Exit 1 when the policy
    /// is too large for such a condition (then the webhook should carry none).
    MatchCondition { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ImportFrom {
    Gatekeeper,
    Kyverno,
}

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The policy in force.
    old: PathBuf,
    /// The edited policy.
    new: PathBuf,
    /// Multi-document YAML of Pods and workloads to decide under both (repeatable); `-` reads
    /// standard input.
    #[arg(long = "filename", short = 'f')]
    manifests: Vec<PathBuf>,
    /// What runs today, as the controller's audit last saw it: the `images.json` key of the
    /// ConfigMap registry-gate-audit saved to a file (`-` reads standard input). Every image in
    /// use that OLD admits and NEW refuses is listed.
    #[arg(long, value_name = "FILE", conflicts_with = "in_use_from_cluster")]
    in_use: Option<PathBuf>,
    /// Read that inventory, and the namespaces' labels, from the cluster.
    #[arg(long)]
    in_use_from_cluster: bool,
    /// registry-gate's namespace, where the audit ConfigMap is (with --in-use-from-cluster).
    #[arg(long, default_value = "registry-gate")]
    namespace: String,
    /// Kubeconfig; otherwise KUBECONFIG or the in-cluster account (with --in-use-from-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// `text` for people, `json` for scripts (its shape is in docs/policy-diff.md).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Validate { file } => validate(&file),
        PolicyCommand::Diff(args) => diff(&args),
        PolicyCommand::Import { from, file } => import(from, &file),
        PolicyCommand::MatchCondition { file } => match_condition(&file),
    }
}

fn match_condition(path: &Path) -> anyhow::Result<ExitCode> {
    let policy = load_policy(path)?;
    let Some(expression) = match_condition::needs_pull_secret(&policy) else {
        eprintln!(
            "{}: more hosts with a pull secret than a condition can hold ({} host strings, {} wildcard \
             endings, {} pull-secret names at most); the mutating webhook should carry no such condition",
            path.display(),
            match_condition::MAX_HOSTS,
            match_condition::MAX_SUFFIXES,
            match_condition::MAX_NAMES
        );
        return Ok(ExitCode::from(1));
    };
    let entry = serde_json::json!({ "name": match_condition::NAME, "expression": expression });
    println!("{}", serde_json::to_string_pretty(&entry)?);
    Ok(ExitCode::SUCCESS)
}

fn import(from: ImportFrom, path: &Path) -> anyhow::Result<ExitCode> {
    let peer = match from {
        ImportFrom::Gatekeeper => Peer::Gatekeeper,
        ImportFrom::Kyverno => Peer::Kyverno,
    };
    let text = read(path)?;
    let imported =
        policy_import::import(peer, &text).with_context(|| format!("cannot import {}", path.display()))?;
    print!("{}", imported.policy);
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A policy file, parsed and validated.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = read(path)?;
    Policy::parse(&text).with_context(|| format!("{} is not a valid policy", path.display()))
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
            _ if registry.node_credentials => "node credentials (kubelet credential provider)".to_owned(),
            (Some(secret), Some(credentials)) => {
                format!(
                    "pull secret {secret} (username: {}; password: {})",
                    credentials.username, credentials.password
                )
            }
            (None, Some(_)) => "no pull secret: anonymous pulls".to_owned(),
            (_, None) => "anonymous".to_owned(),
        };
        let scope = match &registry.namespaces {
            Some(patterns) => patterns.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            None => "all namespaces".to_owned(),
        };
        let mut rules = String::new();
        if registry.exact {
            rules += "; this repository only";
        }
        if registry.tag_rules.deny_latest == Some(true) {
            rules += "; no latest";
        }
        if registry.tag_rules.require_digest == Some(true) {
            rules += "; digests only";
        }
        println!(
            "  {:<24} {:<16} {:<48} {scope}; {secret}{rules}",
            registry.name,
            registry.registry_type.name(),
            registry.pattern
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy diff --output json`, documented in docs/policy-diff.md: add fields, never rename.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DiffReport<'a> {
    old: String,
    new: String,
    /// Whether the exit code is 1.
    breaking: bool,
    changes: &'a [Change],
    /// Whether manifests were given; without them `images` is empty and says nothing.
    manifests_checked: bool,
    images: &'a [ImageChange],
    /// Whether an inventory of what runs was given; without it `inUse` is empty and says nothing.
    in_use_checked: bool,
    /// Images in use that OLD admits and NEW refuses.
    in_use: &'a [Refused<'a>],
}

fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let (Some(old), Some(new)) = (load_for_diff(&args.old)?, load_for_diff(&args.new)?) else {
        return Ok(ExitCode::from(EXIT_ERROR));
    };
    let changes = diff::compare(&old, &new);
    let labels = check::namespace_labels(DEFAULT_NAMESPACE, &Default::default());
    let namespace = Namespace::labelled(DEFAULT_NAMESPACE, &labels);
    let mut images = Vec::new();
    for path in &args.manifests {
        let text = read(path)?;
        let found = diff::compare_manifests(&old, &new, &text, &namespace)
            .with_context(|| format!("in {}", path.display()))?;
        images.extend(found);
    }
    let in_use = in_use_inventory(args)?;
    let refused = match &in_use {
        Some((inventory, labels)) => newly_refused(Some(&old), &new, inventory, |name| labels.get(name)),
        None => Vec::new(),
    };
    // With manifests or what runs, what breaks is known exactly: a removed registry nothing
    // uses is no reason to stop a pipeline. Without them, anything that may break counts.
    let breaking = if args.manifests.is_empty() && in_use.is_none() {
        changes.iter().any(|c| c.class.is_breaking())
    } else {
        images.iter().any(|i| i.class == diff::ImageClass::Breaks) || !refused.is_empty()
    };
    match args.output {
        Output::Text => {
            print!("{}", render_diff(&changes, !args.manifests.is_empty(), &images, new.mode));
            if let Some((inventory, _)) = &in_use {
                print!("{}", render_in_use(inventory, &refused));
            }
        }
        Output::Json => {
            let report = DiffReport {
                old: args.old.display().to_string(),
                new: args.new.display().to_string(),
                breaking,
                changes: &changes,
                manifests_checked: !args.manifests.is_empty(),
                images: &images,
                in_use_checked: in_use.is_some(),
                in_use: &refused,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(if breaking { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The audit's inventory and the namespaces' labels (known only from the cluster), if asked for.
fn in_use_inventory(args: &DiffArgs) -> anyhow::Result<Option<(Inventory, HashMap<String, Labels>)>> {
    if let Some(path) = &args.in_use {
        let text = read(path)?;
        let inventory = serde_json::from_str(&text)
            .with_context(|| format!("{} is not the images.json of {AUDIT_CONFIGMAP}", path.display()))?;
        return Ok(Some((inventory, HashMap::new())));
    }
    if !args.in_use_from_cluster {
        return Ok(None);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = kube_client(args.kubeconfig.as_deref()).await?;
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
        let configmap = configmaps
            .get_opt(AUDIT_CONFIGMAP)
            .await
            .with_context(|| format!("cannot read ConfigMap {}/{AUDIT_CONFIGMAP}", args.namespace))?
            .with_context(|| {
                format!(
                    "ConfigMap {}/{AUDIT_CONFIGMAP} does not exist: is registry-gate controller running with its audit on?",
                    args.namespace
                )
            })?;
        let text = configmap.data.as_ref().and_then(|data| data.get(INVENTORY_KEY)).with_context(|| {
            format!("ConfigMap {}/{AUDIT_CONFIGMAP} has no {INVENTORY_KEY} key", args.namespace)
        })?;
        let inventory: Inventory = serde_json::from_str(text)
            .with_context(|| format!("ConfigMap {}/{AUDIT_CONFIGMAP} key {INVENTORY_KEY} does not read", args.namespace))?;
        let namespaces: Api<KubeNamespace> = Api::all(client);
        let mut labels = HashMap::new();
        for namespace in namespaces.list_metadata(&ListParams::default()).await.context("cannot list namespaces")? {
            labels.insert(namespace.metadata.name.unwrap_or_default(), namespace.metadata.labels.unwrap_or_default());
        }
        anyhow::Ok(Some((inventory, labels)))
    })
}

fn render_in_use(inventory: &Inventory, refused: &[Refused<'_>]) -> String {
    let when = time::OffsetDateTime::from_unix_timestamp(inventory.finished)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "an unknown time".into());
    let truncated = if inventory.truncated { "; the inventory is truncated, so perhaps more" } else { "" };
    if refused.is_empty() {
        return format!("nothing in use is refused (audit of {when}{truncated})\n");
    }
    let impact = Impact::of(refused);
    let mut out = format!(
        "in use and refused: {} Pods and {} workloads in {} namespaces (audit of {when}{truncated})\n",
        impact.pods,
        impact.workloads,
        impact.namespaces.len()
    );
    for Refused { in_use, reason } in refused {
        out.push_str(&format!(
            "breaks-running {} {} uses {} ({} Pods, {} workloads): {reason}\n",
            in_use.namespace, in_use.example, in_use.image, in_use.pods, in_use.workloads
        ));
    }
    out
}

/// A policy file for `diff`, or `None` once its problems are printed as `policy validate`
/// prints them. A file that cannot be read is an error.
fn load_for_diff(path: &Path) -> anyhow::Result<Option<Policy>> {
    let text = read(path)?;
    match Policy::parse(&text) {
        Ok(policy) => Ok(Some(policy)),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Ok(None)
        }
    }
}

fn render_diff(changes: &[Change], manifests_checked: bool, images: &[ImageChange], mode: Mode) -> String {
    if changes.is_empty() && images.is_empty() {
        return "no change\n".to_owned();
    }
    let mut out = String::new();
    for change in changes {
        out.push_str(&format!(
            "{:<8} {} ({}): {}\n",
            change.class.name(),
            change.subject,
            change.field,
            change.message
        ));
    }
    if !manifests_checked {
        return out;
    }
    if images.is_empty() {
        out.push_str("no image in the manifests changes its verdict\n");
    }
    for change in images {
        let new = &change.new;
        let whereabouts = format!(
            "{} {}, namespace {}",
            new.object.as_deref().unwrap_or("(image)"),
            new.location.as_deref().unwrap_or(""),
            new.namespace
        );
        let detail = match change.class {
            diff::ImageClass::Breaks => {
                let audit = if mode == Mode::Audit { " [audit mode: admitted with a warning]" } else { "" };
                format!("{}{audit}", new.reason.as_deref().unwrap_or_default())
            }
            diff::ImageClass::NewlyAllowed | diff::ImageClass::Changes => {
                format!("{} -> {}", verdict(&change.old), verdict(new))
            }
        };
        out.push_str(&format!("{:<13} {} ({whereabouts}): {detail}\n", change.class.name(), new.image));
    }
    out
}

/// How an image is admitted, or that it is not: `via ghcr with pull secret ghcr-pull`.
fn verdict(report: &ImageReport) -> String {
    if !report.is_allowed() {
        return "denied".to_owned();
    }
    let registry = match &report.registry {
        Some(name) => format!("via {name}"),
        None => report.reason.clone().unwrap_or_else(|| "allowed".to_owned()),
    };
    match &report.pull_secret {
        Some(secret) => format!("{registry} with pull secret {secret}"),
        None => format!("{registry} without pull secret"),
    }
}
