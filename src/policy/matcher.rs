//! The compiled matcher: per-image decisions in tens of nanoseconds, whatever the policy's size.
//!
//! Exact hosts sit in a hash map keyed by canonical `name[:port]`. Wildcard hosts sit in one
//! table per shape (`*.azurecr.io` and `*.corp.example` share a shape: one leading wildcard of
//! three labels), keyed by the part of the host the wildcard does not cover, which for leading
//! wildcards is a plain suffix of the image's host: no copy. There are only a handful of shapes.
//!
//! Each host keeps its allow and deny path prefixes. A host with a few prefixes scans them,
//! deepest first; one with many (ghcr.io with thousands of owners) looks each depth up in a hash
//! map instead, so a decision costs one host lookup, a lookup per wildcard shape of the right
//! length, and a lookup per path depth in use, however many entries the policy has.
//!
//! Nothing here allocates on the hot path.

use std::hash::{Hash, Hasher};

use foldhash::fast::RandomState;
use hashbrown::{Equivalent, HashMap};

use super::pattern::{RegistryPattern, WildcardShape};
use crate::image::grammar;

/// Room for a repository path (255) with `library/` written in front of it.
pub(super) const PATH_BUF_LEN: usize = crate::image::PATH_MAX_LEN + 8;
/// Up to this many prefixes on one host, a scan beats hashing (measured with callgrind: a
/// foldhash lookup of a short key costs about as much as four prefix comparisons).
const SCAN_LIMIT: usize = 8;

/// Rules by host key.
type HostTable = HashMap<Box<str>, HostRules, RandomState>;

/// Entries that admit one repository and nothing under it (`match: exact`), by host key and
/// then path: two lookups, made only when the policy has such entries. A full path is as deep
/// as a match can be, so an exact entry that matches is the most specific.
#[derive(Debug, Default)]
pub(super) struct ExactRepositories(HashMap<Box<str>, HashMap<Box<str>, usize, RandomState>, RandomState>);

/// A key looked up in the matcher's tables, compared by [`same_bytes`] rather than `==`.
///
/// `==` on strings calls the C library's `memcmp`, and the shipped executable links musl, whose
/// `memcmp` compares one byte at a time: 7.5 % of a decision's time in a profile of the musl
/// build (`cargo bench --bench decision` for x86_64-unknown-linux-musl), against a few
/// instructions for keys this short compared a word at a time.
#[derive(Clone, Copy)]
struct Probe<'a>(&'a str);

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As the stored `Box<str>` hashes, or lookups would miss.
        self.0.hash(state);
    }
}

impl Equivalent<Box<str>> for Probe<'_> {
    fn equivalent(&self, key: &Box<str>) -> bool {
        same_bytes(self.0.as_bytes(), key.as_bytes())
    }
}

/// Byte equality in a few word compares, with no call out of the function (see [`Probe`]).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn word(bytes: &[u8], at: usize) -> u64 {
        bytes.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_ne_bytes)
    }
    fn half(bytes: &[u8], at: usize) -> u32 {
        bytes.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_ne_bytes)
    }
    let len = a.len();
    if len != b.len() {
        return false;
    }
    match len {
        0 => true,
        1..4 => a[0] == b[0] && a[len / 2] == b[len / 2] && a[len - 1] == b[len - 1],
        4..8 => half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4),
        _ => {
            // Whole words, then the last eight bytes (overlapping the last word compared).
            let mut at = 0;
            while at + 8 < len {
                if word(a, at) != word(b, at) {
                    return false;
                }
                at += 8;
            }
            word(a, len - 8) == word(b, len - 8)
        }
    }
}

impl ExactRepositories {
    pub(super) fn build<'p>(entries: impl IntoIterator<Item = (usize, &'p RegistryPattern)>) -> Self {
        let mut table = ExactRepositories::default();
        for (position, pattern) in entries {
            let paths = table.0.entry(pattern.host.key().into()).or_default();
            paths.entry(pattern.path.clone()).or_insert(position);
        }
        // Like the index: a policy lives until the next edit, so the growth room goes back.
        table.0.shrink_to_fit();
        table.0.values_mut().for_each(HashMap::shrink_to_fit);
        table
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        self.0.get(&Probe(host))?.get(&Probe(path)).copied()
    }
}

