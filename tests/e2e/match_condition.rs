//! The mutating webhook's `registry-gate-needs-pull-secret` matchCondition, evaluated by the
//! real API server's CEL: the controller writes it, keeps it in step with the policy and puts it
//! back when it is removed; with it, every Pod gets exactly the pull secrets the webhook gives
//! without it (as `registry-gate check --show-patch` computes them, through the same functions),
//! while Pods that need none are no longer sent.
//!
//! Only the mutating webhook is registered, so that every image string reaches it whatever the
//! image check would say, and every review registry-gate counts is a mutating call.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use registry_gate::check::{PodPatch, inspect_manifests};
use registry_gate::policy::{Namespace, Policy};
use serde_json::{Value, json};

use super::Scenarios;
use super::apiserver::{Blocking, Endpoint};
use super::cluster::{ControlPlane, wait_for};
use super::gate::{Gate, Registration, free_port, registry_gate, webhook_configurations, write_certificates};
use super::sync::{ControllerProcess, apply, namespace};

const NS: &str = "condition-team";
const CONDITION: &str = "registry-gate-needs-pull-secret";

/// Docker Hub has no pull secret at first; `with_hub_secret` gives it one.
fn policy(with_hub_secret: bool) -> String {
    let hub = if with_hub_secret { ", pullSecret: hub-pull" } else { "" };
    format!(
        "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n\
         - {{name: hub, type: DockerHub, url: docker.io{hub}}}\n\
         - {{name: acme, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}}\n\
         - {{name: acr, type: ACR, url: '*.azurecr.io', pullSecret: acr-pull}}\n\
         - {{name: corp, type: Generic, url: 'registry.corp.example:5000', pullSecret: corp-pull}}\n\
         - {{name: quay, type: Quay, url: quay.io}}\n\
         - {{name: local, type: Generic, url: 'localhost:5000', pullSecret: local-pull}}\n\
         - {{name: test, type: Generic, url: test.com, pullSecret: test-pull}}\n"
    )
}

