//! The monitoring kit of manifests/monitoring against a real Prometheus (Debian's `prometheus`;
//! `make prometheus` installs it), scraping the real binary.
//!
//! One test, in order:
//! 1. `registry-gate serve` on loopback with development certificates; and, when
//!    `REGISTRY_GATE_CONTROLPLANE_BIN` names the control plane binaries (`make test` always sets
//!    it), `registry-gate controller` against a kube-apiserver + etcd of tests/controlplane, set up
//!    so that its copies are in every state and it refreshes two ECR keys: one answered by a stub
//!    of ECR on loopback, one by nobody. Without the variable that half is skipped, with a note;
//! 2. a Prometheus on a free loopback port scraping both every second under the job names the
//!    ServiceMonitors give them, with the rules of prometheusrule.yaml (test-rules.sh extracts
//!    them from the PrometheusRule objects);
//! 3. admission reviews to /validate and /mutate in the background, and one refused policy;
//! 4. then, polled until they all hold (or a minute has passed): every query of
//!    grafana-dashboard.json returns at least one number, its variables find their jobs, every
//!    alert rule evaluates without error, every metric the rules and the dashboard name is
//!    scraped, the alerts a refused policy raises are firing and those of a lost replica are not.
//!
//! A metric that the code does not export yet (`NOT_YET_EXPORTED`) is reported, not failed, while
//! Prometheus has never seen it; once it is scraped, its queries must return data like any other.
//!
//! With `REGISTRY_GATE_DASHBOARD_PNG=FILE`, the load then goes on for
//! `REGISTRY_GATE_DASHBOARD_SECONDS` (default 300) with a few events, and
//! tests/monitoring/plot_dashboard.py draws the dashboard from this Prometheus into FILE
//! (`make dashboard-png`; docs/monitoring.md).

#[allow(dead_code)]
#[path = "e2e/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "e2e/gate.rs"]
mod gate;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use cluster::{ControlPlane, root, tail, wait_for};
use gate::{Gate, binary, die_with_this_thread, free_port, write_certificates};

/// The job names the ServiceMonitors give the two processes, which the alert rules select on.
const WEBHOOK_JOB: &str = "registry-gate";
const CONTROLLER_JOB: &str = "registry-gate-controller";

/// Metrics the rules or the dashboard use before the code exports them (none today).
const NOT_YET_EXPORTED: &[&str] = &[];

/// What the dashboard's variables and Grafana's built-in intervals stand for here. Grafana's
/// `$__rate_interval` is at least four scrape intervals (1 s here).
const VARIABLES: &[(&str, &str)] = &[
    ("__rate_interval", "15s"),
    ("__interval", "5s"),
    ("__range", "5m"),
    ("datasource", "prometheus"),
    ("job", WEBHOOK_JOB),
    ("controller_job", CONTROLLER_JOB),
];

/// Both processes run this policy: a registry of each kind of answer, a scoped one, a deny rule.
const POLICY: &str = r#"apiVersion: registry-gate.io/v1
kind: RegistryPolicy
mode: enforce
exemptNamespaces: [kube-system]
registries:
  - {name: hub-official, type: Public, url: docker.io/library}
  - {name: team-ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}
  - {name: corp, type: Generic, url: "registry.corp.example:5000", pullSecret: corp-pull, namespaces: [shop, "prod-*"]}
  - {name: acr, type: ACR, url: acmeprod.azurecr.io, pullSecret: acr-creds}
  - {name: production-ecr, type: ECR, url: 123456789012.dkr.ecr.us-east-1.amazonaws.com, pullSecret: ecr-prod}
deny:
  - {url: docker.io/library/busybox, reason: use ghcr.io/acme/debug instead}
"#;

/// How long the checks may take to hold once everything runs (the rate windows fill in 15 s).
const CHECKS_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn dashboard_queries_and_alert_rules_work_against_a_real_prometheus() {
    let started = Instant::now();
    let dir = cluster::scratch("prometheus");
    match run(dir.path()) {
        Ok(()) => println!("passed in {:.1} s", started.elapsed().as_secs_f64()),
        Err(e) => {
            let kept = dir.keep();
            panic!("{e:#}\n(logs and configuration kept in {})", kept.display());
        }
    }
}

