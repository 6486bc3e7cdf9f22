//! Namespace label selectors on registry entries, with Kubernetes' `LabelSelector` semantics
//! (`matchLabels` and `matchExpressions`, all of which must hold).
//!
//! The webhook learns namespace labels from a watch on Namespaces and the controller from its
//! own; where labels are not known (no watch, or a namespace the watch has not seen yet), a
//! registry with a selector admits nothing there: the decision fails closed.

use std::collections::BTreeMap;
use std::fmt;

/// A namespace's labels, as the API server stores them.
pub type Labels = BTreeMap<String, String>;

/// The labels of a namespace that has none; never the same as unknown labels.
pub static NO_LABELS: Labels = BTreeMap::new();

/// The namespace a decision is made for: its name, and its labels when they are known.
#[derive(Debug, Clone, Copy)]
pub struct Namespace<'a> {
    pub name: &'a str,
    /// `None`: not known, so registries scoped by labels do not admit it.
    pub labels: Option<&'a Labels>,
}

impl<'a> Namespace<'a> {
    /// A namespace whose labels are not known.
    pub fn named(name: &'a str) -> Self {
        Namespace { name, labels: None }
    }

    pub fn labelled(name: &'a str, labels: &'a Labels) -> Self {
        Namespace { name, labels: Some(labels) }
    }
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
    Exists { key: String },
    DoesNotExist { key: String },
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            // As in Kubernetes: a namespace without the key is not in the excluded values.
            Requirement::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A validated selector that selects something less than every namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSelector {
    pub(super) match_labels: Vec<(String, String)>,
    pub(super) match_expressions: Vec<Requirement>,
}

impl NamespaceSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

/// kubectl's selector syntax: `team=payments,env in (prod,staging),!legacy`.
impl fmt::Display for NamespaceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = self.match_labels.iter().map(|(key, value)| format!("{key}={value}"));
        let expressions = self.match_expressions.iter().map(|r| match r {
            Requirement::In { key, values } => format!("{key} in ({})", values.join(",")),
            Requirement::NotIn { key, values } => format!("{key} notin ({})", values.join(",")),
            Requirement::Exists { key } => key.clone(),
            Requirement::DoesNotExist { key } => format!("!{key}"),
        });
        f.write_str(&labels.chain(expressions).collect::<Vec<_>>().join(","))
    }
}

/// Why a label key is not one Kubernetes accepts: `[prefix/]name`, the prefix a DNS subdomain
/// of at most 253 characters, the name at most 63 of `[A-Za-z0-9._-]` with alphanumeric ends.
pub(super) fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|prefix| !super::is_dns_subdomain(prefix)) {
        return Some(format!("{key:?} has a prefix that is not a DNS subdomain"));
    }
    if name.is_empty() || label_value_problem(name).is_some() {
        return Some(format!(
            "{key:?} is not a label key ([prefix/]name, the name 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ));
    }
    None
}

/// Why a label value is not one Kubernetes accepts (empty is allowed).
pub(super) fn label_value_problem(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let valid = value.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric);
    (!valid).then(|| {
        format!(
            "{value:?} is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn selector(match_labels: &[(&str, &str)], match_expressions: Vec<Requirement>) -> NamespaceSelector {
        NamespaceSelector {
            match_labels: match_labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            match_expressions,
        }
    }

    #[test]
    fn every_label_and_expression_must_hold() {
        let s = selector(
            &[("team", "payments")],
            vec![Requirement::In { key: "env".into(), values: vec!["prod".into(), "staging".into()] }],
        );
        assert!(s.matches(&labels(&[("team", "payments"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("team", "payments"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("team", "payments")])));
        assert!(!s.matches(&labels(&[("team", "search"), ("env", "prod")])));
        assert_eq!(s.to_string(), "team=payments,env in (prod,staging)");
    }

    #[test]
    fn not_in_and_does_not_exist_hold_for_absent_keys() {
        let s = selector(
            &[],
            vec![
                Requirement::NotIn { key: "tier".into(), values: vec!["sandbox".into()] },
                Requirement::DoesNotExist { key: "legacy".into() },
            ],
        );
        assert!(s.matches(&NO_LABELS));
        assert!(s.matches(&labels(&[("tier", "prod")])));
        assert!(!s.matches(&labels(&[("tier", "sandbox")])));
        assert!(!s.matches(&labels(&[("legacy", "")])));
        let exists = selector(&[], vec![Requirement::Exists { key: "legacy".into() }]);
        assert!(exists.matches(&labels(&[("legacy", "")])));
        assert!(!exists.matches(&NO_LABELS));
        assert_eq!(s.to_string(), "tier notin (sandbox),!legacy");
    }

    #[test]
    fn keys_and_values_follow_kubernetes_rules() {
        for key in ["team", "acme.io/team", "kubernetes.io/metadata.name", "a_b.c-d"] {
            assert_eq!(label_key_problem(key), None, "{key}");
        }
        for key in ["", "-team", "team-", "Acme.io/team", "acme.io/", "/team", &"a".repeat(64), "a/b/c"] {
            assert!(label_key_problem(key).is_some(), "{key:?} accepted");
        }
        for value in ["", "prod", "v1.2_3-x"] {
            assert_eq!(label_value_problem(value), None, "{value}");
        }
        for value in ["-prod", "prod.", "a b", &"a".repeat(64), "é"] {
            assert!(label_value_problem(value).is_some(), "{value:?} accepted");
        }
    }
}
