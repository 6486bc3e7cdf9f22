//! Digest validation as go-digest does it (`Digest.Validate`), the step after the grammar.

/// Which digest algorithms count as available.
///
/// go-digest knows sha384 and sha512 only when `crypto/sha512` is linked into the binary. The
/// kubelet, containerd and dockerd all link it, so production accepts all three; the upstream
/// `distribution/reference` tests link only sha256, and their vectors expect exactly that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestAlgorithms {
    pub sha384_and_sha512: bool,
}

impl DigestAlgorithms {
    /// What the kubelet and containerd accept.
    pub const ALL: Self = DigestAlgorithms { sha384_and_sha512: true };
    pub const SHA256_ONLY: Self = DigestAlgorithms { sha384_and_sha512: false };

    /// Length of the hex-encoded digest for an available algorithm.
    fn hex_len(self, algorithm: &str) -> Option<usize> {
        match algorithm {
            "sha256" => Some(64),
            "sha384" if self.sha384_and_sha512 => Some(96),
            "sha512" if self.sha384_and_sha512 => Some(128),
            _ => None,
        }
    }
}

/// Why a digest is refused. The messages are go-digest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid checksum digest format")]
    InvalidFormat,
    #[error("invalid checksum digest length")]
    InvalidLength,
    #[error("unsupported digest algorithm")]
    Unsupported,
}

/// go-digest's `Digest.Validate`, check for check and in the same order.
pub fn validate(digest: &str, algorithms: DigestAlgorithms) -> Result<(), DigestError> {
    let Some((algorithm, encoded)) = super::grammar::split_at_byte(digest, b':') else {
        return Err(DigestError::InvalidFormat);
    };
    if algorithm.is_empty() || encoded.is_empty() {
        return Err(DigestError::InvalidFormat);
    }
    let Some(hex_len) = algorithms.hex_len(algorithm) else {
        return Err(if is_digest_syntax(algorithm, encoded) {
            DigestError::Unsupported
        } else {
            DigestError::InvalidFormat
        });
    };
    if encoded.len() != hex_len {
        return Err(DigestError::InvalidLength);
    }
    if !encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(DigestError::InvalidFormat);
    }
    Ok(())
}

/// go-digest's `DigestRegexp`: `[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`.
fn is_digest_syntax(algorithm: &str, encoded: &str) -> bool {
    let lower_alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let algorithm_ok = algorithm
        .as_bytes()
        .split(|b| b".+_-".contains(b))
        .all(|part| !part.is_empty() && part.iter().all(|&b| lower_alphanumeric(b)));
    let encoded_ok = encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    algorithm_ok && encoded_ok
}
