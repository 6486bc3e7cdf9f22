//! The `registry-gate` command line: one binary, one subcommand per file in `cli/`. Everything
//! it does lives in the library; the CLI only reads arguments and files, prints, and picks exit
//! codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// The static musl build's allocator; Cargo.toml says why, and the Dockerfile's `ENV` how it is
/// tuned.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One crypto provider for the whole process, before anything builds a TLS configuration.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::Cli::parse().run()
}
