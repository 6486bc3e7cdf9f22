//! The Secrets an admin creates for registry-gate, built from credential values:
//! `registry-gate secret render` prints them.
//!
//! - A registry's **source pull Secret**: `kubernetes.io/dockerconfigjson`, named after the
//!   registry's `pullSecret`, with one `auths` entry for the registry's host (Docker Hub's under
//!   [`DOCKER_HUB_KEY`]) holding the user name the type implies: `_json_key` and the service
//!   account key file for GCR and GAR, `AWS` and a token for ECR and ECR Public, `nologin` and a
//!   secret key for Scaleway, and the given user name (a robot account as written, `org+robot`,
//!   `robot$name`) for the rest.
//! - The **ECR key Secret** the controller refreshes an ECR pull Secret from
//!   ([`crate::controller::ecr`]): an AWS key, the region (taken from the registry URL), and the
//!   annotation naming the pull Secret to write. ECR passwords last 12 hours; the key does not.
//!
//! What is rendered is checked the way the controller will read it before it is returned: a
//! pull Secret with [`check_source`], an ECR key with [`EcrKey::from_secret`]. A rendered Secret
//! the controller would refuse is an error here, not a surprise in a Warning Event later.
//!
//! Credential values are held in [`SecretText`], which can be neither `Debug`- nor
//! `Display`-printed. Errors name fields, flags and registries; never a value, nor a user name
//! (as in [`SourceProblem`]: some types take a secret-ish one, such as an application id).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::{DOCKER_CONFIG_JSON_KEY, DOCKER_CONFIG_JSON_TYPE, SourceProblem, check_source, list};
use crate::controller::ecr::{self, EcrKey, is_region};
use crate::policy::{Policy, Registry, RegistryType, is_dns_label, is_dns_subdomain};

/// The label on a rendered source pull Secret, so that `kubectl get secret -l` finds them.
///
/// Not `app.kubernetes.io/managed-by=registry-gate`: that label marks what the controller wrote
/// itself and may overwrite (an ECR key's pull Secret) or delete (a copy no longer wanted), and a
/// Secret an admin applies is neither.
pub const SOURCE_LABEL: &str = "registry-gate.io/pull-secret-source";
pub const SOURCE_LABEL_VALUE: &str = "true";
/// The `auths` key for Docker Hub: what `docker login` writes, and the entry the kubelet falls
/// back to for every Docker Hub image.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// An ECR key Secret is named `PULLSECRET-ecr-key` unless a name is given.
pub const ECR_KEY_SUFFIX: &str = "-ecr-key";
/// The registry name of a registry given by type and URL rather than by policy; never shown.
const AD_HOC_REGISTRY: &str = "command-line";
/// Registry names listed when the one asked for is not in the policy.
const MAX_NAMES_LISTED: usize = 32;

/// A credential value: a password, token, key file or AWS key.
///
/// Deliberately neither `Debug` nor `Display`: no `{:?}` or `{}` can print it.
pub struct SecretText(String);

impl SecretText {
    pub fn new(text: impl Into<String>) -> Self {
        SecretText(text.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

/// What a pull Secret is rendered from.
pub struct PullCredentials {
    /// `None` for the user name the registry type fixes (`_json_key`, `AWS`, `nologin`); the
    /// types that fix none require one.
    pub username: Option<String>,
    pub password: SecretText,
}

/// What an ECR key Secret is rendered from.
pub struct AwsKey {
    pub access_key_id: SecretText,
    pub secret_access_key: SecretText,
    /// Only for temporary credentials, which expire: the controller stops refreshing then.
    pub session_token: Option<SecretText>,
}

/// Why nothing was rendered.
///
/// Every message names a registry, a flag or a field (`password`, `key file`, `region`), and
/// says what is wrong with it in fixed words; never the value.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The policy has no registry of that name. `name` is `None` when what was given is not even
    /// a DNS label (which every registry name is): it is then not repeated, since a value pasted
    /// in the wrong place could be a credential. `known` lists the registries with a pullSecret.
    #[error(
        "{} in the policy (registries with a pullSecret: {})",
        .name.as_ref().map_or_else(|| "the registry name given is not a DNS label, so there is no such registry".to_owned(), |n| format!("no registry named {n:?}")),
        list(.known)
    )]
    UnknownRegistry { name: Option<String>, known: Vec<String> },
    /// The registry takes no pull Secret: it is Public, uses `credentials: kubelet`, or names no
    /// `pullSecret`. `reason` says which and what to do.
    #[error("registry {name:?} {reason}")]
    NoPullSecret { name: String, reason: &'static str },
    /// An ECR key Secret was asked for a registry whose pull Secret the controller cannot write
    /// from one: not ECR or ECRPublic, or a host that ECR's tokens are not issued for.
    #[error("registry {name:?} cannot be refreshed from an ECR key: {reason}")]
    NotForEcrKey { name: String, reason: String },
    /// A value or flag is missing or unusable; `field` names it, `problem` says what is wrong.
    #[error("{field}: {problem}")]
    Field { field: String, problem: String },
    /// The rendered pull Secret fails the controller's check of source Secrets. The values were
    /// accepted one by one, so this is a combination the checks above do not foresee.
    #[error("the rendered pull Secret would be refused by the controller: {0}")]
    Refused(SourceProblem),
    /// The rendered ECR key Secret fails the controller's reading of key Secrets; the message is
    /// the controller's, which names data keys and never their values.
    #[error("the rendered ECR key Secret would be refused by the controller: {0}")]
    RefusedKey(String),
}

fn field_error(field: &str, problem: impl Into<String>) -> RenderError {
    RenderError::Field { field: field.to_owned(), problem: problem.into() }
}

/// A Secret manifest, ready to print.
///
/// Deliberately not `Debug`, and its data private: the values are credentials.
pub struct RenderedSecret {
    pub name: String,
    pub namespace: String,
    pub secret_type: &'static str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    data: BTreeMap<String, Vec<u8>>,
}

// === impl RenderedSecret ===

impl RenderedSecret {
    /// The data, decoded, as [`check_source`] takes it.
    pub fn data(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.data
    }

