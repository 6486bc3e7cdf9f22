#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use registry_gate::admission::review::Request;
use registry_gate::admission::{self, Webhook};
use registry_gate::metrics::Metrics;
use registry_gate::namespaces::NamespaceLabels;
use registry_gate::policy::{Policy, PolicyStore};

const ENFORCE: &str = r#"
apiVersion: registry-gate.io/v1
kind: RegistryPolicy
mode: enforce
exemptNamespaces: [kube-system]
registries:
  - {name: hub-official, type: Public, url: docker.io/library}
  - {name: team-ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-acme}
  - {name: corp, type: Generic, url: "registry.corp.example:5000", pullSecret: corp-pull, namespaces: [shop, "prod-*"]}
  - {name: acr, type: ACR, url: "*.azurecr.io", pullSecret: acr-creds}
  - {name: ecr, type: ECR, url: "123456789012.dkr.ecr.*.amazonaws.com", pullSecret: ecr-creds}
deny:
  - {url: docker.io/library/busybox, reason: use ghcr.io/acme/debug instead}
"#;

/// One store per mode: audit mode answers denials with warnings, a different path.
fn stores() -> &'static [PolicyStore; 2] {
    static STORES: OnceLock<[PolicyStore; 2]> = OnceLock::new();
    STORES.get_or_init(|| {
        [ENFORCE, &ENFORCE.replace("mode: enforce", "mode: audit")].map(|text| {
            let store = PolicyStore::new(Metrics::new());
            store.install(Policy::parse(text).expect("the fuzz policy is valid"), "fuzz");
            store
        })
    })
}

fuzz_target!(|data: &[u8]| {
    for store in stores() {
        for webhook in [Webhook::Validate, Webhook::Mutate] {
            drop(registry_gate::server::review(store, &NamespaceLabels::unwatched(), webhook, data));
        }
    }
    let Ok(request) = Request::parse(data) else { return };
    let uid = request.uid().to_owned();
    // The API server matches answers to requests by uid alone.
    assert_eq!(admission::answer_policy_review(&request, |_, _| None).answer.response.uid, uid);
    let snapshot = stores()[0].current().expect("a policy is installed");
    let answer = admission::answer(Webhook::Mutate, request, &snapshot, None);
    assert_eq!(answer.response.uid, uid);
    let body = answer.response.to_review_json();
    serde_json::from_slice::<serde_json::Value>(&body).expect("the answer is JSON");
});
