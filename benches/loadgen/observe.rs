//! What the `abuse` and `churn` modes read about the server while they run: its metrics, its
//! memory over time, and its log.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// A plain-HTTP GET's body (the operations port speaks HTTP/1.1), with std only.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// One read of /metrics: every series with its labels, as Prometheus writes them.
pub struct Scrape {
    series: Vec<(String, f64)>,
}

impl Scrape {
    pub fn take(addr: SocketAddr) -> anyhow::Result<Self> {
        let text = http_get(addr, "/metrics")?;
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Ok(Scrape { series })
    }

    /// A series by its full name, labels included (`name{reason="idle"}`); 0 when absent,
    /// which is how Prometheus shows a counter with no label values yet.
    pub fn value(&self, series: &str) -> f64 {
        self.series.iter().find(|(name, _)| name == series).map_or(0.0, |(_, value)| *value)
    }

    /// Every series of a family, keyed by its labels (`{reason="idle"}`, or "" for none).
    pub fn family(&self, family: &str) -> BTreeMap<String, f64> {
        self.series
            .iter()
            .filter_map(|(name, value)| {
                let labels = name.strip_prefix(family)?;
                (labels.is_empty() || labels.starts_with('{')).then(|| (labels.to_owned(), *value))
            })
            .collect()
    }
}

/// The growth of each series of `family` from `before` to `after`, as `labels +N` pairs.
pub fn family_delta(before: &Scrape, after: &Scrape, family: &str) -> String {
    let was = before.family(family);
    let deltas: Vec<String> = after
        .family(family)
        .into_iter()
        .map(|(labels, now)| {
            let grown = now - was.get(&labels).copied().unwrap_or(0.0);
            let labels = labels.trim_start_matches('{').trim_end_matches('}');
            format!("{labels} +{grown:.0}")
        })
        .collect();
    if deltas.is_empty() { "none".to_owned() } else { deltas.join(", ") }
}

/// The server's resident memory and open connections over a run, sampled by a thread of its own.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Samples>,
}

#[derive(Default)]
pub struct Samples {
    /// VmRSS in KiB, every RSS_EVERY.
    pub rss_kib: Vec<u64>,
    /// registry_gate_connections_open, every METRICS_EVERY.
    pub connections_open: Vec<f64>,
}

const RSS_EVERY: Duration = Duration::from_millis(250);
const METRICS_EVERY: Duration = Duration::from_secs(1);

impl Sampler {
    /// Samples until stopped, or for `longest` at most.
    pub fn start(pid: u32, operations: SocketAddr, longest: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Samples::default();
            let (started, mut next_scrape) = (Instant::now(), Instant::now());
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < longest {
                if let Ok(kib) = vm_kib(pid, "VmRSS") {
                    samples.rss_kib.push(kib);
                }
                if Instant::now() >= next_scrape {
                    if let Ok(scrape) = Scrape::take(operations) {
                        samples.connections_open.push(scrape.value("registry_gate_connections_open"));
                    }
                    next_scrape += METRICS_EVERY;
                }
                std::thread::sleep(RSS_EVERY);
            }
            samples
        });
        Sampler { stop, thread }
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse()?)
}

/// The server log's size now: where a run's part of it starts or ends.
pub fn log_offset(log: &Path) -> u64 {
    fs::metadata(log).map_or(0, |m| m.len())
}

/// The part of the log between two offsets.
pub fn log_between(log: &Path, from: u64, to: u64) -> anyhow::Result<String> {
    let mut file = fs::File::open(log)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(to.saturating_sub(from)).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Log lines and bytes per wall-clock second, from the JSON lines' own timestamps: the audit
/// log's rate limit counts per wall-clock second, so a sample window that straddles two of its
/// seconds would show up to twice the limit for no fault of the server's.
#[derive(Default)]
pub struct LogRates {
    /// Wall-clock seconds with at least one audit line: a phase of 23.2 s can span 24 of the
    /// limit's windows, so lines per second of phase can exceed the limit that holds per window.
    pub audit_seconds: u64,
    pub audit_lines: u64,
    pub audit_bytes: u64,
    pub all_bytes: u64,
    pub max_audit_lines_per_second: u64,
    pub max_audit_bytes_per_second: u64,
    pub max_all_bytes_per_second: u64,
}

impl LogRates {
    pub fn of(text: &str) -> Self {
        // (audit lines, audit bytes, all bytes) per second.
        let mut per_second: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for line in text.lines() {
            // "timestamp":"2025-03-14T09:26:53.123456Z": the second is the first 19 characters.
            let second = line
                .split_once(r#""timestamp":""#)
                .and_then(|(_, rest)| rest.get(..19))
                .unwrap_or("no timestamp");
            let bytes = line.len() as u64 + 1;
            let entry = per_second.entry(second).or_default();
            if line.contains(r#""target":"registry_gate::audit""#) {
                entry.0 += 1;
                entry.1 += bytes;
            }
            entry.2 += bytes;
        }
        let mut rates = LogRates::default();
        for (audit_lines, audit_bytes, all_bytes) in per_second.into_values() {
            rates.audit_seconds += u64::from(audit_lines > 0);
            rates.audit_lines += audit_lines;
            rates.audit_bytes += audit_bytes;
            rates.all_bytes += all_bytes;
            rates.max_audit_lines_per_second = rates.max_audit_lines_per_second.max(audit_lines);
            rates.max_audit_bytes_per_second = rates.max_audit_bytes_per_second.max(audit_bytes);
            rates.max_all_bytes_per_second = rates.max_all_bytes_per_second.max(all_bytes);
        }
        rates
    }
}

/// Lines of a log part whose message is `message`.
pub fn count_messages(text: &str, message: &str) -> usize {
    let needle = format!(r#""message":"{message}"#);
    text.lines().filter(|line| line.contains(&needle)).count()
}

/// A quantile of a histogram of nanoseconds, in milliseconds: under attack latencies reach seconds.
pub fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e6
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Keeps the first few distinct-looking error messages, for the report.
#[derive(Default)]
pub struct FirstErrors(Vec<String>);

impl FirstErrors {
    pub fn note(&mut self, error: impl std::fmt::Display) {
        let text: String = format!("{error:#}").chars().take(200).collect();
        if self.0.len() < 5 && !self.0.contains(&text) {
            self.0.push(text);
        }
    }

    pub fn merge(&mut self, other: FirstErrors) {
        self.merge_ref(&other);
    }

    pub fn merge_ref(&mut self, other: &FirstErrors) {
        for error in &other.0 {
            self.note(error);
        }
    }

    pub fn render(&self) -> String {
        if self.0.is_empty() {
            return "none".to_owned();
        }
        self.0
            .iter()
            .map(|e| format!("`{}`", e.replace('`', "'").replace('\n', " ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// An error and its sources, one after the other: hyper's own message for an HTTP/2 failure is
/// only "http2 error", and the reason (a GOAWAY's code, say) is in the source.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}
