//! `registry-gate controller` against the real API server: pull-secret copies appear, follow
//! their source, are restored, are removed, and never overwrite a Secret that is not theirs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};

use super::Scenarios;
use super::cluster::{ControlPlane, root, tail, wait_for};
use super::gate::{
    Gate, Registration, binary, die_with_this_thread, free_port, wait_until_enforced, webhook_configurations,
    write_certificates,
};

pub(crate) const GATE_NS: &str = "registry-gate";
const MANAGED: &str = "app.kubernetes.io/managed-by=registry-gate";

/// The policy the controller runs with: one registry for every namespace, one for prod-* only.
pub(crate) fn policy(with_ghcr: bool) -> String {
    let mut text = String::from(
        "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nexemptNamespaces: [kube-system]\nregistries:\n  - {name: hub-official, type: Public, url: docker.io/library}\n  - {name: corp, type: Generic, url: \"registry.corp.example:5000\", pullSecret: corp-pull, namespaces: [\"sync-prod-*\"]}\n",
    );
    if with_ghcr {
        text += "  - {name: team-ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}\n";
    }
    text
}

/// A dockerconfigjson Secret for `host`, with a recognizable fake password.
pub(crate) fn source_secret(name: &str, host: &str, password: &str) -> Value {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("robot:{password}"));
    let config =
        json!({"auths": {host: {"username": "robot", "password": password, "auth": auth}}}).to_string();
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": GATE_NS},
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)}
    })
}

pub(crate) fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A running `registry-gate controller`, killed when dropped.
pub(crate) struct ControllerProcess {
    pub(crate) child: Option<Child>,
    metrics_port: u16,
    pub(crate) log: PathBuf,
}

impl ControllerProcess {
    pub(crate) fn start(cp: &ControlPlane, dir: &Path, policy: &Path) -> anyhow::Result<Self> {
        Self::start_with(cp, dir, policy, &[])
    }

