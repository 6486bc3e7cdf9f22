//! `abuse` mode: is a well-behaved client still served while other clients misbehave?
//!
//! Run: `cargo bench --bench loadgen -- abuse` (about 70 s once built). Prints a Markdown report
//! and writes it to `target/loadgen-abuse.md`; exits non-zero if the well-behaved client saw a
//! failure other than a 503, or the audit log went over its rate.
//!
//! One `registry-gate serve` (10,000-registry policy, default limits), three phases of 20 s:
//!
//! 1. **alone**: the well-behaved client only. 16 keep-alive HTTP/1.1 connections send 500
//!    allowed reviews a second between them on a fixed schedule; latency runs from the
//!    scheduled send time, so a request queued behind a slow answer is charged for the wait.
//! 2. **under attack**: the same client while, from 3 s before its window until its end:
//!    - a flood: 64 connections in a closed loop sending reviews whose three images all come
//!      from unregistered registries, so every answer is a denial that wants an audit line;
//!    - slowloris: 400 connections that complete TLS, then send a request head a byte every
//!      2 s, reconnecting whenever the server drops them;
//!    - body tricklers: 16 connections that declare a 3 MiB body and send a byte a second;
//!    - HTTP/2 stallers: 4 connections each keeping 32 streams (the server's maximum) open on a
//!      declared 3 MiB body of which 16 KiB is sent, re-opening a stream once it is answered;
//!    - HTTP/2 rapid reset: 2 connections opening streams and cancelling them (RST_STREAM)
//!      at once, in bursts, up to 5,000 a second each.
//! 3. **budget filler**: the same client against 24 connections that stall on bodies like the
//!    tricklers but halve their declared size after every 503 until it fits: a client that
//!    fills the server's body budget to the last few KiB.
//!
//! Throughout: the server's RSS every 250 ms, `registry_gate_connections_open` every second,
//! and the growth of its counters over each phase. The server logs to a file; the audit lines
//! in it are counted per wall-clock second from their own timestamps.
//!
//! The attackers connect from 127.0.0.2 and the well-behaved client from 127.0.0.1, so the
//! server sees two clients, as it would see the API server and a misbehaving pod, and each gets
//! its own share of the body budget.
//!
//! The attackers run on a runtime of their own (2 threads) and the well-behaved client on
//! another (1 thread and the schedule's ticker), but all of them share the machine's cores
//! with the server: on a small machine the flood's client side takes CPU the server would use.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};

use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use super::observe::{FirstErrors, LogRates, Sampler, Samples, Scrape, mib, ms};
use super::*;

const COMMAND: &str = "cargo bench --bench loadgen -- abuse";
/// The measured window of each phase.
const PHASE: Duration = Duration::from_secs(20);
/// Attackers start this long before the well-behaved client's window, so that it opens on an
/// attack already at full strength.
const RAMP: Duration = Duration::from_secs(3);
const GOOD_CONNECTIONS: usize = 16;
const GOOD_RATE: f64 = 500.0;
const FLOOD_CONNECTIONS: usize = 64;
const SLOWLORIS_CONNECTIONS: usize = 400;
const SLOW_BYTE_GAP: Duration = Duration::from_secs(2);
const TRICKLE_CONNECTIONS: usize = 16;
const TRICKLE_BYTE_GAP: Duration = Duration::from_secs(1);
/// What the tricklers and HTTP/2 streams declare: the largest body the server accepts.
const DECLARED_BODY: usize = 3 * 1024 * 1024;
const H2_STALL_CONNECTIONS: usize = 4;
/// The server's `max_concurrent_streams`.
const H2_STREAMS: usize = 32;
/// What a stalled HTTP/2 stream sends of its body before it stalls.
const H2_STALL_PREFIX: usize = 16 * 1024;
const H2_RESET_CONNECTIONS: usize = 2;
const RESET_BURST: u64 = 50;
const RESET_PAUSE: Duration = Duration::from_millis(10);
const FILL_CONNECTIONS: usize = 24;
/// The filler stops halving here: a smaller body could not keep out an 8 KB review.
const FILL_SMALLEST: usize = 1024;
/// Where every attacker connects from; the well-behaved client connects from 127.0.0.1.
const ATTACKER_SOURCE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
/// Bounds on every attacker's loop, besides its deadline.
const MAX_ATTEMPTS: u64 = 100_000;
const MAX_RESETS_PER_CONNECTION: u64 = 200_000;
/// How long the server may take to drop every connection between phases.
const SETTLE: Duration = Duration::from_secs(15);
/// The request head slowloris sends a byte at a time; it never gets to the end of it.
const SLOW_HEAD: &[u8] = b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 8000\r\nUser-Agent: slowloris\r\n\r\n";
/// What the tricklers send of their bodies, a byte at a time.
const DRIP: &[u8] = &[b' '; 64];

