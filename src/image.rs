//! Image references, read exactly the way the kubelet and containerd read them.
//!
//! The grammar and its quirks come from Go's `github.com/distribution/reference`, which both the
//! kubelet (`ParseNormalizedNamed`) and containerd's CRI plugin (`ParseDockerRef`) call. Agreeing with
//! them matters more than being tidy: if registry-gate read `Foo/bar` differently from the runtime, a
//! policy could be bypassed by spelling. `tests/image_vectors.rs` runs every upstream test case.
//!
//! The parser is hand-written rather than built on `regex`: it borrows from its input and never
//! allocates on success, which keeps a per-image decision in the tens of nanoseconds
//! (`benches/decision.rs`). Errors may allocate; they are off the hot path.

mod common;
pub mod digest;
pub mod grammar;

use std::fmt;

pub use digest::{DigestAlgorithms, DigestError};

/// Docker Hub, where the runtime pulls names that carry no registry host.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy Docker Hub name that `ParseNormalizedNamed` rewrites to [`DOCKER_HUB`].
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// Docker Hub's namespace for official images: `nginx` is `library/nginx`.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The longest repository path (without the host) that the runtime accepts.
pub const PATH_MAX_LEN: usize = 255;
/// The tag the kubelet appends when an image names neither a tag nor a digest.
const DEFAULT_TAG: &str = "latest";

/// A parsed image reference that borrows from the string it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference<'a> {
    /// Registry host with optional port, as written (`GHCR.io` keeps its case); `""` when the
    /// reference has no host, which only the strict grammar and odd names like `foo_bar.com/app`
    /// produce.
    domain: &'a str,
    /// The repository path, minus the `library/` that `official` implies.
    remote: &'a str,
    /// True for single-component Docker Hub names such as `nginx`, whose path is `library/nginx`.
    /// Storing a flag instead of the joined string is what keeps parsing allocation-free.
    official: bool,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
    /// The input named no registry host, so the runtime's default (Docker Hub) was assumed.
    short_name: bool,
}

/// The repository path of a [`Reference`]: `library/nginx`, `acme/api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositoryPath<'a> {
    prefix: &'static str,
    rest: &'a str,
}

impl<'a> RepositoryPath<'a> {
    /// The path as two pieces that concatenate to the whole; the first is `library/` or empty.
    pub fn parts(&self) -> (&'static str, &'a str) {
        (self.prefix, self.rest)
    }

    pub fn len(&self) -> usize {
        self.prefix.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for RepositoryPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix, self.rest)
    }
}

impl PartialEq<str> for RepositoryPath<'_> {
    fn eq(&self, other: &str) -> bool {
        other.len() == self.len()
            && other.starts_with(self.prefix)
            && &other[self.prefix.len()..] == self.rest
    }
}

/// Why an image string is not a usable reference.
///
/// The messages of the variants that mirror Go errors are Go's own, word for word, so that a user
/// sees the same text here as in the kubelet's `InvalidImageName` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The string is empty (Go: `ErrNameEmpty`).
    #[error("repository name must have at least one component")]
    NameEmpty,
    /// The string does not fit the reference grammar (Go: `ErrReferenceInvalidFormat`).
    #[error("invalid reference format")]
    InvalidFormat,
    /// The strict grammar found upper case in the repository path (Go: `ErrNameContainsUppercase`).
    #[error("repository name must be lowercase")]
    NameContainsUppercase,
    /// The normalizing parser found upper case in the repository path.
    #[error("invalid reference format: repository name ({remote}) must be lowercase")]
    RemoteNameUppercase { remote: String },
    /// The repository path is longer than [`PATH_MAX_LEN`] (Go: `ErrNameTooLong`).
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    /// A bare 64-hex image ID where a name was expected.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    Identifier(String),
    /// The digest after `@` is malformed or uses an unknown algorithm.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A bare image ID or digest (`sha256:…`): containerd resolves it against images already cached
    /// on the node, so it would start an image without asking any registry.
    #[error(
        "is an image ID, not a reference: the runtime would start a cached image without asking any registry"
    )]
    ImageId,
    /// A reference whose first component is not a valid host, such as `foo_bar.com/app`: the
    /// grammar reads the whole string as a path, and no registry can be named for it.
    #[error("names no registry host (the first component is not a valid host name)")]
    NoDomain,
}

