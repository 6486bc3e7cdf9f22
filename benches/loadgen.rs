//! Load generator: registry-gate's webhook over real HTTPS on loopback, against a baseline
//! measured in the same run.
//!
//! Run: `cargo bench --bench loadgen` (about 50 s once built). It prints a Markdown
//! report and writes it to `target/loadgen-results.md`; the figures go in benches/RESULTS.md.
//!
//! Two more modes, each under two minutes, each with a report of its own:
//!
//! - `cargo bench --bench loadgen -- abuse` (or `LOADGEN_MODE=abuse`): a well-behaved client
//!   alone, then under a denial flood, slowloris, body tricklers and HTTP/2 stream abuse, then
//!   against a client that fills the body budget; see `loadgen/abuse.rs`. Writes
//!   `target/loadgen-abuse.md`.
//! - `cargo bench --bench loadgen -- churn` (or `LOADGEN_MODE=churn`): policy reloads at 100/s
//!   and certificate rotation every second under load, then SIGTERM under load; see
//!   `loadgen/churn.rs`. Writes `target/loadgen-churn.md`.
//!
//! - `cargo bench --bench loadgen -- hold` (or `LOADGEN_MODE=hold`): for profiling, no report:
//!   starts both servers, prints their process ids, then drives each in turn with one closed
//!   loop of `LOADGEN_CONCURRENCY` workers (16) for `LOADGEN_SECONDS` seconds (20), so that
//!   `perf record -p PID` can be attached to a server under a steady load.
//!
//! The built binary takes the same words: `target/release/deps/loadgen-HASH abuse`.
//!
//! What it does, all on 127.0.0.1, every loop bounded in time and count:
//!
//! 1. Writes development certificates (`registry-gate certs`), a policy of 10,000 registries
//!    (checked with `registry-gate policy validate`) and an ~8 KB AdmissionReview of a typical Pod
//!    to a temporary directory.
//! 2. Starts two servers as subprocesses, so both are measured the same way:
//!    - the real `registry-gate serve`, with that certificate and policy;
//!    - the baseline, the floor of this stack: this same binary re-executed with
//!      `--baseline-server PORT CERT KEY`, a bare axum + rustls (ring) + hyper-util auto server
//!      that reads the body and answers every POST with a fixed `allowed: true` review.
//! 3. Closed loop, per server and concurrency 1, 16 and 64: one keep-alive HTTP/1.1 connection
//!    per worker, each sending `POST /validate` as soon as its previous answer arrived; 1 s
//!    warm-up, 5 s measured. Reports requests/s, p50/p99/p99.9 latency, and the server's and
//!    the client's CPU time per request.
//! 4. "p99 at half of peak load", per server: 16 connections on a fixed schedule at half that
//!    server's best closed-loop throughput, latency counted from the scheduled send time (so a
//!    request that waits behind a slow one is charged for the wait).
//! 5. Peak RSS (VmHWM) of each server, then kills both (also on panic, by a guard).
//!
//! Every response must be 200 with `"allowed":true`; anything else is counted as an error, and
//! a run with errors says so at the top and bottom of the report and exits non-zero.
//!
//! The client shares the machine with the servers, so on a small machine the figures are those
//! of client and server together; the ratio against the baseline is the figure that carries.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

/// The command this file is run with, for the report.
const COMMAND: &str = "cargo bench --bench loadgen";
const REGISTRY_GATE: &str = env!("CARGO_BIN_EXE_registry-gate");

const CONCURRENCIES: [usize; 3] = [1, 16, 64];
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
/// Connections of the half-load run; each sends its share of the rate.
const HALF_LOAD_CONNECTIONS: usize = 16;
const POLICY_SIZE: usize = 10_000;
/// A request slower than this counts as an error (the API server's own limit is 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A second bound on every request loop, besides its deadline.
const MAX_REQUESTS_PER_WORKER: u64 = 5_000_000;
/// How long a server may take to start answering.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The uid of the review sent; the baseline echoes it in its fixed answer.
const REVIEW_UID: &str = "b2a7c3f0-5d41-4e8a-9c6e-1f2d3a4b5c6d";

