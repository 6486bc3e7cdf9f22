//! The policy document as admins write it (YAML or JSON), decoded field by field so that every
//! problem is reported at once, each with its field path and line.

use std::borrow::Cow;

use foldhash::HashMap;

use super::pattern::RegistryPattern;
use super::registry_type::RegistryType;
use super::selector::{NamespaceSelector, Requirement, label_key_problem, label_value_problem};
use super::{DenyRule, Exception, ExceptionSubject, Mode, NamespacePattern, Policy, Registry, TagRules};
use crate::yaml::{self, Node, Value};

pub const API_VERSION: &str = "registry-gate.io/v1";
pub const KIND: &str = "RegistryPolicy";

/// One thing wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a field path: `registries[2].url`.
    pub field: String,
    /// 1-based line in the document, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// A policy that was refused, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the policy is invalid ({} problem{}):\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, list(.problems))]
pub struct PolicyError {
    pub problems: Vec<Problem>,
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

/// Collects problems (which refuse the policy) and warnings (which do not) while the decoder
/// walks the document.
#[derive(Default)]
struct Problems(Vec<Problem>, Vec<Problem>);

impl Problems {
    fn add(&mut self, field: &str, line: usize, message: impl Into<String>) {
        self.0.push(Problem { field: field.to_owned(), line: Some(line), message: message.into() });
    }

    fn warn(&mut self, field: &str, line: usize, message: impl Into<String>) {
        self.1.push(Problem { field: field.to_owned(), line: Some(line), message: message.into() });
    }
}

/// Decodes and validates a policy document.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    // A policy written as JSON is read by the JSON reader, ten times faster than YAML's. Only
    // its strings have exact lines, so a policy with problems is read again as YAML (JSON is
    // YAML), and each problem points at its line. Warnings are all about strings.
    if let Some(root) = yaml::parse_json_document(text) {
        let mut problems = Problems::default();
        if let Some(mut policy) = decode_policy(&root, &mut problems)
            && problems.0.is_empty()
        {
            policy.warnings = problems.1;
            return Ok(policy);
        }
    }
    parse_yaml(text)
}

/// Decodes and validates a policy document with the YAML reader, whose lines are exact.
fn parse_yaml(text: &str) -> Result<Policy, PolicyError> {
    let documents = yaml::parse_documents(text).map_err(|e| PolicyError {
        problems: vec![Problem {
            field: "(document)".into(),
            line: Some(e.line),
            message: format!("is not valid YAML: {}", e.message),
        }],
    })?;
    let root = match documents.as_slice() {
        [root] => root,
        [] => return Err(one_problem("(document)", None, "is empty")),
        [_, second, ..] => {
            return Err(one_problem(
                "(document)",
                Some(second.line),
                "holds more than one YAML document; a policy is one document",
            ));
        }
    };
    let mut problems = Problems::default();
    let policy = decode_policy(root, &mut problems);
    match policy {
        Some(mut policy) if problems.0.is_empty() => {
            policy.warnings = problems.1;
            Ok(policy)
        }
        _ => {
            let mut problems = problems.0;
            problems.sort_by_key(|p| p.line);
            Err(PolicyError { problems })
        }
    }
}

fn one_problem(field: &str, line: Option<usize>, message: &str) -> PolicyError {
    PolicyError { problems: vec![Problem { field: field.into(), line, message: message.into() }] }
}

/// Where a mapping sits in the document, written out only when a problem names it: a policy
/// of 10,000 entries has no reason to format 10,000 paths.
#[derive(Clone, Copy)]
enum Path<'p> {
    /// A field path as text: `""` for the document itself, `tagRules`.
    Text(&'p str),
    /// An item of one of the document's lists: `registries[3]`.
    Item(&'static str, usize),
}

impl Path<'_> {
    fn join(self, name: &str) -> String {
        match self {
            Path::Text(path) => join(path, name),
            Path::Item(list, index) => format!("{list}[{index}].{name}"),
        }
    }
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Text(path) => f.write_str(path),
            Path::Item(list, index) => write!(f, "{list}[{index}]"),
        }
    }
}

impl<'p> From<&'p str> for Path<'p> {
    fn from(path: &'p str) -> Self {
        Path::Text(path)
    }
}

