//! `churn` mode: does anything fail while the policy and the certificate change under load, and
//! is anything lost when the server is told to stop under load?
//!
//! Run: `cargo bench --bench loadgen -- churn` (about 45 s once built). Prints a Markdown report
//! and writes it to `target/loadgen-churn.md`; exits non-zero on any failed request, failed
//! handshake, inconsistent answer or lost request.
//!
//! 1. **Churn**, 20 s. `registry-gate serve --policy-poll-millis 5 --certificate-poll-millis
//!    100`, with a 50-registry policy (a 10,000-registry one takes ~100 ms to parse, longer than
//!    the rewrite period). Meanwhile:
//!    - the policy file is rewritten 100 times a second (new file, then rename), alternating
//!      between A, which registers the registries of images X and Y, and B, which registers
//!      neither;
//!    - every second a new serving certificate is issued from the one CA the clients trust, and
//!      its key and certificate are written (new file, then rename, key first);
//!    - 16 keep-alive HTTP/1.1 connections in a closed loop, and 4 workers that open a new
//!      connection for every request (two with full handshakes, two resuming TLS sessions),
//!      send a review of a Pod with both X and Y. Each answer must come from one policy:
//!      allowed, or denied naming both X and Y; one image denied without the other would mean a
//!      review decided against two policies.
//! 2. **SIGTERM under load**, 10 times, each on a fresh server: 16 keep-alive connections in a
//!    closed loop for 2 s, then `kill -TERM` (a shell started beforehand, told to go). Every
//!    request sent before the signal must be answered 200; requests sent after it may fail (the
//!    listener closes, and idle keep-alive connections are closed). The signal lands somewhere
//!    between the go and the shell's exit, so requests sent in that window are reported apart,
//!    with how close to the shell's exit the failed ones were sent. The server's log line
//!    "shutting down: draining in-flight requests", written just before it closes idle
//!    connections, shows how long it took to act on the signal, and which failed requests were
//!    sent in that time. Each trial then waits for the process to exit, and reports how long
//!    that took and its status.
//!
//! The CA is made here with rcgen (a dependency of the crate, so the bench can use it) because
//! `registry-gate certs` makes a new CA every time and the library has no way to issue a
//! certificate from an existing one.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use tokio::runtime::Runtime;

use super::observe::{FirstErrors, Scrape, count_messages};
use super::*;

const COMMAND: &str = "cargo bench --bench loadgen -- churn";
const CHURN: Duration = Duration::from_secs(20);
const KEEPALIVE_WORKERS: usize = 16;
const FRESH_WORKERS: usize = 4;
const POLICY_REWRITE_EVERY: Duration = Duration::from_millis(10);
const ROTATE_EVERY: Duration = Duration::from_secs(1);
const POLICY_REGISTRIES: usize = 50;
const SIGTERM_TRIALS: usize = 10;
const LOAD_BEFORE_SIGNAL: Duration = Duration::from_secs(2);
/// Workers stop this long after the signal at the latest.
const AFTER_SIGNAL: Duration = Duration::from_secs(10);
/// The server's own drain timeout is 25 s.
const EXIT_TIMEOUT: Duration = Duration::from_secs(35);
const SERVE_FLAGS: [&str; 4] = ["--policy-poll-millis", "5", "--certificate-poll-millis", "100"];
/// Generic registry 7 and GHCR owner 8 in policy A (see `setup::policy_yaml`'s alternation).
const IMAGE_X: &str = "registry7.corp.example:5000/shop/x:1.0";
const IMAGE_Y: &str = "ghcr.io/org8/shop/y:2.0";
/// A bound on every loop besides its deadline.
const MAX_ITERATIONS: u64 = 10_000_000;

/// The mode; returns the number of failed checks.
pub fn run() -> anyhow::Result<u64> {
    let started = Instant::now();
    let busy_before = load::machine_busy_over(Duration::from_secs(1))?;
    let workspace = Workspace::create()?;
    let files = prepare(&workspace)?;
    eprintln!("loadgen churn: workspace {}", workspace.dir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let churn = churn(&workspace, &files, &runtime)?;
    eprintln!("loadgen churn: {}", churn.summary());
    let mut trials = Vec::new();
    for trial in 0..SIGTERM_TRIALS {
        let result = sigterm_trial(&workspace, &files, &runtime, trial)?;
        eprintln!("loadgen churn: {}", result.summary());
        trials.push(result);
    }
    let failures = failures(&churn, &trials);
    let text = render(&churn, &trials, busy_before, &failures, started.elapsed());
    println!("{text}");
    let out = report::write_as("loadgen-churn.md", &text)?;
    eprintln!("loadgen churn: wrote {} in {:.0} s", out.display(), started.elapsed().as_secs_f64());
    if failures.is_empty() {
        workspace.clean_finish();
    }
    Ok(failures.len() as u64)
}

struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    policy: PathBuf,
    policy_a: String,
    policy_b: String,
    review: Bytes,
    authority: Authority,
}

