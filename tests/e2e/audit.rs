//! The controller's audit against the real API server: what already runs is re-decided against
//! the policy in force, at start and after each policy change, and reported in metrics and in
//! the ConfigMap registry-gate-audit (whose image inventory the policy door reads).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use super::Scenarios;
use super::cluster::{ControlPlane, wait_for};
use super::gate::{Gate, Registration, free_port, registry_gate, webhook_configurations, write_certificates};
use super::sync::{ControllerProcess, GATE_NS, apply, namespace, policy};

const DEV: &str = "audit-dev";
/// An image only this scenario runs (Docker Hub's official namespace, which the policy admits),
/// so that what a policy edit would refuse is known exactly although other scenarios leave Pods
/// in the shared API server.
const WEB: &str = "docker.io/library/audit-web:1";

fn pod(namespace: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"containers": [{"name": "app", "image": image}]}})
}

fn deployment(namespace: &str, name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
           "spec": {"selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "app", "image": image}]}}}})
}

/// The value of the one series of `name` whose labels include every `label="value"` given.
fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn audit_configmap(cp: &ControlPlane) -> Option<Value> {
    let run = cp.kubectl(&["-n", GATE_NS, "get", "configmap", "registry-gate-audit", "-o", "json"]);
    run.success().then(|| run.json().ok()).flatten()
}

pub fn workload_audit(cp: &ControlPlane, s: &mut Scenarios, dir: &Path) {
    let policy_file = dir.join("audit-policy.yaml");
    let mut controller = None;
    let ready = s.run("audit setup: Pods and a Deployment, some the policy refuses; the controller", || {
        cp.kubectl(&["apply", "--server-side", "-f", "manifests/base/namespace.yaml"]).ok()?;
        apply(cp, &namespace(DEV))?;
        for object in [
            pod(DEV, "web", WEB),
            pod(DEV, "miner", "quay.io/evil/miner:1"),
            pod(DEV, "corp", "registry.corp.example:5000/app:1"),
            deployment(DEV, "miner-fleet", "quay.io/evil/miner:1"),
            pod("kube-system", "audit-exempt", "quay.io/evil/miner:1"),
        ] {
            apply(cp, &object)?;
        }
        // A finished Pod pulls nothing any more: the audit leaves it out.
        apply(cp, &pod(DEV, "finished", "quay.io/evil/finished:1"))?;
        cp.kubectl(&[
            "-n",
            DEV,
            "patch",
            "pod",
            "finished",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Succeeded"}}"#,
        ])
        .ok()?;
        std::fs::write(&policy_file, policy(false))?;
        controller = Some(ControllerProcess::start(cp, dir, &policy_file)?);
        Ok(())
    });
    let Some(controller) = controller.filter(|_| ready) else { return };
    let metrics = || controller.get("/metrics").map(|(_, body)| body).unwrap_or_default();

    s.run("audit: the first pass reports each refused image by namespace, kind, registry and reason", || {
        let text = wait_for("an audit pass", Duration::from_secs(30), Duration::from_millis(200), |last| {
            let text = metrics();
            *last =
                text.lines().filter(|l| l.starts_with("registry_gate_audit")).collect::<Vec<_>>().join("\n");
            series(&text, "registry_gate_audit_last_run_timestamp_seconds", &[])
                .filter(|t| *t > 0.0)
                .map(|_| text)
        })?;
        let dev = &format!("namespace=\"{DEV}\"");
        let expect = [
            (&["kind=\"Pod\"", "registry=\"quay.io\"", "reason=\"unregistered\""][..], 1.0),
            (&["kind=\"Deployment\"", "registry=\"quay.io\"", "reason=\"unregistered\""][..], 1.0),
            (
                &[
                    "kind=\"Pod\"",
                    "registry=\"registry.corp.example:5000\"",
                    "reason=\"namespace-not-allowed\"",
                ][..],
                1.0,
            ),
        ];
        for (labels, want) in expect {
            let labels: Vec<&str> = labels.iter().copied().chain([dev.as_str()]).collect();
            let got = series(&text, "registry_gate_audit_violations", &labels);
            ensure!(got == Some(want), "violations {labels:?}: {got:?}\n{text}");
        }
        ensure!(
            !text
                .lines()
                .any(|l| l.starts_with("registry_gate_audit_violations{") && l.contains("kube-system")),
            "an exempt namespace was reported"
        );
        // Other scenarios share the API server: at least these two Pods are in violation.
        ensure!(
            series(&text, "registry_gate_audit_objects_in_violation", &["kind=\"Pod\""])
                .is_some_and(|n| n >= 2.0),
            "Pods in violation:\n{text}"
        );
        Ok(())
    });

    s.run("audit: the ConfigMap holds a summary and the image inventory", || {
        let configmap =
            wait_for("registry-gate-audit", Duration::from_secs(10), Duration::from_millis(200), |_| {
                audit_configmap(cp)
            })?;
        let summary = configmap["data"]["summary.yaml"].as_str().context("summary.yaml")?;
        ensure!(
            summary.contains("quay.io/evil/miner:1") && summary.contains("Deployment/miner-fleet"),
            "{summary}"
        );
        let inventory: Value =
            serde_json::from_str(configmap["data"]["images.json"].as_str().context("images.json")?)?;
        let images = inventory["images"].as_array().context("images")?;
        let miner = images
            .iter()
            .find(|i| i["namespace"] == DEV && i["image"] == "quay.io/evil/miner:1")
            .context("the miner image in the inventory")?;
        ensure!(miner["pods"] == 1 && miner["workloads"] == 1, "{miner}");
        ensure!(inventory["truncated"] == false, "{inventory}");
        ensure!(
            !images.iter().any(|i| i["image"] == "quay.io/evil/finished:1"),
            "a finished Pod was audited: {inventory}"
        );
        Ok(())
    });

    s.run("audit: a policy change is audited again, within seconds", || {
        let before = series(&metrics(), "registry_gate_audit_policy_generation", &[]).unwrap_or(0.0);
        let started = Instant::now();
        std::fs::write(
            &policy_file,
            policy(false) + "  - {name: tolerated, type: Quay, url: quay.io/evil}\n",
        )?;
        let text = wait_for(
            "an audit with the new policy",
            Duration::from_secs(30),
            Duration::from_millis(100),
            |last| {
                let text = metrics();
                let generation = series(&text, "registry_gate_audit_policy_generation", &[]).unwrap_or(0.0);
                *last = format!("audited generation {generation}, before {before}");
                (generation > before).then_some(text)
            },
        )?;
        println!(
            "policy edited -> audit with the new policy published: {} ms",
            started.elapsed().as_millis()
        );
        ensure!(
            series(&text, "registry_gate_audit_violations", &["registry=\"quay.io\""]).is_none(),
            "quay.io/evil is now registered, yet still reported:\n{text}"
        );
        ensure!(
            series(&text, "registry_gate_audit_violations", &["registry=\"registry.corp.example:5000\""])
                == Some(1.0),
            "the corp violation is gone:\n{text}"
        );
        Ok(())
    });

    s.run("policy door: an edit that would refuse running workloads is answered with a warning", || {
        // The webhook on the policy ConfigMap, as installed: it follows the audit's ConfigMap.
        let current = std::fs::read_to_string(&policy_file)?;
        super::apply_policy(cp, &current).ok()?;
        write_certificates(dir)?;
        let (webhook_port, metrics_port) = (free_port(), free_port());
        let kubeconfig = cp.kubeconfig.to_str().context("UTF-8 path")?;
        let source = ["--policy-configmap", "registry-gate/registry-gate-policy", "--kubeconfig", kubeconfig];
        let _gate = Gate::start(dir, webhook_port, metrics_port, &source, "gate.log")?;
        let ca = std::fs::read(dir.join("ca.crt"))?;
        let _registration =
            Registration::apply(cp, &webhook_configurations(cp, webhook_port, &ca, |_| true)?)?;
        // A deny rule on the one image only audit-dev/web runs.
        let without_hub = current.clone() + "deny:\n  - {url: docker.io/library/audit-web}\n";
        let dry_run = |text: &str| {
            cp.kubectl_stdin(
                &[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=registry-gate-e2e",
                    "--dry-run=server",
                    "-f",
                    "-",
                ],
                &super::policy_configmap(text).to_string(),
            )
        };
        let warning =
            wait_for("the in-use warning", Duration::from_secs(15), Duration::from_millis(200), |last| {
                let run = dry_run(&without_hub);
                *last = run.stderr.clone();
                (run.success() && run.stderr.contains("would refuse images")).then_some(run.stderr)
            })?;
        println!("kubectl apply of a policy denying docker.io/library/audit-web:\n{}", warning.trim_end());
        ensure!(
            warning.contains("1 running Pod and 0 workloads in 1 namespace use today")
                && warning.contains("audit-dev/Pod/web uses docker.io/library/audit-web:1"),
            "{warning}"
        );
        // `policy diff` reads the same inventory from the cluster.
        let (old_file, new_file) = (dir.join("diff-old.yaml"), dir.join("diff-new.yaml"));
        std::fs::write(&old_file, &current)?;
        std::fs::write(&new_file, &without_hub)?;
        let diff = registry_gate(&[
            "policy",
            "diff",
            old_file.to_str().context("UTF-8 path")?,
            new_file.to_str().context("UTF-8 path")?,
            "--in-use-from-cluster",
            "--kubeconfig",
            kubeconfig,
        ]);
        ensure!(
            diff.code == Some(1)
                && diff
                    .stdout
                    .contains("breaks-running audit-dev Pod/web uses docker.io/library/audit-web:1 (1 Pods, 0 workloads)"),
            "policy diff --in-use-from-cluster: {:?}\n{}{}",
            diff.code,
            diff.stdout,
            diff.stderr
        );
        // An edit that refuses nothing in use (it only adds a registry) warns of nothing.
        let wider = current.clone() + "  - {name: more, type: GHCR, url: ghcr.io/more}\n";
        let run = dry_run(&wider);
        ensure!(run.success() && !run.stderr.contains("would refuse images"), "{}", run.stderr);
        Ok(())
    });

    let _ = cp.kubectl(&[
        "-n",
        GATE_NS,
        "delete",
        "configmap",
        "registry-gate-policy",
        "registry-gate-audit",
        "--ignore-not-found",
    ]);
    let _ = cp.kubectl(&["delete", "namespace", DEV, "--wait=false"]);
    let _ = cp.kubectl(&["-n", "kube-system", "delete", "pod", "audit-exempt", "--wait=false"]);
}