/// A mapping's fields, with the field path they sit at.
struct Fields<'n, 'p> {
    path: Path<'p>,
    line: usize,
    entries: &'n [(Node<'n>, Node<'n>)],
}

impl<'n, 'p> Fields<'n, 'p> {
    /// Reads `node` as a mapping whose keys are all among `known` (at most 64).
    fn of(
        node: &'n Node<'n>,
        path: impl Into<Path<'p>>,
        known: &[&str],
        problems: &mut Problems,
    ) -> Option<Self> {
        let path = path.into();
        let Value::Mapping(entries) = &node.value else {
            problems.add(
                &path.to_string(),
                node.line,
                format!("must be a mapping, not {}", node.kind_name()),
            );
            return None;
        };
        debug_assert!(known.len() <= 64);
        let mut seen_known = 0u64;
        for (i, (key, _)) in entries.iter().enumerate() {
            let Some(name) = key.as_str() else {
                problems.add(&path.to_string(), key.line, "has a key that is not a string");
                continue;
            };
            let twice = match known.iter().position(|k| *k == name) {
                Some(k) => {
                    let bit = 1u64 << k;
                    let twice = seen_known & bit != 0;
                    seen_known |= bit;
                    twice
                }
                None => entries[..i].iter().any(|(earlier, _)| earlier.as_str() == Some(name)),
            };
            if twice {
                problems.add(&path.join(name), key.line, "is given twice");
            }
            if !known.contains(&name) {
                let message = match closest(name, known) {
                    Some(close) => format!("is not a known field (did you mean {close:?}?)"),
                    None => format!("is not a known field (known: {})", known.join(", ")),
                };
                problems.add(&path.join(name), key.line, message);
            }
        }
        Some(Fields { path, line: node.line, entries })
    }

    fn get(&self, name: &str) -> Option<&'n Node<'n>> {
        self.entries
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value)
            .filter(|v| !v.is_null())
    }

    fn field_path(&self, name: &str) -> String {
        self.path.join(name)
    }

    fn string(&self, name: &str, problems: &mut Problems) -> Option<&'n str> {
        self.string_at(name, problems).map(|(text, _)| text)
    }

    /// The string and its line.
    fn string_at(&self, name: &str, problems: &mut Problems) -> Option<(&'n str, usize)> {
        let node = self.get(name)?;
        self.text_of(name, node, problems).map(|text| (text, node.line))
    }

    fn text_of(&self, name: &str, node: &'n Node<'n>, problems: &mut Problems) -> Option<&'n str> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text),
            _ => {
                problems.add(
                    &self.field_path(name),
                    node.line,
                    format!("must be a string, not {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn required_string(&self, name: &str, problems: &mut Problems) -> Option<(&'n str, usize)> {
        match self.get(name) {
            Some(node) => self.text_of(name, node, problems).map(|s| (s, node.line)),
            None => {
                problems.add(&self.field_path(name), self.line, "is required");
                None
            }
        }
    }

    fn list(&self, name: &str, problems: &mut Problems) -> Option<(&'n [Node<'n>], usize)> {
        let node = self.get(name)?;
        match &node.value {
            Value::Sequence(items) => Some((items, node.line)),
            _ => {
                problems.add(
                    &self.field_path(name),
                    node.line,
                    format!("must be a list, not {}", node.kind_name()),
                );
                None
            }
        }
    }

    /// A list of namespace patterns, and its line. A pattern of wildcards alone (`*`, `?*`)
    /// matches every namespace: as an exemption it switches the policy off, and in a registry's
    /// scope it says no more than leaving the scope out, so both are refused.
    fn namespace_patterns(
        &self,
        name: &str,
        problems: &mut Problems,
    ) -> Option<(Vec<NamespacePattern>, usize)> {
        let (items, line) = self.list(name, problems)?;
        let path = self.field_path(name);
        let patterns = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let item_path = format!("{path}[{i}]");
                let Some(text) = item.as_str() else {
                    problems.add(
                        &item_path,
                        item.line,
                        format!("must be a string, not {}", item.kind_name()),
                    );
                    return None;
                };
                if text.contains('*') && text.bytes().all(|b| b == b'*' || b == b'?') {
                    let message = if name == "exemptNamespaces" {
                        format!("{text:?} matches every namespace, which would switch the policy off; name the namespaces to exempt")
                    } else {
                        format!("{text:?} matches every namespace; leave `namespaces` out to admit all")
                    };
                    problems.add(&item_path, item.line, message);
                    return None;
                }
                NamespacePattern::parse(text).map_err(|e| problems.add(&item_path, item.line, e)).ok()
            })
            .collect();
        Some((patterns, line))
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

