#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_gate::image::{DigestAlgorithms, Reference};

/// What a reference names, leaving out how it was spelled (short name, `library/` implied).
fn named(reference: &Reference<'_>) -> (String, String, Option<String>, Option<String>) {
    let owned = |text: Option<&str>| text.map(str::to_owned);
    (
        reference.domain().to_owned(),
        reference.path().to_string(),
        owned(reference.tag()),
        owned(reference.digest()),
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(image) = std::str::from_utf8(data) else { return };
    for algorithms in [DigestAlgorithms::ALL, DigestAlgorithms::SHA256_ONLY] {
        let _ = Reference::parse_normalized(image, algorithms);
        let _ = Reference::parse_docker_ref(image, algorithms);
        let _ = Reference::parse_strict(image, algorithms);
    }
    let _ = Reference::with_name(image);

    // The one-pass reader may decline any input, but never answer differently from the Go port.
    let parsed = Reference::parse(image);
    assert_eq!(parsed, Reference::parse_exactly(image), "{image:?}");
    let Ok(reference) = parsed else { return };
    assert!(!reference.domain().is_empty(), "{image:?} was admitted without a registry host");
    // Messages and logs print the full form; it must name the very image that was decided.
    let printed = reference.to_string();
    let reparsed = Reference::parse_docker_ref(&printed, DigestAlgorithms::ALL);
    let reparsed = reparsed.unwrap_or_else(|e| panic!("{image:?} prints as {printed:?}, which fails: {e}"));
    assert_eq!(named(&reference), named(&reparsed), "{image:?} prints as {printed:?}");
});
