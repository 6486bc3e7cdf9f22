//! `registry-gate secret render`: a registry's source pull Secret, or the ECR key Secret the
//! controller refreshes it from, printed as a manifest to pipe into `kubectl apply -f -`.
//!
//! Credential values are read from the environment, files or standard input, never from
//! arguments: an argument is in the shell history and in every process listing on the machine.
//! For the same reason nothing here repeats a value, or an argument that is not where it should
//! be, on stderr. User names may be given literally (`--username`); they are not secret.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use registry_gate::credentials::render::{
    self, AwsKey, PullCredentials, RenderedSecret, SecretText, fixed_username, password_field,
};

use super::policy::load_policy;

/// A value read from a file or standard input may be at most this long: a service account key
/// file is about 2.4 KB, and a whole Secret is at most 1 MiB.
const MAX_VALUE_BYTES: u64 = 64 * 1024;
/// How to give a value, for messages.
const SOURCES: &str = "env:VAR, file:PATH, or - for standard input";

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Print a registry's source pull Secret (kubernetes.io/dockerconfigjson), or with
    /// --ecr-key the ECR key Secret the controller refreshes it from. Values are read from
    /// env:VAR, file:PATH or - (standard input), never from arguments.
    #[command(override_usage = "registry-gate secret render --policy FILE REGISTRY [OPTIONS]\n       \
        registry-gate secret render --type TYPE --url URL --name SECRET [OPTIONS]")]
    Render(RenderArgs),
}

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The policy file (YAML or JSON) that registers the registry.
    #[arg(long, short = 'p', value_name = "FILE", conflicts_with_all = ["registry_type", "url", "name"])]
    policy: Option<PathBuf>,
    /// The registry's name in the policy.
    // A list, so that a stray extra argument is refused by this command, which does not repeat
    // it (it may be a value typed in the wrong place), rather than by clap, which would.
    #[arg(value_name = "REGISTRY")]
    registry: Vec<String>,
    /// Without a policy: the registry type (GHCR, ECR, GCR, Generic...).
    #[arg(long = "type", value_name = "TYPE", requires_all = ["url", "name"])]
    registry_type: Option<String>,
    /// Without a policy: the registry URL, host[:port][/path].
    #[arg(long, requires_all = ["registry_type", "name"])]
    url: Option<String>,
    /// Without a policy: the pull Secret's name.
    #[arg(long, requires_all = ["registry_type", "url"])]
    name: Option<String>,
    /// The namespace of the Secret: registry-gate's own, where the sources live.
    #[arg(long, short = 'n', default_value = "registry-gate")]
    namespace: String,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Yaml)]
    output: Output,
    /// The user name, for types that do not fix one (robot accounts as written: org+robot,
    /// 'robot$name').
    #[arg(long, conflicts_with = "username_from")]
    username: Option<String>,
    /// Where to read the user name: env:VAR, file:PATH or -.
    #[arg(long, value_name = "SOURCE")]
    username_from: Option<String>,
    /// Where to read the password, token or key file: env:VAR, file:PATH or -.
    #[arg(long, value_name = "SOURCE")]
    password_from: Option<String>,
    /// Render the ECR key Secret (an AWS key) the controller turns into the registry's pull
    /// Secret, instead of a pull Secret holding a 12-hour token.
    #[arg(long, conflicts_with_all = ["username", "username_from", "password_from"])]
    ecr_key: bool,
    /// The ECR key Secret's name [default: PULLSECRET-ecr-key].
    #[arg(long, requires = "ecr_key")]
    key_name: Option<String>,
    /// The AWS region [default: the one in the registry URL].
    #[arg(long, requires = "ecr_key")]
    region: Option<String>,
    /// Where to read the AWS access key id: env:VAR, file:PATH or -.
    #[arg(long, value_name = "SOURCE", requires = "ecr_key")]
    access_key_id_from: Option<String>,
    /// Where to read the AWS secret access key: env:VAR, file:PATH or -.
    #[arg(long, value_name = "SOURCE", requires = "ecr_key")]
    secret_access_key_from: Option<String>,
    /// Where to read an AWS session token (temporary credentials only): env:VAR, file:PATH or -.
    #[arg(long, value_name = "SOURCE", requires = "ecr_key")]
    session_token_from: Option<String>,
    /// Refused: a password is never taken from the command line. Hidden, and here only so that
    /// the refusal does not repeat the value, as clap's unknown-argument error would.
    #[arg(long, hide = true, value_name = "NEVER")]
    password: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

pub fn run(command: SecretCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Render(args) => render_command(args),
    }
}