fn run(dir: &Path) -> anyhow::Result<()> {
    let prometheus_bin = prometheus_binary()?;

    // === registry-gate serve ===
    write_certificates(dir)?;
    let policy = dir.join("policy.yaml");
    write_atomically(&policy, POLICY)?;
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let policy_arg = policy.to_str().context("UTF-8 path")?;
    let gate = Gate::start(dir, webhook_port, metrics_port, &["--policy", policy_arg], "serve.log")?;
    let mut webhook = Webhook::new(webhook_port, &std::fs::read(dir.join("ca.crt"))?)?;
    webhook.answers_as_expected()?;

    // === registry-gate controller ===
    let controller = match std::env::var_os("REGISTRY_GATE_CONTROLPLANE_BIN") {
        Some(bin) if !bin.is_empty() => Some(ControllerSide::start(dir, &policy)?),
        _ => {
            println!(
                "note: REGISTRY_GATE_CONTROLPLANE_BIN is not set, so no controller runs: its dashboard \
                 panels, variables and metrics are not checked (`make test` sets it)"
            );
            None
        }
    };

    // === Prometheus ===
    let rules_dir = dir.join("rules");
    extract_rules(&rules_dir)?;
    let mut targets = vec![(WEBHOOK_JOB, metrics_port)];
    if let Some(side) = &controller {
        targets.push((CONTROLLER_JOB, side.controller.metrics_port));
    }
    let prometheus = Prometheus::start(&prometheus_bin, dir, &rules_dir, &targets)?;
    let load = Load::start(webhook.another());
    refuse_a_policy(&policy, &gate, controller.as_ref().map(|side| &side.controller))?;

    // === The checks ===
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("manifests/monitoring/grafana-dashboard.json"))
            .context("reading the dashboard")?,
    )
    .context("the dashboard is not JSON")?;
    let rules = AlertRule::load(&rules_dir)?;
    let checks_started = Instant::now();
    let report = loop {
        let report = check_everything(&prometheus, &dashboard, &rules, controller.is_some())?;
        if report.failures.is_empty() || checks_started.elapsed() > CHECKS_TIMEOUT {
            break report;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    println!("{:<52} {:>6}  query", "panel", "series");
    for (panel, series, expr) in &report.rows {
        println!("{panel:<52} {series:>6}  {expr}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    ensure!(
        report.failures.is_empty(),
        "{} problems after {:.0} s of checks:\n- {}\nPrometheus' log:\n{}",
        report.failures.len(),
        checks_started.elapsed().as_secs_f64(),
        report.failures.join("\n- "),
        prometheus.log_tail(20)
    );
    let count = |what: &str| report.rows.iter().filter(|(_, series, _)| series == what).count();
    let (pending, skipped) = (count("n/a"), count("skip"));
    println!(
        "{} dashboard queries returned data ({pending} await metrics not exported yet, {skipped} skipped); \
         {} alert rules evaluate; {:.1} s after the checks began",
        report.rows.len() - pending - skipped,
        rules.len(),
        checks_started.elapsed().as_secs_f64()
    );

    if let Some(png) = std::env::var_os("REGISTRY_GATE_DASHBOARD_PNG").filter(|p| !p.is_empty()) {
        draw_dashboard(&root().join(png), &prometheus, &policy, &gate, controller.as_ref())?;
    }
    let (sent, failed) = load.stop();
    println!("admission reviews sent: {sent}, failed: {failed}");
    ensure!(sent > 0 && failed * 10 <= sent, "too many admission reviews failed ({failed} of {sent})");
    Ok(())
}

// === The checks ===

#[derive(Default)]
struct Report {
    /// (panel title and refId, series returned, the query as sent)
    rows: Vec<(String, String, String)>,
    failures: Vec<String>,
    notes: Vec<String>,
}

fn check_everything(
    prometheus: &Prometheus,
    dashboard: &Value,
    rules: &[AlertRule],
    with_controller: bool,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let scraped: BTreeSet<String> = prometheus
        .api("/api/v1/label/__name__/values")?
        .as_array()
        .context("metric names")?
        .iter()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect();
    // The metric names of an expression Prometheus has never seen: (not exported yet, unknown).
    let unseen = |expr: &str| -> (Vec<String>, Vec<String>) {
        metric_names(expr)
            .into_iter()
            .filter(|name| !scraped.contains(name))
            .partition(|name| NOT_YET_EXPORTED.contains(&name.as_str()))
    };

    for query in dashboard_queries(dashboard) {
        let name = format!("{} ({})", query.panel, query.ref_id);
        if query.expr.contains("$controller_job") && !with_controller {
            report.rows.push((name, "skip".into(), query.expr.clone()));
            continue;
        }
        let expr = match substitute(&query.expr) {
            Ok(expr) => expr,
            Err(e) => {
                report.failures.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        let (pending, unknown) = unseen(&expr);
        if !unknown.is_empty() {
            report.failures.push(format!("{name}: {expr} uses series never scraped: {}", unknown.join(", ")));
            continue;
        }
        if !pending.is_empty() {
            report
                .notes
                .push(format!("{name}: no data yet: the code does not export {} yet", pending.join(", ")));
            report.rows.push((name, "n/a".into(), expr));
            continue;
        }
        match prometheus.query(&expr) {
            Ok(series) if series.is_empty() => report.failures.push(format!("{name}: no data for {expr}")),
            Ok(series) if !series.iter().any(has_number) => {
                report.failures.push(format!("{name}: only NaN or infinities for {expr}"))
            }
            Ok(series) => report.rows.push((name, series.len().to_string(), expr)),
            Err(e) => report.failures.push(format!("{name}: {e:#}")),
        }
    }

    for (variable, metric, label) in dashboard_variables(dashboard) {
        let expected = VARIABLES.iter().find(|(name, _)| *name == variable).map(|(_, value)| *value);
        if variable == "controller_job" && !with_controller {
            continue;
        }
        let values = prometheus
            .api(&format!("/api/v1/label/{label}/values?{}", form(&[("match[]", metric.as_str())])))?;
        let values: Vec<&str> = values.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if expected.is_none_or(|expected| values != [expected]) {
            report.failures.push(format!(
                "variable ${variable} (label_values({metric}, {label})) finds {values:?}, not {expected:?}"
            ));
        }
    }

    // Every rule Prometheus loaded has been evaluated, without an error.
    let groups = prometheus.api("/api/v1/rules?type=alert")?;
    let mut evaluated = BTreeMap::new();
    for rule in
        groups["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array()).flatten()
    {
        let name = rule["name"].as_str().unwrap_or_default().to_owned();
        let health = rule["health"].as_str().unwrap_or_default();
        let never = rule["lastEvaluation"].as_str().is_none_or(|t| t.starts_with("0001-"));
        let state = match (health, never) {
            (_, true) => "not evaluated yet".to_owned(),
            ("ok", false) => "ok".to_owned(),
            (health, false) => format!("{health}: {}", rule["lastError"].as_str().unwrap_or_default()),
        };
        evaluated.insert(name, state);
    }
    for rule in rules {
        match evaluated.get(&rule.alert).map(String::as_str) {
            Some("ok") => {}
            Some(state) => report.failures.push(format!("alert {}: {state}", rule.alert)),
            None => report.failures.push(format!("alert {} is not loaded in Prometheus", rule.alert)),
        }
        if let Err(e) = prometheus.query(&rule.expr) {
            report.failures.push(format!("alert {}: {e:#}", rule.alert));
        }
        if rule.controller && !with_controller {
            continue;
        }
        let (pending, unknown) = unseen(&rule.expr);
        if !unknown.is_empty() {
            report.failures.push(format!(
                "alert {} uses series never scraped: {}",
                rule.alert,
                unknown.join(", ")
            ));
        }
        if !pending.is_empty() {
            report.notes.push(format!(
                "alert {}: no data yet: the code does not export {} yet",
                rule.alert,
                pending.join(", ")
            ));
        }
    }

    // The refused policy raises the reload alerts, no more.
    let alerts = prometheus.api("/api/v1/alerts")?;
    let active: BTreeMap<String, String> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| {
            let name = alert["labels"]["alertname"].as_str().unwrap_or_default().to_owned();
            (name, alert["state"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let mut firing = vec!["RegistryGatePolicyReloadFailing"];
    let mut quiet = vec!["RegistryGateDown", "RegistryGateReplicaDown", "RegistryGateNoPolicyLoaded"];
    if with_controller {
        firing.push("RegistryGateControllerPolicyReloadFailing");
        quiet.push("RegistryGateControllerDown");
    }
    for name in firing {
        if active.get(name).map(String::as_str) != Some("firing") {
            report.failures.push(format!("alert {name} is not firing after a refused policy: {active:?}"));
        }
    }
    for name in quiet {
        if let Some(state) = active.get(name) {
            report.failures.push(format!("alert {name} is {state} although every process is up"));
        }
    }
    if with_controller {
        // The audit's namespace label survives the scrape (honor_labels), as the dashboard's
        // "by namespace" panel needs.
        let shop =
            prometheus.query(r#"registry_gate_audit_violations{namespace="shop", reason="unregistered"}"#)?;
        if shop.is_empty() {
            report
                .failures
                .push("registry_gate_audit_violations has no series with namespace=\"shop\"".to_owned());
        }
    }
    Ok(report)
}

/// Whether a series of an instant query holds a number (not NaN, not infinite).
fn has_number(series: &Value) -> bool {
    series["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite)
}

/// The `registry_gate_*` metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\bregistry_gate_[a-z0-9_]+").expect("a valid pattern");
    pattern.find_iter(expr).map(|m| m.as_str().to_owned()).collect()
}

// === The dashboard ===

struct DashboardQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

/// Every target of every panel, rows' collapsed panels included.
fn dashboard_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    fn walk(panels: &Value, out: &mut Vec<DashboardQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(DashboardQuery {
                        panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                        ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                        expr: expr.to_owned(),
                    });
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The query variables as (name, metric, label) of their `label_values(metric, label)`.
fn dashboard_variables(dashboard: &Value) -> Vec<(String, String, String)> {
    let pattern =
        regex::Regex::new(r"^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$").expect("a valid pattern");
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|variable| variable["type"] == "query")
        .filter_map(|variable| {
            let query = variable["query"]["query"].as_str().or(variable["query"].as_str())?;
            let captures = pattern.captures(query)?;
            Some((variable["name"].as_str()?.to_owned(), captures[1].to_owned(), captures[2].to_owned()))
        })
        .collect()
}

/// `expr` with Grafana's `$name`, `${name}` and `[[name]]` replaced by [`VARIABLES`]; an
/// unknown variable is an error.
fn substitute(expr: &str) -> anyhow::Result<String> {
    let pattern = regex::Regex::new(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]").expect("a valid pattern");
    let mut unknown = Vec::new();
    let out = pattern.replace_all(expr, |captures: &regex::Captures<'_>| {
        let name = captures.get(1).or(captures.get(2)).or(captures.get(3)).map_or("", |m| m.as_str());
        match VARIABLES.iter().find(|(known, _)| *known == name) {
            Some((_, value)) => (*value).to_owned(),
            None => {
                unknown.push(name.to_owned());
                String::new()
            }
        }
    });
    ensure!(unknown.is_empty(), "unknown variables {unknown:?} in {expr}");
    Ok(out.into_owned())
}

// === The alert rules ===

struct AlertRule {
    alert: String,
    expr: String,
    /// From the controller's PrometheusRule.
    controller: bool,
}

impl AlertRule {
    /// The alerting rules of the files test-rules.sh extracted.
    fn load(dir: &Path) -> anyhow::Result<Vec<AlertRule>> {
        let mut rules = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            let docs = yaml_rust2::YamlLoader::load_from_str(&text)
                .with_context(|| format!("{} is not YAML", path.display()))?;
            let controller = path.file_name().is_some_and(|n| n.to_string_lossy().contains("controller"));
            for group in docs.first().and_then(|d| d["groups"].as_vec()).into_iter().flatten() {
                for rule in group["rules"].as_vec().into_iter().flatten() {
                    if let (Some(alert), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str()) {
                        rules.push(AlertRule { alert: alert.to_owned(), expr: expr.to_owned(), controller });
                    }
                }
            }
        }
        ensure!(!rules.is_empty(), "no alert rules in {}", dir.display());
        Ok(rules)
    }
}

/// The rules of prometheusrule.yaml as plain rules files, by test-rules.sh (the one place that
/// knows how), so that Prometheus loads exactly what promtool tests.
fn extract_rules(dir: &Path) -> anyhow::Result<()> {
    let script = root().join("manifests/monitoring/test-rules.sh");
    let output = Command::new(&script).arg("--extract").arg(dir).output()?;
    ensure!(
        output.status.success(),
        "{} --extract failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

// === Prometheus ===

/// `REGISTRY_GATE_PROMETHEUS`, else `prometheus` on the PATH.
fn prometheus_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("REGISTRY_GATE_PROMETHEUS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file())
        .context("no prometheus binary on the PATH: run `make prometheus` (Debian's prometheus package), or set REGISTRY_GATE_PROMETHEUS")
}

/// A Prometheus of this test, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job, port on 127.0.0.1) every second with the
    /// rules files in `rules`, and returns once every target has been scraped successfully.
    fn start(bin: &Path, dir: &Path, rules: &Path, targets: &[(&str, u16)]) -> anyhow::Result<Prometheus> {
        let scrape_configs: Vec<Value> = targets
            .iter()
            .map(|(job, port)| {
                json!({
                    "job_name": job,
                    // As the ServiceMonitors say: the controller's audit series name the
                    // namespaces of the workloads they count.
                    "honor_labels": *job == CONTROLLER_JOB,
                    "static_configs": [{"targets": [format!("127.0.0.1:{port}")], "labels": {"namespace": "registry-gate"}}],
                })
            })
            .collect();
        // JSON is YAML.
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules.join("*.rules.yaml")],
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_json::to_string_pretty(&config)?)?;
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = File::create(&log)?;
        let child = die_with_this_thread()
            .arg(bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut prometheus = Prometheus { child, port, log };
        let started = Instant::now();
        wait_for("Prometheus to be ready", Duration::from_secs(30), Duration::from_millis(100), |last| {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                *last = format!("exited {status}");
                return Some(Err(()));
            }
            match http_get(port, "/-/ready") {
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
        .map_err(|()| anyhow::anyhow!("Prometheus exited; its log:\n{}", prometheus.log_tail(30)))?;
        let jobs = targets.len();
        wait_for("every target to be up", Duration::from_secs(30), Duration::from_millis(200), |last| {
            match prometheus.query("up == 1") {
                Ok(up) if up.len() == jobs => Some(()),
                Ok(up) => {
                    *last = format!("{} of {jobs} targets up", up.len());
                    None
                }
                Err(e) => {
                    *last = format!("{e:#}");
                    None
                }
            }
        })
        .with_context(|| format!("Prometheus' log:\n{}", prometheus.log_tail(20)))?;
        println!(
            "Prometheus on 127.0.0.1:{port} scrapes {jobs} targets, {} ms after its start",
            started.elapsed().as_millis()
        );
        Ok(prometheus)
    }

    /// The `data` of an API answer, or the error Prometheus gave.
    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.port, path)?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {status}, not JSON: {}", tail(&body, 5)))?;
        ensure!(
            answer["status"] == "success",
            "GET {path}: HTTP {status}, {}: {}",
            answer["errorType"].as_str().unwrap_or_default(),
            answer["error"].as_str().unwrap_or_default()
        );
        Ok(answer["data"].clone())
    }

    /// The series of an instant query, now.
    fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?{}", form(&[("query", expr)])))?;
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            // A scalar or string is one value.
            _ => Ok(vec![json!({"metric": {}, "value": data["result"]})]),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over plain HTTP to 127.0.0.1:`port`. HTTP/1.0, so that the answer ends with the
/// connection rather than in chunks.
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status =
        response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not an HTTP response")?;
    Ok((status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()))
}

/// `application/x-www-form-urlencoded` pairs, as a query string.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

// === The webhook and its load ===

/// An HTTPS client of the webhook that trusts the development CA and keeps its connection
/// open between reviews, as the API server does.
struct Webhook {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    connection: Option<BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>,
}

impl Webhook {
    fn new(port: u16, ca_pem: &[u8]) -> anyhow::Result<Webhook> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(certificate.context("the CA's PEM")?)?;
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        Ok(Webhook {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: Arc::new(config),
            connection: None,
        })
    }

    /// Another client of the same webhook, with a connection of its own.
    fn another(&self) -> Webhook {
        Webhook { addr: self.addr, tls: self.tls.clone(), connection: None }
    }

    /// POSTs `body`; the status and the body of the answer. A connection the server has closed
    /// since the last request is replaced once.
    fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let reused = self.connection.is_some();
        match self.exchange(path, body) {
            Err(_) if reused => {
                self.connection = None;
                self.exchange(path, body)
            }
            result => result,
        }
        .inspect_err(|_| self.connection = None)
    }

    fn exchange(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
                tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
                let server = ServerName::try_from("localhost")?;
                let tls = rustls::ClientConnection::new(self.tls.clone(), server)?;
                self.connection.insert(BufReader::new(rustls::StreamOwned::new(tls, tcp)))
            }
        };
        let stream = connection.get_mut();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut status = None;
        let mut length = None;
        loop {
            let mut line = String::new();
            ensure!(connection.read_line(&mut line)? > 0, "the connection closed before an answer");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = line.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut answer = vec![0; length.context("an answer without Content-Length")?];
        connection.read_exact(&mut answer)?;
        Ok((status.context("no HTTP status line")?, answer))
    }

    fn review(&mut self, case: &Case, uid: u64) -> anyhow::Result<Value> {
        let (status, body) = self.post(case.path, review(case, uid).to_string().as_bytes())?;
        ensure!(status == 200, "{} answered {status}: {}", case.path, String::from_utf8_lossy(&body));
        Ok(serde_json::from_slice(&body)?)
    }

    /// The load is worth measuring only if the answers are right.
    fn answers_as_expected(&mut self) -> anyhow::Result<()> {
        let mut allowed = |case: &Case| -> anyhow::Result<bool> {
            self.review(case, 1)?["response"]["allowed"].as_bool().context("no response.allowed")
        };
        ensure!(allowed(&CASES[0])?, "{:?} was not allowed", CASES[0].images);
        let evil = CASES
            .iter()
            .find(|c| c.images == ["quay.io/evil/miner:1"] && c.namespace == "shop")
            .context("the denied case")?;
        ensure!(!allowed(evil)?, "{:?} was allowed", evil.images);
        let mutate = CASES.iter().find(|c| c.path == "/mutate").context("a /mutate case")?;
        let answer = self.review(mutate, 2)?;
        ensure!(answer["response"]["patch"].is_string(), "/mutate added no pull secret: {answer}");
        Ok(())
    }
}

/// One kind of admission review the load sends, `weight` times in each round.
struct Case {
    weight: u32,
    path: &'static str,
    namespace: &'static str,
    kind: &'static str,
    operation: &'static str,
    images: &'static [&'static str],
}

const fn case(
    weight: u32,
    path: &'static str,
    namespace: &'static str,
    kind: &'static str,
    operation: &'static str,
    images: &'static [&'static str],
) -> Case {
    Case { weight, path, namespace, kind, operation, images }
}

/// Mostly allowed, as in a cluster (about one review in six denied), with every kind of
/// denial, an exemption and pull-secret injections among them.
const CASES: &[Case] = &[
    case(6, "/validate", "shop", "Pod", "CREATE", &["nginx:1.27"]),
    case(4, "/validate", "shop", "Pod", "CREATE", &["ghcr.io/acme/api:1.2", "nginx:1.27"]),
    case(
        4,
        "/mutate",
        "shop",
        "Pod",
        "CREATE",
        &["ghcr.io/acme/api:1.2", "registry.corp.example:5000/team/app:2"],
    ),
    case(3, "/validate", "shop", "Pod", "CREATE", &["registry.corp.example:5000/team/app:2"]),
    case(
        2,
        "/validate",
        "prod-payments",
        "Deployment",
        "CREATE",
        &["123456789012.dkr.ecr.us-east-1.amazonaws.com/pay:3"],
    ),
    case(
        3,
        "/mutate",
        "prod-payments",
        "Pod",
        "CREATE",
        &["123456789012.dkr.ecr.us-east-1.amazonaws.com/pay:3"],
    ),
    case(2, "/validate", "shop", "Deployment", "UPDATE", &["nginx:1.27", "acmeprod.azurecr.io/web:7"]),
    case(2, "/mutate", "team-b", "Pod", "CREATE", &["ghcr.io/acme/web:4"]),
    case(2, "/validate", "kube-system", "Pod", "CREATE", &["quay.io/evil/miner:1"]),
    case(2, "/validate", "shop", "Pod", "CREATE", &["quay.io/evil/miner:1"]),
    case(1, "/validate", "team-b", "Pod", "CREATE", &["registry.corp.example:5000/team/app:2"]),
    case(1, "/validate", "shop", "Pod", "CREATE", &["busybox:1.36"]),
    case(1, "/validate", "shop", "Pod", "CREATE", &["ghcr.io/acme-evil/api:1.2"]),
    case(1, "/validate", "shop", "Pod", "CREATE", &["docker///bad"]),
];

fn review(case: &Case, uid: u64) -> Value {
    let containers = |images: &[&str]| -> Value {
        images.iter().enumerate().map(|(i, image)| json!({"name": format!("c{i}"), "image": image})).collect()
    };
    let object = |images: &[&str]| -> Value {
        let metadata = json!({"name": "web", "namespace": case.namespace, "labels": {"app": "web"}});
        let spec = json!({"containers": containers(images)});
        match case.kind {
            "Deployment" => json!({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}},
            }),
            _ => json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}),
        }
    };
    let (group, resource) = if case.kind == "Deployment" { ("apps", "deployments") } else { ("", "pods") };
    let old = (case.operation == "UPDATE").then(|| object(&["nginx:1.26"]));
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("7d0c6c52-0000-4000-8000-{uid:012}"),
            "kind": {"group": group, "version": "v1", "kind": case.kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": "web",
            "namespace": case.namespace,
            "operation": case.operation,
            "userInfo": {"username": "load@example.com", "groups": ["developers"]},
            "object": object(case.images),
            "oldObject": old,
            "dryRun": false
        }
    })
}

