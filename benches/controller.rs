//! What `registry-gate controller` (pull-secret sync) does against a real kube-apiserver v1.37 +
//! etcd (tests/controlplane), at a thousand namespaces and more.
//!
//! The policy has one registry with a `pullSecret` for every namespace (kube-system exempt), and
//! its source Secret lives in `registry-gate`. The bench keeps its own watch on the managed copies
//! (label `app.kubernetes.io/managed-by=registry-gate`) and notes when each namespace's copy first
//! held each content: timings come from that watch, not from polling, so the bench adds no reads
//! while the controller works. The apiserver's own `apiserver_request_total` and
//! `apiserver_request_duration_seconds` are scraped around each phase, so request counts and
//! times are the server's and include every client. Phases, in order:
//!
//! 1. N namespaces created up front, then the controller started: time until every copy exists;
//! 2. new namespaces created one by one: creation to copy present, p50/p99/max;
//! 3. the source rotated: time until every copy holds the new content, the write rate, and the
//!    API requests per copy; then the controller is restarted with a higher write rate and a
//!    30 s resync (what a restart costs), and the source rotated again;
//! 4. idle: nothing changes for a while; Secret writes and reads by 5 s interval, across at
//!    least one full resync.
//!
//! The controller's memory (VmHWM, VmRSS) and CPU time are read from /proc after each phase.
//! Results are printed as Markdown tables.
//!
//! ```sh
//! cargo bench --bench controller
//! BENCH_NAMESPACES=1000 BENCH_NEW_NAMESPACES=100 BENCH_WRITES_PER_SECOND=100 \
//!   BENCH_FAST_WRITES_PER_SECOND=500 BENCH_IDLE_SECONDS=60 cargo bench --bench controller
//! ```
//!
//! Without `--bench` (as under `cargo test --benches`) it does nothing, so test runs do not start
//! a control plane.

#[allow(dead_code)]
#[path = "../tests/e2e/apiserver.rs"]
mod apiserver;
#[allow(dead_code)]
#[path = "../tests/e2e/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../tests/e2e/gate.rs"]
mod gate;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use base64::Engine;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use apiserver::{Blocking, Client, Endpoint};
use cluster::{ControlPlane, control_plane, scratch, tail, wait_for};
use gate::{binary, die_with_this_thread, free_port};

const GATE_NS: &str = "registry-gate";
const SOURCE: &str = "ghcr-acme";
const REGISTRY: &str = "team-ghcr";
const MANAGED: &str = "app.kubernetes.io/managed-by=registry-gate";
const DATA_KEY: &str = ".dockerconfigjson";
const POLICY: &str = "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nexemptNamespaces: [kube-system]\nregistries:\n  - {name: team-ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}\n";
const COMMAND: &str = "cargo bench --bench controller";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/controller.rs starts a control plane; run it with `{COMMAND}`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Settings {
    namespaces: usize,
    new_namespaces: usize,
    spacing: Duration,
    rate: u32,
    fast_rate: u32,
    /// The first controller's resync: long enough that no resync falls into phases 1-3.
    resync: u64,
    idle_resync: u64,
    idle: Duration,
    connections: usize,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            namespaces: env_or("BENCH_NAMESPACES", 1000),
            new_namespaces: env_or("BENCH_NEW_NAMESPACES", 100),
            spacing: Duration::from_millis(env_or("BENCH_SPACING_MS", 50)),
            rate: env_or("BENCH_WRITES_PER_SECOND", 100),
            fast_rate: env_or("BENCH_FAST_WRITES_PER_SECOND", 500),
            resync: env_or("BENCH_RESYNC_SECONDS", 600),
            idle_resync: env_or("BENCH_IDLE_RESYNC_SECONDS", 30),
            idle: Duration::from_secs(env_or("BENCH_IDLE_SECONDS", 60)),
            connections: env_or("BENCH_CONNECTIONS", 8),
        }
    }
}

/// A dockerconfigjson source Secret for ghcr.io (as tests/e2e/sync.rs makes them), and the bytes
/// its copies must hold.
fn source_secret(password: &str) -> (Value, Vec<u8>) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("robot:{password}"));
    let config =
        json!({"auths": {"ghcr.io": {"username": "robot", "password": password, "auth": auth}}}).to_string();
    let object = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": SOURCE, "namespace": GATE_NS},
        "data": {DATA_KEY: base64::engine::general_purpose::STANDARD.encode(&config)}
    });
    (object, config.into_bytes())
}

