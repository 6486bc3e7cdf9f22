//! `registry-gate registry test`: a registry UI's "Test connection" button on the command line.
//! The test itself is `registry_gate::registry_test`; this reads the target and credentials,
//! prints the report, and exits with the code of the stage that failed.
//!
//! Credentials come from a docker config file, standard input or the cluster, never from
//! arguments (see `secret render` for why). Nothing prints a password, token or user name.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Secret;
use registry_gate::check::{BUNDLED_POLICY, BUNDLED_POLICY_PATH};
use registry_gate::credentials::DOCKER_CONFIG_JSON_KEY;
use registry_gate::policy::{Policy, Registry, is_dns_label};
use registry_gate::registry_test::challenge::is_loopback_host;
use registry_gate::registry_test::{
    Credentials, Report, RepositorySource, Stage, StageStatus, Target, TestOptions, test_registry,
};
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::kube_client;
use super::policy::load_policy;

/// A password on standard input may be at most this long (a GCR key file is about 2.4 KB).
const MAX_PASSWORD_BYTES: u64 = 64 * 1024;
/// A docker config file may be at most this long: a Secret is at most 1 MiB.
const MAX_DOCKER_CONFIG_BYTES: u64 = 1024 * 1024;
/// Registry names listed when the one asked for is not in the policy.
const MAX_NAMES_LISTED: usize = 32;
/// Longest `--timeout`: a stage that needs longer is a failure worth seeing.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

const EXIT_CODES: &str = "\
Exit codes:
  0   the test passed (without credentials: the registry answers, anonymous access as reported)
  2   usage error, unreadable file or credentials, unknown registry name
  3   dns             the host does not resolve
  4   connect         no TCP connection
  5   tls             TLS handshake: unknown authority, name mismatch, expired, not TLS
  6   not-a-registry  GET /v2/ does not answer like a registry
  7   challenge       WWW-Authenticate missing, malformed or unsupported
  8   token-endpoint  the Bearer token endpoint is unreachable or answers no token
  9   credentials     user name and password (or the token) refused; ECR Public: token expired
  10  permission      403, or the token grants no pull on the repository

Credentials are read from --docker-config, standard input (--username with --password-stdin) or \
the policy entry's pullSecret in the cluster (--from-secret); never from arguments. Without \
credentials only anonymous access is tested. No manifest is fetched. See docs/registry-test.md.";

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Test the connection to a registry, stage by stage: DNS, TCP, TLS, GET /v2/, the
    /// authentication challenge, the token endpoint, the credentials and pull permission.
    #[command(after_help = EXIT_CODES)]
    Test(TestArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// A registry's name in the policy, or a registry: registry.example:5000, https://ghcr.io,
    /// ghcr.io/acme/app (the path is the repository whose pull permission is checked).
    #[arg(value_name = "NAME|URL")]
    target: String,
    /// The policy that names the registry; without it, the bundled policy/default.yaml.
    #[arg(long, short = 'p', value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The repository of the pull scope (acme/app) [default: the path of the URL, or of the
    /// policy entry].
    #[arg(long, value_name = "PATH")]
    repository: Option<String>,
    /// Credentials from a docker config file ({"auths": {...}}): the entry for the registry.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["username", "from_secret"])]
    docker_config: Option<PathBuf>,
    /// The user name; the password or token is read from standard input (--password-stdin).
    #[arg(long, requires = "password_stdin", conflicts_with = "from_secret")]
    username: Option<String>,
    /// Read the password or token from standard input (with --username).
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Credentials from the policy entry's pullSecret, read from --namespace in the cluster
    /// (--kubeconfig, KUBECONFIG, or the in-cluster service account).
    #[arg(long)]
    from_secret: bool,
    /// The namespace of the pull Secret (--from-secret): registry-gate's own.
    #[arg(long, short = 'n', default_value = "registry-gate")]
    namespace: String,
    /// Kubeconfig for --from-secret.
    #[arg(long, value_name = "FILE", requires = "from_secret")]
    kubeconfig: Option<PathBuf>,
    /// PEM file of CA certificates to trust besides the public ones (a private registry's CA).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Do not verify the registry's certificate. Anyone on the network path can then pose as
    /// the registry and receive the credentials: prefer --ca-file.
    #[arg(long, conflicts_with = "ca_file")]
    insecure_skip_tls_verify: bool,
    /// Plain HTTP without TLS, for a registry on a loopback address (localhost, 127.0.0.1, ::1).
    #[arg(long, conflicts_with_all = ["ca_file", "insecure_skip_tls_verify"])]
    plain_http: bool,
    /// Each step's limit (lookup, connection, handshake, one request): 10, 10s, 500ms.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,
    /// `text` for people; `json`: one object (docs/registry-test.md).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Refused: a password is never taken from the command line. Hidden, and here only so that
    /// the refusal does not repeat the value, as clap's unknown-argument error would.
    #[arg(long, hide = true, value_name = "NEVER")]
    password: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The shape of `-o json`: the library's report, and what only the command knows.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    /// `docker-config`, `password-stdin`, `secret`, or null.
    credentials_from: Option<&'static str>,
    exit_code: u8,
}

