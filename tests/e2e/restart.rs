//! `registry-gate controller` across kube-apiserver restarts: the controller process stays up
//! while the apiserver is down, then re-lists and converges with nothing lost, including when
//! the apiserver stops in the middle of a rotation.
//!
//! Why a control plane of its own: every other test of this binary shares [`control_plane`]'s,
//! and `pull_secrets_are_synced` does not take `exclusive()` (it registers no webhook), so it may
//! run at any moment of this test, with its own controller on the shared cluster. Restarting that
//! apiserver would fail its kubectl calls and break its controller's watches mid-scenario; both
//! controllers would also manage the same Secrets (same namespace, same names, same label). So
//! this test restarts an apiserver nobody else uses: [`ControlPlane::start`] (same start.sh,
//! same lifetime guarantees, stopped when dropped). It still holds `exclusive()` throughout (see
//! the test in e2e.rs): that also keeps the webhook tests, which time reloads to the
//! millisecond, off the two cores while a second control plane starts, stops and restarts.
//!
//! [`control_plane`]: super::cluster::control_plane

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use super::Scenarios;
use super::apiserver::{Blocking, Endpoint};
use super::cluster::ControlPlane;
use super::sync::{ControllerProcess, GATE_NS, apply, namespace, policy, source_secret};

const GHCR: &str = "ghcr-acme";
const CORP: &str = "corp-pull";
/// `app.kubernetes.io/managed-by=registry-gate`, as a query parameter.
const MANAGED: &str = "app.kubernetes.io%2Fmanaged-by%3Dregistry-gate";
/// `--resync-seconds` of [`ControllerProcess::start`]: a full pass that would restore a copy
/// even with every watch dead, so the checks that prove a watch must finish before it.
const RESYNC: Duration = Duration::from_secs(60);
/// How long the apiserver stays down in the first restart: long enough for several failed
/// retries of every watch (kube-runtime backs off from 0.8 s, doubling).
const OUTAGE: Duration = Duration::from_secs(8);
const MID_SYNC_OUTAGE: Duration = Duration::from_secs(5);
/// Namespaces added before the mid-sync restart: at the controller's 50 writes per second, a
/// rotation needs about a second to reach them all, so the apiserver stops in the middle.
const BULK: usize = 40;
/// The log message of a rewritten copy (src/controller/mod.rs, `log_write`).
const UPDATED: &str = "pull secret copy updated";

/// (namespace, name) of a copy.
type Key = (String, String);

/// The managed copies, read through one kept-alive connection (which reconnects after a
/// restart): one request per poll, so polls every 50 ms are cheap.
struct Copies {
    api: Blocking,
}

impl Copies {
    fn new(cp: &ControlPlane) -> anyhow::Result<Copies> {
        let ca = std::fs::read(&cp.ca).context("the apiserver's CA")?;
        Ok(Copies { api: Blocking::new(Endpoint::new(&cp.url, &ca, &cp.token)?)? })
    }

    fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        // Once: a connection kept alive across a restart fails its first request, then reconnects.
        let reply = match self.api.request("GET", path, None) {
            Ok(reply) => reply,
            Err(_) => self.api.request("GET", path, None)?,
        };
        ensure!(reply.status == 200, "GET {path} answered {}: {}", reply.status, reply.text());
        Ok(serde_json::from_slice(&reply.body)?)
    }

    /// Every managed copy, with its `.dockerconfigjson`.
    fn list(&mut self) -> anyhow::Result<BTreeMap<Key, Value>> {
        let list = self.get(&format!("/api/v1/secrets?labelSelector={MANAGED}"))?;
        let items = list["items"].as_array().context("a Secret list")?;
        Ok(items
            .iter()
            .map(|copy| {
                let name = |field: &str| copy["metadata"][field].as_str().unwrap_or_default().to_owned();
                ((name("namespace"), name("name")), content(copy).clone())
            })
            .collect())
    }

    /// The copies the policy of [`policy`]`(true)` wants, with their sources' content: ghcr-acme
    /// in every namespace but kube-system (exempt) and registry-gate (the sources' own),
    /// corp-pull in `sync-prod-*` too.
    fn wanted(&mut self, ghcr: &Value, corp: &Value) -> anyhow::Result<BTreeMap<Key, Value>> {
        let namespaces = self.get("/api/v1/namespaces")?;
        let mut wanted = BTreeMap::new();
        for ns in namespaces["items"].as_array().context("a Namespace list")? {
            let name = ns["metadata"]["name"].as_str().context("a name")?;
            if name == "kube-system" || name == GATE_NS {
                continue;
            }
            wanted.insert((name.to_owned(), GHCR.to_owned()), content(ghcr).clone());
            if name.starts_with("sync-prod-") {
                wanted.insert((name.to_owned(), CORP.to_owned()), content(corp).clone());
            }
        }
        Ok(wanted)
    }
}