impl ParseError {
    /// A plain-words hint for a user who only sees "invalid reference format".
    pub fn hint(&self) -> &'static str {
        match self {
            ParseError::NameEmpty | ParseError::InvalidFormat | ParseError::NoDomain => {
                "an image is [registry[:port]/]repository[:tag][@digest], e.g. ghcr.io/acme/api:1.2"
            }
            ParseError::NameContainsUppercase | ParseError::RemoteNameUppercase { .. } => {
                "repository paths are lower case; only the registry host may use capitals"
            }
            ParseError::NameTooLong => "the repository path may be at most 255 characters",
            ParseError::Identifier(_) | ParseError::ImageId => {
                "name the image by registry and repository, e.g. registry.example.com/app@sha256:..."
            }
            ParseError::Digest(_) => {
                "a digest is sha256: followed by 64 lower-case hex digits (sha384: 96, sha512: 128)"
            }
        }
    }
}

impl<'a> Reference<'a> {
    /// Parses an image the way a Pod's `image` field is pulled, and refuses what would let a
    /// policy be bypassed.
    ///
    /// This is containerd's `ParseDockerRef` (the kubelet's `ParseNormalizedNamed` plus its
    /// defaults): `nginx` is `docker.io/library/nginx:latest`, and a tag beside a digest is
    /// dropped because the runtime pulls by digest. On top of that it refuses bare image IDs and
    /// references without a registry host.
    pub fn parse(image: &'a str) -> Result<Self, ParseError> {
        if let Some(reference) = common::parse(image) {
            return Ok(reference);
        }
        Self::parse_exactly(image)
    }

    /// [`Reference::parse`] by the letter of the Go code, for every input: the reference that
    /// the one-pass reader of common shapes must agree with.
    pub fn parse_exactly(image: &'a str) -> Result<Self, ParseError> {
        let reference = match Self::parse_docker_ref(image, DigestAlgorithms::ALL) {
            Ok(reference) => reference,
            Err(ParseError::Identifier(_)) => return Err(ParseError::ImageId),
            Err(e) => return Err(e),
        };
        if reference.short_name && is_image_id_prefix(image) {
            return Err(ParseError::ImageId);
        }
        if reference.domain.is_empty() {
            return Err(ParseError::NoDomain);
        }
        Ok(reference)
    }

    /// Go's `reference.ParseDockerRef`: [`Reference::parse_normalized`], then `:latest` when
    /// there is neither tag nor digest, and no tag when there is a digest.
    pub fn parse_docker_ref(image: &'a str, algorithms: DigestAlgorithms) -> Result<Self, ParseError> {
        let mut reference = Self::parse_normalized(image, algorithms)?;
        if reference.digest.is_some() {
            reference.tag = None;
        } else if reference.tag.is_none() {
            reference.tag = Some(DEFAULT_TAG);
        }
        Ok(reference)
    }

    /// Go's `reference.ParseNormalizedNamed`, what the kubelet checks `container.image` with:
    /// a default `docker.io` host, `index.docker.io` as `docker.io`, `library/` for official
    /// images, and no default tag.
    pub fn parse_normalized(image: &'a str, algorithms: DigestAlgorithms) -> Result<Self, ParseError> {
        if grammar::is_identifier(image) {
            return Err(ParseError::Identifier(image.to_owned()));
        }
        let split = DomainSplit::of(image);
        let remainder = split.remainder;
        let remote_end = grammar::find_byte(remainder, b':').unwrap_or(remainder.len());
        if grammar::has_upper(&remainder[..remote_end]) {
            let prefix = if split.official { OFFICIAL_REPO_PREFIX } else { "" };
            return Err(ParseError::RemoteNameUppercase {
                remote: format!("{prefix}{}", &remainder[..remote_end]),
            });
        }

        // What follows is Go's `Parse(domain + "/" + remainder)`, done on the pieces so that the
        // joined string never has to be built. Any failure re-runs the real thing on the joined
        // string, which only the error path pays for, so that errors are classified exactly as Go
        // classifies them.
        let parsed = grammar::split_tag_and_digest(remainder).and_then(|(name, tag, digest)| {
            if !grammar::is_remote_name(name) {
                return None;
            }
            if grammar::is_domain_and_port(split.domain) {
                Some((split.domain, name, split.official, tag, digest))
            } else if split.domain_is_verbatim && grammar::is_path_component(split.domain) {
                // `foo_bar.com/app`: the first component is no valid host, so Go's name regexp
                // reads the whole name as a path and leaves the domain empty.
                let path = &image[..split.domain.len() + 1 + name.len()];
                Some(("", path, false, tag, digest))
            } else {
                None
            }
        });
        let Some((domain, remote, official, tag, digest)) = parsed else {
            let prefix = if split.official { OFFICIAL_REPO_PREFIX } else { "" };
            let joined = format!("{}/{prefix}{remainder}", split.domain);
            return Err(Reference::parse_strict(&joined, algorithms)
                .err()
                .unwrap_or(ParseError::InvalidFormat));
        };
        let reference = Reference { domain, remote, official, tag, digest, short_name: split.short_name };
        reference.check_path_and_digest(algorithms)?;
        Ok(reference)
    }