/// Admission reviews in the background, between 8 and 30 a second in a slow wave (so that the
/// drawn dashboard has a shape), one in 40 not an AdmissionReview at all (result="error").
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(mut webhook: Webhook) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let round: Vec<&Case> =
                    CASES.iter().flat_map(|case| std::iter::repeat_n(case, case.weight as usize)).collect();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let result = if n.is_multiple_of(40) {
                        webhook.post("/validate", br#"{"kind": "AdmissionReview"}"#).map(|_| ())
                    } else {
                        webhook.review(round[n as usize % round.len()], n).map(|_| ())
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if result.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let phase = (started.elapsed().as_secs_f64() / 90.0 * std::f64::consts::TAU).sin();
                    std::thread::sleep(Duration::from_secs_f64(0.075 + 0.045 * phase));
                }
            })
        };
        Load { stop, sent, failed, thread: Some(thread) }
    }

    /// Stops the load; reviews sent and failed.
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// === Policy reloads ===

/// Replaces `path` by rename, as Kubernetes does with a mounted ConfigMap.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// The value of an unlabelled metric in a `/metrics` text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Writes a broken policy, waits until both processes have refused it, and restores the good one.
fn refuse_a_policy(policy: &Path, gate: &Gate, controller: Option<&Controller>) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<(f64, Option<f64>)> {
        let (_, webhook) = gate.operations_get("/metrics")?;
        let controller = match controller {
            Some(c) => Some(metric_value(&c.metrics()?, name).unwrap_or(0.0)),
            None => None,
        };
        Ok((metric_value(&webhook, name).unwrap_or(0.0), controller))
    };
    let moved = |before: (f64, Option<f64>), after: (f64, Option<f64>)| {
        after.0 > before.0 && before.1.zip(after.1).is_none_or(|(b, a)| a > b)
    };
    let failures = read("registry_gate_policy_reload_failures_total")?;
    write_atomically(policy, "registries: [ this is not a policy\n")?;
    wait_for(
        "both processes to refuse the policy",
        Duration::from_secs(20),
        Duration::from_millis(100),
        |last| {
            let now = read("registry_gate_policy_reload_failures_total").ok()?;
            *last = format!("{now:?}, before {failures:?}");
            moved(failures, now).then_some(())
        },
    )?;
    let generation = read("registry_gate_policy_generation")?;
    write_atomically(policy, POLICY)?;
    wait_for(
        "both processes to load the policy again",
        Duration::from_secs(20),
        Duration::from_millis(100),
        |last| {
            let now = read("registry_gate_policy_generation").ok()?;
            *last = format!("{now:?}, before {generation:?}");
            moved(generation, now).then_some(())
        },
    )?;
    Ok(())
}

