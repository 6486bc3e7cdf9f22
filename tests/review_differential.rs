//! registry-gate's AdmissionReview reader against the API server's own decoding of the same
//! bodies: sigs.k8s.io/json into the k8s.io/api types (the helper in `tests/godecode`, built
//! from the Go module proxy by `tests/goref/build.sh tests/godecode` unless
//! `REGISTRY_GATE_GODECODE_BIN` names a built one; without Go the test fails rather than skips).
//!
//! The bodies: the fuzz corpus of `admission_review`, and reviews of the object fixtures under
//! deterministic mutations aimed at where two JSON readers can disagree: duplicate keys (before
//! and after, spelled with escapes), keys in another case, values of the wrong type, `null`s,
//! escapes, invalid UTF-8, lone surrogates, and byte-level damage.
//!
//! What must hold, body by body:
//! - **when registry-gate reads a body, it sees what Go sees**: the same uid, kind, subresource,
//!   operation, namespace and name, and the same images at the same places in `object` and
//!   `oldObject`. No exception: a difference here is a bypass.
//! - **when registry-gate refuses a body Go reads, the refusal has a documented reason**
//!   (`Request::parse`): a duplicate key Go saw, invalid UTF-8 or a lone surrogate (which Go
//!   replaces with U+FFFD), nesting past the limit, or an envelope no API server sends (another
//!   apiVersion or kind, no request, no uid). Any other refusal fails the test.
//!
//! Bodies that registry-gate reads and Go cannot (a wrong type in a field registry-gate never
//! looks at) cannot come from an API server; they are counted and shown, not failed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use registry_gate::admission::review::{Request, ReviewError};
use registry_gate::admission::workload::{ObjectView, WorkloadKind};
use serde::Deserialize;
use serde_json::{Value, json};

const MIN_BODIES: usize = 10_000;
const MAX_EXAMPLES: usize = 12;
const EVIL: &str = "evil.example.com/miner:1";

/// What the Go helper read (tests/godecode/main.go).
#[derive(Debug, Deserialize)]
struct GoAnswer {
    ok: bool,
    error: Option<String>,
    duplicates: Vec<String>,
    api_version: String,
    kind: String,
    #[serde(flatten)]
    seen: Seen,
}

/// What a reader saw of a request.
#[derive(Debug, PartialEq, Deserialize)]
struct Seen {
    uid: String,
    review_kind: String,
    sub_resource: String,
    operation: String,
    namespace: String,
    name: String,
    object: Option<Vec<(String, String)>>,
    old_object: Option<Vec<(String, String)>>,
}

fn images(kind: &str, object: Option<ObjectView<'_>>) -> Option<Vec<(String, String)>> {
    let object = object?;
    let Some(workload) = WorkloadKind::of(kind) else { return Some(Vec::new()) };
    let spec = workload.pod_spec(object);
    Some(spec.images(workload.spec_path()).map(|(at, image)| (at.to_string(), image.to_owned())).collect())
}

fn ours(body: &[u8]) -> Result<Seen, ReviewError> {
    let request = Request::parse(body)?;
    let kind = request.kind().to_owned();
    Ok(Seen {
        uid: request.uid().to_owned(),
        review_kind: kind.clone(),
        sub_resource: request.sub_resource().to_owned(),
        operation: request.operation().to_owned(),
        namespace: request.namespace().to_owned(),
        name: request.name().to_owned(),
        object: images(&kind, request.object),
        old_object: images(&kind, request.old_object),
    })
}

