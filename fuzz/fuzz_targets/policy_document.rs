#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gate::policy::{Decision, Denial, Namespace, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(documents) = registry_gate::yaml::parse_documents(text) {
        documents.iter().for_each(|document| drop(document.to_json()));
    }
    let Ok(policy) = Policy::parse(text) else { return };

    // An accepted entry must cover an image under its own URL; the compiled index has to agree
    // with the validator about what each URL means.
    for registry in &policy.registries {
        let host = registry.pattern.host.key().replace('*', "w");
        let image = match &*registry.pattern.path {
            "" => format!("{host}/x"),
            path => format!("{host}/{path}/x"),
        };
        let (reference, decision) = policy.check(&image, &Namespace::named("default"));
        // A host the image grammar reads as a Docker Hub path, or a path at the length limit,
        // names no image under this entry.
        if reference.is_none_or(|reference| reference.is_short_name() || reference.domain() != host) {
            continue;
        }
        let uncovered =
            matches!(decision, Decision::Denied(Denial::Unregistered | Denial::InvalidReference(_)));
        assert!(!uncovered, "{image:?} under {:?}: {decision:?}", registry.url);
    }
});