fn prepare(workspace: &Workspace) -> anyhow::Result<Files> {
    let authority = Authority::new()?;
    let ca = workspace.path("ca.crt");
    fs::write(&ca, &authority.ca_pem)?;
    let (cert, key) = (workspace.path("tls.crt"), workspace.path("tls.key"));
    let (cert_pem, key_pem) = authority.issue()?;
    replace(&key, key_pem.as_bytes())?;
    replace(&cert, cert_pem.as_bytes())?;
    let policy_a = small_policy(0);
    // Registries 1000 to 1049: the same shape as A, none of them X's or Y's.
    let policy_b = small_policy(1000);
    for (name, text, allows) in [("policy-a.yaml", &policy_a, true), ("policy-b.yaml", &policy_b, false)] {
        let path = workspace.path(name);
        fs::write(&path, text)?;
        setup::run_checked(Command::new(REGISTRY_GATE).args(["policy", "validate"]).arg(&path))?;
        // `check` exits 0 when every image is allowed and 1 when any is denied.
        let status = Command::new(REGISTRY_GATE)
            .args(["check", "--policy"])
            .arg(&path)
            .args([IMAGE_X, IMAGE_Y])
            .stdout(Stdio::null())
            .status()?;
        if status.success() != allows {
            bail!("{name} should {} both {IMAGE_X} and {IMAGE_Y}", if allows { "allow" } else { "deny" });
        }
    }
    let policy = workspace.path("policy.yaml");
    replace(&policy, policy_a.as_bytes())?;
    Ok(Files {
        ca,
        cert,
        key,
        policy,
        policy_a,
        policy_b,
        review: Bytes::from(serde_json::to_vec(&review_of_x_and_y())?),
        authority,
    })
}

/// `POLICY_REGISTRIES` registries numbered from `first`, alternating GHCR and Generic.
fn small_policy(first: usize) -> String {
    let full = setup::policy_yaml(first + POLICY_REGISTRIES);
    let mut lines = full.lines();
    let mut text: String = lines.by_ref().take(3).map(|line| format!("{line}\n")).collect();
    for line in lines.skip(first) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The usual Pod, with two containers: X and Y.
fn review_of_x_and_y() -> Value {
    let mut review = setup::admission_review();
    if let Some(containers) =
        review.pointer_mut("/request/object/spec/containers").and_then(Value::as_array_mut)
    {
        containers.truncate(2);
        for (container, image) in containers.iter_mut().zip([IMAGE_X, IMAGE_Y]) {
            container["image"] = json!(image);
        }
    }
    review
}

/// Writes a new file beside `path` and renames it over `path`, so that a reader sees the old
/// content or the new, never half of it.
fn replace(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".new");
    let staging = PathBuf::from(staging);
    fs::write(&staging, contents)?;
    fs::rename(&staging, path).with_context(|| format!("cannot rename over {}", path.display()))?;
    Ok(())
}

/// One CA for the whole run, which the clients trust, and the serving certificates it issues.
struct Authority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "registry-gate loadgen CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = params.self_signed(&key)?.pem();
        Ok(Authority { ca_pem, issuer: Issuer::new(params, key) })
    }

    /// A new serving certificate and key for localhost, as PEM.
    fn issue(&self) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// What a client got for the review of X and Y.
enum Verdict {
    Allowed,
    DeniedBoth,
    /// An answer no single policy gives.
    Inconsistent(String),
    /// Not a 200 AdmissionReview.
    Failed(String),
}

fn judge(status: hyper::StatusCode, body: &[u8]) -> Verdict {
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if status != 200 {
        return Verdict::Failed(format!("status {status}: {}", text()));
    }
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Failed(format!("not JSON: {}", text()));
    };
    let response = &review["response"];
    let message = response.pointer("/status/message").and_then(Value::as_str).unwrap_or_default();
    let named = (message.contains(IMAGE_X), message.contains(IMAGE_Y));
    match (response["allowed"].as_bool(), named) {
        (Some(true), (false, false)) => Verdict::Allowed,
        (Some(false), (true, true)) => Verdict::DeniedBoth,
        (Some(_), _) => Verdict::Inconsistent(text()),
        (None, _) => Verdict::Failed(format!("no response.allowed: {}", text())),
    }
}

/// Counts shared by the churn's workers.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    inconsistent: AtomicU64,
    failed: AtomicU64,
    full_handshakes: AtomicU64,
    resumed_handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    tcp_failures: AtomicU64,
    first_errors: Mutex<FirstErrors>,
    /// Serving certificates seen in full handshakes, by a hash of their DER.
    certificates_seen: Mutex<HashSet<u64>>,
}