/// Image strings that a loose reading could get wrong: case, `:443`, Docker Hub's other names,
/// short names, `localhost`, ports, wildcards, digests, paths outside an entry.
const IMAGES: &[&str] = &[
    "nginx",
    "nginx:1.27",
    "library/nginx",
    "team/app:2",
    "docker.io/library/nginx",
    "index.docker.io/team/app",
    "registry-1.docker.io/team/app",
    "DOCKER.IO/team/app",
    "docker.io:443/team/app",
    "ghcr.io/acme/api:1.2",
    "GHCR.IO/acme/api",
    "ghcr.io:443/acme/api",
    "ghcr.io/other/api",
    "ghcr.io/acme",
    "Ghcr.io/acme/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "team1.azurecr.io/app:3",
    "a.b.azurecr.io/app",
    "TEAM.AZURECR.IO/app",
    "azurecr.io/app",
    "team1.azurecr.io:443/app",
    "registry.corp.example:5000/tools/migrate:2",
    "registry.corp.example/tools/migrate",
    "registry.corp.example:5001/tools/migrate",
    "quay.io/prometheus/node-exporter",
    "localhost/app",
    "localhost:5000/app",
    "Localhost/app",
    "evil.example/acme/api",
    "ghcr.io.evil.example/acme/api",
    "[::1]:5000/app",
    "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

/// Every pull secret the policies name.
const ALL_SECRETS: &[&str] = &["acr-pull", "corp-pull", "ghcr-acme", "hub-pull", "local-pull", "test-pull"];

/// A Pod with `image` at `field` (containers, initContainers, or an image volume), listing the
/// pull secrets `listed` already.
fn pod(image: &str, field: &str, listed: &[&str]) -> Value {
    let mut spec = json!({"containers": [{"name": "main", "image": "quay.io/base/main:1"}]});
    if !listed.is_empty() {
        spec["imagePullSecrets"] = listed.iter().map(|name| json!({ "name": name })).collect();
    }
    match field {
        "initContainers" => spec["initContainers"] = json!([{"name": "init", "image": image}]),
        "volumes" => {
            spec["volumes"] = json!([{"name": "data", "image": {"reference": image}}]);
            spec["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
        }
        _ => spec["containers"][0]["image"] = json!(image),
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": NS}, "spec": spec})
}

/// What the mutating webhook adds to `pod` under `policy`, computed in process.
fn expected_secrets(policy: &Policy, pod: &Value) -> anyhow::Result<Vec<String>> {
    let report = inspect_manifests(policy, &pod.to_string(), &Namespace::named(NS), true)?;
    let patch: &PodPatch = report.patches.first().context("no Pod in the report")?;
    Ok(patch.added.clone())
}

/// Sends `pod` with dryRun=All; returns its imagePullSecrets as stored.
fn dry_run(api: &mut Blocking, pod: &Value) -> anyhow::Result<Vec<String>> {
    Ok(pull_secrets(&dry_run_object(api, pod)?))
}

/// Sends `pod` with dryRun=All; returns the Pod as the API server would store it.
fn dry_run_object(api: &mut Blocking, pod: &Value) -> anyhow::Result<Value> {
    let path = format!("/api/v1/namespaces/{NS}/pods?dryRun=All&fieldManager=registry-gate-e2e");
    let reply = api.request("POST", &path, Some(&serde_json::to_vec(pod)?))?;
    ensure!((200..300).contains(&reply.status), "dry-run Pod answered {}: {}", reply.status, reply.text());
    Ok(serde_json::from_str(&reply.text())?)
}

fn pull_secrets(pod: &Value) -> Vec<String> {
    pod["spec"]["imagePullSecrets"]
        .as_array()
        .map(|list| list.iter().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Reviews registry-gate has answered (only the mutating webhook is registered). A review is
/// counted before its answer is sent, so the count has moved by the time a dry run returns.
fn reviews(gate: &Gate) -> anyhow::Result<f64> {
    let (_, metrics) = gate.operations_get("/metrics")?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("registry_gate_admission_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The condition as stored in the configuration, if any.
fn stored_condition(cp: &ControlPlane) -> Option<String> {
    let run = cp.kubectl(&["get", "mutatingwebhookconfiguration", "registry-gate", "-o", "json"]);
    let configuration = run.json().ok()?;
    configuration["webhooks"][0]["matchConditions"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == CONDITION)
        .and_then(|c| c["expression"].as_str().map(str::to_owned))
}

/// `registry-gate policy match-condition FILE`: the expression the controller should write.
fn rendered_condition(policy_file: &Path) -> anyhow::Result<String> {
    let run =
        registry_gate(&["policy", "match-condition", policy_file.to_str().context("UTF-8 path")?]).ok()?;
    let entry: Value = serde_json::from_str(&run.stdout)?;
    ensure!(entry["name"] == CONDITION, "policy match-condition printed {entry}");
    entry["expression"].as_str().map(str::to_owned).context("no expression")
}

fn wait_for_condition(cp: &ControlPlane, wanted: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait_for(
        "the controller's match condition",
        Duration::from_secs(20),
        Duration::from_millis(50),
        |last| {
            let stored = stored_condition(cp);
            *last = format!("{stored:?}");
            (stored.as_deref() == Some(wanted)).then_some(())
        },
    )?;
    Ok(started.elapsed())
}

/// The inputs of the image-reference vectors from the Go test tables (tests/data), valid and
/// invalid, that the API server accepts as a container image at all (not empty, no white space
/// around it).
fn vector_images() -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/image-references.json"))?;
    let cases: Vec<Value> = serde_json::from_str(&text)?;
    let mut images: Vec<String> =
        cases.iter().filter_map(|case| case["input"].as_str()).map(str::to_owned).collect();
    images.retain(|image| !image.is_empty() && image.trim() == image);
    images.sort();
    images.dedup();
    Ok(images)
}

/// Every image of [`IMAGES`] at every field, and every vector as a container's image: what the
/// API server stores equals what the webhook gives without the condition. Returns (Pods sent,
/// Pods skipped).
fn every_image(
    cp: &ControlPlane,
    api: &mut Blocking,
    gate: &Gate,
    policy: &Policy,
) -> anyhow::Result<(usize, usize)> {
    let (mut sent, mut skipped) = (0, 0);
    let mut wrong = Vec::new();
    let mut fields = vec!["containers", "initContainers"];
    if cp.has(35, "image volumes") {
        fields.push("volumes");
    }
    let vectors = vector_images()?;
    ensure!(vectors.len() > 200, "only {} vector images", vectors.len());
    let listings: [&[&str]; 3] = [&[], &["ghcr-acme"], ALL_SECRETS];
    let cases = IMAGES
        .iter()
        .flat_map(|image| fields.iter().map(|field| (*image, *field)))
        .flat_map(|(image, field)| listings.map(|listed| (image, field, listed)));
    let cases = cases.chain(vectors.iter().map(|image| (image.as_str(), "containers", &[][..])));
    for (image, field, listed) in cases {
        let pod = pod(image, field, listed);
        let expected: Vec<String> =
            listed.iter().map(|name| (*name).to_owned()).chain(expected_secrets(policy, &pod)?).collect();
        let before = reviews(gate)?;
        let stored = dry_run(api, &pod)?;
        if reviews(gate)? > before {
            sent += 1;
        } else {
            skipped += 1;
        }
        if stored != expected {
            wrong.push(format!(
                "{image} in {field} listing {listed:?}: stored {stored:?}, the webhook gives {expected:?}"
            ));
        }
    }
    ensure!(wrong.is_empty(), "Pods without the pull secrets they need:\n{}", wrong.join("\n"));
    Ok((sent, skipped))
}

/// A sidecar injector of the API server's own kind: a MutatingAdmissionPolicy (CEL mutation,
/// Kubernetes 1.36+) and its binding, named `name`, that adds a container `injected` with the
/// image in a Pod's `e2e-inject` annotation, for Pods in `namespace` for which `when` (CEL)
/// holds. It is invoked whenever the annotation is there, so it is asked again
/// (`reinvocationPolicy: IfNeeded`) after a webhook changes the Pod.
pub(crate) fn sidecar_injector(name: &str, namespace: &str, when: &str) -> Value {
    let expression = format!(
        "{when} && !object.spec.containers.exists(c, c.name == 'injected') \
         ? Object{{spec: Object.spec{{containers: [Object.spec.containers{{name: 'injected', \
                                     image: object.metadata.annotations['e2e-inject']}}]}}}} \
         : Object{{}}"
    );
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["pods"]}]},
                  "matchConditions": [{"name": "asks-for-a-sidecar",
                                       "expression": "has(object.metadata.annotations) && 'e2e-inject' in object.metadata.annotations"}],
                  "mutations": [{"patchType": "ApplyConfiguration",
                                 "applyConfiguration": {"expression": expression}}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name,
                  "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}}
    ]})
}

/// A Pod of one ghcr.io/acme container, asking the injector for a sidecar of `sidecar`.
fn pod_asking_for(sidecar: &str) -> Value {
    let mut pod = pod("ghcr.io/acme/api:1", "containers", &[]);
    pod["metadata"]["annotations"] = json!({ "e2e-inject": sidecar });
    pod
}

/// The injector acts only once the Pod has pull secrets, so after registry-gate's first answer,
/// as a mutating webhook ordered after registry-gate's would. On the first round it changes
/// nothing and is recorded as invoked; registry-gate then adds a secret, which makes the API
/// server run both again: the injector adds the sidecar, and registry-gate is asked again,
/// unless its condition finds nothing more to add.
fn late_sidecar(cp: &ControlPlane, api: &mut Blocking, gate: &Gate) -> anyhow::Result<()> {
    if !cp.has(36, "MutatingAdmissionPolicy") {
        return Ok(());
    }
    let injector = sidecar_injector("e2e-late-sidecar", NS, "has(object.spec.imagePullSecrets)");
    cp.kubectl_stdin(&["apply", "--server-side", "--field-manager=e2e", "-f", "-"], &injector.to_string())
        .ok()?;
    let result = (|| {
        // The API server reads admission policies from a cache.
        let corp = "registry.corp.example:5000/mesh/proxy:1";
        let stored =
            wait_for("the injector in force", Duration::from_secs(20), Duration::from_millis(100), |last| {
                let stored = dry_run_object(api, &pod_asking_for(corp));
                *last = format!("{stored:?}");
                let stored = stored.ok()?;
                let images: Vec<&str> = stored["spec"]["containers"]
                    .as_array()?
                    .iter()
                    .filter_map(|c| c["image"].as_str())
                    .collect();
                images.contains(&corp).then_some(stored)
            })?;
        // The sidecar came after registry-gate's first answer; only the second call gives it
        // its secret.
        ensure!(
            pull_secrets(&stored) == ["ghcr-acme", "corp-pull"],
            "the Pod with a late corp sidecar stored {:?}",
            pull_secrets(&stored)
        );
        let before = reviews(gate)?;
        let stored = dry_run_object(api, &pod_asking_for(corp))?;
        let calls = reviews(gate)? - before;
        ensure!(pull_secrets(&stored) == ["ghcr-acme", "corp-pull"], "{:?}", pull_secrets(&stored));
        ensure!(calls == 2.0, "a late corp sidecar: registry-gate asked {calls} times, not twice");
        // A public sidecar needs nothing more: the condition spares the second call.
        let public = "quay.io/mesh/proxy:1";
        let before = reviews(gate)?;
        let stored = dry_run_object(api, &pod_asking_for(public))?;
        let calls = reviews(gate)? - before;
        let images: Vec<&str> = stored["spec"]["containers"]
            .as_array()
            .context("containers")?
            .iter()
            .filter_map(|c| c["image"].as_str())
            .collect();
        ensure!(images.contains(&public), "the injector added no sidecar: {images:?}");
        ensure!(pull_secrets(&stored) == ["ghcr-acme"], "{:?}", pull_secrets(&stored));
        ensure!(calls == 1.0, "a late public sidecar: registry-gate asked {calls} times, not once");
        println!("late sidecar: corp image -> 2 calls, both secrets; public image -> 1 call");
        Ok(())
    })();
    cp.kubectl(&["delete", "mutatingadmissionpolicybinding,mutatingadmissionpolicy", "e2e-late-sidecar"])
        .ok()?;
    result
}

pub fn pull_secret_condition(cp: &ControlPlane, s: &mut Scenarios, dir: &Path) {
    let policy_file = dir.join("policy.yaml");
    let mut gate = None;
    let mut registration = None;
    let mut configurations = Vec::new();
    let mut controller = None;
    let mut api = None;
    let ready = s.run("condition setup: registry-gate, the mutating webhook, the controller", || {
        cp.kubectl(&["apply", "--server-side", "-f", "manifests/base/namespace.yaml"]).ok()?;
        apply(cp, &namespace(NS))?;
        std::fs::write(&policy_file, policy(false))?;
        write_certificates(dir)?;
        let policy_arg = policy_file.to_str().context("UTF-8 path")?;
        let port = free_port();
        gate = Some(Gate::start(dir, port, free_port(), &["--policy", policy_arg], "registry-gate.log")?);
        let ca = std::fs::read(dir.join("ca.crt"))?;
        configurations =
            webhook_configurations(cp, port, &ca, |name| name == "pull-secrets.registry-gate.io")?;
        registration = Some(Registration::apply(cp, &configurations)?);
        api = Some(Blocking::new(Endpoint::new(&cp.url, &std::fs::read(&cp.ca)?, &cp.token)?)?);
        let started = Instant::now();
        controller = Some(ControllerProcess::start_with(
            cp,
            dir,
            &policy_file,
            &["--audit-interval-seconds", "0", "--match-condition-recheck-seconds", "1"],
        )?);
        let waited = wait_for_condition(cp, &rendered_condition(&policy_file)?)?;
        println!(
            "condition written {} ms after the controller started ({} ms after it was ready)",
            started.elapsed().as_millis(),
            waited.as_millis()
        );
        Ok(())
    });
    let (Some(gate), Some(api), Some(controller)) = (gate.as_ref(), api.as_mut(), controller.as_ref()) else {
        return;
    };
    if !ready {
        return;
    }
    s.run("condition: every image gets exactly its pull secrets; Pods that need none are not sent", || {
        // The API server picks the configuration and the controller's change to it up from a
        // watch: wait until a Pod that needs a secret gets it and one that needs none is not
        // sent.
        wait_for(
            "the API server to apply the condition",
            Duration::from_secs(20),
            Duration::from_millis(50),
            |last| {
                let stored = dry_run(api, &pod("ghcr.io/acme/api", "containers", &[]));
                let before = reviews(gate).ok()?;
                let public = dry_run(api, &pod("quay.io/prometheus/node-exporter", "containers", &[]));
                let skipped = reviews(gate).ok()? == before;
                *last = format!("needing one: {stored:?}; needing none: {public:?}, skipped: {skipped}");
                (stored.ok()? == ["ghcr-acme"] && public.is_ok() && skipped).then_some(())
            },
        )?;
        let policy = Policy::parse(&policy(false))?;
        let (sent, skipped) = every_image(cp, api, gate, &policy)?;
        println!("{} Pods: {sent} sent to the webhook, {skipped} skipped by the condition", sent + skipped);
        ensure!(skipped > 0, "the condition skipped no Pod");
        // Public images are the point: Docker Hub and Quay have no pull secret here.
        for image in ["nginx", "docker.io/library/nginx", "quay.io/prometheus/node-exporter"] {
            let before = reviews(gate)?;
            dry_run(api, &pod(image, "containers", &[]))?;
            ensure!(reviews(gate)? == before, "a Pod of {image} (no pull secret) was sent");
        }
        // Nor a Pod that lists its pull secret already, as one does when the API server asks
        // again after another webhook's change.
        let before = reviews(gate)?;
        dry_run(api, &pod("ghcr.io/acme/api", "containers", &["ghcr-acme"]))?;
        ensure!(reviews(gate)? == before, "a Pod listing ghcr-acme already was sent");
        Ok(())
    });
    s.run(
        "condition: a sidecar added after registry-gate's call gets its pull secret when asked again",
        || late_sidecar(cp, api, gate),
    );
    s.run("condition: a policy change reaches the condition; Docker Hub gains a pull secret", || {
        let started = Instant::now();
        std::fs::write(&policy_file, policy(true))?;
        let wanted = rendered_condition(&policy_file)?;
        wait_for_condition(cp, &wanted)?;
        println!("policy file written -> condition updated in {} ms", started.elapsed().as_millis());
        let policy = Policy::parse(&policy(true))?;
        wait_for("nginx to get hub-pull", Duration::from_secs(20), Duration::from_millis(50), |last| {
            let stored = dry_run(api, &pod("nginx", "containers", &[]));
            *last = format!("{stored:?}");
            stored.ok().filter(|s| s == &["hub-pull"]).map(|_| ())
        })?;
        let (sent, skipped) = every_image(cp, api, gate, &policy)?;
        println!("{} Pods: {sent} sent, {skipped} skipped", sent + skipped);
        Ok(())
    });
    s.run("condition: applying the install's configuration again keeps it", || {
        // What an upgrade or a GitOps sync does. The list is keyed by name, so a merge leaves
        // the item it did not write; the object each apply returns shows it before the
        // controller could have put anything back.
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": configurations });
        for apply in
            [&["apply", "--server-side", "--force-conflicts", "--field-manager=installer"][..], &["apply"]]
        {
            let run =
                cp.kubectl_stdin(&[apply, &["-o", "json", "-f", "-"]].concat(), &list.to_string()).ok()?;
            let applied = run.json()?;
            // One object comes back as itself, several as a List.
            let applied = if applied["kind"] == "List" { &applied["items"][0] } else { &applied };
            let names: Vec<&str> = applied["webhooks"][0]["matchConditions"]
                .as_array()
                .context("no matchConditions in the applied object")?
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            ensure!(
                names.contains(&CONDITION),
                "kubectl {} dropped the condition: {names:?}",
                apply.join(" ")
            );
        }
        Ok(())
    });
    s.run("condition: removed by someone else, it is put back", || {
        let configuration = cp
            .kubectl(&["get", "mutatingwebhookconfiguration", "registry-gate", "-o", "json"])
            .ok()?
            .json()?;
        let conditions = configuration["webhooks"][0]["matchConditions"].as_array().context("conditions")?;
        let index = conditions.iter().position(|c| c["name"] == CONDITION).context("no condition")?;
        let patch = json!([
            {"op": "test", "path": format!("/webhooks/0/matchConditions/{index}/name"), "value": CONDITION},
            {"op": "remove", "path": format!("/webhooks/0/matchConditions/{index}")}
        ]);
        let patched = cp
            .kubectl(&[
                "patch",
                "mutatingwebhookconfiguration",
                "registry-gate",
                "--type=json",
                "-o",
                "json",
                "-p",
                &patch.to_string(),
            ])
            .ok()?
            .json()?;
        let started = Instant::now();
        // The object the patch returned, not a read after it: the controller checks every
        // second here and may already have put the condition back.
        let left = patched["webhooks"][0]["matchConditions"].as_array().context("conditions")?;
        ensure!(left.iter().all(|c| c["name"] != CONDITION), "the patch left the condition: {left:?}");
        wait_for_condition(cp, &rendered_condition(&policy_file)?)?;
        println!("condition restored {} ms after it was removed", started.elapsed().as_millis());
        // Set just after the write returns.
        wait_for(
            "registry_gate_match_condition_in_step 1",
            Duration::from_secs(5),
            Duration::from_millis(20),
            |last| {
                let (_, metrics) = controller.get("/metrics").ok()?;
                *last =
                    metrics.lines().filter(|l| l.contains("match_condition")).collect::<Vec<_>>().join("\n");
                metrics.lines().any(|l| l == "registry_gate_match_condition_in_step 1").then_some(())
            },
        )?;
        Ok(())
    });
    drop(registration);
}