pub fn run(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::Test(args) => test(args),
    }
}

/// The exit code of a failed stage, documented in `--help` and docs/registry-test.md.
fn exit_code(stage: Option<Stage>) -> u8 {
    match stage {
        None => 0,
        Some(Stage::Dns) => 3,
        Some(Stage::Connect) => 4,
        Some(Stage::Tls) => 5,
        Some(Stage::NotARegistry) => 6,
        Some(Stage::Challenge) => 7,
        Some(Stage::TokenEndpoint) => 8,
        Some(Stage::Credentials) => 9,
        Some(Stage::Permission) => 10,
    }
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    if args.password.is_some() {
        bail!(
            "--password: a password is never taken from the command line, where the shell history and the process list keep it; use --password-stdin, --docker-config or --from-secret"
        );
    }
    let is_http = args.target.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"));
    if is_http && !args.plain_http {
        bail!("http:// is plain HTTP: give --plain-http to test a loopback registry without TLS");
    }
    let (mut target, registry) = resolve_target(&args)?;
    if let Some(repository) = &args.repository {
        target = target.with_repository(repository, RepositorySource::Option).context("--repository")?;
    }
    if args.plain_http && !is_loopback_host(target.api_host()) {
        bail!("--plain-http is for registries on a loopback address only (localhost, 127.0.0.1, ::1)");
    }
    let extra_roots = match &args.ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    let options = TestOptions {
        timeout: args.timeout,
        extra_roots,
        insecure_skip_tls_verify: args.insecure_skip_tls_verify,
        plain_http: args.plain_http,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (credentials, credentials_from) = read_credentials(&args, &target, registry.as_ref(), &runtime)?;
    if args.insecure_skip_tls_verify {
        eprintln!(
            "WARNING: --insecure-skip-tls-verify: the registry's certificate is NOT verified. Anyone on the \
             network path can pose as the registry{}. Use --ca-file with the registry's CA instead.",
            if credentials.is_some() { " and receive the credentials" } else { "" }
        );
    }
    if args.plain_http {
        eprintln!("WARNING: --plain-http: nothing is encrypted (loopback addresses only).");
    }
    let report = runtime.block_on(test_registry(&target, credentials.as_ref(), &options));
    let code = exit_code(report.failed_stage);
    match args.output {
        Output::Text => print!("{}", render_text(&report, credentials_from, code)),
        Output::Json => {
            let json = JsonReport { report: &report, credentials_from, exit_code: code };
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(ExitCode::from(code))
}

/// A policy entry by name, or a registry given by URL. A bare name (a DNS label without dots)
/// is looked up in the policy; anything with a dot, port or path is a host.
fn resolve_target(args: &TestArgs) -> anyhow::Result<(Target, Option<Registry>)> {
    let text = args.target.trim();
    let bare_name = is_dns_label(text) && text != "localhost";
    if !bare_name && args.policy.is_none() {
        return Ok((Target::parse(text).context("NAME|URL")?, None));
    }
    let (policy, source) = match &args.policy {
        Some(path) => (load_policy(path)?, path.display().to_string()),
        None => {
            eprintln!("using the bundled policy ({BUNDLED_POLICY_PATH})");
            (
                Policy::parse(BUNDLED_POLICY).context("the bundled policy is invalid")?,
                BUNDLED_POLICY_PATH.to_owned(),
            )
        }
    };
    match policy.registries.iter().find(|registry| registry.name == text) {
        Some(registry) => {
            let target = Target::from_registry(registry).with_context(|| format!("in {source}"))?;
            Ok((target, Some(registry.clone())))
        }
        None if bare_name => {
            let names: Vec<&str> =
                policy.registries.iter().take(MAX_NAMES_LISTED).map(|r| r.name.as_str()).collect();
            bail!(
                "no registry named {text:?} in {source} (registries: {}); a registry host has a dot or a port, as in registry.example:5000",
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )
        }
        None => Ok((Target::parse(text).context("NAME|URL")?, None)),
    }
}

/// The credentials to test with, and where they came from.
fn read_credentials(
    args: &TestArgs,
    target: &Target,
    registry: Option<&Registry>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Option<Credentials>, Option<&'static str>)> {
    if let Some(path) = &args.docker_config {
        let bytes = read_bounded(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
            MAX_DOCKER_CONFIG_BYTES,
        )
        .with_context(|| format!("cannot read {}", path.display()))?;
        let credentials = Credentials::from_docker_config(&bytes, target)
            .with_context(|| format!("in {}", path.display()))?;
        return Ok((Some(credentials), Some("docker-config")));
    }
    if let Some(username) = &args.username {
        let bytes = read_bounded(std::io::stdin().lock(), MAX_PASSWORD_BYTES).context("--password-stdin")?;
        let Ok(text) = String::from_utf8(bytes) else {
            bail!("--password-stdin: standard input is not UTF-8 text");
        };
        // As `docker login --password-stdin`: the line ending `echo` or a file leaves is dropped.
        let password = text.trim_end_matches(['\n', '\r']);
        let credentials =
            Credentials::new(username.as_str(), password).context("--username/--password-stdin")?;
        return Ok((Some(credentials), Some("password-stdin")));
    }
    if args.from_secret {
        let Some(registry) = registry else {
            bail!(
                "--from-secret reads the pullSecret of a policy entry: name the registry as it is in the policy"
            );
        };
        let Some(secret_name) = &registry.pull_secret else {
            bail!("--from-secret: registry {:?} has no pullSecret in the policy", registry.name);
        };
        let namespace = &args.namespace;
        let secret = runtime.block_on(async {
            let client = kube_client(args.kubeconfig.as_deref()).await?;
            let api: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
            api.get_opt(secret_name)
                .await
                .with_context(|| format!("cannot read Secret {namespace}/{secret_name}"))
        })?;
        let Some(secret) = secret else {
            bail!("Secret {namespace}/{secret_name} (the pullSecret of {:?}) does not exist", registry.name);
        };
        let Some(config) = secret.data.as_ref().and_then(|data| data.get(DOCKER_CONFIG_JSON_KEY)) else {
            bail!("Secret {namespace}/{secret_name} has no {DOCKER_CONFIG_JSON_KEY} key");
        };
        let credentials = Credentials::from_docker_config(&config.0, target)
            .with_context(|| format!("in Secret {namespace}/{secret_name}"))?;
        return Ok((Some(credentials), Some("secret")));
    }
    Ok((None, None))
}

fn read_bounded(reader: impl std::io::Read, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        bail!("larger than {limit} bytes");
    }
    Ok(bytes)
}

fn read_ca_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    registry_gate::registry_test::read_ca_file(path).context("--ca-file")
}

/// `10`, `10s`, `1.5s` or `500ms`.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, 0.001),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let seconds =
        number.trim().parse::<f64>().map_err(|_| format!("{text:?} is not a duration (10, 10s, 500ms)"))?;
    let duration =
        Duration::try_from_secs_f64(seconds * unit).map_err(|_| format!("{text:?} is not a duration"))?;
    if duration.is_zero() || duration > MAX_TIMEOUT {
        return Err(format!("{text:?}: give a duration above 0 and at most {} s", MAX_TIMEOUT.as_secs()));
    }
    Ok(duration)
}

