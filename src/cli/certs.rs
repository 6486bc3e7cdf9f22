//! `registry-gate certs`: a development CA and serving certificate.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CertsArgs {
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// DNS names and IP addresses to cover (default: localhost, 127.0.0.1, ::1 and the
    /// in-cluster Service names).
    #[arg(long = "name")]
    names: Vec<String>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let CertsArgs { out, names } = args;
    let names = if names.is_empty() { registry_gate::certs::default_names() } else { names };
    let files = registry_gate::certs::generate(&names)?.write(&out)?;
    println!(
        "wrote {}, {} and {} for {}",
        out.join(registry_gate::certs::CA_CERT).display(),
        files.cert.display(),
        files.key.display(),
        names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