// === The controller ===

const GATE_NS: &str = "registry-gate";
const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// The controller with its own control plane (stopped after it, in this order).
struct ControllerSide {
    controller: Controller,
    cp: ControlPlane,
}

impl ControllerSide {
    /// A control plane, objects that put the copies in every state, two ECR keys, and the
    /// controller, once its metrics show all of it.
    fn start(dir: &Path, policy: &Path) -> anyhow::Result<ControllerSide> {
        let cp = ControlPlane::start()?;
        let ecr_port = ecr_stub()?;
        let mut objects =
            vec![namespace(GATE_NS), namespace("shop"), namespace("prod-payments"), namespace("team-b")];
        objects.extend([
            // team-ghcr: synced everywhere but in team-b, where a Secret of its name is not ours.
            pull_secret(GATE_NS, "ghcr-acme", "ghcr.io"),
            pull_secret("team-b", "ghcr-acme", "ghcr.io"),
            // corp: a source with no credentials for its host (invalid-source in shop, prod-*).
            pull_secret(GATE_NS, "corp-pull", "registry.elsewhere.example"),
            // acr: no source at all (missing-source). production-ecr: refreshed from a key.
            ecr_key("ecr-key-prod", "ecr-prod", &format!("http://127.0.0.1:{ecr_port}")),
            // Nobody answers this one: its refresh fails, with backoff.
            ecr_key("ecr-key-staging", "ecr-staging", &format!("http://127.0.0.1:{}", free_port())),
            // Running workloads the policy refuses, for the audit panels.
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "miner", "namespace": "shop"},
                   "spec": {"containers": [{"name": "m", "image": "quay.io/evil/miner:1"}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "namespace": "team-b"},
                   "spec": {"containers": [{"name": "d", "image": "busybox:1.36"}]}}),
        ]);
        for object in &objects {
            apply(&cp, object)?;
        }
        let controller = Controller::start(&cp, dir, policy)?;
        let expected = [
            r#"registry_gate_pull_secret_copies\{registry="team-ghcr",state="synced"\} [1-9]"#,
            r#"registry_gate_pull_secret_copies\{registry="team-ghcr",state="conflict"\} 1\n"#,
            r#"registry_gate_pull_secret_copies\{registry="corp",state="invalid-source"\} [1-9]"#,
            r#"registry_gate_pull_secret_copies\{registry="acr",state="missing-source"\} [1-9]"#,
            r#"registry_gate_pull_secret_copies\{registry="production-ecr",state="synced"\} [1-9]"#,
            r#"registry_gate_credential_expiry_timestamp_seconds\{secret="ecr-prod"\} [1-9]"#,
            r#"registry_gate_credential_refresh_failures_total\{secret="ecr-staging"\} [1-9]"#,
            r#"registry_gate_audit_violations\{kind="Pod",namespace="shop",reason="unregistered",registry="quay.io"\} 1"#,
            r#"registry_gate_registry_test_failures_total\{registry="corp",stage="dns"\} [1-9]"#,
        ]
        .map(|p| regex::Regex::new(p).expect("a valid pattern"));
        wait_for(
            "the controller's copies and credentials",
            Duration::from_secs(60),
            Duration::from_millis(250),
            |last| {
                let text = controller.metrics().ok()?;
                let missing: Vec<&str> =
                    expected.iter().filter(|p| !p.is_match(&text)).map(regex::Regex::as_str).collect();
                *last = format!("not yet: {missing:?}");
                missing.is_empty().then_some(())
            },
        )
        .with_context(|| format!("the controller's log:\n{}", controller.log_tail(30)))?;
        Ok(ControllerSide { controller, cp })
    }
}

