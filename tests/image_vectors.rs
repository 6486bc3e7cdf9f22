//! Every case of the upstream Go test tables (`tests/data/image-references.json`, provenance in
//! `tests/data/image-references.README.md`) against registry-gate's parser.
//!
//! One test walks all cases and reports every disagreement at once, so that a regression shows its
//! whole extent rather than its first case. Only the `compose` mode (Go's builder API, which
//! registry-gate has no use for) is not run; the test counts what it ran so that none is silently
//! skipped.

use registry_gate::image::digest::{self, DigestAlgorithms};
use registry_gate::image::{ParseError, Reference, grammar};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Case {
    input: String,
    mode: String,
    valid: bool,
    error_message: Option<String>,
    domain: Option<String>,
    path: Option<String>,
    name: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    normalized: Option<String>,
    docker_ref: Option<String>,
    digest_algorithms_assumed: Option<Vec<String>>,
}

impl Case {
    /// The upstream `distribution/reference` tests link only sha256; cases that assume more say so.
    fn algorithms(&self) -> DigestAlgorithms {
        match &self.digest_algorithms_assumed {
            Some(names) if names.iter().any(|n| n == "sha512") => DigestAlgorithms::ALL,
            _ => DigestAlgorithms::SHA256_ONLY,
        }
    }
}

/// A result in the vectors' own terms; fields a mode does not define stay `None`.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    valid: bool,
    error_message: Option<String>,
    domain: Option<String>,
    path: Option<String>,
    name: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    normalized: Option<String>,
}

fn from_result(result: Result<Reference<'_>, ParseError>, with_string: bool) -> Outcome {
    match result {
        Ok(r) => Outcome {
            valid: true,
            domain: Some(r.domain().to_owned()),
            path: Some(r.path().to_string()),
            name: Some(r.name().to_string()),
            tag: r.tag().map(str::to_owned),
            digest: r.digest().map(str::to_owned),
            normalized: with_string.then(|| r.to_string()),
            ..Outcome::default()
        },
        Err(e) => Outcome { error_message: Some(e.to_string()), ..Outcome::default() },
    }
}

/// The expected outcome, keeping only the fields the mode defines.
fn expected(case: &Case, fields: &[&str]) -> Outcome {
    let keep = |name: &str, value: &Option<String>| fields.contains(&name).then(|| value.clone()).flatten();
    Outcome {
        valid: case.valid,
        error_message: case.error_message.clone(),
        domain: keep("domain", &case.domain),
        path: keep("path", &case.path),
        name: keep("name", &case.name),
        tag: keep("tag", &case.tag),
        digest: keep("digest", &case.digest),
        normalized: keep("normalized", &case.normalized),
    }
}

const REFERENCE_FIELDS: &[&str] = &["domain", "path", "name", "tag", "digest"];
const NORMALIZED_FIELDS: &[&str] = &["domain", "path", "name", "tag", "digest", "normalized"];

/// Runs one case: (what registry-gate says, what Go says), or `None` for a mode not run here.
fn run(case: &Case) -> Option<(Outcome, Outcome)> {
    let input = case.input.as_str();
    let algorithms = case.algorithms();
    Some(match case.mode.as_str() {
        "parse" => {
            (from_result(Reference::parse_strict(input, algorithms), false), expected(case, REFERENCE_FIELDS))
        }
        "with_name" => (from_result(Reference::with_name(input), false), expected(case, REFERENCE_FIELDS)),
        "normalized" => {
            let mut got = from_result(Reference::parse_normalized(input, algorithms), true);
            let mut want = expected(case, NORMALIZED_FIELDS);
            // Valid normalized cases also give the `ParseDockerRef` string; compare it in the same row.
            if let Some(docker_ref) = &case.docker_ref {
                want.error_message = Some(format!("docker_ref {docker_ref}"));
                let got_ref = Reference::parse_docker_ref(input, algorithms).map(|r| r.to_string());
                got.error_message = Some(format!("docker_ref {}", got_ref.unwrap_or_else(|e| e.to_string())));
            }
            (got, want)
        }
        "docker_ref" => (
            from_result(Reference::parse_docker_ref(input, algorithms), true),
            expected(case, NORMALIZED_FIELDS),
        ),
        "parse_named" => {
            // Go's `ParseNamed`: the normalized parse, but only for input already in canonical form.
            let got = match Reference::parse_normalized(input, algorithms) {
                Ok(r) if r.to_string() != input => Outcome {
                    error_message: Some("repository name must be canonical".to_owned()),
                    ..Outcome::default()
                },
                other => from_result(other, true),
            };
            (got, expected(case, NORMALIZED_FIELDS))
        }
        "parse_any" => {
            // Go's `ParseAnyReference`: an image ID or a bare digest is a digest-only reference.
            let got = if grammar::is_identifier(input) {
                Outcome {
                    valid: true,
                    digest: Some(format!("sha256:{input}")),
                    normalized: Some(format!("sha256:{input}")),
                    ..Outcome::default()
                }
            } else if digest::validate(input, algorithms).is_ok() {
                Outcome {
                    valid: true,
                    digest: Some(input.to_owned()),
                    normalized: Some(input.to_owned()),
                    ..Outcome::default()
                }
            } else {
                from_result(Reference::parse_normalized(input, algorithms), true)
            };
            (got, expected(case, NORMALIZED_FIELDS))
        }
        "digest" => {
            let got = match digest::validate(input, algorithms) {
                Ok(()) => Outcome { valid: true, digest: Some(input.to_owned()), ..Outcome::default() },
                Err(e) => Outcome { error_message: Some(e.to_string()), ..Outcome::default() },
            };
            (got, expected(case, &["digest"]))
        }
        "regexp_domain" => (flag(grammar::is_domain_and_port(input)), flag(case.valid)),
        "regexp_identifier" => (flag(grammar::is_identifier(input)), flag(case.valid)),
        "regexp_name" => {
            let got = match grammar::split_name(input) {
                Some((domain, path)) => Outcome {
                    valid: true,
                    domain: Some(domain.to_owned()),
                    path: Some(path.to_owned()),
                    ..Outcome::default()
                },
                None => flag(false),
            };
            let want = Outcome { error_message: None, ..expected(case, &["domain", "path"]) };
            (got, want)
        }
        "regexp_reference" => {
            let got = match grammar::match_reference(input) {
                Some((name, tag, digest)) => Outcome {
                    valid: true,
                    name: Some(name.to_owned()),
                    tag: tag.map(str::to_owned),
                    digest: digest.map(str::to_owned),
                    ..Outcome::default()
                },
                None => flag(false),
            };
            let want = Outcome { error_message: None, ..expected(case, &["name", "tag", "digest"]) };
            (got, want)
        }
        _ => return None,
    })
}

fn flag(valid: bool) -> Outcome {
    Outcome { valid, ..Outcome::default() }
}

#[test]
fn every_upstream_vector_agrees() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/image-references.json"))
            .expect("tests/data/image-references.json is readable");
    let cases: Vec<Case> = serde_json::from_str(&text).expect("the vectors are valid JSON");
    let mut ran = 0;
    let mut skipped_modes = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        match run(case) {
            Some((got, want)) => {
                ran += 1;
                if got != want {
                    failures
                        .push(format!("{} {:?}\n  got:  {got:?}\n  want: {want:?}", case.mode, case.input));
                }
            }
            None => {
                skipped_modes.insert(case.mode.clone());
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} vectors disagree:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(skipped_modes.into_iter().collect::<Vec<_>>(), ["compose"]);
    assert_eq!(ran, cases.len() - 11, "every case but the 11 compose cases runs");
}
