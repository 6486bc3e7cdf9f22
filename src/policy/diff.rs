//! What a policy edit changes, before it is applied: entry by entry (`compare`), and image by
//! image for the manifests an admin gives (`compare_manifests`).
//!
//! Registries are matched by `name`, and an entry whose name changed by an identical URL. Scopes
//! (`namespaces`, `namespaceSelector`) are compared as text, not as sets of namespaces, so a
//! rewrite that admits the same namespaces in other words is still reported; the manifest
//! comparison is the exact answer for the workloads it is given.

use serde::Serialize;

use super::{Mode, Policy, Registry};
use crate::check::{self, ImageReport, ManifestError};
use crate::policy::Namespace;

/// What a change does to the images the policy admits. Scripts filter on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A registry, or part of one, is no longer admitted anywhere.
    Removes,
    /// A registry stays, but fewer namespaces may pull from it.
    Narrows,
    /// Images admitted before are refused: a new deny rule, an exemption lifted, enforce mode.
    Denies,
    /// Images refused before are admitted: a new registry, a deny rule removed, an exemption.
    Allows,
    /// A registry stays, and more namespaces (or more of the registry) may pull from it.
    Widens,
    /// Neither more nor fewer images are admitted, but how they are pulled or named changes.
    Changes,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Removes => "removes",
            Class::Narrows => "narrows",
            Class::Denies => "denies",
            Class::Allows => "allows",
            Class::Widens => "widens",
            Class::Changes => "changes",
        }
    }

    /// Whether workloads that were admitted may now be refused.
    pub fn is_breaking(self) -> bool {
        matches!(self, Class::Removes | Class::Narrows | Class::Denies)
    }
}

/// One difference between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub class: Class,
    /// Where, as a field path: NEW's (`registries[2].namespaces`), or OLD's for what NEW removes.
    pub field: String,
    /// What it is about: `registry ghcr`, `deny docker.io/library/busybox`, `mode`.
    pub subject: String,
    /// What it means, in words.
    pub message: String,
}

impl Change {
    fn new(class: Class, field: impl Into<String>, subject: impl Into<String>, message: String) -> Self {
        Change { class, field: field.into(), subject: subject.into(), message }
    }
}

/// Every difference between `old` and `new`: policy-wide settings first, then registries in
/// NEW's order (removed ones last, in OLD's order), then deny rules.
pub fn compare(old: &Policy, new: &Policy) -> Vec<Change> {
    let mut changes = Vec::new();
    compare_settings(old, new, &mut changes);
    compare_registries(old, new, &mut changes);
    compare_deny(old, new, &mut changes);
    changes
}

