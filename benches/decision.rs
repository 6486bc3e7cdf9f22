//! Per-image decision cost (parse + match) at 10 to 100,000 registries, against two baselines
//! measured in the same run: a linear scan of string prefixes (what a Gatekeeper
//! `k8sallowedrepos` policy does) and one regex per entry. Also: how long a policy takes to
//! parse, validate and compile.
//!
//! Run: `cargo bench --bench decision`. Figures are in benches/RESULTS.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use registry_gate::image::Reference;
use registry_gate::policy::{Decision, Namespace, Policy};

// Built for the image's target, the benchmark allocates as the shipped executable does
// (src/main.rs), so that its figures are the image's, not musl's allocator's.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "decision/mix.rs"]
mod mix;
use mix::{entry_url, images, policy_text};

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
/// The regex baseline takes minutes to build beyond this size.
const REGEX_MAX_SIZE: usize = 10_000;

/// Gatekeeper-style: allowed when the image string starts with a listed prefix.
struct PrefixScan(Vec<String>);

impl PrefixScan {
    fn new(size: usize) -> Self {
        let mut prefixes = vec!["docker.io/library/".to_owned()];
        prefixes.extend((0..size.saturating_sub(2)).map(|i| format!("{}/", entry_url(i).1)));
        PrefixScan(prefixes)
    }

    fn allows(&self, image: &str) -> bool {
        self.0.iter().any(|prefix| image.starts_with(prefix.as_str()))
    }
}

/// One anchored regex per entry, tried in turn.
struct RegexScan(Vec<regex::Regex>);

impl RegexScan {
    fn new(size: usize) -> Self {
        let mut urls = vec!["docker.io/library".to_owned()];
        urls.extend((0..size.saturating_sub(2)).map(|i| entry_url(i).1));
        let regexes = urls
            .iter()
            .map(|url| regex::Regex::new(&format!("^{}(/|:|@|$)", regex::escape(url))).expect("valid regex"))
            .collect();
        RegexScan(regexes)
    }

    fn allows(&self, image: &str) -> bool {
        self.0.iter().any(|re| re.is_match(image))
    }
}

fn decide(policy: &Policy, image: &str) -> bool {
    match Reference::parse(image) {
        Ok(reference) => {
            matches!(policy.decide(&reference, &Namespace::named("default")), Decision::Allowed(_))
        }
        Err(_) => false,
    }
}

/// Cycles through the images, one per iteration, so each figure is the cost of one image.
fn per_image(images: &[String], mut decide: impl FnMut(&str) -> bool) -> impl FnMut() -> bool {
    let mut next = 0;
    move || {
        next += 1;
        if next == images.len() {
            next = 0;
        }
        decide(black_box(&images[next]))
    }
}

fn bench_decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision per image");
    for size in SIZES {
        let policy = Policy::parse(&policy_text(size)).expect("valid policy");
        let images = images(size);
        group.bench_with_input(BenchmarkId::new("registry-gate", size), &size, |b, _| {
            b.iter(per_image(&images, |image| decide(&policy, image)))
        });
        let prefixes = PrefixScan::new(size);
        group.bench_with_input(BenchmarkId::new("prefix-scan", size), &size, |b, _| {
            b.iter(per_image(&images, |image| prefixes.allows(image)))
        });
        if size <= REGEX_MAX_SIZE {
            let regexes = RegexScan::new(size);
            group.bench_with_input(BenchmarkId::new("regex-per-entry", size), &size, |b, _| {
                b.iter(per_image(&images, |image| regexes.allows(image)))
            });
        }
    }
    group.finish();
}

/// The same policy written as JSON, as tools that generate large policies write it.
fn policy_json(size: usize) -> String {
    let mut entries = vec![
        r#"{"name": "hub", "type": "Public", "url": "docker.io/library"}"#.to_owned(),
        r#"{"name": "acr", "type": "ACR", "url": "*.azurecr.io", "pullSecret": "acr"}"#.to_owned(),
    ];
    for i in 0..size.saturating_sub(2) {
        let (kind, url) = entry_url(i);
        entries
            .push(format!(r#"{{"name": "r{i}", "type": "{kind}", "url": "{url}", "pullSecret": "s{i}"}}"#));
    }
    format!(
        "{{\"apiVersion\": \"registry-gate.io/v1\", \"kind\": \"RegistryPolicy\",\n\"registries\": [\n{}\n],\n\"deny\": [{{\"url\": \"docker.io/library/busybox\"}}]}}\n",
        entries.join(",\n")
    )
}

/// From text to a policy ready to serve. The result is dropped outside the timing: a reload
/// drops the old policy after the new one serves.
fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy load (parse, validate, compile)");
    group.sample_size(20);
    for size in [1_000, 10_000] {
        let json = policy_json(size);
        assert!(registry_gate::yaml::parse_json_document(&json).is_some(), "read by the JSON reader");
        for (format, text) in [("yaml", policy_text(size)), ("json", json)] {
            group.bench_with_input(BenchmarkId::new(format, size), &text, |b, text| {
                b.iter_with_large_drop(|| Policy::parse(black_box(text)).expect("valid policy"))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench_decisions, bench_compile
}
criterion_main!(benches);
