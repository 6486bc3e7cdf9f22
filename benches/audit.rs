//! The controller's audit (`src/controller/audit.rs`) over many Pods in a real kube-apiserver
//! v1.37 + etcd (tests/controlplane): wall time, CPU and peak memory of a pass, against two
//! baselines measured in the same run:
//!
//! - the same paged LIST of every Pod by a bare HTTP client that only reads the bytes (what any
//!   audit must at least pay the API server and the network for);
//! - the same controller with the audit off (`--audit-interval-seconds 0`), for its memory.
//!
//! Pods are created unscheduled (no scheduler or kubelet runs), with three containers each, one
//! in ten from an unregistered registry. Results are printed as Markdown tables.
//!
//! ```sh
//! cargo bench --bench audit
//! BENCH_PODS=10000 BENCH_NAMESPACES=50 BENCH_PAGE_SIZE=500 cargo bench --bench audit
//! ```
//!
//! Without `--bench` (as under `cargo test --benches`) it does nothing.

#[allow(dead_code)]
#[path = "../tests/e2e/apiserver.rs"]
mod apiserver;
#[allow(dead_code)]
#[path = "../tests/e2e/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../tests/e2e/gate.rs"]
mod gate;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use apiserver::{Client, Endpoint};
use cluster::{ControlPlane, control_plane, scratch, tail, wait_for};
use gate::{binary, die_with_this_thread, free_port};

const GATE_NS: &str = "registry-gate";
const POLICY: &str = "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nexemptNamespaces: [kube-system]\nregistries:\n  - {name: hub, type: Public, url: docker.io/library}\n  - {name: team-ghcr, type: GHCR, url: ghcr.io/acme}\n";
const COMMAND: &str = "cargo bench --bench audit";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/audit.rs starts a control plane; run it with `{COMMAND}`");
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

fn pod(namespace: &str, index: usize) -> Vec<u8> {
    let third =
        if index.is_multiple_of(10) { "quay.io/unregistered/agent:1" } else { "ghcr.io/acme/agent:1" };
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("p-{index:06}"), "namespace": namespace,
                        "labels": {"app": "bench", "tier": "web"},
                        "annotations": {"note": "a realistic Pod carries some metadata besides its images"}},
           "spec": {"containers": [
                {"name": "app", "image": format!("ghcr.io/acme/app:{}", index % 7),
                 "env": [{"name": "MODE", "value": "bench"}], "resources": {"requests": {"cpu": "10m"}}},
                {"name": "proxy", "image": "docker.io/library/nginx:1.27"},
                {"name": "agent", "image": third}]}})
    .to_string()
    .into_bytes()
}

/// A running controller, killed when dropped.
struct Controller {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log: PathBuf,
}

