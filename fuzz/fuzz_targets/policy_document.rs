#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gate::policy::{Decision, Denial, Namespace, Policy};
use registry_gate::yaml::{Node, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let yaml = registry_gate::yaml::parse_documents(text);
    if let Ok(documents) = &yaml {
        documents.iter().for_each(|document| drop(document.to_json()));
    }
    // The JSON reader stands in for the YAML reader on JSON policies: where both read a text,
    // they must build the same tree (lines aside, which only the YAML reader has exactly).
    if let (Some(from_json), Ok(documents)) = (registry_gate::yaml::parse_json_document(text), &yaml) {
        let [from_yaml] = documents.as_slice() else {
            panic!("JSON read as one document, YAML as {}", documents.len())
        };
        assert_eq!(without_lines(from_json), without_lines(from_yaml.clone()));
    }
    let Ok(policy) = Policy::parse(text) else { return };

    // An accepted entry must cover an image at its own URL; the compiled index has to agree
    // with the validator about what each URL means.
    for registry in &policy.registries {
        let host = registry.pattern.host.key().replace('*', "w");
        // An exact entry covers its one repository; a prefix entry, the paths under it.
        let image = match &*registry.pattern.path {
            "" => format!("{host}/x"),
            path if registry.exact => format!("{host}/{path}"),
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

fn without_lines(node: Node<'_>) -> Node<'_> {
    let value = match node.value {
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(without_lines).collect()),
        Value::Mapping(entries) => Value::Mapping(
            entries.into_iter().map(|(key, value)| (without_lines(key), without_lines(value))).collect(),
        ),
        scalar => scalar,
    };
    Node { value, line: 0 }
}
