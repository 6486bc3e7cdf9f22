//! registry-gate's image parser against the Go code a node runs, on tens of thousands of strings:
//! `github.com/distribution/reference` v0.6.0 (the kubelet's `ParseNormalizedNamed`, containerd's
//! `ParseDockerRef`) and containerd's resolution of image IDs among the images already cached.
//!
//! `tests/image_vectors.rs` pins the cases Go's authors wrote down; this test asks Go itself about
//! the ones nobody wrote down: mutations and recombinations of those vectors and of realistic
//! pieces. The answers come from the helper in `tests/goref` (see its README), which the test
//! builds with `tests/goref/build.sh` unless `REGISTRY_GATE_GOREF_BIN` names a built one. Without
//! Go the test fails instead of skipping: a skipped differential test looks just like a passing
//! one.
//!
//! The corpus is the same on every run. `REGISTRY_GATE_DIFFERENTIAL_SEED=<u64>` draws another one,
//! for exploring; the failure message names the seed it used.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use registry_gate::image::{DigestAlgorithms, ParseError, Reference};
use serde::Deserialize;

/// The seed of the corpus every run uses unless told otherwise.
const DEFAULT_SEED: u64 = 0x5eed_2026_0b5e_55ed;
const MIN_CORPUS: usize = 30_000;
/// How many example disagreements a failure shows; the counts cover all of them.
const MAX_EXAMPLES: usize = 20;

/// One parse, in the helper's terms (tests/goref/main.go); fields a failed parse does not define
/// are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Parsed {
    valid: bool,
    error: Option<String>,
    domain: Option<String>,
    path: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    string: Option<String>,
}

impl Parsed {
    fn of(result: &Result<Reference<'_>, ParseError>) -> Self {
        match result {
            Ok(r) => Parsed {
                valid: true,
                error: None,
                domain: Some(r.domain().to_owned()),
                path: Some(r.path().to_string()),
                tag: r.tag().map(str::to_owned),
                digest: r.digest().map(str::to_owned),
                string: Some(r.to_string()),
            },
            Err(e) => Parsed {
                valid: false,
                error: Some(e.to_string()),
                domain: None,
                path: None,
                tag: None,
                digest: None,
                string: None,
            },
        }
    }
}

impl fmt::Display for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.valid {
            return write!(f, "error {:?}", self.error.as_deref().unwrap_or("<none>"));
        }
        let show = |field: &Option<String>| field.as_deref().map_or("-".to_owned(), |v| format!("{v:?}"));
        write!(
            f,
            "ok domain {} path {} tag {} digest {} => {}",
            show(&self.domain),
            show(&self.path),
            show(&self.tag),
            show(&self.digest),
            show(&self.string)
        )
    }
}

/// The helper's answer for one input.
#[derive(Debug, Deserialize)]
struct GoAnswer {
    input: String,
    normalized: Parsed,
    docker_ref: Parsed,
    /// The string the kubelet hands to the CRI; `None` when the kubelet refuses the image.
    cri: Option<String>,
    /// containerd could resolve `cri` as the ID, or an ID prefix, of an image already cached.
    local_id: bool,
}

struct Differential {
    seed: u64,
    corpus: Vec<String>,
    answers: Vec<GoAnswer>,
}