/// The allow and deny rules of a policy, indexed by host.
#[derive(Debug, Default)]
pub(super) struct Index {
    exact: HostTable,
    /// One table per wildcard shape, most specific shape first.
    wildcards: Vec<ShapeTable>,
}

/// The hosts of one wildcard shape, by key.
#[derive(Debug)]
struct ShapeTable {
    shape: WildcardShape,
    /// Bit `n` set when some key is `n` bytes long (bit 127: 127 or longer). Most image hosts
    /// are not of the shape, and most of those are turned away by their key's length here,
    /// without hashing it.
    key_lengths: u128,
    hosts: HostTable,
}

impl ShapeTable {
    fn length_bit(key: &str) -> u128 {
        1 << key.len().min(127)
    }

    fn get(&self, key: &str) -> Option<&HostRules> {
        if self.key_lengths & Self::length_bit(key) == 0 {
            return None;
        }
        self.hosts.get(&Probe(key))
    }
}

/// What an image's host and path matched: entry positions in the policy's lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Matches {
    pub(super) allow: Option<usize>,
    pub(super) deny: Option<usize>,
}

#[derive(Debug, Default)]
struct HostRules {
    allow: Prefixes,
    deny: Prefixes,
}

/// Path prefixes of one host, each with the position of its entry.
#[derive(Debug)]
enum Prefixes {
    /// Few prefixes, deepest first, each with its depth.
    Scan(Vec<ScannedPrefix>),
    /// Many. Boxed: few hosts have this many, and every host would otherwise hold its room.
    Hashed(Box<HashedPrefixes>),
}

#[derive(Debug)]
struct ScannedPrefix {
    prefix: Box<str>,
    /// Its number of components, counted once here rather than on every match.
    depth: u32,
    position: usize,
}

/// Prefixes by text, with bit `d` of `depths` set when some prefix has `d` components.
#[derive(Debug)]
struct HashedPrefixes {
    by_prefix: HashMap<Box<str>, usize, RandomState>,
    depths: u64,
}

impl Default for Prefixes {
    fn default() -> Self {
        Prefixes::Scan(Vec::new())
    }
}