    /// Go's `reference.Parse`: the bare grammar, with no defaults. Any first component that fits
    /// the host grammar is the domain, so `library/nginx` has domain `library`. Never use it for
    /// Pod images; it is here because the other parsers are defined in terms of it.
    pub fn parse_strict(image: &'a str, algorithms: DigestAlgorithms) -> Result<Self, ParseError> {
        let Some((name, tag, digest)) = grammar::match_reference(image) else {
            if image.is_empty() {
                return Err(ParseError::NameEmpty);
            }
            if grammar::match_reference(&grammar::to_lower(image)).is_some() {
                return Err(ParseError::NameContainsUppercase);
            }
            return Err(ParseError::InvalidFormat);
        };
        let (domain, remote) = grammar::split_name(name).ok_or(ParseError::InvalidFormat)?;
        let reference = Reference { domain, remote, official: false, tag, digest, short_name: false };
        reference.check_path_and_digest(algorithms)?;
        Ok(reference)
    }

    /// Go's `reference.WithName`: a repository name alone, split like [`Reference::parse_strict`].
    pub fn with_name(name: &'a str) -> Result<Self, ParseError> {
        let (domain, remote) = grammar::split_name(name).ok_or(ParseError::InvalidFormat)?;
        if remote.len() > PATH_MAX_LEN {
            return Err(ParseError::NameTooLong);
        }
        Ok(Reference { domain, remote, official: false, tag: None, digest: None, short_name: false })
    }

    fn check_path_and_digest(&self, algorithms: DigestAlgorithms) -> Result<(), ParseError> {
        if self.path().len() > PATH_MAX_LEN {
            return Err(ParseError::NameTooLong);
        }
        if let Some(digest) = self.digest {
            digest::validate(digest, algorithms)?;
        }
        Ok(())
    }

    /// Whether the image named no registry host (`nginx`, `acme/app`), leaving the choice to the
    /// runtime's default registry.
    pub fn is_short_name(&self) -> bool {
        self.short_name
    }

    /// Registry host with optional port, as written.
    pub fn domain(&self) -> &'a str {
        self.domain
    }

    /// Repository path, e.g. `library/nginx`.
    pub fn path(&self) -> RepositoryPath<'a> {
        let prefix = if self.official { OFFICIAL_REPO_PREFIX } else { "" };
        RepositoryPath { prefix, rest: self.remote }
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }

    /// The digest (`sha256:…`), which is what the runtime pulls when present.
    pub fn digest(&self) -> Option<&'a str> {
        self.digest
    }

    /// The repository name, `domain/path`, or just the path when there is no domain.
    pub fn name(&self) -> impl fmt::Display + 'a {
        let reference = *self;
        DisplayName(reference)
    }
}

struct DisplayName<'a>(Reference<'a>);

impl fmt::Display for DisplayName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.domain.is_empty() {
            write!(f, "{}/", self.0.domain)?;
        }
        write!(f, "{}", self.0.path())
    }
}