fn namespace(name: &str) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).to_string().into_bytes()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

// === The bench's own view of the copies ===

/// A copy's content, and when the watch first saw it hold that content.
struct Held {
    data: Vec<u8>,
    since: Instant,
}

type Copies = Arc<Mutex<HashMap<String, Held>>>;

/// Follows the managed copies, by namespace, until the runtime stops.
async fn follow(client: kube::Client, copies: Copies) {
    let stream = watcher(Api::<Secret>::all(client), watcher::Config::default().labels(MANAGED));
    stream
        .for_each(|event| {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                    let data = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(DATA_KEY))
                        .map(|v| v.0.clone())
                        .unwrap_or_default();
                    if let (Some(ns), Ok(mut copies)) = (secret.namespace(), copies.lock()) {
                        let changed = copies.get(&ns).is_none_or(|held| held.data != data);
                        if changed {
                            copies.insert(ns, Held { data, since: now });
                        }
                    }
                }
                Ok(watcher::Event::Delete(secret)) => {
                    if let (Some(ns), Ok(mut copies)) = (secret.namespace(), copies.lock()) {
                        copies.remove(&ns);
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("the bench's watch on the copies: {e}"),
            }
            async {}
        })
        .await;
}

/// When each copy holding `data` first held it, for the namespaces `wanted` accepts.
fn holding(copies: &Copies, data: &[u8], wanted: impl Fn(&str) -> bool) -> HashMap<String, Instant> {
    let copies = copies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    copies
        .iter()
        .filter(|(ns, held)| held.data == data && wanted(ns))
        .map(|(ns, held)| (ns.clone(), held.since))
        .collect()
}

/// Waits until `count` copies hold `data`.
fn wait_holding(
    copies: &Copies,
    data: &[u8],
    count: usize,
    timeout: Duration,
) -> anyhow::Result<HashMap<String, Instant>> {
    wait_for(&format!("{count} copies to hold the content"), timeout, Duration::from_millis(10), |last| {
        let seen = holding(copies, data, |_| true);
        *last = format!("{} of {count}", seen.len());
        (seen.len() >= count).then_some(seen)
    })
}

/// Earliest and latest of a set of instants.
fn span(times: &HashMap<String, Instant>) -> Option<(Instant, Instant)> {
    Some((*times.values().min()?, *times.values().max()?))
}

// === The controller process ===

/// A running `registry-gate controller`, killed when dropped.
struct Controller {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log: PathBuf,
    spawned: Instant,
    ready_after: Duration,
}

