//! The control plane every test of the binary shares: etcd + kube-apiserver from
//! `tests/controlplane/start.sh`, and the kubectl built next to them.
//!
//! `start.sh` runs in its command mode (`start.sh --bin DIR -- sh -c '...' start.sh`): the
//! command announces the control plane's workdir on stdout and then reads its standard input
//! until end of file. This process holds the only write end of that pipe for as long as it lives,
//! so however the test process ends (success, failed assertion, panic in a static, Ctrl-C, even
//! SIGKILL), the kernel closes the pipe, the command returns, and `start.sh` stops the apiserver
//! and etcd by their PIDs and deletes the workdir. Rust runs no destructors for statics and tests
//! have no global teardown; this needs neither.
//!
//! The same pipe carries requests, one a line, which the command serves one at a time:
//! `stop-apiserver` and `start-apiserver` (see [`ControlPlane::stop_apiserver`]). They run
//! `start.sh --stop-apiserver` / `--start-apiserver`, which keep the apiserver's PID in the
//! workdir's env file, where the final stop reads it. As the command reads end of file only
//! between requests, a restarted apiserver is recorded there before that stop can run: it too
//! dies with the test process, even when this process is killed in the middle of a restart.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where this test run keeps its files (certificates, policies, logs): a directory per process
/// under Cargo's `target/tmp`, kept when something fails, deleted otherwise by its owner.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("e2e-{prefix}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a scratch directory under target/tmp")
}

/// One control plane per test process ([`control_plane`]), and one more for a test that must
/// disturb its own ([`ControlPlane::start`]).
pub struct ControlPlane {
    pub bin: PathBuf,
    pub workdir: PathBuf,
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub url: String,
    /// The CA that signed the apiserver's serving certificate.
    pub ca: PathBuf,
    /// A bearer token of the admin (group system:masters).
    pub token: String,
    /// The minor release of the kube-apiserver and kubectl (built together): a few scenarios use
    /// what older releases lack (see [`ControlPlane::has`]).
    pub minor: u32,
    /// End of file on this pipe stops the control plane; it also carries requests (see the
    /// module notes).
    hold: Mutex<Hold>,
}

/// `start.sh` and the pipes to its command.
struct Hold {
    child: Child,
    /// `None` once closed (only by `Drop`).
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A kube-apiserver stopped by [`ControlPlane::stop_apiserver`], to be started again.
#[must_use = "the apiserver stays down until start_apiserver"]
pub struct StoppedApiserver {
    pid: u32,
    /// `/proc/<pid>/cmdline` of the process that was stopped.
    cmdline: Vec<u8>,
    /// When it was gone (its port refused connections and the process had exited).
    pub since: Instant,
    /// What `start.sh --stop-apiserver` said (how long the port and the process took).
    pub report: String,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
/// Webhook configurations are cluster-wide; tests that register them take turns.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// The shared control plane, started by the first caller. Panics (failing the test) with the
/// reason when it cannot be had: a missing binary is a failure, never a skip.
pub fn control_plane() -> &'static ControlPlane {
    let result = CONTROL_PLANE.get_or_init(|| {
        let started = Instant::now();
        let result = ControlPlane::start().map_err(|e| format!("{e:#}"));
        if let Ok(cp) = &result {
            println!(
                "control plane: {} up in {:.1} s (workdir {}, kubectl {})",
                cp.url,
                started.elapsed().as_secs_f64(),
                cp.workdir.display(),
                cp.bin.join("kubectl").display()
            );
        }
        result
    });
    match result {
        Ok(cp) => cp,
        Err(e) => panic!("cannot start the kube-apiserver + etcd control plane for the e2e tests:\n{e}"),
    }
}

/// Serializes the tests that register webhook configurations (a failed test does not poison it).
pub fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `REGISTRY_GATE_CONTROLPLANE_BIN`, else the last stdout line of `tests/controlplane/build.sh`
/// (which returns at once when the binaries are cached, and builds them otherwise).
pub fn binaries() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("REGISTRY_GATE_CONTROLPLANE_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let script = root().join("tests/controlplane/build.sh");
            // Its progress goes to stderr, straight to the terminal: a cold build takes minutes.
            let output = Command::new(&script)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("cannot run {}", script.display()))?;
            ensure!(
                output.status.success(),
                "{} failed ({}); set REGISTRY_GATE_CONTROLPLANE_BIN to a directory holding etcd, \
                 kube-apiserver and kubectl v1.37, or fix the build (it needs Go and the Go module proxy)",
                script.display(),
                output.status
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
            PathBuf::from(last.trim())
        }
    };
    for name in ["etcd", "kube-apiserver", "kubectl"] {
        let path = bin.join(name);
        ensure!(
            path.is_file(),
            "{} is missing: the control plane binaries are not available (REGISTRY_GATE_CONTROLPLANE_BIN \
             or tests/controlplane/build.sh)",
            path.display()
        );
    }
    Ok(bin)
}