/// Built once and shared by the tests: the Go helper runs a single batch for all of them. An
/// error is kept rather than panicked on inside `OnceLock`, so each test reports it instead of
/// retrying the build.
fn differential() -> &'static Differential {
    static DIFFERENTIAL: OnceLock<Result<Differential, String>> = OnceLock::new();
    let result = DIFFERENTIAL.get_or_init(|| {
        let seed = match std::env::var("REGISTRY_GATE_DIFFERENTIAL_SEED") {
            Ok(text) => text.parse().map_err(|e| format!("REGISTRY_GATE_DIFFERENTIAL_SEED={text:?}: {e}"))?,
            Err(_) => DEFAULT_SEED,
        };
        let corpus = corpus(seed);
        let binary = goref_binary()?;
        let answers = ask_go(&binary, &corpus)?;
        Ok(Differential { seed, corpus, answers })
    });
    match result {
        Ok(differential) => differential,
        Err(e) => panic!("cannot ask Go: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The Go helper

fn goref_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("REGISTRY_GATE_GOREF_BIN") {
        return Ok(PathBuf::from(path));
    }
    match Command::new("go").arg("version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            return Err(format!(
                "`go version` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Err(e) => {
            return Err(format!(
                "this test needs Go to build its reference helper, and `go` could not be run ({e}). \
                 Install Go (https://go.dev/dl) and put it on PATH, or set REGISTRY_GATE_GOREF_BIN to \
                 a binary built by tests/goref/build.sh"
            ));
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goref/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .ok_or_else(|| format!("{} printed no binary path", script.display()))?;
    Ok(PathBuf::from(path))
}

/// Runs every input through the helper in one process.
fn ask_go(binary: &Path, corpus: &[String]) -> Result<Vec<GoAnswer>, String> {
    let mut input = String::with_capacity(corpus.len() * 64);
    for image in corpus {
        // serde_json escapes control characters, so each input stays on one line.
        input.push_str(&serde_json::to_string(image).map_err(|e| format!("encoding {image:?}: {e}"))?);
        input.push('\n');
    }
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let mut stdin = child.stdin.take().ok_or("the helper's stdin is not piped")?;
    // Written from another thread: the helper answers as it reads, so writing everything before
    // reading would deadlock once its output fills the pipe.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().map_err(|e| format!("waiting for {}: {e}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{} failed ({}): {stderr}", binary.display(), output.status));
    }
    writer
        .join()
        .map_err(|_| "the thread writing to the helper panicked".to_owned())?
        .map_err(|e| format!("writing to {}: {e}; its stderr: {stderr}", binary.display()))?;
    let stdout =
        String::from_utf8(output.stdout).map_err(|e| format!("the helper's output is not UTF-8: {e}"))?;
    let answers = stdout
        .lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str::<GoAnswer>(line).map_err(|e| format!("answer {}: {e}: {line}", n + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if answers.len() != corpus.len() {
        return Err(format!("the helper gave {} answers for {} inputs", answers.len(), corpus.len()));
    }
    // The helper echoes what it decoded; a difference means the transport, not the parser, is wrong.
    if let Some((sent, answer)) = corpus.iter().zip(&answers).find(|(sent, answer)| **sent != answer.input) {
        return Err(format!("sent {sent:?} but the helper answered for {:?}", answer.input));
    }
    Ok(answers)
}

// ---------------------------------------------------------------------------------------------
// The corpus

const SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const COUNTING_HEX: &str = "0123456789abcdef";

/// `len` lower-case hex digits, cycling through `pattern`.
fn hex_from(pattern: &str, len: usize) -> String {
    pattern.chars().cycle().take(len).collect()
}

fn hex(len: usize) -> String {
    hex_from(SHA256_HEX, len)
}

const HOSTS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "Index.docker.io",
    "index.docker.io:443",
    "registry-1.docker.io",
    "Docker.io",
    "docker.io:443",
    "localhost",
    "localhost:5000",
    "LOCALHOST",
    "Localhost",
    "ghcr.io",
    "GHCR.io",
    "quay.io",
    "registry.k8s.io",
    "us-docker.pkg.dev",
    "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "registry.example.com:5000",
    "example.com:",
    "example.com:0",
    "example.com:65536",
    "example.com:5000a",
    "example.com::5000",
    "1.2.3.4",
    "1.2.3.4:5000",
    "[::1]",
    "[::1]:5000",
    "[2001:db8::1]:443",
    "[2001:DB8::1]",
    "[fe80::1%eth0]",
    "[::ffff:1.2.3.4]",
    "[]",
    "[:]",
    "[g::1]",
    "::1",
    "[::1",
    "foo_bar.com",
    "-a.com",
    "a-.com",
    "a..com",
    ".com",
    "a.com.",
    "xn--bcher-kva.example",
    "bücher.example",
    "a",
    "A",
    "Foo",
    "my-registry",
    "my_registry",
    "library",
    "sha256",
];

const PATHS: &[&str] = &[
    "nginx",
    "library/nginx",
    "library",
    "acme/api",
    "acme/team/api",
    "a",
    "a/b/c/d",
    "0",
    "0123",
    "abc",
    "foo_bar",
    "foo__bar",
    "foo___bar",
    "foo-bar",
    "foo---bar",
    "foo.bar",
    "foo..bar",
    "foo._bar",
    "foo-.bar",
    "_foo",
    "foo_",
    ".foo",
    "foo.",
    "-foo",
    "foo-",
    "Foo",
    "fOO/bar",
    "foo/Bar",
    "foo//bar",
    "/foo",
    "foo/",
    "sha256",
    "sha384",
    "sha512",
    "sha1",
    "md5",
    "latest",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "docker.io",
    "index.docker.io",
    "localhost",
    "ünïcode",
    "naïve/app",
    "app\u{212a}",
    "",
];

/// What the Go grammar, go-digest or `strings.ToLower` treat specially: separators, whitespace,
/// control characters, and letters whose case Go and Rust may see differently: `İ` and the Kelvin
/// sign lower-case to ASCII, and the capitals added in Unicode 16 are upper case to Rust's tables
/// but not to Go's, which are still Unicode 15.0 (both decide which error message applies).
const ODD: &[&str] = &[
    ":",
    "@",
    "/",
    "//",
    ".",
    "..",
    "-",
    "_",
    "__",
    "___",
    " ",
    "\t",
    "\n",
    "\r",
    "\0",
    "\u{7f}",
    "\u{1b}",
    "A",
    "Z",
    "é",
    "É",
    "\u{130}",
    "\u{212a}",
    "ß",
    "\u{1e9e}",
    "Σ",
    "ς",
    "\u{1c5}",
    "\u{a7cb}",
    "\u{a7cc}",
    "\u{a7da}",
    "\u{1c89}",
    "\u{10d50}",
    "\u{2c2f}",
    "[",
    "]",
    "::",
    ":5000",
    ":443",
    "@sha256:",
    "sha256:",
    "%",
    "+",
    "=",
    "~",
    "\u{200b}",
    "\u{feff}",
    "\u{ff11}",
    "\u{ff41}",
    "\u{660}",
    "\u{fffd}",
    "library/",
    "index.docker.io/",
    "docker.io/",
    "localhost/",
    "0",
    "f",
    "0123",
    ":latest",
];

/// Digest algorithms, real and not, for `algorithm:hex` strings.
const ALGORITHMS: &[&str] =
    &["sha256", "sha384", "sha512", "sha1", "md5", "SHA256", "Sha256", "sha256+b64", "sha-256", "sha", "256"];

fn tags() -> Vec<String> {
    let mut tags: Vec<String> = [
        "",
        ":",
        ":latest",
        ":1.27",
        ":v1.2.3-rc.1",
        ":_x",
        ":.x",
        ":-x",
        ":X",
        ":Latest",
        ":0123",
        ":e3b0c442",
        ":a:b",
        ":a/b",
        ":é",
        ":\u{212a}",
        ":\u{130}",
        ": ",
        ":tag\n",
        ":5000",
        "::",
    ]
    .map(str::to_owned)
    .into();
    tags.extend([127, 128, 129].map(|n| format!(":{}", "t".repeat(n))));
    tags.extend([64, 96, 128, 129].map(|n| format!(":{}", hex(n))));
    tags
}

fn digests() -> Vec<String> {
    let mut digests: Vec<String> = ["", "@", "@sha256:"].map(str::to_owned).into();
    for (algorithm, lengths) in
        [("sha256", [64, 63, 65]), ("sha384", [96, 95, 97]), ("sha512", [128, 127, 129])]
    {
        digests.extend(lengths.map(|n| format!("@{algorithm}:{}", hex(n))));
    }
    digests.extend([
        format!("@sha256:{}", hex(64).to_uppercase()),
        format!("@sha256:{}E", hex(63)),
        format!("@sha1:{}", hex(40)),
        format!("@md5:{}", hex(32)),
        format!("@SHA256:{}", hex(64)),
        format!("@sha256+b64:{}", hex(64)),
        format!("@sha256:{}", hex(32)),
        format!("@sha256:{}", hex(31)),
        format!("@sha256:{}", "g".repeat(64)),
        format!("@{}", hex(64)),
        format!("@sha256:{0}@sha256:{0}", hex(64)),
        format!("@sha-256:{}", hex(64)),
        format!("@sha_256:{}", hex(64)),
        format!("@a.b:{}", hex(32)),
        format!("@1sha:{}", hex(64)),
        format!("@sha256:{}\n", hex(64)),
        format!("@sha256:{} ", hex(64)),
        format!("@sha384:{}", hex(64)),
        format!("@sha512:{}", hex(64)),
    ]);
    digests
}

/// SplitMix64: tiny, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &'a [&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn pick_owned<'a>(&mut self, items: &'a [String]) -> &'a str {
        &items[self.below(items.len())]
    }
}