fn compare_settings(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    // The wording for what weakens enforcement is `Policy::weakenings`' own, which the door
    // prints when such an edit is applied: an admin reads the same sentence in both places.
    match (old.mode, new.mode) {
        (Mode::Enforce, Mode::Audit) => changes.push(Change::new(
            Class::Allows,
            "mode",
            "mode",
            "mode changes from enforce to audit: denied images will be admitted".to_owned(),
        )),
        (Mode::Audit, Mode::Enforce) => changes.push(Change::new(
            Class::Denies,
            "mode",
            "mode",
            "mode changes from audit to enforce: images that were admitted with a warning will be denied"
                .to_owned(),
        )),
        _ => {}
    }
    let old_exempt: Vec<String> = old.exempt_namespaces.iter().map(ToString::to_string).collect();
    let new_exempt: Vec<String> = new.exempt_namespaces.iter().map(ToString::to_string).collect();
    for (i, pattern) in new_exempt.iter().enumerate() {
        if !old_exempt.contains(pattern) {
            changes.push(Change::new(
                Class::Allows,
                format!("exemptNamespaces[{i}]"),
                "exemptNamespaces",
                format!("exempts namespaces matching {pattern:?} from every check"),
            ));
        }
    }
    for (i, pattern) in old_exempt.iter().enumerate() {
        if !new_exempt.contains(pattern) {
            changes.push(Change::new(
                Class::Denies,
                format!("exemptNamespaces[{i}]"),
                "exemptNamespaces",
                format!("no longer exempts namespaces matching {pattern:?}: their images are checked"),
            ));
        }
    }
    // Exceptions are compared by what they admit and until when; a new or extended one allows,
    // one removed or cut short denies again.
    let key = |e: &super::Exception| e.describe();
    for (i, exception) in new.exceptions.iter().enumerate() {
        let field = format!("exceptions[{i}]");
        let subject = format!("exception {}", key(exception));
        match old.exceptions.iter().find(|o| key(o) == key(exception)) {
            None => changes.push(Change::new(
                Class::Allows,
                field,
                subject,
                format!("admits {} until {} ({})", key(exception), exception.expires, exception.reason),
            )),
            Some(before) if exception.expires_at > before.expires_at => changes.push(Change::new(
                Class::Allows,
                field,
                subject,
                format!("extended from {} to {}", before.expires, exception.expires),
            )),
            Some(before) if exception.expires_at < before.expires_at => changes.push(Change::new(
                Class::Denies,
                field,
                subject,
                format!("cut short from {} to {}", before.expires, exception.expires),
            )),
            Some(_) => {}
        }
    }
    for (i, exception) in old.exceptions.iter().enumerate() {
        if !new.exceptions.iter().any(|n| key(n) == key(exception)) {
            changes.push(Change::new(
                Class::Denies,
                format!("exceptions[{i}]"),
                format!("exception {}", key(exception)),
                format!("removed: {} is refused again where the rules refuse it", key(exception)),
            ));
        }
    }
    let (old_short, new_short) = (old.short_name_host.key(), new.short_name_host.key());
    if old_short != new_short {
        changes.push(Change::new(
            Class::Changes,
            "shortNameRegistry",
            "shortNameRegistry",
            format!(
                "short names (nginx, acme/app) are attributed to {new_short} instead of {old_short}, so entries for {new_short} decide them"
            ),
        ));
    }
}

fn compare_registries(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    let mut matched_old = vec![false; old.registries.len()];
    let mut pairs: Vec<(Option<usize>, usize)> = Vec::with_capacity(new.registries.len());
    for (n, registry) in new.registries.iter().enumerate() {
        let by_name = old.registries.iter().position(|o| o.name == registry.name);
        if let Some(o) = by_name {
            matched_old[o] = true;
        }
        pairs.push((by_name, n));
    }
    // A renamed entry is the one that kept its URL exactly, among those no name matched.
    for pair in pairs.iter_mut().filter(|(o, _)| o.is_none()) {
        let pattern = &new.registries[pair.1].pattern;
        let by_url = old
            .registries
            .iter()
            .enumerate()
            .position(|(o, registry)| !matched_old[o] && registry.pattern == *pattern);
        if let Some(o) = by_url {
            matched_old[o] = true;
            pair.0 = Some(o);
        }
    }
    for (o, n) in pairs {
        let registry = &new.registries[n];
        match o {
            Some(o) => compare_registry(&old.registries[o], registry, changes),
            None => changes.push(Change::new(
                Class::Allows,
                format!("registries[{n}]"),
                subject(registry),
                format!("registry added: admits {} in {}", registry.url, scope_words(registry)),
            )),
        }
    }
    for (o, registry) in old.registries.iter().enumerate().filter(|(o, _)| !matched_old[*o]) {
        changes.push(Change::new(
            Class::Removes,
            format!("registries[{o}]"),
            subject(registry),
            format!("registry removed: images from {} are no longer admitted by it", registry.url),
        ));
    }
}

fn subject(registry: &Registry) -> String {
    format!("registry {}", registry.name)
}

/// The namespaces an entry admits, as written: for messages.
fn scope_words(registry: &Registry) -> String {
    if registry.namespaces.is_none() && registry.namespace_selector.is_none() {
        "every namespace".to_owned()
    } else {
        registry.scope()
    }
}

