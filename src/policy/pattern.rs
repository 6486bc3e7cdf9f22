//! Registry URLs as the matcher compares them: a canonical host (maybe with wildcard labels) and a
//! repository path prefix.
//!
//! Policy hosts and image hosts go through the same [`canonical_host`], so the two can never
//! disagree about case, `:443` or Docker Hub's aliases.

use std::fmt;

use crate::image::grammar;

/// Room for the longest host the matcher needs to look at: a 253-character DNS name with a port.
pub const HOST_BUF_LEN: usize = 272;
/// Deepest path prefix a policy entry may name; depths are kept as bits of a `u64`.
pub const MAX_PATH_DEPTH: usize = 63;
/// A wildcard entry must fix at least this many labels: `*.azurecr.io`, never `*.io`.
const MIN_FIXED_LABELS: usize = 2;
/// Hosts that are Docker Hub under another name.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// Whether `host` is canonical already, as most image hosts are, so that the hot path can skip
/// [`canonical_host`]'s copy.
pub fn is_canonical_host(host: &str) -> bool {
    // A fold with no early exit, which the compiler turns into a vector loop; `any` stops at
    // the first upper-case byte, and so went a byte at a time over every image's host.
    !host.bytes().fold(false, |upper, b| upper | b.is_ascii_uppercase())
        && !host.ends_with(":443")
        && !DOCKER_HUB_ALIASES.contains(&host)
}

/// Writes the canonical form of a registry host into `buf`: ASCII lower case, without `:443`
/// (the same HTTPS endpoint as no port), with Docker Hub's aliases folded into `docker.io`.
/// `None` when the host is too long to be any policy's host.
pub fn canonical_host<'b>(host: &str, buf: &'b mut [u8; HOST_BUF_LEN]) -> Option<&'b str> {
    let bytes = host.as_bytes();
    let target = buf.get_mut(..bytes.len())?;
    for (to, from) in target.iter_mut().zip(bytes) {
        *to = from.to_ascii_lowercase();
    }
    let mut len = bytes.len();
    if buf[..len].ends_with(b":443") {
        len -= 4;
    }
    if DOCKER_HUB_ALIASES.iter().any(|alias| alias.as_bytes() == &buf[..len]) {
        let hub = crate::image::DOCKER_HUB.as_bytes();
        buf[..hub.len()].copy_from_slice(hub);
        len = hub.len();
    }
    std::str::from_utf8(&buf[..len]).ok()
}

/// A policy entry's host: exact (`ghcr.io`, `registry.local:5000`, `[::1]:5000`) or with
/// wildcard labels (`*.azurecr.io`), each `*` standing for exactly one DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// Canonical `name[:port]`, with `*` labels as written: the matcher's hash key.
    key: Box<str>,
    /// Bit `i` is set when label `i`, counted from the right (the TLD is 0), is a wildcard.
    wildcards: u64,
    /// Length of the name part of `key`, before any `:port`. Sixteen bits, as `labels`: a key
    /// is at most [`HOST_BUF_LEN`] bytes, and a policy holds one pattern per entry.
    name_len: u16,
    labels: u16,
}