/// Byte offsets of the character boundaries of `s`, both ends included.
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

/// A path of exactly `len` bytes in components of one letter, ending in a letter.
fn path_of_len(len: usize) -> String {
    let mut path = "a/".repeat(len / 2);
    if len % 2 == 1 {
        path.push('a');
    } else if let Some(last) = path.pop() {
        debug_assert_eq!(last, '/');
        path.push('b');
    }
    path
}

struct Corpus {
    seen: HashSet<String>,
    items: Vec<String>,
}

impl Corpus {
    fn add(&mut self, image: String) {
        if self.seen.insert(image.clone()) {
            self.items.push(image);
        }
    }
}

fn upstream_inputs() -> Vec<String> {
    #[derive(Deserialize)]
    struct Case {
        input: String,
    }
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/image-references.json"))
            .expect("tests/data/image-references.json is readable");
    let cases: Vec<Case> = serde_json::from_str(&text).expect("the vectors are valid JSON");
    cases.into_iter().map(|case| case.input).collect()
}

fn corpus(seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut corpus = Corpus { seen: HashSet::new(), items: Vec::new() };
    let (tags, digests) = (tags(), digests());
    let host_prefix = |host: &str| if host.is_empty() { String::new() } else { format!("{host}/") };

    for input in upstream_inputs() {
        corpus.add(input);
    }
    for whole in ["", " ", "\n", "nginx\n", " nginx", "nginx ", "\0", ":", "@", "/", ":latest", "@sha256:"] {
        corpus.add(whole.to_owned());
    }

    // Every host with every path, then each path with every tag and every digest under a few
    // hosts, then tags against digests: the pairs where the grammar's pieces meet.
    for host in HOSTS {
        for path in PATHS {
            corpus.add(format!("{host}/{path}"));
        }
    }
    for host in ["", "docker.io", "ghcr.io", "localhost:5000"] {
        for path in PATHS {
            for suffix in tags.iter().chain(&digests) {
                corpus.add(format!("{}{path}{suffix}", host_prefix(host)));
            }
        }
    }
    for base in [
        "nginx",
        "ghcr.io/acme/api",
        "GHCR.io/acme/api",
        "docker.io/library/nginx",
        "index.docker.io/nginx",
        "localhost:5000/a",
        "[::1]:5000/app",
        "a/b/c",
        "sha256",
        "foo_bar.com/app",
    ] {
        for tag in &tags {
            for digest in &digests {
                corpus.add(format!("{base}{tag}{digest}"));
            }
        }
    }

    // Image IDs and their look-alikes: containerd resolves `sha256:0123` against cached IDs by
    // prefix, and the kubelet turns a bare `0123` into `0123:latest`.
    for len in 0..=130 {
        for pattern in [SHA256_HEX, COUNTING_HEX] {
            let lower = hex_from(pattern, len);
            let upper = lower.to_uppercase();
            for algorithm in ALGORITHMS {
                corpus.add(format!("{algorithm}:{lower}"));
            }
            for algorithm in ["sha256", "sha384", "sha512"] {
                let id = format!("{algorithm}:{lower}");
                for wrapped in [
                    format!("docker.io/{id}"),
                    format!("library/{id}"),
                    format!("index.docker.io/{id}"),
                    format!("index.docker.io/library/{id}"),
                    format!("{id}@sha256:{SHA256_HEX}"),
                    format!("{id}:latest"),
                    format!("{algorithm}:{upper}"),
                    format!("{id}\n"),
                ] {
                    corpus.add(wrapped);
                }
            }
            for bare in [lower.clone(), upper, format!("{lower}:latest"), format!("library/{lower}")] {
                corpus.add(bare);
            }
        }
    }

    // Names on either side of the 255-byte path limit, which counts `library/` but not the host.
    for len in 238..=262 {
        let single = "a".repeat(len);
        let nested = path_of_len(len);
        for base in [
            single.clone(),
            format!("acme/{}", "a".repeat(len.saturating_sub(5))),
            nested.clone(),
            format!("docker.io/{single}"),
            format!("index.docker.io/{single}"),
            format!("ghcr.io/{nested}"),
            format!("localhost:5000/{nested}"),
            format!("Docker.io/{nested}"),
            format!("library/{}", "a".repeat(len.saturating_sub(8))),
        ] {
            for suffix in [
                String::new(),
                ":tag".to_owned(),
                format!("@sha256:{SHA256_HEX}"),
                format!(":{}", "t".repeat(128)),
            ] {
                corpus.add(format!("{base}{suffix}"));
            }
        }
    }
    for len in [1000, 4096] {
        corpus.add("a".repeat(len));
        corpus.add(format!("ghcr.io/{}", path_of_len(len)));
    }

    // Each odd piece at every position of a few ordinary images.
    for base in ["nginx:1", "ghcr.io/acme/api:1", "localhost:5000/a@sha256:e3b0c44298fc1c14"] {
        for &at in &boundaries(base) {
            for odd in ODD {
                corpus.add(format!("{}{odd}{}", &base[..at], &base[at..]));
            }
        }
    }

    // Random images from the realistic pieces.
    for _ in 0..14_000 {
        let mut image = String::new();
        if rng.chance(55) {
            image.push_str(rng.pick(HOSTS));
            image.push('/');
        }
        image.push_str(rng.pick(PATHS));
        while rng.chance(20) {
            image.push('/');
            image.push_str(rng.pick(PATHS));
        }
        if rng.chance(45) {
            image.push_str(rng.pick_owned(&tags));
        }
        if rng.chance(35) {
            image.push_str(rng.pick_owned(&digests));
        }
        corpus.add(image);
    }

    // Mutations of what is there so far, then splices of two strings.
    let pool_len = corpus.items.len();
    for _ in 0..13_000 {
        let mut image = corpus.items[rng.below(pool_len)].clone();
        for _ in 0..=rng.below(3) {
            image = mutate(&mut rng, &image, &tags, &digests);
        }
        corpus.add(image);
    }
    for _ in 0..3_000 {
        let a = &corpus.items[rng.below(pool_len)];
        let b = &corpus.items[rng.below(pool_len)];
        let (cuts_a, cuts_b) = (boundaries(a), boundaries(b));
        let at_a = cuts_a[rng.below(cuts_a.len())];
        let at_b = cuts_b[rng.below(cuts_b.len())];
        let spliced = format!("{}{}", &a[..at_a], &b[at_b..]);
        corpus.add(spliced);
    }
    corpus.items
}