/// An entry kept from OLD to NEW (same name, or same URL under a new name).
fn compare_registry(old: &Registry, new: &Registry, changes: &mut Vec<Change>) {
    let at = |field: &str| format!("registries[{}]{field}", new.position);
    let subject = subject(new);
    let mut push =
        |class, field: &str, message| changes.push(Change::new(class, at(field), &subject, message));
    if old.name != new.name {
        push(
            Class::Changes,
            ".name",
            format!(
                "renamed from {:?} (same URL {}): metrics and audit logs name it differently",
                old.name, new.url
            ),
        );
    }
    if old.pattern != new.pattern {
        let (class, how) = if covers(&new.pattern, &old.pattern) {
            (Class::Widens, "now covers more")
        } else if covers(&old.pattern, &new.pattern) {
            (Class::Narrows, "now covers less")
        } else {
            (Class::Removes, "no longer covers its old URL")
        };
        push(class, ".url", format!("URL changes from {} to {}: {how}", old.url, new.url));
    }
    if old.registry_type != new.registry_type {
        push(
            Class::Changes,
            ".type",
            format!("type changes from {} to {}", old.registry_type.name(), new.registry_type.name()),
        );
    }
    match (&old.pull_secret, &new.pull_secret) {
        (Some(before), Some(after)) if before != after => {
            push(Class::Changes, ".pullSecret", format!("pull secret changes from {before} to {after}"))
        }
        (None, Some(after)) => push(
            Class::Changes,
            ".pullSecret",
            format!("pull secret {after} added: Pods pulling from it get it injected"),
        ),
        (Some(before), None) => push(
            Class::Changes,
            ".pullSecret",
            format!("pull secret {before} removed: Pods pull from it without injected credentials"),
        ),
        _ => {}
    }
    if old.node_credentials != new.node_credentials {
        let message = if new.node_credentials {
            "credentials: kubelet added: the nodes bring the credentials, no pull secret is injected"
        } else {
            "credentials: kubelet removed: the nodes no longer bring the credentials"
        };
        push(Class::Changes, ".credentials", message.to_owned());
    }
    match (old.exact, new.exact) {
        (false, true) => push(
            Class::Narrows,
            ".match",
            format!("match becomes exact: only {} itself is admitted, not the paths under it", new.url),
        ),
        (true, false) => push(
            Class::Widens,
            ".match",
            format!("match becomes prefix: every path under {} is admitted too", new.url),
        ),
        _ => {}
    }
    // The rules in force for the entry (its own over the policy-wide ones), so a policy-wide
    // change shows on every entry it reaches.
    for (field, before, after, what) in [
        (
            ".tagRules.denyLatest",
            old.tag_rules.deny_latest,
            new.tag_rules.deny_latest,
            "images pulling a moving latest (or no tag)",
        ),
        (
            ".tagRules.requireDigest",
            old.tag_rules.require_digest,
            new.tag_rules.require_digest,
            "images not pinned by a digest",
        ),
    ] {
        match (before == Some(true), after == Some(true)) {
            (false, true) => push(Class::Narrows, field, format!("now refuses {what}")),
            (true, false) => push(Class::Widens, field, format!("no longer refuses {what}")),
            _ => {}
        }
    }
    compare_namespaces(old, new, &mut push);
    let old_selector = old.namespace_selector.as_ref().map(ToString::to_string);
    let new_selector = new.namespace_selector.as_ref().map(ToString::to_string);
    match (old_selector, new_selector) {
        (None, Some(after)) => push(
            Class::Narrows,
            ".namespaceSelector",
            format!("namespaceSelector {after} added: only namespaces so labelled may pull from it"),
        ),
        (Some(before), None) => push(
            Class::Widens,
            ".namespaceSelector",
            format!("namespaceSelector {before} removed: namespace labels no longer matter"),
        ),
        // Two selectors are not compared as sets of namespaces: a changed one may leave out
        // namespaces the old one selected, so it counts as narrowing.
        (Some(before), Some(after)) if before != after => push(
            Class::Narrows,
            ".namespaceSelector",
            format!("namespaceSelector changes from {before} to {after}"),
        ),
        _ => {}
    }
}

