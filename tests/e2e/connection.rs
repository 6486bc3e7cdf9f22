//! The controller's periodic registry connection tests against a real registry (Debian's
//! `docker-registry` with htpasswd over TLS, tests/registry) and a closed port, with the
//! credentials read from the source pull Secret through the real API server: the metrics say
//! which registry fails at which stage, and a rotated (wrong) password shows up as a
//! credentials failure before any Pod tries to pull.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use super::Scenarios;
use super::cluster::{ControlPlane, wait_for};
use super::registry::distribution::{Auth, TestRegistry};
use super::registry::pki::TestCa;
use super::sync::{ControllerProcess, GATE_NS, apply, source_secret};

const PASSWORD: &str = "FAKE-registry-password-1";
const WRONG: &str = "FAKE-registry-password-2";

/// The value of the series of `name` whose labels include every `label="value"` given.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

pub fn registry_connection_tests(cp: &ControlPlane, s: &mut Scenarios, dir: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let ca = TestCa::new();
    let cert = ca.server(&["127.0.0.1"]);
    let registry = runtime.block_on(TestRegistry::start(Some(&cert), Auth::Htpasswd(&[("robot", PASSWORD)])));
    // The registry process is served by its own threads; the runtime only started it.
    let host = registry.host();
    let mut controller = None;
    let ready = s.run("connection tests setup: a real registry, its pull Secret, a dead registry, the controller", || {
        cp.kubectl(&["apply", "--server-side", "-f", "manifests/base/namespace.yaml"]).ok()?;
        apply(cp, &source_secret("local-pull", &host, PASSWORD))?;
        let policy = format!(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {{name: local, type: Generic, url: \"{host}/team/app\", pullSecret: local-pull}}\n  - {{name: dead, type: Generic, url: \"127.0.0.1:1/x\"}}\n"
        );
        let policy_file = dir.join("connection-policy.yaml");
        std::fs::write(&policy_file, policy)?;
        std::fs::write(dir.join("registry-ca.pem"), &ca.cert_pem)?;
        let ca_file = dir.join("registry-ca.pem");
        let ca_arg = ca_file.to_str().context("UTF-8 path")?;
        controller = Some(ControllerProcess::start_with(
            cp,
            dir,
            &policy_file,
            &["--registry-test-interval-seconds", "1", "--registry-test-timeout-seconds", "2", "--registry-test-ca-file", ca_arg, "--audit-interval-seconds", "0"],
        )?);
        Ok(())
    });
    let Some(controller) = controller.filter(|_| ready) else { return };
    let metrics = || controller.get("/metrics").map(|(_, body)| body).unwrap_or_default();

    s.run("connection tests: the real registry passes with its Secret's credentials; the dead one fails at connect", || {
        let text = wait_for("both registries tested", Duration::from_secs(20), Duration::from_millis(200), |last| {
            let text = metrics();
            *last = text.lines().filter(|l| l.starts_with("registry_gate_registry_test")).collect::<Vec<_>>().join("\n");
            let local = series(&text, "registry_gate_registry_test_success", &["registry=\"local\""]);
            let dead = series(&text, "registry_gate_registry_test_success", &["registry=\"dead\""]);
            (local.is_some() && dead.is_some()).then_some(text)
        })?;
        ensure!(series(&text, "registry_gate_registry_test_success", &["registry=\"local\""]) == Some(1.0), "{text}");
        ensure!(series(&text, "registry_gate_registry_test_success", &["registry=\"dead\""]) == Some(0.0), "{text}");
        ensure!(
            series(&text, "registry_gate_registry_test_failures_total", &["registry=\"dead\"", "stage=\"connect\""]).is_some_and(|n| n >= 1.0),
            "{text}"
        );
        ensure!(
            series(&text, "registry_gate_registry_test_failures_total", &["registry=\"local\"", "stage=\"credentials\""]) == Some(0.0),
            "every stage's counter exists at zero:\n{text}"
        );
        Ok(())
    });

    s.run(
        "connection tests: a source rotated to a wrong password fails at credentials within seconds",
        || {
            let started = Instant::now();
            apply(cp, &source_secret("local-pull", &host, WRONG))?;
            wait_for("a credentials failure", Duration::from_secs(20), Duration::from_millis(200), |last| {
                let text = metrics();
                let failures = series(
                    &text,
                    "registry_gate_registry_test_failures_total",
                    &["registry=\"local\"", "stage=\"credentials\""],
                );
                *last = format!("credentials failures {failures:?}");
                failures.filter(|n| *n >= 1.0)
            })?;
            println!(
                "source rotated to a wrong password -> credentials failure in the metrics: {} ms",
                started.elapsed().as_millis()
            );
            let log = std::fs::read_to_string(&controller.log)?;
            ensure!(log.contains("registry connection test failed"), "no log line for the failure");
            ensure!(!log.contains(PASSWORD) && !log.contains(WRONG), "a password is in the controller's log");
            Ok(())
        },
    );
    let _ = cp.kubectl(&["-n", GATE_NS, "delete", "secret", "local-pull", "--ignore-not-found"]);
    drop(registry);
}
