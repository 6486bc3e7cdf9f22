//! The registry policy: the document admins write, validated, and compiled into a matcher.
//!
//! A [`Policy`] is immutable once built. Reloads build a new one off the hot path and swap it in
//! whole (`arc-swap`), so a decision always sees one consistent policy.

pub mod diff;
mod document;
mod exception;
pub mod import;
pub mod in_use;
pub mod match_condition;
mod matcher;
mod pattern;
mod registry_type;
mod selector;
pub mod source;
mod store;

use std::fmt;

use wildmatch::WildMatch;

use crate::image::{ParseError, Reference};
pub use document::{API_VERSION, KIND, PolicyError, Problem, is_dns_label, is_dns_subdomain};
pub use exception::{Exception, ExceptionSubject};
use matcher::{ExactRepositories, Index, PathBuf, join_path};
use pattern::{HOST_BUF_LEN, canonical_host, is_canonical_host};
pub use pattern::{HostPattern, RegistryPattern};
pub use registry_type::{Credentials, RegistryType};
pub use selector::{Labels, NO_LABELS, Namespace, NamespaceSelector, Requirement};
pub use store::{PolicySnapshot, PolicyStore};

/// What a denial does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reject the object.
    Enforce,
    /// Admit it, but warn the user and count it: for rolling a policy out.
    Audit,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// A registered registry: where images may come from, and the secret to pull them with.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Unique; labels metrics and audit logs.
    pub name: String,
    pub registry_type: RegistryType,
    /// The URL as written, for messages.
    pub url: String,
    pub pattern: RegistryPattern,
    /// A `kubernetes.io/dockerconfigjson` Secret name, injected into Pods that use this registry.
    pub pull_secret: Option<String>,
    /// `credentials: kubelet`: the nodes get this registry's credentials themselves (a kubelet
    /// credential provider), so no pull secret is injected or copied, and none may be named.
    pub node_credentials: bool,
    /// Namespaces allowed to pull from it; `None` for all.
    pub namespaces: Option<Vec<NamespacePattern>>,
    /// Labels those namespaces must carry as well; `None` for any.
    /// Boxed: few entries have one, and every entry would otherwise hold its room.
    pub namespace_selector: Option<Box<NamespaceSelector>>,
    /// `match: exact`: the entry admits its one repository, not the paths under it.
    pub exact: bool,
    /// How images from it must name their version; unset rules follow the policy's.
    pub tag_rules: TagRules,
    /// Where the entry starts in the policy document.
    pub line: usize,
    /// Index in the policy's `registries`, for per-registry counters.
    pub position: usize,
}

impl Registry {
    /// Whether the namespace is in this registry's scope: its name matches one of the patterns
    /// and its labels match the selector. Unknown labels match no selector (fail closed).
    pub fn admits_namespace(&self, namespace: &Namespace<'_>) -> bool {
        self.namespaces.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(namespace.name)))
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|selector| namespace.labels.is_some_and(|labels| selector.matches(labels)))
    }

    /// The scope in words, for denial messages: `namespaces prod-*, ops with labels team=payments`.
    fn scope(&self) -> String {
        let names = self.namespaces.iter().flatten().map(ToString::to_string).collect::<Vec<_>>();
        match (&self.namespace_selector, names.is_empty()) {
            (None, _) => format!("namespaces {}", names.join(", ")),
            (Some(selector), true) => format!("namespaces labelled {selector}"),
            (Some(selector), false) => format!("namespaces {} labelled {selector}", names.join(", ")),
        }
    }
}

/// How an image must name its version. Each rule is set policy-wide (`tagRules`) and may be
/// set again per registry, which wins; unset means off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagRules {
    /// Refuse images that pull a moving `latest`: tagged `latest`, or with no tag (which pulls
    /// `latest`), unless a digest pins them.
    pub deny_latest: Option<bool>,
    /// Refuse images not pinned by a digest (`@sha256:...`).
    pub require_digest: Option<bool>,
}

