//! The test token issuer: a fake of the token service that a registry with `auth: token`
//! sends clients to (Docker Hub's auth.docker.io, Harbor's, GitLab's). No token server ships
//! with Debian, so this one stands in for it, speaking the distribution token protocol:
//!
//! - `GET /token?service=S&scope=repository:NAME:pull` with Basic credentials;
//! - wrong credentials: 401; none: an anonymous token when the issuer gives them (as Docker Hub,
//!   GHCR and Quay do, granting pull on public repositories), else 401;
//! - otherwise `{"token", "access_token", "expires_in"}`, a JWT signed ES256 with ring whose
//!   header carries `x5c` with the signing certificate (the registry's `rootcertbundle` holds the
//!   same certificate; distribution 2.8 verifies the chain and the signature), and whose `access`
//!   claim grants `pull` on the repositories asked for, or nothing, as the account says.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

use super::pki::{ServerCert, SigningCert};
use super::server::{FakeServer, authorization, respond};

/// The `service` the registry and the issuer agree on.
pub const SERVICE: &str = "registry-gate-test-registry";
/// The `iss` of every token, which the registry trusts.
pub const ISSUER: &str = "registry-gate-test-token-issuer";

/// What an account's tokens grant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `pull` on each repository asked for.
    Pull,
    /// Nothing: a token with an empty `access` claim, as token services issue for a repository
    /// the account may not use.
    Nothing,
    /// `pull` on the repositories asked for whose names start with the prefix (the public ones).
    PullUnder(&'static str),
}

impl Grant {
    fn grants_pull(self, repository: &str) -> bool {
        match self {
            Grant::Pull => true,
            Grant::Nothing => false,
            Grant::PullUnder(prefix) => repository.starts_with(prefix),
        }
    }
}

#[derive(Clone)]
pub struct Account {
    pub username: &'static str,
    pub password: &'static str,
    pub grant: Grant,
}

/// A running test token issuer.
pub struct TestTokenIssuer {
    pub server: FakeServer,
    /// The signing certificate, for the registry's `rootcertbundle`.
    pub signing_cert_pem: String,
    /// Every token issued, so that tests can check none is ever printed.
    issued: Arc<Mutex<Vec<String>>>,
}

impl TestTokenIssuer {
    /// An issuer for the accounts; `anonymous` is what a request without credentials gets, or
    /// `None` for a 401.
    pub async fn start(
        serving: &ServerCert,
        accounts: Vec<Account>,
        anonymous: Option<Grant>,
    ) -> TestTokenIssuer {
        let signing = SigningCert::new();
        let signing_cert_pem = signing.cert_pem.clone();
        let issued = Arc::new(Mutex::new(Vec::new()));
        let record = issued.clone();
        let key = Arc::new(
            EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &signing.key_pkcs8,
                &SystemRandom::new(),
            )
            .expect("the signing key"),
        );
        let x5c = STANDARD.encode(&signing.cert_der);
        let server = FakeServer::start(Some(serving.server_config()), move |_| {
            Arc::new(move |request| {
                if request.uri().path() != "/token" {
                    return respond(404, &[], "not found");
                }
                let query = request.uri().query().unwrap_or_default();
                let params = parse_query(query);
                let account = match authorization(request) {
                    None => anonymous.map(|grant| Account { username: "", password: "", grant }),
                    Some(value) => value
                        .strip_prefix("Basic ")
                        .and_then(|encoded| STANDARD.decode(encoded).ok())
                        .and_then(|decoded| String::from_utf8(decoded).ok())
                        .and_then(|pair| {
                            let (user, password) = pair.split_once(':')?;
                            accounts.iter().find(|a| a.username == user && a.password == password).cloned()
                        }),
                };
                let Some(account) = account else {
                    return respond(
                        401,
                        &[("content-type", "application/json")],
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    );
                };
                if params.iter().any(|(k, v)| k == "service" && v != SERVICE) {
                    return respond(400, &[], "unknown service");
                }
                let access: Vec<serde_json::Value> = params
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .filter_map(|(_, scope)| {
                        let mut parts = scope.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        let wants_pull = actions.split(',').any(|a| a == "pull");
                        (kind == "repository" && wants_pull && account.grant.grants_pull(name))
                            .then(|| json!({"type": "repository", "name": name, "actions": ["pull"]}))
                    })
                    .collect();
                let token = sign(&key, &x5c, account.username, access);
                record.lock().expect("not poisoned").push(token.clone());
                let body = json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
                respond(200, &[("content-type", "application/json")], &body)
            })
        })
        .await;
        TestTokenIssuer { server, signing_cert_pem, issued }
    }

    /// The realm the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("https://{}/token", self.server.addr)
    }

    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().expect("not poisoned").clone()
    }
}

/// A JWT, ES256, `x5c` in the header: what distribution 2.8's token access controller verifies.
fn sign(key: &EcdsaKeyPair, x5c: &str, subject: &str, access: Vec<serde_json::Value>) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("test-{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(&SystemRandom::new(), signing_input.as_bytes()).expect("signed");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// `a=1&b=x%3Ay` as pairs, percent-decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