fn main() -> ExitCode {
    // Both roles build TLS configurations from the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; the only argument of our own is the baseline role.
    if let Some(at) = args.iter().position(|a| a == "--baseline-server") {
        return baseline::main(&args[at + 1..]);
    }
    let mode = std::env::var("LOADGEN_MODE").ok();
    let chosen = |name: &str| args.iter().skip(1).any(|a| a == name) || mode.as_deref() == Some(name);
    let outcome = if chosen("abuse") {
        abuse::run()
    } else if chosen("churn") {
        churn::run()
    } else if chosen("hold") {
        hold()
    } else {
        run()
    };
    match outcome {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// A bench's crate root looks for modules beside it, in benches/; these live under
// benches/loadgen/ so as not to be taken for benches of their own.
#[path = "loadgen/abuse.rs"]
mod abuse;
#[path = "loadgen/churn.rs"]
mod churn;
#[path = "loadgen/observe.rs"]
mod observe;

/// The whole measurement; returns the number of failed requests.
fn run() -> anyhow::Result<u64> {
    let started = Instant::now();
    // Anything else running (a build, say) takes cores from client and servers alike.
    let busy_before = load::machine_busy_over(Duration::from_secs(1))?;
    if busy_before > 10.0 {
        eprintln!(
            "loadgen: WARNING: the machine is {busy_before:.0}% busy before the run; figures will be low and noisy"
        );
    }
    let workspace = Workspace::create()?;
    let files = setup::prepare(&workspace)?;
    let body = Bytes::from(fs::read(&files.review)?);
    eprintln!("loadgen: workspace {}, review body {} bytes", workspace.dir.display(), body.len());

    let mut servers =
        [servers::start_registry_gate(&workspace, &files)?, servers::start_baseline(&workspace, &files)?];
    let startup_rss: Vec<u64> = servers.iter().map(|s| s.memory_kib("VmRSS")).collect::<Result<_, _>>()?;
    let targets: Vec<Arc<client::Target>> = servers
        .iter()
        .map(|s| client::Target::new(s.addr, &files.ca, body.clone()).map(Arc::new))
        .collect::<Result<_, _>>()?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the client runtime")?;
    let closed = closed_loop_runs(&runtime, &mut servers, &targets)?;
    let half = half_load_runs(&runtime, &mut servers, &targets, &closed)?;
    let peak_rss: Vec<u64> = servers.iter().map(|s| s.memory_kib("VmHWM")).collect::<Result<_, _>>()?;
    let memory: Vec<report::Memory> = servers
        .iter()
        .zip(startup_rss.into_iter().zip(peak_rss))
        .map(|(s, (startup, peak))| report::Memory { server: s.name, startup_kib: startup, peak_kib: peak })
        .collect();
    drop(servers);

    let errors: u64 = closed.iter().chain(&half).map(|r| r.errors).sum();
    let text = report::render(&report::Report {
        body_bytes: body.len(),
        busy_before,
        cpu_source: servers::CpuClock::detect().describe(),
        closed: &closed,
        half: &half,
        memory: &memory,
        errors,
        elapsed: started.elapsed(),
    });
    println!("{text}");
    let out = report::write(&text)?;
    eprintln!("loadgen: wrote {} in {:.0} s", out.display(), started.elapsed().as_secs_f64());
    if errors == 0 {
        workspace.clean_finish();
    }
    Ok(errors)
}

/// `hold` mode: each server under one long closed loop, for a profiler to attach to.
fn hold() -> anyhow::Result<u64> {
    let setting = |name: &str, default: u64| -> anyhow::Result<u64> {
        std::env::var(name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name}={v}")))
    };
    let concurrency = usize::try_from(setting("LOADGEN_CONCURRENCY", 16)?)?;
    let measure = Duration::from_secs(setting("LOADGEN_SECONDS", 20)?);
    let workspace = Workspace::create()?;
    let files = setup::prepare(&workspace)?;
    let body = Bytes::from(fs::read(&files.review)?);
    let mut servers =
        [servers::start_registry_gate(&workspace, &files)?, servers::start_baseline(&workspace, &files)?];
    let runtime = tokio::runtime::Runtime::new().context("cannot start the client runtime")?;
    let mut errors = 0;
    for server in &mut servers {
        let target = Arc::new(client::Target::new(server.addr, &files.ca, body.clone())?);
        eprintln!(
            "loadgen: hold: {} pid {}, {concurrency} workers for {measure:?}",
            server.name,
            server.pid()
        );
        let result = runtime.block_on(load::closed_loop_for(target, server, concurrency, measure))?;
        eprintln!("loadgen: {}", result.summary());
        server.ensure_running()?;
        errors += result.errors;
    }
    if errors == 0 {
        workspace.clean_finish();
    }
    Ok(errors)
}

/// Every closed-loop run. Servers alternate within each concurrency so that drift over the run
/// (a noisy neighbour, thermal limits) hits both alike.
fn closed_loop_runs(
    runtime: &tokio::runtime::Runtime,
    servers: &mut [servers::ServerProcess],
    targets: &[Arc<client::Target>],
) -> anyhow::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for concurrency in CONCURRENCIES {
        for (server, target) in servers.iter_mut().zip(targets) {
            let result = runtime.block_on(load::closed_loop(target.clone(), server, concurrency))?;
            eprintln!("loadgen: {}", result.summary());
            server.ensure_running()?;
            results.push(result);
        }
    }
    Ok(results)
}

/// Each server at half of its own best closed-loop throughput.
fn half_load_runs(
    runtime: &tokio::runtime::Runtime,
    servers: &mut [servers::ServerProcess],
    targets: &[Arc<client::Target>],
    closed: &[RunResult],
) -> anyhow::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for (server, target) in servers.iter_mut().zip(targets) {
        let best = closed.iter().filter(|r| r.server == server.name).map(|r| r.rps).fold(0.0, f64::max);
        if best <= 0.0 {
            // Every request failed: no rate to halve, but the report of the failures still matters.
            eprintln!("loadgen: {} answered nothing successfully; no half-load run for it", server.name);
            continue;
        }
        let result = load::open_loop(runtime, target.clone(), server, best / 2.0)?;
        eprintln!("loadgen: {}", result.summary());
        server.ensure_running()?;
        results.push(result);
    }
    Ok(results)
}

/// A temporary directory for certificates, policy, body and server logs; removed only after a
/// run without errors (otherwise the logs are worth reading), and never with LOADGEN_KEEP set.
struct Workspace {
    dir: PathBuf,
    remove: std::cell::Cell<bool>,
}

impl Workspace {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("registry-gate-loadgen-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Workspace { dir, remove: std::cell::Cell::new(false) })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Called once the run ended without errors. An early return or a panic skips it.
    fn clean_finish(&self) {
        self.remove.set(std::env::var_os("LOADGEN_KEEP").is_none());
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.remove.get() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("loadgen: left {} (certificates, policy, body, server logs)", self.dir.display());
        }
    }
}

/// The files both servers and the client read.
mod setup {
    use super::*;

    pub struct Files {
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
        pub policy: PathBuf,
        pub review: PathBuf,
    }

    pub fn prepare(workspace: &Workspace) -> anyhow::Result<Files> {
        run_checked(Command::new(REGISTRY_GATE).arg("certs").arg("--out").arg(&workspace.dir))?;
        let files = Files {
            ca: workspace.path("ca.crt"),
            cert: workspace.path("tls.crt"),
            key: workspace.path("tls.key"),
            policy: workspace.path("policy.yaml"),
            review: workspace.path("review.json"),
        };
        fs::write(&files.policy, policy_yaml(POLICY_SIZE))?;
        let summary =
            run_checked(Command::new(REGISTRY_GATE).args(["policy", "validate"]).arg(&files.policy))?;
        // The first line is the verdict; the rest lists all 10,000 registries.
        eprintln!("loadgen: {}", summary.lines().next().unwrap_or_default());
        fs::write(&files.review, serde_json::to_vec(&admission_review())?)?;
        Ok(files)
    }

