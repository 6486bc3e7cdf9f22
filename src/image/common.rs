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

/// Reads a common-shaped image with `ParseDockerRef` semantics, or `None` to decline.
pub(super) fn parse(image: &str) -> Option<Reference<'_>> {
    let bytes = image.as_bytes();
    // A 64-character string may be an image ID; leave it to the exact parser.
    if bytes.is_empty() || bytes.len() == 64 {
        return None;
    }
    let slash = bytes.iter().position(|&b| b == b'/');
    let (domain, short_name, remote_start) = match slash {
        None => (DOCKER_HUB, true, 0),
        Some(slash) => {
            let first = &image[..slash];
            let looks_like_host = first == "localhost" || first.bytes().any(|b| b == b'.' || b == b':');
            if looks_like_host {
                if !is_plain_host(first.as_bytes()) || first == "index.docker.io" {
                    return None;
                }
                (first, false, slash + 1)
            } else {
                (DOCKER_HUB, true, 0)
            }
        }
    };

    // The path: lower-case components of [a-z0-9] runs joined by `.`, `_`, `__` or `-`s, up to
    // a `:` (tag), `@` (digest) or the end.
    let mut i = remote_start;
    loop {
        let run_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit()) {
            i += 1;
        }
        if i == run_start {
            return None;
        }
        match bytes.get(i) {
            None | Some(b':') | Some(b'@') => break,
            Some(b'/') | Some(b'.') => i += 1,
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
    let official = domain == DOCKER_HUB && !remote.contains('/');
    let path_len = remote.len() + if official { OFFICIAL_PREFIX_LEN } else { 0 };
    if path_len > PATH_MAX_LEN {
        return None;
    }

    let mut tag = None;
    if bytes.get(i) == Some(&b':') {
        let start = i + 1;
        i = start;
        while i < bytes.len() && is_lower_tag_byte(bytes[i]) {
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
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
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

/// A lower-case host name with an optional port: labels of `[a-z0-9-]` that neither start nor
/// end with `-`, joined by `.`.
fn is_plain_host(bytes: &[u8]) -> bool {
    let (name, port) = match bytes.iter().position(|&b| b == b':') {
        Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
        None => (bytes, None),
    };
    let port_ok = port.is_none_or(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
    port_ok
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label[0] != b'-'
                && label[label.len() - 1] != b'-'
                && label.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `[\w.-]` without upper case (a tag with capitals is valid, but rare enough to decline).
fn is_lower_tag_byte(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'.' | b'-')
}