impl Controller {
    fn start(cp: &ControlPlane, dir: &Path, rate: u32, resync: u64, log_name: &str) -> anyhow::Result<Self> {
        let log = dir.join(log_name);
        let out = File::create(&log)?;
        let port = free_port();
        let spawned = Instant::now();
        let child = die_with_this_thread()
            .arg(binary())
            .args(["controller", "--namespace", GATE_NS, "--policy"])
            .arg(dir.join("policy.yaml"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--resync-seconds", &resync.to_string()])
            .args(["--writes-per-second", &rate.to_string()])
            // The sync alone: the audit has its own bench (benches/audit.rs).
            .args(["--audit-interval-seconds", "0"])
            .args(["--log-format", "json"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start registry-gate controller")?;
        let pid = child.id();
        let mut controller =
            Controller { child: Some(child), pid, port, log, spawned, ready_after: Duration::ZERO };
        wait_for("the controller to be ready", Duration::from_secs(30), Duration::from_millis(20), |last| {
            if let Some(status) = controller.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *last = format!("exited {status}");
                return Some(Err(()));
            }
            match controller.get("/readyz") {
                Ok((200, _)) => Some(Ok(())),
                Ok((status, body)) => {
                    *last = format!("{status} {}", body.trim());
                    None
                }
                Err(e) => {
                    *last = e.to_string();
                    None
                }
            }
        })?
        .map_err(|()| anyhow::anyhow!("the controller exited; its log:\n{}", controller.log_tail(30)))?;
        controller.ready_after = spawned.elapsed();
        Ok(controller)
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not HTTP")?;
        Ok((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    /// The sum of the controller's samples of `metric` whose labels include `labels`.
    fn metric(&self, metric: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let (status, text) = self.get("/metrics")?;
        ensure!(status == 200, "the controller's /metrics answered {status}");
        Ok(samples(&text, metric)
            .into_iter()
            .filter(|(have, _)| labels.iter().all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, value)| value)
            .sum())
    }

    fn writes(&self) -> anyhow::Result<f64> {
        self.metric("registry_gate_pull_secret_writes_total", &[])
    }

    fn synced(&self) -> anyhow::Result<f64> {
        self.metric("registry_gate_pull_secret_copies", &[("registry", REGISTRY), ("state", "synced")])
    }

    /// (VmHWM, VmRSS) in KiB.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .with_context(|| format!("{name} missing from /proc/{}/status", self.pid))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// CPU time so far, all threads (utime + stime of /proc/PID/stat).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name, which may hold spaces; utime and stime are fields 14 and 15.
        let fields: Vec<&str> =
            text.rsplit_once(')').context("/proc/PID/stat")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11..13].iter().filter_map(|f| f.parse::<u64>().ok()).sum();
        Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    /// Log lines that are warnings or errors, for the report.
    fn complaints(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// === Prometheus text ===

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        labels.insert(key.trim_start_matches(',').trim().to_owned(), after[..end].to_owned());
        rest = &after[end + 1..];
    }
    labels
}

/// The samples of one metric: labels and value.
fn samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        if name == metric {
            out.push((parse_labels(labels), value));
        }
    }
    out
}

/// `apiserver_request_total` by "VERB resource[/subresource] code".
type Requests = BTreeMap<String, f64>;

/// What the apiserver's /metrics says about requests: counts, and the (sum, count) of
/// `apiserver_request_duration_seconds` by "VERB resource".
#[derive(Default)]
struct Scrape {
    requests: Requests,
    durations: BTreeMap<String, (f64, f64)>,
}

fn resource(labels: &BTreeMap<String, String>) -> String {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or_default();
    match (get("resource"), get("subresource")) {
        ("", _) => "(non-resource)".to_owned(),
        (r, "") => r.to_owned(),
        (r, s) => format!("{r}/{s}"),
    }
}

fn scrape(api: &mut Blocking) -> anyhow::Result<Scrape> {
    let reply = api.request("GET", "/metrics", None)?;
    ensure!(reply.status == 200, "the apiserver's /metrics answered {}", reply.status);
    let text = reply.text();
    let mut out = Scrape::default();
    for (labels, value) in samples(&text, "apiserver_request_total") {
        let key = format!(
            "{} {} {}",
            labels.get("verb").cloned().unwrap_or_default(),
            resource(&labels),
            labels.get("code").cloned().unwrap_or_default()
        );
        *out.requests.entry(key).or_default() += value;
    }
    for (part, index) in [("_sum", 0), ("_count", 1)] {
        for (labels, value) in samples(&text, &format!("apiserver_request_duration_seconds{part}")) {
            let key = format!("{} {}", labels.get("verb").cloned().unwrap_or_default(), resource(&labels));
            let entry = out.durations.entry(key).or_default();
            if index == 0 {
                entry.0 += value;
            } else {
                entry.1 += value;
            }
        }
    }
    Ok(out)
}

fn delta(before: &Scrape, after: &Scrape) -> Scrape {
    let requests = after
        .requests
        .iter()
        .map(|(k, v)| (k.clone(), v - before.requests.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v >= 0.5)
        .collect();
    let durations = after
        .durations
        .iter()
        .map(|(k, (sum, count))| {
            let (sum0, count0) = before.durations.get(k).copied().unwrap_or_default();
            (k.clone(), (sum - sum0, count - count0))
        })
        .filter(|(_, (_, count))| *count >= 0.5)
        .collect();
    Scrape { requests, durations }
}

/// Secret requests of one kind in a delta: `verbs` on secrets, any code.
fn secret_requests(delta: &Requests, verbs: &[&str]) -> u64 {
    let sum: f64 = delta
        .iter()
        .filter(|(key, _)| {
            let mut parts = key.split(' ');
            let (verb, resource) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            resource == "secrets" && verbs.contains(&verb)
        })
        .map(|(_, v)| v)
        .sum();
    sum.round() as u64
}

/// Linux's USER_HZ, the unit of /proc/PID/stat's times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];

// === Phases ===

async fn create_namespaces(
    endpoint: &Endpoint,
    names: Arc<Vec<String>>,
    connections: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (names, next) = (names.clone(), next.clone());
        let mut client = Client::new(endpoint.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { return anyhow::Ok(()) };
                let reply = client.request("POST", "/api/v1/namespaces", Some(&namespace(name))).await?;
                ensure!(
                    reply.status == 201,
                    "creating namespace {name} answered {}: {}",
                    reply.status,
                    reply.text()
                );
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// One measured phase in which every copy came to hold new content.
struct Wave {
    name: String,
    rate: u32,
    copies: usize,
    /// From the trigger (controller spawned, source written) to the first and the last copy.
    first: Duration,
    all: Duration,
    controller_writes: f64,
    requests: Scrape,
    cpu: Duration,
}

impl Wave {
    fn observed_rate(&self) -> f64 {
        let spread = self.all.saturating_sub(self.first).as_secs_f64();
        if spread > 0.0 { (self.copies.saturating_sub(1)) as f64 / spread } else { f64::NAN }
    }
}

struct Memory {
    when: String,
    namespaces: usize,
    hwm_kib: u64,
    rss_kib: u64,
}

fn memory_row(controller: &Controller, when: &str, namespaces: usize) -> anyhow::Result<Memory> {
    let (hwm_kib, rss_kib) = controller.memory()?;
    Ok(Memory { when: when.to_owned(), namespaces, hwm_kib, rss_kib })
}

/// Waits until the controller has reconciled `count` namespaces to synced and its writes stopped
/// growing for a while (the reconciles its own writes trigger come right after them). Returns
/// when it first reported them all synced.
fn settle(controller: &Controller, count: usize) -> anyhow::Result<Instant> {
    let synced = wait_for(
        "the controller to report every copy synced",
        Duration::from_secs(60),
        Duration::from_millis(100),
        |last| {
            let synced = controller.synced().ok()?;
            *last = format!("synced {synced} of {count}");
            (synced as usize >= count).then(Instant::now)
        },
    )?;
    let mut writes = controller.writes()?;
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while quiet_since.elapsed() < Duration::from_secs(2) {
        ensure!(Instant::now() < deadline, "the controller kept writing: {writes} writes");
        std::thread::sleep(Duration::from_millis(200));
        let now = controller.writes()?;
        if now != writes {
            writes = now;
            quiet_since = Instant::now();
        }
    }
    Ok(synced)
}

fn rotate(api: &mut Blocking, source: &Value) -> anyhow::Result<()> {
    let path =
        format!("/api/v1/namespaces/{GATE_NS}/secrets/{SOURCE}?fieldManager=registry-gate-bench&force=true");
    let reply =
        api.request_as("PATCH", &path, "application/apply-patch+yaml", Some(&serde_json::to_vec(source)?))?;
    ensure!(
        (200..300).contains(&reply.status),
        "rotating the source answered {}: {}",
        reply.status,
        reply.text()
    );
    Ok(())
}

/// Rotates the source and measures until every copy holds the new content.
fn rotation(
    name: &str,
    api: &mut Blocking,
    copies: &Copies,
    controller: &Controller,
    password: &str,
    total: usize,
    rate: u32,
) -> anyhow::Result<Wave> {
    let (source, data) = source_secret(password);
    let before = scrape(api)?;
    let (writes_before, cpu_before) = (controller.writes()?, controller.cpu()?);
    let started = Instant::now();
    rotate(api, &source)?;
    let seen = wait_holding(copies, &data, total, Duration::from_secs(120))?;
    let (first, last) = span(&seen).context("no copies")?;
    settle(controller, total)?;
    let after = scrape(api)?;
    let wave = Wave {
        name: name.to_owned(),
        rate,
        copies: seen.len(),
        first: first.saturating_duration_since(started),
        all: last.saturating_duration_since(started),
        controller_writes: controller.writes()? - writes_before,
        requests: delta(&before, &after),
        cpu: controller.cpu()?.saturating_sub(cpu_before),
    };
    println!(
        "{name}: {} copies current {:.0} ms after the rotation ({:.0} writes/s seen)",
        wave.copies,
        ms(wave.all),
        wave.observed_rate()
    );
    Ok(wave)
}

/// Secret counters at one moment of the idle phase.
struct IdlePoint {
    at: Duration,
    requests: Scrape,
    writes: f64,
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env();
    let started = Instant::now();
    let machine = machine();
    let loads = vec![("start".to_owned(), load_average())];
    let cp: &ControlPlane = control_plane();
    let dir = scratch("controller-bench");
    let result = measure(&settings, cp, dir.path(), started, machine, loads);
    if result.is_err() {
        // The controllers' logs are what tells why.
        let kept = dir.keep();
        eprintln!("the controllers' logs are kept in {}", kept.display());
    }
    result
}

fn measure(
    settings: &Settings,
    cp: &ControlPlane,
    dir: &Path,
    started: Instant,
    machine: String,
    mut loads: Vec<(String, String)>,
) -> anyhow::Result<()> {
    std::fs::write(dir.join("policy.yaml"), POLICY)?;
    let endpoint = Endpoint::new(&cp.url, &std::fs::read(&cp.ca)?, &cp.token)?;
    let mut api = Blocking::new(endpoint.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let reply = api.request("POST", "/api/v1/namespaces", Some(&namespace(GATE_NS)))?;
    ensure!(reply.status == 201, "creating {GATE_NS}: {} {}", reply.status, reply.text());
    let (source, source_data) = source_secret("FAKE-bench-password-1");
    let reply = api.request(
        "POST",
        &format!("/api/v1/namespaces/{GATE_NS}/secrets"),
        Some(&serde_json::to_vec(&source)?),
    )?;
    ensure!(reply.status == 201, "creating the source: {} {}", reply.status, reply.text());

    // Phase 1: namespaces first, then the controller.
    let names: Vec<String> = (0..settings.namespaces).map(|i| format!("bench-{i:05}")).collect();
    let creating = Instant::now();
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(180),
            create_namespaces(&endpoint, Arc::new(names.clone()), settings.connections),
        )
        .await
    })??;
    let creation = creating.elapsed();
    println!("{} namespaces created in {:.1} s", names.len(), creation.as_secs_f64());

    let copies: Copies = Arc::default();
    let kube_client = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?;
        anyhow::Ok(kube::Client::try_from(config)?)
    })?;
    runtime.spawn(follow(kube_client, copies.clone()));
    // The watch must have listed (nothing yet) before the controller writes, or early copies would
    // be timed by the list rather than by their event.
    std::thread::sleep(Duration::from_millis(500));

    // Every namespace but the exempt one and registry-gate's own gets a copy, the apiserver's
    // default, kube-public and kube-node-lease included.
    let reply = api.request("GET", "/api/v1/namespaces", None)?;
    ensure!(reply.status == 200, "listing namespaces: {}", reply.status);
    let listed: Value = serde_json::from_slice(&reply.body)?;
    let wanting: Vec<String> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ns| ns["metadata"]["name"].as_str())
        .filter(|ns| !matches!(*ns, "kube-system" | GATE_NS))
        .map(str::to_owned)
        .collect();
    let extra: Vec<String> = wanting.iter().filter(|ns| !ns.starts_with("bench-")).cloned().collect();
    let initial_copies = wanting.len();

