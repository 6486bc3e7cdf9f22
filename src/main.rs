//! The `registry-gate` command line: one binary, one subcommand per file in `cli/`. Everything
//! it does lives in the library; the CLI only reads arguments and files, prints, and picks exit
//! codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One crypto provider for the whole process, before anything builds a TLS configuration.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::Cli::parse().run()
}