fn content(secret: &Value) -> &Value {
    &secret["data"][".dockerconfigjson"]
}

/// How a wait for the copies went.
struct Convergence {
    /// From the instant given to [`converge`] until every copy was right.
    after: Duration,
    /// Copies right at the first successful poll.
    right_at_first: usize,
    /// From the instant given to [`converge`] until a poll found more copies right than the
    /// first did (when the controller's first fix was seen).
    first_fix: Option<Duration>,
    /// For each copy found not right, when the last poll that found it so was sent: what fixed
    /// it came later.
    wrong_until: BTreeMap<Key, Instant>,
}

/// Polls every 50 ms until the managed copies are exactly `wanted`, failing at `deadline`, when
/// the controller exits, or when a copy that was there disappears (a copy lost).
fn converge(
    copies: &mut Copies,
    controller: &mut ControllerProcess,
    wanted: &BTreeMap<Key, Value>,
    from: Instant,
    deadline: Instant,
) -> anyhow::Result<Convergence> {
    let mut seen = BTreeSet::new();
    let mut right_at_first = None;
    let mut first_fix = None;
    let mut wrong_until = BTreeMap::new();
    let mut last;
    loop {
        alive(controller)?;
        let asked = Instant::now();
        match copies.list() {
            Ok(found) => {
                let now = Instant::now();
                if let Some(lost) = seen.iter().find(|key| !found.contains_key(*key)) {
                    bail!("copy {lost:?} disappeared after it had been seen: a copy was lost");
                }
                seen.extend(found.keys().cloned());
                let wrong: Vec<String> = wanted
                    .iter()
                    .filter(|(key, content)| found.get(*key) != Some(*content))
                    .map(|((ns, name), _)| {
                        format!(
                            "{ns}/{name} {}",
                            if found.contains_key(&(ns.clone(), name.clone())) { "stale" } else { "missing" }
                        )
                    })
                    .chain(
                        found
                            .keys()
                            .filter(|key| !wanted.contains_key(*key))
                            .map(|(ns, name)| format!("{ns}/{name} unwanted")),
                    )
                    .collect();
                for key in wanted.keys().filter(|key| found.get(*key) != wanted.get(*key)) {
                    wrong_until.insert(key.clone(), asked);
                }
                let right = wanted.iter().filter(|(key, content)| found.get(*key) == Some(*content)).count();
                let right_at_first = *right_at_first.get_or_insert(right);
                if right > right_at_first && first_fix.is_none() {
                    first_fix = Some(now.saturating_duration_since(from));
                }
                if wrong.is_empty() {
                    let after = now.saturating_duration_since(from);
                    return Ok(Convergence { after, right_at_first, first_fix, wrong_until });
                }
                last = format!("{} of {} copies not right: {}", wrong.len(), wanted.len(), wrong.join(", "));
            }
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("the copies did not converge in time: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails, with the log, if the controller process has exited.
fn alive(controller: &mut ControllerProcess) -> anyhow::Result<()> {
    let child = controller.child.as_mut().context("no controller process")?;
    if let Some(status) = child.try_wait()? {
        bail!("the controller exited ({status}); its log:\n{}", controller.log_tail(40));
    }
    Ok(())
}

/// The controller's log, as it stands.
fn log_text(controller: &ControllerProcess) -> String {
    std::fs::read_to_string(&controller.log).unwrap_or_default()
}

/// The controller's log from byte `offset` on.
fn log_since(controller: &ControllerProcess, offset: usize) -> String {
    let text = log_text(controller);
    text.get(offset..).map(str::to_owned).unwrap_or(text)
}

/// `HH:MM:SS.mmm` (UTC) of `at`, to line the test's events up with the log's timestamps.
fn clock(at: Instant) -> String {
    let wall = SystemTime::now() - at.elapsed();
    let ms = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// The JSON log lines of `text` as (level, message, the rest of the fields).
fn log_entries(text: &str) -> Vec<(String, String, Value)> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|mut entry| {
            let mut fields = if entry["fields"].is_object() { entry["fields"].take() } else { entry.clone() };
            fields["timestamp"] = entry["timestamp"].take();
            let message = fields["message"].as_str().unwrap_or_default().to_owned();
            (entry["level"].as_str().unwrap_or_default().to_owned(), message, fields)
        })
        .collect()
}

fn count(text: &str, message: &str) -> usize {
    log_entries(text).iter().filter(|(_, m, _)| m == message).count()
}

/// What the controller logged since `offset`, one line per (level, message) with a count, the
/// times of the first and the last, and the first one's error, for the report.
fn log_summary(controller: &ControllerProcess, offset: usize) -> String {
    struct Seen {
        n: usize,
        first: String,
        last: String,
        error: String,
    }
    let mut by_message: BTreeMap<(String, String), Seen> = BTreeMap::new();
    for (level, message, fields) in log_entries(&log_since(controller, offset)) {
        // RFC 3339 (UTC): keep HH:MM:SS.mmm.
        let time: String =
            fields["timestamp"].as_str().unwrap_or_default().chars().skip(11).take(12).collect();
        let seen = by_message.entry((level, message)).or_insert_with(|| Seen {
            n: 0,
            first: time.clone(),
            last: String::new(),
            error: fields["error"].as_str().unwrap_or_default().chars().take(160).collect(),
        });
        seen.n += 1;
        seen.last = time;
    }
    by_message
        .into_iter()
        .map(|((level, message), seen)| {
            let error =
                if seen.error.is_empty() { String::new() } else { format!(" (first error: {})", seen.error) };
            format!("  {:>3} x {level} {message} [{} .. {}]{error}", seen.n, seen.first, seen.last)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Watches the controller while the apiserver is down, until `until`: the process stays up and
/// its /healthz answers. Returns what its /readyz answered, with counts.
fn watch_outage(
    controller: &mut ControllerProcess,
    until: Instant,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut readyz = BTreeMap::new();
    loop {
        alive(controller)?;
        let (status, _) = controller.get("/healthz").context("the controller's /healthz")?;
        ensure!(status == 200, "the controller's /healthz answered {status} while the apiserver was down");
        let answer = match controller.get("/readyz") {
            Ok((status, body)) => format!("{status} {}", body.trim()),
            Err(e) => format!("error: {e}"),
        };
        *readyz.entry(answer).or_default() += 1;
        if Instant::now() >= until {
            return Ok(readyz);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What the scenarios share once set up.
/// Fields drop in order: the controller is killed before its control plane stops.
struct Rig {
    controller: ControllerProcess,
    cp: ControlPlane,
    copies: Copies,
    ghcr: Value,
    corp: Value,
    /// When the apiserver's /readyz came back after the first restart.
    ready_at: Option<Instant>,
    /// No sooner than this did the rotation (a) reconcile namespace `restart-1`.
    restart_1_reconciled: Option<Instant>,
    /// Where the controller's log stood before the first restart.
    log_offset: usize,
    figures: Vec<String>,
}

impl Rig {
    fn wanted(&mut self) -> anyhow::Result<BTreeMap<Key, Value>> {
        self.copies.wanted(&self.ghcr, &self.corp)
    }

    fn converge(&mut self, from: Instant, deadline: Instant) -> anyhow::Result<Convergence> {
        let wanted = self.wanted()?;
        converge(&mut self.copies, &mut self.controller, &wanted, from, deadline)
    }

    fn ready_at(&self) -> anyhow::Result<Instant> {
        self.ready_at.context("the apiserver was not restarted (an earlier scenario failed)")
    }

    fn figure(&mut self, text: String) {
        println!("{text}");
        self.figures.push(text);
    }
}

pub(crate) fn apiserver_restart(s: &mut Scenarios, dir: &Path) {
    let mut rig: Option<Rig> = None;
    let mut ok =
        s.run("restart setup: own control plane, sources, namespaces, the controller, every copy", || {
            let started = Instant::now();
            let cp = ControlPlane::start()?;
            println!("own control plane: {} up in {:.1} s", cp.url, started.elapsed().as_secs_f64());
            cp.kubectl(&["apply", "--server-side", "-f", "manifests/base/namespace.yaml"]).ok()?;
            let ghcr = source_secret(GHCR, "ghcr.io", "FAKE-ghcr-password-1");
            let corp = source_secret(CORP, "registry.corp.example:5000", "FAKE-corp-password-1");
            for object in [
                &ghcr,
                &corp,
                &namespace("restart-0"),
                &namespace("restart-1"),
                &namespace("restart-2"),
                &namespace("sync-prod-restart"),
            ] {
                apply(&cp, object)?;
            }
            let policy_file = dir.join("controller-policy.yaml");
            std::fs::write(&policy_file, policy(true))?;
            let controller = ControllerProcess::start(&cp, dir, &policy_file)?;
            let copies = Copies::new(&cp)?;
            let r = rig.insert(Rig {
                controller,
                cp,
                copies,
                ghcr,
                corp,
                ready_at: None,
                restart_1_reconciled: None,
                log_offset: 0,
                figures: Vec::new(),
            });
            let from = Instant::now();
            let done = r.converge(from, from + Duration::from_secs(30))?;
            println!(
                "{} copies made {} ms after the controller was ready",
                r.wanted()?.len(),
                done.after.as_millis()
            );
            Ok(())
        });
    if ok {
        ok &= s.run("restart: the apiserver stopped, kept down 8 s, started again; the controller stays up throughout", || {
            let r = rig.as_mut().context("setup")?;
            r.log_offset = log_text(&r.controller).len();
            let asked = Instant::now();
            let stopped = r.cp.stop_apiserver()?;
            println!(
                "kube-apiserver stop asked at {} (UTC), done in {} ms:\n{}",
                clock(asked),
                stopped.since.duration_since(asked).as_millis(),
                stopped.report
            );
            let run = r.cp.kubectl(&["get", "namespace", "default", "-o", "name"]);
            ensure!(!run.success(), "kubectl still reaches an apiserver: {}", run.stdout);
            let stopped_since = stopped.since;
            let readyz = watch_outage(&mut r.controller, stopped_since + OUTAGE)?;
            let starting = Instant::now();
            let ready_at = r.cp.start_apiserver(stopped)?;
            r.ready_at = Some(ready_at);
            println!(
                "kube-apiserver gone at {} (UTC), down {:.1} s in all; started again at {} (same port, etcd, certificates and command line), /readyz 200 after {:.1} s, at {}",
                clock(stopped_since),
                ready_at.duration_since(stopped_since).as_secs_f64(),
                clock(starting),
                ready_at.duration_since(starting).as_secs_f64(),
                clock(ready_at)
            );
            println!("the controller's /readyz while the apiserver was down: {readyz:?}");
            alive(&mut r.controller)?;
            Ok(())
        });
    }
    if ok {
        ok &= s.run("restart (a): a source rotated after the restart reaches every existing copy", || {
            let r = rig.as_mut().context("setup")?;
            let ready_at = r.ready_at()?;
            let rotated = source_secret(GHCR, "ghcr.io", "FAKE-ghcr-password-2");
            apply(&r.cp, &rotated)?;
            let stored = Instant::now();
            r.ghcr = rotated;
            // The controller's watches back off up to 30 s, plus as much again of jitter.
            let done = r.converge(ready_at, stored + Duration::from_secs(90))?;
            let restart_1 = ("restart-1".to_owned(), GHCR.to_owned());
            r.restart_1_reconciled = Some(done.wrong_until.get(&restart_1).copied().unwrap_or(stored));
            let n = r.wanted()?.len();
            let first_fix = done.first_fix.map_or("-".to_owned(), |d| d.as_millis().to_string());
            r.figure(format!(
                "(a) rotation: all {n} copies current {} ms after the apiserver's /readyz ({} ms after the rotation was stored; {} right at the first poll, corp-pull's untouched by the rotation included; the first rewrite seen at {first_fix} ms)",
                done.after.as_millis(),
                done.after.saturating_sub(stored.duration_since(ready_at)).as_millis(),
                done.right_at_first
            ));
            Ok(())
        });
        ok &= s.run("restart (b): a namespace created after the restart gets its copy", || {
            let r = rig.as_mut().context("setup")?;
            let ready_at = r.ready_at()?;
            apply(&r.cp, &namespace("restart-after"))?;
            let created = Instant::now();
            let done = r.converge(ready_at, created + Duration::from_secs(60))?;
            r.figure(format!(
                "(b) new namespace: its copy made {} ms after the apiserver's /readyz ({} ms after the namespace was stored)",
                done.after.as_millis(),
                done.after.saturating_sub(created.duration_since(ready_at)).as_millis()
            ));
            Ok(())
        });
        ok &= s.run("restart (c): a managed copy deleted after the restart is restored", || {
            let r = rig.as_mut().context("setup")?;
            let ready_at = r.ready_at()?;
            // The rotation (a) reconciled restart-1, so its resync is no sooner than RESYNC after
            // that: a restore before then came from the watch on the copies.
            let resync = r.restart_1_reconciled.context("the rotation (a) did not happen")? + RESYNC;
            r.cp.kubectl(&["-n", "restart-1", "delete", "secret", GHCR]).ok()?;
            let deleted = Instant::now();
            ensure!(
                resync > deleted + Duration::from_secs(10),
                "too late to tell the watch from the resync: the resync may come in {:?}",
                resync.saturating_duration_since(deleted)
            );
            let deadline = (deleted + Duration::from_secs(45)).min(resync - Duration::from_secs(2));
            let done = r.converge(ready_at, deadline)?;
            r.figure(format!(
                "(c) deleted copy: restored {} ms after the apiserver's /readyz ({} ms after the delete; the resync would have come {} ms after it)",
                done.after.as_millis(),
                done.after.saturating_sub(deleted.duration_since(ready_at)).as_millis(),
                resync.duration_since(deleted).as_millis()
            ));
            Ok(())
        });
        ok &= s.run("restart (d): the controller's /readyz is 200", || {
            let r = rig.as_mut().context("setup")?;
            alive(&mut r.controller)?;
            let (status, body) = r.controller.get("/readyz")?;
            ensure!(status == 200, "/readyz answered {status}: {body}");
            println!("/readyz: {status} {}", body.trim());
            println!(
                "what the controller logged from the first stop to now:\n{}",
                log_summary(&r.controller, r.log_offset)
            );
            Ok(())
        });
        ok &= s.run("restart mid-sync: the apiserver stops while a rotation is being written; every copy converges", || {
            let r = rig.as_mut().context("setup")?;
            let names: Vec<Value> = (0..BULK).map(|i| namespace(&format!("restart-bulk-{i:02}"))).collect();
            let list = json!({"apiVersion": "v1", "kind": "List", "items": names});
            r.cp.kubectl_stdin(&["apply", "--server-side", "--field-manager=e2e", "-f", "-"], &list.to_string()).ok()?;
            let from = Instant::now();
            r.converge(from, from + Duration::from_secs(60)).context("copies in the new namespaces")?;
            let copies = r.wanted()?.len();
            let offset = log_text(&r.controller).len();
            let rotated = source_secret(GHCR, "ghcr.io", "FAKE-ghcr-password-3");
            apply(&r.cp, &rotated)?;
            r.ghcr = rotated;
            let stored = Instant::now();
            // Stop as soon as the first copy has been rewritten.
            while count(&log_since(&r.controller, offset), UPDATED) == 0 {
                ensure!(stored.elapsed() < Duration::from_secs(20), "no copy was rewritten in 20 s");
                std::thread::sleep(Duration::from_millis(5));
            }
            let first_write = stored.elapsed();
            let written_before = count(&log_since(&r.controller, offset), UPDATED);
            let stopped = r.cp.stop_apiserver()?;
            let written_by_stop = count(&log_since(&r.controller, offset), UPDATED);
            ensure!(
                written_by_stop < copies,
                "all {copies} copies were rewritten before the apiserver stopped: nothing was in flight"
            );
            println!("{}", stopped.report);
            watch_outage(&mut r.controller, stopped.since + MID_SYNC_OUTAGE)?;
            let starting = Instant::now();
            let ready_at = r.cp.start_apiserver(stopped)?;
            let wanted = r.wanted()?;
            // From the start: the apiserver serves requests (the controller's retries) a while
            // before its /readyz says 200.
            let done = converge(&mut r.copies, &mut r.controller, &wanted, starting, ready_at + Duration::from_secs(90))?;
            let readyz = ready_at.duration_since(starting);
            let after_readyz = done.after.saturating_sub(readyz).as_millis();
            let relative = if done.right_at_first == copies {
                format!("already at the first poll, {after_readyz} ms after")
            } else {
                format!("{after_readyz} ms after")
            };
            r.figure(format!(
                "mid-sync: first copy rewritten {} ms after the rotation, the stop asked then ({written_before} of {copies} rewritten), {written_by_stop} rewritten when the apiserver was gone; started again, /readyz 200 after {} ms; all {copies} current {relative} the apiserver's /readyz",
                first_write.as_millis(),
                readyz.as_millis(),
            ));
            println!("what the controller logged during the mid-sync restart:\n{}", log_summary(&r.controller, offset));
            Ok(())
        });
        ok &=
            s.run("restart: nothing lost, the sources intact, no copy deleted, no credential logged", || {
                let r = rig.as_mut().context("setup")?;
                let now = Instant::now();
                r.converge(now, now + Duration::from_secs(5))?;
                let sources = r.copies.get(&format!("/api/v1/namespaces/{GATE_NS}/secrets"))?;
                for source in [&r.ghcr, &r.corp] {
                    let name = source["metadata"]["name"].as_str().context("a name")?;
                    let stored = sources["items"]
                        .as_array()
                        .and_then(|items| items.iter().find(|s| s["metadata"]["name"] == name))
                        .with_context(|| format!("the source {name} is gone"))?;
                    ensure!(content(stored) == content(source), "the source {name} changed");
                }
                let log = log_text(&r.controller);
                let deletions: Vec<String> = log_entries(&log)
                    .into_iter()
                    .filter(|(_, message, _)| message.starts_with("pull secret copy deleted"))
                    .map(|(_, message, fields)| {
                        format!("{}/{}: {message}", fields["namespace"], fields["secret"])
                    })
                    .collect();
                ensure!(deletions.is_empty(), "the controller deleted copies: {deletions:?}");
                ensure!(!log.contains("FAKE-"), "a credential is in the controller's log");
                alive(&mut r.controller)?;
                println!("convergence after the apiserver's /readyz:\n  {}", r.figures.join("\n  "));
                Ok(())
            });
    }
    if let Some(r) = rig {
        if !ok {
            // The control plane's workdir goes with it: keep its logs with the controller's.
            let logs = dir.join("controlplane-logs");
            if std::fs::create_dir_all(&logs).is_ok() {
                for file in ["kube-apiserver.log", "etcd.log", "requests.log"] {
                    let _ = std::fs::copy(r.cp.workdir.join("logs").join(file), logs.join(file));
                }
            }
            println!("controller log tail:\n{}", r.controller.log_tail(20));
        }
        drop(r);
    }
}