/// The full form, `domain/path[:tag][@digest]`, as Go's `String()` prints it.
impl fmt::Display for Reference<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether containerd would look `image` up as (a prefix of) the ID of an image cached on the
/// node: `sha256:` (or `sha384:`, `sha512:`) and any number of hex digits.
///
/// Go reads `sha256:0123` as the Docker Hub image `library/sha256` with tag `0123`, and the
/// kubelet passes it on unchanged. containerd's CRI `LocalResolve` then finds no image of that
/// name and asks its ID index (go-digest's `digestset`), which matches any prefix of an ID.
/// So the Pod would run whichever cached image's ID starts with `0123`, from no registry at all.
/// Upper-case hex never matches an ID (IDs are lower case), but it is refused as well: nothing
/// legitimate is spelled that way, and failing closed costs nothing here.
fn is_image_id_prefix(image: &str) -> bool {
    let Some((algorithm, hex)) = grammar::split_at_byte(image, b':') else {
        return false;
    };
    matches!(algorithm, "sha256" | "sha384" | "sha512")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Go's `splitDockerDomain`: where the registry host ends and the repository begins.
struct DomainSplit<'a> {
    domain: &'a str,
    /// Everything after the domain: path, tag and digest.
    remainder: &'a str,
    /// `library/` goes in front of `remainder`.
    official: bool,
    /// `domain` is the input's own first component (not a default or a rewrite), so the input is
    /// exactly `domain/remainder`.
    domain_is_verbatim: bool,
    /// The input named no host at all; `domain` is the default.
    short_name: bool,
}

impl<'a> DomainSplit<'a> {
    fn of(image: &'a str) -> Self {
        let hub = |remainder: &'a str, short_name: bool| DomainSplit {
            domain: DOCKER_HUB,
            remainder,
            official: grammar::find_byte(remainder, b'/').is_none(),
            domain_is_verbatim: false,
            short_name,
        };
        // A single component is always a Docker Hub name, never a host: `localhost:5000` is
        // `docker.io/library/localhost:5000`, the image `localhost` with tag `5000`.
        let Some((first, rest)) = grammar::split_at_byte(image, b'/') else {
            return hub(image, true);
        };
        if first == LEGACY_DOCKER_HUB {
            return hub(rest, false);
        }
        // A first component is a host if it looks like one (a dot or a port), is `localhost`, or
        // has upper case (which a repository path cannot have).
        let looks_like_host = first.bytes().any(|b| b == b'.' || b == b':');
        if first == "localhost" || looks_like_host || grammar::has_upper(first) {
            return DomainSplit {
                domain: first,
                remainder: rest,
                official: first == DOCKER_HUB && grammar::find_byte(rest, b'/').is_none(),
                domain_is_verbatim: true,
                short_name: false,
            };
        }
        hub(image, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn docker_ref(image: &str) -> String {
        Reference::parse(image).map(|r| r.to_string()).unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn short_names_are_official_docker_hub_images() {
        assert_eq!(docker_ref("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(docker_ref("index.docker.io/nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(docker_ref("acme/api"), "docker.io/acme/api:latest");
    }

    #[test]
    fn a_digest_wins_over_a_tag() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let image = format!("ghcr.io/acme/api:1.0@{digest}");
        let reference = Reference::parse(&image).expect("valid");
        assert_eq!((reference.tag(), reference.digest()), (None, Some(digest)));
    }

    #[test]
    fn image_ids_are_refused() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Reference::parse(hex), Err(ParseError::ImageId));
        assert_eq!(Reference::parse(&format!("sha256:{hex}")), Err(ParseError::ImageId));
        // The same string is a valid Docker Hub reference to Go, which is exactly the danger.
        assert!(Reference::parse_docker_ref(&format!("sha256:{hex}"), DigestAlgorithms::ALL).is_ok());
    }

    #[test]
    fn image_id_prefixes_are_refused() {
        // containerd resolves each of these against the IDs of cached images, by prefix.
        let long = "0".repeat(128);
        for image in [
            "sha256:0123",
            "sha256:a",
            "sha384:0123abcdef",
            "sha512:ff",
            "sha256:ABC",
            &format!("sha512:{long}"),
        ] {
            assert_eq!(Reference::parse(image), Err(ParseError::ImageId), "{image}");
            assert!(Reference::parse_exactly(image).is_err(), "{image}");
        }
        // Names that only look alike are still images from Docker Hub.
        for image in [
            "sha256",
            "sha256:latest",
            "sha256:0123-x",
            "library/sha256:0123",
            "docker.io/library/sha256:0123",
            "sha1:0123",
        ] {
            assert!(Reference::parse(image).is_ok(), "{image}");
        }
    }

    #[test]
    fn an_empty_tag_is_refused_before_a_digest() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for image in [format!("nginx:@{digest}"), "nginx:".to_owned(), format!("ghcr.io/acme/api:@{digest}")]
        {
            assert_eq!(common::parse(&image), None, "{image}: the fast path must decline");
            assert_eq!(Reference::parse(&image), Err(ParseError::InvalidFormat), "{image}");
        }
    }

