//! `registry-gate policy`: policy tools for CI and for admins.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use registry_gate::policy::Policy;

use super::read;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print every problem of a policy file (exit 1 if any), or a summary of what it registers.
    Validate { file: PathBuf },
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Validate { file } => validate(&file),
    }
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
        println!(
            "  {:<24} {:<16} {:<48} {scope}; {secret}",
            registry.name,
            registry.registry_type.name(),
            registry.pattern
        );
    }
    Ok(ExitCode::SUCCESS)
}
