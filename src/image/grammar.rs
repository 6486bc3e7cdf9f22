//! The reference grammar of `distribution/reference` (`regexp.go`), as byte-level predicates.
//! Public so that tools and the upstream test vectors can check single productions.
//!
//! Each function is one named production of the Go grammar; the comment above it quotes the
//! production. Go's `\w` is ASCII-only and its `$` is the end of the text, so a trailing newline
//! never matches: byte predicates give both for free.

/// Position of the first `byte` in `text`. A byte loop: `str::find(char)` pays for a UTF-8
/// searcher, which is most of the parse time on strings this short (measured with callgrind).
pub fn find_byte(text: &str, byte: u8) -> Option<usize> {
    text.bytes().position(|b| b == byte)
}

/// Position of the last `byte` in `text`.
pub fn rfind_byte(text: &str, byte: u8) -> Option<usize> {
    text.bytes().rposition(|b| b == byte)
}

/// `text` split at the first `byte`, without it.
pub fn split_at_byte(text: &str, byte: u8) -> Option<(&str, &str)> {
    find_byte(text, byte).map(|i| (&text[..i], &text[i + 1..]))
}

/// `[a-z0-9]`
fn is_lower_alphanumeric(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

/// `pathComponent = [a-z0-9]+ (?:(?:[._]|__|[-]+)[a-z0-9]+)*`
pub fn is_path_component(component: &str) -> bool {
    scan_path(component.as_bytes(), false)
}

/// `remoteName = pathComponent ('/' pathComponent)*`
pub fn is_remote_name(name: &str) -> bool {
    scan_path(name.as_bytes(), true)
}

/// One pass over path components (and the `/` between them when `components` is set).
fn scan_path(bytes: &[u8], components: bool) -> bool {
    let mut i = 0;
    loop {
        let run_start = i;
        while i < bytes.len() && is_lower_alphanumeric(bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        match bytes[i] {
            b'/' if components => i += 1,
            b'.' => i += 1,
            b'_' => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `domainAndPort = host (':' [0-9]+)?` where `host` is a `domainName` (labels of
/// `[a-zA-Z0-9]` and inner `-`, joined by `.`) or an IPv6 address in brackets
/// (`'[' [a-fA-F0-9:]+ ']'`). One pass, no allocation.
pub fn is_domain_and_port(domain: &str) -> bool {
    let bytes = domain.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'[') {
        i = 1;
        while i < bytes.len() && (bytes[i].is_ascii_hexdigit() || bytes[i] == b':') {
            i += 1;
        }
        if i == 1 || bytes.get(i) != Some(&b']') {
            return false;
        }
        i += 1;
    } else {
        loop {
            // A label: alphanumeric first and last, `-` allowed inside.
            if !bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                return false;
            }
            let mut last = bytes[i];
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
                last = bytes[i];
                i += 1;
            }
            if last == b'-' {
                return false;
            }
            if bytes.get(i) != Some(&b'.') {
                break;
            }
            i += 1;
        }
    }
    match bytes.get(i) {
        None => true,
        Some(b':') => bytes.len() > i + 1 && bytes[i + 1..].iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// `tag = [\w][\w.-]{0,127}`
pub fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(&bytes[0])
        && bytes[1..].iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// `digest = [A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}`
///
/// The reference grammar is looser than go-digest; `digest::validate` checks the rest.
pub fn is_reference_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = split_at_byte(digest, b':') else {
        return false;
    };
    let algorithm_ok = algorithm.as_bytes().split(|b| b"-_+.".contains(b)).all(|part| {
        part.first().is_some_and(u8::is_ascii_alphabetic) && part.iter().all(u8::is_ascii_alphanumeric)
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `identifier = ^[a-f0-9]{64}$`, an image ID.
pub fn is_identifier(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits `name[:tag][@digest]`, checking tag and digest against the grammar.
///
/// A tag can contain neither `/` nor `:`, so the tag separator is the last `:` with no `/` after
/// it; any earlier `:` belongs to a host's port. Nothing but the digest follows `@`.
pub fn split_tag_and_digest(text: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let (before_digest, digest) = match split_at_byte(text, b'@') {
        Some((before, digest)) => (before, Some(digest)),
        None => (text, None),
    };
    if digest.is_some_and(|digest| !is_reference_digest(digest)) {
        return None;
    }
    let (name, tag) = match rfind_byte(before_digest, b':') {
        Some(colon) if find_byte(&before_digest[colon..], b'/').is_none() => {
            (&before_digest[..colon], Some(&before_digest[colon + 1..]))
        }
        _ => (before_digest, None),
    };
    if tag.is_some_and(|tag| !is_tag(tag)) {
        return None;
    }
    Some((name, tag, digest))
}

/// `name = (domainAndPort '/')? remoteName`, with Go's leftmost-first choice: the first
/// component is the domain whenever it fits the host grammar and the rest is a valid path.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    if let Some((domain, path)) = split_at_byte(name, b'/')
        && is_domain_and_port(domain)
        && is_remote_name(path)
    {
        return Some((domain, path));
    }
    is_remote_name(name).then_some(("", name))
}

/// The anchored `reference` regexp: `^(name)(?::(tag))?(?:@(digest))?$`.
pub fn match_reference(text: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let (name, tag, digest) = split_tag_and_digest(text)?;
    split_name(name)?;
    Some((name, tag, digest))
}

/// Capital letters that Rust's Unicode tables (17.0 in Rust 1.95) lower-case and Go's (15.0 in
/// Go 1.26) do not, because they were added in Unicode 16.0 and 17.0. Found by comparing
/// `unicode.ToLower` with `char::to_lowercase` over every code point; `tests/go_differential.rs`
/// fails when a toolchain upgrade makes the two differ again. Sorted, for binary search.
const UPPER_ONLY_IN_RUST: [u32; 55] = [
    0x1C89, 0xA7CB, 0xA7CC, 0xA7CE, 0xA7D2, 0xA7D4, 0xA7DA, 0xA7DC, 0x10D50, 0x10D51, 0x10D52, 0x10D53,
    0x10D54, 0x10D55, 0x10D56, 0x10D57, 0x10D58, 0x10D59, 0x10D5A, 0x10D5B, 0x10D5C, 0x10D5D, 0x10D5E,
    0x10D5F, 0x10D60, 0x10D61, 0x10D62, 0x10D63, 0x10D64, 0x10D65, 0x16EA0, 0x16EA1, 0x16EA2, 0x16EA3,
    0x16EA4, 0x16EA5, 0x16EA6, 0x16EA7, 0x16EA8, 0x16EA9, 0x16EAA, 0x16EAB, 0x16EAC, 0x16EAD, 0x16EAE,
    0x16EAF, 0x16EB0, 0x16EB1, 0x16EB2, 0x16EB3, 0x16EB4, 0x16EB5, 0x16EB6, 0x16EB7, 0x16EB8,
];

/// Go's `unicode.ToLower` of one rune: the simple case mapping, by Go's tables.
fn go_lower(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    if UPPER_ONLY_IN_RUST.binary_search(&u32::from(c)).is_ok() {
        return c;
    }
    c.to_lowercase().next().unwrap_or(c)
}

/// Go's `strings.ToLower`, rune by rune with the simple case mapping. Only error paths use it.
pub fn to_lower(text: &str) -> String {
    text.chars().map(go_lower).collect()
}

/// Go's `strings.ToLower(s) != s`, without allocating in the common ASCII case.
pub fn has_upper(text: &str) -> bool {
    for byte in text.bytes() {
        if byte.is_ascii_uppercase() {
            return true;
        }
        if !byte.is_ascii() {
            return text.chars().any(|c| go_lower(c) != c);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_follow_the_go_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a-b.c_d__e"] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", "a.", ".a", "a..b", "a___b", "a_-b", "A", "a/b"] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn case_follows_go_tables() {
        assert!(has_upper("Ꞷ") && has_upper("É") && has_upper("A"));
        // U+A7DA is upper case to Unicode 16, not to Go's Unicode 15 tables.
        assert!(!has_upper("\u{A7DA}nginx") && !has_upper("ng\u{10D50}inx"));
        assert_eq!(to_lower("\u{A7DA}É"), "\u{A7DA}é");
        assert!(UPPER_ONLY_IN_RUST.windows(2).all(|pair| pair[0] < pair[1]), "sorted");
    }

    #[test]
    fn hosts_and_ports() {
        for ok in ["localhost", "a", "Example.COM:5000", "[::1]", "[2001:db8::1]:443", "1.2.3.4:0"] {
            assert!(is_domain_and_port(ok), "{ok}");
        }
        for bad in ["", "a:", ":5000", "-a.com", "a-.com", "a..com", "[]", "[fe80::1%eth0]", "a:b"] {
            assert!(!is_domain_and_port(bad), "{bad}");
        }
    }
}