    /// Runs a command to completion and returns its standard output, or fails with its stderr.
    pub fn run_checked(command: &mut Command) -> anyhow::Result<String> {
        let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
        if !output.status.success() {
            bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A large organization's list: self-hosted registries with a port and GHCR owners, alternating.
    /// Odd indices are Generic and even ones GHCR, which `admission_review` relies on.
    pub fn policy_yaml(size: usize) -> String {
        let mut text = String::from("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n");
        for i in 0..size {
            if i % 2 == 0 {
                let _ =
                    writeln!(text, "  - {{name: r{i}, type: GHCR, url: ghcr.io/org{i}, pullSecret: s{i}}}");
            } else {
                let _ = writeln!(
                    text,
                    "  - {{name: r{i}, type: Generic, url: \"registry{i}.corp.example:5000\"}}"
                );
            }
        }
        text
    }

    /// What the API server sends for a ReplicaSet's Pod: about 8 KB.
    pub fn admission_review() -> Value {
        let service_account = "system:serviceaccount:kube-system:replicaset-controller";
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": REVIEW_UID,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {
                    "username": service_account,
                    "uid": "4f1c2a9e-7b3d-4c55-8e21-0a9b8c7d6e5f",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
                },
                "object": pod(),
                "oldObject": null,
                "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        })
    }

    fn pod() -> Value {
        let containers = [
            container("cart", "registry4321.corp.example:5000/shop/cart:2.14.1", 8080, "500m", "512Mi"),
            container(
                "otel-collector",
                "ghcr.io/org9876/observability/otel-collector:0.98.0",
                4317,
                "200m",
                "256Mi",
            ),
            container(
                "envoy",
                "registry777.corp.example:5000/platform/envoy@sha256:3f5b2c1d9e8a7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b",
                9901,
                "250m",
                "128Mi",
            ),
        ];
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "cart-7d9f8b6c5-",
                "namespace": "shop",
                "labels": {
                    "app.kubernetes.io/name": "cart",
                    "app.kubernetes.io/part-of": "shop",
                    "app.kubernetes.io/version": "2.14.1",
                    "pod-template-hash": "7d9f8b6c5"
                },
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": "9090",
                    "kubectl.kubernetes.io/restartedAt": "2025-03-14T09:26:53Z"
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "cart-7d9f8b6c5",
                    "uid": "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4",
                    "controller": true,
                    "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "containers": containers,
                "volumes": [
                    {"name": "config", "configMap": {"name": "cart-config", "defaultMode": 420}},
                    {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ]}}
                ],
                "serviceAccountName": "cart",
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "schedulerName": "default-scheduler",
                "enableServiceLinks": true,
                "priority": 0,
                "securityContext": {"runAsNonRoot": true, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ],
                "topologySpreadConstraints": [{
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "cart"}}
                }]
            }
        })
    }

    fn container(name: &str, image: &str, port: u16, cpu: &str, memory: &str) -> Value {
        json!({
            "name": name,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [
                {"name": "http", "containerPort": port, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
            ],
            "env": [
                {"name": "SERVICE_NAME", "value": name},
                {"name": "LOG_LEVEL", "value": "info"},
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://localhost:4317"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "cart-db", "key": "url"}}},
                {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
                {"name": "FEATURE_FLAGS", "valueFrom": {"configMapKeyRef": {"name": "shop-flags", "key": name}}},
                {"name": "TZ", "value": "UTC"}
            ],
            "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 5"]}}},
            "resources": {
                "requests": {"cpu": cpu, "memory": memory},
                "limits": {"memory": memory}
            },
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"},
                "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 2,
                "successThreshold": 1, "failureThreshold": 3
            },
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": port, "scheme": "HTTP"},
                "periodSeconds": 5, "timeoutSeconds": 2, "successThreshold": 1, "failureThreshold": 3
            },
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/shop", "readOnly": true},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
            ],
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 10001,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File"
        })
    }
}

/// The two server subprocesses, their readiness, and what /proc says about them.
mod servers {
    use super::*;

    /// A running server; killed when dropped, so a panic anywhere leaves no server behind.
    pub struct ServerProcess {
        pub name: &'static str,
        pub addr: SocketAddr,
        /// registry-gate's operations port (/metrics); the baseline has none.
        pub operations: Option<SocketAddr>,
        child: Child,
        /// Its standard output and error: registry-gate's log.
        pub log: PathBuf,
    }

    impl ServerProcess {
        fn spawn(
            name: &'static str,
            mut command: Command,
            addr: SocketAddr,
            operations: Option<SocketAddr>,
            log: PathBuf,
        ) -> anyhow::Result<Self> {
            let out = fs::File::create(&log)?;
            command.stdout(out.try_clone()?).stderr(out);
            let child = command.spawn().with_context(|| format!("cannot start {name}: {command:?}"))?;
            Ok(ServerProcess { name, addr, operations, child, log })
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Fails, with the end of the server's log, if the server has exited.
        pub fn ensure_running(&mut self) -> anyhow::Result<()> {
            if let Some(status) = self.child.try_wait()? {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                bail!("{} exited ({status}); end of {}:\n{tail}", self.name, self.log.display());
            }
            Ok(())
        }

        /// A `Vm*` line of /proc/PID/status, in KiB.
        pub fn memory_kib(&self, field: &str) -> anyhow::Result<u64> {
            let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
            let line = status
                .lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))?;
            let kib = line[field.len() + 1..].trim().trim_end_matches("kB").trim();
            Ok(kib.parse()?)
        }

        /// CPU time the server has used so far, user and system.
        pub fn cpu_time(&self) -> anyhow::Result<Duration> {
            CpuClock::detect().read(self.pid())
        }