    /// The manifest as the API server takes it, its data in base64.
    pub fn to_json(&self) -> Value {
        let mut metadata = json!({"name": self.name, "namespace": self.namespace});
        for (title, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if !map.is_empty() {
                metadata[title] = json!(map);
            }
        }
        let data: BTreeMap<&str, String> =
            self.data.iter().map(|(key, value)| (key.as_str(), STANDARD.encode(value))).collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": self.secret_type,
            "data": data,
        })
    }

    /// The same manifest as YAML, in the order people write it. Every string is written as a
    /// JSON string, which is also a YAML double-quoted scalar: nothing needs YAML's own quoting
    /// rules (`"true"` stays a string, a `:` or `#` in a name stays text).
    pub fn to_yaml(&self) -> String {
        let quote = |text: &str| Value::from(text).to_string();
        let mut out = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n");
        out += &format!("  name: {}\n  namespace: {}\n", quote(&self.name), quote(&self.namespace));
        for (title, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if map.is_empty() {
                continue;
            }
            out += &format!("  {title}:\n");
            for (key, value) in map {
                out += &format!("    {}: {}\n", quote(key), quote(value));
            }
        }
        out += &format!("type: {}\ndata:\n", quote(self.secret_type));
        for (key, value) in &self.data {
            out += &format!("  {}: {}\n", quote(key), quote(&STANDARD.encode(value)));
        }
        out
    }
}

// === Which registry ===

/// The registry named `name` in `policy`, when it takes a pull Secret.
pub fn find_registry<'p>(policy: &'p Policy, name: &str) -> Result<&'p Registry, RenderError> {
    let Some(registry) = policy.registries.iter().find(|registry| registry.name == name) else {
        let known = policy
            .registries
            .iter()
            .filter(|registry| registry.pull_secret.is_some())
            .take(MAX_NAMES_LISTED)
            .map(|registry| registry.name.clone())
            .collect();
        let name = is_dns_label(name).then(|| name.to_owned());
        return Err(RenderError::UnknownRegistry { name, known });
    };
    pull_secret_of(registry)?;
    Ok(registry)
}

/// A registry given on the command line rather than in a policy: validated exactly as a policy
/// entry is, with problems named after the flags (`--type`, `--url`, `--name`).
pub fn registry_from_flags(
    registry_type: &str,
    url: &str,
    pull_secret: &str,
) -> Result<Registry, RenderError> {
    if RegistryType::from_name(registry_type) == Some(RegistryType::Public) {
        return Err(field_error(
            "--type",
            "Public registries are pulled without credentials: no pull secret",
        ));
    }
    // `user:password@host` would be repeated by the URL's own error messages.
    if url.contains('@') {
        return Err(field_error("--url", "has user info; credentials never go in a URL"));
    }
    let document = json!({
        "apiVersion": crate::policy::API_VERSION,
        "kind": crate::policy::KIND,
        "registries": [{"name": AD_HOC_REGISTRY, "type": registry_type, "url": url, "pullSecret": pull_secret}],
    });
    let mut policy = Policy::parse(&document.to_string()).map_err(|error| {
        let flag = |field: &str| match field.rsplit('.').next() {
            Some("type") => "--type",
            Some("url") => "--url",
            Some("pullSecret") => "--name",
            _ => "registry",
        };
        let (fields, problems): (Vec<&str>, Vec<String>) =
            error.problems.iter().map(|p| (flag(&p.field), p.message.clone())).unzip();
        let mut fields = fields;
        fields.dedup();
        field_error(&fields.join(", "), problems.join("; "))
    })?;
    Ok(policy.registries.remove(0))
}

