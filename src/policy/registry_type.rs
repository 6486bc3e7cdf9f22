//! The registry providers registry-gate knows: what their URLs look like and what their pull
//! secrets hold.
//!
//! Checking a URL against its type catches the typo that would otherwise register the wrong host
//! (`123456789012.dkr.ecr.us-east-1.amazonaws.co`) before any Pod is denied for it.

use std::fmt;

use super::pattern::HostPattern;

/// A kind of registry, as named in a policy's `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryType {
    DockerHub,
    Ghcr,
    GitHubEnterprise,
    GitLab,
    Ecr,
    EcrPublic,
    Gcr,
    Gar,
    Acr,
    Quay,
    Harbor,
    Nexus,
    Artifactory,
    Scaleway,
    Generic,
    Public,
}

/// What a registry's pull secret must carry, for docs and for `policy validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub username: &'static str,
    pub password: &'static str,
}

impl RegistryType {
    pub const ALL: [RegistryType; 16] = [
        RegistryType::DockerHub,
        RegistryType::Ghcr,
        RegistryType::GitHubEnterprise,
        RegistryType::GitLab,
        RegistryType::Ecr,
        RegistryType::EcrPublic,
        RegistryType::Gcr,
        RegistryType::Gar,
        RegistryType::Acr,
        RegistryType::Quay,
        RegistryType::Harbor,
        RegistryType::Nexus,
        RegistryType::Artifactory,
        RegistryType::Scaleway,
        RegistryType::Generic,
        RegistryType::Public,
    ];

