//! A one-pass reader for the shapes nearly every Pod image has: lower-case host and path, an
//! optional tag, an optional sha256 digest. Anything else (upper case, IPv6 hosts, odd digests,
//! image-ID look-alikes, names at the length limit) is declined, and the exact port of the Go
//! parser decides it. A property test holds the two to the same answer.
//!
//! It exists because the exact port runs each Go production as its own pass; reading the common
//! case in one pass roughly halves the cost of a decision (benches/RESULTS.md).

use super::{DEFAULT_TAG, DOCKER_HUB, PATH_MAX_LEN, Reference};

/// The Docker Hub official-image prefix, counted toward the path length.
const OFFICIAL_PREFIX_LEN: usize = "library/".len();
const SHA256_PREFIX: &str = "sha256:";

/// `[a-z0-9]`: the runs of a path component.
const ALNUM: u8 = 1;
/// `[_.-]`: with [`ALNUM`], the bytes of a lower-case tag.
const TAG_PUNCT: u8 = 2;
/// `[0-9a-f]`: the digits of a lower-case hex digest.
const HEX: u8 = 4;
/// `[a-z0-9-]`: the bytes of a host label.
const HOST_LABEL: u8 = 8;

/// Byte classes, one table load per byte: the chains of range tests they replace were a third
/// of a parse (callgrind, `examples/decision_instructions`).
static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0; 256];
    let mut byte = 0u8;
    loop {
        let mut class = 0;
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() {
            class |= ALNUM;
        }
        if matches!(byte, b'_' | b'.' | b'-') {
            class |= TAG_PUNCT;
        }
        if byte.is_ascii_digit() || matches!(byte, b'a'..=b'f') {
            class |= HEX;
        }
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' {
            class |= HOST_LABEL;
        }
        table[byte as usize] = class;
        if byte == u8::MAX {
            return table;
        }
        byte += 1;
    }
}

fn is(class: u8, byte: u8) -> bool {
    CLASS[byte as usize] & class != 0
}

/// Whether every byte is of `class` (a single class), eight at a time: one AND of their table
/// entries and one branch per eight bytes, where a byte loop branches on each. Used for the
/// 64 digits of a digest; for host labels and path runs, mostly shorter than eight bytes, the
/// extra test cost more than it saved (callgrind).
fn all_of_class(bytes: &[u8], class: u8) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    let words = chunks.by_ref().all(|chunk| chunk.iter().fold(class, |all, &b| all & CLASS[b as usize]) != 0);
    words && chunks.remainder().iter().all(|&b| is(class, b))
}