    let before = scrape(&mut api)?;
    let controller = Controller::start(cp, dir, settings.rate, settings.resync, "controller-1.log")?;
    println!("controller ready {:.0} ms after spawn", ms(controller.ready_after));
    let seen = wait_holding(&copies, &source_data, initial_copies, Duration::from_secs(180))?;
    let (first, last) = span(&seen).context("no copies")?;
    settle(&controller, initial_copies)?;
    let initial = Wave {
        name: "initial sync (controller started after the namespaces)".to_owned(),
        rate: settings.rate,
        copies: seen.len(),
        first: first.saturating_duration_since(controller.spawned),
        all: last.saturating_duration_since(controller.spawned),
        controller_writes: controller.writes()?,
        requests: delta(&before, &scrape(&mut api)?),
        cpu: controller.cpu()?,
    };
    println!("initial sync: {} copies {:.0} ms after spawn", initial.copies, ms(initial.all));
    loads.push(("after phase 1".to_owned(), load_average()));
    let mut memory = vec![memory_row(&controller, "after the initial sync", initial_copies)?];

    // Phase 2: namespaces one by one.
    let mut created: Vec<(String, Instant, Instant)> = Vec::new();
    let cpu_before = controller.cpu()?;
    let pace_start = Instant::now();
    for i in 0..settings.new_namespaces {
        let due = pace_start + settings.spacing * u32::try_from(i)?;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let name = format!("bench-new-{i:04}");
        let sent = Instant::now();
        let reply = api.request("POST", "/api/v1/namespaces", Some(&namespace(&name)))?;
        ensure!(reply.status == 201, "creating {name}: {} {}", reply.status, reply.text());
        created.push((name, sent, Instant::now()));
    }
    let new_names: std::collections::HashSet<&str> = created.iter().map(|(n, _, _)| n.as_str()).collect();
    let arrived =
        wait_for("every new namespace's copy", Duration::from_secs(60), Duration::from_millis(10), |last| {
            let seen = holding(&copies, &source_data, |ns| new_names.contains(ns));
            *last = format!("{} of {}", seen.len(), new_names.len());
            (seen.len() == new_names.len()).then_some(seen)
        })?;
    let total = initial_copies + settings.new_namespaces;
    settle(&controller, total)?;
    let phase2_cpu = controller.cpu()?.saturating_sub(cpu_before);
    let mut from_sent = Vec::new();
    let mut from_created = Vec::new();
    for (name, sent, answered) in &created {
        let at = arrived[name];
        from_sent.push(at.saturating_duration_since(*sent));
        from_created.push(at.saturating_duration_since(*answered));
    }
    from_sent.sort_unstable();
    from_created.sort_unstable();
    println!("new namespaces: p99 {:.0} ms from POST sent", ms(quantile(&from_sent, 0.99)));
    loads.push(("after phase 2".to_owned(), load_average()));
    memory.push(memory_row(&controller, "after the new namespaces", total)?);