fn mutate(rng: &mut Rng, image: &str, tags: &[String], digests: &[String]) -> String {
    let cuts = boundaries(image);
    let at = cuts[rng.below(cuts.len())];
    let (before, after) = image.split_at(at);
    let next_char_len = after.chars().next().map_or(0, char::len_utf8);
    match rng.below(7) {
        0 => format!("{before}{}{after}", rng.pick(ODD)),
        1 => format!("{before}{}", &after[next_char_len..]),
        2 => format!("{before}{}{}", rng.pick(ODD), &after[next_char_len..]),
        3 => {
            // Flip the case of the next character, which moves it across Go's host/path line.
            let mut chars = after.chars();
            let flipped = match chars.next() {
                Some(c) if c.is_lowercase() => c.to_uppercase().collect(),
                Some(c) => c.to_lowercase().collect(),
                None => String::new(),
            };
            format!("{before}{flipped}{}", chars.as_str())
        }
        4 => {
            let end = cuts[rng.below(cuts.len())].max(at);
            format!("{}{}", &image[..end], &image[at..])
        }
        5 => before.to_owned(),
        _ => {
            let piece = match rng.below(3) {
                0 => format!("{}/", rng.pick(HOSTS)),
                1 => rng.pick_owned(tags).to_owned(),
                _ => rng.pick_owned(digests).to_owned(),
            };
            format!("{before}{piece}{after}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// Disagreements by class, with the first few examples of each.
#[derive(Default)]
struct Mismatches {
    classes: BTreeMap<&'static str, (usize, Vec<String>)>,
}

impl Mismatches {
    fn add(&mut self, class: &'static str, input: &str, rust: impl fmt::Display, go: impl fmt::Display) {
        let (count, examples) = self.classes.entry(class).or_default();
        *count += 1;
        if examples.len() < MAX_EXAMPLES {
            examples.push(format!("[{class}] input {}\n    rust: {rust}\n    go:   {go}", show_input(input)));
        }
    }

    fn assert_none(self, what: &str, differential: &Differential) {
        if self.classes.is_empty() {
            return;
        }
        let total: usize = self.classes.values().map(|(count, _)| count).sum();
        let mut report = format!(
            "{what}: {total} disagreements with Go over {} inputs (seed {:#x})\n",
            differential.corpus.len(),
            differential.seed
        );
        for (class, (count, _)) in &self.classes {
            report.push_str(&format!("  {count:>6}  {class}\n"));
        }
        // Round-robin over the classes, so a large class cannot hide a small one.
        report.push_str(&format!("first examples (at most {MAX_EXAMPLES}):\n"));
        let mut shown = 0;
        for round in 0..MAX_EXAMPLES {
            for (_, examples) in self.classes.values() {
                if let Some(example) = examples.get(round).filter(|_| shown < MAX_EXAMPLES) {
                    report.push_str(&format!("  {example}\n"));
                    shown += 1;
                }
            }
        }
        panic!("{report}");
    }
}

/// The input, escaped, and shortened when it is one of the very long ones.
fn show_input(input: &str) -> String {
    let chars: Vec<char> = input.chars().collect();
    if chars.len() <= 160 {
        return format!("{input:?}");
    }
    let head: String = chars[..80].iter().collect();
    let tail: String = chars[chars.len() - 40..].iter().collect();
    format!("{head:?} ... {tail:?} ({} bytes)", input.len())
}

/// What the production parser answered.
#[derive(Clone, Copy)]
struct Production<'a>(&'a Result<Reference<'a>, ParseError>);

impl fmt::Display for Production<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(_) => write!(f, "{}", Parsed::of(self.0)),
            Err(e) => write!(f, "error {e:?} ({e})"),
        }
    }
}

/// Go's docker-ref answer together with what containerd would do with the kubelet's string.
#[derive(Clone, Copy)]
struct GoProduction<'a>(&'a GoAnswer);