/// The known name closest to a misspelled one, if any is close.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(&name.to_ascii_lowercase(), &k.to_ascii_lowercase()), *k))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

const POLICY_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "mode",
    "shortNameRegistry",
    "exemptNamespaces",
    "tagRules",
    "registries",
    "deny",
    "exceptions",
];
const REGISTRY_FIELDS: &[&str] = &[
    "name",
    "type",
    "url",
    "match",
    "pullSecret",
    "credentials",
    "namespaces",
    "namespaceSelector",
    "tagRules",
    "description",
];
const TAG_RULE_FIELDS: &[&str] = &["denyLatest", "requireDigest"];
const EXCEPTION_FIELDS: &[&str] = &["image", "repository", "namespaces", "expires", "reason"];
const SELECTOR_FIELDS: &[&str] = &["matchLabels", "matchExpressions"];
const REQUIREMENT_FIELDS: &[&str] = &["key", "operator", "values"];
const DENY_FIELDS: &[&str] = &["url", "reason"];

fn decode_policy(root: &Node, problems: &mut Problems) -> Option<Policy> {
    let fields = Fields::of(root, "", POLICY_FIELDS, problems)?;
    for (name, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        if let Some((value, line)) = fields.required_string(name, problems)
            && value != want
        {
            problems.add(name, line, format!("is {value:?}; registry-gate reads {want:?}"));
        }
    }
    let mode = match fields.string("mode", problems) {
        None => Mode::Enforce,
        Some("enforce") => Mode::Enforce,
        Some("audit") => Mode::Audit,
        Some(other) => {
            let line = fields.get("mode").map_or(fields.line, |n| n.line);
            problems.add(
                "mode",
                line,
                format!("is {other:?}; it is \"enforce\" (deny) or \"audit\" (admit with a warning)"),
            );
            Mode::Enforce
        }
    };
    let short_name_registry = match fields.string("shortNameRegistry", problems) {
        None => RegistryPattern::parse(crate::image::DOCKER_HUB).ok(),
        Some(text) => {
            let line = fields.get("shortNameRegistry").map_or(fields.line, |n| n.line);
            match RegistryPattern::parse(text) {
                Ok(pattern) if pattern.host.is_wildcard() || !pattern.path.is_empty() => {
                    problems.add(
                        "shortNameRegistry",
                        line,
                        "must be a single host[:port], with no wildcard and no path",
                    );
                    None
                }
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    problems.add("shortNameRegistry", line, e);
                    None
                }
            }
        }
    };
    let exempt_namespaces =
        fields.namespace_patterns("exemptNamespaces", problems).map(|(p, _)| p).unwrap_or_default();
    let tag_rules = fields
        .get("tagRules")
        .map_or_else(TagRules::default, |node| decode_tag_rules(node, "tagRules", problems));

    let registries = match fields.list("registries", problems) {
        Some((items, _)) => {
            let mut seen = SeenRegistries::with_capacity(items.len());
            // Sized up front: grown by doubling, a 10,000-entry list held room for 16,384.
            let mut registries = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                registries.extend(decode_registry(item, i, &mut seen, problems));
            }
            registries
        }
        None => {
            if fields.get("registries").is_none() {
                problems.add(
                    "registries",
                    fields.line,
                    "is required (write `registries: []` to deny every image)",
                );
            }
            Vec::new()
        }
    };

    let deny = match fields.list("deny", problems) {
        Some((items, _)) => {
            items.iter().enumerate().filter_map(|(i, item)| decode_deny(item, i, problems)).collect()
        }
        None => Vec::new(),
    };

    let exceptions = match fields.list("exceptions", problems) {
        Some((items, _)) => {
            items.iter().enumerate().filter_map(|(i, item)| decode_exception(item, i, problems)).collect()
        }
        None => Vec::new(),
    };
    Some(Policy::assemble(
        mode,
        short_name_registry?.host,
        exempt_namespaces,
        registries,
        deny,
        tag_rules,
        exceptions,
    ))
}