    // Phase 3: rotation at the configured rate.
    let mut waves = vec![initial];
    waves.push(rotation(
        "rotation",
        &mut api,
        &copies,
        &controller,
        "FAKE-bench-password-2",
        total,
        settings.rate,
    )?);
    loads.push(("after rotation 1".to_owned(), load_average()));
    memory.push(memory_row(&controller, "after rotation 1", total)?);
    let complaints_1 = controller.complaints();
    drop(controller);

    // A restart with the faster rate and the short resync; then the same rotation again.
    let (_, current) = source_secret("FAKE-bench-password-2");
    let before = scrape(&mut api)?;
    let controller =
        Controller::start(cp, dir, settings.fast_rate, settings.idle_resync, "controller-2.log")?;
    let synced = settle(&controller, total)?;
    let restart = Wave {
        name: "restart (nothing to change; `all` = every namespace reported synced)".to_owned(),
        rate: settings.fast_rate,
        copies: holding(&copies, &current, |_| true).len(),
        first: controller.ready_after,
        all: synced.saturating_duration_since(controller.spawned),
        controller_writes: controller.writes()?,
        requests: delta(&before, &scrape(&mut api)?),
        cpu: controller.cpu()?,
    };
    waves.push(restart);
    memory.push(memory_row(&controller, "after a restart", total)?);
    waves.push(rotation(
        "rotation (faster rate)",
        &mut api,
        &copies,
        &controller,
        "FAKE-bench-password-3",
        total,
        settings.fast_rate,
    )?);
    loads.push(("after rotation 2".to_owned(), load_average()));
    memory.push(memory_row(&controller, "after rotation 2", total)?);

