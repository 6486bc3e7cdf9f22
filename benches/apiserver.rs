//! What registry-gate costs a Pod creation, measured through a real kube-apiserver v1.37 + etcd
//! (tests/controlplane) rather than against the webhook alone.
//!
//! Pod creations with `dryRun=All` (admission runs in full, nothing is stored) are sent at a fixed
//! rate, open loop, from a few concurrent HTTPS clients using the admin token and the apiserver's
//! CA. Latency is measured from each request's scheduled start, so a stall shows as latency
//! rather than as fewer requests. Two Pods (one with images from registries with pull secrets,
//! one with public images only) under four configurations, one after the other, in one run:
//!
//! 1. no admission webhooks or policies (the apiserver's own admission chain);
//! 2. registry-gate's webhook configurations from manifests/base (validating + mutating), pointed
//!    at the real binary on loopback;
//! 3. the same, with the matchCondition `registry-gate controller` keeps on the mutating webhook
//!    (docs/match-condition.md), which skips Pods that need no pull secret;
//! 4. a ValidatingAdmissionPolicy doing the registry check in CEL with `startsWith` instead (which
//!    checks prefixes as strings, cannot add pull secrets, and knows nothing of short names).
//!
//! The apiserver's `/metrics` is scraped around each run for the admission histograms
//! (`apiserver_admission_webhook_admission_duration_seconds` per webhook, and the whole validate
//! and admit steps). Results are printed as Markdown tables.
//!
//! ```sh
//! cargo bench --bench apiserver
//! BENCH_RATE=100 BENCH_SECONDS=20 BENCH_CLIENTS=8 cargo bench --bench apiserver
//! ```
//!
//! Needs `[[bench]] name = "apiserver" harness = false` in Cargo.toml. Without `--bench` (as under
//! `cargo test --benches`) it does nothing, so test runs do not start a control plane.

// Until Cargo.toml declares this bench with `harness = false`, Cargo discovers it as a libtest
// bench, where `main` is unused; keep that build warning-free.
#![cfg_attr(test, allow(dead_code, unused_imports))]

#[allow(dead_code)]
#[path = "../tests/e2e/apiserver.rs"]
mod apiserver;
#[allow(dead_code)]
#[path = "../tests/e2e/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../tests/e2e/gate.rs"]
mod gate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use apiserver::{Blocking, Client, Endpoint};
use cluster::{ControlPlane, control_plane, root, scratch, wait_for};
use gate::{Gate, Registration, free_port, wait_until_enforced, webhook_configurations};
use registry_gate::policy::{Policy, match_condition};

const NS: &str = "bench";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/apiserver.rs starts a control plane; run it with `cargo bench --bench apiserver`");
        return;
    }
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The load of one run.
#[derive(Clone, Copy)]
struct Load {
    rate: f64,
    duration: Duration,
    warmup: Duration,
    clients: usize,
}

/// The Pod every request creates: images from all three registered registries, so that
/// registry-gate checks three images and adds two pull secrets.
fn bench_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "bench", "namespace": NS, "labels": { "app": "bench" } },
        "spec": {
            "initContainers": [{ "name": "init", "image": "registry.corp.example:5000/team/migrate:2" }],
            "containers": [
                { "name": "api", "image": "ghcr.io/acme/api:1.2" },
                { "name": "proxy", "image": "docker.io/library/nginx:1.27" }
            ]
        }
    })
}

/// A Pod whose images need no pull secret (Docker Hub's official images, registered without
/// one): with the controller's match condition, the API server does not call the mutating
/// webhook for it.
fn public_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "bench-public", "namespace": NS, "labels": { "app": "bench" } },
        "spec": {
            "initContainers": [{ "name": "init", "image": "docker.io/library/busybox:1.37" }],
            "containers": [
                { "name": "web", "image": "docker.io/library/nginx:1.27" },
                { "name": "cache", "image": "docker.io/library/redis:7.4" }
            ]
        }
    })
}

fn unregistered_pod() -> Value {
    let mut pod = bench_pod();
    pod["metadata"]["name"] = json!("bench-unregistered");
    pod["spec"]["containers"][0]["image"] = json!("quay.io/evil/miner:1");
    pod
}