    #[test]
    fn common_shapes_take_the_fast_path_and_agree_with_the_exact_one() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for image in [
            "nginx".to_owned(),
            "nginx:1.27".to_owned(),
            "acme/app:v1.2.3-rc.1".to_owned(),
            "docker.io/nginx".to_owned(),
            "ghcr.io/acme/api:1".to_owned(),
            "registry.example.com:5000/team/app__x/y-z".to_owned(),
            format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1@{digest}"),
            "localhost:5000".to_owned(),
            "localhost/app".to_owned(),
        ] {
            let fast = common::parse(&image);
            assert!(fast.is_some(), "{image} takes the fast path");
            assert_eq!(fast.map(Ok), Some(Reference::parse_exactly(&image)), "{image}");
        }
    }

    #[test]
    fn a_name_without_a_valid_host_is_refused() {
        assert_eq!(Reference::parse("foo_bar.com/app"), Err(ParseError::NoDomain));
    }

    #[test]
    fn upper_case_first_component_is_a_host() {
        let reference = Reference::parse("GHCR.io/acme/api").expect("valid");
        assert_eq!((reference.domain(), reference.path().to_string()), ("GHCR.io", "acme/api".to_owned()));
    }

    fn image_like() -> impl Strategy<Value = String> {
        // Mostly pieces of real grammar, with a sprinkling of characters that break it.
        let piece = prop_oneof![
            Just("a"),
            Just("b"),
            Just("0"),
            Just("."),
            Just("_"),
            Just("__"),
            Just("-"),
            Just("/"),
            Just(":"),
            Just("@"),
            Just("A"),
            Just("localhost"),
            Just("docker.io"),
            Just("index.docker.io"),
            Just("[::1]"),
            Just("5000"),
            Just("library"),
            Just("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ];
        prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        // The allocation-free path of `parse_normalized` must agree with the definition it
        // shortcuts: Go's `Parse(domain + "/" + remainder)`.
        #[test]
        fn normalized_agrees_with_parse_of_the_joined_string(image in image_like()) {
            let fast = Reference::parse_normalized(&image, DigestAlgorithms::ALL);
            if grammar::is_identifier(&image) {
                prop_assert!(matches!(fast, Err(ParseError::Identifier(_))));
                return Ok(());
            }
            let split = DomainSplit::of(&image);
            let remote_end = grammar::find_byte(split.remainder, b':').unwrap_or(split.remainder.len());
            if grammar::has_upper(&split.remainder[..remote_end]) {
                let is_uppercase_error = matches!(fast, Err(ParseError::RemoteNameUppercase { .. }));
                prop_assert!(is_uppercase_error);
                return Ok(());
            }
            let prefix = if split.official { OFFICIAL_REPO_PREFIX } else { "" };
            let joined = format!("{}/{prefix}{}", split.domain, split.remainder);
            let slow = Reference::parse_strict(&joined, DigestAlgorithms::ALL);
            prop_assert_eq!(fast.map(|r| r.to_string()), slow.map(|r| r.to_string()));
        }

        // The one-pass reader may decline any input, but what it accepts must be exactly what the
        // Go port says.
        #[test]
        fn the_fast_path_agrees_with_the_exact_one(image in image_like()) {
            if let Some(fast) = common::parse(&image) {
                prop_assert_eq!(Ok(fast), Reference::parse_exactly(&image));
            }
        }

        #[test]
        fn parse_never_panics(image in ".{0,300}") {
            let _ = Reference::parse(&image);
        }
    }
}