impl HostPattern {
    fn parse(host: &str) -> Result<Self, String> {
        if host.is_empty() || host == "*" {
            return Err("names no registry host; an entry that allows every registry is not allowed".into());
        }
        let mut buf = [0; HOST_BUF_LEN];
        let key = canonical_host(host, &mut buf).ok_or("is longer than any registry host can be")?;
        let is_ipv6 = key.starts_with('[');
        let name_len = if is_ipv6 {
            grammar::find_byte(key, b']').map_or(key.len(), |end| end + 1)
        } else {
            grammar::find_byte(key, b':').unwrap_or(key.len())
        };
        let (name, port) = key.split_at(name_len);
        if !port.is_empty() {
            let digits = &port[1..];
            if !digits.bytes().all(|b| b.is_ascii_digit()) || !digits.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(format!("has port {digits:?}, which is not a port number (1-65535)"));
            }
        }
        let mut labels = 0;
        let mut wildcards = 0u64;
        if !is_ipv6 {
            // Bytes, not `str::rsplit`, whose char searcher costs more than the rest of the parse.
            for (from_right, label) in name.as_bytes().rsplit(|&b| b == b'.').enumerate() {
                labels += 1;
                if label == b"*" {
                    if from_right >= 64 {
                        return Err("has too many labels".into());
                    }
                    wildcards |= 1 << from_right;
                } else if label.contains(&b'*') {
                    let label = String::from_utf8_lossy(label);
                    return Err(format!(
                        "has {label:?}: a wildcard must be a whole label, as in *.example.com"
                    ));
                }
            }
        } else {
            if grammar::find_byte(name, b'*').is_some() {
                return Err(format!("has {name:?}: a wildcard must be a whole label, as in *.example.com"));
            }
            labels = 1;
        }
        if wildcards == 0 {
            if !grammar::is_domain_and_port(key) {
                return Err("is not a valid host name[:port]".into());
            }
            return HostPattern::new(key, name_len, wildcards, labels);
        }
        let fixed = labels - wildcards.count_ones() as usize;
        if fixed < MIN_FIXED_LABELS {
            return Err(format!(
                "is too broad: a wildcard host must fix at least {MIN_FIXED_LABELS} labels, as in *.azurecr.io"
            ));
        }
        // Check the shape with each wildcard standing in for a one-letter label.
        let as_host = key.replace('*', "x");
        if !grammar::is_domain_and_port(&as_host) {
            return Err("is not a valid host name[:port]".into());
        }
        let name_labels: Vec<&str> = name.split('.').collect();
        if let Some(suffix) = public_suffix_after_wildcard(&name_labels) {
            return Err(format!(
                "is too broad: {suffix} is a public suffix, so the * before it is any domain anyone can register"
            ));
        }
        HostPattern::new(key, name_len, wildcards, labels)
    }

    fn new(key: &str, name_len: usize, wildcards: u64, labels: usize) -> Result<Self, String> {
        let too_long = |_| "is longer than any registry host can be".to_string();
        Ok(HostPattern {
            key: key.into(),
            wildcards,
            name_len: u16::try_from(name_len).map_err(too_long)?,
            labels: u16::try_from(labels).map_err(too_long)?,
        })
    }

    /// Whether a canonical host is this one, or fits this wildcard.
    pub fn matches(&self, host: &str) -> bool {
        if !self.is_wildcard() {
            return *self.key == *host;
        }
        let mut buf = [0; HOST_BUF_LEN];
        self.shape().mask(host, &mut buf) == Some(&*self.key)
    }

    /// Whether this wildcard covers one of Docker Hub's other names (`*.docker.io` covers
    /// `index.docker.io`), and so Docker Hub itself.
    pub fn covers_docker_hub_alias(&self) -> bool {
        self.is_wildcard() && DOCKER_HUB_ALIASES.iter().any(|alias| self.matches(alias))
    }

    /// The canonical `name[:port]`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The host name without its port.
    pub fn name(&self) -> &str {
        &self.key[..usize::from(self.name_len)]
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcards != 0
    }

    /// Which labels are wildcards, and how many labels there are: hosts of one shape share a
    /// lookup in the matcher.
    pub fn shape(&self) -> WildcardShape {
        let labels = usize::from(self.labels);
        let count = self.wildcards.count_ones() as usize;
        let leading = ((1u64 << count) - 1) << (labels - count);
        let leading = (self.wildcards == leading).then_some(count);
        WildcardShape { labels, wildcards: self.wildcards, leading }
    }
}

/// The labels after a host's last wildcard, when they are a public suffix (`co.uk`,
/// `github.io`): then the wildcard stands for a registrable domain, which anyone can own. A
/// suffix the list does not know counts only as its last label, as browsers treat it.
fn public_suffix_after_wildcard(labels: &[&str]) -> Option<String> {
    let last_wildcard = labels.iter().rposition(|label| *label == "*")?;
    let tail = labels[last_wildcard + 1..].join(".");
    (psl::suffix_str(&tail) == Some(tail.as_str())).then_some(tail)
}