#[derive(Clone, Copy, PartialEq)]
enum Attack {
    None,
    All,
    FillBudget,
}

impl Attack {
    fn label(self) -> &'static str {
        match self {
            Attack::None => "alone",
            Attack::All => "under attack",
            Attack::FillBudget => "budget filler",
        }
    }
}

/// Everything a phase needs.
struct Setup {
    server: servers::ServerProcess,
    operations: SocketAddr,
    /// HTTP/1.1 to the webhook; its body is the allowed review. The well-behaved client's.
    h1: Arc<client::Target>,
    /// The attackers' targets, HTTP/1.1 and HTTP/2, from ATTACKER_SOURCE.
    attack_h1: Arc<client::Target>,
    h2: Arc<client::Target>,
    allowed: Bytes,
    denied: Bytes,
    good_runtime: Runtime,
    attack_runtime: Runtime,
}

/// The whole mode; returns the number of failed checks.
pub fn run() -> anyhow::Result<u64> {
    let started = Instant::now();
    let busy_before = load::machine_busy_over(Duration::from_secs(1))?;
    let workspace = Workspace::create()?;
    let files = setup::prepare(&workspace)?;
    let allowed = Bytes::from(fs::read(&files.review)?);
    let denied = Bytes::from(serde_json::to_vec(&denied_review())?);
    let server = servers::start_registry_gate(&workspace, &files)?;
    let operations = server.operations.context("registry-gate has an operations port")?;
    let startup_rss = server.memory_kib("VmRSS")?;
    let build = |threads: usize| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    let mut setup = Setup {
        h1: Arc::new(client::Target::new(server.addr, &files.ca, allowed.clone())?),
        attack_h1: Arc::new(
            client::Target::new(server.addr, &files.ca, allowed.clone())?.with_source(ATTACKER_SOURCE),
        ),
        h2: Arc::new(
            client::Target::with_alpn(server.addr, &files.ca, allowed.clone(), b"h2")?
                .with_source(ATTACKER_SOURCE),
        ),
        server,
        operations,
        allowed,
        denied,
        good_runtime: build(1)?,
        attack_runtime: build(2)?,
    };
    eprintln!(
        "loadgen abuse: workspace {}, allowed review {} bytes, denied review {} bytes",
        workspace.dir.display(),
        setup.allowed.len(),
        setup.denied.len()
    );
    let mut phases = Vec::new();
    for attack in [Attack::None, Attack::All, Attack::FillBudget] {
        settle(&setup)?;
        let phase = run_phase(&mut setup, attack)?;
        eprintln!("loadgen abuse: {}", phase.summary());
        phases.push(phase);
    }
    let peak_kib = setup.server.memory_kib("VmHWM")?;
    let failures = failures(&phases);
    let text = render(&phases, busy_before, startup_rss, peak_kib, &failures, started.elapsed());
    println!("{text}");
    let out = report::write_as("loadgen-abuse.md", &text)?;
    eprintln!("loadgen abuse: wrote {} in {:.0} s", out.display(), started.elapsed().as_secs_f64());
    if failures.is_empty() {
        workspace.clean_finish();
    }
    Ok(failures.len() as u64)
}

