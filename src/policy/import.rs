//! `policy import`: a registry-gate policy from Gatekeeper's `K8sAllowedRepos` constraints or
//! Kyverno's `restrict-image-registries` style policies, with a note for everything whose
//! meaning changes or that cannot be carried over.
//!
//! The peers compare image strings: Gatekeeper with `startswith(image, prefix)`, Kyverno with
//! globs. registry-gate decides on the parsed reference, so a converted entry is usually
//! stricter at the edges, and each such edge is named: a prefix without a trailing `/`
//! (`quay.io` also admitted `quay.io.evil.example/x`), a Docker Hub name without its host
//! (`nginx` also admitted `nginxinc/...`), a tag or digest in the prefix (registry-gate admits
//! repositories; tags are `tagRules`' business). Nothing is widened silently: what cannot be
//! expressed without admitting more is left out and reported.

use serde_json::Value;

use super::{Policy, RegistryPattern, RegistryType};
use crate::yaml;

/// Where the policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Gatekeeper,
    Kyverno,
}

/// The converted policy (valid, as its own text says), and what changed or was left out.
#[derive(Debug)]
pub struct Imported {
    pub policy: String,
    pub notes: Vec<String>,
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not valid YAML: {0}")]
    Syntax(#[from] yaml::SyntaxError),
    #[error("{0}")]
    Nothing(String),
    #[error("the converted policy is invalid (a bug in the import; please report it): {0}")]
    Invalid(#[from] super::PolicyError),
}

/// One registry entry to write.
#[derive(Debug, PartialEq)]
struct Entry {
    url: String,
    exact: bool,
    namespaces: Option<Vec<String>>,
}

/// What the peer's documents say, gathered across them.
#[derive(Default)]
struct Gathered {
    entries: Vec<Entry>,
    exempt: Vec<String>,
    audit: bool,
    notes: Vec<String>,
}

impl Gathered {
    fn add(&mut self, entry: Entry) {
        if !self.entries.contains(&entry) {
            self.entries.push(entry);
        }
    }
}

/// Converts every relevant object of `text` (multi-document YAML or JSON).
pub fn import(peer: Peer, text: &str) -> Result<Imported, ImportError> {
    let documents = yaml::parse_documents(text)?;
    let mut gathered = Gathered::default();
    let mut found = 0;
    for document in &documents {
        let object = document.to_json();
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or("(unnamed)");
        match (peer, kind) {
            (Peer::Gatekeeper, "K8sAllowedRepos") => {
                found += 1;
                gatekeeper(&object, name, &mut gathered);
            }
            (Peer::Kyverno, "ClusterPolicy" | "Policy") => {
                found += usize::from(kyverno(&object, name, &mut gathered));
            }
            (_, "") => {}
            (_, other) => {
                gathered.notes.push(format!("{other}/{name}: not a kind this import reads; skipped"))
            }
        }
    }
    if found == 0 {
        let what = match peer {
            Peer::Gatekeeper => "no K8sAllowedRepos constraint",
            Peer::Kyverno => "no Kyverno policy with an image pattern on containers",
        };
        return Err(ImportError::Nothing(format!("{what} found")));
    }
    if peer == Peer::Gatekeeper && found > 1 {
        gathered.notes.push(format!(
            "{found} constraints: Gatekeeper requires an image to satisfy every one of them; the converted policy admits what any of them lists"
        ));
    }
    let policy = render(&gathered);
    Policy::parse(&policy)?;
    Ok(Imported { policy, notes: gathered.notes })
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

fn gatekeeper(object: &Value, name: &str, gathered: &mut Gathered) {
    let spec = &object["spec"];
    match spec["enforcementAction"].as_str() {
        None | Some("deny") => {}
        Some(action) => {
            gathered.audit = true;
            gathered.notes.push(format!(
                "K8sAllowedRepos/{name}: enforcementAction {action}: converted to mode: audit (admit with a warning)"
            ));
        }
    }
    let scope = strings(&spec["match"]["namespaces"]);
    let scope = (!scope.is_empty()).then_some(scope);
    for namespace in strings(&spec["match"]["excludedNamespaces"]) {
        if !gathered.exempt.contains(&namespace) {
            gathered.exempt.push(namespace);
        }
    }
    if !spec["match"]["namespaceSelector"].is_null() || !spec["match"]["labelSelector"].is_null() {
        gathered.notes.push(format!(
            "K8sAllowedRepos/{name}: match.namespaceSelector / labelSelector not converted; give registries a namespaceSelector by hand"
        ));
    }
    let repos = strings(&spec["parameters"]["repos"]);
    if repos.is_empty() {
        gathered.notes.push(format!("K8sAllowedRepos/{name}: parameters.repos is empty (it admits nothing)"));
    }
    for prefix in repos {
        match prefix_entry(&prefix) {
            Ok((url, exact, notes)) => {
                gathered
                    .notes
                    .extend(notes.into_iter().map(|n| format!("K8sAllowedRepos/{name}: {prefix:?}: {n}")));
                gathered.add(Entry { url, exact, namespaces: scope.clone() });
            }
            Err(why) => {
                gathered.notes.push(format!("K8sAllowedRepos/{name}: {prefix:?} not converted: {why}"))
            }
        }
    }
}

/// A `startswith` prefix as an entry: (url, exact, notes on what changes).
fn prefix_entry(prefix: &str) -> Result<(String, bool, Vec<String>), String> {
    let mut notes = Vec::new();
    if prefix.trim().is_empty() {
        return Err("an empty prefix admits every image".into());
    }
    // A tag or digest in the prefix: what is before it names one repository.
    let (body, exact) = match tag_position(prefix) {
        Some(cut) => {
            notes.push(format!(
                "the tag or digest part {:?} is dropped: every tag of the repository is admitted (use tagRules to restrict tags)",
                &prefix[cut..]
            ));
            (&prefix[..cut], true)
        }
        None => (prefix, false),
    };
    let namespace = body.ends_with('/');
    let bounded = namespace || exact;
    let body = body.trim_end_matches('/');
    if body.is_empty() {
        return Err("nothing before the tag".into());
    }
    let first = body.split('/').next().unwrap_or_default();
    let url = if looks_like_host(first) {
        body.to_owned()
    } else {
        // `acme/` and `acme/app` are Docker Hub paths; `nginx` and `postgres:` name official images.
        let url = if body.contains('/') || namespace {
            format!("docker.io/{body}")
        } else {
            format!("docker.io/library/{body}")
        };
        notes.push(format!("read as Docker Hub's {url}, as the runtime reads a name without a host"));
        url
    };
    if !bounded {
        let example = if prefix.contains('/') {
            format!("{prefix}-evil/x")
        } else {
            format!("{prefix}.evil.example/x")
        };
        notes.push(format!(
            "Gatekeeper also admitted any image merely starting with it (for example {example}); registry-gate admits {url} and the paths under it only"
        ));
    }
    RegistryPattern::parse(&url).map_err(|e| format!("{url:?} {e}"))?;
    Ok((url, exact, notes))
}

/// Where a tag (`:`) or digest (`@`) starts in a prefix, if it has one. Without a slash,
/// `postgres:` is a repository and a tag, but `corp.example:5000` and `localhost:5000` are a
/// host and its port (the start of `corp.example:5000/app`).
fn tag_position(prefix: &str) -> Option<usize> {
    match prefix.rfind('/') {
        Some(slash) => prefix[slash + 1..].find([':', '@']).map(|at| slash + 1 + at),
        None => {
            let at = prefix.find([':', '@'])?;
            let name = &prefix[..at];
            let is_port = prefix[at..].starts_with(':') && (name.contains('.') || name == "localhost");
            (!is_port).then_some(at)
        }
    }
}

/// Docker's rule for the first component of a name: a host when it has a dot or a port, or is
/// `localhost`.
fn looks_like_host(component: &str) -> bool {
    let first = component.split('/').next().unwrap_or_default();
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// Reads a Kyverno policy; whether it had an image pattern.
fn kyverno(object: &Value, name: &str, gathered: &mut Gathered) -> bool {
    let spec = &object["spec"];
    let namespace = object["metadata"]["namespace"].as_str();
    let mut any = false;
    for rule in spec["rules"].as_array().into_iter().flatten() {
        let rule_name = rule["name"].as_str().unwrap_or("(unnamed)");
        let here = format!("{}/{name} rule {rule_name}", object["kind"].as_str().unwrap_or("ClusterPolicy"));
        let pattern = &rule["validate"]["pattern"]["spec"];
        let mut globs = Vec::new();
        for key in [
            "containers",
            "=(initContainers)",
            "=(ephemeralContainers)",
            "initContainers",
            "ephemeralContainers",
        ] {
            for container in pattern[key].as_array().into_iter().flatten() {
                if let Some(image) = container["image"].as_str()
                    && !globs.contains(&image)
                {
                    globs.push(image);
                }
            }
        }
        if globs.is_empty() {
            if !rule["validate"].is_null() {
                gathered.notes.push(format!("{here}: no validate.pattern on container images; skipped"));
            }
            continue;
        }
        any = true;
        if globs.len() > 1 {
            gathered.notes.push(format!("{here}: different patterns per container list; the converted policy admits any of them in every list"));
        }
        let action = rule["validate"]["failureAction"].as_str().or(spec["validationFailureAction"].as_str());
        if action.is_some_and(|a| a.eq_ignore_ascii_case("audit")) {
            gathered.audit = true;
            gathered.notes.push(format!("{here}: failure action Audit: converted to mode: audit"));
        }
        let mut scope: Option<Vec<String>> = namespace.map(|ns| vec![ns.to_owned()]);
        for matched in rule["match"]["any"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(rule["match"]["all"].as_array().into_iter().flatten())
        {
            let namespaces = strings(&matched["resources"]["namespaces"]);
            if !namespaces.is_empty() {
                scope.get_or_insert_with(Vec::new).extend(namespaces);
            }
        }
        for excluded in rule["exclude"]["any"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(rule["exclude"]["all"].as_array().into_iter().flatten())
        {
            for namespace in strings(&excluded["resources"]["namespaces"]) {
                if !gathered.exempt.contains(&namespace) {
                    gathered.exempt.push(namespace);
                }
            }
        }
        for glob in globs {
            for alternative in glob.split('|').map(str::trim).filter(|a| !a.is_empty()) {
                match glob_entry(alternative) {
                    Ok((url, exact, notes)) => {
                        gathered
                            .notes
                            .extend(notes.into_iter().map(|n| format!("{here}: {alternative:?}: {n}")));
                        gathered.add(Entry { url, exact, namespaces: scope.clone() });
                    }
                    Err(why) => gathered.notes.push(format!("{here}: {alternative:?} not converted: {why}")),
                }
            }
        }
    }
    any
}

/// A Kyverno image glob (`*` any run of characters, `?` one) as an entry.
fn glob_entry(glob: &str) -> Result<(String, bool, Vec<String>), String> {
    let mut notes = Vec::new();
    if glob.trim_matches(['*', '?', '/']).is_empty() {
        return Err("it admits every image".into());
    }
    let (host, rest) = glob.split_once('/').unwrap_or((glob, ""));
    if !looks_like_host(host) && !host.contains('*') {
        return Err(format!(
            "no registry host: a Docker Hub name as a glob; write the entry by hand (docker.io/{})",
            glob.trim_end_matches('*')
        ));
    }
    // A host glob is kept only in registry-gate's own shape: leading `*.` labels.
    let leading_labels = host.strip_prefix("*.").is_some_and(|rest| !rest.contains(['*', '?']));
    if host.contains(['*', '?']) && !leading_labels {
        return Err(format!(
            "the host pattern {host:?} has no registry-gate equivalent (only leading *. labels)"
        ));
    }
    if leading_labels {
        notes.push(format!(
            "{host:?}: Kyverno's * matched any run of characters, registry-gate's * one whole label: deeper subdomains are refused"
        ));
    }
    // The path: literal components up to the first wildcard.
    let mut path = Vec::new();
    let mut open = true;
    for component in rest.split('/') {
        if component == "*" {
            break;
        }
        if component.contains(['*', '?', ':', '@']) {
            let literal = component.split(['*', '?', ':', '@']).next().unwrap_or_default();
            if component.starts_with(literal)
                && !literal.is_empty()
                && component[literal.len()..].starts_with([':', '@'])
            {
                // `repo:*` or `repo:1.2*`: one repository, any (or some) tags.
                path.push(literal);
                open = false;
                if !matches!(&component[literal.len()..], ":*" | "@*") {
                    notes.push(format!("the tag part {:?} is dropped: every tag of the repository is admitted (use tagRules)", &component[literal.len()..]));
                }
            } else {
                notes.push(format!(
                    "{component:?} is a partial-name glob; converted to the path before it, which admits every repository there"
                ));
            }
            break;
        }
        if component.is_empty() {
            break;
        }
        path.push(component);
    }
    let url = if path.is_empty() { host.to_owned() } else { format!("{host}/{}", path.join("/")) };
    if open && !glob.ends_with('*') {
        notes.push("a glob without a trailing * names one image; converted to its repository".into());
        return RegistryPattern::parse(&url).map(|_| (url, true, notes)).map_err(|e| e.to_string());
    }
    RegistryPattern::parse(&url).map_err(|e| format!("{url:?} {e}"))?;
    Ok((url, !open, notes))
}

/// The type a host most likely is, for the entry's `type` (no pull secret is set either way).
fn infer_type(url: &str) -> RegistryType {
    let host = url.split('/').next().unwrap_or_default();
    if let Ok(pattern) = RegistryPattern::parse(host) {
        for candidate in [
            RegistryType::DockerHub,
            RegistryType::Ghcr,
            RegistryType::EcrPublic,
            RegistryType::Gcr,
            RegistryType::Gar,
            RegistryType::Ecr,
            RegistryType::Acr,
            RegistryType::Scaleway,
            RegistryType::GitHubEnterprise,
        ] {
            if candidate.check_host(&pattern.host).is_ok() {
                return candidate;
            }
        }
    }
    match host {
        "quay.io" => RegistryType::Quay,
        "registry.gitlab.com" => RegistryType::GitLab,
        _ => RegistryType::Generic,
    }
}

/// A DNS label from a URL, unique among `taken`.
fn entry_name(url: &str, taken: &mut Vec<String>) -> String {
    let mut base: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    base.truncate(56);
    let base = base.trim_end_matches('-').to_owned();
    let base = if base.is_empty() { "registry".to_owned() } else { base };
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.push(name.clone());
    name
}

fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

fn render(gathered: &Gathered) -> String {
    let mut text = String::from(
        "# Converted by `registry-gate policy import`; read the notes it printed before applying.\napiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n",
    );
    text += if gathered.audit { "mode: audit\n" } else { "mode: enforce\n" };
    if !gathered.exempt.is_empty() {
        let names: Vec<String> = gathered.exempt.iter().map(|n| quote(n)).collect();
        text += &format!("exemptNamespaces: [{}]\n", names.join(", "));
    }
    text += "registries:";
    if gathered.entries.is_empty() {
        text += " []\n";
        return text;
    }
    text += "\n";
    let mut taken = Vec::new();
    for entry in &gathered.entries {
        let registry_type = infer_type(&entry.url);
        // Docker Hub's official images are public; the rest of Docker Hub may need a secret.
        let registry_type =
            if entry.url.starts_with("docker.io/library") { RegistryType::Public } else { registry_type };
        text += &format!(
            "  - name: {}\n    type: {}\n    url: {}\n",
            entry_name(&entry.url, &mut taken),
            registry_type.name(),
            quote(&entry.url)
        );
        if entry.exact {
            text += "    match: exact\n";
        }
        if let Some(namespaces) = &entry.namespaces {
            let names: Vec<String> = namespaces.iter().map(|n| quote(n)).collect();
            text += &format!("    namespaces: [{}]\n", names.join(", "));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gatekeeper_prefixes_become_bounded_entries_with_notes() {
        let cases = [
            ("quay.io/", "quay.io", false, 0),
            ("docker.io/library/", "docker.io/library", false, 0),
            ("docker.io/library", "docker.io/library", false, 1),
            ("supabase/", "docker.io/supabase", false, 1),
            ("nginx", "docker.io/library/nginx", false, 2),
            ("localhost:5000/", "localhost:5000", false, 0),
            ("postgres:", "docker.io/library/postgres", true, 2),
            ("registry.corp.example:5000/team/", "registry.corp.example:5000/team", false, 0),
            ("ghcr.io/acme/app@sha256", "ghcr.io/acme/app", true, 1),
        ];
        for (prefix, url, exact, notes) in cases {
            let (got_url, got_exact, got_notes) =
                prefix_entry(prefix).unwrap_or_else(|e| panic!("{prefix}: {e}"));
            assert_eq!(
                (got_url.as_str(), got_exact, got_notes.len()),
                (url, exact, notes),
                "{prefix}: {got_notes:?}"
            );
        }
        assert!(prefix_entry("").is_err());
    }

    #[test]
    fn kyverno_globs_become_entries_or_are_refused() {
        assert_eq!(glob_entry("eu.foo.io/*").map(|(u, e, _)| (u, e)), Ok(("eu.foo.io".to_owned(), false)));
        assert_eq!(glob_entry("*.foo.io/*").map(|(u, e, _)| (u, e)), Ok(("*.foo.io".to_owned(), false)));
        assert_eq!(
            glob_entry("ghcr.io/acme/*").map(|(u, e, _)| (u, e)),
            Ok(("ghcr.io/acme".to_owned(), false))
        );
        assert_eq!(
            glob_entry("ghcr.io/acme/app:*").map(|(u, e, _)| (u, e)),
            Ok(("ghcr.io/acme/app".to_owned(), true))
        );
        assert_eq!(
            glob_entry("ghcr.io/acme/app:1.2").map(|(u, e, _)| (u, e)),
            Ok(("ghcr.io/acme/app".to_owned(), true))
        );
        for refused in ["*", "*/*", "nginx*", "foo.*.io/*"] {
            assert!(glob_entry(refused).is_err(), "{refused}");
        }
    }
}