fn render_text(report: &Report, credentials_from: Option<&str>, code: u8) -> String {
    let mut out = String::new();
    let target = &report.target;
    let name = match (&target.name, target.registry_type) {
        (Some(name), Some(kind)) => format!("{name} ({kind}) "),
        (Some(name), None) => format!("{name} "),
        _ => String::new(),
    };
    out += &format!("registry test: {name}{} at {}\n", target.host, target.endpoint);
    match &target.repository {
        Some(repository) => out += &format!("repository:    {repository}\n"),
        None => out += "repository:    none (only /v2/ is tested; name one with --repository)\n",
    }
    out += &match credentials_from {
        Some("docker-config") => "credentials:   from --docker-config\n".to_owned(),
        Some("password-stdin") => "credentials:   --username, password from standard input\n".to_owned(),
        Some("secret") => "credentials:   the pullSecret, from the cluster\n".to_owned(),
        _ => "credentials:   none given: anonymous test only\n".to_owned(),
    };
    out += "\n";
    for stage in &report.stages {
        let status = match stage.status {
            StageStatus::Ok => "ok",
            StageStatus::Failed => "FAILED",
            StageStatus::Skipped => "skipped",
        };
        let reason = stage.reason.map_or(String::new(), |r| format!(" [{r}]"));
        out += &format!("  {status:<8} {:<15} {}{reason}\n", stage.stage.as_str(), stage.message);
    }
    out += "\n";
    out += match report.anonymous_access {
        Some(true) => "anonymous access: allowed (GET /v2/ answers 200 without credentials)\n",
        Some(false) => "anonymous access: refused at /v2/\n",
        None => "anonymous access: not reached\n",
    };
    match (report.anonymous_pull, &report.target.repository) {
        (Some(allowed), Some(repository)) if report.anonymous_access != Some(true) => {
            let verdict = if allowed { "allowed" } else { "refused" };
            out += &format!("anonymous pull of {repository}: {verdict}\n");
        }
        (Some(false), None) => out += "anonymous pull: refused\n",
        _ => {}
    }
    for quirk in &report.quirks {
        out += &format!("quirk {}: {}\n", quirk.name, quirk.message);
    }
    for warning in &report.warnings {
        out += &format!("warning: {warning}\n");
    }
    match report.failed_stage {
        None => out += &format!("result: ok: {}\n", report.message),
        Some(stage) => out += &format!("result: failed at {stage} (exit {code}): {}\n", report.message),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "abc", "1h", "301", "NaN", "inf"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_stage_has_its_own_exit_code() {
        let mut codes: Vec<u8> = Stage::ALL.iter().map(|s| exit_code(Some(*s))).collect();
        assert_eq!(codes, (3..=10).collect::<Vec<u8>>(), "in stage order");
        codes.push(exit_code(None));
        codes.push(super::super::EXIT_ERROR);
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Stage::ALL.len() + 2);
    }
}
