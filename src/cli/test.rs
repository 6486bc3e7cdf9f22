//! `registry-gate test DIR`: the policy tests under DIR (docs/policy-tests.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use registry_gate::verify;

use super::EXIT_ERROR;

#[derive(clap::Args)]
pub struct TestArgs {
    /// A directory searched for PolicyTest files (*.yaml, *.yml), or one such file.
    dir: PathBuf,
    /// `text` for people; `json`: one object per expectation ({"at", "expected", "failure"}).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let files =
        verify::find_test_files(&args.dir).with_context(|| format!("cannot read {}", args.dir.display()))?;
    if files.is_empty() {
        eprintln!("error: no {} file under {}", verify::KIND, args.dir.display());
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let mut outcomes = Vec::new();
    for file in &files {
        match verify::run_file(file) {
            Ok(found) => outcomes.extend(found),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_ERROR));
            }
        }
    }
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        Output::Text => {
            for outcome in &outcomes {
                match &outcome.failure {
                    None => println!("PASS {}: {}", outcome.at, outcome.expected),
                    Some(why) => println!("FAIL {}: {}, but {why}", outcome.at, outcome.expected),
                }
            }
            println!("{} passed, {failed} failed ({} files)", outcomes.len() - failed, files.len());
        }
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