/// The registry's `pullSecret`, or why it has none to render.
fn pull_secret_of(registry: &Registry) -> Result<&str, RenderError> {
    let refuse = |reason| Err(RenderError::NoPullSecret { name: registry.name.clone(), reason });
    if !registry.registry_type.takes_pull_secret() {
        return refuse("is Public: it is pulled without credentials and takes no pull secret");
    }
    if registry.node_credentials {
        return refuse(
            "has credentials: kubelet: the nodes pull with their own credentials, so it takes no pull secret",
        );
    }
    match registry.pull_secret.as_deref() {
        Some(name) => Ok(name),
        None => refuse("has no pullSecret: name one in the policy, then render that Secret"),
    }
}

// === Pull Secrets ===

/// The field a registry type's password is called in messages: `key file` where it is a
/// service account key file, else `password`.
pub fn password_field(registry_type: RegistryType, username: Option<&str>) -> &'static str {
    let google = matches!(registry_type, RegistryType::Gcr | RegistryType::Gar);
    match username {
        None | Some("_json_key" | "_json_key_base64") if google => "key file",
        _ => "password",
    }
}

/// The user name a type fixes, when it fixes one: what is rendered when none is given.
pub fn fixed_username(registry_type: RegistryType) -> Option<&'static str> {
    super::config::required_usernames(registry_type).map(|names| names[0])
}

/// The registry's source pull Secret, in `namespace` (registry-gate's own).
pub fn render_pull_secret(
    registry: &Registry,
    namespace: &str,
    credentials: &PullCredentials,
) -> Result<RenderedSecret, RenderError> {
    let name = pull_secret_of(registry)?;
    check_namespace(namespace)?;
    let username = username_for(registry.registry_type, credentials.username.as_deref())?;
    let password = credentials.password.expose();
    check_password(registry.registry_type, username, password)?;
    let key = match registry.registry_type {
        RegistryType::DockerHub => DOCKER_HUB_KEY,
        _ => registry.pattern.host.key(),
    };
    let auth = STANDARD.encode(format!("{username}:{password}"));
    let config = json!({"auths": {key: {"username": username, "password": password, "auth": auth}}});
    let data = BTreeMap::from([(
        DOCKER_CONFIG_JSON_KEY.to_owned(),
        serde_json::to_vec(&config).expect("a JSON value serializes"),
    )]);
    check_source(Some(DOCKER_CONFIG_JSON_TYPE), &data, registry).map_err(RenderError::Refused)?;
    Ok(RenderedSecret {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        secret_type: DOCKER_CONFIG_JSON_TYPE,
        labels: BTreeMap::from([(SOURCE_LABEL.to_owned(), SOURCE_LABEL_VALUE.to_owned())]),
        annotations: BTreeMap::new(),
        data,
    })
}

/// The user name to render: the type's own, or the one given where the type fixes none.
fn username_for(registry_type: RegistryType, given: Option<&str>) -> Result<&str, RenderError> {
    match (given, super::config::required_usernames(registry_type)) {
        (None, Some(names)) => Ok(names[0]),
        (Some(given), Some(names)) => names.iter().copied().find(|name| *name == given).ok_or_else(|| {
            field_error(
                "username",
                format!(
                    "{registry_type} registries take the user name {}; leave the user name out",
                    names.join(" or ")
                ),
            )
        }),
        (None, None) => Err(field_error(
            "username",
            format!("{registry_type} registries need one: give --username or --username-from"),
        )),
        (Some(""), None) => Err(field_error("username", "is empty")),
        (Some(given), None) if given.contains(':') => Err(field_error(
            "username",
            "contains ':', which the kubelet would take for the end of the user name in auth",
        )),
        (Some(given), None) if given.chars().any(char::is_control) => {
            Err(field_error("username", "has a line break or another control character"))
        }
        (Some(given), None) => Ok(given),
    }
}

fn check_password(registry_type: RegistryType, username: &str, password: &str) -> Result<(), RenderError> {
    let field = password_field(registry_type, Some(username));
    if password.trim().is_empty() {
        return Err(field_error(field, "is empty"));
    }
    let google = matches!(registry_type, RegistryType::Gcr | RegistryType::Gar);
    match username {
        "_json_key" if google => check_key_file(password.as_bytes()),
        "_json_key_base64" if google => {
            let cleaned: String = password.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let json =
                STANDARD.decode(&cleaned).or_else(|_| STANDARD_NO_PAD.decode(&cleaned)).map_err(|_| {
                    field_error(
                        field,
                        "is not base64 (user _json_key_base64 takes the key file's JSON in base64)",
                    )
                })?;
            check_key_file(&json)
        }
        _ if password.chars().any(char::is_control) => Err(field_error(
            field,
            "has a line break or another control character; a password or token is one line",
        )),
        _ => Ok(()),
    }
}