impl fmt::Display for GoProduction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answer = self.0;
        write!(f, "{}; CRI string {:?}, local_id {}", answer.docker_ref, answer.cri, answer.local_id)
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn the_corpus_is_large_and_reaches_the_shapes_that_matter() {
    let differential = differential();
    let corpus = &differential.corpus;
    assert!(corpus.len() >= MIN_CORPUS, "the corpus has {} strings, fewer than {MIN_CORPUS}", corpus.len());
    let present: HashSet<&str> = corpus.iter().map(String::as_str).collect();
    // One of each class a past or present bug lives in, so that trimming the generator cannot
    // quietly drop one.
    for must in [
        "sha256:0123".to_owned(),
        "sha384:0123".to_owned(),
        "sha512:0123".to_owned(),
        format!("sha256:{SHA256_HEX}"),
        SHA256_HEX.to_owned(),
        format!("nginx:@sha256:{SHA256_HEX}"),
        format!("ghcr.io/acme/api:@sha256:{SHA256_HEX}"),
        "foo_bar.com/app".to_owned(),
        "Foo/bar".to_owned(),
        "[::1]:5000/nginx".to_owned(),
        "a".repeat(247),
        "a".repeat(248),
    ] {
        assert!(present.contains(must.as_str()), "the corpus lacks {must:?}");
    }
    let local_ids = differential.answers.iter().filter(|answer| answer.local_id).count();
    let kubelet_accepts = differential.answers.iter().filter(|answer| answer.normalized.valid).count();
    let kubelet_refuses = corpus.len() - kubelet_accepts;
    // Both sides of each line must be well populated for the comparisons to mean anything.
    assert!(local_ids >= 500, "only {local_ids} inputs resolve as cached image IDs");
    assert!(
        kubelet_accepts >= 10_000 && kubelet_refuses >= 10_000,
        "the kubelet accepts {kubelet_accepts} and refuses {kubelet_refuses} inputs; the corpus is lopsided"
    );
}