    /// The name written in a policy.
    pub fn name(self) -> &'static str {
        match self {
            RegistryType::DockerHub => "DockerHub",
            RegistryType::Ghcr => "GHCR",
            RegistryType::GitHubEnterprise => "GitHubEnterprise",
            RegistryType::GitLab => "GitLab",
            RegistryType::Ecr => "ECR",
            RegistryType::EcrPublic => "ECRPublic",
            RegistryType::Gcr => "GCR",
            RegistryType::Gar => "GAR",
            RegistryType::Acr => "ACR",
            RegistryType::Quay => "Quay",
            RegistryType::Harbor => "Harbor",
            RegistryType::Nexus => "Nexus",
            RegistryType::Artifactory => "Artifactory",
            RegistryType::Scaleway => "Scaleway",
            RegistryType::Generic => "Generic",
            RegistryType::Public => "Public",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The type a misspelled name most likely meant (`ghcr` → `GHCR`).
    pub fn closest_to(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Whether a pull secret may be named. Public registries are pulled anonymously; a secret
    /// there would be injected into every Pod for nothing.
    pub fn takes_pull_secret(self) -> bool {
        self != RegistryType::Public
    }

    pub fn credentials(self) -> Option<Credentials> {
        let (username, password) = match self {
            RegistryType::DockerHub => ("Docker Hub user name", "personal access token (read-only)"),
            RegistryType::Ghcr => ("GitHub user name", "token with read:packages"),
            RegistryType::GitHubEnterprise => ("GitHub Enterprise user name", "token with read:packages"),
            RegistryType::GitLab => ("user or deploy-token name", "token with read_registry"),
            RegistryType::Ecr => ("AWS", "`aws ecr get-login-password` output (expires after 12 hours)"),
            RegistryType::EcrPublic => ("AWS (optional)", "`aws ecr-public get-login-password` output"),
            RegistryType::Gcr | RegistryType::Gar => ("_json_key", "service account key JSON"),
            RegistryType::Acr => ("service principal (application) id", "service principal password"),
            RegistryType::Quay => ("robot account name", "robot account token"),
            RegistryType::Harbor => ("user or robot account name", "password or robot secret"),
            RegistryType::Nexus | RegistryType::Generic => ("user name", "password or token"),
            RegistryType::Artifactory => ("user name", "identity or access token"),
            RegistryType::Scaleway => ("nologin", "Scaleway secret key"),
            RegistryType::Public => return None,
        };
        Some(Credentials { username, password })
    }

    /// Checks a registry host against this provider's URL shape; `Err` says what was expected.
    pub fn check_host(self, host: &HostPattern) -> Result<(), String> {
        let name = host.name();
        // Only the cloud types look at labels; a policy of 10,000 self-hosted entries need not
        // split 10,000 names.
        let labels = || Labels::of(name);
        let fits = match self {
            RegistryType::DockerHub => name == "docker.io",
            RegistryType::Ghcr => name == "ghcr.io",
            RegistryType::GitHubEnterprise => {
                let labels = labels();
                labels.count >= 3 && labels.first[0] == "containers"
            }
            RegistryType::EcrPublic => name == "public.ecr.aws",
            RegistryType::Gcr => {
                matches!(name, "gcr.io" | "us.gcr.io" | "eu.gcr.io" | "asia.gcr.io")
            }
            RegistryType::Gar => {
                let split = labels();
                let labels = split.all();
                labels.len() == 3 && labels[0].ends_with("-docker") && labels[1..] == ["pkg", "dev"]
            }
            RegistryType::Ecr => is_ecr_host(labels().all()),
            RegistryType::Acr => {
                let split = labels();
                let labels = split.all();
                labels.len() == 3
                    && labels[1] == "azurecr"
                    && matches!(labels[2], "io" | "cn" | "us")
                    && (labels[0] == "*" || is_acr_name(labels[0]))
            }
            RegistryType::Scaleway => {
                let split = labels();
                let labels = split.all();
                labels.len() == 4 && labels[0] == "rg" && labels[2..] == ["scw", "cloud"]
            }
            // Self-managed or any host.
            RegistryType::GitLab
            | RegistryType::Quay
            | RegistryType::Harbor
            | RegistryType::Nexus
            | RegistryType::Artifactory
            | RegistryType::Generic
            | RegistryType::Public => true,
        };
        if fits { Ok(()) } else { Err(format!("{self} registries look like {}", self.url_shape())) }
    }

    /// The URL shape, in words, for error messages and docs.
    pub fn url_shape(self) -> &'static str {
        match self {
            RegistryType::DockerHub => "docker.io[/namespace]",
            RegistryType::Ghcr => "ghcr.io[/owner]",
            RegistryType::GitHubEnterprise => "containers.HOST[/owner]",
            RegistryType::GitLab => "registry.gitlab.com[/group] or a self-managed host",
            RegistryType::Ecr => {
                "ACCOUNT.dkr.ecr.REGION.amazonaws.com (also dkr.ecr-fips, amazonaws.com.cn, ACCOUNT.dkr-ecr.REGION.on.aws)"
            }
            RegistryType::EcrPublic => "public.ecr.aws[/alias]",
            RegistryType::Gcr => "gcr.io, us.gcr.io, eu.gcr.io or asia.gcr.io, then /PROJECT",
            RegistryType::Gar => "LOCATION-docker.pkg.dev[/PROJECT[/REPOSITORY]]",
            RegistryType::Acr => "NAME.azurecr.io (or .azurecr.cn, .azurecr.us)",
            RegistryType::Quay => "quay.io[/organization] or a self-managed host",
            RegistryType::Harbor
            | RegistryType::Nexus
            | RegistryType::Artifactory
            | RegistryType::Generic => "any host[:port][/path]",
            RegistryType::Scaleway => "rg.REGION.scw.cloud[/namespace]",
            RegistryType::Public => "any host[:port][/path], pulled without credentials",
        }
    }
}

impl fmt::Display for RegistryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Labels kept by [`Labels`]; every cloud host shape has fewer.
const MAX_LABELS: usize = 8;

/// A host name's labels, split by bytes into an array: a `char` split collected into a `Vec`
/// per entry was most of what checking a policy's 2,500 ECR entries cost.
struct Labels<'a> {
    /// The first [`MAX_LABELS`] labels.
    first: [&'a str; MAX_LABELS],
    count: usize,
}

impl<'a> Labels<'a> {
    fn of(name: &'a str) -> Self {
        let mut labels = Labels { first: [""; MAX_LABELS], count: 0 };
        // Splitting at an ASCII byte keeps every label on char boundaries.
        let mut start = 0;
        for end in memchr::memchr_iter(b'.', name.as_bytes()).chain([name.len()]) {
            if let Some(slot) = labels.first.get_mut(labels.count) {
                *slot = name.get(start..end).unwrap_or_default();
            }
            labels.count += 1;
            start = end + 1;
        }
        labels
    }