impl TagRules {
    /// These rules, with the unset ones taken from `wider`.
    pub fn over(self, wider: TagRules) -> TagRules {
        TagRules {
            deny_latest: self.deny_latest.or(wider.deny_latest),
            require_digest: self.require_digest.or(wider.require_digest),
        }
    }

    /// The first rule the image breaks.
    pub fn broken_by(self, image: &Reference<'_>) -> Option<TagRule> {
        if self.require_digest == Some(true) && image.digest().is_none() {
            return Some(TagRule::RequireDigest);
        }
        let moving = image.digest().is_none() && image.tag().is_none_or(|tag| tag == "latest");
        (self.deny_latest == Some(true) && moving).then_some(TagRule::DenyLatest)
    }

    fn is_set(self) -> bool {
        self.deny_latest.is_some() || self.require_digest.is_some()
    }
}

/// One rule of [`TagRules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagRule {
    DenyLatest,
    RequireDigest,
}

/// A registry (or part of one) that is refused even where an entry would allow it.
#[derive(Debug, Clone)]
pub struct DenyRule {
    pub url: String,
    pub pattern: RegistryPattern,
    /// Shown to the user who is denied.
    pub reason: Option<String>,
}

/// A namespace name or glob (`prod-*`, `team-?`).
#[derive(Debug, Clone)]
pub struct NamespacePattern {
    text: String,
    /// `None` for a plain name, compared as a string: most scopes name their namespaces, and
    /// the glob matcher costs more per decision and holds a state per character.
    glob: Option<WildMatch>,
}

impl NamespacePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let literal = text.replace(['*', '?'], "a");
        if text.is_empty() || text.len() > 63 || !document::is_dns_label(&literal) && text != "*" {
            return Err(format!(
                "{text:?} is not a namespace name or glob (lower-case letters, digits, -, * and ?)"
            ));
        }
        let glob = text.contains(['*', '?']).then(|| WildMatch::new(text));
        Ok(NamespacePattern { text: text.to_owned(), glob })
    }

    pub fn matches(&self, namespace: &str) -> bool {
        match &self.glob {
            Some(glob) => glob.matches(namespace),
            None => self.text == namespace,
        }
    }
}

impl fmt::Display for NamespacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A validated, compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub mode: Mode,
    /// Where images without a registry host (`nginx`, `acme/app`) are pulled from.
    pub short_name_host: HostPattern,
    pub exempt_namespaces: Vec<NamespacePattern>,
    pub registries: Vec<Registry>,
    pub deny: Vec<DenyRule>,
    /// Tag rules for every entry that does not set its own.
    pub tag_rules: TagRules,
    /// Images admitted despite the rules, each until a date.
    pub exceptions: Vec<Exception>,
    /// What is allowed but probably not meant (a wildcard entry with a pull secret): shown by
    /// `policy validate`, at the door, and in the log when the policy loads.
    pub warnings: Vec<Problem>,
    index: Index,
    exact: ExactRepositories,
    /// Whether any entry has a namespace selector, so that decisions need namespace labels.
    uses_namespace_labels: bool,
    /// Whether any tag rule is set anywhere, so that decisions look at tags.
    uses_tag_rules: bool,
}

