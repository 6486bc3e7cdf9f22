//! The compiled matcher: per-image decisions in tens of nanoseconds, whatever the policy's size.
//!
//! Hosts sit in a hash map (canonical `name[:port]` keys); each host keeps its path prefixes in a
//! second map plus a bit set of the depths (number of path components) at which it has any. A
//! decision is one host lookup, then one prefix lookup per depth present, deepest first, so the
//! most specific entry is found first and the cost does not grow with the number of entries.
//! Wildcard hosts (`*.azurecr.io`) live in the same map under their masked name; the matcher masks
//! the image's host once per distinct wildcard shape, and there are only a handful of shapes.
//!
//! Nothing here allocates on the hot path: hosts and paths are rewritten in stack buffers.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::pattern::{HOST_BUF_LEN, MAX_PATH_DEPTH, RegistryPattern, WildcardShape, label_count};
use crate::image::grammar;

/// Room for a repository path (255) with `library/` written in front of it.
pub(super) const PATH_BUF_LEN: usize = crate::image::PATH_MAX_LEN + 8;
/// Candidate hosts (the exact one and wildcard shapes) kept on the stack before spilling.
const INLINE_CANDIDATES: usize = 8;

/// Entries indexed for lookup: registries for allow, deny rules for deny.
#[derive(Debug, Default)]
pub(super) struct Index {
    hosts: HashMap<Box<str>, HostRules, RandomState>,
    /// Distinct wildcard shapes, most specific first.
    shapes: Vec<WildcardShape>,
}

#[derive(Debug, Default)]
struct HostRules {
    /// Entry index by path prefix; `""` covers the whole host.
    by_prefix: HashMap<Box<str>, usize, RandomState>,
    /// Bit `d` is set when some prefix has `d` components.
    depths: u64,
}

impl Index {
    /// Indexes patterns by position; the caller has refused duplicate patterns, so each
    /// (host, prefix) holds one entry.
    pub(super) fn build<'p>(patterns: impl IntoIterator<Item = &'p RegistryPattern>) -> Self {
        let mut index = Index::default();
        for (position, pattern) in patterns.into_iter().enumerate() {
            let rules = index.hosts.entry(pattern.host.key().into()).or_default();
            rules.by_prefix.entry(pattern.path.clone()).or_insert(position);
            rules.depths |= 1 << pattern.depth();
            if pattern.host.is_wildcard() && !index.shapes.contains(&pattern.host.shape()) {
                index.shapes.push(pattern.host.shape());
            }
        }
        index.shapes.sort_by_key(WildcardShape::specificity);
        index
    }

    pub(super) fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The most specific entry covering `host` (canonical) and `path`: the deepest prefix first,
    /// and at equal depth the exact host before wildcard hosts.
    pub(super) fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        let mut candidates = Candidates::default();
        // Wildcard rules are stored under their masked name; image hosts never contain `*`, so
        // an exact lookup cannot hit them by accident.
        if let Some(rules) = self.hosts.get(host) {
            candidates.push(rules);
        }
        if !self.shapes.is_empty() && !host.starts_with('[') {
            let name = &host[..grammar::find_byte(host, b':').unwrap_or(host.len())];
            let labels = label_count(name);
            let mut mask_buf = [0u8; HOST_BUF_LEN];
            for shape in self.shapes.iter().filter(|shape| shape.label_count() == labels) {
                if let Some(rules) = shape.mask(host, &mut mask_buf).and_then(|masked| self.hosts.get(masked))
                {
                    candidates.push(rules);
                }
            }
        }
        if candidates.count == 0 {
            return None;
        }
        let depths = candidates.depths;
        let components = if path.is_empty() { 0 } else { path.bytes().filter(|&b| b == b'/').count() + 1 };
        // Depths present, deepest first, that the path is deep enough for.
        let mut remaining = depths & (u64::MAX >> (63 - components.min(MAX_PATH_DEPTH)));
        while remaining != 0 {
            let depth = (u64::BITS - 1 - remaining.leading_zeros()) as usize;
            remaining &= !(1 << depth);
            let prefix = &path[..prefix_end(path, depth)];
            for rules in candidates.iter() {
                if rules.depths & (1 << depth) != 0 {
                    if let Some(&entry) = rules.by_prefix.get(prefix) {
                        return Some(entry);
                    }
                }
            }
        }
        None
    }
}

/// The hosts whose rules apply to one image: the exact host first, then wildcard shapes in order.
#[derive(Default)]
struct Candidates<'i> {
    inline: [Option<&'i HostRules>; INLINE_CANDIDATES],
    /// Only a policy with more than seven wildcard shapes matching one host spills here.
    spilled: Vec<&'i HostRules>,
    count: usize,
    /// Union of the candidates' depths.
    depths: u64,
}

impl<'i> Candidates<'i> {
    fn push(&mut self, rules: &'i HostRules) {
        self.depths |= rules.depths;
        match self.inline.get_mut(self.count) {
            Some(slot) => *slot = Some(rules),
            None => self.spilled.push(rules),
        }
        self.count += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &'i HostRules> + '_ {
        self.inline.iter().flatten().copied().chain(self.spilled.iter().copied())
    }
}

/// Length of the first `depth` components of `path`.
fn prefix_end(path: &str, depth: usize) -> usize {
    if depth == 0 {
        return 0;
    }
    let mut seen = 0;
    for (i, byte) in path.bytes().enumerate() {
        if byte == b'/' {
            seen += 1;
            if seen == depth {
                return i;
            }
        }
    }
    path.len()
}

/// Writes `prefix` and `rest` into `buf` as one string (`library/` + `nginx`).
pub(super) fn join_path<'b>(
    buf: &'b mut [u8; PATH_BUF_LEN],
    (prefix, rest): (&str, &str),
) -> Option<&'b str> {
    let total = prefix.len() + rest.len();
    let target = buf.get_mut(..total)?;
    target[..prefix.len()].copy_from_slice(prefix.as_bytes());
    target[prefix.len()..].copy_from_slice(rest.as_bytes());
    std::str::from_utf8(target).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(urls: &[&str]) -> Index {
        let patterns: Vec<RegistryPattern> =
            urls.iter().map(|u| RegistryPattern::parse(u).expect("valid url")).collect();
        Index::build(&patterns)
    }

    #[test]
    fn deepest_prefix_wins_and_boundaries_hold() {
        let index = index(&["ghcr.io", "ghcr.io/acme", "ghcr.io/acme/team"]);
        assert_eq!(index.lookup("ghcr.io", "acme/team/app"), Some(2));
        assert_eq!(index.lookup("ghcr.io", "acme/app"), Some(1));
        assert_eq!(index.lookup("ghcr.io", "acme-evil/app"), Some(0));
        assert_eq!(index.lookup("ghcr.io", "acme"), Some(1));
        assert_eq!(index.lookup("ghcr.io.evil.io", "acme/app"), None);
    }

    #[test]
    fn exact_hosts_beat_wildcards_at_equal_depth() {
        let index = index(&["*.azurecr.io", "acme.azurecr.io", "*.azurecr.io/team"]);
        assert_eq!(index.lookup("acme.azurecr.io", "app"), Some(1));
        assert_eq!(index.lookup("other.azurecr.io", "app"), Some(0));
        assert_eq!(index.lookup("acme.azurecr.io", "team/app"), Some(2));
        assert_eq!(index.lookup("a.b.azurecr.io", "app"), None);
    }
}