/// The positions of a wildcard host's `*` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WildcardShape {
    labels: usize,
    wildcards: u64,
    /// [`WildcardShape::leading_wildcards`], worked out once: it is asked on every decision.
    leading: Option<usize>,
}

impl WildcardShape {
    /// More specific shapes first: fewer wildcards, then wildcards further left (`*.b.example.com`
    /// before `a.*.example.com`). Exact hosts come before every wildcard shape.
    pub fn specificity(&self) -> (u32, std::cmp::Reverse<u64>) {
        (self.wildcards.count_ones(), std::cmp::Reverse(self.wildcards))
    }

    /// Writes `host` (canonical) with this shape's labels replaced by `*`, or `None` when the
    /// host has another number of labels.
    pub fn mask<'b>(&self, host: &str, buf: &'b mut [u8; HOST_BUF_LEN]) -> Option<&'b str> {
        if host.starts_with('[') {
            return None;
        }
        let (name, port) = host.split_at(grammar::find_byte(host, b':').unwrap_or(host.len()));
        if label_count(name) != self.labels {
            return None;
        }
        // Image hosts are not length-checked before they get here (a policy host never exceeds
        // the buffer, an image host may): every write is bounds-checked, and a host that does
        // not fit is no policy's host.
        let mut len = 0;
        let mut write = |text: &[u8]| {
            let target = buf.get_mut(len..len + text.len())?;
            target.copy_from_slice(text);
            len += text.len();
            Some(())
        };
        for (from_left, label) in name.as_bytes().split(|&b| b == b'.').enumerate() {
            if from_left > 0 {
                write(b".")?;
            }
            let from_right = self.labels - 1 - from_left;
            let wildcard = from_right < 64 && self.wildcards & (1 << from_right) != 0;
            write(if wildcard { b"*" } else { label })?;
        }
        write(port.as_bytes())?;
        std::str::from_utf8(&buf[..len]).ok()
    }

    /// How many leftmost labels are wildcards, when those are the only wildcards (`*.azurecr.io`,
    /// `*.*.corp.example`): then a host's key for this shape is a suffix of the host itself,
    /// and needs no rewriting.
    pub fn leading_wildcards(&self) -> Option<usize> {
        self.leading
    }

    /// The key under which this shape's entries for `host` would be stored: the host minus its
    /// leading wildcard labels, or the host with `*` in the wildcard labels. `None` when the
    /// host cannot match this shape. `buf` is initialised only when the host must be rewritten.
    ///
    /// For leading wildcards the host's labels are not counted: a suffix equal to a stored key
    /// has that key's labels, so the host has the shape's. Counting them walked every image's
    /// whole host for every shape, a quarter of a decision (callgrind, criterion's image mix).
    pub fn key<'s>(&self, host: &'s str, buf: &'s mut Option<[u8; HOST_BUF_LEN]>) -> Option<&'s str> {
        match self.leading_wildcards() {
            Some(skip) => suffix_after_labels(host, skip),
            None => self.mask(host, buf.get_or_insert([0; HOST_BUF_LEN])),
        }
    }

    /// The stored key of a wildcard host pattern of this shape (see [`WildcardShape::key`]).
    pub fn pattern_key<'p>(&self, pattern: &'p HostPattern) -> &'p str {
        match self.leading_wildcards() {
            Some(skip) => &pattern.key[2 * skip..],
            None => &pattern.key,
        }
    }
}

/// What follows the first `skip` labels of a host (port included), or `None` when it has no
/// more: `suffix_after_labels("acme.azurecr.io", 1)` is `azurecr.io`. The caller compares it
/// with keys of a known label count.
fn suffix_after_labels(host: &str, skip: usize) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    // A byte loop, not `memchr`: a first label is a few bytes long, and memchr's set-up cost
    // more than the loop (callgrind).
    let mut start = 0;
    for _ in 0..skip {
        start += grammar::find_byte(host.get(start..)?, b'.')? + 1;
    }
    // A dot is never in a port, so every skipped label was part of the name.
    Some(&host[start..])
}

/// Number of DNS labels of a host name (without port).
fn label_count(name: &str) -> usize {
    name.bytes().filter(|&b| b == b'.').count() + 1
}