/// Waits until the server holds no webhook connection, so that a phase starts from the same
/// place as the others.
fn settle(setup: &Setup) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let open = Scrape::take(setup.operations)?.value("registry_gate_connections_open");
        if open == 0.0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!(
                "loadgen abuse: WARNING: {open} connections still open {SETTLE:?} after the last phase"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A review of a Pod whose three images come from registries the policy does not hold.
fn denied_review() -> Value {
    let mut review = setup::admission_review();
    let images = [
        "evil.example/miner:1.0",
        "unregistered.example:5000/tools/scan:2.1",
        "docker.io/attacker/payload:latest",
    ];
    if let Some(containers) =
        review.pointer_mut("/request/object/spec/containers").and_then(Value::as_array_mut)
    {
        for (container, image) in containers.iter_mut().zip(images) {
            container["image"] = json!(image);
        }
    }
    review
}

/// One phase's figures.
struct Phase {
    attack: Attack,
    good: Good,
    samples: Samples,
    /// VmHWM at the end of the phase: the process's peak so far.
    hwm_kib: u64,
    server_cpu: Duration,
    /// CPU time of this process: the well-behaved client and the attackers.
    client_cpu: Duration,
    /// Percent of all cores busy over the phase, and the part neither server nor client used.
    machine_busy_pct: f64,
    others_pct: f64,
    wall: Duration,
    before: Scrape,
    after: Scrape,
    log: LogRates,
    attackers: Vec<(&'static str, Arc<Tally>)>,
}

impl Phase {
    fn summary(&self) -> String {
        let g = &self.good;
        format!(
            "{}: {} ok, {} shed (503), {} errors; p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms; RSS max {:.1} MiB; audit lines max {}/s",
            self.attack.label(),
            g.ok,
            g.shed,
            g.errors(),
            ms(&g.latency, 0.5),
            ms(&g.latency, 0.99),
            ms(&g.latency, 0.999),
            mib(self.samples.rss_kib.iter().copied().max().unwrap_or(0)),
            self.log.max_audit_lines_per_second
        )
    }
}

fn run_phase(setup: &mut Setup, attack: Attack) -> anyhow::Result<Phase> {
    let server = &setup.server;
    let before = Scrape::take(setup.operations)?;
    let log_from = observe::log_offset(&server.log);
    let cpu_before = load::CpuSample::take(server)?;
    // The well-behaved client's connections exist before the attack, as the API server's
    // keep-alive connections would.
    let mut connections = Vec::with_capacity(GOOD_CONNECTIONS);
    for _ in 0..GOOD_CONNECTIONS {
        let connection = setup.good_runtime.block_on(setup.h1.connect());
        connections.push(connection.context("the well-behaved client cannot connect")?);
    }
    let began = Instant::now();
    let ramp = if attack == Attack::None { Duration::ZERO } else { RAMP };
    let window_start = began + ramp;
    let attack_end = window_start + PHASE;
    let sampler = Sampler::start(server.pid(), setup.operations, ramp + PHASE + SETTLE);
    let (handles, attackers) = launch(setup, attack, began, attack_end);
    let good = well_behaved(setup, connections, window_start)?;
    setup.attack_runtime.block_on(async {
        for handle in handles {
            // Every attacker stops at its deadline; this bound is for a bug in one of them.
            let _ = tokio::time::timeout(SETTLE, handle).await;
        }
    });
    let samples = sampler.finish();
    let server = &mut setup.server;
    server.ensure_running()?;
    let after = Scrape::take(setup.operations)?;
    let log_to = observe::log_offset(&server.log);
    let log = LogRates::of(&observe::log_between(&server.log, log_from, log_to)?);
    let cpu_after = load::CpuSample::take(server)?;
    Ok(Phase {
        attack,
        good,
        samples,
        hwm_kib: server.memory_kib("VmHWM")?,
        server_cpu: cpu_after.server.saturating_sub(cpu_before.server),
        client_cpu: cpu_after.client.saturating_sub(cpu_before.client),
        machine_busy_pct: load::busy_percent(cpu_before.machine, cpu_after.machine),
        others_pct: load::others_percent(&cpu_before, &cpu_after),
        wall: began.elapsed(),
        before,
        after,
        log,
        attackers,
    })
}

type Handles = Vec<tokio::task::JoinHandle<()>>;

/// Starts a phase's attackers on their runtime; each stops by itself at `deadline`.
fn launch(
    setup: &Setup,
    attack: Attack,
    began: Instant,
    deadline: Instant,
) -> (Handles, Vec<(&'static str, Arc<Tally>)>) {
    let runtime = &setup.attack_runtime;
    let mut handles = Vec::new();
    let mut tallies = Vec::new();
    let mut tally = |name: &'static str| {
        let tally = Arc::new(Tally::default());
        tallies.push((name, tally.clone()));
        tally
    };
    match attack {
        Attack::None => {}
        Attack::All => {
            let flood = tally("flood (64 connections, denied reviews)");
            for _ in 0..FLOOD_CONNECTIONS {
                let (target, body) = (setup.attack_h1.clone(), setup.denied.clone());
                handles.push(runtime.spawn(flood_worker(target, body, deadline, flood.clone())));
            }
            let slow = tally("slowloris (400 connections, a head byte every 2 s)");
            for i in 0..SLOWLORIS_CONNECTIONS {
                // Spread over the first second, as a real attack's connections would be.
                let start = began + Duration::from_secs(1).mul_f64(i as f64 / SLOWLORIS_CONNECTIONS as f64);
                handles.push(runtime.spawn(slowloris(
                    setup.attack_h1.clone(),
                    start,
                    deadline,
                    slow.clone(),
                )));
            }
            let trickle = tally("body tricklers (16 connections, 3 MiB declared, a byte a second)");
            for _ in 0..TRICKLE_CONNECTIONS {
                let target = setup.attack_h1.clone();
                handles.push(runtime.spawn(trickler(target, false, deadline, trickle.clone())));
            }
            let stall = tally("HTTP/2 stallers (4 connections x 32 streams, 3 MiB declared)");
            for _ in 0..H2_STALL_CONNECTIONS {
                handles.push(runtime.spawn(h2_staller(setup.h2.clone(), deadline, stall.clone())));
            }
            let reset = tally("HTTP/2 rapid reset (2 connections)");
            for _ in 0..H2_RESET_CONNECTIONS {
                handles.push(runtime.spawn(h2_resetter(setup.h2.clone(), deadline, reset.clone())));
            }
        }
        Attack::FillBudget => {
            let fill = tally("budget filler (24 connections, halving the declared body after a 503)");
            for _ in 0..FILL_CONNECTIONS {
                handles.push(runtime.spawn(trickler(setup.attack_h1.clone(), true, deadline, fill.clone())));
            }
        }
    }
    (handles, tallies)
}

/// What happened to one kind of attacker: counts by outcome, the first errors, and how long
/// its connections or requests lasted.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<FirstErrors>,
    lifetimes: Mutex<Vec<Duration>>,
}

impl Tally {
    fn add(&self, what: &str) {
        self.add_n(what, 1);
    }

    fn add_n(&self, what: &str, n: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(what.to_owned()).or_default() += n;
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) {
        self.add(what);
        let mut errors = self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        errors.note(format!("{what}: {error}"));
    }

    fn lifetime(&self, lasted: Duration) {
        let mut lifetimes = self.lifetimes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a few tens of thousands at most in 20 s.
        if lifetimes.len() < 1_000_000 {
            lifetimes.push(lasted);
        }
    }

    fn render(&self) -> String {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text: Vec<String> = counts.iter().map(|(what, n)| format!("{what}: {n}")).collect();
        let mut lifetimes = self.lifetimes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !lifetimes.is_empty() {
            lifetimes.sort();
            let at = |q: f64| lifetimes[((lifetimes.len() - 1) as f64 * q) as usize].as_secs_f64();
            text.push(format!(
                "lasted min {:.2} s, median {:.2} s, max {:.2} s (n={})",
                at(0.0),
                at(0.5),
                at(1.0),
                lifetimes.len()
            ));
        }
        let errors = self.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        format!("{}; first errors: {}", text.join(", "), errors.render())
    }
}

/// The well-behaved client's figures.
struct Good {
    /// Scheduled send to the last byte of a 200 answer, in ns.
    latency: Histogram<u64>,
    /// How late requests left after their slot, in ns.
    lag: Histogram<u64>,
    scheduled: u64,
    ok: u64,
    shed: u64,
    other_status: u64,
    transport: u64,
    timeouts: u64,
    connect_failures: u64,
    /// Slots with no connection to send on, or past the hard stop.
    not_sent: u64,
    first_errors: FirstErrors,
}

impl Good {
    fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds");
        Good {
            latency: histogram(),
            lag: histogram(),
            scheduled: 0,
            ok: 0,
            shed: 0,
            other_status: 0,
            transport: 0,
            timeouts: 0,
            connect_failures: 0,
            not_sent: 0,
            first_errors: FirstErrors::default(),
        }
    }

    /// Everything but success and shedding: what a well-behaved client must never see.
    fn errors(&self) -> u64 {
        self.other_status + self.transport + self.timeouts + self.connect_failures + self.not_sent
    }

    fn merge(&mut self, other: Good) {
        self.latency.add(&other.latency).expect("histograms of equal bounds");
        self.lag.add(&other.lag).expect("histograms of equal bounds");
        self.scheduled += other.scheduled;
        self.ok += other.ok;
        self.shed += other.shed;
        self.other_status += other.other_status;
        self.transport += other.transport;
        self.timeouts += other.timeouts;
        self.connect_failures += other.connect_failures;
        self.not_sent += other.not_sent;
        self.first_errors.merge(other.first_errors);
    }
}