        /// A shell, started now, that sends SIGTERM (what the kubelet sends) with its `kill`
        /// builtin when fired: std has no way to send a signal, and kill(1) started on the
        /// spot takes milliseconds to start before it signals, which blurs when the signal
        /// lands. Dropped unfired, the shell reads end-of-file and signals nothing.
        pub fn arm_terminate(&self) -> anyhow::Result<Trigger> {
            let shell = Command::new("sh")
                .args(["-c", r#"read -r _ && kill -TERM "$0""#, &self.pid().to_string()])
                .stdin(Stdio::piped())
                .spawn()
                .context("cannot start sh")?;
            Ok(Trigger { shell })
        }

        /// The exit status, once the server has exited, or `None` if it is still running
        /// after `timeout`.
        pub fn wait_for_exit(
            &mut self,
            timeout: Duration,
        ) -> anyhow::Result<Option<std::process::ExitStatus>> {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = self.child.try_wait()? {
                    return Ok(Some(status));
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    pub struct Trigger {
        shell: Child,
    }

    impl Trigger {
        /// Sends the signal; returns once the shell has exited, so the signal has been sent.
        pub fn fire(mut self) -> anyhow::Result<()> {
            let mut go = self.shell.stdin.take().context("the shell's stdin")?;
            go.write_all(b"go\n")?;
            drop(go);
            let status = self.shell.wait()?;
            if !status.success() {
                bail!("kill -TERM failed ({status})");
            }
            Ok(())
        }
    }

    impl Drop for Trigger {
        fn drop(&mut self) {
            // Closing its stdin (if not fired) makes the shell exit without signalling.
            drop(self.shell.stdin.take());
            let _ = self.shell.wait();
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn start_registry_gate(workspace: &Workspace, files: &setup::Files) -> anyhow::Result<ServerProcess> {
        let serve = Serve { cert: &files.cert, key: &files.key, policy: &files.policy, flags: &[] };
        start_serve(&serve, workspace.path("registry-gate.log"))
    }

    /// What `registry-gate serve` is started with, besides its ports.
    pub struct Serve<'a> {
        pub cert: &'a Path,
        pub key: &'a Path,
        pub policy: &'a Path,
        /// More flags, such as `--policy-poll-millis 5`.
        pub flags: &'a [&'a str],
    }

    /// `registry-gate serve` on two free loopback ports, logging to `log`, once it is ready.
    pub fn start_serve(serve: &Serve, log: PathBuf) -> anyhow::Result<ServerProcess> {
        let (port, operations) = (free_port()?, free_port()?);
        let mut command = Command::new(REGISTRY_GATE);
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{operations}")])
            .arg("--tls-cert")
            .arg(serve.cert)
            .arg("--tls-key")
            .arg(serve.key)
            .arg("--policy")
            .arg(serve.policy)
            .args(["--log-format", "json"])
            .args(serve.flags)
            .stdin(Stdio::null());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let readyz = SocketAddr::from(([127, 0, 0, 1], operations));
        let mut server = ServerProcess::spawn("registry-gate", command, addr, Some(readyz), log)?;
        wait_until(&mut server, || http_get_status(readyz, "/readyz").is_ok_and(|status| status == 200))?;
        Ok(server)
    }

    pub fn start_baseline(workspace: &Workspace, files: &setup::Files) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--baseline-server")
            .arg(port.to_string())
            .arg(&files.cert)
            .arg(&files.key)
            // The baseline exits when this pipe closes: it cannot outlive us even if we are killed.
            .stdin(Stdio::piped());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server =
            ServerProcess::spawn("baseline", command, addr, None, workspace.path("baseline.log"))?;
        // It has no readiness endpoint; it listens only once its TLS configuration is loaded.
        wait_until(&mut server, || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())?;
        Ok(server)
    }

    /// A port free now (the kernel picks it); the server binds it a moment later.
    fn free_port() -> anyhow::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    fn wait_until(server: &mut ServerProcess, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            server.ensure_running()?;
            if ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not become ready within {STARTUP_TIMEOUT:?}", server.name)
    }

    /// A plain-HTTP GET's status code, with std only (the operations port speaks HTTP/1.1).
    fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        // "HTTP/1.1 200"
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP response"))
    }

    /// The unit of /proc/PID/stat and /proc/stat times (USER_HZ), nearly always 100.
    pub fn ticks_per_second() -> u64 {
        static TICKS: OnceLock<u64> = OnceLock::new();
        *TICKS.get_or_init(|| {
            Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
                .unwrap_or(100)
        })
    }

    /// Where a process's CPU time is read. schedstat counts nanoseconds but needs a kernel with
    /// schedstats (and sums only live threads); /proc/PID/stat counts whole clock ticks (usually
    /// 10 ms, which over a 5 s window at ~1 core is an error well under 1%).
    #[derive(Clone, Copy)]
    pub enum CpuClock {
        Schedstat,
        Ticks { per_second: u64 },
    }

    impl CpuClock {
        pub fn detect() -> CpuClock {
            static CLOCK: OnceLock<CpuClock> = OnceLock::new();
            *CLOCK.get_or_init(|| {
                if fs::read_to_string("/proc/self/schedstat").is_ok() {
                    return CpuClock::Schedstat;
                }
                CpuClock::Ticks { per_second: ticks_per_second() }
            })
        }

        pub fn describe(self) -> String {
            match self {
                CpuClock::Schedstat => "/proc/PID/task/*/schedstat (ns)".to_owned(),
                CpuClock::Ticks { per_second } => {
                    format!(
                        "utime+stime of /proc/PID/stat ({per_second} ticks/s; schedstat is not available here)"
                    )
                }
            }
        }

        pub fn read(self, pid: u32) -> anyhow::Result<Duration> {
            match self {
                CpuClock::Schedstat => {
                    let mut total = 0u64;
                    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
                        // A thread may exit between listing and reading.
                        let Ok(text) = fs::read_to_string(task?.path().join("schedstat")) else { continue };
                        total +=
                            text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
                    }
                    Ok(Duration::from_nanos(total))
                }
                CpuClock::Ticks { per_second } => {
                    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
                    // Fields after the command name, which may itself hold spaces and parentheses.
                    let rest =
                        stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc/PID/stat")?;
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // utime and stime are fields 14 and 15; `rest` starts at field 3.
                    let ticks: u64 = fields
                        .get(11..13)
                        .context("short /proc/PID/stat")?
                        .iter()
                        .map(|f| f.parse::<u64>().unwrap_or(0))
                        .sum();
                    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
                }
            }
        }
    }
}

/// The baseline server: the same stack as registry-gate (axum 0.8, rustls with ring, hyper-util's
/// auto builder offering h2 and HTTP/1.1 by ALPN) with no work behind it.
mod baseline {
    use super::*;
    use axum::Router;
    use axum::http::{HeaderValue, Method, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use hyper_util::rt::TokioExecutor;
    use hyper_util::service::TowerToHyperService;
    use rustls::ServerConfig;
    use tokio_rustls::TlsAcceptor;

    pub fn main(args: &[String]) -> ExitCode {
        let [port, cert, key] = args else {
            eprintln!("usage: loadgen --baseline-server PORT CERT KEY");
            return ExitCode::from(2);
        };
        exit_when_stdin_closes();
        let result = tokio::runtime::Runtime::new()
            .context("cannot start the runtime")
            .and_then(|runtime| runtime.block_on(serve(port, Path::new(cert), Path::new(key))));
        if let Err(e) = result {
            eprintln!("baseline server failed: {e:#}");
        }
        ExitCode::FAILURE
    }

    /// The parent holds our stdin open; its end means the parent is gone.
    fn exit_when_stdin_closes() {
        std::thread::spawn(|| {
            let mut sink = [0u8; 64];
            while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
            std::process::exit(0);
        });
    }

    async fn serve(port: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert, key)?));
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
        let router = Router::new().fallback(answer);
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            // TCP_NODELAY, exactly as registry-gate: the two differ only in what they run.
            let _ = stream.set_nodelay(true);
            let (acceptor, builder) = (acceptor.clone(), builder.clone());
            let service = TowerToHyperService::new(router.clone());
            // Handshakes run in their own task, as in registry-gate.
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }

    fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
        let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let mut config = ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Reads the whole body (as registry-gate must) and answers with a fixed review.
    async fn answer(method: Method, _body: Bytes) -> Response {
        if method != Method::POST {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"{REVIEW_UID}","allowed":true}}}}"#
        );
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
    }
}

/// One HTTPS client connection and its requests.
mod client {
    use super::*;
    use hyper::Request;
    use hyper::header::{CONTENT_TYPE, HOST};
    use rustls::{ClientConfig, RootCertStore};

    pub type Connection = SendRequest<Full<Bytes>>;

    /// A complete answer that is wrong. Unlike a transport failure it leaves the connection
    /// usable, so the worker keeps it: reconnecting would measure handshakes instead.
    #[derive(Debug)]
    pub struct BadAnswer(String);

    impl std::fmt::Display for BadAnswer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for BadAnswer {}

    /// Whether the connection a request failed on can carry the next one.
    pub fn connection_survives(error: &anyhow::Error) -> bool {
        error.downcast_ref::<BadAnswer>().is_some()
    }

