//! The real registry-gate binary as a subprocess, and its registration with the apiserver.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use serde_json::{Value, json};

use super::cluster::{ControlPlane, Run, root, run, tail, wait_for};

/// The registry-gate binary Cargo built for this test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_registry-gate"))
}

/// A command that runs its arguments as a program which is killed when the thread that started
/// it ends, however it ends (Linux `PR_SET_PDEATHSIG` through util-linux `setpriv`, which then
/// execs the program, so the PID is the program's). The Drop guards kill the server on every
/// path a test takes, panics included; this also covers the test process itself being killed.
/// Without setpriv, the program runs directly and only the guards apply.
pub fn die_with_this_thread() -> Command {
    const SETPRIV: &str = "/usr/bin/setpriv";
    if Path::new(SETPRIV).is_file() {
        let mut command = Command::new(SETPRIV);
        command.args(["--pdeathsig", "KILL", "--"]);
        command
    } else {
        Command::new("/usr/bin/env")
    }
}

/// `registry-gate ARGS...`, run to completion.
pub fn registry_gate(args: &[&str]) -> Run {
    let mut command = Command::new(binary());
    command.args(args);
    run(command, None)
}

/// A port on 127.0.0.1 that nobody listened on a moment ago (racy by nature, as envtest's).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// `registry-gate certs --out DIR --name 127.0.0.1 --name localhost`: ca.crt, tls.crt, tls.key.
pub fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let out = dir.to_str().context("UTF-8 path")?;
    registry_gate(&["certs", "--out", out, "--name", "127.0.0.1", "--name", "localhost"]).ok()?;
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        ensure!(dir.join(file).is_file(), "registry-gate certs wrote no {file}");
    }
    Ok(())
}

/// A running `registry-gate serve`, killed when dropped.
pub struct Gate {
    child: Option<Child>,
    pub metrics_port: u16,
    /// Its stdout and stderr (JSON logs).
    pub log: PathBuf,
}

impl Gate {
    /// Starts `registry-gate serve` with the certificates in `dir` and the given policy arguments
    /// (`--policy FILE`, or `--policy-configmap NS/NAME --kubeconfig PATH`), and waits until it is
    /// ready. Logs go to `dir/<log_name>`.
    pub fn start(
        dir: &Path,
        webhook_port: u16,
        metrics_port: u16,
        policy_args: &[&str],
        log_name: &str,
    ) -> anyhow::Result<Gate> {
        let log = dir.join(log_name);
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = die_with_this_thread()
            .arg(binary())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .args(policy_args)
            .args(["--log-format", "json"])
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("cannot start registry-gate serve")?;
        let mut gate = Gate { child: Some(child), metrics_port, log };
        let started = Instant::now();
        gate.wait_ready(Duration::from_secs(30))?;
        println!("registry-gate ready on :{webhook_port} in {} ms", started.elapsed().as_millis());
        Ok(gate)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("registry-gate exited ({status}) before it was ready; its log:\n{}", self.log_tail(30));
            }
            let last = match self.operations_get("/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "registry-gate not ready after {timeout:?} (/readyz: {last}); its log:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the plain-HTTP operations port.
    pub fn operations_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.metrics_port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_text(), lines)
    }

    /// Kills the server (SIGKILL: no drain, as in a crash or a lost node) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.kill();
    }
}

// === Webhook configurations ===

/// The objects of `kubectl kustomize manifests/base`, as JSON.
pub fn render_base(cp: &ControlPlane) -> anyhow::Result<Vec<Value>> {
    let base = root().join("manifests/base");
    let rendered = cp.kubectl(&["kustomize", base.to_str().context("UTF-8 path")?]).ok()?;
    let documents =
        yaml_rust2::YamlLoader::load_from_str(&rendered.stdout).context("kustomize printed YAML")?;
    Ok(documents.iter().map(yaml_to_json).filter(|v| !v.is_null()).collect())
}

fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(text) => {
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
        }
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// The webhook names manifests/base must define, and the paths they call.
pub const VALIDATING: [(&str, &str); 2] =
    [("images.registry-gate.io", "/validate"), ("policy.registry-gate.io", "/validate-policy")];
pub const MUTATING: [(&str, &str); 1] = [("pull-secrets.registry-gate.io", "/mutate")];

/// The Validating- and MutatingWebhookConfiguration of manifests/base, with every setting as
/// rendered (rules, failurePolicy, namespaceSelector, objectSelector, matchConditions, timeouts)
/// except `clientConfig`: the Service reference becomes `url: https://127.0.0.1:PORT<its path>`
/// with the test CA as `caBundle`, since no Service networking runs here. `keep` picks the
/// webhooks to register by name.
pub fn webhook_configurations(
    cp: &ControlPlane,
    port: u16,
    ca_pem: &[u8],
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut configurations = Vec::new();
    for mut object in render_base(cp)? {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let expected: &[(&str, &str)] = match kind.as_str() {
            "ValidatingWebhookConfiguration" => &VALIDATING,
            "MutatingWebhookConfiguration" => &MUTATING,
            _ => continue,
        };
        let webhooks =
            object["webhooks"].as_array_mut().with_context(|| format!("{kind} has no webhooks"))?;
        let names: Vec<String> =
            webhooks.iter().map(|w| w["name"].as_str().unwrap_or_default().to_owned()).collect();
        let wanted: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
        ensure!(
            names == wanted,
            "manifests/base {kind} defines webhooks {names:?}; the e2e tests expect {wanted:?}"
        );
        for (webhook, (name, path)) in webhooks.iter_mut().zip(expected) {
            let service = &webhook["clientConfig"]["service"];
            ensure!(
                service["path"] == *path,
                "webhook {name} calls path {} in manifests/base; the e2e tests expect {path}",
                service["path"]
            );
            webhook["clientConfig"] =
                json!({ "url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle });
        }
        webhooks.retain(|w| keep(w["name"].as_str().unwrap_or_default()));
        if !webhooks.is_empty() {
            configurations.push(object);
        }
    }
    ensure!(
        configurations.len() == 2 || configurations.len() == 1,
        "manifests/base has no webhook configurations"
    );
    Ok(configurations)
}

/// Webhook configurations applied to the cluster, deleted when dropped.
pub struct Registration<'a> {
    cp: &'a ControlPlane,
}

impl<'a> Registration<'a> {
    pub fn apply(cp: &'a ControlPlane, configurations: &[Value]) -> anyhow::Result<Registration<'a>> {
        let registration = Registration { cp };
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": configurations });
        cp.kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=registry-gate-e2e", "-f", "-"],
            &list.to_string(),
        )
        .ok()?;
        Ok(registration)
    }

    /// Deletes both configurations now (also done on drop).
    pub fn remove(&self) -> anyhow::Result<()> {
        self.cp
            .kubectl(&[
                "delete",
                "validatingwebhookconfiguration,mutatingwebhookconfiguration",
                "registry-gate",
                "--ignore-not-found",
                "--wait=false",
            ])
            .ok()
            .map(drop)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("cleanup: cannot delete the webhook configurations: {e:#}");
        }
    }
}

/// Waits until the apiserver calls registry-gate: a dry-run Pod with an unregistered image in
/// `namespace` is refused by it. The apiserver picks configurations up from a watch, a moment
/// after they are written.
pub fn wait_until_enforced(cp: &ControlPlane, namespace: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "registration-probe", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "unregistered.example/probe:1"}]}
    })
    .to_string();
    wait_for(
        "registry-gate's webhooks to be called",
        Duration::from_secs(20),
        Duration::from_millis(50),
        |last| {
            let run = cp.kubectl_stdin(&["create", "--dry-run=server", "-o", "name", "-f", "-"], &pod);
            *last = format!("{}{}", run.stdout, run.stderr);
            (!run.success() && run.stderr.contains("images.registry-gate.io")).then_some(())
        },
    )?;
    Ok(started.elapsed())
}