    // Phase 4: idle.
    let idle_start = Instant::now();
    let cpu_before = controller.cpu()?;
    let mut points =
        vec![IdlePoint { at: Duration::ZERO, requests: scrape(&mut api)?, writes: controller.writes()? }];
    let step = Duration::from_secs(5);
    while idle_start.elapsed() < settings.idle {
        let due = step * u32::try_from(points.len())?;
        std::thread::sleep(due.min(settings.idle).saturating_sub(idle_start.elapsed()));
        points.push(IdlePoint {
            at: idle_start.elapsed(),
            requests: scrape(&mut api)?,
            writes: controller.writes()?,
        });
    }
    let idle_cpu = controller.cpu()?.saturating_sub(cpu_before);
    loads.push(("after idle".to_owned(), load_average()));
    memory.push(memory_row(&controller, "after idle", total)?);
    let (_, final_data) = source_secret("FAKE-bench-password-3");
    let still = holding(&copies, &final_data, |_| true).len();
    let complaints_2 = controller.complaints();
    drop(controller);

    // The watch is one view; a plain LIST after the measurements checks it.
    let reply =
        api.request("GET", &format!("/api/v1/secrets?labelSelector={}", MANAGED.replace('=', "%3D")), None)?;
    ensure!(reply.status == 200, "listing the copies: {}", reply.status);
    let listed: Value = serde_json::from_slice(&reply.body)?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&final_data);
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    let current_in_list = items.iter().filter(|s| s["data"][DATA_KEY] == encoded.as_str()).count();

    print_report(&Report {
        settings,
        total,
        extra,
        machine,
        loads,
        creation,
        waves,
        from_sent,
        from_created,
        phase2_cpu,
        points,
        idle_cpu,
        memory,
        still,
        listed: (items.len(), current_in_list),
        complaints: [complaints_1, complaints_2].concat(),
        elapsed: started.elapsed(),
    });
    ensure!(
        still == total && items.len() == total && current_in_list == total,
        "expected {total} copies with the last content: the watch saw {still}, a LIST returned {} ({current_in_list} current)",
        items.len()
    );
    Ok(())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let mhz = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_owned()))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}, {mhz} MHz per /proc/cpuinfo), MemTotal {memory}")
}