/// Whether the prefix (empty for the whole host) covers the path on a `/` boundary.
fn covers(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.get(..prefix.len()).is_some_and(|head| same_bytes(head.as_bytes(), prefix.as_bytes()))
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

fn depth_of(prefix: &str) -> usize {
    if prefix.is_empty() { 0 } else { prefix.bytes().filter(|&b| b == b'/').count() + 1 }
}

impl Prefixes {
    fn insert(&mut self, prefix: &str, position: usize) {
        if let Prefixes::Scan(list) = self {
            if list.len() < SCAN_LIMIT {
                // At most MAX_PATH_DEPTH.
                let depth = depth_of(prefix) as u32;
                list.push(ScannedPrefix { prefix: prefix.into(), depth, position });
                list.sort_by_key(|p| std::cmp::Reverse(p.depth));
                return;
            }
            let mut hashed = HashedPrefixes { by_prefix: HashMap::default(), depths: 0 };
            for p in list.drain(..) {
                hashed.depths |= 1 << p.depth;
                hashed.by_prefix.insert(p.prefix, p.position);
            }
            *self = Prefixes::Hashed(Box::new(hashed));
        }
        if let Prefixes::Hashed(hashed) = self {
            hashed.depths |= 1 << depth_of(prefix);
            hashed.by_prefix.entry(prefix.into()).or_insert(position);
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Prefixes::Scan(list) if list.is_empty())
    }

    /// Gives back the room grown for insertion: a list of one prefix was allocated for four.
    fn shrink_to_fit(&mut self) {
        match self {
            Prefixes::Scan(list) => list.shrink_to_fit(),
            Prefixes::Hashed(hashed) => hashed.by_prefix.shrink_to_fit(),
        }
    }

    /// The deepest prefix covering `path`, as (depth, entry).
    fn deepest(&self, path: &str) -> Option<(usize, usize)> {
        match self {
            Prefixes::Scan(list) => {
                list.iter().find(|p| covers(&p.prefix, path)).map(|p| (p.depth as usize, p.position))
            }
            Prefixes::Hashed(hashed) => hashed.deepest(path),
        }
    }
}

impl HashedPrefixes {
    /// Looks up the path's first components at each depth in use, in one pass from the left
    /// that stops after the deepest: the deepest that is present wins.
    fn deepest(&self, path: &str) -> Option<(usize, usize)> {
        let mut found = None;
        if self.depths & 1 != 0 {
            found = self.by_prefix.get(&Probe("")).map(|&entry| (0, entry));
        }
        if path.is_empty() {
            return found;
        }
        let deepest_in_use = (u64::BITS - 1 - self.depths.leading_zeros()) as usize;
        let mut start = 0;
        for depth in 1..=deepest_in_use {
            let end = grammar::find_byte(&path[start..], b'/').map_or(path.len(), |i| start + i);
            if self.depths >> depth & 1 == 1
                && let Some(&entry) = self.by_prefix.get(&Probe(&path[..end]))
            {
                found = Some((depth, entry));
            }
            if end == path.len() {
                break;
            }
            start = end + 1;
        }
        found
    }
}

/// Keeps the deeper of two matches; at equal depth the one found first (exact host before
/// wildcard shapes, shapes in specificity order).
fn deeper(best: Option<(usize, usize)>, found: Option<(usize, usize)>) -> Option<(usize, usize)> {
    match (best, found) {
        (Some((best_depth, _)), Some((depth, _))) if depth > best_depth => found,
        (None, found) => found,
        (best, _) => best,
    }
}

impl Index {
    /// Indexes the allow patterns and the deny patterns by position. The policy has refused
    /// duplicate allow patterns; a repeated deny pattern keeps its first position.
    /// An allow pattern given as `None` takes its position but is not indexed (an exact
    /// repository, looked up in [`ExactRepositories`] instead).
    pub(super) fn build<'p>(
        allow: impl IntoIterator<Item = Option<&'p RegistryPattern>>,
        deny: impl IntoIterator<Item = &'p RegistryPattern>,
    ) -> Self {
        let mut index = Index::default();
        let allow = allow.into_iter().map(|p| (p, false));
        let deny = deny.into_iter().map(|p| (Some(p), true));
        let mut positions = (0usize, 0usize);
        let mut hub_aliases = Vec::new();
        for (pattern, is_deny) in allow.chain(deny) {
            let position = if is_deny { &mut positions.1 } else { &mut positions.0 };
            let Some(pattern) = pattern else {
                *position += 1;
                continue;
            };
            Self::insert(index.rules_for(pattern), pattern, is_deny, *position);
            if pattern.host.covers_docker_hub_alias() {
                hub_aliases.push((pattern, is_deny, *position));
            }
            *position += 1;
        }
        // Image hosts are canonical before lookup, so index.docker.io and registry-1.docker.io
        // arrive as docker.io and no wildcard could ever match them: a `*.docker.io` deny rule
        // would deny nothing on Docker Hub. A wildcard that covers one of those names covers
        // Docker Hub, so it is also filed under docker.io, after the exact entries (which win
        // at equal depth).
        let hub = RegistryPattern::parse(crate::image::DOCKER_HUB).expect("docker.io is a registry host");
        for (pattern, is_deny, position) in hub_aliases {
            let rules = index.exact.entry(hub.host.key().into()).or_default();
            Self::insert(rules, pattern, is_deny, position);
        }
        index.wildcards.sort_by_key(|table| table.shape.specificity());
        index.shrink_to_fit();
        index
    }

    /// A policy lives until the next edit, so the room grown while building is given back:
    /// a third of the index at 10,000 entries (benches/RESULTS.md).
    fn shrink_to_fit(&mut self) {
        let tables = std::iter::once(&mut self.exact).chain(self.wildcards.iter_mut().map(|t| &mut t.hosts));
        for table in tables {
            table.shrink_to_fit();
            for rules in table.values_mut() {
                rules.allow.shrink_to_fit();
                rules.deny.shrink_to_fit();
            }
        }
    }

    /// Files a pattern's path under a host's rules, unless an earlier entry has the same path.
    fn insert(rules: &mut HostRules, pattern: &RegistryPattern, is_deny: bool, position: usize) {
        let prefixes = if is_deny { &mut rules.deny } else { &mut rules.allow };
        if prefixes.deepest(&pattern.path).is_none_or(|(depth, _)| depth != pattern.depth()) {
            prefixes.insert(&pattern.path, position);
        }
    }

    fn rules_for(&mut self, pattern: &RegistryPattern) -> &mut HostRules {
        if !pattern.host.is_wildcard() {
            return self.exact.entry(pattern.host.key().into()).or_default();
        }
        let shape = pattern.host.shape();
        let table = match self.wildcards.iter().position(|t| t.shape == shape) {
            Some(i) => i,
            None => {
                self.wildcards.push(ShapeTable { shape, key_lengths: 0, hosts: HashMap::default() });
                self.wildcards.len() - 1
            }
        };
        let table = &mut self.wildcards[table];
        let key = shape.pattern_key(&pattern.host);
        table.key_lengths |= ShapeTable::length_bit(key);
        table.hosts.entry(key.into()).or_default()
    }

    /// The most specific allow and deny entries covering `host` (canonical) and `path`: the
    /// deepest prefix first, and at equal depth the exact host before wildcard hosts.
    pub(super) fn lookup(&self, host: &str, path: &str) -> Matches {
        let mut allow = None;
        let mut deny = None;
        // Most hosts have no deny rule: their empty list is not probed (a call and its set-up
        // on every decision).
        let mut visit = |rules: &HostRules| {
            allow = deeper(allow, rules.allow.deepest(path));
            if !rules.deny.is_empty() {
                deny = deeper(deny, rules.deny.deepest(path));
            }
        };
        if let Some(rules) = self.exact.get(&Probe(host)) {
            visit(rules);
        }
        let mut mask_buf = None;
        for table in &self.wildcards {
            if let Some(rules) = table.shape.key(host, &mut mask_buf).and_then(|key| table.get(key)) {
                visit(rules);
            }
        }
        Matches { allow: allow.map(|(_, e)| e), deny: deny.map(|(_, e)| e) }
    }
}