/// Why registry-gate may refuse a body that Go reads, or `None` when nothing documented explains
/// the refusal.
fn documented_refusal(body: &[u8], error: &ReviewError, go: &GoAnswer) -> Option<&'static str> {
    if !go.duplicates.is_empty() {
        return Some("duplicate key");
    }
    if std::str::from_utf8(body).is_err() {
        return Some("invalid UTF-8");
    }
    let text = String::from_utf8_lossy(body).to_lowercase();
    if (text.contains("\\ud8")
        || text.contains("\\ud9")
        || text.contains("\\uda")
        || text.contains("\\udb")
        || text.contains("\\udc")
        || text.contains("\\udd")
        || text.contains("\\ude")
        || text.contains("\\udf"))
        && error.to_string().contains("surrogate")
    {
        return Some("lone surrogate");
    }
    if matches!(error, ReviewError::TooDeep) {
        return Some("nesting");
    }
    // Go decodes whatever it is given; the API server sends only full v1 reviews.
    if go.api_version != "admission.k8s.io/v1" || go.kind != "AdmissionReview" || go.seen.uid.is_empty() {
        return Some("not a v1 AdmissionReview with a uid");
    }
    // registry-gate reads every object through one view of the Pod-spec fields; an object of a
    // kind its webhooks are not registered for may use those names for other types.
    if WorkloadKind::of(&go.seen.review_kind).is_none()
        && !["ConfigMap", "Service"].contains(&go.seen.review_kind.as_str())
    {
        return Some("a kind the webhooks are not registered for");
    }
    None
}

// === The bodies ===

/// A small deterministic generator (xorshift64*), so every run decides the same bodies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Value {
    let path = manifest_dir().join("tests/data/objects").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// Reviews of each fixture as its own kind and, for the Deployment, as each other workload kind
/// with `spec.template`; with and without an `oldObject`.
fn base_reviews() -> Vec<String> {
    let mut reviews = Vec::new();
    let mut add = |kind: &str, group: &str, object: &Value, operation: &str, old: Option<&Value>| {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "3f1e0b7c-1d2a-4c55-9a0e-2b7c1c6c9d10",
                "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": group, "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
                "name": object["metadata"]["name"],
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "alice@example.com", "groups": ["system:authenticated"]},
                "object": object,
                "oldObject": old,
                "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        });
        reviews.push(serde_json::to_string(&review).expect("JSON"));
    };
    let pod = fixture("pod");
    add("Pod", "", &pod, "CREATE", None);
    add("Pod", "", &pod, "UPDATE", Some(&pod));
    let deployment = fixture("deployment");
    for kind in ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"] {
        add(kind, "apps", &deployment, "CREATE", None);
    }
    add("ReplicationController", "", &deployment, "UPDATE", Some(&deployment));
    add("Job", "batch", &fixture("job"), "CREATE", None);
    add("CronJob", "batch", &fixture("cronjob"), "CREATE", None);
    add(
        "Service",
        "",
        &json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
        "CREATE",
        None,
    );
    reviews
}

/// Byte offsets of every `"key":` in the text.
fn key_positions(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            if bytes.get(i + 1) == Some(&b':') {
                found.push((start, text[start + 1..i].to_owned()));
            }
        }
        i += 1;
    }
    found
}

const VALUES: [&str; 12] = [
    "\"evil.example.com/miner:1\"",
    "null",
    "[]",
    "{}",
    "1",
    "true",
    "\"\"",
    "[{\"image\":\"evil.example.com/miner:1\"}]",
    "{\"image\":\"evil.example.com/miner:1\"}",
    "\"\\ud800\"",
    "\"kube-system\"",
    "\"DELETE\"",
];

/// The keys whose values registry-gate reads.
const READ_KEYS: [&str; 16] = [
    "image",
    "reference",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "volumes",
    "spec",
    "template",
    "jobTemplate",
    "object",
    "oldObject",
    "uid",
    "kind",
    "namespace",
    "operation",
    "subResource",
];