fn decode_registry<'n>(
    node: &'n Node<'n>,
    index: usize,
    seen: &mut SeenRegistries<'n>,
    problems: &mut Problems,
) -> Option<Registry> {
    let fields = Fields::of(node, Path::Item("registries", index), REGISTRY_FIELDS, problems)?;
    let name = fields.required_string("name", problems);
    if let Some((name, line)) = name {
        seen.name(name, index, line, problems);
        if !is_dns_label(name) {
            problems.add(
                &fields.field_path("name"),
                line,
                "must be a DNS label (lower-case letters, digits and -, at most 63): it labels metrics",
            );
        }
    }
    let registry_type = fields.required_string("type", problems).and_then(|(text, line)| {
        let found = RegistryType::from_name(text);
        if found.is_none() {
            let message = match RegistryType::closest_to(text) {
                Some(close) => format!("is {text:?}, not a registry type (did you mean {:?}?)", close.name()),
                None => {
                    let names: Vec<&str> = RegistryType::ALL.iter().map(|t| t.name()).collect();
                    format!("is {text:?}, not a registry type (one of {})", names.join(", "))
                }
            };
            problems.add(&fields.field_path("type"), line, message);
        }
        found
    });
    let url = fields.required_string("url", problems);
    let pattern = url.and_then(|(text, line)| {
        let pattern = RegistryPattern::parse(text)
            .map_err(|e| problems.add(&fields.field_path("url"), line, format!("{text:?} {e}")))
            .ok()?;
        seen.url(&pattern, text, index, line, problems);
        if let Some(registry_type) = registry_type
            && let Err(expected) = registry_type.check_host(&pattern.host)
        {
            problems.add(
                &fields.field_path("url"),
                line,
                format!("{text:?} does not fit type {registry_type}: {expected}"),
            );
        }
        Some(pattern)
    });
    let pull_secret_at = fields.string_at("pullSecret", problems);
    let pull_secret = pull_secret_at.map(|(secret, _)| secret);
    if let (Some((secret, line)), Some(pattern)) = (pull_secret_at, &pattern)
        && pattern.host.is_wildcard()
    {
        problems.warn(
                &fields.field_path("pullSecret"),
                line,
                format!(
                    "{secret:?} is given to every Pod pulling from any host {} covers, other tenants' registries included; if it holds one registry's credentials, register that host by name",
                    pattern.host.key()
                ),
            );
    }
    if let (Some((secret, line)), Some(registry_type)) = (pull_secret_at, registry_type) {
        if !registry_type.takes_pull_secret() {
            problems.add(
                &fields.field_path("pullSecret"),
                line,
                "is set, but a Public registry is pulled without credentials",
            );
        } else if !is_dns_subdomain(secret) {
            problems.add(
                &fields.field_path("pullSecret"),
                line,
                format!("{secret:?} is not a valid Secret name (a DNS subdomain)"),
            );
        }
    }
    let node_credentials = match fields.string("credentials", problems) {
        None => false,
        Some("kubelet") => true,
        Some(other) => {
            let line = fields.get("credentials").map_or(fields.line, |n| n.line);
            problems.add(
                &fields.field_path("credentials"),
                line,
                format!(
                    "is {other:?}; the one value is \"kubelet\" (the nodes get the credentials themselves)"
                ),
            );
            false
        }
    };
    if node_credentials && pull_secret.is_some() {
        let line = fields.get("credentials").map_or(fields.line, |n| n.line);
        problems.add(
            &fields.field_path("credentials"),
            line,
            "is kubelet, so the nodes bring the credentials: leave pullSecret out",
        );
    }
    let namespaces = fields.namespace_patterns("namespaces", problems).map(|(patterns, line)| {
        if patterns.is_empty() {
            problems.add(
                &fields.field_path("namespaces"),
                line,
                "is empty, which admits no namespace; leave it out to admit all",
            );
        }
        patterns
    });
    let namespace_selector = fields
        .get("namespaceSelector")
        .and_then(|node| decode_selector(node, &fields.field_path("namespaceSelector"), problems));
    let exact = match fields.string("match", problems) {
        None | Some("prefix") => false,
        Some("exact") => {
            let line = fields.get("match").map_or(fields.line, |n| n.line);
            if let Some(pattern) = &pattern
                && (pattern.host.is_wildcard() || pattern.path.is_empty())
            {
                problems.add(
                    &fields.field_path("match"),
                    line,
                    "is exact, which needs a url naming one repository on one host (no wildcard, a path)",
                );
            }
            true
        }
        Some(other) => {
            let line = fields.get("match").map_or(fields.line, |n| n.line);
            problems.add(
                &fields.field_path("match"),
                line,
                format!("is {other:?}; it is \"prefix\" (the url and every path under it, the default) or \"exact\" (that one repository)"),
            );
            false
        }
    };
    let tag_rules = fields.get("tagRules").map_or_else(TagRules::default, |node| {
        decode_tag_rules(node, &fields.field_path("tagRules"), problems)
    });
    fields.string("description", problems);
    Some(Registry {
        name: name?.0.to_owned(),
        registry_type: registry_type?,
        url: url?.0.to_owned(),
        pattern: pattern?,
        pull_secret: pull_secret.map(str::to_owned),
        node_credentials,
        namespaces,
        namespace_selector: namespace_selector.map(Box::new),
        exact,
        tag_rules,
        line: node.line,
        position: index,
    })
}