impl Controller {
    fn start(
        cp: &ControlPlane,
        dir: &Path,
        audit_interval: u64,
        page_size: u32,
        log: &str,
    ) -> anyhow::Result<Self> {
        let log = dir.join(log);
        let out = File::create(&log)?;
        let port = free_port();
        let child = die_with_this_thread()
            .arg(binary())
            .args(["controller", "--namespace", GATE_NS, "--policy"])
            .arg(dir.join("policy.yaml"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
            .args(["--audit-interval-seconds", &audit_interval.to_string()])
            .args(["--audit-page-size", &page_size.to_string()])
            .args(["--log-format", "json"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start registry-gate controller")?;
        let pid = child.id();
        let controller = Controller { child: Some(child), pid, port, log };
        wait_for("the controller to be ready", Duration::from_secs(60), Duration::from_millis(50), |last| {
            match controller.get("/readyz") {
                Ok((200, _)) => Some(()),
                Ok((status, body)) => {
                    *last = format!("{status} {}", body.trim());
                    None
                }
                Err(e) => {
                    *last = e.to_string();
                    None
                }
            }
        })
        .with_context(|| controller.log_tail(20))?;
        Ok(controller)
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not HTTP")?;
        Ok((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    /// The sum of every sample of `metric` (no labels filter).
    fn metric(&self, metric: &str) -> anyhow::Result<f64> {
        let (_, text) = self.get("/metrics")?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(&format!("{metric} ")) || l.starts_with(&format!("{metric}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// VmHWM in KiB.
    fn peak_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .context("VmHWM")
    }

    /// CPU time so far, all threads.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let fields: Vec<&str> =
            text.rsplit_once(')').context("/proc/PID/stat")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11..13].iter().filter_map(|f| f.parse::<u64>().ok()).sum();
        Ok(Duration::from_secs_f64(ticks as f64 / 100.0))
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    /// Waits for an audit pass with a policy generation above `after`; returns the pass's own
    /// duration as the controller measured it.
    fn wait_for_pass(&self, after: f64) -> anyhow::Result<Duration> {
        wait_for("an audit pass", Duration::from_secs(600), Duration::from_millis(50), |last| {
            let generation = self.metric("registry_gate_audit_policy_generation").ok()?;
            let finished = self.metric("registry_gate_audit_last_run_timestamp_seconds").ok()?;
            *last = format!("generation {generation}, finished {finished}");
            (generation > after && finished > 0.0).then_some(())
        })
        .with_context(|| self.log_tail(20))?;
        Ok(Duration::from_secs_f64(self.metric("registry_gate_audit_duration_seconds")?))
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

/// Lists every Pod with `page_size` per page, reading the bytes only: the floor of any audit.
async fn bare_list(endpoint: &Endpoint, page_size: u32) -> anyhow::Result<(Duration, usize, usize)> {
    let mut client = Client::new(endpoint.clone());
    let started = Instant::now();
    let (mut bytes, mut items, mut token) = (0, 0, String::new());
    loop {
        let path = format!(
            "/api/v1/pods?limit={page_size}&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed{}",
            if token.is_empty() { String::new() } else { format!("&continue={token}") }
        );
        let reply = client.request("GET", &path, None).await?;
        ensure!(reply.status == 200, "list answered {}", reply.status);
        bytes += reply.body.len();
        // Only the continue token and the item count are read.
        let page: serde_json::Value = serde_json::from_slice(&reply.body)?;
        items += page["items"].as_array().map_or(0, Vec::len);
        token = page["metadata"]["continue"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() {
            return Ok((started.elapsed(), items, bytes));
        }
    }
}

fn run() -> anyhow::Result<()> {
    let pods: usize = env_or("BENCH_PODS", 10_000);
    let namespaces: usize = env_or("BENCH_NAMESPACES", 50).max(1);
    let page_size: u32 = env_or("BENCH_PAGE_SIZE", 500);
    let connections: usize = env_or("BENCH_CONNECTIONS", 8);
    let cp = control_plane();
    let dir = scratch("audit-bench");
    std::fs::write(dir.path().join("policy.yaml"), POLICY)?;
    let endpoint = Endpoint::new(&cp.url, &std::fs::read(&cp.ca)?, &cp.token)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    // Objects: registry-gate's namespace, the namespaces, the Pods.
    let created = Instant::now();
    let names: Vec<String> =
        std::iter::once(GATE_NS.to_owned()).chain((0..namespaces).map(|i| format!("audit-{i:03}"))).collect();
    runtime.block_on(async {
        let mut client = Client::new(endpoint.clone());
        for name in &names {
            let body =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).to_string();
            let reply = client.request("POST", "/api/v1/namespaces", Some(body.as_bytes())).await?;
            ensure!(reply.status == 201 || reply.status == 409, "namespace {name}: {}", reply.status);
        }
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (next, endpoint) = (next.clone(), endpoint.clone());
            tasks.spawn(async move {
                let mut client = Client::new(endpoint);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= pods {
                        return anyhow::Ok(());
                    }
                    let namespace = format!("audit-{:03}", i % namespaces);
                    let reply = client
                        .request(
                            "POST",
                            &format!("/api/v1/namespaces/{namespace}/pods"),
                            Some(&pod(&namespace, i)),
                        )
                        .await?;
                    ensure!(reply.status == 201, "pod {i}: {} {}", reply.status, reply.text());
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })?;
    let creation = created.elapsed();
    println!("created {pods} Pods in {namespaces} namespaces in {:.1} s", creation.as_secs_f64());

    // Baseline: the bare paged list, best of three.
    let mut lists = Vec::new();
    for _ in 0..3 {
        lists.push(runtime.block_on(bare_list(&endpoint, page_size))?);
    }
    let (list_time, listed, list_bytes) = lists.iter().min_by_key(|(d, ..)| *d).copied().context("a list")?;
    ensure!(listed >= pods, "the bare list saw {listed} Pods, fewer than {pods}");

    // The controller with the audit off: its memory without it.
    let idle = Controller::start(cp, dir.path(), 0, page_size, "controller-no-audit.log")?;
    std::thread::sleep(Duration::from_secs(5));
    let (idle_peak, idle_cpu) = (idle.peak_kib()?, idle.cpu()?);
    drop(idle);

    // The controller with the audit on: the first pass at start, then one after a policy edit.
    let spawned = Instant::now();
    let audited = Controller::start(cp, dir.path(), 3600, page_size, "controller-audit.log")?;
    let first = audited.wait_for_pass(0.0)?;
    let first_wall = spawned.elapsed();
    let (first_cpu, first_peak) = (audited.cpu()?, audited.peak_kib()?);
    let examined = audited.metric("registry_gate_audit_objects")?;
    let violations = audited.metric("registry_gate_audit_violations")?;
    ensure!(examined as usize >= pods, "the audit examined {examined} objects, fewer than {pods} Pods");
    ensure!(
        violations as usize >= pods / 10,
        "the audit found {violations} violations, expected {}",
        pods / 10
    );
    let generation = audited.metric("registry_gate_audit_policy_generation")?;
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("{POLICY}  - {{name: quay, type: Quay, url: quay.io/other}}\n"),
    )?;
    let second = audited.wait_for_pass(generation)?;
    let (second_cpu, second_peak) = (audited.cpu()?, audited.peak_kib()?);

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("\n## Audit of {pods} Pods in {namespaces} namespaces, page size {page_size}");
    println!(
        "\n`{COMMAND}` (BENCH_PODS={pods} BENCH_NAMESPACES={namespaces} BENCH_PAGE_SIZE={page_size}); {cpus} CPUs ({machine}); the API server, etcd and the controller share them.\n"
    );
    println!("| what | wall | ratio to the bare list | controller CPU | controller peak RSS |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| bare paged LIST of every Pod (baseline, best of 3; {listed} Pods, {:.1} MiB) | {:.0} ms | 1.00 | - | - |",
        list_bytes as f64 / 1_048_576.0,
        list_time.as_secs_f64() * 1e3
    );
    println!(
        "| controller, audit off (5 s after ready) | - | - | {:.2} s | {:.1} MiB |",
        idle_cpu.as_secs_f64(),
        idle_peak as f64 / 1024.0
    );
    println!(
        "| first audit pass (all 8 kinds; {examined} objects, {violations} refused images) | {:.0} ms | {:.2} | {:.2} s (start included) | {:.1} MiB |",
        first.as_secs_f64() * 1e3,
        first.as_secs_f64() / list_time.as_secs_f64(),
        first_cpu.as_secs_f64(),
        first_peak as f64 / 1024.0
    );
    println!(
        "| audit pass after a policy edit | {:.0} ms | {:.2} | {:.2} s (this pass) | {:.1} MiB |",
        second.as_secs_f64() * 1e3,
        second.as_secs_f64() / list_time.as_secs_f64(),
        (second_cpu - first_cpu).as_secs_f64(),
        second_peak as f64 / 1024.0
    );
    println!(
        "\nController start to first pass published: {:.1} s. Peak RSS added by the audit: {:.1} MiB ({:.2} KiB per Pod).",
        first_wall.as_secs_f64(),
        (second_peak.saturating_sub(idle_peak)) as f64 / 1024.0,
        second_peak.saturating_sub(idle_peak) as f64 / pods as f64
    );
    Ok(())
}
