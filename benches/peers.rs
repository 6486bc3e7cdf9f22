//! registry-gate's side of the comparison with its peers' engines (benches/peers/, Go): the same
//! Pod decided against the same registries, timed the way `go test -bench` times (iterations
//! grown until a run lasts a second, `-count` runs), printed in Go's benchmark format so that
//! benches/peers/run.sh reads both sides with one parser.
//!
//! Run: `benches/peers/run.sh` (`make bench-peers`), or this side alone with
//! `cargo bench --bench peers`. Figures are in benches/RESULTS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use registry_gate::image::Reference;
use registry_gate::policy::{Decision, Namespace, Policy};

/// The same sizes as benches/peers/inputs.go.
const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// `go test -bench`'s default `-benchtime`.
const RUN_TIME: Duration = Duration::from_secs(1);
const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Entry `i`, as `EntryURL` in benches/peers/inputs.go (and `entry_url` in benches/decision.rs).
fn entry_url(i: usize) -> (&'static str, String) {
    match i % 4 {
        0 => ("GHCR", format!("ghcr.io/org{i}")),
        1 => ("ECR", format!("{i:012}.dkr.ecr.us-east-1.amazonaws.com")),
        2 => ("Generic", format!("registry{i}.corp.example:5000")),
        _ => ("Harbor", format!("harbor.corp.example/team{i}")),
    }
}

/// The peers' repo list as a registry-gate policy: the same entries, nothing else (no wildcard,
/// no deny rule, no exception).
fn policy_text(size: usize) -> String {
    let mut text = String::from("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n");
    for i in 0..size {
        let (kind, url) = entry_url(i);
        text += &format!("- {{name: r{i}, type: {kind}, url: \"{url}\", pullSecret: s{i}}}\n");
    }
    text
}

/// The Pod's images, as `PodImages` in benches/peers/inputs.go: four from the middle of the list,
/// then one from no entry.
fn pod_images(size: usize) -> Vec<String> {
    let mid = (size / 2) & !3;
    vec![
        format!("ghcr.io/org{mid}/service:1.4"),
        format!("{:012}.dkr.ecr.us-east-1.amazonaws.com/app@{DIGEST}", mid + 1),
        format!("registry{}.corp.example:5000/team/app:7", mid + 2),
        format!("harbor.corp.example/team{}/job:latest", mid + 3),
        "quay.io/unknown/app:1".to_owned(),
    ]
}

/// One review of the Pod's images: parse each image string and decide it, as the webhook does
/// once the review is decoded. Returns how many were allowed.
fn review(policy: &Policy, namespace: &Namespace<'_>, images: &[String]) -> usize {
    images
        .iter()
        .filter(|image| match Reference::parse(image) {
            Ok(reference) => matches!(policy.decide(&reference, namespace), Decision::Allowed(_)),
            Err(_) => false,
        })
        .count()
}

/// Runs `f` `iterations` times and returns the elapsed time.
fn time(iterations: u64, f: &mut impl FnMut() -> usize) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    start.elapsed()
}

/// Go's `testing.B` loop: start at one iteration and grow the count from the last run's
/// per-iteration time (with 20 % headroom, at most 100× per step) until a run lasts `RUN_TIME`.
fn go_style(mut f: impl FnMut() -> usize) -> (u64, f64) {
    let mut iterations = 1u64;
    loop {
        let elapsed = time(iterations, &mut f);
        if elapsed >= RUN_TIME || iterations >= 1_000_000_000 {
            return (iterations, elapsed.as_nanos() as f64 / iterations as f64);
        }
        let per_iteration = (elapsed.as_nanos() as f64 / iterations as f64).max(1.0);
        let wanted = (RUN_TIME.as_nanos() as f64 * 1.2 / per_iteration) as u64;
        iterations = wanted.clamp(iterations + 1, iterations * 100);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a number after `--count` sets the runs per size.
    let args: Vec<String> = std::env::args().collect();
    let count = args
        .iter()
        .position(|arg| arg == "--count")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let namespace = Namespace::named("default");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for size in SIZES {
        let policy = Policy::parse(&policy_text(size)).expect("the generated policy is valid");
        let images = pod_images(size);
        assert_eq!(review(&policy, &namespace, &images), 4, "four images allowed, one refused");
        for _ in 0..count {
            let (iterations, ns) = go_style(|| review(&policy, &namespace, black_box(&images)));
            println!("BenchmarkRegistryGate/size={size}-{threads}\t{iterations}\t{ns:.1} ns/op");
        }
    }
}