/// A policy URL: host pattern plus repository path prefix (`ghcr.io/acme` covers
/// `ghcr.io/acme/...`, never `ghcr.io/acme-evil/...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryPattern {
    pub host: HostPattern,
    /// Path prefix without leading or trailing `/`; empty for the whole host.
    pub path: Box<str>,
}

impl RegistryPattern {
    /// Parses a policy `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        // Byte searches rather than `str` searches by `char`: a policy load parses every
        // entry's url, and the char searchers were 4 % of a 10,000-entry JSON load.
        if url.trim().is_empty() {
            return Err("is empty; an entry that allows every registry is not allowed".into());
        }
        let has_white_space = if url.is_ascii() {
            url.bytes().any(|b| b.is_ascii_whitespace() || b == 0x0B)
        } else {
            url.chars().any(char::is_whitespace)
        };
        if has_white_space {
            return Err("contains white space".into());
        }
        let without_scheme = ["https://", "http://"]
            .iter()
            .find_map(|scheme| {
                url.get(..scheme.len()).filter(|s| s.eq_ignore_ascii_case(scheme)).map(|s| &url[s.len()..])
            })
            .unwrap_or(url);
        // Every `:` is ASCII, so the byte after it starts a char.
        let mut colons = memchr::memchr_iter(b':', without_scheme.as_bytes());
        if colons.any(|at| without_scheme[at + 1..].starts_with("//")) {
            return Err("has a scheme other than https:// or http://".into());
        }
        let trimmed = without_scheme.strip_suffix('/').unwrap_or(without_scheme);
        let (host, path) = match grammar::find_byte(trimmed, b'/') {
            Some(slash) => (&trimmed[..slash], &trimmed[slash + 1..]),
            None => (trimmed, ""),
        };
        let host = HostPattern::parse(host)?;
        if !path.is_empty() {
            if grammar::find_byte(path, b'*').is_some() {
                return Err("has a wildcard in its path; a path is a prefix already, so ghcr.io/acme covers ghcr.io/acme/*".into());
            }
            if path.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err("has upper case in its path; repository paths are lower case".into());
            }
            if !grammar::is_remote_name(path) {
                return Err(format!(
                    "has path {path:?}, which is not a repository path (lower-case components separated by /)"
                ));
            }
            if path_depth(path) > MAX_PATH_DEPTH {
                return Err(format!("has a path deeper than {MAX_PATH_DEPTH} components"));
            }
        }
        Ok(RegistryPattern { host, path: path.into() })
    }

    /// Number of path components (0 for the whole host).
    pub fn depth(&self) -> usize {
        if self.path.is_empty() { 0 } else { path_depth(&self.path) }
    }

    /// Whether `text` is exactly this pattern's canonical form (its `Display`), as most policy
    /// urls are: then a check for repeated entries can borrow the text instead of writing the
    /// pattern out.
    pub fn is_written_as(&self, text: &str) -> bool {
        match text.strip_prefix(self.host.key()) {
            Some("") => self.path.is_empty(),
            Some(rest) => !self.path.is_empty() && rest.strip_prefix('/') == Some(&*self.path),
            None => false,
        }
    }
}