/// start.sh's command (`$0` is start.sh): announce the workdir, then serve the requests read
/// from stdin until end of file. Each request's output goes to `logs/requests.log`; the answer is
/// one line.
const HOLD: &str = r#"printf 'registry-gate-e2e-ready %s\n' "$REGISTRY_GATE_CONTROLPLANE_DIR"
while IFS= read -r request; do
  case "$request" in
    stop-apiserver|start-apiserver)
      if "$0" "--$request" "$REGISTRY_GATE_CONTROLPLANE_DIR" \
        >>"$REGISTRY_GATE_CONTROLPLANE_DIR/logs/requests.log" 2>&1
      then echo "registry-gate-e2e-done $request"
      else echo "registry-gate-e2e-failed $request $?"
      fi ;;
    *) echo "registry-gate-e2e-unknown $request" ;;
  esac
done"#;
const READY: &str = "registry-gate-e2e-ready ";

impl ControlPlane {
    /// A control plane of its own for the caller (the tests share [`control_plane`]'s), with the
    /// same lifetime guarantees; stopped, and waited for, when dropped.
    pub fn start() -> anyhow::Result<ControlPlane> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let bin = binaries()?;
        let start_log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "e2e-controlplane-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let log =
            File::create(&start_log).with_context(|| format!("cannot create {}", start_log.display()))?;
        let script = root().join("tests/controlplane/start.sh");
        let mut child = Command::new(&script)
            .arg("--bin")
            .arg(&bin)
            .args(["--", "sh", "-c", HOLD])
            .arg(&script)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", script.display()))?;
        let stdin = child.stdin.take().context("start.sh's stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("start.sh's stdout")?);
        // start.sh has its own readiness timeout (90 s) and exits when it expires.
        let mut workdir = None;
        let mut line = String::new();
        while workdir.is_none() {
            line.clear();
            if stdout.read_line(&mut line).context("reading start.sh's output")? == 0 {
                let status = child.wait().ok().map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "start.sh exited ({status}) before the control plane was ready; its output ({}):\n{}",
                    start_log.display(),
                    tail(&std::fs::read_to_string(&start_log).unwrap_or_default(), 40)
                );
            }
            workdir = line.trim_end().strip_prefix(READY).map(PathBuf::from);
        }
        let workdir = workdir.context("workdir")?;
        let env =
            std::fs::read_to_string(workdir.join("env")).context("reading the control plane's env file")?;
        let var = |name: &str| -> anyhow::Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
                .map(str::to_owned)
                .with_context(|| format!("{name} missing from {}/env", workdir.display()))
        };
        let mut cp = ControlPlane {
            minor: 0,
            kubeconfig: PathBuf::from(var("KUBECONFIG")?),
            url: var("REGISTRY_GATE_APISERVER_URL")?,
            ca: PathBuf::from(var("REGISTRY_GATE_APISERVER_CA")?),
            token: var("REGISTRY_GATE_ADMIN_TOKEN")?,
            bin,
            workdir,
            hold: Mutex::new(Hold { child, stdin: Some(stdin), stdout }),
        };
        // Namespaces appear a moment after /readyz; wait for `default` to be listable.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = cp.kubectl(&["get", "namespace", "default", "-o", "name"]);
            if run.success() {
                break;
            }
            ensure!(Instant::now() < deadline, "the apiserver does not serve namespaces: {}", run.stderr);
            std::thread::sleep(Duration::from_millis(200));
        }
        let version = cp.kubectl(&["version", "-o", "json"]).ok()?.json()?;
        let minor = version["serverVersion"]["minor"].as_str().unwrap_or_default();
        cp.minor = minor
            .trim_end_matches('+')
            .parse()
            .with_context(|| format!("the apiserver reports minor version {minor:?}"))?;
        // start.sh's output only matters when it fails to start; it keeps writing to the unlinked file.
        let _ = std::fs::remove_file(&start_log);
        Ok(cp)
    }

    /// Whether this release has what Kubernetes 1.`since` brought, for running the tests
    /// against an older release than the pinned one (tests/controlplane/README.md). Says what it
    /// skips when it does not; the pinned release has everything, so there nothing is skipped.
    pub fn has(&self, since: u32, what: &str) -> bool {
        let has = self.minor >= since;
        if !has {
            println!("SKIPPED on 1.{}: {what} (Kubernetes 1.{since} and later)", self.minor);
        }
        has
    }

    /// Runs kubectl against the control plane.
    pub fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_with(args, None)
    }

    /// Runs kubectl with `input` on its standard input (for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Run {
        self.kubectl_with(args, Some(input))
    }

    fn kubectl_with(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args).current_dir(root());
        run(command, input)
    }

    /// Stops the kube-apiserver alone, etcd and the workdir staying as they are: SIGTERM, its
    /// port refuses connections, and once the process has exited (SIGKILL after
    /// `REGISTRY_GATE_APISERVER_STOP_GRACE`, 5 s: it drains open watches for up to 60 s), returns.
    pub fn stop_apiserver(&self) -> anyhow::Result<StoppedApiserver> {
        let pid = self.apiserver_pid()?.context("the kube-apiserver is already stopped")?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .with_context(|| format!("the command line of the kube-apiserver (pid {pid})"))?;
        let report = self.request("stop-apiserver")?;
        let since = Instant::now();
        ensure!(
            TcpStream::connect(self.authority()?).is_err(),
            "{} still accepts connections after the kube-apiserver stopped",
            self.url
        );
        ensure!(self.apiserver_pid()?.is_none(), "the env file still names a kube-apiserver");
        Ok(StoppedApiserver { pid, cmdline, since, report })
    }

    /// Starts the kube-apiserver `stopped` was, with the same command line (same port, etcd and
    /// certificates), and returns when its `/readyz` answered 200.
    pub fn start_apiserver(&self, stopped: StoppedApiserver) -> anyhow::Result<Instant> {
        self.request("start-apiserver")?;
        let ready = Instant::now();
        let pid = self.apiserver_pid()?.context("start.sh recorded no kube-apiserver PID")?;
        ensure!(pid != stopped.pid, "the kube-apiserver has the PID it had before the stop");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .with_context(|| format!("the command line of the kube-apiserver (pid {pid})"))?;
        ensure!(
            cmdline == stopped.cmdline,
            "the kube-apiserver came back with another command line:\nbefore: {}\nafter:  {}",
            String::from_utf8_lossy(&stopped.cmdline).replace('\0', " "),
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
        Ok(ready)
    }

    /// Sends one request to start.sh's command, waits for its answer, and returns what it logged.
    fn request(&self, request: &str) -> anyhow::Result<String> {
        let log = || std::fs::read_to_string(self.workdir.join("logs/requests.log")).unwrap_or_default();
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        let before = log().len();
        let stdin = hold.stdin.as_mut().context("the control plane is stopping")?;
        writeln!(stdin, "{request}").and_then(|()| stdin.flush()).context("writing to start.sh")?;
        // start.sh's own timeouts (the stop grace, 90 s for the port and for /readyz) bound this.
        let mut answer = String::new();
        let read = hold.stdout.read_line(&mut answer).context("reading start.sh's answer")?;
        let text = log();
        let logged = text.get(before..).unwrap_or(&text).trim_end().to_owned();
        ensure!(read > 0, "start.sh exited during {request}; its output:\n{logged}");
        ensure!(
            answer.trim_end() == format!("registry-gate-e2e-done {request}"),
            "{}; start.sh's output:\n{logged}",
            answer.trim_end(),
        );
        Ok(logged)
    }

    /// The PID of the running kube-apiserver, as the env file records it for the final stop.
    fn apiserver_pid(&self) -> anyhow::Result<Option<u32>> {
        let env = std::fs::read_to_string(self.workdir.join("env")).context("reading the env file")?;
        let pid = env.lines().find_map(|l| l.strip_prefix("APISERVER_PID=")).context("no APISERVER_PID")?;
        if pid.is_empty() { Ok(None) } else { Ok(Some(pid.parse().context("APISERVER_PID")?)) }
    }

    /// `127.0.0.1:<port>`
    fn authority(&self) -> anyhow::Result<&str> {
        self.url.strip_prefix("https://").context("an https:// URL")
    }

    /// The last lines of the apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(self.workdir.join("logs/kube-apiserver.log")).unwrap_or_default(),
            lines,
        )
    }
}