/// The verdict on one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'p> {
    /// The most specific matching entry, whose pull secret belongs on the Pod.
    Allowed(&'p Registry),
    Denied(Denial<'p>),
    /// Refused by the rules, admitted by an exception that has not expired; with the entry
    /// whose pull secret the Pod still gets, if any ([`exception::registry_for`]).
    Excepted(&'p Exception, Option<&'p Registry>),
}

/// Why an image was denied.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial<'p> {
    /// The image string is not a reference the runtime would pull.
    InvalidReference(ParseError),
    /// No entry covers the image's registry and path.
    Unregistered,
    /// The most specific entry does not admit this namespace.
    NamespaceNotAllowed(&'p Registry),
    /// A deny rule covers the image.
    DenyListed(&'p DenyRule),
    /// The entry admits the image's repository, but not how the image names its version.
    TagRule(&'p Registry, TagRule),
}

impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl PartialEq for DenyRule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Policy {
    /// Parses, validates and compiles a policy document (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        document::parse(text)
    }

    fn assemble(
        mode: Mode,
        short_name_host: HostPattern,
        exempt_namespaces: Vec<NamespacePattern>,
        mut registries: Vec<Registry>,
        deny: Vec<DenyRule>,
        tag_rules: TagRules,
        exceptions: Vec<Exception>,
    ) -> Self {
        for (position, registry) in registries.iter_mut().enumerate() {
            registry.position = position;
            registry.tag_rules = registry.tag_rules.over(tag_rules);
        }
        let index = Index::build(
            registries.iter().map(|r| (!r.exact).then_some(&r.pattern)),
            deny.iter().map(|d| &d.pattern),
        );
        let exact =
            ExactRepositories::build(registries.iter().filter(|r| r.exact).map(|r| (r.position, &r.pattern)));
        let uses_namespace_labels = registries.iter().any(|r| r.namespace_selector.is_some());
        let uses_tag_rules = registries.iter().any(|r| r.tag_rules.is_set());
        Policy {
            mode,
            short_name_host,
            exempt_namespaces,
            registries,
            deny,
            tag_rules,
            exceptions,
            warnings: Vec::new(),
            index,
            exact,
            uses_namespace_labels,
            uses_tag_rules,
        }
    }

    /// Whether some entry is scoped by namespace labels: only then does a decision need them,
    /// and the webhook looks them up.
    pub fn uses_namespace_labels(&self) -> bool {
        self.uses_namespace_labels
    }

    /// What `newer` switches off that this policy enforced, in words for the person making the
    /// edit: enforce becoming audit, new exemptions, deny rules removed. Registries added or
    /// widened are the ordinary business of a policy and are not listed.
    pub fn weakenings(&self, newer: &Policy) -> Vec<String> {
        let mut found = Vec::new();
        if self.mode == Mode::Enforce && newer.mode == Mode::Audit {
            found.push("mode changes from enforce to audit: denied images will be admitted".to_owned());
        }
        for pattern in &newer.exempt_namespaces {
            if !self.exempt_namespaces.iter().any(|old| old.text == pattern.text) {
                found.push(format!("exempts namespaces matching {:?} from every check", pattern.text));
            }
        }
        for exception in &newer.exceptions {
            let known = self.exceptions.iter().any(|old| {
                old.subject == exception.subject
                    && old.expires_at >= exception.expires_at
                    && old.describe() == exception.describe()
            });
            if !known {
                found.push(format!(
                    "admits {} by exception until {} ({})",
                    exception.describe(),
                    exception.expires,
                    exception.reason
                ));
            }
        }
        for rule in &self.deny {
            if !newer.deny.iter().any(|new| new.pattern == rule.pattern) {
                found.push(format!("removes the deny rule {}", rule.pattern));
            }
        }
        found
    }

    /// Whether objects in this namespace are admitted without looking at their images.
    pub fn is_exempt(&self, namespace: &str) -> bool {
        self.exempt_namespaces.iter().any(|p| p.matches(namespace))
    }

    /// Decides one parsed image for a namespace. Deny rules win over every entry; otherwise the
    /// most specific entry decides, including its namespace scope, so that a narrow entry
    /// scoped to some namespaces keeps the others out of that part of the registry.
    pub fn decide<'p>(&'p self, image: &Reference<'_>, namespace: &Namespace<'_>) -> Decision<'p> {
        let decision = self.decide_by_rules(image, namespace);
        match decision {
            Decision::Denied(denial) if !self.exceptions.is_empty() => {
                match self.exception_for(image, namespace.name, exception::now()) {
                    Some(exception) => Decision::Excepted(exception, exception::registry_for(&denial)),
                    None => Decision::Denied(denial),
                }
            }
            decision => decision,
        }
    }

    /// The first exception in force that covers the image in the namespace.
    fn exception_for(&self, image: &Reference<'_>, namespace: &str, now: i64) -> Option<&Exception> {
        self.exceptions
            .iter()
            .find(|e| !e.is_expired(now) && e.covers(image, self.short_name_host.key(), namespace))
    }

    /// The decision of the registries, deny rules and tag rules alone.
    fn decide_by_rules<'p>(&'p self, image: &Reference<'_>, namespace: &Namespace<'_>) -> Decision<'p> {
        let domain = if image.is_short_name() { self.short_name_host.key() } else { image.domain() };
        // The buffers are initialised only on the paths that need them: zeroing them on every
        // decision was a tenth of its cost.
        let mut host_buf;
        let host = if is_canonical_host(domain) {
            domain
        } else {
            host_buf = [0; HOST_BUF_LEN];
            match canonical_host(domain, &mut host_buf) {
                Some(host) => host,
                None => return Decision::Denied(Denial::Unregistered),
            }
        };
        let mut path_buf;
        let path = match image.path().parts() {
            ("", path) => path,
            parts => {
                path_buf = PathBuf::new();
                match join_path(&mut path_buf, parts) {
                    Some(path) => path,
                    None => return Decision::Denied(Denial::Unregistered),
                }
            }
        };
        let matches = self.index.lookup(host, path);
        if let Some(rule) = matches.deny.or_else(|| self.short_name_deny(image, path)) {
            return Decision::Denied(Denial::DenyListed(&self.deny[rule]));
        }
        let exact = if self.exact.is_empty() { None } else { self.exact.lookup(host, path) };
        match exact.or(matches.allow) {
            Some(entry) => {
                let registry = &self.registries[entry];
                if !registry.admits_namespace(namespace) {
                    return Decision::Denied(Denial::NamespaceNotAllowed(registry));
                }
                match self.uses_tag_rules.then(|| registry.tag_rules.broken_by(image)).flatten() {
                    Some(rule) => Decision::Denied(Denial::TagRule(registry, rule)),
                    None => Decision::Allowed(registry),
                }
            }
            None => Decision::Denied(Denial::Unregistered),
        }
    }

    /// A deny rule on Docker Hub that covers a short name pulled from a mirror.
    ///
    /// With `shortNameRegistry: mirror.example.com`, `busybox` is pulled from the mirror, but it
    /// still names Docker Hub's busybox (the mirror serves a copy of it), so
    /// `deny: docker.io/library/busybox` must keep covering it. Rules on the mirror's own host
    /// apply as well, through the ordinary lookup.
    fn short_name_deny(&self, image: &Reference<'_>, path: &str) -> Option<usize> {
        if !image.is_short_name() || self.short_name_host.key() == crate::image::DOCKER_HUB {
            return None;
        }
        self.index.lookup(crate::image::DOCKER_HUB, path).deny
    }

    /// Parses and decides one image string.
    pub fn check<'p, 'i>(
        &'p self,
        image: &'i str,
        namespace: &Namespace<'_>,
    ) -> (Option<Reference<'i>>, Decision<'p>) {
        match Reference::parse(image) {
            Ok(reference) => {
                let decision = self.decide(&reference, namespace);
                (Some(reference), decision)
            }
            Err(e) => (None, Decision::Denied(Denial::InvalidReference(e))),
        }
    }

    /// The message a denied user reads: what is wrong, and what would be allowed.
    pub fn denial_message(
        &self,
        reference: Option<&Reference<'_>>,
        denial: &Denial<'_>,
        namespace: &Namespace<'_>,
    ) -> String {
        let message = self.rule_message(reference, denial, namespace);
        let expired = reference.and_then(|image| {
            let now = exception::now();
            self.exceptions
                .iter()
                .find(|e| e.is_expired(now) && e.covers(image, self.short_name_host.key(), namespace.name))
        });
        match expired {
            Some(e) => format!("{message} (an exception for it expired after {}: {})", e.expires, e.reason),
            None => message,
        }
    }

    fn rule_message(
        &self,
        reference: Option<&Reference<'_>>,
        denial: &Denial<'_>,
        namespace: &Namespace<'_>,
    ) -> String {
        let name = reference.map(|r| r.name().to_string()).unwrap_or_default();
        match denial {
            Denial::InvalidReference(e) => format!("invalid image reference: {e} ({})", e.hint()),
            Denial::Unregistered => {
                let hint = reference.map(|r| self.hint(r, namespace)).unwrap_or_default();
                format!("{name} is not in any registered registry; {hint}")
            }
            Denial::NamespaceNotAllowed(registry) => {
                let unknown = if registry.namespace_selector.is_some() && namespace.labels.is_none() {
                    " (the namespace's labels are not known to registry-gate yet)"
                } else {
                    ""
                };
                format!(
                    "registry {:?} ({}) may not be used in namespace {:?}; it admits {}{unknown}",
                    registry.name,
                    registry.url,
                    namespace.name,
                    registry.scope()
                )
            }
            Denial::DenyListed(rule) => match &rule.reason {
                Some(reason) => format!("{name} is denied by policy ({}): {reason}", rule.url),
                None => format!("{name} is denied by policy ({})", rule.url),
            },
            Denial::TagRule(registry, TagRule::DenyLatest) => format!(
                "{} pulls the moving tag latest (no tag pulls latest too), which registry {:?} ({}) refuses; name a version tag or pin a digest",
                reference.map(|r| r.to_string()).unwrap_or_default(),
                registry.name,
                registry.url
            ),
            Denial::TagRule(registry, TagRule::RequireDigest) => format!(
                "{} is not pinned by a digest, which registry {:?} ({}) requires; add @sha256:<digest>",
                reference.map(|r| r.to_string()).unwrap_or_default(),
                registry.name,
                registry.url
            ),
        }
    }

    /// For a denied user: the registered URLs on the image's host, or on any host when there
    /// are none there. Off the hot path; it scans the entries.
    pub fn hint(&self, image: &Reference<'_>, namespace: &Namespace<'_>) -> String {
        let domain = if image.is_short_name() { self.short_name_host.key() } else { image.domain() };
        let mut buf = [0; HOST_BUF_LEN];
        let Some(host) = canonical_host(domain, &mut buf) else {
            return "no registry is registered for that host".into();
        };
        let admitted = self.registries.iter().filter(|r| r.admits_namespace(namespace));
        let same_host: Vec<&str> = admitted
            .clone()
            .filter(|r| r.pattern.host.matches(host))
            .map(|r| r.url.as_str())
            .take(5)
            .collect();
        if !same_host.is_empty() {
            return format!("registered on {host}: {}", same_host.join(", "));
        }
        let any: Vec<&str> = admitted.map(|r| r.url.as_str()).take(5).collect();
        if any.is_empty() {
            format!("no registry is registered for namespace {:?}", namespace.name)
        } else {
            format!("registered: {}", any.join(", "))
        }
    }
}
/// A policy holds one `Registry` per entry: 10,000 entries at 224 bytes each were 2.2 MB of the
/// compiled policy before the rarely used selector was boxed.
#[cfg(all(test, target_pointer_width = "64"))]
mod size {
    #[test]
    fn a_registry_entry_stays_small() {
        assert!(std::mem::size_of::<super::Registry>() <= 176, "{}", std::mem::size_of::<super::Registry>());
        assert!(std::mem::size_of::<super::pattern::HostPattern>() <= 32);
    }
}

#[cfg(test)]
mod tests {
    use super::NamespacePattern;

    #[test]
    fn namespace_names_match_whole_and_globs_match_their_shape() {
        let matches = |pattern: &str, namespace: &str| {
            NamespacePattern::parse(pattern).expect("a valid pattern").matches(namespace)
        };
        assert!(matches("prod", "prod"));
        assert!(!matches("prod", "prod-1"));
        assert!(!matches("prod", "pro"));
        assert!(!matches("prod", ""));
        assert!(matches("prod-*", "prod-1"));
        assert!(matches("prod-*", "prod-"));
        assert!(!matches("prod-*", "dev-prod-1"));
        assert!(matches("team-?", "team-a"));
        assert!(!matches("team-?", "team-ab"));
        assert!(matches("*", "anything"));
    }
}