/// The open loop of `load::open_loop` at a fixed rate, on the well-behaved client's runtime,
/// keeping 503s apart from errors.
fn well_behaved(setup: &Setup, connections: Vec<client::Connection>, start: Instant) -> anyhow::Result<Good> {
    let runtime = &setup.good_runtime;
    let end = start + PHASE;
    let mut slots = Vec::with_capacity(connections.len());
    let mut workers = Vec::with_capacity(connections.len());
    for connection in connections {
        let (slot_tx, slot_rx) = tokio::sync::mpsc::unbounded_channel();
        slots.push(slot_tx);
        let (target, body) = (setup.h1.clone(), setup.allowed.clone());
        workers.push(runtime.spawn(good_worker(target, body, connection, slot_rx, end + REQUEST_TIMEOUT)));
    }
    let gap = Duration::from_secs_f64(1.0 / GOOD_RATE);
    let ticker = std::thread::spawn(move || load::tick(&slots, start, gap, end));
    ticker.join().map_err(|_| anyhow::anyhow!("the ticker thread panicked"))?;
    let mut good = Good::new();
    for worker in workers {
        good.merge(runtime.block_on(worker)?);
    }
    Ok(good)
}

async fn good_worker(
    target: Arc<client::Target>,
    body: Bytes,
    connection: client::Connection,
    mut slots: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    hard_stop: Instant,
) -> Good {
    let mut good = Good::new();
    let mut connection = Some(connection);
    while let Some(scheduled) = slots.recv().await {
        good.scheduled += 1;
        if Instant::now() >= hard_stop {
            good.not_sent += 1;
            continue;
        }
        if connection.is_none() {
            match tokio::time::timeout(REQUEST_TIMEOUT, target.connect()).await {
                Ok(Ok(fresh)) => connection = Some(fresh),
                Ok(Err(e)) => {
                    good.connect_failures += 1;
                    good.first_errors.note(format!("reconnect: {e:#}"));
                }
                Err(_) => {
                    good.connect_failures += 1;
                    good.first_errors.note("reconnect: no connection within the request timeout");
                }
            }
        }
        let Some(open) = connection.as_mut() else {
            good.not_sent += 1;
            continue;
        };
        let sent = Instant::now();
        good.lag.saturating_record(load::nanos(sent.saturating_duration_since(scheduled)));
        match tokio::time::timeout(REQUEST_TIMEOUT, target.exchange(open, body.clone())).await {
            Ok(Ok((status, answer))) if status == 200 && contains(&answer, br#""allowed":true"#) => {
                good.latency.saturating_record(load::nanos(scheduled.elapsed()));
                good.ok += 1;
            }
            Ok(Ok((status, _))) if status == 503 => good.shed += 1,
            Ok(Ok((status, answer))) => {
                good.other_status += 1;
                let text = String::from_utf8_lossy(&answer[..answer.len().min(160)]).into_owned();
                good.first_errors.note(format!("status {status}: {text}"));
            }
            Ok(Err(e)) => {
                good.transport += 1;
                good.first_errors.note(format!("{e:#}"));
                connection = None;
            }
            Err(_) => {
                good.timeouts += 1;
                good.first_errors.note(format!("no answer within {REQUEST_TIMEOUT:?}"));
                connection = None;
            }
        }
    }
    good
}