fn compare_namespaces(old: &Registry, new: &Registry, push: &mut impl FnMut(Class, &str, String)) {
    let texts = |r: &Registry| -> Option<Vec<String>> {
        r.namespaces.as_ref().map(|patterns| patterns.iter().map(ToString::to_string).collect())
    };
    match (texts(old), texts(new)) {
        (None, Some(after)) => push(
            Class::Narrows,
            ".namespaces",
            format!("namespaces {} added: other namespaces may no longer pull from it", after.join(", ")),
        ),
        (Some(before), None) => push(
            Class::Widens,
            ".namespaces",
            format!("namespaces {} removed: every namespace may pull from it", before.join(", ")),
        ),
        (Some(before), Some(after)) => {
            let removed: Vec<&str> =
                before.iter().filter(|p| !after.contains(p)).map(String::as_str).collect();
            let added: Vec<&str> = after.iter().filter(|p| !before.contains(p)).map(String::as_str).collect();
            if !removed.is_empty() {
                push(
                    Class::Narrows,
                    ".namespaces",
                    format!("no longer admits namespaces {}", removed.join(", ")),
                );
            }
            if !added.is_empty() {
                push(
                    Class::Widens,
                    ".namespaces",
                    format!("now also admits namespaces {}", added.join(", ")),
                );
            }
        }
        (None, None) => {}
    }
}

/// Whether every image `inner` covers is covered by `outer` too: the same or a wildcard host
/// over it, and a path prefix on a `/` boundary.
fn covers(outer: &super::RegistryPattern, inner: &super::RegistryPattern) -> bool {
    let host = outer.host == inner.host || !inner.host.is_wildcard() && outer.host.matches(inner.host.key());
    let path = outer.path.is_empty()
        || inner.path == outer.path
        || inner.path.strip_prefix(&*outer.path).is_some_and(|rest| rest.starts_with('/'));
    host && path
}

fn compare_deny(old: &Policy, new: &Policy, changes: &mut Vec<Change>) {
    for (n, rule) in new.deny.iter().enumerate() {
        let subject = format!("deny {}", rule.pattern);
        match old.deny.iter().find(|o| o.pattern == rule.pattern) {
            None => {
                let reason = rule.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                changes.push(Change::new(
                    Class::Denies,
                    format!("deny[{n}]"),
                    subject,
                    format!("adds the deny rule {}: its images are refused everywhere{reason}", rule.pattern),
                ));
            }
            Some(before) if before.reason != rule.reason => changes.push(Change::new(
                Class::Changes,
                format!("deny[{n}].reason"),
                subject,
                format!(
                    "the reason denied users read changes from {:?} to {:?}",
                    before.reason.as_deref().unwrap_or(""),
                    rule.reason.as_deref().unwrap_or("")
                ),
            )),
            Some(_) => {}
        }
    }
    for (o, rule) in old.deny.iter().enumerate() {
        if !new.deny.iter().any(|n| n.pattern == rule.pattern) {
            changes.push(Change::new(
                Class::Allows,
                format!("deny[{o}]"),
                format!("deny {}", rule.pattern),
                format!("removes the deny rule {}", rule.pattern),
            ));
        }
    }
}

// === Manifests ===

/// How one image's verdict changes from OLD to NEW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageClass {
    /// Allowed under OLD, denied under NEW.
    Breaks,
    /// Denied under OLD, allowed under NEW.
    NewlyAllowed,
    /// Allowed under both, through another registry entry or with another pull secret.
    Changes,
}

impl ImageClass {
    pub fn name(self) -> &'static str {
        match self {
            ImageClass::Breaks => "breaks",
            ImageClass::NewlyAllowed => "newly-allowed",
            ImageClass::Changes => "changes",
        }
    }
}

/// One image of the manifests whose verdict NEW changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageChange {
    pub class: ImageClass,
    /// The verdict under OLD, in `check --output json`'s shape.
    pub old: ImageReport,
    /// The verdict under NEW; its `reason` says why a broken image is denied.
    pub new: ImageReport,
}

