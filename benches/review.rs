//! A whole AdmissionReview in process: bytes in, response bytes out, for a typical Pod (about
//! 8 KB, 3 containers) and a large one (50 containers, about 200 KB), against a 10,000-registry
//! policy. In the same run, the lean borrowing view registry-gate decodes with is measured
//! against a full `k8s_openapi` Pod decode, the choice ARCHITECTURE.md asks to prove.
//!
//! Run: `cargo bench --bench review`. Figures are in benches/RESULTS.md.

// Built for the image's target, the benchmark allocates as the shipped executable does
// (src/main.rs), so that its figures are the image's, not musl's allocator's.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use registry_gate::admission::Webhook;
use registry_gate::admission::review::{MAX_JSON_DEPTH, Request, nests_at_most};
use registry_gate::admission::workload::WorkloadKind;
use registry_gate::metrics::Metrics;
use registry_gate::namespaces::NamespaceLabels;
use registry_gate::policy::{Policy, PolicyStore};
use serde_json::{Value, json};

const REGISTRIES: usize = 10_000;

fn policy() -> Policy {
    let mut text = String::from("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n");
    text += "- {name: hub, type: Public, url: docker.io/library}\n";
    for i in 0..REGISTRIES - 1 {
        text += &format!("- {{name: r{i}, type: GHCR, url: ghcr.io/org{i}, pullSecret: s{i}}}\n");
    }
    Policy::parse(&text).expect("valid policy")
}

/// A container as real manifests write them: env, ports, resources, probes, mounts, security.
fn container(i: usize, image: &str, env: usize) -> Value {
    json!({
        "name": format!("container-{i}"),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config=/etc/app/config.yaml", "--log-format=json", format!("--shard={i}")],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": (0..env).map(|e| json!({"name": format!("SETTING_{e}"), "value": format!("value-{e}-for-container-{i}")})).collect::<Vec<_>>(),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": true}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File"
    })
}

/// A Pod review; `env` variables per container set its size (16: ~8 KB for 3 containers;
/// 40: ~200 KB for 50).
fn review(containers: usize, env: usize) -> Vec<u8> {
    let images = [
        "ghcr.io/org17/api:1.4.2",
        "nginx:1.27",
        "ghcr.io/org4242/sidecar@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ];
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "api-7d9f8b6c5-x2k4q", "namespace": "shop", "generateName": "api-7d9f8b6c5-",
            "labels": {"app": "api", "pod-template-hash": "7d9f8b6c5", "team": "checkout"},
            "annotations": {"prometheus.io/scrape": "true", "checksum/config": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b6c5", "uid": "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": (0..containers).map(|i| container(i, images[i % images.len()], env)).collect::<Vec<_>>(),
            "volumes": [{"name": "config", "configMap": {"name": "api-config"}}, {"name": "tmp", "emptyDir": {}}],
            "serviceAccountName": "api",
            "securityContext": {"runAsUser": 10001, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "api"}}}}]}},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst"
        }
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "b1d2c3a4", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    serde_json::to_vec(&review).expect("JSON")
}

/// The full decode the lean view replaces: every field of the Pod, owned.
#[derive(serde::Deserialize)]
struct FullReview {
    request: FullRequest,
}

#[derive(serde::Deserialize)]
struct FullRequest {
    #[allow(dead_code)]
    uid: String,
    object: k8s_openapi::api::core::v1::Pod,
}

fn images_lean(body: &[u8]) -> usize {
    let request = Request::parse(body).expect("valid review");
    let spec = WorkloadKind::Pod.pod_spec(request.object.expect("object"));
    spec.images("spec").count()
}

fn images_full(body: &[u8]) -> usize {
    let review: FullReview = serde_json::from_slice(body).expect("valid review");
    let spec = review.request.object.spec.expect("spec");
    spec.containers.iter().filter(|c| c.image.is_some()).count()
}

fn bench_review(c: &mut Criterion) {
    let store = PolicyStore::new(Metrics::new());
    store.install(policy(), "bench");
    let mut group = c.benchmark_group("review in process");
    for (name, containers, env) in
        [("typical pod, 3 containers", 3, 16), ("large pod, 50 containers", 50, 40)]
    {
        let body = review(containers, env);
        println!("{name}: {} bytes", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("validate", name), &body, |b, body| {
            b.iter(|| {
                registry_gate::server::review(
                    &store,
                    &NamespaceLabels::unwatched(),
                    Webhook::Validate,
                    black_box(body),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("mutate", name), &body, |b, body| {
            b.iter(|| {
                registry_gate::server::review(
                    &store,
                    &NamespaceLabels::unwatched(),
                    Webhook::Mutate,
                    black_box(body),
                )
            })
        });
        assert_eq!(images_lean(&body), images_full(&body), "both decodes see the same images");
        group.bench_with_input(BenchmarkId::new("decode: lean view", name), &body, |b, body| {
            b.iter(|| images_lean(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("decode: k8s-openapi Pod", name), &body, |b, body| {
            b.iter(|| images_full(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("decode: nesting scan", name), &body, |b, body| {
            b.iter(|| nests_at_most(black_box(body), MAX_JSON_DEPTH))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench_review
}
criterion_main!(benches);