/// A closed loop of denied reviews on one connection.
async fn flood_worker(target: Arc<client::Target>, body: Bytes, deadline: Instant, tally: Arc<Tally>) {
    let mut connection = None;
    for _ in 0..MAX_REQUESTS_PER_WORKER {
        if Instant::now() >= deadline {
            break;
        }
        if connection.is_none() {
            match tokio::time::timeout_at(deadline.into(), target.connect()).await {
                Ok(Ok(fresh)) => connection = Some(fresh),
                Ok(Err(e)) => {
                    tally.error("connect failed", format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => break,
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        match tokio::time::timeout_at(deadline.into(), target.exchange(open, body.clone())).await {
            Ok(Ok((status, answer))) if status == 200 && contains(&answer, br#""allowed":false"#) => {
                tally.add("denied (200)");
            }
            Ok(Ok((status, _))) => tally.add(&format!("status {}", status.as_u16())),
            Ok(Err(e)) => {
                tally.error("request failed", format!("{e:#}"));
                connection = None;
            }
            Err(_) => break,
        }
    }
}

/// How a slow connection ended.
struct SlowEnd {
    /// The status line's code, when the server answered.
    status: Option<u16>,
    /// The deadline came first: the connection was still open.
    at_deadline: bool,
    lasted: Duration,
}

/// Sends `head` at once, then `drip` a byte every `gap`, until the server answers or closes
/// the connection or the deadline comes.
async fn slow_send(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    head: &[u8],
    drip: &[u8],
    gap: Duration,
    deadline: Instant,
) -> SlowEnd {
    let opened = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut end = SlowEnd { status: None, at_deadline: false, lasted: Duration::ZERO };
    let wrote = writer.write_all(head).await.and(writer.flush().await);
    if wrote.is_ok() {
        let (mut sent, mut next) = (0, tokio::time::Instant::now());
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        loop {
            tokio::select! {
                read = reader.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buffer[..n]);
                        // "HTTP/1.1 503 ..."
                        if answer.len() >= 12 {
                            end.status = std::str::from_utf8(&answer[9..12]).ok().and_then(|c| c.parse().ok());
                            break;
                        }
                    }
                },
                () = tokio::time::sleep_until(next) => {
                    if let Some(byte) = drip.get(sent..sent + 1) {
                        if writer.write_all(byte).await.and(writer.flush().await).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    next += gap;
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    end.at_deadline = true;
                    break;
                }
            }
        }
    }
    end.lasted = opened.elapsed();
    end
}

/// A TLS connection for a raw attacker, counted; `None` after a pause when it fails.
async fn raw_connect(
    target: &client::Target,
    deadline: Instant,
    tally: &Tally,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout_at(deadline.into(), target.connect_tls()).await {
        Ok(Ok(stream)) => {
            tally.add("connections");
            Some(stream)
        }
        Ok(Err(e)) => {
            let what = match e {
                client::ConnectError::Tcp(_) => "TCP connect failed",
                client::ConnectError::Handshake(_) => "TLS handshake failed",
            };
            tally.error(what, e);
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
        Err(_) => None,
    }
}

async fn slowloris(target: Arc<client::Target>, start: Instant, deadline: Instant, tally: Arc<Tally>) {
    tokio::time::sleep_until(start.into()).await;
    for _ in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline {
            break;
        }
        let Some(stream) = raw_connect(&target, deadline, &tally).await else { continue };
        let end = slow_send(stream, b"", SLOW_HEAD, SLOW_BYTE_GAP, deadline).await;
        match end.status {
            Some(status) => tally.add(&format!("answered {status}, then closed")),
            None if end.at_deadline => tally.add("still open at the end"),
            None => tally.add("closed by the server with no answer"),
        }
        if !end.at_deadline {
            tally.lifetime(end.lasted);
        }
    }
}

/// Declares a body and sends it a byte a second. With `halving`, a 503 halves the next
/// declared size, down to FILL_SMALLEST, and an answer after a hold starts again at 3 MiB.
async fn trickler(target: Arc<client::Target>, halving: bool, deadline: Instant, tally: Arc<Tally>) {
    let mut declared = DECLARED_BODY;
    for _ in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline {
            break;
        }
        let Some(stream) = raw_connect(&target, deadline, &tally).await else { continue };
        let head = format!(
            "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        );
        let end = slow_send(stream, head.as_bytes(), DRIP, TRICKLE_BYTE_GAP, deadline).await;
        match end.status {
            Some(503) => {
                tally.add("503 (shed)");
                let pause = if halving && declared == FILL_SMALLEST { 250 } else { 50 };
                if halving {
                    declared = (declared / 2).max(FILL_SMALLEST);
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Some(status) => {
                tally.add(&format!("held, then answered {status}"));
                tally.lifetime(end.lasted);
                declared = DECLARED_BODY;
            }
            None if end.at_deadline => tally.add("still held at the end"),
            None => {
                tally.add("closed by the server with no answer");
                tally.lifetime(end.lasted);
                declared = DECLARED_BODY;
            }
        }
    }
}

/// A request body that sends a prefix and then nothing until `until`, when it fails (which
/// resets its stream): a client that declared a large body and stalled.
struct StalledBody {
    prefix: Option<Bytes>,
    declared: u64,
    until: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for StalledBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        std::task::ready!(self.until.as_mut().poll(cx));
        Poll::Ready(Some(Err(std::io::Error::other("the stalled body gives up"))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared)
    }
}

fn stalled_request(prefix: usize, until: Instant) -> hyper::Request<StalledBody> {
    let body = StalledBody {
        prefix: (prefix > 0).then(|| Bytes::from(vec![b' '; prefix])),
        declared: DECLARED_BODY as u64,
        until: Box::pin(tokio::time::sleep_until(until.into())),
    };
    hyper::Request::post("https://localhost/validate")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid request")
}

type H2Sender = hyper::client::conn::http2::SendRequest<StalledBody>;

/// An HTTP/2 connection, counted; the way it ends is tallied too.
async fn h2_connect(target: &client::Target, deadline: Instant, tally: &Arc<Tally>) -> Option<H2Sender> {
    let stream = raw_connect(target, deadline, tally).await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        tally.error("no h2 by ALPN", "the server did not choose h2");
        return None;
    }
    let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
    let (sender, connection) = match tokio::time::timeout_at(deadline.into(), handshake).await {
        Ok(Ok(handshake)) => handshake,
        Ok(Err(e)) => {
            tally.error("HTTP/2 handshake failed", observe::chain(&e));
            return None;
        }
        Err(_) => return None,
    };
    let tally = tally.clone();
    tokio::spawn(async move {
        match tokio::time::timeout_at((deadline + Duration::from_secs(2)).into(), connection).await {
            Ok(Ok(())) => tally.add("connection ended cleanly"),
            Ok(Err(e)) => tally.error("connection ended with an error", observe::chain(&e)),
            Err(_) => {}
        }
    });
    Some(sender)
}

async fn h2_staller(target: Arc<client::Target>, deadline: Instant, tally: Arc<Tally>) {
    for _ in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline {
            break;
        }
        let Some(sender) = h2_connect(&target, deadline, &tally).await else { continue };
        let streams: Vec<_> = (0..H2_STREAMS)
            .map(|_| tokio::spawn(h2_stream(sender.clone(), deadline, tally.clone())))
            .collect();
        for stream in streams {
            let _ = stream.await;
        }
    }
}

/// One stream slot of a staller: a stalled request, and another once it is answered.
async fn h2_stream(mut sender: H2Sender, deadline: Instant, tally: Arc<Tally>) {
    for _ in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline || sender.is_closed() {
            return;
        }
        let opened = Instant::now();
        let request = stalled_request(H2_STALL_PREFIX, deadline);
        match tokio::time::timeout_at(deadline.into(), sender.send_request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                tally.add(&format!("streams answered {status}"));
                if status != 503 {
                    tally.lifetime(opened.elapsed());
                }
            }
            Ok(Err(e)) => tally.error("stream failed", observe::chain(&e)),
            Err(_) => {
                tally.add("streams still open at the end");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn h2_resetter(target: Arc<client::Target>, deadline: Instant, tally: Arc<Tally>) {
    for _ in 0..MAX_ATTEMPTS {
        if Instant::now() >= deadline {
            break;
        }
        let Some(mut sender) = h2_connect(&target, deadline, &tally).await else { continue };
        let mut cancelled = 0;
        while Instant::now() < deadline && cancelled < MAX_RESETS_PER_CONNECTION {
            if sender.is_closed() {
                tally.add("connections closed by the server");
                break;
            }
            for _ in 0..RESET_BURST {
                // The request is queued at once; the yield lets the connection put its HEADERS
                // on the wire, and dropping the answer then makes hyper send RST_STREAM(CANCEL).
                let answer = sender.send_request(stalled_request(0, deadline));
                tokio::task::yield_now().await;
                drop(answer);
            }
            cancelled += RESET_BURST;
            tally.add_n("streams opened and cancelled", RESET_BURST);
            tokio::time::sleep(RESET_PAUSE).await;
        }
    }
}

/// What failed: the well-behaved client's errors (503s are reported, not failures), and the
/// audit log over its rate.
fn failures(phases: &[Phase]) -> Vec<String> {
    let mut failures = Vec::new();
    for phase in phases {
        if phase.good.errors() > 0 {
            failures.push(format!(
                "{}: the well-behaved client had {} errors: {}",
                phase.attack.label(),
                phase.good.errors(),
                phase.good.first_errors.render()
            ));
        }
        // The limit counts per wall-clock second; a line or two may land in the next second's
        // log timestamp, hence the small slack.
        if phase.log.max_audit_lines_per_second > 102 {
            failures.push(format!(
                "{}: {} audit lines in one second (limit 100)",
                phase.attack.label(),
                phase.log.max_audit_lines_per_second
            ));
        }
    }
    failures
}

fn render(
    phases: &[Phase],
    busy_before: f64,
    startup_rss: u64,
    peak_kib: u64,
    failures: &[String],
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# registry-gate under abuse: a well-behaved client's view, and the server's\n");
    if !failures.is_empty() {
        let _ = writeln!(out, "**!!! {} CHECKS FAILED: see the end of the report. !!!**\n", failures.len());
    }
    let _ = writeln!(out, "- Command: `{COMMAND}`");
    let _ = writeln!(
        out,
        "- Machine: {} CPUs (`nproc`), {}; client, attackers and server share them. Busy in the second before the run: {busy_before:.0}%.",
        report::nproc(),
        report::cpu_model()
    );
    let _ = writeln!(
        out,
        "- Server: `registry-gate serve`, {POLICY_SIZE}-registry policy, default limits (512 connections, 32 MiB of bodies of which 8 MiB per client, 5 s header timeout, 10 s request timeout, 32 HTTP/2 streams per connection, 100 audit lines/s). RSS after start {:.1} MiB; peak (VmHWM) over the whole run {:.1} MiB.",
        mib(startup_rss),
        mib(peak_kib)
    );
    let _ = writeln!(
        out,
        "- Well-behaved client: from 127.0.0.1, {GOOD_CONNECTIONS} keep-alive HTTP/1.1 connections, {GOOD_RATE:.0} allowed reviews/s between them on a fixed schedule for {} s; latency from the scheduled send time to the last byte of a 200 answer. 503s are counted apart (shed); anything else that is not a 200 allowing the Pod is an error. Attackers connect from {ATTACKER_SOURCE}, start {} s before its window and stop at its end.\n",
        PHASE.as_secs(),
        RAMP.as_secs()
    );
    let _ = writeln!(out, "## The well-behaved client\n");
    let _ = writeln!(
        out,
        "| phase | scheduled | 200 allowed | 503 shed | errors | p50 ms | p99 ms | p99.9 ms | max ms | send lag p99 ms |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for phase in phases {
        let g = &phase.good;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            phase.attack.label(),
            g.scheduled,
            g.ok,
            g.shed,
            g.errors(),
            ms(&g.latency, 0.5),
            ms(&g.latency, 0.99),
            ms(&g.latency, 0.999),
            g.latency.max() as f64 / 1e6,
            ms(&g.lag, 0.99)
        );
    }
    out.push('\n');
    for phase in phases.iter().filter(|p| p.good.shed > 0) {
        let _ = writeln!(
            out,
            "- **{}: {} of the well-behaved client's {} requests ({:.0}%) were shed with 503.**",
            phase.attack.label(),
            phase.good.shed,
            phase.good.scheduled,
            100.0 * phase.good.shed as f64 / phase.good.scheduled.max(1) as f64
        );
    }
    for phase in phases.iter().filter(|p| p.good.errors() > 0) {
        let g = &phase.good;
        let _ = writeln!(
            out,
            "- {}: other statuses {}, transport errors {}, timeouts {}, failed reconnects {}, not sent {}; first: {}",
            phase.attack.label(),
            g.other_status,
            g.transport,
            g.timeouts,
            g.connect_failures,
            g.not_sent,
            g.first_errors.render()
        );
    }
    if phases.iter().any(|p| p.good.shed > 0 || p.good.errors() > 0) {
        out.push('\n');
    }
    let _ = writeln!(out, "## The server\n");
    let _ = writeln!(
        out,
        "| phase | RSS min / mean / max MiB (every 250 ms) | VmHWM at end MiB | connections open, max (every 1 s) | connections closed (growth, by reason) | requests shed (growth) | audit lines suppressed (growth) | server CPU s | client CPU s | wall s | machine CPU busy | of it, other processes |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|");
    for phase in phases {
        let rss = &phase.samples.rss_kib;
        let mean = if rss.is_empty() { 0.0 } else { rss.iter().sum::<u64>() as f64 / rss.len() as f64 };
        let grown = |series: &str| phase.after.value(series) - phase.before.value(series);
        let _ = writeln!(
            out,
            "| {} | {:.1} / {:.1} / {:.1} | {:.1} | {:.0} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0}% |",
            phase.attack.label(),
            mib(rss.iter().copied().min().unwrap_or(0)),
            mean / 1024.0,
            mib(rss.iter().copied().max().unwrap_or(0)),
            mib(phase.hwm_kib),
            phase.samples.connections_open.iter().copied().fold(0.0, f64::max),
            observe::family_delta(&phase.before, &phase.after, "registry_gate_connections_closed_total"),
            grown("registry_gate_requests_shed_total"),
            grown("registry_gate_audit_lines_suppressed_total"),
            phase.server_cpu.as_secs_f64(),
            phase.client_cpu.as_secs_f64(),
            phase.wall.as_secs_f64(),
            phase.machine_busy_pct,
            phase.others_pct
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "Connections open over the attack phase (one sample a second): {}.\n",
        phases
            .iter()
            .find(|p| p.attack == Attack::All)
            .map(|p| p
                .samples
                .connections_open
                .iter()
                .map(|n| format!("{n:.0}"))
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "## The log\n");
    let _ = writeln!(
        out,
        "Counted per wall-clock second from the lines' own timestamps (the audit limit's window), over each phase including its ramp. Audit means are over the seconds that had audit lines; log means over the phase's wall time.\n"
    );
    let _ = writeln!(
        out,
        "| phase | wall s | seconds with audit lines | audit lines | audit lines/s, max | audit lines/s, mean | audit bytes/s, max | audit bytes/s, mean | bytes per audit line | all log bytes/s, max | all log bytes/s, mean |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for phase in phases {
        let l = &phase.log;
        let seconds = phase.wall.as_secs_f64().max(1.0);
        let audit_seconds = l.audit_seconds.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} | {:.1} | {} | {:.0} | {:.0} | {} | {:.0} |",
            phase.attack.label(),
            seconds,
            l.audit_seconds,
            l.audit_lines,
            l.max_audit_lines_per_second,
            l.audit_lines as f64 / audit_seconds,
            l.max_audit_bytes_per_second,
            l.audit_bytes as f64 / audit_seconds,
            if l.audit_lines == 0 { 0.0 } else { l.audit_bytes as f64 / l.audit_lines as f64 },
            l.max_all_bytes_per_second,
            l.all_bytes as f64 / seconds
        );
    }
    out.push('\n');
    let _ = writeln!(out, "## The attackers, as they saw it\n");
    for phase in phases.iter().filter(|p| !p.attackers.is_empty()) {
        let _ = writeln!(out, "{}:\n", phase.attack.label());
        for (name, tally) in &phase.attackers {
            let _ = writeln!(out, "- {name}: {}", tally.render());
        }
        out.push('\n');
    }
    if failures.is_empty() {
        let _ = writeln!(
            out,
            "Checks: the well-behaved client had no error besides 503s; the audit log kept to its rate.\n"
        );
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