/// Decides every image of a manifest text under both policies (as `check -f` does) and keeps
/// those whose verdict changes, in the manifests' order.
pub fn compare_manifests(
    old: &Policy,
    new: &Policy,
    text: &str,
    namespace: &Namespace<'_>,
) -> Result<Vec<ImageChange>, ManifestError> {
    let before = check::check_manifests(old, text, namespace)?;
    let after = check::check_manifests(new, text, namespace)?;
    Ok(compare_reports(before, after))
}

/// Pairs two runs over the same manifests. The images, their order and their places depend on
/// the manifests alone, never on the policy, so the runs line up one to one.
pub fn compare_reports(before: Vec<ImageReport>, after: Vec<ImageReport>) -> Vec<ImageChange> {
    debug_assert_eq!(before.len(), after.len(), "the same manifests give the same images");
    before
        .into_iter()
        .zip(after)
        .filter_map(|(old, new)| {
            let class = match (old.is_allowed(), new.is_allowed()) {
                (true, false) => ImageClass::Breaks,
                (false, true) => ImageClass::NewlyAllowed,
                (true, true) if old.registry != new.registry || old.pull_secret != new.pull_secret => {
                    ImageClass::Changes
                }
                _ => return None,
            };
            Some(ImageChange { class, old, new })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NO_LABELS;

    /// A policy from its `registries` and `deny` lists and any other top-level lines.
    fn policy(registries: &str, rest: &str) -> Policy {
        let text =
            format!("apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\n{rest}registries:\n{registries}");
        Policy::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const GHCR: &str = "  - {name: ghcr, type: GHCR, url: ghcr.io/acme}\n";
    const QUAY: &str = "  - {name: quay, type: Quay, url: quay.io/acme}\n";

    /// The changes as `(class, field)` pairs, which is what each test pins.
    fn summary(old: &Policy, new: &Policy) -> Vec<(Class, String)> {
        compare(old, new).into_iter().map(|c| (c.class, c.field)).collect()
    }

    fn one(class: Class, field: &str) -> Vec<(Class, String)> {
        vec![(class, field.to_owned())]
    }

    #[test]
    fn only_removes_narrows_and_denies_break() {
        let all =
            [Class::Removes, Class::Narrows, Class::Denies, Class::Allows, Class::Widens, Class::Changes];
        let breaking: Vec<&str> = all.iter().filter(|c| c.is_breaking()).map(|c| c.name()).collect();
        assert_eq!(breaking, ["removes", "narrows", "denies"]);
        let json: Vec<String> = all.iter().map(|c| serde_json::to_string(c).unwrap_or_default()).collect();
        let names: Vec<String> = all.iter().map(|c| format!("\"{}\"", c.name())).collect();
        assert_eq!(json, names, "JSON and text name the classes alike");
    }

    #[test]
    fn identical_policies_have_no_change() {
        let text = format!("{GHCR}{QUAY}");
        let rest = "mode: audit\nexemptNamespaces: [kube-system]\ndeny: [{url: ghcr.io/acme/old}]\n";
        assert_eq!(compare(&policy(&text, rest), &policy(&text, rest)), []);
    }

    #[test]
    fn a_removed_registry_removes_and_an_added_one_allows() {
        let both = policy(&format!("{GHCR}{QUAY}"), "");
        let ghcr = policy(GHCR, "");
        assert_eq!(summary(&both, &ghcr), one(Class::Removes, "registries[1]"));
        let removed = &compare(&both, &ghcr)[0];
        assert_eq!(removed.subject, "registry quay");
        assert!(removed.message.contains("quay.io/acme"), "{}", removed.message);
        assert_eq!(summary(&ghcr, &both), one(Class::Allows, "registries[1]"));
    }

    #[test]
    fn a_renamed_registry_is_matched_by_its_url() {
        let renamed = policy("  - {name: github, type: GHCR, url: ghcr.io/acme}\n", "");
        assert_eq!(summary(&policy(GHCR, ""), &renamed), one(Class::Changes, "registries[0].name"));
    }

    #[test]
    fn url_changes_widen_narrow_or_remove() {
        let at = |url: &str| policy(&format!("  - {{name: ghcr, type: GHCR, url: {url}}}\n"), "");
        let acme = at("ghcr.io/acme");
        assert_eq!(summary(&acme, &at("ghcr.io")), one(Class::Widens, "registries[0].url"));
        assert_eq!(summary(&acme, &at("ghcr.io/acme/team")), one(Class::Narrows, "registries[0].url"));
        assert_eq!(summary(&acme, &at("ghcr.io/acme-corp")), one(Class::Removes, "registries[0].url"));
        let generic = |url: &str| policy(&format!("  - {{name: r, type: Generic, url: '{url}'}}\n"), "");
        assert_eq!(
            summary(&generic("a.example.com"), &generic("*.example.com")),
            one(Class::Widens, "registries[0].url")
        );
        assert_eq!(
            summary(&generic("*.example.com"), &generic("a.example.com")),
            one(Class::Narrows, "registries[0].url")
        );
    }

    #[test]
    fn pull_secret_credentials_and_type_changes_change() {
        let with = |fields: &str| policy(&format!("  - {{name: r, url: ghcr.io/acme, {fields}}}\n"), "");
        let plain = with("type: GHCR");
        let secret = with("type: GHCR, pullSecret: a");
        assert_eq!(summary(&plain, &secret), one(Class::Changes, "registries[0].pullSecret"));
        assert_eq!(summary(&secret, &plain), one(Class::Changes, "registries[0].pullSecret"));
        assert_eq!(
            summary(&secret, &with("type: GHCR, pullSecret: b")),
            one(Class::Changes, "registries[0].pullSecret")
        );
        assert_eq!(
            summary(&plain, &with("type: GHCR, credentials: kubelet")),
            one(Class::Changes, "registries[0].credentials")
        );
        assert_eq!(summary(&plain, &with("type: Generic")), one(Class::Changes, "registries[0].type"));
    }

    #[test]
    fn namespace_patterns_narrow_when_removed_and_widen_when_added() {
        let scoped = |namespaces: &str| {
            policy(&format!("  - {{name: ghcr, type: GHCR, url: ghcr.io/acme{namespaces}}}\n"), "")
        };
        let all = scoped("");
        let two = scoped(", namespaces: [prod-*, ops]");
        let one_left = scoped(", namespaces: [prod-*]");
        assert_eq!(summary(&all, &two), one(Class::Narrows, "registries[0].namespaces"));
        assert_eq!(summary(&two, &all), one(Class::Widens, "registries[0].namespaces"));
        assert_eq!(summary(&two, &one_left), one(Class::Narrows, "registries[0].namespaces"));
        assert_eq!(summary(&one_left, &two), one(Class::Widens, "registries[0].namespaces"));
        let swapped = compare(&one_left, &scoped(", namespaces: [ops]"));
        let classes: Vec<Class> = swapped.iter().map(|c| c.class).collect();
        assert_eq!(classes, [Class::Narrows, Class::Widens]);
        assert!(swapped[0].message.contains("prod-*"), "{}", swapped[0].message);
        assert!(swapped[1].message.contains("ops"), "{}", swapped[1].message);
    }

    #[test]
    fn a_selector_added_or_changed_narrows_and_removed_widens() {
        let labelled = |selector: &str| {
            policy(&format!("  - {{name: ghcr, type: GHCR, url: ghcr.io/acme{selector}}}\n"), "")
        };
        let none = labelled("");
        let payments = labelled(", namespaceSelector: {matchLabels: {team: payments}}");
        let search = labelled(", namespaceSelector: {matchLabels: {team: search}}");
        let field = "registries[0].namespaceSelector";
        assert_eq!(summary(&none, &payments), one(Class::Narrows, field));
        assert_eq!(summary(&payments, &none), one(Class::Widens, field));
        assert_eq!(summary(&payments, &search), one(Class::Narrows, field));
        let changed = &compare(&payments, &search)[0];
        assert!(changed.message.contains("team=payments to team=search"), "{}", changed.message);
    }

    #[test]
    fn deny_rules_added_deny_and_removed_allow() {
        let none = policy(GHCR, "");
        let denied = policy(GHCR, "deny: [{url: ghcr.io/acme/old, reason: retired}]\n");
        assert_eq!(summary(&none, &denied), one(Class::Denies, "deny[0]"));
        assert!(compare(&none, &denied)[0].message.contains("retired"));
        assert_eq!(summary(&denied, &none), one(Class::Allows, "deny[0]"));
        let reworded = policy(GHCR, "deny: [{url: ghcr.io/acme/old, reason: gone}]\n");
        assert_eq!(summary(&denied, &reworded), one(Class::Changes, "deny[0].reason"));
    }

    #[test]
    fn mode_exemptions_and_short_names() {
        let enforce = policy(GHCR, "");
        let audit = policy(GHCR, "mode: audit\n");
        assert_eq!(summary(&enforce, &audit), one(Class::Allows, "mode"));
        assert_eq!(summary(&audit, &enforce), one(Class::Denies, "mode"));
        let exempt = policy(GHCR, "exemptNamespaces: [kube-system]\n");
        assert_eq!(summary(&enforce, &exempt), one(Class::Allows, "exemptNamespaces[0]"));
        assert_eq!(summary(&exempt, &enforce), one(Class::Denies, "exemptNamespaces[0]"));
        let mirror = policy(GHCR, "shortNameRegistry: mirror.example.com\n");
        assert_eq!(summary(&enforce, &mirror), one(Class::Changes, "shortNameRegistry"));
    }

    #[test]
    fn every_weakening_is_reported_in_the_same_words() {
        let old = policy(GHCR, "deny: [{url: ghcr.io/acme/old}]\n");
        let new = policy(GHCR, "mode: audit\nexemptNamespaces: [sandbox]\n");
        let weakenings = old.weakenings(&new);
        assert_eq!(weakenings.len(), 3);
        let changes = compare(&old, &new);
        for weakening in weakenings {
            let change = changes.iter().find(|c| c.message == weakening);
            assert_eq!(change.map(|c| c.class), Some(Class::Allows), "{weakening}");
        }
    }

    const MANIFESTS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod}
spec:
  containers:
    - {name: api, image: ghcr.io/acme/api:1}
    - {name: cache, image: quay.io/acme/cache:2}
    - {name: tool, image: registry.example.com/tool:3}
";

    fn image_changes(old: &Policy, new: &Policy) -> Vec<(ImageClass, String, String)> {
        let namespace = Namespace::labelled("default", &NO_LABELS);
        compare_manifests(old, new, MANIFESTS, &namespace)
            .expect("the manifests are valid")
            .into_iter()
            .map(|c| (c.class, c.new.image, c.new.location.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn manifest_images_break_get_allowed_or_change() {
        let old = policy(&format!("{GHCR}{QUAY}"), "");
        let new = policy(
            "  - {name: ghcr, type: GHCR, url: ghcr.io/acme, pullSecret: ghcr-pull}\n  - {name: tools, type: Generic, url: registry.example.com}\n",
            "",
        );
        let row =
            |class, image: &str, i: usize| (class, image.to_owned(), format!("spec.containers[{i}].image"));
        assert_eq!(
            image_changes(&old, &new),
            [
                row(ImageClass::Changes, "ghcr.io/acme/api:1", 0),
                row(ImageClass::Breaks, "quay.io/acme/cache:2", 1),
                row(ImageClass::NewlyAllowed, "registry.example.com/tool:3", 2),
            ]
        );
        assert_eq!(image_changes(&old, &old), []);
        let namespace = Namespace::labelled("default", &NO_LABELS);
        let broken = compare_manifests(&old, &new, MANIFESTS, &namespace).expect("valid");
        let reason = broken[1].new.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("not in any registered registry"), "{reason}");
        assert_eq!(broken[1].new.object.as_deref(), Some("Pod/api"));
        assert_eq!(broken[1].new.namespace, "prod");
    }
}