/// A registry check in CEL: every image starts with a registered prefix.
fn validating_admission_policy() -> Value {
    let prefixes = "['docker.io/library/', 'ghcr.io/acme/', 'registry.corp.example:5000/']";
    let all = |list: &str| {
        format!(
            "(!has(object.spec.{list}) || object.spec.{list}.all(c, {prefixes}.exists(p, c.image.startsWith(p))))"
        )
    };
    let expression = [all("containers"), all("initContainers"), all("ephemeralContainers")].join(" && ");
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": { "name": "registry-prefixes" },
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [{
                            "apiGroups": [""], "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["pods", "pods/ephemeralcontainers"]
                        }]
                    },
                    "validations": [{
                        "expression": expression,
                        "message": "every image must come from a registered registry"
                    }]
                }
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": { "name": "registry-prefixes" },
                "spec": {
                    "policyName": "registry-prefixes",
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {
                            "matchExpressions": [{
                                "key": "kubernetes.io/metadata.name",
                                "operator": "NotIn",
                                "values": ["kube-system", "registry-gate"]
                            }]
                        }
                    }
                }
            }
        ]
    })
}

/// One request's outcome.
struct Sample {
    /// From its scheduled start to the end of the response.
    latency: Duration,
    ok: bool,
}

/// Sends `load.rate` Pod creations per second for `duration`, spread over `load.clients`
/// connections; each request is due at a fixed time and taken by whichever client is free.
async fn drive(
    endpoint: &Endpoint,
    load: Load,
    duration: Duration,
    pod: &Value,
) -> anyhow::Result<Vec<Sample>> {
    let body = Arc::new(serde_json::to_vec(pod)?);
    let path = Arc::new(format!("/api/v1/namespaces/{NS}/pods?dryRun=All&fieldManager=registry-gate-bench"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Instant>(100_000);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..load.clients {
        let (rx, body, path) = (rx.clone(), body.clone(), path.clone());
        let mut client = Client::new(endpoint.clone());
        // Connect before the clock starts.
        client.request("GET", "/readyz", None).await?;
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let due = { rx.lock().await.recv().await };
                let Some(due) = due else { break };
                let ok = match client.request("POST", &path, Some(&body)).await {
                    Ok(reply) => reply.status == 201,
                    Err(_) => false,
                };
                samples.push(Sample { latency: due.elapsed(), ok });
            }
            samples
        }));
    }
    let count = (load.rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / load.rate);
    let start = Instant::now() + Duration::from_millis(50);
    for i in 0..count {
        let due = start + interval * u32::try_from(i)?;
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        tx.send(due).await?;
    }
    drop(tx);
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await?);
    }
    Ok(samples)
}

/// Percentiles of a run.
struct Summary {
    requests: usize,
    errors: usize,
    achieved_rate: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn summarize(samples: &[Sample], elapsed: Duration) -> Summary {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    Summary {
        requests: samples.len(),
        errors: samples.iter().filter(|s| !s.ok).count(),
        achieved_rate: samples.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

// === Prometheus text ===

/// Cumulative histogram series: (metric, labels without `le`) -> buckets, sum, count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: BTreeMap<String, f64>,
    sum: f64,
    count: f64,
}

type Series = BTreeMap<(String, String), Histogram>;

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        labels.push((key.trim_start_matches(',').trim().to_owned(), after[..end].to_owned()));
        rest = &after[end + 1..];
    }
    labels
}

/// The histograms whose name is one of `names`, from a Prometheus text exposition.
fn histograms(text: &str, names: &[&str]) -> Series {
    let mut series = Series::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        let Some((base, part)) = names.iter().find_map(|base| {
            let suffix = name.strip_prefix(base)?;
            matches!(suffix, "_bucket" | "_sum" | "_count").then_some((*base, suffix))
        }) else {
            continue;
        };
        let labels = parse_labels(labels);
        let le = labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.clone());
        let key: Vec<String> =
            labels.into_iter().filter(|(k, _)| k != "le").map(|(k, v)| format!("{k}={v}")).collect();
        let entry = series.entry((base.to_owned(), key.join(","))).or_default();
        match (part, le) {
            ("_bucket", Some(le)) => {
                entry.buckets.insert(le, value);
            }
            ("_sum", _) => entry.sum = value,
            ("_count", _) => entry.count = value,
            _ => {}
        }
    }
    series
}