fn apply(cp: &ControlPlane, object: &Value) -> anyhow::Result<()> {
    cp.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "--field-manager=prometheus-test", "-f", "-"],
        &object.to_string(),
    )
    .ok()?;
    Ok(())
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A dockerconfigjson Secret with made-up credentials for `host`.
fn pull_secret(namespace: &str, name: &str, host: &str) -> Value {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let config = json!({"auths": {host: {"username": "robot", "password": "not-a-secret", "auth": b64("robot:not-a-secret")}}});
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": namespace},
        "data": {".dockerconfigjson": b64(&config.to_string())}
    })
}

/// An ECR key Secret (src/controller/ecr.rs) whose API is `endpoint`.
fn ecr_key(name: &str, pull_secret: &str, endpoint: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": name, "namespace": GATE_NS,
            "labels": {"registry-gate.io/ecr-key": "true"},
            "annotations": {"registry-gate.io/pull-secret": pull_secret},
        },
        "stringData": {
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "region": "us-east-1",
            "endpoint": endpoint,
        }
    })
}

/// Answers every request as ECR's GetAuthorizationToken does, with a token good for 12 hours;
/// its port. It serves until the test process ends.
fn ecr_stub() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer_like_ecr(stream);
        }
    });
    Ok(port)
}

fn answer_like_ecr(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("content-length") => {
                length = value.trim().parse().unwrap_or(0);
            }
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let answer = json!({"authorizationData": [{
        "authorizationToken": base64::engine::general_purpose::STANDARD.encode("AWS:stub-password"),
        "expiresAt": now + 12 * 3600,
        "proxyEndpoint": format!("https://{ECR_HOST}"),
    }]})
    .to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

/// A running `registry-gate controller`, killed when dropped.
struct Controller {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl Controller {
    fn start(cp: &ControlPlane, dir: &Path, policy: &Path) -> anyhow::Result<Controller> {
        let log = dir.join("controller.log");
        let out = File::create(&log)?;
        let metrics_port = free_port();
        let child = die_with_this_thread()
            .arg(binary())
            .args(["controller", "--namespace", GATE_NS, "--policy"])
            .arg(policy)
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}"), "--resync-seconds", "30"])
            // The connection tests, against the policy's made-up hosts: every one fails (dns),
            // which is what the registry panels and RegistryGateRegistryUnreachable show.
            .args(["--registry-test-interval-seconds", "2", "--registry-test-timeout-seconds", "1"])
            .args(["--log-format", "json"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start registry-gate controller")?;
        let mut controller = Controller { child, metrics_port, log };
        wait_for(
            "the controller to be ready",
            Duration::from_secs(30),
            Duration::from_millis(100),
            |last| {
                if let Ok(Some(status)) = controller.child.try_wait() {
                    *last = format!("exited {status}");
                    return Some(Err(()));
                }
                match http_get(metrics_port, "/readyz") {
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
            },
        )?
        .map_err(|()| anyhow::anyhow!("the controller exited; its log:\n{}", controller.log_tail(30)))?;
        Ok(controller)
    }

    fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.metrics_port, "/metrics")?;
        ensure!(status == 200, "controller /metrics: {status}");
        Ok(body)
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === The picture ===

/// Goes on with the load for `REGISTRY_GATE_DASHBOARD_SECONDS`, with a few events along the way,
/// then draws the dashboard over that time into `png`.
fn draw_dashboard(
    png: &Path,
    prometheus: &Prometheus,
    policy: &Path,
    gate: &Gate,
    controller: Option<&ControllerSide>,
) -> anyhow::Result<()> {
    let seconds: u64 = match std::env::var("REGISTRY_GATE_DASHBOARD_SECONDS") {
        Ok(text) => text.parse().context("REGISTRY_GATE_DASHBOARD_SECONDS")?,
        Err(_) => 300,
    };
    let began = Instant::now();
    let until = |fraction: f64| {
        let at = Duration::from_secs_f64(seconds as f64 * fraction);
        std::thread::sleep(at.saturating_sub(began.elapsed()));
    };
    println!("drawing the dashboard: {seconds} s of load first");
    until(0.35);
    refuse_a_policy(policy, gate, controller.map(|side| &side.controller))?;
    if let Some(side) = controller {
        until(0.5);
        // The conflict is cleared and a namespace added: copies written, states change.
        side.cp.kubectl(&["-n", "team-b", "delete", "secret", "ghcr-acme"]).ok()?;
        apply(&side.cp, &namespace("team-c"))?;
        until(0.7);
        // corp's source is fixed.
        apply(&side.cp, &pull_secret(GATE_NS, "corp-pull", "registry.corp.example:5000"))?;
    }
    until(1.0);
    let script = root().join("tests/monitoring/plot_dashboard.py");
    let dashboard = root().join("manifests/monitoring/grafana-dashboard.json");
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .args(["--prometheus", &prometheus.url()])
        .arg("--dashboard")
        .arg(&dashboard)
        .arg("--out")
        .arg(png)
        .args(["--seconds", &seconds.to_string(), "--step", "2"]);
    for (name, value) in VARIABLES {
        command.args(["--var", &format!("{name}={value}")]);
    }
    let status = command.status().with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(status.success(), "{} failed ({status})", script.display());
    if !png.is_file() {
        bail!("{} wrote no {}", script.display(), png.display());
    }
    println!("dashboard drawn into {}", png.display());
    Ok(())
}