#[test]
fn parse_normalized_agrees_with_go_parse_normalized_named() {
    let differential = differential();
    let mut mismatches = Mismatches::default();
    for (input, go) in differential.corpus.iter().zip(&differential.answers) {
        let rust = Parsed::of(&Reference::parse_normalized(input, DigestAlgorithms::ALL));
        if rust != go.normalized {
            mismatches.add(classify(&rust, &go.normalized), input, &rust, &go.normalized);
        }
    }
    mismatches.assert_none("Reference::parse_normalized vs ParseNormalizedNamed", differential);
}

#[test]
fn parse_docker_ref_agrees_with_go_parse_docker_ref() {
    let differential = differential();
    let mut mismatches = Mismatches::default();
    for (input, go) in differential.corpus.iter().zip(&differential.answers) {
        let rust = Parsed::of(&Reference::parse_docker_ref(input, DigestAlgorithms::ALL));
        if rust != go.docker_ref {
            mismatches.add(classify(&rust, &go.docker_ref), input, &rust, &go.docker_ref);
        }
    }
    mismatches.assert_none("Reference::parse_docker_ref vs ParseDockerRef", differential);
}

fn classify(rust: &Parsed, go: &Parsed) -> &'static str {
    match (rust.valid, go.valid) {
        (true, false) => "Rust accepts what Go refuses",
        (false, true) => "Rust refuses what Go accepts",
        (true, true) => "both accept, but read it differently",
        (false, false) => "both refuse, with different messages",
    }
}