    /// A server as the client sees it: address, TLS settings, and the body to send.
    pub struct Target {
        addr: SocketAddr,
        tls: TlsConnector,
        body: Bytes,
        /// The address connections come from; the system's choice when `None`.
        source: Option<std::net::IpAddr>,
    }

    /// Why a new connection failed: the TCP connect, or the TLS handshake after it.
    #[derive(Debug)]
    pub enum ConnectError {
        Tcp(std::io::Error),
        Handshake(std::io::Error),
    }

    impl std::fmt::Display for ConnectError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                ConnectError::Tcp(e) => write!(f, "TCP connect failed: {e}"),
                ConnectError::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            }
        }
    }

    impl std::error::Error for ConnectError {}

    impl Target {
        pub fn new(addr: SocketAddr, ca: &Path, body: Bytes) -> anyhow::Result<Self> {
            // The API server speaks HTTP/1.1 to webhooks unless told otherwise; so do we.
            Target::with_alpn(addr, ca, body, b"http/1.1")
        }

        /// A target offering one ALPN protocol: `h2` for the HTTP/2 abuse.
        pub fn with_alpn(addr: SocketAddr, ca: &Path, body: Bytes, alpn: &[u8]) -> anyhow::Result<Self> {
            let config = Target::config(ca, alpn)?;
            Ok(Target { addr, tls: TlsConnector::from(Arc::new(config)), body, source: None })
        }

        /// A target whose every connection makes a full handshake. By default rustls resumes
        /// TLS 1.3 sessions, and a resumed session shows no certificate: a client that always
        /// resumes never sees a rotated one.
        pub fn without_resumption(addr: SocketAddr, ca: &Path, body: Bytes) -> anyhow::Result<Self> {
            let mut config = Target::config(ca, b"http/1.1")?;
            config.resumption = rustls::client::Resumption::disabled();
            Ok(Target { addr, tls: TlsConnector::from(Arc::new(config)), body, source: None })
        }

        fn config(ca: &Path, alpn: &[u8]) -> anyhow::Result<ClientConfig> {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
            let mut config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(config)
        }

        /// The same target, connecting from `source`: on Linux every address of 127/8 is on the
        /// loopback interface, so 127.0.0.2 is a client apart from 127.0.0.1 to the server.
        pub fn with_source(mut self, source: std::net::IpAddr) -> Self {
            self.source = Some(source);
            self
        }

        /// The body `validate` sends.
        pub fn body(&self) -> &Bytes {
            &self.body
        }

        /// A TLS session with no HTTP on it yet.
        pub async fn connect_tls(
            &self,
        ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ConnectError> {
            let tcp = match self.source {
                None => tokio::net::TcpStream::connect(self.addr).await,
                Some(source) => {
                    let socket = match source {
                        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                    }
                    .map_err(ConnectError::Tcp)?;
                    socket.bind(SocketAddr::new(source, 0)).map_err(ConnectError::Tcp)?;
                    socket.connect(self.addr).await
                }
            }
            .map_err(ConnectError::Tcp)?;
            tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
            let name = ServerName::try_from("localhost").expect("a valid DNS name");
            self.tls.connect(name, tcp).await.map_err(ConnectError::Handshake)
        }

        /// A new keep-alive connection; its I/O runs in a task of the current runtime.
        pub async fn connect(&self) -> anyhow::Result<Connection> {
            let tls = self.connect_tls().await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(sender)
        }

        /// One `POST /validate`, checked: 200 and an allowing review, within REQUEST_TIMEOUT.
        pub async fn validate(&self, connection: &mut Connection) -> anyhow::Result<()> {
            tokio::time::timeout(REQUEST_TIMEOUT, self.send(connection))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
        }

        /// One `POST /validate` of `body`, unchecked: its status and whole answer. Not bounded in
        /// time; callers bound it.
        pub async fn exchange(
            &self,
            connection: &mut Connection,
            body: Bytes,
        ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
            connection.ready().await?;
            let request = Request::post("/validate")
                .header(HOST, "localhost")
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(body))?;
            let response = connection.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok((status, body))
        }

        async fn send(&self, connection: &mut Connection) -> anyhow::Result<()> {
            let (status, body) = self.exchange(connection, self.body.clone()).await?;
            if status != 200 {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                return Err(BadAnswer(format!("status {status}: {text}")).into());
            }
            if !contains(&body, br#""allowed":true"#) {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                return Err(BadAnswer(format!("not allowed: {text}")).into());
            }
            Ok(())
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Latencies and counts of one worker, merged over workers.
struct Stats {
    /// From the send (closed loop) or the scheduled send (open loop) to the last body byte, in ns.
    latency: Histogram<u64>,
    /// Open loop only: how late the client sent after the schedule said, in ns.
    lag: Histogram<u64>,
    ok: u64,
    /// When the last measured request was answered.
    last_done: Option<Instant>,
    errors: u64,
    first_errors: Vec<String>,
}

impl Stats {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds");
        Stats {
            latency: histogram(),
            lag: histogram(),
            ok: 0,
            last_done: None,
            errors: 0,
            first_errors: Vec::new(),
        }
    }

    fn error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        if self.first_errors.len() < 3 {
            self.first_errors.push(format!("{error:#}"));
        }
    }

    fn merge(&mut self, other: Stats) {
        self.latency.add(&other.latency).expect("histograms of equal bounds");
        self.lag.add(&other.lag).expect("histograms of equal bounds");
        self.ok += other.ok;
        self.last_done = self.last_done.max(other.last_done);
        self.errors += other.errors;
        for e in other.first_errors {
            if self.first_errors.len() < 3 {
                self.first_errors.push(e);
            }
        }
    }
}

/// One row of the report.
pub struct RunResult {
    server: &'static str,
    /// Closed loop: workers. Open loop: connections.
    concurrency: usize,
    /// Open loop only: the rate asked for.
    target_rps: Option<f64>,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    lag_p99_us: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    /// Share of all the machine's CPU time that was busy over the measured window, in percent.
    machine_busy_pct: f64,
    /// The part of that busy time that neither this server nor the client used: other processes
    /// (a build, say) competing for the same cores. Percent of all cores' time.
    others_pct: f64,
    errors: u64,
    first_errors: Vec<String>,
}

impl RunResult {
    /// Which run this was: "concurrency 16" or "half load (12000 req/s asked)".
    fn label(&self) -> String {
        match self.target_rps {
            Some(rate) => format!("half load ({rate:.0} req/s asked)"),
            None => format!("concurrency {}", self.concurrency),
        }
    }