/// A repository path written into a stack buffer (`library/` + `nginx`).
pub(super) type PathBuf = arrayvec::ArrayString<PATH_BUF_LEN>;

/// Writes `prefix` and `rest` into `buf` as one string. Both are `str`, so unlike a byte
/// buffer, the result needs no UTF-8 check: `str::from_utf8` was a sixth of the decision for a
/// short name like `nginx` (callgrind, `examples/decision_instructions`).
pub(super) fn join_path<'b>(buf: &'b mut PathBuf, (prefix, rest): (&str, &str)) -> Option<&'b str> {
    buf.try_push_str(prefix).ok()?;
    buf.try_push_str(rest).ok()?;
    Some(buf.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(urls: &[&str]) -> Index {
        let patterns: Vec<RegistryPattern> =
            urls.iter().map(|u| RegistryPattern::parse(u).expect("valid url")).collect();
        Index::build(patterns.iter().map(Some), [])
    }

    fn allow(index: &Index, host: &str, path: &str) -> Option<usize> {
        index.lookup(host, path).allow
    }

    #[test]
    fn a_host_holds_little_room() {
        // Every host of the policy has one slot in a table; 10,000 entries have about 5,000.
        assert!(std::mem::size_of::<HostRules>() <= 48, "{}", std::mem::size_of::<HostRules>());
    }

    #[test]
    fn deepest_prefix_wins_and_boundaries_hold() {
        let index = index(&["ghcr.io", "ghcr.io/acme", "ghcr.io/acme/team"]);
        assert_eq!(allow(&index, "ghcr.io", "acme/team/app"), Some(2));
        assert_eq!(allow(&index, "ghcr.io", "acme/app"), Some(1));
        assert_eq!(allow(&index, "ghcr.io", "acme-evil/app"), Some(0));
        assert_eq!(allow(&index, "ghcr.io", "acme"), Some(1));
        assert_eq!(allow(&index, "ghcr.io.evil.io", "acme/app"), None);
    }

    #[test]
    fn many_prefixes_on_one_host_are_hashed_and_agree() {
        let urls: Vec<String> =
            (0..50).map(|i| format!("ghcr.io/org{i}")).chain(["ghcr.io/org7/team".into()]).collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let index = index(&urls);
        assert_eq!(allow(&index, "ghcr.io", "org7/team/app"), Some(50));
        assert_eq!(allow(&index, "ghcr.io", "org7/app"), Some(7));
        assert_eq!(allow(&index, "ghcr.io", "org7-evil/app"), None);
        assert_eq!(allow(&index, "ghcr.io", "org49"), Some(49));
        // A deeper prefix that misses leaves the shallower match standing.
        assert_eq!(allow(&index, "ghcr.io", "org7/teams/app"), Some(7));
        assert_eq!(allow(&index, "ghcr.io", "org7/team"), Some(50));

        // Depths 0 to 3 on one host, each reached or missed.
        let urls: Vec<String> = ["ghcr.io".into(), "ghcr.io/a/b/c".into()]
            .into_iter()
            .chain((0..10).map(|i| format!("ghcr.io/o{i}")))
            .collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let deep = self::index(&urls);
        assert_eq!(allow(&deep, "ghcr.io", "a/b/c/d"), Some(1));
        assert_eq!(allow(&deep, "ghcr.io", "a/b/c"), Some(1));
        assert_eq!(allow(&deep, "ghcr.io", "a/b"), Some(0));
        assert_eq!(allow(&deep, "ghcr.io", "a/b/cd"), Some(0));
        assert_eq!(allow(&deep, "ghcr.io", "o3/x/y/z"), Some(5));
        assert_eq!(allow(&deep, "ghcr.io", "x"), Some(0));
    }

    #[test]
    fn wildcards_over_docker_hub_aliases_cover_docker_hub() {
        let allow = index(&["docker.io/library", "ghcr.io"]);
        let deny: Vec<RegistryPattern> = ["*.docker.io", "*.*.docker.io/x"]
            .iter()
            .map(|u| RegistryPattern::parse(u).expect("valid"))
            .collect();
        let allow_patterns: Vec<RegistryPattern> =
            ["docker.io/library"].iter().map(|u| RegistryPattern::parse(u).expect("valid")).collect();
        let index_with_deny = Index::build(allow_patterns.iter().map(Some), &deny);
        // docker.io is what index.docker.io and registry-1.docker.io become before lookup.
        assert_eq!(index_with_deny.lookup("docker.io", "library/nginx").deny, Some(0));
        assert_eq!(index_with_deny.lookup("ghcr.io", "library/nginx").deny, None);
        assert_eq!(allow.lookup("docker.io", "library/nginx").deny, None);
    }

    #[test]
    fn exact_hosts_beat_wildcards_at_equal_depth() {
        let index = index(&["*.azurecr.io", "acme.azurecr.io", "*.azurecr.io/team", "a.*.example.com"]);
        assert_eq!(allow(&index, "acme.azurecr.io", "app"), Some(1));
        assert_eq!(allow(&index, "other.azurecr.io", "app"), Some(0));
        // Never a port the pattern lacks, never a longer last label (one label per `*` below).
        assert_eq!(allow(&index, "other.azurecr.io:5000", "app"), None);
        assert_eq!(allow(&index, "other.azurecr.iox", "app"), None);
        assert_eq!(allow(&index, "acme.azurecr.io", "team/app"), Some(2));
        assert_eq!(allow(&index, "a.b.azurecr.io", "app"), None);
        assert_eq!(allow(&index, "azurecr.io", "app"), None);
        assert_eq!(allow(&index, "a.b.example.com", "app"), Some(3));
        assert_eq!(allow(&index, "b.b.example.com", "app"), None);
    }

    #[test]
    fn same_bytes_agrees_with_equality_at_every_length_and_position() {
        let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..text.len() {
            let a = &text[..len];
            assert!(same_bytes(a, a), "{len}");
            assert!(!same_bytes(a, &text[..len + 1]), "{len}");
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same_bytes(a, &b), "length {len}, byte {at}");
            }
        }
    }

    #[test]
    fn lookups_compare_the_whole_key() {
        // Keys of the same length that differ in one byte, in each of the compare's cases.
        let index =
            index(&["ab.io/x", "abcdefg.io/x", "abcdefghijklmnopq.io/x", "abcdefghijklmnopq.io/xy/z"]);
        assert_eq!(allow(&index, "ab.io", "x"), Some(0));
        assert_eq!(allow(&index, "ac.io", "x"), None);
        assert_eq!(allow(&index, "abcdefg.io", "x/y"), Some(1));
        assert_eq!(allow(&index, "abcdefh.io", "x"), None);
        assert_eq!(allow(&index, "abcdefghijklmnopq.io", "x"), Some(2));
        assert_eq!(allow(&index, "abcdefghijklmnopr.io", "x"), None);
        assert_eq!(allow(&index, "abcdefghijklmnopq.io", "xy/z/w"), Some(3));
        assert_eq!(allow(&index, "abcdefghijklmnopq.io", "xz/z"), None);
    }
}