    /// Starts it with `extra` arguments after the usual ones.
    pub(crate) fn start_with(
        cp: &ControlPlane,
        dir: &Path,
        policy: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log = dir.join("controller.log");
        let out = File::create(&log)?;
        let metrics_port = free_port();
        let child = die_with_this_thread()
            .arg(binary())
            .args(["controller", "--namespace", GATE_NS, "--policy"])
            .arg(policy)
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}"), "--resync-seconds", "60"])
            .args(["--log-format", "json"])
            .args(extra)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start registry-gate controller")?;
        let mut controller = ControllerProcess { child: Some(child), metrics_port, log };
        let started = Instant::now();
        wait_for(
            "the controller to be ready",
            Duration::from_secs(30),
            Duration::from_millis(100),
            |last| {
                if let Some(status) = controller.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    *last = format!("exited {status}");
                    return Some(Err(()));
                }
                match controller.get("/readyz") {
                    Ok((200, _)) => Some(Ok(())),
                    Ok((status, body)) => {
                        *last = format!("{status} {body}");
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
        println!("registry-gate controller ready in {} ms", started.elapsed().as_millis());
        Ok(controller)
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("not HTTP")?;
        Ok((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn apply(cp: &ControlPlane, object: &Value) -> anyhow::Result<()> {
    cp.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", "-"],
        &object.to_string(),
    )
    .ok()?;
    Ok(())
}

fn secret(cp: &ControlPlane, namespace: &str, name: &str) -> Option<Value> {
    let run = cp.kubectl(&["-n", namespace, "get", "secret", name, "-o", "json", "--ignore-not-found"]);
    run.json().ok().filter(|v| !v.is_null())
}

fn data(secret: &Value) -> &Value {
    &secret["data"][".dockerconfigjson"]
}

/// Waits until `namespace/name` exists with the given source's data and is labelled as ours.
fn wait_for_copy(cp: &ControlPlane, namespace: &str, name: &str, source: &Value) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait_for(
        &format!("copy {namespace}/{name}"),
        Duration::from_secs(15),
        Duration::from_millis(50),
        |last| {
            let copy = secret(cp, namespace, name)?;
            *last = copy.to_string();
            (data(&copy) == data(source)
                && copy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "registry-gate")
                .then_some(())
        },
    )?;
    Ok(started.elapsed())
}

fn wait_for_absence(cp: &ControlPlane, namespace: &str, name: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("{namespace}/{name} to be gone"),
        Duration::from_secs(15),
        Duration::from_millis(50),
        |last| {
            let found = secret(cp, namespace, name);
            *last = format!("{found:?}");
            found.is_none().then_some(())
        },
    )
}

fn events(cp: &ControlPlane, namespace: &str, reason: &str) -> Vec<Value> {
    let run = cp.kubectl(&[
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        &format!("reason={reason}"),
        "-o",
        "json",
    ]);
    run.json().ok().and_then(|v| v["items"].as_array().cloned()).unwrap_or_default()
}

pub fn pull_secret_sync(cp: &ControlPlane, s: &mut Scenarios, dir: &Path) {
    let policy_file = dir.join("controller-policy.yaml");
    let ghcr = source_secret("ghcr-acme", "ghcr.io", "FAKE-ghcr-password-1");
    let corp = source_secret("corp-pull", "registry.corp.example:5000", "FAKE-corp-password-1");
    let mut controller = None;
    let ready = s.run("sync setup: sources in registry-gate, a foreign Secret, the controller", || {
        cp.kubectl(&["apply", "--server-side", "-f", "manifests/base/namespace.yaml"]).ok()?;
        for object in [&ghcr, &corp, &namespace("sync-owned")] {
            apply(cp, object)?;
        }
        // A Secret of the pull secret's name that someone else made, before the controller runs.
        apply(cp, &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ghcr-acme", "namespace": "sync-owned"},
                          "stringData": {"note": "mine"}}))?;
        std::fs::write(&policy_file, policy(true))?;
        controller = Some(ControllerProcess::start(cp, dir, &policy_file)?);
        Ok(())
    });
    if !ready {
        return;
    }
    s.run("sync: a new namespace gets the copies its scope allows, within a second", || {
        let mut latencies = Vec::new();
        for round in 0..5 {
            let name = format!("sync-team-{round}");
            let started = Instant::now();
            apply(cp, &namespace(&name))?;
            wait_for_copy(cp, &name, "ghcr-acme", &ghcr)?;
            latencies.push(started.elapsed());
            ensure!(
                secret(cp, &name, "corp-pull").is_none(),
                "corp-pull copied into {name}, outside its scope"
            );
        }
        apply(cp, &namespace("sync-prod-eu"))?;
        wait_for_copy(cp, "sync-prod-eu", "corp-pull", &corp)?;
        wait_for_copy(cp, "sync-prod-eu", "ghcr-acme", &ghcr)?;
        ensure!(secret(cp, "kube-system", "ghcr-acme").is_none(), "copied into an exempt namespace");
        ensure!(
            secret(cp, GATE_NS, "ghcr-acme").is_some_and(|s| data(&s) == data(&ghcr)),
            "the source itself changed"
        );
        latencies.sort();
        println!("namespace created -> copy present (kubectl apply included): {latencies:?}");
        ensure!(
            latencies[latencies.len() - 1] < Duration::from_secs(5),
            "slowest {:?}",
            latencies[latencies.len() - 1]
        );
        Ok(())
    });
    s.run("sync: a Secret registry-gate did not create is untouched and reported", || {
        let foreign = secret(cp, "sync-owned", "ghcr-acme").context("the foreign Secret")?;
        ensure!(
            foreign["data"]["note"].is_string() && data(&foreign).is_null(),
            "the foreign Secret was overwritten: {foreign}"
        );
        let event = wait_for(
            "a PullSecretConflict Event",
            Duration::from_secs(15),
            Duration::from_millis(100),
            |_| events(cp, "sync-owned", "PullSecretConflict").into_iter().next(),
        )?;
        ensure!(event["type"] == "Warning", "{event}");
        println!("Event: {}", event["message"]);
        Ok(())
    });
    s.run("sync: a rotated source reaches every copy", || {
        let rotated = source_secret("ghcr-acme", "ghcr.io", "FAKE-ghcr-password-2");
        let started = Instant::now();
        apply(cp, &rotated)?;
        for name in ["sync-team-0", "sync-team-4", "sync-prod-eu"] {
            wait_for_copy(cp, name, "ghcr-acme", &rotated)?;
        }
        println!("source rotated -> every copy current: {} ms", started.elapsed().as_millis());
        Ok(())
    });
    s.run("sync: after a rotation, a Pod the webhooks admit names a copy holding the new content", || {
        // The webhook on the controller's policy, registered as manifests/base registers it.
        write_certificates(dir)?;
        let (webhook_port, metrics_port) = (free_port(), free_port());
        let policy_arg = policy_file.to_str().context("UTF-8 path")?;
        let _gate = Gate::start(dir, webhook_port, metrics_port, &["--policy", policy_arg], "gate.log")?;
        let ca = std::fs::read(dir.join("ca.crt"))?;
        let _registration =
            Registration::apply(cp, &webhook_configurations(cp, webhook_port, &ca, |_| true)?)?;
        wait_until_enforced(cp, "sync-team-2")?;
        let current = secret(cp, GATE_NS, "ghcr-acme").context("source")?;
        ensure!(
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(data(&current).as_str().unwrap_or_default())?
            )
            .contains("FAKE-ghcr-password-2"),
            "the source is not the rotated one"
        );
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "after-rotation", "namespace": "sync-team-2"},
            "spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/app:1"}]}
        });
        let created =
            cp.kubectl_stdin(&["create", "-o", "json", "-f", "-"], &pod.to_string()).ok()?.json()?;
        let names: Vec<&str> = created["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .collect();
        ensure!(names == ["ghcr-acme"], "the webhook injected {names:?}, not [ghcr-acme]");
        let copy =
            secret(cp, "sync-team-2", "ghcr-acme").context("the Pod names a Secret that does not exist")?;
        ensure!(data(&copy) == data(&current), "the Secret the Pod names does not hold the rotated content");
        // Where sync makes no copy, admission admits no image: corp is scoped to sync-prod-*.
        let corp_pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "corp-outside-scope", "namespace": "sync-team-2"},
            "spec": {"containers": [{"name": "app", "image": "registry.corp.example:5000/app:1"}]}
        });
        let refused = cp.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &corp_pod.to_string());
        ensure!(
            !refused.success() && refused.stderr.contains("may not be used in namespace \"sync-team-2\""),
            "a corp image outside its scope: {}",
            refused.stderr
        );
        ensure!(secret(cp, "sync-team-2", "corp-pull").is_none(), "corp-pull copied outside its scope");
        cp.kubectl(&["-n", "sync-team-2", "delete", "pod", "after-rotation", "--wait=false"]).ok()?;
        Ok(())
    });
    s.run("sync: a copy edited or deleted by hand is restored", || {
        let current = secret(cp, GATE_NS, "ghcr-acme").context("source")?;
        cp.kubectl(&[
            "-n",
            "sync-team-1",
            "patch",
            "secret",
            "ghcr-acme",
            "--type=merge",
            "-p",
            r#"{"data":{".dockerconfigjson":"e30="}}"#,
        ])
        .ok()?;
        wait_for_copy(cp, "sync-team-1", "ghcr-acme", &current)?;
        cp.kubectl(&["-n", "sync-team-2", "delete", "secret", "ghcr-acme"]).ok()?;
        wait_for_copy(cp, "sync-team-2", "ghcr-acme", &current)?;
        Ok(())
    });
    s.run("sync: an invalid source is reported and changes no copy", || {
        let before = secret(cp, "sync-prod-eu", "corp-pull").context("copy")?;
        // The API server refuses a dockerconfigjson that is not JSON; one for another host it takes.
        let broken = source_secret("corp-pull", "other.example.com", "FAKE-corp-password-2");
        apply(cp, &broken)?;
        let event = wait_for(
            "an InvalidPullSecret Event",
            Duration::from_secs(15),
            Duration::from_millis(100),
            |_| events(cp, GATE_NS, "InvalidPullSecret").into_iter().next(),
        )?;
        let message = event["message"].as_str().unwrap_or_default();
        ensure!(!message.contains("FAKE-"), "the Event shows a credential: {message}");
        println!("Event: {message}");
        std::thread::sleep(Duration::from_secs(1));
        let after = secret(cp, "sync-prod-eu", "corp-pull").context("copy")?;
        ensure!(data(&after) == data(&before), "the copy changed with an invalid source");
        apply(cp, &corp)?;
        Ok(())
    });
    s.run("sync: a namespace gains and loses copies with the labels a namespaceSelector asks for", || {
        // A registry scoped by a label rather than a name, with a source of its own.
        let pay = source_secret("pay-pull", "pay.corp.example", "FAKE-pay-password-1");
        apply(cp, &pay)?;
        let scoped = format!(
            "{}  - {{name: pay, type: Generic, url: pay.corp.example, pullSecret: pay-pull, namespaceSelector: {{matchLabels: {{e2e-pay: \"yes\"}}}}}}\n",
            policy(true)
        );
        std::fs::write(&policy_file, scoped)?;
        let started = Instant::now();
        cp.kubectl(&["label", "namespace", "sync-team-3", "e2e-pay=yes"]).ok()?;
        wait_for_copy(cp, "sync-team-3", "pay-pull", &pay)?;
        let labelled = started.elapsed();
        ensure!(secret(cp, "sync-team-4", "pay-pull").is_none(), "pay-pull copied into an unlabelled namespace");
        let started = Instant::now();
        cp.kubectl(&["label", "namespace", "sync-team-3", "e2e-pay-"]).ok()?;
        wait_for_absence(cp, "sync-team-3", "pay-pull")?;
        println!(
            "label added -> copy present in {} ms; label removed -> copy gone in {} ms",
            labelled.as_millis(),
            started.elapsed().as_millis()
        );
        std::fs::write(&policy_file, policy(true))?;
        Ok(())
    });
    s.run("sync: a registry removed from the policy removes only the managed copies", || {
        std::fs::write(&policy_file, policy(false))?;
        for name in ["sync-team-0", "sync-team-3", "sync-prod-eu"] {
            wait_for_absence(cp, name, "ghcr-acme")?;
        }
        ensure!(secret(cp, "sync-owned", "ghcr-acme").is_some(), "the foreign Secret was deleted");
        ensure!(secret(cp, GATE_NS, "ghcr-acme").is_some(), "the source was deleted");
        ensure!(secret(cp, "sync-prod-eu", "corp-pull").is_some(), "an unrelated copy was deleted");
        Ok(())
    });
    s.run("sync: credentials appear in no log line or metric; the status says what it did", || {
        let controller = controller.as_ref().context("controller")?;
        let log = std::fs::read_to_string(&controller.log)?;
        let (_, metrics) = controller.get("/metrics")?;
        for text in [&log, &metrics] {
            ensure!(!text.contains("FAKE-"), "a credential leaked");
            let encoded = base64::engine::general_purpose::STANDARD.encode("robot:FAKE");
            ensure!(!text.contains(&encoded[..12]), "an encoded credential leaked");
        }
        ensure!(
            metrics.contains(r#"registry_gate_pull_secret_copies{registry="corp",state="synced"} 1"#),
            "{metrics}"
        );
        let managed = cp.kubectl(&["get", "secrets", "-A", "-l", MANAGED, "-o", "name"]).ok()?;
        println!("managed copies now: {}", managed.stdout.lines().count());
        let status =
            wait_for("the status ConfigMap", Duration::from_secs(15), Duration::from_millis(200), |last| {
                let run = cp.kubectl(&[
                    "-n",
                    GATE_NS,
                    "get",
                    "configmap",
                    "registry-gate-sync-status",
                    "-o",
                    "json",
                ]);
                *last = run.stderr.clone();
                run.json()
                    .ok()
                    .and_then(|v| v["data"]["status.yaml"].as_str().map(str::to_owned))
                    .filter(|t| t.contains("corp:"))
            })?;
        println!("status.yaml:\n{status}");
        Ok(())
    });
    s.run("sync: the webhook's account holds no Secret permission; the controller's does", || {
        let rendered =
            cp.kubectl(&["kustomize", root().join("manifests/base").to_str().context("UTF-8")?]).ok()?;
        let rbac: Vec<&str> = rendered
            .stdout
            .split("\n---\n")
            .filter(|doc| {
                [
                    "kind: ServiceAccount",
                    "kind: Role",
                    "kind: ClusterRole",
                    "kind: RoleBinding",
                    "kind: ClusterRoleBinding",
                ]
                .iter()
                .any(|k| doc.contains(&format!("\n{k}\n")) || doc.starts_with(k))
            })
            .collect();
        ensure!(!rbac.is_empty(), "no RBAC objects in manifests/base");
        cp.kubectl_stdin(
            &["apply", "--server-side", "--field-manager=e2e", "-f", "-"],
            &rbac.join("\n---\n"),
        )
        .ok()?;
        let can = |account: &str, verb: &str, resource: &str, namespace: &str| -> anyhow::Result<bool> {
            let user = format!("system:serviceaccount:{GATE_NS}:{account}");
            let run = cp.kubectl(&["auth", "can-i", verb, resource, "-n", namespace, "--as", &user]);
            match run.stdout.trim() {
                "yes" => Ok(true),
                "no" => Ok(false),
                other => bail!("kubectl auth can-i: {other} {}", run.stderr),
            }
        };
        for verb in ["get", "list", "watch", "create", "update", "delete"] {
            for namespace in ["sync-team-0", GATE_NS] {
                ensure!(
                    !can("registry-gate", verb, "secrets", namespace)?,
                    "the webhook may {verb} secrets in {namespace}"
                );
            }
            ensure!(
                can("registry-gate-controller", verb, "secrets", "sync-team-0")?,
                "the controller may not {verb} secrets"
            );
        }
        ensure!(
            !can("registry-gate-controller", "create", "pods", "sync-team-0")?,
            "the controller may create pods"
        );
        Ok(())
    });
    if let Some(controller) = controller.as_ref() {
        println!("controller log tail:\n{}", controller.log_tail(5));
    }
    s.run("sync: a copy the API server refuses is counted as failed and retried until it is made", || {
        let controller = controller.as_ref().context("controller")?;
        // A ValidatingAdmissionPolicy refusing Secrets named corp-pull in sync-prod-eu: a real
        // refusal by the API server, as a cluster's own admission policy could give.
        apply(
            cp,
            &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                    "metadata": {"name": "e2e-refuse-corp-pull"},
                    "spec": {"failurePolicy": "Fail",
                             "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                                     "operations": ["CREATE"], "resources": ["secrets"]}]},
                             "validations": [{"expression": "object.metadata.name != 'corp-pull'",
                                              "message": "e2e: corp-pull is refused here"}]}}),
        )?;
        apply(
            cp,
            &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": "e2e-refuse-corp-pull"},
                    "spec": {"policyName": "e2e-refuse-corp-pull", "validationActions": ["Deny"],
                             "matchResources": {"namespaceSelector": {"matchLabels": {
                                 "kubernetes.io/metadata.name": "sync-prod-eu"}}}}}),
        )?;
        // The API server reads admission policies from a cache: wait until it refuses the name
        // (a server-side dry run goes through admission) before taking the copy away.
        wait_for("the refusal in force", Duration::from_secs(15), Duration::from_millis(100), |last| {
            let probe = ["-n", "sync-prod-eu", "create", "secret", "generic", "corp-pull", "--dry-run=server"];
            let run = cp.kubectl(&probe);
            *last = format!("{:?} {}", run.code, run.stderr);
            run.stderr.contains("corp-pull is refused here").then_some(())
        })?;
        cp.kubectl(&["-n", "sync-prod-eu", "delete", "secret", "corp-pull"]).ok()?;
        let failed = r#"registry_gate_pull_secret_copies{registry="corp",state="failed"} 1"#;
        wait_for("the failed copy counted", Duration::from_secs(15), Duration::from_millis(100), |last| {
            let (_, metrics) = controller.get("/metrics").ok()?;
            *last = metrics.lines().filter(|l| l.contains("pull_secret_copies{")).collect::<Vec<_>>().join("\n");
            metrics.contains(failed).then_some(())
        })?;
        ensure!(secret(cp, "sync-prod-eu", "corp-pull").is_none(), "the copy exists despite the refusal");
        for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
            cp.kubectl(&["delete", kind, "e2e-refuse-corp-pull"]).ok()?;
        }
        let retried = wait_for_copy(cp, "sync-prod-eu", "corp-pull", &corp)?;
        println!("copy made {} ms after the refusal went", retried.as_millis());
        let (_, metrics) = controller.get("/metrics")?;
        ensure!(
            metrics.contains(r#"registry_gate_pull_secret_copies{registry="corp",state="synced"} 1"#)
                && metrics.contains(r#"registry_gate_pull_secret_copies{registry="corp",state="failed"} 0"#),
            "{metrics}"
        );
        Ok(())
    });
    s.run("sync: SIGTERM stops the controller cleanly, well within a Pod's 30 s grace period", || {
        let child = controller.as_mut().and_then(|c| c.child.as_mut()).context("controller")?;
        let stopping = Instant::now();
        let signalled =
            std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        ensure!(signalled.success(), "kill -TERM failed");
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            // Its own limit for in-flight reconciles is 20 s; anything near it means it waited
            // for tasks that never watch the stop signal.
            ensure!(stopping.elapsed() < Duration::from_secs(15), "still running 15 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        println!("controller stopped {} ms after SIGTERM", stopping.elapsed().as_millis());
        ensure!(status.success(), "exit status {status} after SIGTERM");
        Ok(())
    });
}