    fn summary(&self) -> String {
        let mode = self.label();
        let mut line = format!(
            "{} {mode}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, server CPU {:.1} µs/req, machine {:.0}% busy ({:.0}% others)",
            self.server,
            self.rps,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.server_cpu_us,
            self.machine_busy_pct,
            self.others_pct
        );
        if let Some(first) = self.first_errors.first() {
            let first: String = first.chars().take(160).collect();
            let _ = write!(line, " — {} ERRORS, the first: {first}", self.errors);
        }
        line
    }
}

/// The measuring loops.
mod load {
    use super::*;

    /// The measured part of a run: requests sent (or scheduled) in [start, end) count.
    #[derive(Clone, Copy)]
    struct Window {
        start: Instant,
        end: Instant,
    }

    impl Window {
        fn after_warmup(now: Instant) -> Self {
            Window::after_warmup_for(now, MEASURE)
        }

        fn after_warmup_for(now: Instant, measure: Duration) -> Self {
            Window { start: now + WARMUP, end: now + WARMUP + measure }
        }
    }

    /// CPU time of the server and of this process at one instant.
    pub struct CpuSample {
        pub server: Duration,
        pub client: Duration,
        /// Busy and total time of all CPUs, in ticks, from the first line of /proc/stat: tells
        /// whether client and server together ran out of cores.
        pub machine: (u64, u64),
    }

    impl CpuSample {
        pub fn take(server: &servers::ServerProcess) -> anyhow::Result<Self> {
            let clock = servers::CpuClock::detect();
            Ok(CpuSample {
                server: server.cpu_time()?,
                client: clock.read(std::process::id())?,
                machine: machine_ticks()?,
            })
        }
    }

    /// The percent of all cores' time that was busy over the next `period`.
    pub fn machine_busy_over(period: Duration) -> anyhow::Result<f64> {
        let before = machine_ticks()?;
        std::thread::sleep(period);
        let after = machine_ticks()?;
        Ok(busy_percent(before, after))
    }

    /// Busy time of all cores minus what the server and the client used, in percent of all
    /// cores' time. /proc/stat counts whole ticks, so this is good to about a percent.
    pub fn others_percent(before: &CpuSample, after: &CpuSample) -> f64 {
        let hz = servers::ticks_per_second().max(1) as f64;
        let capacity = after.machine.1.saturating_sub(before.machine.1).max(1) as f64 / hz;
        let busy = after.machine.0.saturating_sub(before.machine.0) as f64 / hz;
        let ours = (after.server.saturating_sub(before.server) + after.client.saturating_sub(before.client))
            .as_secs_f64();
        100.0 * (busy - ours).max(0.0) / capacity
    }

