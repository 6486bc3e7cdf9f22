//! A decision (parse + match) must not touch the heap: every Pod admission in the cluster runs
//! it once per image. A counting global allocator proves it for a realistic mix of images.
//!
//! The allocator counts per thread (allocation-counter): the test harness's own threads
//! allocate now and then while the measured loop runs on a busy machine, and a global count
//! would blame the decision for them.

use registry_gate::image::Reference;
use registry_gate::policy::{Decision, Namespace, Policy};

const POLICY: &str = r#"
apiVersion: registry-gate.io/v1
kind: RegistryPolicy
registries:
  - {name: hub, type: Public, url: docker.io/library}
  - {name: ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr}
  - {name: ghcr-team, type: GHCR, url: ghcr.io/acme/team, pullSecret: ghcr-team, namespaces: ["prod-*"]}
  - {name: acr, type: ACR, url: "*.azurecr.io", pullSecret: acr}
  - {name: lab, type: Generic, url: "registry.lab.example:5000"}
deny:
  - url: docker.io/library/busybox
"#;

const IMAGES: &[&str] = &[
    "nginx",
    "nginx:1.27",
    "docker.io/library/nginx:1.27",
    "index.docker.io/library/redis@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "busybox",
    "ghcr.io/acme/api:1.2.3",
    "GHCR.io/acme/team/worker:2",
    "ghcr.io/acme-evil/api",
    "acme.azurecr.io/app:v1",
    "registry.lab.example:5000/x/y:latest",
    "quay.io/unregistered/app",
    "acme/app",
];

#[test]
fn deciding_an_image_does_not_allocate() {
    let policy = Policy::parse(POLICY).expect("valid policy");
    // Warm up anything lazily initialised (hashers' seeds, thread locals) outside the region.
    let mut allowed = 0;
    for image in IMAGES {
        let reference = Reference::parse(image).expect("valid image");
        allowed += usize::from(matches!(
            policy.decide(&reference, &Namespace::named("prod-1")),
            Decision::Allowed(_)
        ));
    }

    let mut allowed_again = 0;
    let stats = allocation_counter::measure(|| {
        for _ in 0..100 {
            for image in IMAGES {
                let reference = Reference::parse(std::hint::black_box(image)).expect("valid image");
                let decision = policy.decide(&reference, &Namespace::named(std::hint::black_box("prod-1")));
                allowed_again += usize::from(matches!(decision, Decision::Allowed(_)));
            }
        }
    });

    assert_eq!(allowed_again, allowed * 100, "the same decisions each round");
    assert!(allowed > 3 && allowed < IMAGES.len(), "the mix holds allowed and denied images");
    assert_eq!(stats.count_total, 0, "{stats:?}");
    // The counter sees this thread's allocations.
    let boxed = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(allowed))));
    assert_eq!(boxed.count_total, 1, "{boxed:?}");
}