/// `tagRules`: each field a boolean; an empty mapping sets nothing and is refused as a likely
/// mistake.
fn decode_tag_rules(node: &Node, path: &str, problems: &mut Problems) -> TagRules {
    let Some(fields) = Fields::of(node, path, TAG_RULE_FIELDS, problems) else {
        return TagRules::default();
    };
    let flag = |name: &str, problems: &mut Problems| {
        let node = fields.get(name)?;
        match &node.value {
            Value::Scalar { text, .. } if text == "true" => Some(true),
            Value::Scalar { text, .. } if text == "false" => Some(false),
            _ => {
                problems.add(&fields.field_path(name), node.line, "must be true or false");
                None
            }
        }
    };
    let rules = TagRules {
        deny_latest: flag("denyLatest", problems),
        require_digest: flag("requireDigest", problems),
    };
    if rules == TagRules::default() && problems.0.iter().all(|p| !p.field.starts_with(path)) {
        problems.add(path, node.line, "sets no rule (denyLatest, requireDigest); leave it out instead");
    }
    rules
}

/// A Kubernetes `LabelSelector`. An empty one selects every namespace, so, like a wildcard-only
/// name pattern, it is refused rather than read as a scope.
fn decode_selector(node: &Node, path: &str, problems: &mut Problems) -> Option<NamespaceSelector> {
    let fields = Fields::of(node, path, SELECTOR_FIELDS, problems)?;
    let mut match_labels = Vec::new();
    if let Some(labels) = fields.get("matchLabels") {
        let labels_path = fields.field_path("matchLabels");
        match &labels.value {
            Value::Mapping(entries) => {
                for (key, value) in entries {
                    let (Some(key_text), Some(value_text)) = (key.as_str(), value.as_str()) else {
                        problems.add(&labels_path, key.line, "maps label keys to string values");
                        continue;
                    };
                    let entry_path = join(&labels_path, key_text);
                    if let Some(problem) = label_key_problem(key_text) {
                        problems.add(&entry_path, key.line, problem);
                    } else if match_labels.iter().any(|(k, _)| k == key_text) {
                        problems.add(&entry_path, key.line, "is given twice");
                    }
                    if let Some(problem) = label_value_problem(value_text) {
                        problems.add(&entry_path, value.line, problem);
                    }
                    match_labels.push((key_text.to_owned(), value_text.to_owned()));
                }
            }
            _ => problems.add(
                &labels_path,
                labels.line,
                format!("must be a mapping, not {}", labels.kind_name()),
            ),
        }
    }
    let mut match_expressions = Vec::new();
    if let Some((items, _)) = fields.list("matchExpressions", problems) {
        let list_path = fields.field_path("matchExpressions");
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{list_path}[{i}]");
            if let Some(requirement) = decode_requirement(item, &item_path, problems) {
                match_expressions.push(requirement);
            }
        }
    }
    if match_labels.is_empty() && match_expressions.is_empty() {
        problems.add(path, node.line, "selects every namespace; leave it out to admit all");
        return None;
    }
    Some(NamespaceSelector { match_labels, match_expressions })
}