/// `after - before`, for the series that grew.
fn delta(before: &Series, after: &Series) -> Series {
    let mut out = Series::new();
    for (key, a) in after {
        let b = before.get(key).cloned().unwrap_or_default();
        if a.count - b.count < 0.5 {
            continue;
        }
        let buckets = a
            .buckets
            .iter()
            .map(|(le, v)| (le.clone(), v - b.buckets.get(le).copied().unwrap_or(0.0)))
            .collect();
        out.insert(key.clone(), Histogram { buckets, sum: a.sum - b.sum, count: a.count - b.count });
    }
    out
}

/// The upper bound of the bucket holding quantile `q`: the quantile is at most this (`+Inf` when
/// it lies beyond the last bound).
fn quantile_bound(h: &Histogram, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = h
        .buckets
        .iter()
        .map(|(le, v)| (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) }, *v))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets.into_iter().find(|(_, cumulative)| *cumulative >= q * total).map_or(f64::NAN, |b| b.0)
}

const APISERVER_HISTOGRAMS: [&str; 3] = [
    "apiserver_admission_webhook_admission_duration_seconds",
    "apiserver_admission_step_admission_duration_seconds",
    "apiserver_validating_admission_policy_check_duration_seconds",
];

fn scrape(api: &mut Blocking) -> anyhow::Result<Series> {
    let reply = api.request("GET", "/metrics", None)?;
    ensure!(reply.status == 200, "/metrics answered {}", reply.status);
    Ok(histograms(&reply.text(), &APISERVER_HISTOGRAMS))
}

// === The run ===

struct Measured {
    name: String,
    summary: Summary,
    admission: Series,
    server_side: Option<ServerSide>,
}

fn measure(
    name: String,
    pod: &Value,
    runtime: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    api: &mut Blocking,
    load: Load,
    gate: Option<&Gate>,
) -> anyhow::Result<Measured> {
    runtime.block_on(drive(endpoint, load, load.warmup, pod))?;
    let before = scrape(api)?;
    let gate_before = gate.map(gate_counters).transpose()?;
    let started = Instant::now();
    let samples = runtime.block_on(drive(endpoint, load, load.duration, pod))?;
    let summary = summarize(&samples, started.elapsed());
    let admission = delta(&before, &scrape(api)?);
    let server_side = match (gate, gate_before) {
        (Some(gate), Some(before)) => {
            let after = gate_counters(gate)?;
            let reviews = after.reviews - before.reviews;
            let connections = after
                .connections
                .iter()
                .map(|(protocol, n)| (protocol.clone(), n - before.connections.get(protocol).unwrap_or(&0.0)))
                .collect();
            let mean = (after.seconds - before.seconds) / reviews.max(1.0);
            Some(ServerSide { reviews, mean, connections, connections_since_start: after.connections })
        }
        _ => None,
    };
    println!(
        "{name}: {} requests, {} errors, p50 {:.1} ms, p99 {:.1} ms",
        summary.requests,
        summary.errors,
        ms(summary.p50),
        ms(summary.p99)
    );
    Ok(Measured { name, summary, admission, server_side })
}

/// registry-gate's own counters: the sum and count of registry_gate_admission_duration_seconds
/// and the connections it has accepted, by protocol.
struct GateCounters {
    seconds: f64,
    reviews: f64,
    connections: BTreeMap<String, f64>,
}