fn render_command(args: RenderArgs) -> anyhow::Result<ExitCode> {
    if args.password.is_some() {
        bail!(
            "--password: a password is never taken from the command line, where the shell history and the process list keep it; use --password-from {SOURCES}"
        );
    }
    let registry = match (&args.policy, &args.registry_type, &args.url, &args.name) {
        (Some(path), ..) => {
            let name = match args.registry.as_slice() {
                [name] => name,
                [] => bail!("name the registry: registry-gate secret render --policy FILE REGISTRY"),
                more => bail!(
                    "expected one registry name, got {} arguments (not repeated here: a stray one may be a value)",
                    more.len()
                ),
            };
            let policy = load_policy(path)?;
            render::find_registry(&policy, name).with_context(|| format!("in {}", path.display()))?.clone()
        }
        (None, Some(registry_type), Some(url), Some(name)) => {
            if !args.registry.is_empty() {
                bail!(
                    "without --policy, the registry is given by --type, --url and --name: {} more arguments (not repeated here: a stray one may be a value)",
                    args.registry.len()
                );
            }
            render::registry_from_flags(registry_type, url, name)?
        }
        _ => bail!("give --policy FILE REGISTRY, or --type TYPE --url URL --name SECRET"),
    };

    let rendered = if args.ecr_key {
        let aws = Sources::check(&[
            ("accessKeyId", "--access-key-id-from", args.access_key_id_from.as_deref()),
            ("secretAccessKey", "--secret-access-key-from", args.secret_access_key_from.as_deref()),
            ("sessionToken", "--session-token-from", args.session_token_from.as_deref()),
        ])?;
        let key = AwsKey {
            access_key_id: SecretText::new(aws.required(0)?),
            secret_access_key: SecretText::new(aws.required(1)?),
            session_token: aws.optional(2)?.map(SecretText::new),
        };
        render::render_ecr_key(
            &registry,
            &args.namespace,
            args.key_name.as_deref(),
            args.region.as_deref(),
            &key,
        )?
    } else {
        let given = args.username.as_deref();
        let password = password_field(registry.registry_type, given);
        let sources = Sources::check(&[
            ("username", "--username-from", args.username_from.as_deref()),
            (password, "--password-from", args.password_from.as_deref()),
        ])?;
        let username = match given {
            Some(name) => Some(name.to_owned()),
            None if args.username_from.is_some() => Some(sources.required(0)?),
            // The type's own (AWS, nologin, _json_key), or an error naming --username.
            None => fixed_username(registry.registry_type).map(str::to_owned),
        };
        let credentials = PullCredentials { username, password: SecretText::new(sources.required(1)?) };
        render::render_pull_secret(&registry, &args.namespace, &credentials)?
    };
    print(&rendered, args.output)?;
    Ok(ExitCode::SUCCESS)
}

fn print(rendered: &RenderedSecret, output: Output) -> anyhow::Result<()> {
    let text = match output {
        Output::Yaml => rendered.to_yaml(),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&rendered.to_json())?),
    };
    print!("{text}");
    Ok(())
}

/// Where a value comes from.
enum Source {
    Env(String),
    File(PathBuf),
    Stdin,
}

impl Source {
    /// `env:VAR`, `file:PATH`, `-` or `stdin`. The error does not repeat `text`: a value given
    /// where its source belongs is exactly what must not be printed.
    fn parse(flag: &str, text: &str) -> anyhow::Result<Self> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                bail!("{flag}: env: needs a variable name, as in env:GHCR_TOKEN");
            }
            return Ok(Source::Env(name.to_owned()));
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                bail!("{flag}: file: needs a path, as in file:key.json");
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        if text == "-" || text == "stdin" {
            return Ok(Source::Stdin);
        }
        bail!(
            "{flag}: not a source (not repeated here); give {SOURCES}. Values are never taken from arguments"
        )
    }

    /// The value, with the line ending a file or `echo` leaves removed (as `docker login
    /// --password-stdin` does). `field` names it in errors; nothing of its text is ever shown.
    fn read(&self, field: &str) -> anyhow::Result<String> {
        let (bytes, from) = match self {
            Source::Env(name) => {
                let value = std::env::var_os(name)
                    .with_context(|| format!("{field}: the environment variable {name} is not set"))?;
                (value.into_encoded_bytes(), format!("the environment variable {name}"))
            }
            Source::File(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("{field}: cannot read {}", path.display()))?;
                (read_bounded(file, field, &path.display().to_string())?, path.display().to_string())
            }
            Source::Stdin => {
                (read_bounded(std::io::stdin().lock(), field, "standard input")?, "standard input".to_owned())
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            bail!("{field}: {from} is not UTF-8 text");
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            bail!("{field}: {from} is empty");
        }
        Ok(text.to_owned())
    }
}

fn read_bounded(reader: impl std::io::Read, field: &str, from: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_VALUE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{field}: cannot read {from}"))?;
    if bytes.len() as u64 > MAX_VALUE_BYTES {
        bail!("{field}: {from} is larger than {MAX_VALUE_BYTES} bytes; no credential is");
    }
    Ok(bytes)
}

/// The sources of one command's values, checked together before any is read: standard input
/// can be read once only.
struct Sources {
    /// Field name (for messages), flag, and where the value comes from if it was given.
    fields: Vec<(&'static str, &'static str, Option<Source>)>,
}

impl Sources {
    fn check(given: &[(&'static str, &'static str, Option<&str>)]) -> anyhow::Result<Self> {
        let mut stdin: Option<&str> = None;
        let mut fields = Vec::with_capacity(given.len());
        for &(field, flag, text) in given {
            let source = text.map(|text| Source::parse(flag, text)).transpose()?;
            if matches!(source, Some(Source::Stdin)) {
                if let Some(first) = stdin {
                    bail!(
                        "{flag}: standard input is taken already by {first}; give one of them as env: or file:"
                    );
                }
                stdin = Some(flag);
            }
            fields.push((field, flag, source));
        }
        Ok(Sources { fields })
    }

    fn optional(&self, index: usize) -> anyhow::Result<Option<String>> {
        let (field, _, source) = &self.fields[index];
        source.as_ref().map(|source| source.read(field)).transpose()
    }

    fn required(&self, index: usize) -> anyhow::Result<String> {
        let (field, flag, _) = &self.fields[index];
        self.optional(index)?.with_context(|| format!("{field}: give {flag} {SOURCES}"))
    }
}