fn decode_requirement(node: &Node, path: &str, problems: &mut Problems) -> Option<Requirement> {
    let fields = Fields::of(node, path, REQUIREMENT_FIELDS, problems)?;
    let (key, key_line) = fields.required_string("key", problems)?;
    if let Some(problem) = label_key_problem(key) {
        problems.add(&fields.field_path("key"), key_line, problem);
    }
    let (operator, operator_line) = fields.required_string("operator", problems)?;
    let values = match fields.list("values", problems) {
        Some((items, _)) => {
            let values_path = fields.field_path("values");
            let mut values = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{values_path}[{i}]");
                match item.as_str() {
                    Some(text) => {
                        if let Some(problem) = label_value_problem(text) {
                            problems.add(&item_path, item.line, problem);
                        }
                        values.push(text.to_owned());
                    }
                    None => problems.add(
                        &item_path,
                        item.line,
                        format!("must be a string, not {}", item.kind_name()),
                    ),
                }
            }
            values
        }
        None => Vec::new(),
    };
    let key = key.to_owned();
    let values_line = fields.get("values").map_or(operator_line, |n| n.line);
    match operator {
        "In" | "NotIn" if values.is_empty() => {
            problems.add(
                &fields.field_path("values"),
                values_line,
                format!("must name at least one value for {operator}"),
            );
            None
        }
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            problems.add(
                &fields.field_path("values"),
                values_line,
                format!("must be left out for {operator}"),
            );
            None
        }
        "In" => Some(Requirement::In { key, values }),
        "NotIn" => Some(Requirement::NotIn { key, values }),
        "Exists" => Some(Requirement::Exists { key }),
        "DoesNotExist" => Some(Requirement::DoesNotExist { key }),
        other => {
            problems.add(
                &fields.field_path("operator"),
                operator_line,
                format!("is {other:?}; it is In, NotIn, Exists or DoesNotExist"),
            );
            None
        }
    }
}

fn decode_deny(node: &Node, index: usize, problems: &mut Problems) -> Option<DenyRule> {
    let fields = Fields::of(node, Path::Item("deny", index), DENY_FIELDS, problems)?;
    let (url, line) = fields.required_string("url", problems)?;
    let reason = fields.string("reason", problems).map(str::to_owned);
    match RegistryPattern::parse(url) {
        Ok(pattern) => Some(DenyRule { url: url.to_owned(), pattern, reason }),
        Err(e) => {
            problems.add(&fields.field_path("url"), line, format!("{url:?} {e}"));
            None
        }
    }
}

