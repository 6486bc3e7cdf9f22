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

use super::pattern::{
    HOST_BUF_LEN, MAX_PATH_DEPTH, RegistryPattern, WildcardShape, canonical_host,
};

/// Room for a repository path (255) with `library/` written in front of it.
const PATH_BUF_LEN: usize = crate::image::PATH_MAX_LEN + 8;
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
            rules
                .by_prefix
                .entry(pattern.path.clone())
                .or_insert(position);
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
        let mut inline: [Option<&HostRules>; INLINE_CANDIDATES] = [None; INLINE_CANDIDATES];
        // Only a policy with more than seven wildcard shapes matching one host spills here.
        let mut spilled: Vec<&HostRules> = Vec::new();
        let mut count = 0;
        let mut depths = 0u64;
        // Wildcard rules are stored under their masked name; image hosts never contain `*`, so
        // an exact lookup cannot hit them by accident.
        let exact = self.hosts.get(host);
        let mut mask_buf = [0u8; HOST_BUF_LEN];
        let labels = host
            .split(':')
            .next()
            .map_or(0, |name| name.bytes().filter(|&b| b == b'.').count() + 1);
        let wildcards = self
            .shapes
            .iter()
            .filter(|shape| shape.label_count() == labels)
            .filter_map(|shape| {
                shape
                    .mask(host, &mut mask_buf)
                    .and_then(|masked| self.hosts.get(masked))
            });
        for rules in exact.into_iter().chain(wildcards) {
            depths |= rules.depths;
            if count < INLINE_CANDIDATES {
                inline[count] = Some(rules);
            } else {
                spilled.push(rules);
            }
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let candidates = inline
            .iter()
            .take(count.min(INLINE_CANDIDATES))
            .flatten()
            .chain(spilled.iter());

        // Ends of the path's first components, as far as any candidate looks.
        let deepest = (u64::BITS - 1 - depths.leading_zeros()) as usize;
        let mut ends = [0usize; MAX_PATH_DEPTH + 1];
        let mut components = 0;
        for (i, byte) in path.bytes().enumerate() {
            if components >= deepest {
                break;
            }
            if byte == b'/' {
                components += 1;
                ends[components] = i;
            }
        }
        if components < deepest && !path.is_empty() {
            components += 1;
            ends[components] = path.len();
        }

        for depth in (0..=components.min(deepest)).rev() {
            if depths & (1 << depth) == 0 {
                continue;
            }
            let prefix = &path[..ends[depth]];
            for rules in candidates.clone() {
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

/// An image's canonical host and contiguous path, rewritten on the stack.
pub(super) struct ImageKey {
    host: [u8; HOST_BUF_LEN],
    host_len: usize,
    path: [u8; PATH_BUF_LEN],
    path_len: usize,
}

impl ImageKey {
    /// `None` when the host is longer than any policy host can be: then nothing matches it.
    pub(super) fn new(host: &str, path: (&str, &str)) -> Option<Self> {
        let mut key = ImageKey {
            host: [0; HOST_BUF_LEN],
            host_len: 0,
            path: [0; PATH_BUF_LEN],
            path_len: 0,
        };
        key.host_len = canonical_host(host, &mut key.host)?.len();
        let (prefix, rest) = path;
        let total = prefix.len() + rest.len();
        let target = key.path.get_mut(..total)?;
        target[..prefix.len()].copy_from_slice(prefix.as_bytes());
        target[prefix.len()..].copy_from_slice(rest.as_bytes());
        key.path_len = total;
        Some(key)
    }

    /// Both parts were copied from `str`s whole, so they are always UTF-8.
    pub(super) fn host(&self) -> &str {
        std::str::from_utf8(&self.host[..self.host_len]).unwrap_or_default()
    }

    pub(super) fn path(&self) -> &str {
        std::str::from_utf8(&self.path[..self.path_len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(urls: &[&str]) -> Index {
        let patterns: Vec<RegistryPattern> = urls
            .iter()
            .map(|u| RegistryPattern::parse(u).expect("valid url"))
            .collect();
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