/// Reads a common-shaped image with `ParseDockerRef` semantics, or `None` to decline.
pub(super) fn parse(image: &str) -> Option<Reference<'_>> {
    let bytes = image.as_bytes();
    // A 64-character string may be an image ID; leave it to the exact parser.
    if bytes.is_empty() || bytes.len() == 64 {
        return None;
    }
    let (domain, short_name, remote_start) = match first_component(bytes) {
        Some(first) if first.looks_like_host => {
            let host = &image[..first.end];
            if !first.plain_host || host == "index.docker.io" {
                return None;
            }
            (host, false, first.end + 1)
        }
        _ => (DOCKER_HUB, true, 0),
    };

    // The path: lower-case components of [a-z0-9] runs joined by `.`, `_`, `__` or `-`s, up to
    // a `:` (tag), `@` (digest) or the end.
    let mut i = remote_start;
    let mut nested = false;
    loop {
        let run_start = i;
        while i < bytes.len() && is(ALNUM, bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return None;
        }
        match bytes.get(i) {
            None | Some(b':') | Some(b'@') => break,
            Some(b'/') => {
                nested = true;
                i += 1;
            }
            Some(b'.') => i += 1,
            Some(b'_') => i += if bytes.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            Some(b'-') => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            Some(_) => return None,
        }
    }
    let remote = &image[remote_start..i];
    let official = domain == DOCKER_HUB && !nested;
    let path_len = remote.len() + if official { OFFICIAL_PREFIX_LEN } else { 0 };
    if path_len > PATH_MAX_LEN {
        return None;
    }

    let mut tag = None;
    if bytes.get(i) == Some(&b':') {
        let start = i + 1;
        i = start;
        while i < bytes.len() && is(ALNUM | TAG_PUNCT, bytes[i]) {
            i += 1;
        }
        // A tag is at least one byte and starts with a word character: `nginx:@sha256:...`
        // has an empty tag, which Go refuses.
        let first_ok = i > start && bytes[start] != b'.' && bytes[start] != b'-';
        if !first_ok || i - start > 128 {
            return None;
        }
        tag = Some(&image[start..i]);
    }
    let mut digest = None;
    if bytes.get(i) == Some(&b'@') {
        let text = &image[i + 1..];
        let hex = text.strip_prefix(SHA256_PREFIX)?;
        if hex.len() != 64 || !all_of_class(hex.as_bytes(), HEX) {
            return None;
        }
        digest = Some(text);
        i = bytes.len();
    }
    if i != bytes.len() {
        return None;
    }
    // `sha256:<hex>` would be an image ID to containerd; leave those to the exact parser.
    if short_name && official && matches!(remote, "sha256" | "sha384" | "sha512") {
        return None;
    }
    let tag = match digest {
        Some(_) => None,
        None => Some(tag.unwrap_or(DEFAULT_TAG)),
    };
    Some(Reference { domain, remote, official, tag, digest, short_name })
}

/// The text before an image's first `/`, read in one pass.
struct FirstComponent {
    /// Where the `/` is.
    end: usize,
    /// Go's `splitDockerDomain` takes it for a host: it holds a `.` or a `:`, or is `localhost`.
    looks_like_host: bool,
    /// It is a lower-case `name[:port]`, the only host shape read here: labels of `[a-z0-9-]`
    /// that neither start nor end with `-`, joined by `.`, and a port of one or more digits.
    plain_host: bool,
}

/// The first component of an image, or `None` when it has no `/` (and so no host). Read a label
/// at a time: a table test per byte inside a label, the few separators handled between.
fn first_component(bytes: &[u8]) -> Option<FirstComponent> {
    let mut separated = false;
    let mut plain = true;
    let mut i = 0;
    loop {
        let label_start = i;
        while i < bytes.len() && is(HOST_LABEL, bytes[i]) {
            i += 1;
        }
        let label = &bytes[label_start..i];
        plain &= label.first().is_some_and(|&b| b != b'-') && label.last().is_some_and(|&b| b != b'-');
        match bytes.get(i) {
            Some(b'.') => {
                separated = true;
                i += 1;
            }
            Some(b':') => {
                separated = true;
                let port_start = i + 1;
                i = port_start;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                plain &= i > port_start;
                break;
            }
            _ => break,
        }
    }
    // Anything but the `/` here is not a plain host: read on to the `/`, noting separators.
    if bytes.get(i) != Some(&b'/') {
        plain = false;
        let slash = i + bytes[i..].iter().position(|&b| b == b'/')?;
        separated |= bytes[i..slash].iter().any(|&b| b == b'.' || b == b':');
        i = slash;
    }
    let looks_like_host = separated || &bytes[..i] == b"localhost";
    Some(FirstComponent { end: i, looks_like_host, plain_host: plain })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_with_one_byte_outside_lower_case_hex_is_declined() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let image = |hex: &str| format!("ghcr.io/acme/app@sha256:{hex}");
        assert!(parse(&image(hex)).is_some_and(|r| r.digest.is_some()));
        for at in 0..hex.len() {
            for bad in ["g", "A", "F", "/", ":", "é"] {
                let broken = format!("{}{bad}{}", &hex[..at], &hex[at + 1..]);
                assert!(parse(&image(&broken)).is_none(), "{broken}");
            }
        }
    }
}