/// The production entry point may refuse more than Go (that is its job) but never accept more,
/// never read an accepted string differently, and never accept a string that containerd would
/// resolve to an image already on the node, since such a Pod runs an image no registry vouched for.
#[test]
fn production_parse_accepts_only_what_go_reads_the_same_and_no_cached_image() {
    let differential = differential();
    let mut mismatches = Mismatches::default();
    for (input, go) in differential.corpus.iter().zip(&differential.answers) {
        let result = Reference::parse(input);
        let (rust, go_side) = (Production(&result), GoProduction(go));
        match &result {
            Ok(reference) => {
                let mine = Parsed::of(&result);
                if !go.docker_ref.valid {
                    mismatches.add("parse accepts what Go's ParseDockerRef refuses", input, rust, go_side);
                } else if mine != go.docker_ref {
                    mismatches.add("parse accepts, but reads it differently from Go", input, rust, go_side);
                }
                if go.local_id {
                    mismatches.add(
                        "parse accepts a string containerd can resolve as a cached image ID",
                        input,
                        rust,
                        go_side,
                    );
                }
                if reference.domain().is_empty() {
                    mismatches.add(
                        "parse accepts a reference that names no registry host",
                        input,
                        rust,
                        go_side,
                    );
                }
            }
            Err(_) if !go.docker_ref.valid => {}
            // Each refusal of a string Go accepts must be a documented one, for the reason it
            // documents: NoDomain where Go finds no host; ImageId where containerd can resolve
            // the string as an ID, or where it is spelled like one (an algorithm, `:` and hex
            // digits of any case and length), which src/image.rs refuses on purpose to fail closed.
            Err(ParseError::NoDomain) => {
                if go.docker_ref.domain.as_deref() != Some("") {
                    mismatches.add(
                        "parse refuses as host-less what Go reads with a host",
                        input,
                        rust,
                        go_side,
                    );
                }
            }
            Err(ParseError::ImageId) => {
                if !go.local_id && !spelled_like_an_image_id(input) {
                    mismatches.add(
                        "parse refuses as an image ID what containerd would not resolve as one",
                        input,
                        rust,
                        go_side,
                    );
                }
            }
            Err(_) => mismatches.add(
                "parse refuses what Go accepts, with no documented reason",
                input,
                rust,
                go_side,
            ),
        }
    }
    mismatches.assert_none("Reference::parse (production) vs Go and containerd", differential);
}

/// `sha256:`, `sha384:` or `sha512:` and hex digits of either case.
fn spelled_like_an_image_id(input: &str) -> bool {
    input.split_once(':').is_some_and(|(algorithm, hex)| {
        matches!(algorithm, "sha256" | "sha384" | "sha512")
            && !hex.is_empty()
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}
