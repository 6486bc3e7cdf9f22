//! The content hash a copy carries in an annotation, to see that it has drifted from its source
//! (rotated at the source, or edited in place) without comparing data field by field.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Names the algorithm in the hash, so that changing it shows every copy as drifted (and
/// rewrites each once) instead of comparing hashes of two kinds.
const ALGORITHM: &str = "sha256";

/// A stable hash of a Secret's data: `sha256:` and 64 hex digits.
///
/// Every key and value is framed by its length, in key order, so no two different maps frame to
/// the same bytes (`{"a": "bc"}` and `{"ab": "c"}` differ). The value depends on nothing but the
/// data: not the process, platform or version, so a restarted controller agrees with the
/// annotations its predecessor wrote. It is cryptographic so that an edit of a copy cannot be
/// made to look like its source and escape being restored.
pub fn content_hash(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut framed = Vec::with_capacity(8 + data.iter().map(|(k, v)| 16 + k.len() + v.len()).sum::<usize>());
    framed.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for (key, value) in data {
        framed.extend_from_slice(&(key.len() as u64).to_le_bytes());
        framed.extend_from_slice(key.as_bytes());
        framed.extend_from_slice(&(value.len() as u64).to_le_bytes());
        framed.extend_from_slice(value);
    }
    digest(&framed)
}

/// The one place the algorithm is chosen.
fn digest(framed: &[u8]) -> String {
    hex_named(ring::digest::digest(&ring::digest::SHA256, framed).as_ref())
}

/// `ALGORITHM:` and the digest in lower-case hex.
fn hex_named(digest: &[u8]) -> String {
    let mut text = String::with_capacity(ALGORITHM.len() + 1 + 2 * digest.len());
    text.push_str(ALGORITHM);
    text.push(':');
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn sha256_matches_the_reference_vectors() {
        // FIPS 180-2 examples.
        assert_eq!(digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(digest(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn hashes_are_stable_across_versions() {
        // Annotations written by earlier controllers must keep matching: a change here rewrites
        // every copy in the cluster once.
        // Computed independently: Python's hashlib over the same length-framed bytes.
        assert_eq!(
            content_hash(&BTreeMap::new()),
            "sha256:af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
        assert_eq!(
            content_hash(&data(&[(".dockerconfigjson", r#"{"auths":{}}"#)])),
            "sha256:9a988dca777a7b37584ad4ba7d303cf65e705284e599da6c68813c53d4b264a6"
        );
    }

    #[test]
    fn any_change_to_keys_or_values_changes_the_hash() {
        let variants = [
            data(&[]),
            data(&[("a", "")]),
            data(&[("a", "bc")]),
            data(&[("ab", "c")]),
            data(&[("a", "bd")]),
            data(&[("a", "b"), ("c", "")]),
            data(&[("a", "bc"), ("d", "")]),
            data(&[(".dockerconfigjson", "{}")]),
            data(&[(".dockerconfigjson", "{} ")]),
        ];
        let hashes: std::collections::BTreeSet<String> = variants.iter().map(content_hash).collect();
        assert_eq!(hashes.len(), variants.len());
    }

    #[test]
    fn hashes_are_named_lower_case_hex() {
        let hash = content_hash(&data(&[(".dockerconfigjson", "{}")]));
        let digits = hash.strip_prefix("sha256:").expect("named");
        assert_eq!(digits.len(), 64);
        assert!(digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{hash}");
    }
}