impl Drop for ControlPlane {
    /// Only [`ControlPlane::start`]'s are dropped (statics never are): end of file stops it, and
    /// this waits until its apiserver and etcd are gone.
    fn drop(&mut self) {
        let hold = self.hold.get_mut().unwrap_or_else(PoisonError::into_inner);
        drop(hold.stdin.take());
        let _ = hold.child.wait();
    }
}

/// A finished command: what it printed and how it ended.
#[derive(Debug, Clone)]
pub struct Run {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The run, or an error telling what went wrong when it failed.
    pub fn ok(self) -> anyhow::Result<Run> {
        ensure!(
            self.success(),
            "`{}` failed ({:?}):\n{}{}",
            self.command,
            self.code,
            self.stderr,
            self.stdout
        );
        Ok(self)
    }

    /// The run when it failed, or an error when it succeeded.
    pub fn refused(self) -> anyhow::Result<Run> {
        ensure!(
            !self.success(),
            "`{}` succeeded but should have been refused:\n{}{}",
            self.command,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("`{}` printed no JSON: {}", self.command, self.stdout))
    }
}

/// Runs a command to completion, feeding it `input`.
pub fn run(mut command: Command, input: Option<&str>) -> Run {
    let display = {
        let program = command.get_program().to_string_lossy();
        let program = program.rsplit('/').next().unwrap_or_default().to_owned();
        // The kubeconfig path is noise in messages.
        let mut shown = vec![program];
        let mut args = command.get_args().map(|a| a.to_string_lossy().into_owned());
        while let Some(arg) = args.next() {
            if arg == "--kubeconfig" {
                args.next();
            } else {
                shown.push(arg);
            }
        }
        shown.join(" ")
    };
    let started = Instant::now();
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output: std::io::Result<Output> = command.spawn().and_then(|mut child| {
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // A child that exits early closes the pipe; its output tells why.
            let _ = stdin.write_all(text.as_bytes());
        }
        child.wait_with_output()
    });
    match output {
        Ok(output) => Run {
            command: display,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        },
        Err(e) => Run {
            command: display,
            code: None,
            stdout: String::new(),
            stderr: format!("cannot run: {e}"),
            elapsed: started.elapsed(),
        },
    }
}

/// The last `lines` lines of a text.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `probe` every `every` until it returns `Some`, or fails after `timeout` with the last
/// state `probe` reported through `last`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut(&mut String) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Some(value) = probe(&mut last) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:?} waiting for {what}; last state: {last}", timeout);
        }
        std::thread::sleep(every);
    }
}