/// Where the value of the key at `at` ends: the next comma or closing bracket at its depth.
fn value_end(text: &str, at: usize, key: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = at + key.len() + 3;
    let (mut depth, mut in_string) = (0i32, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'{' | b'[' if !in_string => depth += 1,
            b'}' | b']' if !in_string && depth == 0 => return i,
            b'}' | b']' if !in_string => depth -= 1,
            b',' if !in_string && depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The text with a second `key` holding `value`, before the first or after it.
fn duplicated(text: &str, at: usize, key: &str, value: &str, after: bool) -> Vec<u8> {
    let (cut, insert) = if after {
        (value_end(text, at, key), format!(",\"{key}\":{value}"))
    } else {
        (at, format!("\"{key}\":{value},"))
    };
    format!("{}{insert}{}", &text[..cut], &text[cut..]).into_bytes()
}

/// One mutation of a review's text.
fn mutate(rng: &mut Rng, text: &str, keys: &[(usize, String)]) -> Vec<u8> {
    // Half the time a key registry-gate reads: where a disagreement would matter.
    let read: Vec<&(usize, String)> =
        keys.iter().filter(|(_, key)| READ_KEYS.contains(&key.as_str())).collect();
    let (at, key) = if !read.is_empty() && rng.below(2) == 0 { *rng.pick(&read) } else { rng.pick(keys) };
    let (at, key) = (*at, key.as_str());
    let value = *rng.pick(&VALUES);
    let splice = |insert: &str| {
        let mut out = text[..at].to_owned();
        out.push_str(insert);
        out.push_str(&text[at..]);
        out.into_bytes()
    };
    let value_end = || value_end(text, at, key);
    match rng.below(9) {
        // A duplicate before the key, or after its value.
        0 => duplicated(text, at, key, value, false),
        1 => duplicated(text, at, key, value, true),
        // A duplicate spelled with an escape, before or after.
        2 => {
            let escaped: String = key
                .chars()
                .enumerate()
                .map(|(i, c)| if i == 0 { format!("\\u{:04x}", c as u32) } else { c.to_string() })
                .collect();
            splice(&format!("\"{escaped}\":{value},"))
        }
        // The key in another case.
        3 => {
            let mut out = text.to_owned();
            let upper: String = key
                .chars()
                .enumerate()
                .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
                .collect();
            out.replace_range(at + 1..at + 1 + key.len(), &upper);
            out.into_bytes()
        }
        // The value replaced.
        4 | 5 => {
            let end = value_end();
            let mut out = text[..at + key.len() + 3].to_owned();
            out.push_str(value);
            out.push_str(&text[end..]);
            out.into_bytes()
        }
        // The key removed with its value.
        6 => {
            let end = value_end();
            let mut out = text[..at].to_owned();
            let rest = &text[end..];
            out.push_str(rest.strip_prefix(',').unwrap_or(rest));
            out.into_bytes()
        }
        // A byte replaced by a JSON-significant one, or by a byte that is not UTF-8.
        7 => {
            let mut out = text.as_bytes().to_vec();
            let i = rng.below(out.len());
            out[i] = *rng.pick(b"{}[]\",:\\ 0nt\xff\xc3");
            out
        }
        // A key escaped in full: the same key to a JSON reader.
        _ => {
            let mut out = text.to_owned();
            let escaped: String = key.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
            out.replace_range(at + 1..at + 1 + key.len(), &escaped);
            out.into_bytes()
        }
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let fuzz_corpus = manifest_dir().join("fuzz/corpus/admission_review");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fuzz_corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", fuzz_corpus.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    bodies.extend(files.iter().map(|file| std::fs::read(file).expect("corpus file")));
    let mut rng = Rng(0x5eed_2026_1130_0001);
    for review in base_reviews() {
        let keys = key_positions(&review);
        bodies.push(review.clone().into_bytes());
        // Every image smuggled in as a duplicate, first and last.
        for (at, key) in keys.iter().filter(|(_, key)| key == "image" || key == "reference") {
            let evil = format!("\"{EVIL}\"");
            bodies.push(duplicated(&review, *at, key, &evil, false));
            bodies.push(duplicated(&review, *at, key, &evil, true));
        }
        for _ in 0..1_000 {
            let once = mutate(&mut rng, &review, &keys);
            // Some mutations twice over, where a first duplicate is hidden by a second.
            if rng.below(4) == 0
                && let Ok(text) = String::from_utf8(once.clone())
            {
                let keys = key_positions(&text);
                if !keys.is_empty() {
                    bodies.push(mutate(&mut rng, &text, &keys));
                }
            }
            bodies.push(once);
        }
    }
    bodies
}

// === The comparison ===

fn godecode() -> PathBuf {
    if let Some(bin) = std::env::var_os("REGISTRY_GATE_GODECODE_BIN") {
        return PathBuf::from(bin);
    }
    let output = Command::new(manifest_dir().join("tests/goref/build.sh"))
        .arg(manifest_dir().join("tests/godecode"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/goref/build.sh");
    assert!(output.status.success(), "tests/goref/build.sh tests/godecode failed (is Go installed?)");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 path");
    PathBuf::from(stdout.lines().last().expect("build.sh prints the binary's path"))
}

fn ask_go(bodies: &[Vec<u8>]) -> Vec<GoAnswer> {
    let mut child = Command::new(godecode())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the godecode helper");
    let mut stdin = child.stdin.take().expect("stdin");
    let input: String =
        bodies.iter().map(|body| base64::engine::general_purpose::STANDARD.encode(body) + "\n").collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).expect("write to the helper"));
    let output = child.wait_with_output().expect("helper output");
    writer.join().expect("writer");
    assert!(output.status.success(), "the helper failed");
    let answers: Vec<GoAnswer> = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("helper line {line}: {e}")))
        .collect();
    assert_eq!(answers.len(), bodies.len(), "one answer per body");
    answers
}

fn shown(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
    if text.len() < body.len() { format!("{text}…") } else { text }
}

#[test]
fn the_review_reader_sees_what_the_api_servers_decoder_sees_or_refuses() {
    let bodies = corpus();
    assert!(bodies.len() >= MIN_BODIES, "only {} bodies", bodies.len());
    let answers = ask_go(&bodies);

    let mut agreed = 0usize;
    let mut both_refused = 0usize;
    let mut refusals: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut go_refused_only = Vec::new();
    let mut different = Vec::new();
    let mut unexplained = Vec::new();
    let mut evil_seen_by_go_refused = 0usize;
    for (body, go) in bodies.iter().zip(answers) {
        match (ours(body), go.ok) {
            (Ok(seen), true) => {
                let go_seen = go.seen;
                if seen == go_seen {
                    agreed += 1;
                } else {
                    different
                        .push(format!("{}\n    registry-gate: {seen:?}\n    Go: {go_seen:?}", shown(body)));
                }
            }
            (Ok(_), false) => {
                go_refused_only.push(format!("{} ({})", shown(body), go.error.unwrap_or_default()))
            }
            (Err(_), false) => both_refused += 1,
            (Err(error), true) => match documented_refusal(body, &error, &go) {
                Some(reason) => {
                    *refusals.entry(reason).or_default() += 1;
                    let evil = |images: &Option<Vec<(String, String)>>| {
                        images.iter().flatten().any(|(_, image)| image == EVIL)
                    };
                    if evil(&go.seen.object) || evil(&go.seen.old_object) {
                        evil_seen_by_go_refused += 1;
                    }
                }
                None => unexplained.push(format!("{}\n    registry-gate: {error}", shown(body))),
            },
        }
    }
    let examples = |list: &[String]| list.iter().take(MAX_EXAMPLES).cloned().collect::<Vec<_>>().join("\n  ");
    println!(
        "{} bodies: {agreed} read alike, {both_refused} refused by both, refused by registry-gate only: {refusals:?} \
         ({evil_seen_by_go_refused} of them with an image Go would have run from {EVIL}), \
         read by registry-gate only: {}",
        bodies.len(),
        go_refused_only.len()
    );
    if !go_refused_only.is_empty() {
        println!(
            "read by registry-gate, not by Go (no API server sends these):\n  {}",
            examples(&go_refused_only)
        );
    }
    assert!(different.is_empty(), "{} bodies read differently:\n  {}", different.len(), examples(&different));
    assert!(
        unexplained.is_empty(),
        "{} bodies Go reads were refused for no documented reason:\n  {}",
        unexplained.len(),
        examples(&unexplained)
    );
    // The corpus must reach both sides of every question, or it proves nothing.
    assert!(agreed >= 1_000, "only {agreed} bodies read alike");
    assert!(refusals.get("duplicate key").copied().unwrap_or(0) >= 500, "too few duplicates: {refusals:?}");
    assert!(
        evil_seen_by_go_refused >= 20,
        "too few duplicates that would smuggle an image: {evil_seen_by_go_refused}"
    );
}
