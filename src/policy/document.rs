//! The policy document as admins write it (YAML or JSON), decoded field by field so that every
//! problem is reported at once, each with its field path and line.

use std::collections::HashMap;

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

/// A mapping's fields, with the field path they sit at.
struct Fields<'n> {
    path: String,
    line: usize,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n> {
    /// Reads `node` as a mapping whose keys are all among `known`.
    fn of(node: &'n Node, path: &str, known: &[&str], problems: &mut Problems) -> Option<Self> {
        let Value::Mapping(entries) = &node.value else {
            problems.add(path, node.line, format!("must be a mapping, not {}", node.kind_name()));
            return None;
        };
        let mut seen = Vec::new();
        for (key, _) in entries {
            let Some(name) = key.as_str() else {
                problems.add(path, key.line, "has a key that is not a string");
                continue;
            };
            if seen.contains(&name) {
                problems.add(&join(path, name), key.line, "is given twice");
            }
            seen.push(name);
            if !known.contains(&name) {
                let message = match closest(name, known) {
                    Some(close) => format!("is not a known field (did you mean {close:?}?)"),
                    None => format!("is not a known field (known: {})", known.join(", ")),
                };
                problems.add(&join(path, name), key.line, message);
            }
        }
        Some(Fields { path: path.to_owned(), line: node.line, entries })
    }

    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(key, _)| key.as_str() == Some(name))
            .map(|(_, value)| value)
            .filter(|v| !v.is_null())
    }

    fn field_path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn string(&self, name: &str, problems: &mut Problems) -> Option<&'n str> {
        let node = self.get(name)?;
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
            Some(node) => self.string(name, problems).map(|s| (s, node.line)),
            None => {
                problems.add(&self.field_path(name), self.line, "is required");
                None
            }
        }
    }

    fn list(&self, name: &str, problems: &mut Problems) -> Option<(&'n [Node], usize)> {
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
        if let Some((value, line)) = fields.required_string(name, problems) {
            if value != want {
                problems.add(name, line, format!("is {value:?}; registry-gate reads {want:?}"));
            }
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
            check_unique_registries(items, problems);
            items.iter().enumerate().filter_map(|(i, item)| decode_registry(item, i, problems)).collect()
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

fn decode_registry(node: &Node, index: usize, problems: &mut Problems) -> Option<Registry> {
    let path = format!("registries[{index}]");
    let fields = Fields::of(node, &path, REGISTRY_FIELDS, problems)?;
    let name = fields.required_string("name", problems);
    if let Some((name, line)) = name {
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
        let url_path = fields.field_path("url");
        let pattern = RegistryPattern::parse(text)
            .map_err(|e| problems.add(&url_path, line, format!("{text:?} {e}")))
            .ok()?;
        if let Some(registry_type) = registry_type {
            if let Err(expected) = registry_type.check_host(&pattern.host) {
                problems.add(
                    &url_path,
                    line,
                    format!("{text:?} does not fit type {registry_type}: {expected}"),
                );
            }
        }
        Some(pattern)
    });
    let pull_secret = fields.string("pullSecret", problems);
    if let (Some(secret), Some(pattern)) = (pull_secret, &pattern) {
        if pattern.host.is_wildcard() {
            let line = fields.get("pullSecret").map_or(fields.line, |n| n.line);
            problems.warn(
                &fields.field_path("pullSecret"),
                line,
                format!(
                    "{secret:?} is given to every Pod pulling from any host {} covers, other tenants' registries included; if it holds one registry's credentials, register that host by name",
                    pattern.host.key()
                ),
            );
        }
    }
    if let (Some(secret), Some(registry_type)) = (pull_secret, registry_type) {
        let line = fields.get("pullSecret").map_or(fields.line, |n| n.line);
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
            if let Some(pattern) = &pattern {
                if pattern.host.is_wildcard() || pattern.path.is_empty() {
                    problems.add(
                        &fields.field_path("match"),
                        line,
                        "is exact, which needs a url naming one repository on one host (no wildcard, a path)",
                    );
                }
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
        namespace_selector,
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
    let path = format!("deny[{index}]");
    let fields = Fields::of(node, &path, DENY_FIELDS, problems)?;
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
    let path = format!("exceptions[{index}]");
    let fields = Fields::of(node, &path, EXCEPTION_FIELDS, problems)?;
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
            problems.add(&path, line, "names both an image and a repository; give one");
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
                &path,
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

/// Names label metrics and URLs decide which entry's secret is injected: neither may repeat.
/// Checked on the raw entries, so that an entry with another problem is still compared.
fn check_unique_registries(items: &[Node], problems: &mut Problems) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut urls: HashMap<RegistryPattern, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Mapping(entries) = &item.value else {
            continue;
        };
        let field = |name: &str| entries.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
        if let Some(node) = field("name") {
            if let Some(first) = node.as_str().and_then(|name| names.insert(name, i)) {
                problems.add(
                    &format!("registries[{i}].name"),
                    node.line,
                    format!("repeats the name of registries[{first}]"),
                );
            }
        }
        if let Some(node) = field("url") {
            let pattern = node.as_str().and_then(|url| RegistryPattern::parse(url).ok());
            if let Some((pattern, first)) =
                pattern.and_then(|p| urls.insert(p.clone(), i).map(|first| (p, first)))
            {
                problems.add(
                    &format!("registries[{i}].url"),
                    node.line,
                    format!(
                        "{pattern} is the same registry as registries[{first}].url; merge the two entries"
                    ),
                );
            }
        }
    }
}

/// RFC 1123 label: what Kubernetes namespaces and metric-friendly names are made of.
pub fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// RFC 1123 subdomain: what Secret names are made of.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}