struct Report<'a> {
    settings: &'a Settings,
    /// Namespaces with a copy at the end, and those of them the bench did not create.
    total: usize,
    extra: Vec<String>,
    machine: String,
    loads: Vec<(String, String)>,
    creation: Duration,
    waves: Vec<Wave>,
    from_sent: Vec<Duration>,
    from_created: Vec<Duration>,
    phase2_cpu: Duration,
    points: Vec<IdlePoint>,
    idle_cpu: Duration,
    memory: Vec<Memory>,
    still: usize,
    listed: (usize, usize),
    complaints: Vec<String>,
    elapsed: Duration,
}

fn print_report(r: &Report<'_>) {
    let (s, total) = (r.settings, r.total);
    println!("\n## Pull-secret sync against kube-apiserver v1.37 + etcd\n");
    println!("Command: `{COMMAND}`");
    println!(
        "(BENCH_NAMESPACES={} BENCH_NEW_NAMESPACES={} BENCH_SPACING_MS={} BENCH_WRITES_PER_SECOND={} \
         BENCH_FAST_WRITES_PER_SECOND={} BENCH_RESYNC_SECONDS={} BENCH_IDLE_RESYNC_SECONDS={} BENCH_IDLE_SECONDS={})\n",
        s.namespaces,
        s.new_namespaces,
        s.spacing.as_millis(),
        s.rate,
        s.fast_rate,
        s.resync,
        s.idle_resync,
        s.idle.as_secs()
    );
    println!("Machine: {}. Load average (1, 5, 15 min):", r.machine);
    for (when, load) in &r.loads {
        println!("- {when}: {load}");
    }
    println!(
        "\nWhole run {:.0} s. {} namespaces created up front in {:.1} s ({} parallel connections).\n",
        r.elapsed.as_secs_f64(),
        s.namespaces,
        r.creation.as_secs_f64(),
        s.connections
    );

    println!("### Copies made current\n");
    println!(
        "| phase | --writes-per-second | copies | first copy ms | all copies ms | writes/s seen | controller writes | controller CPU ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for w in &r.waves {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
            w.name,
            w.rate,
            w.copies,
            ms(w.first),
            ms(w.all),
            w.observed_rate(),
            w.controller_writes,
            ms(w.cpu)
        );
    }
    println!(
        "\nTimes run from the trigger (the controller's spawn for the initial sync and the restart, the \
         source's PATCH being sent for rotations) to the bench's watch seeing the copy with the expected \
         data; for the restart, `first` is /readyz answering 200 and `all` the controller's gauge reporting \
         every namespace synced. `writes/s seen` is (copies - 1) / (last copy - first copy). Copies go to \
         every namespace but kube-system and {GATE_NS}, so also to {}.",
        r.extra.join(", ")
    );
    println!(
        "\n### Secret requests as the apiserver timed them (`apiserver_request_duration_seconds`, sum/count)\n"
    );
    println!("| phase | request | count | mean ms | apiserver ms per copy |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for w in &r.waves {
        for (key, (sum, count)) in w.requests.durations.iter().filter(|(k, _)| k.ends_with(" secrets")) {
            println!(
                "| {} | {key} | {count} | {:.2} | {:.2} |",
                w.name,
                sum / count * 1000.0,
                sum / w.copies.max(1) as f64 * 1000.0
            );
        }
    }

    println!("\n### API requests seen by the apiserver (`apiserver_request_total` deltas, every client)\n");
    println!("| phase | verb resource code | requests | per copy |");
    println!("| --- | --- | ---: | ---: |");
    for w in &r.waves {
        for (key, count) in &w.requests.requests {
            println!("| {} | {key} | {count} | {:.2} |", w.name, count / w.copies.max(1) as f64);
        }
    }
    println!(
        "\nNot the controller's: `GET (non-resource)` (the bench's /metrics scrapes), the source's PATCH in \
         rotations (1), and the apiserver's own loopback requests (leases, etc.)."
    );

    println!(
        "\n### Namespace created -> its copy present ({} namespaces, one every {} ms)\n",
        r.from_sent.len(),
        s.spacing.as_millis()
    );
    println!("| from | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (from, set) in
        [("namespace POST sent", &r.from_sent), ("namespace POST answered 201", &r.from_created)]
    {
        println!(
            "| {from} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ms(quantile(set, 0.5)),
            ms(quantile(set, 0.9)),
            ms(quantile(set, 0.99)),
            ms(set.last().copied().unwrap_or_default())
        );
    }
    println!("\nController CPU over this phase: {:.0} ms.", ms(r.phase2_cpu));

    println!(
        "\n### Idle: nothing changes, {} s, --resync-seconds {} ({} namespaces with a copy)\n",
        s.idle.as_secs(),
        s.idle_resync,
        total
    );
    println!(
        "| interval s | LIST secrets | GET secrets | secret writes (POST/PUT/PATCH/DELETE) | controller writes |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for pair in r.points.windows(2) {
        let delta = delta(&pair[0].requests, &pair[1].requests).requests;
        println!(
            "| {:.0}-{:.0} | {} | {} | {} | {} |",
            pair[0].at.as_secs_f64(),
            pair[1].at.as_secs_f64(),
            secret_requests(&delta, &["LIST"]),
            secret_requests(&delta, &["GET"]),
            secret_requests(&delta, &WRITE_VERBS),
            pair[1].writes - pair[0].writes
        );
    }
    if let (Some(first), Some(last)) = (r.points.first(), r.points.last()) {
        let delta = delta(&first.requests, &last.requests).requests;
        let window = last.at.as_secs_f64();
        let lists = secret_requests(&delta, &["LIST"]);
        let writes = secret_requests(&delta, &WRITE_VERBS);
        let controller_writes = last.writes - first.writes;
        println!(
            "| **total {window:.0} s** | **{lists}** | **{}** | **{writes}** | **{controller_writes}** |",
            secret_requests(&delta, &["GET"])
        );
        let per_hour = 3600.0 / window.max(1.0);
        println!(
            "\nExtrapolated per hour (linear, from this {window:.0} s window only): {:.0} Secret writes, \
             {:.0} controller writes, {:.0} LIST secrets. Controller CPU while idle: {:.0} ms over the window. \
             All requests in the window:\n",
            writes as f64 * per_hour,
            controller_writes * per_hour,
            lists as f64 * per_hour,
            ms(r.idle_cpu)
        );
        for (key, count) in &delta {
            println!("- {key}: {count}");
        }
        println!(
            "\nA full resync lists every namespace's copies once, whether or not anything changed: about {total} \
             LIST secrets (plus kube-system's) every --resync-seconds. At the default 600 s that would be \
             about {:.0} LISTs an hour for these namespaces (computed from the count, not measured).",
            (total + 1) as f64 * 6.0
        );
    }

    println!("\n### Controller memory\n");
    println!("| when | namespaces with a copy | VmHWM MiB | VmRSS MiB |");
    println!("| --- | ---: | ---: | ---: |");
    for m in &r.memory {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            m.when,
            m.namespaces,
            m.hwm_kib as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0
        );
    }
    println!(
        "\nThe first controller ran the initial sync, the new namespaces and rotation 1; the second (restarted \
         with --writes-per-second {} --resync-seconds {}) the rest.",
        s.fast_rate, s.idle_resync
    );

    println!(
        "\nChecks: after idle the watch saw {} of {total} copies with the last content; a LIST of the managed \
         copies returned {} Secrets, {} with the last content.",
        r.still, r.listed.0, r.listed.1
    );
    if r.complaints.is_empty() {
        println!("The controllers logged no warning or error.");
    } else {
        println!("The controllers logged {} warnings or errors; the first ones:", r.complaints.len());
        for line in r.complaints.iter().take(10) {
            println!("    {line}");
        }
    }
}