    /// Every label, or none when there are more than are kept (no cloud shape is that long).
    fn all(&self) -> &[&'a str] {
        self.first.get(..self.count).unwrap_or_default()
    }
}

/// `ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]` or the dual-stack
/// `ACCOUNT.dkr-ecr[-fips].REGION.on.aws`; account and region may be wildcards.
fn is_ecr_host(labels: &[&str]) -> bool {
    let account_ok =
        |label: &str| label == "*" || (label.len() == 12 && label.bytes().all(|b| b.is_ascii_digit()));
    let region_ok = |label: &str| label == "*" || is_aws_region(label);
    match labels {
        [account, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com"]
        | [account, "dkr", "ecr" | "ecr-fips", region, "amazonaws", "com", "cn"]
        | [account, "dkr-ecr" | "dkr-ecr-fips", region, "on", "aws"] => {
            account_ok(account) && region_ok(region)
        }
        _ => false,
    }
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`, `ap-southeast-5`.
fn is_aws_region(label: &str) -> bool {
    let parts = label.as_bytes().split(|&b| b == b'-');
    let count = parts.clone().count();
    count >= 3
        && parts.enumerate().all(|(i, part)| {
            let well_formed: fn(&u8) -> bool =
                if i + 1 == count { u8::is_ascii_digit } else { u8::is_ascii_lowercase };
            !part.is_empty() && part.iter().all(well_formed)
        })
}

/// Azure container registry names are 5 to 50 letters and digits.
fn is_acr_name(label: &str) -> bool {
    (5..=50).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::pattern::RegistryPattern;

    fn fits(registry_type: RegistryType, url: &str) -> bool {
        let pattern = RegistryPattern::parse(url).expect(url);
        registry_type.check_host(&pattern.host).is_ok()
    }

    #[test]
    fn cloud_types_take_their_host_shapes_only() {
        let cases: &[(RegistryType, &[&str], &[&str])] = &[
            (
                RegistryType::Ecr,
                &[
                    "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                    "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                    "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                    "123456789012.dkr-ecr.eu-central-2.on.aws",
                    "*.dkr.ecr.*.amazonaws.com",
                ],
                &[
                    "12345678901.dkr.ecr.us-east-1.amazonaws.com",
                    "123456789012.dkr.ecr.us-east.amazonaws.com",
                    "123456789012.dkr.ecr.us--1.amazonaws.com",
                    "123456789012.dkr.ecr.US-east-1.amazonaws.com.evil",
                    "a.b.c.123456789012.dkr.ecr.us-east-1.amazonaws.com",
                    "ecr.us-east-1.amazonaws.com",
                ],
            ),
            (
                RegistryType::GitHubEnterprise,
                &["containers.github.acme.com", "containers.a.b.c.d.e.f.g.h.i.example"],
                &["github.acme.com", "containers.acme"],
            ),
            (
                RegistryType::Gar,
                &["europe-west1-docker.pkg.dev", "us-docker.pkg.dev/project"],
                &["europe-west1.pkg.dev", "x.europe-west1-docker.pkg.dev"],
            ),
            (
                RegistryType::Acr,
                &["acmeprod.azurecr.io", "*.azurecr.cn", "acme1.azurecr.us"],
                &["acm.azurecr.io", "acme-prod.azurecr.io", "acmeprod.azurecr.com", "x.acmeprod.azurecr.io"],
            ),
            (
                RegistryType::Scaleway,
                &["rg.fr-par.scw.cloud", "rg.nl-ams.scw.cloud/ns"],
                &["registry.fr-par.scw.cloud", "rg.scw.cloud", "a.b.c.d.e.f.g.h.i.scw.cloud"],
            ),
        ];
        for (registry_type, good, bad) in cases {
            for url in *good {
                assert!(fits(*registry_type, url), "{registry_type} must take {url}");
            }
            for url in *bad {
                assert!(!fits(*registry_type, url), "{registry_type} must refuse {url}");
            }
        }
    }

    #[test]
    fn labels_split_like_str_split() {
        for name in ["", ".", "a", "a.b", "a..b.", "1.2.3.4.5.6.7.8", "1.2.3.4.5.6.7.8.9.10"] {
            let labels = Labels::of(name);
            let expected: Vec<&str> = name.split('.').collect();
            assert_eq!(labels.count, expected.len(), "{name:?}");
            if expected.len() <= MAX_LABELS {
                assert_eq!(labels.all(), expected.as_slice(), "{name:?}");
            } else {
                assert!(labels.all().is_empty(), "{name:?}");
                assert_eq!(labels.first, expected[..MAX_LABELS], "{name:?}");
            }
        }
    }
}