/// Components in a non-empty repository path.
fn path_depth(path: &str) -> usize {
    path.bytes().filter(|&b| b == b'/').count() + 1
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.host.key())?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(url: &str) -> String {
        RegistryPattern::parse(url).map(|p| p.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn other_schemes_are_refused_and_ports_are_not_mistaken_for_one() {
        for url in ["ftp://ghcr.io/acme", "oci://ghcr.io", "https://ftp://ghcr.io", "ghcr.io/acme://x"] {
            let error = RegistryPattern::parse(url).expect_err(url);
            assert!(error.contains("scheme other than"), "{url}: {error}");
        }
        for url in ["registry.example:5000/team", "https://registry.example:5000", "[::1]:5000/x"] {
            assert!(RegistryPattern::parse(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn canonical_text_is_recognised_exactly() {
        for url in [
            "ghcr.io/acme",
            "ghcr.io",
            "ghcr.io/",
            "GHCR.io/acme",
            "https://ghcr.io/acme",
            "ghcr.io/acme/",
            "ghcr.io/acm",
        ] {
            let pattern = RegistryPattern::parse(url).expect(url);
            assert_eq!(pattern.is_written_as(url), pattern.to_string() == url, "{url}");
        }
        let acme = RegistryPattern::parse("ghcr.io/acme").expect("valid");
        for other in ["ghcr.io", "ghcr.io/acme/x", "ghcr.io/acmex", "ghcr.io/acme/", "ghcr.iox/acme"] {
            assert!(!acme.is_written_as(other), "{other}");
        }
    }

    #[test]
    fn urls_are_canonical() {
        assert_eq!(canonical("https://GHCR.io/acme/"), "ghcr.io/acme");
        assert_eq!(canonical("registry.example.com:443/team"), "registry.example.com/team");
        assert_eq!(canonical("index.docker.io/library"), "docker.io/library");
        assert_eq!(canonical("registry-1.docker.io"), "docker.io");
        assert_eq!(canonical("[::1]:5000/x"), "[::1]:5000/x");
        assert_eq!(canonical("*.AzureCR.io"), "*.azurecr.io");
    }

    #[test]
    fn allow_everything_entries_are_refused() {
        for url in ["", " ", "*", "https://", "*/", "*.io", "*.*.com", "foo*.com", "ghcr.io/*", "a b.com"] {
            assert!(RegistryPattern::parse(url).is_err(), "{url:?} must be refused");
        }
    }

    #[test]
    fn wildcards_over_a_public_suffix_are_refused() {
        for url in
            ["*.co.uk", "*.github.io", "registry.*.co.uk", "a.*.io", "*.*.github.io", "*.s3.amazonaws.com"]
        {
            let error = RegistryPattern::parse(url).expect_err(url);
            assert!(error.contains("public suffix"), "{url}: {error}");
        }
        for url in [
            "*.azurecr.io",
            "*.acme.co.uk",
            "*.acme.github.io",
            "123456789012.dkr.ecr.*.amazonaws.com",
            "*.corp.example:5000",
        ] {
            assert!(RegistryPattern::parse(url).is_ok(), "{url} is one organisation's");
        }
    }

    #[test]
    fn masks_put_wildcards_where_the_shape_has_them() {
        let shape = RegistryPattern::parse("*.azurecr.io").expect("valid").host.shape();
        let mut buf = [0; HOST_BUF_LEN];
        assert_eq!(shape.mask("acme.azurecr.io", &mut buf), Some("*.azurecr.io"));
        assert_eq!(shape.mask("a.b.azurecr.io", &mut buf), None);
        let ported = RegistryPattern::parse("*.corp.example:5000").expect("valid").host.shape();
        assert_eq!(ported.mask("reg.corp.example:5000", &mut buf), Some("*.corp.example:5000"));
    }

    #[test]
    fn masks_refuse_hosts_longer_than_the_buffer() {
        // The ECR shape, whose wildcard is not the first label, masks by rewriting the host.
        let shape =
            RegistryPattern::parse("123456789012.dkr.ecr.*.amazonaws.com").expect("valid").host.shape();
        let mut buf = [0; HOST_BUF_LEN];
        let long_label = "a".repeat(HOST_BUF_LEN);
        for host in [
            format!("{long_label}.dkr.ecr.us-east-1.amazonaws.com"),
            format!("123456789012.dkr.ecr.x.amazonaws.com:{}", "5".repeat(HOST_BUF_LEN)),
        ] {
            assert_eq!(shape.mask(&host, &mut buf), None, "{} bytes", host.len());
        }
        // A long label where the wildcard is still masks to a short key: `*` is any one label.
        let long_wildcard_label = format!("123456789012.dkr.ecr.{long_label}.amazonaws.com");
        assert_eq!(shape.mask(&long_wildcard_label, &mut buf), Some("123456789012.dkr.ecr.*.amazonaws.com"));
        assert_eq!(
            shape.mask("123456789012.dkr.ecr.us-east-1.amazonaws.com", &mut buf),
            Some("123456789012.dkr.ecr.*.amazonaws.com")
        );
    }
}