impl Counts {
    fn record(&self, verdict: &Verdict) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match verdict {
            Verdict::Allowed => &self.allowed,
            Verdict::DeniedBoth => &self.denied,
            Verdict::Inconsistent(text) => {
                self.note(format!("inconsistent: {text}"));
                &self.inconsistent
            }
            Verdict::Failed(text) => {
                self.note(text);
                &self.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn note(&self, error: impl std::fmt::Display) {
        self.first_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).note(error);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn fingerprint(der: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    der.hash(&mut hasher);
    hasher.finish()
}

struct Churn {
    wall: Duration,
    requests: u64,
    allowed: u64,
    denied: u64,
    inconsistent: u64,
    failed: u64,
    full_handshakes: u64,
    resumed_handshakes: u64,
    handshake_failures: u64,
    tcp_failures: u64,
    first_errors: String,
    policy_writes: u64,
    rotations: u64,
    /// Distinct serving certificates shown in full handshakes.
    certificates_seen: usize,
    /// Whether a connection made after the last rotation was shown the last certificate.
    last_certificate_served: bool,
    generations: f64,
    reload_failures: f64,
    log_policy_loaded: usize,
    log_policy_refused: usize,
    log_certificate_reloaded: usize,
    log_certificate_refused: usize,
    server_cpu: Duration,
    client_cpu: Duration,
    machine_busy_pct: f64,
    others_pct: f64,
    peak_kib: u64,
}

impl Churn {
    fn summary(&self) -> String {
        format!(
            "churn: {} requests ({} allowed, {} denied), {} failed, {} inconsistent, {} full and {} resumed handshakes ({} failed), {} policy writes -> {} generations, {} reload failures, {} rotations -> {} certificates seen",
            self.requests,
            self.allowed,
            self.denied,
            self.failed,
            self.inconsistent,
            self.full_handshakes,
            self.resumed_handshakes,
            self.handshake_failures,
            self.policy_writes,
            self.generations,
            self.reload_failures,
            self.rotations,
            self.certificates_seen
        )
    }
}

fn churn(workspace: &Workspace, files: &Files, runtime: &Runtime) -> anyhow::Result<Churn> {
    let serve =
        servers::Serve { cert: &files.cert, key: &files.key, policy: &files.policy, flags: &SERVE_FLAGS };
    let mut server = servers::start_serve(&serve, workspace.path("churn.log"))?;
    let operations = server.operations.context("registry-gate has an operations port")?;
    let target = Arc::new(client::Target::new(server.addr, &files.ca, files.review.clone())?);
    let full = Arc::new(client::Target::without_resumption(server.addr, &files.ca, files.review.clone())?);
    let before = Scrape::take(operations)?;
    let log_from = observe::log_offset(&server.log);
    let cpu_before = load::CpuSample::take(&server)?;

    let mut connections = Vec::with_capacity(KEEPALIVE_WORKERS);
    for _ in 0..KEEPALIVE_WORKERS {
        connections.push(runtime.block_on(target.connect()).context("cannot connect")?);
    }
    let counts = Arc::new(Counts::default());
    let began = Instant::now();
    let end = began + CHURN;
    let mut workers = Vec::new();
    for connection in connections {
        let (target, counts) = (target.clone(), counts.clone());
        workers.push(runtime.spawn(keepalive_worker(target, connection, end, counts)));
    }
    for i in 0..FRESH_WORKERS {
        let target = if i % 2 == 0 { full.clone() } else { target.clone() };
        workers.push(runtime.spawn(fresh_worker(target, end, counts.clone())));
    }
    let writer = {
        let (path, a, b) = (files.policy.clone(), files.policy_a.clone(), files.policy_b.clone());
        std::thread::spawn(move || rewrite_policy(&path, &a, &b, began, end))
    };
    let rotations = rotate_certificates(files, began, end)?;
    let policy_writes = writer.join().map_err(|_| anyhow::anyhow!("the policy writer panicked"))??;
    for worker in workers {
        runtime.block_on(worker)?;
    }
    // A connection made now must be shown the last certificate issued, once the poll has seen it.
    std::thread::sleep(Duration::from_millis(300));
    let last_certificate_served = runtime.block_on(async {
        let stream = full.connect_tls().await.ok()?;
        let shown = stream.get_ref().1.peer_certificates()?.first()?.to_vec();
        Some(fingerprint(&shown) == rotations.last_fingerprint)
    }) == Some(true);

    server.ensure_running()?;
    let cpu_after = load::CpuSample::take(&server)?;
    let after = Scrape::take(operations)?;
    let log = observe::log_between(&server.log, log_from, observe::log_offset(&server.log))?;
    let grown = |series: &str| after.value(series) - before.value(series);
    let get = Counts::get;
    let first_errors = counts.first_errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).render();
    let certificates_seen =
        counts.certificates_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    Ok(Churn {
        wall: began.elapsed(),
        requests: get(&counts.requests),
        allowed: get(&counts.allowed),
        denied: get(&counts.denied),
        inconsistent: get(&counts.inconsistent),
        failed: get(&counts.failed),
        full_handshakes: get(&counts.full_handshakes),
        resumed_handshakes: get(&counts.resumed_handshakes),
        handshake_failures: get(&counts.handshake_failures),
        tcp_failures: get(&counts.tcp_failures),
        first_errors,
        policy_writes,
        rotations: rotations.count,
        certificates_seen,
        last_certificate_served,
        generations: grown("registry_gate_policy_generation"),
        reload_failures: grown("registry_gate_policy_reload_failures_total"),
        log_policy_loaded: count_messages(&log, "policy loaded"),
        log_policy_refused: count_messages(&log, "policy refused"),
        log_certificate_reloaded: count_messages(&log, "serving certificate reloaded"),
        log_certificate_refused: count_messages(&log, "new certificate refused"),
        server_cpu: cpu_after.server.saturating_sub(cpu_before.server),
        client_cpu: cpu_after.client.saturating_sub(cpu_before.client),
        machine_busy_pct: load::busy_percent(cpu_before.machine, cpu_after.machine),
        others_pct: load::others_percent(&cpu_before, &cpu_after),
        peak_kib: server.memory_kib("VmHWM")?,
    })
}

/// Rewrites the policy every POLICY_REWRITE_EVERY, B first (A is in force at start).
fn rewrite_policy(path: &Path, a: &str, b: &str, began: Instant, end: Instant) -> anyhow::Result<u64> {
    let mut writes = 0;
    for k in 0..MAX_ITERATIONS {
        let due = began + POLICY_REWRITE_EVERY.mul_f64(k as f64);
        if due >= end {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        replace(path, if k % 2 == 0 { b } else { a }.as_bytes())?;
        writes += 1;
    }
    Ok(writes)
}

struct Rotations {
    count: u64,
    last_fingerprint: u64,
}

/// A new certificate every ROTATE_EVERY, key first: a reader between the two renames sees a
/// new key with the old certificate, which the server must refuse and then pick up whole.
fn rotate_certificates(files: &Files, began: Instant, end: Instant) -> anyhow::Result<Rotations> {
    let mut rotations = Rotations { count: 0, last_fingerprint: 0 };
    for k in 1..MAX_ITERATIONS {
        let due = began + ROTATE_EVERY.mul_f64(k as f64);
        if due >= end {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let (cert_pem, key_pem) = files.authority.issue()?;
        replace(&files.key, key_pem.as_bytes())?;
        replace(&files.cert, cert_pem.as_bytes())?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
        rotations.last_fingerprint = fingerprint(&der);
        rotations.count += 1;
    }
    Ok(rotations)
}

async fn keepalive_worker(
    target: Arc<client::Target>,
    connection: client::Connection,
    end: Instant,
    counts: Arc<Counts>,
) {
    let mut connection = Some(connection);
    for _ in 0..MAX_ITERATIONS {
        if Instant::now() >= end {
            break;
        }
        if connection.is_none() {
            match target.connect().await {
                Ok(fresh) => connection = Some(fresh),
                Err(e) => {
                    count_connect_failure(&counts, &e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        let verdict = ask(&target, open).await;
        if matches!(verdict, Verdict::Failed(_)) {
            connection = None;
        }
        counts.record(&verdict);
    }
}

/// A new connection for every request: a full handshake, or a resumed session if the target
/// allows it.
async fn fresh_worker(target: Arc<client::Target>, end: Instant, counts: Arc<Counts>) {
    for _ in 0..MAX_ITERATIONS {
        if Instant::now() >= end {
            break;
        }
        let stream = match target.connect_tls().await {
            Ok(stream) => stream,
            Err(e) => {
                count_connect_failure(&counts, &anyhow::Error::new(e));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let session = stream.get_ref().1;
        if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            counts.resumed_handshakes.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.full_handshakes.fetch_add(1, Ordering::Relaxed);
            if let Some(shown) = session.peer_certificates().and_then(|chain| chain.first()) {
                let mut seen =
                    counts.certificates_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.insert(fingerprint(shown));
            }
        }
        let mut connection = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok((sender, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
            Err(e) => {
                counts.record(&Verdict::Failed(format!("HTTP/1.1 handshake: {e}")));
                continue;
            }
        };
        counts.record(&ask(&target, &mut connection).await);
    }
}

fn count_connect_failure(counts: &Counts, error: &anyhow::Error) {
    let counter = match error.downcast_ref::<client::ConnectError>() {
        Some(client::ConnectError::Handshake(_)) => &counts.handshake_failures,
        Some(client::ConnectError::Tcp(_)) => &counts.tcp_failures,
        // The HTTP/1.1 handshake over an established TLS session: a failure all the same.
        None => &counts.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    counts.note(format!("connect: {error:#}"));
}

async fn ask(target: &client::Target, connection: &mut client::Connection) -> Verdict {
    let body = target.body().clone();
    match tokio::time::timeout(REQUEST_TIMEOUT, target.exchange(connection, body)).await {
        Ok(Ok((status, answer))) => judge(status, &answer),
        Ok(Err(e)) => Verdict::Failed(format!("{e:#}")),
        Err(_) => Verdict::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// When a connection's bytes last reached the kernel: the end of the last flush that had
/// something to flush. On loopback the kernel hands them to the server's socket at once, so a
/// request flushed before the signal was, from the server's side, received before it.
#[derive(Default)]
struct WriteClock {
    /// (bytes written since the last flush, end of the last flush that carried some)
    state: Mutex<(bool, Option<Instant>)>,
}

impl WriteClock {
    fn last_flush(&self) -> Option<Instant> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1
    }
}

/// A client stream that keeps a WriteClock.
struct Clocked<S> {
    inner: S,
    clock: Arc<WriteClock>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Clocked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Clocked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.clock.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = true;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, std::task::Poll::Ready(Ok(()))) {
            let mut state = self.clock.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.0 {
                *state = (false, Some(Instant::now()));
            }
        }
        flushed
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A keep-alive connection whose writes are clocked.
async fn clocked_connect(target: &client::Target) -> anyhow::Result<(client::Connection, Arc<WriteClock>)> {
    let clock = Arc::new(WriteClock::default());
    let stream = Clocked { inner: target.connect_tls().await?, clock: clock.clone() };
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, clock))
}

/// One request of a SIGTERM trial.
struct Sent {
    /// When it was handed to its connection.
    at: Instant,
    /// When its last bytes reached the kernel, if they did.
    written: Option<Instant>,
    /// The same moment by the wall clock, to compare with the server's log.
    wall: SystemTime,
    answered: Option<Instant>,
    /// Why it failed, if it did.
    failure: Option<String>,
}

struct Trial {
    number: usize,
    /// Requests handed to their connection before the go.
    before: usize,
    /// ... of which still unanswered at the go: those the drain had to finish.
    in_flight: usize,
    /// Handed over before the go and not answered 200, each with how long before the go it
    /// was handed over, and whether (how long before the go) its bytes reached the kernel.
    failed_before: Vec<(Duration, Option<Duration>, String)>,
    /// From the go to the server's "shutting down" log line.
    shutdown_logged: Option<Duration>,
    /// Requests sent before that line and not answered, each with how long before the line it
    /// was sent: those the server's reaction time cost.
    dropped_before_shutdown: Vec<(Duration, String)>,
    /// Sent between the go and the shell's exit: the signal's moment is in there somewhere.
    during: usize,
    during_failed: usize,
    /// Of the failed ones, the earliest sent, as time before the shell exited.
    during_failed_earliest: Option<Duration>,
    after: usize,
    after_ok: usize,
    after_failed: usize,
    /// Why requests sent during or after the signal failed.
    late_errors: FirstErrors,
    /// Last answer after the signal, from the signal.
    last_answer: Option<Duration>,
    kill_took: Duration,
    exit: Option<std::process::ExitStatus>,
    exit_took: Duration,
    drain_timed_out: bool,
}

impl Trial {
    /// Failed requests whose bytes had reached the kernel, and so the server's socket, before
    /// the signal: received by the server and never answered.
    fn lost(&self) -> usize {
        self.failed_before.iter().filter(|(_, written, _)| written.is_some()).count()
    }

    fn summary(&self) -> String {
        format!(
            "SIGTERM trial {}: {} requests sent before the signal ({} in flight), {} failed, {} of them lost (written before the signal); {} sent after ({} answered, {} failed); exit {:?} after {:.0} ms",
            self.number,
            self.before,
            self.in_flight,
            self.failed_before.len(),
            self.lost(),
            self.after,
            self.after_ok,
            self.after_failed,
            self.exit.map(|s| s.to_string()),
            self.exit_took.as_secs_f64() * 1e3
        )
    }
}

fn sigterm_trial(
    workspace: &Workspace,
    files: &Files,
    runtime: &Runtime,
    number: usize,
) -> anyhow::Result<Trial> {
    replace(&files.policy, files.policy_a.as_bytes())?;
    let serve =
        servers::Serve { cert: &files.cert, key: &files.key, policy: &files.policy, flags: &SERVE_FLAGS };
    let mut server = servers::start_serve(&serve, workspace.path(&format!("sigterm-{number}.log")))?;
    let target = Arc::new(client::Target::new(server.addr, &files.ca, files.review.clone())?);
    let mut connections = Vec::with_capacity(KEEPALIVE_WORKERS);
    for _ in 0..KEEPALIVE_WORKERS {
        connections.push(runtime.block_on(clocked_connect(&target)).context("cannot connect")?);
    }
    let signalled = Arc::new(AtomicBool::new(false));
    let hard_stop = Instant::now() + LOAD_BEFORE_SIGNAL + AFTER_SIGNAL;
    let workers: Vec<_> = connections
        .into_iter()
        .map(|connection| runtime.spawn(until_gone(target.clone(), connection, signalled.clone(), hard_stop)))
        .collect();
    let trigger = server.arm_terminate()?;
    std::thread::sleep(LOAD_BEFORE_SIGNAL);
    let (signal_start, signal_wall) = (Instant::now(), SystemTime::now());
    trigger.fire()?;
    let signal_end = Instant::now();
    signalled.store(true, Ordering::Relaxed);
    let exit = server.wait_for_exit(EXIT_TIMEOUT)?;
    let exit_took = signal_start.elapsed();
    let mut sent = Vec::new();
    for worker in workers {
        sent.extend(runtime.block_on(worker)?);
    }
    let log = fs::read_to_string(&server.log).unwrap_or_default();
    let shutdown = log
        .lines()
        .find(|line| line.contains(r#""message":"shutting down: draining in-flight requests""#))
        .and_then(|line| line.split_once(r#""timestamp":""#))
        .and_then(|(_, rest)| parse_timestamp(rest.split('"').next()?));

    let before: Vec<&Sent> = sent.iter().filter(|s| s.at < signal_start).collect();
    let during: Vec<&Sent> = sent.iter().filter(|s| s.at >= signal_start && s.at < signal_end).collect();
    let after: Vec<&Sent> = sent.iter().filter(|s| s.at >= signal_end).collect();
    Ok(Trial {
        shutdown_logged: shutdown.and_then(|at| at.duration_since(signal_wall).ok()),
        dropped_before_shutdown: shutdown.map_or_else(Vec::new, |shutdown| {
            sent.iter()
                .filter_map(|s| Some((shutdown.duration_since(s.wall).ok()?, s.failure.clone()?)))
                .collect()
        }),
        number,
        before: before.len(),
        in_flight: before.iter().filter(|s| s.answered.is_none_or(|t| t >= signal_start)).count(),
        failed_before: before
            .iter()
            .filter_map(|s| {
                let written = s.written.and_then(|at| signal_start.checked_duration_since(at));
                Some((signal_start.saturating_duration_since(s.at), written, s.failure.clone()?))
            })
            .collect(),
        during: during.len(),
        during_failed: during.iter().filter(|s| s.failure.is_some()).count(),
        during_failed_earliest: during
            .iter()
            .filter(|s| s.failure.is_some())
            .map(|s| signal_end.saturating_duration_since(s.at))
            .max(),
        after: after.len(),
        after_ok: after.iter().filter(|s| s.failure.is_none()).count(),
        after_failed: after.iter().filter(|s| s.failure.is_some()).count(),
        late_errors: {
            let mut errors = FirstErrors::default();
            during.iter().chain(&after).filter_map(|s| s.failure.as_ref()).for_each(|e| errors.note(e));
            errors
        },
        last_answer: sent
            .iter()
            .filter(|s| s.failure.is_none())
            .filter_map(|s| s.answered?.checked_duration_since(signal_start))
            .max(),
        kill_took: signal_end - signal_start,
        exit,
        exit_took,
        drain_timed_out: log.contains("drain timed out"),
    })
}

/// A closed loop that records every request, until the server is gone: after the signal, the
/// first connection that cannot be made ends it.
async fn until_gone(
    target: Arc<client::Target>,
    connection: (client::Connection, Arc<WriteClock>),
    signalled: Arc<AtomicBool>,
    hard_stop: Instant,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut connection = Some(connection);
    for _ in 0..MAX_ITERATIONS {
        if Instant::now() >= hard_stop {
            break;
        }
        if connection.is_none() {
            match clocked_connect(&target).await {
                Ok(fresh) => connection = Some(fresh),
                Err(_) if signalled.load(Ordering::Relaxed) => break,
                Err(e) => {
                    let (at, wall) = (Instant::now(), SystemTime::now());
                    let failure = Some(format!("connect: {e:#}"));
                    sent.push(Sent { at, written: None, wall, answered: None, failure });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some((open, clock)) = connection.as_mut() else { continue };
        let flushed_before = clock.last_flush();
        let (at, wall) = (Instant::now(), SystemTime::now());
        let failure = match ask(&target, open).await {
            Verdict::Allowed => None,
            Verdict::DeniedBoth => Some("denied, though policy A is in force".to_owned()),
            Verdict::Inconsistent(text) | Verdict::Failed(text) => Some(text),
        };
        // A flush after the one before the request carried it (hyper writes one message at a
        // time on a connection).
        let written = clock.last_flush().filter(|flushed| Some(*flushed) != flushed_before);
        if failure.is_some() {
            connection = None;
        }
        let answered = failure.is_none().then(Instant::now);
        sent.push(Sent { at, written, wall, answered, failure });
    }
    sent
}

/// `2025-03-14T09:26:53.123456Z` (UTC, as tracing's JSON lines write it) as a SystemTime.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let time = time.strip_suffix('Z')?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|part| part.parse::<u64>().ok());
    let (hours, minutes, seconds) = (hms.next()??, hms.next()??, hms.next()??);
    let nanos: u64 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let secs = days * 86_400 + hours * 3_600 + minutes * 60 + seconds;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// Days from 1970-01-01 to a Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn failures(churn: &Churn, trials: &[Trial]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(churn.failed == 0, format!("churn: {} requests failed", churn.failed));
    check(churn.handshake_failures == 0, format!("churn: {} handshakes failed", churn.handshake_failures));
    check(churn.tcp_failures == 0, format!("churn: {} TCP connects failed", churn.tcp_failures));
    check(churn.inconsistent == 0, format!("churn: {} answers mixed two policies", churn.inconsistent));
    check(churn.allowed > 0 && churn.denied > 0, "churn: the answers did not see both policies".to_owned());
    check(churn.certificates_seen > 1, "churn: full handshakes never saw a rotated certificate".to_owned());
    check(
        churn.last_certificate_served,
        "churn: the last certificate issued was not being served".to_owned(),
    );
    for trial in trials {
        check(
            trial.lost() == 0,
            format!(
                "SIGTERM trial {}: {} requests written before the signal were never answered",
                trial.number,
                trial.lost()
            ),
        );
        check(
            trial.shutdown_logged.is_some(),
            format!("SIGTERM trial {}: no \"shutting down\" line with a readable timestamp", trial.number),
        );
        check(
            trial.exit.is_some_and(|status| status.success()),
            format!("SIGTERM trial {}: exit {:?}", trial.number, trial.exit.map(|s| s.to_string())),
        );
    }
    failures
}

fn render(
    churn: &Churn,
    trials: &[Trial],
    busy_before: f64,
    failures: &[String],
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# registry-gate under change: policy reloads, certificate rotation, SIGTERM\n");
    if !failures.is_empty() {
        let _ = writeln!(out, "**!!! {} CHECKS FAILED: see the end of the report. !!!**\n", failures.len());
    }
    let _ = writeln!(out, "- Command: `{COMMAND}`");
    let _ = writeln!(
        out,
        "- Machine: {} CPUs (`nproc`), {}; client and server share them. Busy in the second before the run: {busy_before:.0}%.",
        report::nproc(),
        report::cpu_model()
    );
    let _ = writeln!(
        out,
        "- Server: `registry-gate serve {}`, a {POLICY_REGISTRIES}-registry policy.",
        SERVE_FLAGS.join(" ")
    );
    let _ = writeln!(
        out,
        "- Review: a Pod with two images, X = `{IMAGE_X}` and Y = `{IMAGE_Y}`. Policy A registers both registries; policy B neither. An answer must be allowed, or denied naming both.\n"
    );
    let _ = writeln!(out, "## Churn ({:.0} s)\n", churn.wall.as_secs_f64());
    let _ = writeln!(
        out,
        "Load: {KEEPALIVE_WORKERS} keep-alive connections in a closed loop and {FRESH_WORKERS} workers making a new connection for every request (half of them with full TLS handshakes, half resuming sessions: a resumed session shows no certificate, so only full handshakes show whether the new one is served). The policy file was rewritten every {} ms (new file + rename), alternating A and B; a new serving certificate from the same CA every {} s (key, then certificate, each new file + rename).\n",
        POLICY_REWRITE_EVERY.as_millis(),
        ROTATE_EVERY.as_secs()
    );
    let _ = writeln!(out, "| figure | value |");
    let _ = writeln!(out, "|---|--:|");
    let rows: [(&str, String); 22] = [
        ("requests answered or failed", churn.requests.to_string()),
        ("allowed (policy A)", churn.allowed.to_string()),
        ("denied naming X and Y (policy B)", churn.denied.to_string()),
        ("inconsistent answers", churn.inconsistent.to_string()),
        ("failed requests", churn.failed.to_string()),
        ("new connections with a full TLS handshake", churn.full_handshakes.to_string()),
        ("new connections resuming a TLS session", churn.resumed_handshakes.to_string()),
        ("failed TLS handshakes", churn.handshake_failures.to_string()),
        ("failed TCP connects", churn.tcp_failures.to_string()),
        ("policy file rewrites", churn.policy_writes.to_string()),
        (
            "policy generations (growth of registry_gate_policy_generation)",
            format!("{:.0}", churn.generations),
        ),
        (
            "policy reload failures (growth of registry_gate_policy_reload_failures_total)",
            format!("{:.0}", churn.reload_failures),
        ),
        (
            "log: \"policy loaded\" / \"policy refused\"",
            format!("{} / {}", churn.log_policy_loaded, churn.log_policy_refused),
        ),
        ("certificate rotations", churn.rotations.to_string()),
        ("distinct certificates shown in full handshakes", churn.certificates_seen.to_string()),
        ("log: \"serving certificate reloaded\"", churn.log_certificate_reloaded.to_string()),
        (
            "log: \"new certificate refused\" (key and certificate caught between renames)",
            churn.log_certificate_refused.to_string(),
        ),
        ("last certificate issued is the one served", churn.last_certificate_served.to_string()),
        (
            "server CPU s / client CPU s",
            format!("{:.1} / {:.1}", churn.server_cpu.as_secs_f64(), churn.client_cpu.as_secs_f64()),
        ),
        (
            "machine CPU busy / of it, other processes",
            format!("{:.0}% / {:.0}%", churn.machine_busy_pct, churn.others_pct),
        ),
        ("server peak RSS (VmHWM) MiB", format!("{:.1}", observe::mib(churn.peak_kib))),
        ("first errors", churn.first_errors.clone()),
    ];
    for (figure, value) in rows {
        let _ = writeln!(out, "| {figure} | {value} |");
    }
    out.push('\n');
    let _ = writeln!(out, "## SIGTERM under load\n");
    let _ = writeln!(
        out,
        "Each trial: a fresh server with policy A, {KEEPALIVE_WORKERS} keep-alive connections in a closed loop for {} s, then `kill -TERM` from a shell started beforehand and told to go (so that no process start lies between the go and the signal). \"Before\" is sent before the go; \"during\" between the go and the shell's exit (the signal lands in there); \"after\" once it had exited. A request counts as sent when the client hands it to its connection; it is written when its last bytes reach the kernel (the end of the flush that carried them; on loopback the server's socket has them then). Lost: written before the go, and not answered 200. \"In flight\": sent before, and unanswered at the go. The \"shutting down\" line is the server's own, logged just before it closes idle connections: how long after the go the server acted, and how many failed requests were sent before it did.\n",
        LOAD_BEFORE_SIGNAL.as_secs()
    );
    let _ = writeln!(
        out,
        "| trial | sent before | of them in flight at the go | failed | of them written before the go: lost | sent during | failed | earliest failed, ms before the shell exited | sent after | answered | failed | go to shell exit ms | \"shutting down\" logged after ms | failed, sent before that line | last answer after the go ms | exit | exited after ms | drain timed out |"
    );
    let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|");
    for t in trials {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {:.0} | {} |",
            t.number,
            t.before,
            t.in_flight,
            t.failed_before.len(),
            t.lost(),
            t.during,
            t.during_failed,
            t.during_failed_earliest.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1e3)),
            t.after,
            t.after_ok,
            t.after_failed,
            t.kill_took.as_secs_f64() * 1e3,
            t.shutdown_logged.map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            t.dropped_before_shutdown.len(),
            t.last_answer.map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            t.exit.map_or("still running".to_owned(), |s| s.to_string()),
            t.exit_took.as_secs_f64() * 1e3,
            t.drain_timed_out
        );
    }
    out.push('\n');
    let mut late = FirstErrors::default();
    for trial in trials {
        late.merge_ref(&trial.late_errors);
    }
    let _ = writeln!(
        out,
        "Why requests sent during or after the signal failed (all trials): {}.\n",
        late.render()
    );
    for t in trials.iter().filter(|t| !t.failed_before.is_empty()) {
        let _ = writeln!(
            out,
            "Trial {}: sent before the go and not answered (how long before the go, why):\n",
            t.number
        );
        for (early, written, why) in t.failed_before.iter().take(20) {
            let why = why.replace('`', "'").replace('\n', " ");
            let written = written.map_or("not written before the go".to_owned(), |w| {
                format!("**written {:.3} ms before the go: lost**", w.as_secs_f64() * 1e3)
            });
            let _ =
                writeln!(out, "- handed over {:.3} ms before, {written}: `{why}`", early.as_secs_f64() * 1e3);
        }
        out.push('\n');
    }
    let dropped: Vec<Duration> =
        trials.iter().flat_map(|t| t.dropped_before_shutdown.iter().map(|(early, _)| *early)).collect();
    if let (Some(least), Some(most)) = (dropped.iter().min(), dropped.iter().max()) {
        let _ = writeln!(
            out,
            "Failed requests sent before the server's \"shutting down\" line: {} over all trials, sent {:.2} to {:.2} ms before it. They went out on keep-alive connections between two requests; the server closes such a connection at once on shutdown, without reading a request already on its way.\n",
            dropped.len(),
            least.as_secs_f64() * 1e3,
            most.as_secs_f64() * 1e3
        );
    }
    if failures.is_empty() {
        let _ = writeln!(out, "Checks: all passed.\n");
    } else {
        let _ = writeln!(out, "## FAILED CHECKS\n");
        for failure in failures {
            let _ = writeln!(out, "- {failure}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "Whole run: {:.0} s.", elapsed.as_secs_f64());
    out
}