    pub fn busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
        let busy = after.0.saturating_sub(before.0) as f64;
        let total = after.1.saturating_sub(before.1).max(1) as f64;
        100.0 * busy / total
    }

    /// `cpu user nice system idle iowait irq softirq steal ...`: busy is all but idle and iowait.
    fn machine_ticks() -> anyhow::Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap_or(0)).collect();
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Ok((total - idle, total))
    }

    /// `concurrency` workers, each on its own connection, each sending as soon as it has an answer.
    pub async fn closed_loop(
        target: Arc<client::Target>,
        server: &servers::ServerProcess,
        concurrency: usize,
    ) -> anyhow::Result<RunResult> {
        closed_loop_for(target, server, concurrency, MEASURE).await
    }

    /// [`closed_loop`], measured for `measure` after the warm-up.
    pub async fn closed_loop_for(
        target: Arc<client::Target>,
        server: &servers::ServerProcess,
        concurrency: usize,
        measure: Duration,
    ) -> anyhow::Result<RunResult> {
        // Handshakes happen before the clock starts: they are not what is measured.
        let mut connections = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            connections
                .push(target.connect().await.with_context(|| format!("cannot connect to {}", server.name))?);
        }
        let window = Window::after_warmup_for(Instant::now(), measure);
        let workers: Vec<_> = connections
            .into_iter()
            .map(|connection| tokio::spawn(closed_loop_worker(target.clone(), connection, window)))
            .collect();
        tokio::time::sleep_until(window.start.into()).await;
        let before = CpuSample::take(server)?;
        tokio::time::sleep_until(window.end.into()).await;
        let after = CpuSample::take(server)?;
        let mut stats = Stats::new();
        for worker in workers {
            stats.merge(worker.await?);
        }
        Ok(result(server.name, concurrency, None, &stats, measure, &before, &after))
    }

    async fn closed_loop_worker(
        target: Arc<client::Target>,
        connection: client::Connection,
        window: Window,
    ) -> Stats {
        let mut stats = Stats::new();
        let mut connection = Some(connection);
        for _ in 0..MAX_REQUESTS_PER_WORKER {
            let sent = Instant::now();
            if sent >= window.end {
                break;
            }
            if connection.is_none() {
                connection = reconnect(&target, &mut stats).await;
            }
            let Some(open) = connection.as_mut() else { continue };
            let outcome = target.validate(open).await;
            let measured = sent >= window.start;
            match outcome {
                Ok(()) if measured => {
                    stats.latency.saturating_record(nanos(sent.elapsed()));
                    stats.ok += 1;
                }
                Ok(()) => {}
                // Errors count in the warm-up too: any failure is worth knowing about.
                Err(e) => {
                    stats.error(&e);
                    if !client::connection_survives(&e) {
                        connection = None;
                    }
                }
            }
        }
        stats
    }

    /// A fresh connection after a failed request (its connection may be unusable), or none yet.
    async fn reconnect(target: &client::Target, stats: &mut Stats) -> Option<client::Connection> {
        match target.connect().await {
            Ok(connection) => Some(connection),
            Err(e) => {
                stats.error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        }
    }

    /// HALF_LOAD_CONNECTIONS connections, each sending on a fixed schedule so that together they
    /// send `rate` requests per second; latency runs from the scheduled send time.
    ///
    /// One ticker thread keeps the whole schedule and hands each slot to its connection's task
    /// when it falls due. It waits with `std::thread::sleep`, which overshoots by tens of
    /// microseconds, because tokio's timer rounds to whole milliseconds: at these intervals that
    /// would add up to a millisecond of made-up latency. A single ticker feeding tasks on the
    /// shared runtime costs far less CPU than a thread per connection, which matters when the
    /// client shares two cores with the server.
    pub fn open_loop(
        runtime: &tokio::runtime::Runtime,
        target: Arc<client::Target>,
        server: &servers::ServerProcess,
        rate: f64,
    ) -> anyhow::Result<RunResult> {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("cannot send at {rate} requests/s to {}", server.name);
        }
        let mut connections = Vec::with_capacity(HALF_LOAD_CONNECTIONS);
        for _ in 0..HALF_LOAD_CONNECTIONS {
            let connection = runtime.block_on(target.connect());
            connections.push(connection.with_context(|| format!("cannot connect to {}", server.name))?);
        }
        let window = Window::after_warmup(Instant::now());
        let mut slots = Vec::with_capacity(HALF_LOAD_CONNECTIONS);
        let mut workers = Vec::with_capacity(HALF_LOAD_CONNECTIONS);
        for connection in connections {
            let (slot_tx, slot_rx) = tokio::sync::mpsc::unbounded_channel();
            slots.push(slot_tx);
            workers.push(runtime.spawn(open_loop_worker(target.clone(), connection, slot_rx, window)));
        }
        // The ticker stays alive until the CPU time is read: an exited thread's time would leave
        // the per-thread schedstat sum.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let gap = Duration::from_secs_f64(1.0 / rate);
        let ticker = std::thread::spawn(move || {
            tick(&slots, window.start - WARMUP, gap, window.end);
            drop(slots); // workers finish what they were handed, then stop
            let _ = released.recv();
        });
        std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
        let before = CpuSample::take(server)?;
        std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
        let after = CpuSample::take(server)?;
        let _ = release.send(());
        ticker.join().map_err(|_| anyhow::anyhow!("the ticker thread panicked"))?;
        let mut stats = Stats::new();
        for worker in workers {
            stats.merge(runtime.block_on(worker)?);
        }
        // A server that falls behind finishes the window's requests late: its achieved rate is
        // what it answered over the time it took, not over the window.
        let span =
            stats.last_done.map_or(MEASURE, |done| done.saturating_duration_since(window.start).max(MEASURE));
        Ok(result(server.name, HALF_LOAD_CONNECTIONS, Some(rate), &stats, span, &before, &after))
    }

    /// Slot k is due at `first + k * gap` and belongs to connection k mod N, so each connection
    /// sends every N gaps, the connections evenly staggered. Slots already due when the ticker
    /// wakes go out at once, which batches them at high rates.
    pub fn tick(
        slots: &[tokio::sync::mpsc::UnboundedSender<Instant>],
        first: Instant,
        gap: Duration,
        end: Instant,
    ) {
        for k in 0..MAX_REQUESTS_PER_WORKER * HALF_LOAD_CONNECTIONS as u64 {
            let due = first + gap.mul_f64(k as f64);
            if due >= end {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let connection = usize::try_from(k).unwrap_or(0) % slots.len();
            let _ = slots[connection].send(due);
        }
    }

    /// Sends one request per slot handed to it; a slot that comes while the previous answer is
    /// still awaited waits its turn, and that wait is charged to its latency.
    async fn open_loop_worker(
        target: Arc<client::Target>,
        connection: client::Connection,
        mut slots: tokio::sync::mpsc::UnboundedReceiver<Instant>,
        window: Window,
    ) -> Stats {
        let mut stats = Stats::new();
        let mut connection = Some(connection);
        // A backlog cannot keep a worker long past the window.
        let hard_stop = window.end + REQUEST_TIMEOUT;
        while let Some(scheduled) = slots.recv().await {
            if Instant::now() >= hard_stop {
                break;
            }
            if connection.is_none() {
                connection = reconnect(&target, &mut stats).await;
            }
            let Some(open) = connection.as_mut() else { continue };
            let sent = Instant::now();
            match target.validate(open).await {
                Ok(()) if scheduled >= window.start => {
                    stats.latency.saturating_record(nanos(scheduled.elapsed()));
                    stats.lag.saturating_record(nanos(sent - scheduled));
                    stats.ok += 1;
                    stats.last_done = Some(Instant::now());
                }
                Ok(()) => {}
                Err(e) => {
                    stats.error(&e);
                    if !client::connection_survives(&e) {
                        connection = None;
                    }
                }
            }
        }
        stats
    }

    fn result(
        server: &'static str,
        concurrency: usize,
        target_rps: Option<f64>,
        stats: &Stats,
        measured: Duration,
        before: &CpuSample,
        after: &CpuSample,
    ) -> RunResult {
        // With no successful request there is no cost per request to give.
        let requests = if stats.ok == 0 { f64::NAN } else { stats.ok as f64 };
        let us = |ns: u64| ns as f64 / 1000.0;
        let per_request =
            |from: Duration, to: Duration| to.saturating_sub(from).as_secs_f64() * 1e6 / requests;
        RunResult {
            server,
            concurrency,
            target_rps,
            rps: stats.ok as f64 / measured.as_secs_f64(),
            p50_us: us(stats.latency.value_at_quantile(0.50)),
            p99_us: us(stats.latency.value_at_quantile(0.99)),
            p999_us: us(stats.latency.value_at_quantile(0.999)),
            lag_p99_us: us(stats.lag.value_at_quantile(0.99)),
            server_cpu_us: per_request(before.server, after.server),
            client_cpu_us: per_request(before.client, after.client),
            machine_busy_pct: busy_percent(before.machine, after.machine),
            others_pct: others_percent(before, after),
            errors: stats.errors,
            first_errors: stats.first_errors.clone(),
        }
    }

    pub fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The Markdown report.
mod report {
    use super::*;

    /// Above this share of all cores busy, client and server were competing for CPU.
    const SATURATED_PCT: f64 = 90.0;

    pub struct Memory {
        pub server: &'static str,
        pub startup_kib: u64,
        pub peak_kib: u64,
    }

    pub struct Report<'a> {
        pub body_bytes: usize,
        /// Percent of all cores busy in the second before the servers started.
        pub busy_before: f64,
        pub cpu_source: String,
        pub closed: &'a [RunResult],
        pub half: &'a [RunResult],
        pub memory: &'a [Memory],
        pub errors: u64,
        pub elapsed: Duration,
    }

    pub fn render(r: &Report) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# registry-gate webhook over HTTPS on loopback, against a bare axum + rustls baseline\n"
        );
        if r.errors > 0 {
            let _ = writeln!(
                out,
                "**!!! {} REQUESTS FAILED: these figures are not valid. See the error column. !!!**\n",
                r.errors
            );
        }
        header(&mut out, r);
        closed_table(&mut out, r.closed);
        ratio_table(&mut out, r.closed);
        half_table(&mut out, r.half);
        memory_table(&mut out, r.memory);
        errors_section(&mut out, r);
        let _ = writeln!(out, "Whole run: {:.0} s.", r.elapsed.as_secs_f64());
        if r.errors > 0 {
            let _ = writeln!(out, "\n**!!! {} REQUESTS FAILED !!!**", r.errors);
        }
        out
    }

    fn header(out: &mut String, r: &Report) {
        let _ = writeln!(out, "- Command: `{COMMAND}`");
        let _ = writeln!(
            out,
            "- Machine: {} CPUs (`nproc`), {}. **Client and servers share these {} cores**, so every figure is client and server together; the ratio to the baseline is the one that carries to other machines.",
            nproc(),
            cpu_model(),
            nproc()
        );
        let quiet =
            if r.busy_before > 10.0 { " — **not quiet: other load skews these figures**" } else { "" };
        let _ = writeln!(out, "- Machine busy in the second before the run: {:.0}%{quiet}.", r.busy_before);
        let _ = writeln!(
            out,
            "- Request: `POST /validate`, a {}-byte AdmissionReview (Pod CREATE in namespace `shop`, 3 containers, images from registered registries), against a policy of {POLICY_SIZE} registries; every answer must be 200 with `\"allowed\":true`.",
            r.body_bytes
        );
        let _ = writeln!(
            out,
            "- Client: Rust, hyper 1 HTTP/1.1 over tokio-rustls (TLS 1.3, ring), keep-alive, one connection per worker, handshakes before the clock starts."
        );
        let _ = writeln!(
            out,
            "- Baseline: axum 0.8 + rustls (ring) + hyper-util auto (h2 and HTTP/1.1), reading the body and answering a fixed `allowed: true` review; a subprocess like registry-gate."
        );
        let _ = writeln!(
            out,
            "- Each closed-loop row: {} s warm-up, {} s measured. CPU per request: the server's (or the client's) CPU time over the measured window divided by the requests answered in it, read from {}. Machine CPU busy: the share of all cores' time not idle over that window (/proc/stat); \"other processes\" is the part of it that neither the measured server nor the client used (anything above a few percent means something else ran and the row is suspect).\n",
            WARMUP.as_secs(),
            MEASURE.as_secs(),
            r.cpu_source
        );
    }

    fn closed_table(out: &mut String, rows: &[RunResult]) {
        let _ = writeln!(out, "## Closed loop\n");
        let _ = writeln!(
            out,
            "| server | concurrency | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | client CPU µs/req | machine CPU busy | of it, other processes | errors |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for row in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0}% | {:.0}% | {} |",
                row.server,
                row.concurrency,
                row.rps,
                row.p50_us,
                row.p99_us,
                row.p999_us,
                row.server_cpu_us,
                row.client_cpu_us,
                row.machine_busy_pct,
                row.others_pct,
                row.errors
            );
        }
        out.push('\n');
    }

    fn ratio_table(out: &mut String, rows: &[RunResult]) {
        let _ = writeln!(out, "## registry-gate / baseline\n");
        let _ = writeln!(out, "| concurrency | throughput | p99 latency | server CPU per request |");
        let _ = writeln!(out, "|--:|--:|--:|--:|");
        for concurrency in CONCURRENCIES {
            let find = |name: &str| rows.iter().find(|r| r.server == name && r.concurrency == concurrency);
            if let (Some(gate), Some(base)) = (find("registry-gate"), find("baseline")) {
                let _ = writeln!(
                    out,
                    "| {concurrency} | {:.2} | {:.2} | {:.2} |",
                    gate.rps / base.rps,
                    gate.p99_us / base.p99_us,
                    gate.server_cpu_us / base.server_cpu_us
                );
            }
        }
        out.push('\n');
    }

    fn half_table(out: &mut String, rows: &[RunResult]) {
        let _ = writeln!(out, "## At half of each server's peak throughput\n");
        let _ = writeln!(
            out,
            "Open loop: {HALF_LOAD_CONNECTIONS} connections, each on a fixed schedule at its share of the rate (staggered), after a {} s warm-up at that rate, {} s measured; latency from the scheduled send time. \"Send lag\" is how late a request left after its slot (the client's timer overshoot and wake-up, and any wait behind a slow answer on its connection); it is part of the latency.\n",
            WARMUP.as_secs(),
            MEASURE.as_secs()
        );
        let _ = writeln!(
            out,
            "| server | asked req/s | achieved req/s | p50 µs | p99 µs | p99.9 µs | send lag p99 µs | server CPU µs/req | client CPU µs/req | machine CPU busy | of it, other processes | errors |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for row in rows {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0}% | {:.0}% | {} |",
                row.server,
                row.target_rps.unwrap_or_default(),
                row.rps,
                row.p50_us,
                row.p99_us,
                row.p999_us,
                row.lag_p99_us,
                row.server_cpu_us,
                row.client_cpu_us,
                row.machine_busy_pct,
                row.others_pct,
                row.errors
            );
        }
        let saturated: Vec<&str> =
            rows.iter().filter(|row| row.machine_busy_pct > SATURATED_PCT).map(|row| row.server).collect();
        if !saturated.is_empty() {
            let _ = writeln!(
                out,
                "\n**The machine was saturated (over {SATURATED_PCT:.0}% busy) in the half-load run of {}**: on a schedule the client batches less than in a closed loop and costs more CPU per request, so half of a server's closed-loop peak can fill every core. Those latencies are the whole machine's; a large send lag means the client itself fell behind.",
                saturated.join(" and ")
            );
        }
        out.push('\n');
    }

    fn memory_table(out: &mut String, rows: &[Memory]) {
        let _ = writeln!(out, "## Memory\n");
        let _ = writeln!(out, "| server | RSS after start | peak RSS (VmHWM) after all runs |");
        let _ = writeln!(out, "|---|--:|--:|");
        for row in rows {
            let _ = writeln!(
                out,
                "| {} | {:.1} MiB | {:.1} MiB |",
                row.server,
                row.startup_kib as f64 / 1024.0,
                row.peak_kib as f64 / 1024.0
            );
        }
        out.push('\n');
    }

    fn errors_section(out: &mut String, r: &Report) {
        let failed: Vec<&RunResult> = r.closed.iter().chain(r.half).filter(|row| row.errors > 0).collect();
        if failed.is_empty() {
            let _ = writeln!(out, "Errors: none.\n");
            return;
        }
        let _ = writeln!(out, "## ERRORS\n");
        for row in failed {
            let _ =
                writeln!(out, "- {} at {}: {} errors, the first ones:", row.server, row.label(), row.errors);
            for error in &row.first_errors {
                let _ = writeln!(out, "  - `{}`", error.replace('`', "'").replace('\n', " "));
            }
        }
        out.push('\n');
    }

    pub fn nproc() -> String {
        Command::new("nproc")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned())
    }

    pub fn cpu_model() -> String {
        fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned())
    }

    /// Writes the report to target/loadgen-results.md.
    pub fn write(text: &str) -> anyhow::Result<PathBuf> {
        write_as("loadgen-results.md", text)
    }

    /// Writes a report to `file_name` in the target directory.
    pub fn write_as(file_name: &str, text: &str) -> anyhow::Result<PathBuf> {
        // CARGO_TARGET_TMPDIR is target/tmp, whichever target directory the build used.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().context("target/tmp has a parent")?;
        let path = target.join(file_name);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}