/// Whether `json` is a Google service account key file; the error names the part that is wrong.
fn check_key_file(json: &[u8]) -> Result<(), RenderError> {
    let problem = |text: &str| Err(field_error("key file", text));
    let key = match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(key)) => key,
        Ok(_) => return problem("is not a JSON object; a service account key file is one"),
        // Position only: serde_json's message describes the input, which is the key.
        Err(error) => {
            return problem(&format!(
                "is not JSON (it stops parsing at line {} column {})",
                error.line(),
                error.column()
            ));
        }
    };
    let text = |name: &str| key.get(name).and_then(Value::as_str).filter(|text| !text.is_empty());
    match text("type") {
        None => return problem("no type (a service account key file has \"type\": \"service_account\")"),
        Some("service_account") => {}
        Some(_) => {
            return problem(
                "type is not \"service_account\": user and workload identity credentials do not work as pull secrets; create a key for a service account",
            );
        }
    }
    for name in ["client_email", "private_key"] {
        if text(name).is_none() {
            return problem(&format!("no {name}"));
        }
    }
    Ok(())
}

// === ECR key Secrets ===

/// The ECR key Secret the controller refreshes `registry`'s pull Secret from.
///
/// `key_name` defaults to the pull Secret's name followed by [`ECR_KEY_SUFFIX`]; `region` to
/// the one in the registry's URL, and must agree with it when both are there (one token serves
/// one region's registries). ECR Public keys have no region: its API is in `us-east-1` only.
pub fn render_ecr_key(
    registry: &Registry,
    namespace: &str,
    key_name: Option<&str>,
    region: Option<&str>,
    key: &AwsKey,
) -> Result<RenderedSecret, RenderError> {
    let pull_secret = pull_secret_of(registry)?;
    check_namespace(namespace)?;
    let not_for_key = |reason: String| RenderError::NotForEcrKey { name: registry.name.clone(), reason };
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    match registry.registry_type {
        RegistryType::EcrPublic => {
            if region.is_some_and(|region| region != ecr::ECR_PUBLIC_REGION) {
                return Err(field_error(
                    "region",
                    format!("ECR Public's API is in {} only; leave --region out", ecr::ECR_PUBLIC_REGION),
                ));
            }
            data.insert("public".into(), b"true".to_vec());
        }
        RegistryType::Ecr => {
            let from_url = ecr_region(registry.pattern.host.name()).map_err(not_for_key)?;
            let region = match (region, from_url) {
                (Some(given), Some(url)) if given != url => {
                    return Err(field_error(
                        "region",
                        "differs from the region in the registry URL; a token serves one region's registries",
                    ));
                }
                (Some(region), _) | (None, Some(region)) => region,
                (None, None) => {
                    return Err(field_error(
                        "region",
                        "the registry URL's region is a wildcard: give --region",
                    ));
                }
            };
            if !is_region(region) {
                return Err(field_error("region", "is not an AWS region name, such as eu-west-1"));
            }
            data.insert("region".into(), region.as_bytes().to_vec());
        }
        other => {
            return Err(not_for_key(format!(
                "it is {other}, and ECR keys are for ECR and ECRPublic registries; render its pull Secret instead"
            )));
        }
    }
    let name = match key_name {
        Some(name) => name.to_owned(),
        None => format!("{pull_secret}{ECR_KEY_SUFFIX}"),
    };
    if !is_dns_subdomain(&name) {
        return Err(field_error(
            "--key-name",
            "is not a Secret name (a DNS subdomain of at most 253 characters)",
        ));
    }
    if name == pull_secret {
        return Err(field_error("--key-name", "is the pull Secret's name; the key is a Secret of its own"));
    }
    let values = [
        ("accessKeyId", Some(&key.access_key_id)),
        ("secretAccessKey", Some(&key.secret_access_key)),
        ("sessionToken", key.session_token.as_ref()),
    ];
    for (field, value) in values {
        let Some(value) = value else { continue };
        let value = value.expose().trim();
        if value.is_empty() {
            return Err(field_error(field, "is empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(field_error(
                field,
                "has spaces or characters outside printable ASCII, which no AWS key has",
            ));
        }
        data.insert(field.to_owned(), value.as_bytes().to_vec());
    }
    let rendered = RenderedSecret {
        name,
        namespace: namespace.to_owned(),
        secret_type: "Opaque",
        labels: BTreeMap::from([(ecr::KEY_LABEL.to_owned(), ecr::KEY_LABEL_VALUE.to_owned())]),
        annotations: BTreeMap::from([(ecr::PULL_SECRET_ANNOTATION.to_owned(), pull_secret.to_owned())]),
        data,
    };
    EcrKey::from_secret(&rendered.to_secret()).map_err(|error| RenderError::RefusedKey(error.to_string()))?;
    Ok(rendered)
}