/// An exception: exactly one of `image` and `repository`, or neither with `namespaces` (every
/// image there); always `expires` and `reason`. An expired one is kept (it explains denials) and
/// warned about.
fn decode_exception(node: &Node, index: usize, problems: &mut Problems) -> Option<Exception> {
    let path = Path::Item("exceptions", index);
    let fields = Fields::of(node, path, EXCEPTION_FIELDS, problems)?;
    let image = fields
        .string("image", problems)
        .map(|text| (text, fields.get("image").map_or(fields.line, |n| n.line)));
    let repository = fields
        .string("repository", problems)
        .map(|text| (text, fields.get("repository").map_or(fields.line, |n| n.line)));
    let namespaces = fields.namespace_patterns("namespaces", problems).map(|(patterns, line)| {
        if patterns.is_empty() {
            problems.add(
                &fields.field_path("namespaces"),
                line,
                "is empty, which admits nothing; name the namespaces",
            );
        }
        patterns
    });
    let subject = match (image, repository) {
        (Some(_), Some((_, line))) => {
            problems.add(&path.to_string(), line, "names both an image and a repository; give one");
            None
        }
        (Some((text, line)), None) => match crate::image::Reference::parse(text) {
            Ok(reference) => Some(ExceptionSubject::Image(reference.to_string())),
            Err(e) => {
                problems.add(
                    &fields.field_path("image"),
                    line,
                    format!("{text:?} is not an image reference: {e}"),
                );
                None
            }
        },
        (None, Some((text, line))) => match RegistryPattern::parse(text) {
            Ok(pattern) if !pattern.host.is_wildcard() && !pattern.path.is_empty() => {
                Some(ExceptionSubject::Repository {
                    host: pattern.host.key().to_owned(),
                    path: pattern.path.to_string(),
                })
            }
            Ok(_) => {
                problems.add(
                    &fields.field_path("repository"),
                    line,
                    format!("{text:?} must name one repository: a host without wildcard and a path"),
                );
                None
            }
            Err(e) => {
                problems.add(&fields.field_path("repository"), line, format!("{text:?} {e}"));
                None
            }
        },
        (None, None) if namespaces.is_some() => Some(ExceptionSubject::Namespaces),
        (None, None) => {
            problems.add(
                &path.to_string(),
                node.line,
                "admits nothing: give an image, a repository, or namespaces (every image there)",
            );
            None
        }
    };
    let expires =
        fields.required_string("expires", problems).and_then(
            |(text, line)| match super::exception::end_of_day(text) {
                Ok(at) => Some((text, at, line)),
                Err(e) => {
                    problems.add(&fields.field_path("expires"), line, e);
                    None
                }
            },
        );
    let reason = fields.required_string("reason", problems).and_then(|(text, line)| {
        if text.trim().is_empty() {
            problems.add(&fields.field_path("reason"), line, "is empty; say why (a ticket, an owner)");
            return None;
        }
        Some(text)
    });
    let (expires, expires_at, expires_line) = expires?;
    if super::exception::now() >= expires_at {
        problems.warn(
            &fields.field_path("expires"),
            expires_line,
            format!("{expires} has passed: the exception admits nothing any more; remove it or extend it"),
        );
    }
    Some(Exception {
        subject: subject?,
        namespaces,
        expires: expires.to_owned(),
        expires_at,
        reason: reason?.to_owned(),
        line: node.line,
    })
}

/// The names and URLs of the entries decoded so far. Names label metrics and URLs decide which
/// entry's secret is injected: neither may repeat. Each entry is checked as soon as its name or
/// URL is read, so that an entry with another problem is still compared, and a repeat is told
/// the first entry it repeats.
struct SeenRegistries<'n> {
    names: HashMap<&'n str, usize>,
    /// Keyed by each pattern's canonical form, borrowed from the document where the url is
    /// written that way (most are): a 10,000-entry load then makes no copies here.
    urls: HashMap<Cow<'n, str>, usize>,
}

impl<'n> SeenRegistries<'n> {
    fn with_capacity(entries: usize) -> Self {
        SeenRegistries {
            names: HashMap::with_capacity_and_hasher(entries, Default::default()),
            urls: HashMap::with_capacity_and_hasher(entries, Default::default()),
        }
    }

    fn name(&mut self, name: &'n str, index: usize, line: usize, problems: &mut Problems) {
        let first = *self.names.entry(name).or_insert(index);
        if first != index {
            let message = format!("repeats the name of registries[{first}]");
            problems.add(&Path::Item("registries", index).join("name"), line, message);
        }
    }

    fn url(
        &mut self,
        pattern: &RegistryPattern,
        written: &'n str,
        index: usize,
        line: usize,
        problems: &mut Problems,
    ) {
        let canonical = if pattern.is_written_as(written) {
            Cow::Borrowed(written)
        } else {
            Cow::Owned(pattern.to_string())
        };
        let first = *self.urls.entry(canonical).or_insert(index);
        if first != index {
            let message =
                format!("{pattern} is the same registry as registries[{first}].url; merge the two entries");
            problems.add(&Path::Item("registries", index).join("url"), line, message);
        }
    }
}

/// RFC 1123 label: what Kubernetes namespaces and metric-friendly names are made of.
pub fn is_dns_label(name: &str) -> bool {
    is_dns_label_bytes(name.as_bytes())
}

fn is_dns_label_bytes(name: &[u8]) -> bool {
    (1..=63).contains(&name.len())
        && name.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.first() != Some(&b'-')
        && name.last() != Some(&b'-')
}