fn gate_counters(gate: &Gate) -> anyhow::Result<GateCounters> {
    let (_, text) = gate.operations_get("/metrics")?;
    let series = histograms(&text, &["registry_gate_admission_duration_seconds"]);
    let (seconds, reviews) = series.values().fold((0.0, 0.0), |(s, c), h| (s + h.sum, c + h.count));
    let connections = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("registry_gate_connections_opened_total{protocol=\"")?;
            let (protocol, value) = rest.split_once("\"} ")?;
            Some((protocol.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    Ok(GateCounters { seconds, reviews, connections })
}

/// registry-gate's side of one measured run.
struct ServerSide {
    reviews: f64,
    /// Mean seconds per review.
    mean: f64,
    /// Connections it accepted during the run, by protocol.
    connections: BTreeMap<String, f64>,
    /// And since it started (warm-up and readiness checks included).
    connections_since_start: BTreeMap<String, f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits until the API server has the match condition: a dry run of `pod` (which needs no pull
/// secret) no longer reaches registry-gate's mutating webhook. The validating webhook still sees
/// it, so one review is counted instead of two.
fn wait_until_skipped(api: &mut Blocking, gate: &Gate, pod: &Value) -> anyhow::Result<()> {
    wait_for("the match condition", Duration::from_secs(20), Duration::from_millis(50), |last| {
        let before = gate_counters(gate).ok()?.reviews;
        api.dry_run_pod(NS, pod).ok()?;
        let reviews = gate_counters(gate).ok()?.reviews - before;
        *last = format!("{reviews} reviews for one Pod");
        (reviews == 1.0).then_some(())
    })
}

/// Waits until a Pod with an unregistered image is admitted again (nothing checks images).
fn wait_unchecked(api: &mut Blocking) -> anyhow::Result<()> {
    let pod = unregistered_pod();
    wait_for("admission without image checks", Duration::from_secs(20), Duration::from_millis(50), |last| {
        match api.dry_run_pod(NS, &pod) {
            Ok((decision, _)) => {
                *last = format!("{decision:?}");
                decision.is_admitted().then_some(())
            }
            Err(e) => {
                *last = e.to_string();
                None
            }
        }
    })
}

fn run() -> anyhow::Result<()> {
    let load = Load {
        rate: env_or("BENCH_RATE", 50.0),
        duration: Duration::from_secs(env_or("BENCH_SECONDS", 10)),
        warmup: Duration::from_secs(env_or("BENCH_WARMUP_SECONDS", 2)),
        clients: env_or("BENCH_CLIENTS", 4),
    };
    let cp: &ControlPlane = control_plane();
    for ns in ["registry-gate", NS] {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &object.to_string()).ok()?;
    }
    let endpoint = Endpoint::new(&cp.url, &std::fs::read(&cp.ca)?, &cp.token)?;
    let mut api = Blocking::new(endpoint.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = Vec::new();
    let pods = [("bench Pod", bench_pod()), ("public Pod", public_pod())];

    // 1. Nothing registered.
    wait_unchecked(&mut api)?;
    for (pod_name, pod) in &pods {
        results.push(measure(
            format!("no webhooks, {pod_name}"),
            pod,
            &runtime,
            &endpoint,
            &mut api,
            load,
            None,
        )?);
    }

    // 2. registry-gate, its webhook configurations as manifests/base has them.
    let dir = scratch("bench");
    gate::write_certificates(dir.path())?;
    let port = free_port();
    let policy_file = root().join("tests/e2e/policy.yaml");
    let policy_arg = policy_file.to_str().context("UTF-8 path")?;
    let gate = Gate::start(dir.path(), port, free_port(), &["--policy", policy_arg], "registry-gate.log")?;
    let ca = std::fs::read(dir.path().join("ca.crt"))?;
    let mut configurations = webhook_configurations(cp, port, &ca, |_| true)?;
    let registration = Registration::apply(cp, &configurations)?;
    wait_until_enforced(cp, NS)?;
    for (_, pod) in &pods {
        let (decision, _) = api.dry_run_pod(NS, pod)?;
        ensure!(decision.is_admitted(), "registry-gate refuses a benchmark Pod: {decision:?}");
    }
    for (pod_name, pod) in &pods {
        let name = format!("registry-gate webhooks, {pod_name}");
        results.push(measure(name, pod, &runtime, &endpoint, &mut api, load, Some(&gate))?);
    }

    // 3. The same, with the match condition the controller keeps on the mutating webhook.
    let policy = Policy::parse(&std::fs::read_to_string(&policy_file)?)?;
    let expression = match_condition::needs_pull_secret(&policy).context("the policy has no condition")?;
    let mutating = configurations
        .iter_mut()
        .find(|c| c["kind"] == "MutatingWebhookConfiguration")
        .context("no MutatingWebhookConfiguration")?;
    mutating["webhooks"][0]["matchConditions"]
        .as_array_mut()
        .context("no matchConditions")?
        .push(json!({ "name": match_condition::NAME, "expression": expression }));
    // Applied over the first (server-side apply); the first guard's delete then finds nothing.
    let with_condition = Registration::apply(cp, &configurations)?;
    wait_until_skipped(&mut api, &gate, &pods[1].1)?;
    for (pod_name, pod) in &pods {
        let name = format!("registry-gate webhooks + match condition, {pod_name}");
        results.push(measure(name, pod, &runtime, &endpoint, &mut api, load, Some(&gate))?);
    }
    with_condition.remove()?;
    drop(with_condition);
    drop(registration);
    drop(gate);
    wait_unchecked(&mut api)?;

    // 4. A ValidatingAdmissionPolicy instead.
    cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &validating_admission_policy().to_string())
        .ok()?;
    let pods_path = format!("/api/v1/namespaces/{NS}/pods?dryRun=All");
    let refused = serde_json::to_vec(&unregistered_pod())?;
    wait_for("the ValidatingAdmissionPolicy", Duration::from_secs(20), Duration::from_millis(50), |last| {
        let reply = api.request("POST", &pods_path, Some(&refused));
        *last =
            reply.as_ref().map(|r| format!("{} {}", r.status, r.text())).unwrap_or_else(|e| e.to_string());
        reply.ok().filter(|r| r.status >= 400 && r.text().contains("ValidatingAdmissionPolicy")).map(drop)
    })?;
    for (pod_name, pod) in &pods {
        let reply = api.request("POST", &pods_path, Some(&serde_json::to_vec(pod)?))?;
        ensure!(
            reply.status == 201,
            "the ValidatingAdmissionPolicy refuses the {pod_name}: {}",
            reply.text()
        );
        let name = format!("ValidatingAdmissionPolicy (CEL startsWith), {pod_name}");
        results.push(measure(name, pod, &runtime, &endpoint, &mut api, load, None)?);
    }
    cp.kubectl(&[
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        "registry-prefixes",
    ])
    .ok()?;

    print_tables(&results, load);
    Ok(())
}

fn print_tables(results: &[Measured], load: Load) {
    println!(
        "\n### Pod creation (dryRun=All) through kube-apiserver v1.37, {} req/s for {} s, {} clients\n",
        load.rate,
        load.duration.as_secs(),
        load.clients
    );
    println!("| configuration | requests | errors | achieved req/s | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        let s = &r.summary;
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.name,
            s.requests,
            s.errors,
            s.achieved_rate,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max)
        );
    }
    println!("\n### The apiserver's own admission histograms over the measured runs (Pod CREATE)\n");
    println!("| configuration | histogram | labels | count | mean ms | p50 at most, ms | p99 at most, ms |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    for r in results {
        for ((metric, labels), h) in &r.admission {
            if !labels.contains("operation=CREATE") && metric != APISERVER_HISTOGRAMS[2] {
                continue;
            }
            let short = metric.trim_start_matches("apiserver_").trim_end_matches("_seconds");
            println!(
                "| {} | {short} | {labels} | {} | {:.3} | {:.3} | {:.3} |",
                r.name,
                h.count,
                h.sum / h.count * 1000.0,
                quantile_bound(h, 0.5) * 1000.0,
                quantile_bound(h, 0.99) * 1000.0
            );
        }
        if let Some(side) = &r.server_side {
            println!(
                "| {} | registry-gate's own registry_gate_admission_duration | (all reviews) | {} | {:.3} | | |",
                r.name,
                side.reviews,
                side.mean * 1000.0
            );
        }
    }
    println!(
        "\nThe apiserver's histograms give exact means (sum/count) but quantiles only as bucket bounds \
         (5 ms is the finest bound of the admission histograms). In v1.37 \
         apiserver_validating_admission_policy_check_duration_seconds is recorded for denials only, so for \
         admitted Pods the ValidatingAdmissionPolicy's cost shows in the `validate` admission step."
    );
    for r in results {
        if let Some(side) = &r.server_side {
            let list = |counts: &BTreeMap<String, f64>| {
                let opened: Vec<String> = counts.iter().map(|(p, n)| format!("{n} over {p}")).collect();
                if opened.is_empty() { "none".to_owned() } else { opened.join(", ") }
            };
            println!(
                "\nConnections the API server opened to registry-gate ({}, registry_gate_connections_opened_total): \
                 {} during the measured run of {} reviews; {} since registry-gate started.",
                r.name,
                list(&side.connections),
                side.reviews,
                list(&side.connections_since_start)
            );
        }
    }
}