impl RenderedSecret {
    /// The Secret as the controller reads it from the API server.
    fn to_secret(&self) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..ObjectMeta::default()
            },
            type_: Some(self.secret_type.to_owned()),
            data: Some(self.data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()),
            ..Secret::default()
        }
    }
}

/// The region in an ECR host, `None` when it is a wildcard. `Err` for the FIPS and dual-stack
/// hosts: the controller's tokens come with `ACCOUNT.dkr.ecr.REGION.amazonaws.com` as their
/// registry, so the pull Secret it writes would not cover them.
fn ecr_region(host: &str) -> Result<Option<&str>, String> {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [_, "dkr", "ecr", region, "amazonaws", "com"] | [_, "dkr", "ecr", region, "amazonaws", "com", "cn"] => {
            Ok((*region != "*").then_some(*region))
        }
        _ => Err(
            "the controller's tokens are for ACCOUNT.dkr.ecr.REGION.amazonaws.com hosts, and this one is a FIPS or dual-stack host; render its pull Secret with a token instead".to_owned(),
        ),
    }
}

// === Names ===

fn check_namespace(namespace: &str) -> Result<(), RenderError> {
    if is_dns_label(namespace) {
        Ok(())
    } else {
        Err(field_error("--namespace", "is not a namespace name (a DNS label)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "FAKE-SECRET-7f3a9c";
    const ACCESS_KEY: &str = "AKIAFAKEKEY7F3A9C000";
    const SECRET_KEY: &str = "FAKE-AWS-SECRET-7f3a9c/with+chars";
    const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIFAKE-KEY-7f3a9c\n-----END PRIVATE KEY-----\n";
    const POLICY: &str = include_str!("../../policy/example-all-types.yaml");

    fn policy() -> Policy {
        Policy::parse(POLICY).expect("the example policy is valid")
    }

    fn key_file() -> String {
        json!({
            "type": "service_account",
            "project_id": "acme-prod",
            "private_key_id": "0123456789abcdef",
            "private_key": PRIVATE_KEY,
            "client_email": "puller@acme-prod.iam.gserviceaccount.com",
        })
        .to_string()
    }

    fn credentials(username: Option<&str>, password: &str) -> PullCredentials {
        PullCredentials { username: username.map(str::to_owned), password: SecretText::new(password) }
    }

    /// Renders `name` from the example policy, and checks what came out as the controller
    /// will, starting from the printed YAML: the `auths` entry, re-read.
    fn render(name: &str, username: Option<&str>, password: &str) -> Result<Value, RenderError> {
        let policy = policy();
        let registry = find_registry(&policy, name)?;
        let rendered = render_pull_secret(registry, "registry-gate", &credentials(username, password))?;
        let (secret_type, data) = reread(&rendered);
        assert_eq!(secret_type, DOCKER_CONFIG_JSON_TYPE);
        check_source(Some(&secret_type), &data, registry).expect("the controller accepts it");
        let manifest = rendered.to_json();
        assert_eq!(manifest["metadata"]["name"], registry.pull_secret.as_deref().unwrap_or_default());
        assert_eq!(manifest["metadata"]["labels"][SOURCE_LABEL], "true");
        Ok(serde_json::from_slice(&data[DOCKER_CONFIG_JSON_KEY]).expect("JSON"))
    }

    /// The printed YAML read back as a Kubernetes client would: it must equal the JSON form,
    /// and its base64 data decodes to what was rendered.
    fn reread(rendered: &RenderedSecret) -> (String, BTreeMap<String, Vec<u8>>) {
        let yaml = rendered.to_yaml();
        let documents = crate::yaml::parse_documents(&yaml).expect("the YAML parses");
        let manifest = documents[0].to_json();
        assert_eq!(manifest, rendered.to_json(), "YAML and JSON hold the same manifest:\n{yaml}");
        let data = manifest["data"]
            .as_object()
            .expect("data")
            .iter()
            .map(|(k, v)| (k.clone(), STANDARD.decode(v.as_str().expect("a string")).expect("base64")))
            .collect();
        assert_eq!(&data, rendered.data());
        (manifest["type"].as_str().unwrap_or_default().to_owned(), data)
    }

    fn only_entry(config: &Value) -> (&str, &Value) {
        let auths = config["auths"].as_object().expect("auths");
        assert_eq!(auths.len(), 1, "{auths:?}");
        auths.iter().next().map(|(k, v)| (k.as_str(), v)).expect("one entry")
    }

    fn assert_entry(config: &Value, key: &str, username: &str, password: &str) {
        let (found, entry) = only_entry(config);
        assert_eq!(found, key);
        assert_eq!(entry["username"], username);
        assert_eq!(entry["password"], password);
        assert_eq!(entry["auth"], STANDARD.encode(format!("{username}:{password}")));
    }

    fn field_of(error: RenderError) -> (String, String) {
        match error {
            RenderError::Field { field, problem } => (field, problem),
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn docker_hub_goes_under_the_index_key() {
        let config = render("hub-acme", Some("acme-ci"), PASSWORD).expect("renders");
        assert_entry(&config, DOCKER_HUB_KEY, "acme-ci", PASSWORD);
    }

    #[test]
    fn ghcr_takes_any_user_name() {
        let config = render("team-ghcr", Some("octocat"), PASSWORD).expect("renders");
        assert_entry(&config, "ghcr.io", "octocat", PASSWORD);
        let (field, problem) = field_of(render("team-ghcr", None, PASSWORD).expect_err("no user name"));
        assert_eq!(field, "username");
        assert!(problem.contains("--username"), "{problem}");
    }

    #[test]
    fn gcr_and_gar_take_a_service_account_key_file() {
        for (name, host) in
            [("gcr-project", "eu.gcr.io"), ("artifact-registry", "europe-west4-docker.pkg.dev")]
        {
            let config = render(name, None, &key_file()).expect("renders");
            assert_entry(&config, host, "_json_key", &key_file());
        }
        let encoded = STANDARD.encode(key_file());
        let config = render("gcr-project", Some("_json_key_base64"), &encoded).expect("renders");
        assert_entry(&config, "eu.gcr.io", "_json_key_base64", &encoded);
        let config = render("gcr-project", Some("oauth2accesstoken"), PASSWORD).expect("renders");
        assert_entry(&config, "eu.gcr.io", "oauth2accesstoken", PASSWORD);
    }

    #[test]
    fn a_malformed_key_file_is_named_by_its_missing_part() {
        let without = |field: &str| {
            let mut key: Value = serde_json::from_str(&key_file()).expect("JSON");
            key.as_object_mut().expect("object").remove(field);
            key.to_string()
        };
        let cases = [
            (without("private_key"), "no private_key"),
            (without("client_email"), "no client_email"),
            (without("type"), "no type"),
            (key_file().replace("service_account", "authorized_user"), "type is not"),
            (format!("{{\"private_key\": \"{PASSWORD}\""), "is not JSON"),
            ("[1]".to_owned(), "not a JSON object"),
            (PASSWORD.to_owned(), "is not JSON"),
        ];
        for (text, expected) in cases {
            let error = render("gcr-project", None, &text).expect_err(expected);
            let shown = error.to_string();
            assert!(shown.starts_with("key file: ") && shown.contains(expected), "{shown}");
            assert!(!shown.contains(PASSWORD) && !shown.contains("FAKE-KEY"), "{shown}");
        }
        let (field, _) =
            field_of(render("gcr-project", Some("_json_key_base64"), "%%%").expect_err("base64"));
        assert_eq!(field, "key file");
        let (field, problem) = field_of(render("gcr-project", Some("admin"), &key_file()).expect_err("user"));
        assert_eq!(field, "username");
        assert!(problem.contains("_json_key"), "{problem}");
    }

    #[test]
    fn ecr_tokens_go_to_user_aws() {
        let config = render("production-ecr", None, PASSWORD).expect("renders");
        assert_entry(&config, "123456789012.dkr.ecr.us-east-1.amazonaws.com", "AWS", PASSWORD);
        let config = render("production-ecr", Some("AWS"), PASSWORD).expect("renders");
        assert_entry(&config, "123456789012.dkr.ecr.us-east-1.amazonaws.com", "AWS", PASSWORD);
        let (field, _) = field_of(render("production-ecr", Some("admin"), PASSWORD).expect_err("not AWS"));
        assert_eq!(field, "username");
    }

    #[test]
    fn scaleway_is_nologin() {
        let config = render("scaleway", None, PASSWORD).expect("renders");
        assert_entry(&config, "rg.fr-par.scw.cloud", "nologin", PASSWORD);
    }

    #[test]
    fn robot_accounts_are_taken_as_written() {
        let config = render("quay-acme", Some("acme+puller"), PASSWORD).expect("renders");
        assert_entry(&config, "quay.io", "acme+puller", PASSWORD);
        let config = render("harbor", Some("robot$library+puller"), PASSWORD).expect("renders");
        assert_entry(&config, "harbor.acme.example", "robot$library+puller", PASSWORD);
    }

    #[test]
    fn generic_hosts_keep_their_port() {
        let config = render("lab-registry", Some("lab"), PASSWORD).expect("renders");
        assert_entry(&config, "registry.lab.acme.example:5000", "lab", PASSWORD);
        let config = render("nexus", Some("ci"), PASSWORD).expect("renders");
        assert_entry(&config, "nexus.acme.example:8443", "ci", PASSWORD);
    }

    #[test]
    fn unusable_values_are_named_never_shown() {
        let cases = [
            ("team-ghcr", Some("octo:cat"), PASSWORD.to_owned(), "username"),
            ("team-ghcr", Some(""), PASSWORD.to_owned(), "username"),
            ("team-ghcr", Some("octo\ncat"), PASSWORD.to_owned(), "username"),
            ("team-ghcr", Some("octocat"), String::new(), "password"),
            ("team-ghcr", Some("octocat"), format!("{PASSWORD}\n{PASSWORD}"), "password"),
            ("scaleway", Some("admin"), PASSWORD.to_owned(), "username"),
        ];
        for (name, username, password, expected) in cases {
            let error = render(name, username, &password).expect_err(expected);
            let shown = format!("{error} {error:?}");
            assert!(shown.starts_with(&format!("{expected}: ")), "{shown}");
            assert!(!shown.contains(PASSWORD) && !shown.contains("octo"), "{shown}");
        }
    }

    #[test]
    fn registries_without_a_pull_secret_are_refused_by_name() {
        let policy = policy();
        for (name, reason) in [
            ("hub-official-images", "is Public"),
            ("govcloud-ecr-fips", "has no pullSecret"),
            ("ecr-public", "has no pullSecret"),
        ] {
            let error = find_registry(&policy, name).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(name) && error.contains(reason), "{error}");
        }
        let kubelet = Policy::parse(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {name: ecr, type: ECR, url: 123456789012.dkr.ecr.eu-west-1.amazonaws.com, credentials: kubelet}\n",
        )
        .expect("valid");
        let error = find_registry(&kubelet, "ecr").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("credentials: kubelet"), "{error}");
        let error = find_registry(&policy, "team-ghrc").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("\"team-ghrc\"") && error.contains("\"team-ghcr\""), "{error}");
        let error = find_registry(&policy, PASSWORD).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("not a DNS label") && !error.contains(PASSWORD), "{error}");
    }

    #[test]
    fn registries_can_be_given_by_type_and_url() {
        let registry =
            registry_from_flags("Generic", "registry.example.com:5000/team", "lab-pull").expect("valid");
        let rendered =
            render_pull_secret(&registry, "ops", &credentials(Some("ci"), PASSWORD)).expect("renders");
        assert_eq!((rendered.name.as_str(), rendered.namespace.as_str()), ("lab-pull", "ops"));
        let (_, data) = reread(&rendered);
        check_source(Some(DOCKER_CONFIG_JSON_TYPE), &data, &registry).expect("accepted");
        for (args, flag) in [
            (("Ghcr", "ghcr.io", "pull"), "--type"),
            (("GHCR", "quay.io", "pull"), "--url"),
            (("GHCR", "ghcr.io", "Pull_Secret"), "--name"),
            (("GHCR", "https://me:tok@ghcr.io", "pull"), "--url"),
            (("Public", "registry.k8s.io", "pull"), "--type"),
        ] {
            let (field, problem) = field_of(registry_from_flags(args.0, args.1, args.2).expect_err(flag));
            assert_eq!(field, flag, "{problem}");
            assert!(!problem.contains("tok@"), "{problem}");
        }
    }

    fn aws_key(session_token: Option<&str>) -> AwsKey {
        AwsKey {
            access_key_id: SecretText::new(format!("{ACCESS_KEY}\n")),
            secret_access_key: SecretText::new(SECRET_KEY),
            session_token: session_token.map(SecretText::new),
        }
    }

    /// Renders an ECR key Secret and reads it back through the controller's own reader.
    fn render_key(
        name: &str,
        region: Option<&str>,
        key: &AwsKey,
    ) -> Result<(RenderedSecret, EcrKey), RenderError> {
        let policy = policy();
        let registry = find_registry(&policy, name)?;
        let rendered = render_ecr_key(registry, "registry-gate", None, region, key)?;
        let (secret_type, data) = reread(&rendered);
        assert_eq!(secret_type, "Opaque");
        assert_eq!(data["accessKeyId"], ACCESS_KEY.as_bytes(), "trimmed");
        let manifest = rendered.to_json();
        assert_eq!(manifest["metadata"]["labels"][ecr::KEY_LABEL], "true");
        let read = EcrKey::from_secret(&rendered.to_secret()).expect("the controller reads it");
        Ok((rendered, read))
    }

    #[test]
    fn ecr_key_secrets_take_their_region_from_the_url() {
        let (rendered, key) = render_key("production-ecr", None, &aws_key(None)).expect("renders");
        assert_eq!(rendered.name, "production-ecr-creds-ecr-key");
        assert_eq!(key.pull_secret, "production-ecr-creds");
        assert_eq!(key.region, "us-east-1");
        assert_eq!(key.service, ecr::Service::Ecr);
        assert_eq!(key.endpoint.to_string(), "https://api.ecr.us-east-1.amazonaws.com");
        let (rendered, _) =
            render_key("production-ecr", Some("us-east-1"), &aws_key(Some("FAKE-SESSION"))).expect("renders");
        assert_eq!(rendered.data()["sessionToken"], b"FAKE-SESSION");
        let (field, _) = field_of(
            render_key("production-ecr", Some("eu-west-1"), &aws_key(None)).err().expect("mismatch"),
        );
        assert_eq!(field, "region");
    }

    #[test]
    fn ecr_key_secrets_for_other_registries_are_refused() {
        let public = Policy::parse(
            "apiVersion: registry-gate.io/v1\nkind: RegistryPolicy\nregistries:\n  - {name: pub, type: ECRPublic, url: public.ecr.aws/acme, pullSecret: ecr-public}\n  - {name: fips, type: ECR, url: 123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com, pullSecret: fips}\n  - {name: any, type: ECR, url: \"*.dkr.ecr.eu-west-1.amazonaws.com\", pullSecret: any}\n  - {name: anyr, type: ECR, url: \"123456789012.dkr.ecr.*.amazonaws.com\", pullSecret: anyr}\n",
        )
        .expect("valid");
        let rendered =
            render_ecr_key(&public.registries[0], "registry-gate", Some("pub-key"), None, &aws_key(None))
                .expect("renders");
        let read = EcrKey::from_secret(&rendered.to_secret()).expect("read");
        assert_eq!((read.service, read.region.as_str()), (ecr::Service::EcrPublic, "us-east-1"));
        let key = aws_key(None);
        let errors = [
            render_ecr_key(&public.registries[0], "registry-gate", None, Some("eu-west-1"), &key).err(),
            render_ecr_key(&public.registries[1], "registry-gate", None, None, &key).err(),
            render_ecr_key(&public.registries[2], "registry-gate", Some("any"), Some("eu-west-1"), &key)
                .err(),
            render_ecr_key(&public.registries[2], "registry-gate", Some("Key_Name"), Some("eu-west-1"), &key)
                .err(),
            render_ecr_key(&public.registries[2], "registry-gate", None, Some("EU_WEST"), &key).err(),
            find_registry(&policy(), "team-ghcr")
                .and_then(|r| render_ecr_key(r, "registry-gate", None, None, &key))
                .err(),
            render_ecr_key(
                &public.registries[2],
                "registry-gate",
                None,
                Some("eu-west-1"),
                &AwsKey {
                    access_key_id: SecretText::new(ACCESS_KEY),
                    secret_access_key: SecretText::new(format!("{SECRET_KEY} x")),
                    session_token: None,
                },
            )
            .err(),
        ];
        for error in errors {
            let shown = error.map(|e| format!("{e} {e:?}")).expect("refused");
            assert!(!shown.contains(ACCESS_KEY) && !shown.contains(SECRET_KEY), "{shown}");
        }
        let any_account =
            render_ecr_key(&public.registries[2], "registry-gate", None, None, &key).expect("ok");
        let read = EcrKey::from_secret(&any_account.to_secret()).expect("read");
        assert_eq!(read.region, "eu-west-1", "a wildcard account keeps the URL's region");
        let (field, _) = field_of(
            render_ecr_key(&public.registries[3], "registry-gate", None, None, &key)
                .err()
                .expect("no region"),
        );
        assert_eq!(field, "region");
        let any_region =
            render_ecr_key(&public.registries[3], "registry-gate", None, Some("ap-south-2"), &key)
                .expect("ok");
        let read = EcrKey::from_secret(&any_region.to_secret()).expect("read");
        assert_eq!(read.region, "ap-south-2", "a wildcard region is given by --region");
    }

    #[test]
    fn manifests_carry_no_value_in_clear() {
        let policy = policy();
        let registry = find_registry(&policy, "team-ghcr").expect("found");
        let rendered = render_pull_secret(registry, "registry-gate", &credentials(Some("octocat"), PASSWORD))
            .expect("ok");
        assert!(!rendered.to_yaml().contains(PASSWORD));
        assert!(!rendered.to_json().to_string().contains(PASSWORD));
        let (key, _) = render_key("production-ecr", None, &aws_key(None)).expect("renders");
        for text in [key.to_yaml(), key.to_json().to_string()] {
            assert!(!text.contains(ACCESS_KEY) && !text.contains(SECRET_KEY), "{text}");
        }
    }

    #[test]
    fn namespaces_must_be_names() {
        let policy = policy();
        let registry = find_registry(&policy, "team-ghcr").expect("found");
        let error = render_pull_secret(registry, "Registry Gate", &credentials(Some("u"), PASSWORD))
            .err()
            .map(field_of)
            .expect("refused");
        assert_eq!(error.0, "--namespace");
    }
}