/// RFC 1123 subdomain: what Secret names are made of.
pub fn is_dns_subdomain(name: &str) -> bool {
    // Split as bytes: `str::split` by a char costs more than the checks.
    name.len() <= 253 && name.as_bytes().split(|&b| b == b'.').all(is_dns_label_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a policy holds, lines and compiled index aside.
    fn contents(policy: &Policy) -> String {
        let registries: Vec<_> =
            policy.registries.iter().map(|r| Registry { line: 0, ..r.clone() }).collect();
        let exceptions: Vec<_> =
            policy.exceptions.iter().map(|e| Exception { line: 0, ..e.clone() }).collect();
        format!(
            "{:?} {:?} {:?} {registries:?} {:?} {:?} {exceptions:?} {:?}",
            policy.mode,
            policy.short_name_host,
            policy.exempt_namespaces,
            policy.deny,
            policy.tag_rules,
            policy.warnings
        )
    }

    fn example(name: &str) -> String {
        std::fs::read_to_string(format!("{}/policy/{name}", env!("CARGO_MANIFEST_DIR"))).expect(name)
    }

    fn as_json(yaml: &str, pretty: bool) -> String {
        let json = yaml::parse_documents(yaml).expect("YAML")[0].to_json();
        if pretty { serde_json::to_string_pretty(&json) } else { serde_json::to_string(&json) }.expect("JSON")
    }

    #[test]
    fn json_policies_read_as_their_yaml() {
        for name in ["default.yaml", "example-all-types.yaml"] {
            let yaml = example(name);
            let from_yaml = parse_yaml(&yaml).expect(name);
            for pretty in [false, true] {
                let json = as_json(&yaml, pretty);
                assert!(yaml::parse_json_document(&json).is_some(), "{name}: read as JSON");
                let from_json = parse(&json).expect(name);
                assert_eq!(contents(&from_json), contents(&from_yaml), "{name}");
                if !pretty {
                    let lines: Vec<_> = from_json.registries.iter().map(|r| r.line).collect();
                    assert!(lines.iter().all(|&line| line == 1), "{name}: one line, {lines:?}");
                }
            }
        }
    }

    #[test]
    fn names_and_urls_may_not_repeat() {
        let text = "apiVersion: registry-gate.io/v1
kind: RegistryPolicy
registries:
- {name: acme, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr}
- {name: acme, type: GHCR, url: ghcr.io/other}
- {name: copy, type: Quay, url: 'https://GHCR.io/acme/'}
- name: typo
  type: GHRC
  url: ghcr.io/acme
";
        let error = parse(text).expect_err("repeats");
        let found: Vec<_> = error.problems.iter().map(|p| (p.field.as_str(), p.line)).collect();
        assert_eq!(
            found,
            [
                ("registries[1].name", Some(5)),
                ("registries[2].url", Some(6)),
                ("registries[3].type", Some(8)),
                ("registries[3].url", Some(9)),
            ],
            "{error}"
        );
        assert!(error.problems[0].message.contains("repeats the name of registries[0]"), "{error}");
        let same = |p: &Problem| p.message.contains("ghcr.io/acme is the same registry as registries[0].url");
        assert_eq!(error.problems.iter().filter(|p| same(p)).count(), 2, "{error}");
    }

    #[test]
    fn problems_in_json_policies_keep_their_lines() {
        let text = r#"{
  "apiVersion": "registry-gate.io/v1",
  "kind": "RegistryPolicy",
  "registries": [
    {"name": "hub", "type": "Public", "url": "docker.io/library"},
    {
      "name": "acme",
      "type": "GHCR",
      "url": "ghcr.io/acme/*",
      "pullSecret": "ghcr"
    },
    {"name": "acr", "type": "ACR",
     "url": "*.azurecr.io", "pullSecret": "acr"}
  ]
}
"#;
        assert!(yaml::parse_json_document(text).is_some());
        let error = parse(text).expect_err("a wildcard in a path");
        let [problem] = error.problems.as_slice() else { panic!("one problem: {error}") };
        assert_eq!((problem.field.as_str(), problem.line), ("registries[1].url", Some(9)), "{error}");

        let valid = text.replace("ghcr.io/acme/*", "ghcr.io/acme");
        let policy = parse(&valid).expect("valid");
        let [warning] = policy.warnings.as_slice() else { panic!("one warning: {:?}", policy.warnings) };
        assert_eq!((warning.field.as_str(), warning.line), ("registries[2].pullSecret", Some(13)));
    }
}
