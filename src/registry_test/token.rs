//! A token endpoint's answer, and what the token says it grants.
//!
//! The answer is `{"token": "..."}` or `{"access_token": "..."}` (OAuth's name; a server may
//! send both, the same). When the token is a JWT, its claims are decoded without verifying the
//! signature (only the registry can), to read the `access` claim of the distribution token
//! spec: `[{"type": "repository", "name": "acme/app", "actions": ["pull"]}]`. A token endpoint
//! answers a scope the account may not use with a token that grants nothing rather than an
//! error, so that claim is the only way to tell "no permission" without pulling.
//!
//! The token itself never leaves [`IssuedToken`] except as a sensitive header value.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hyper::header::HeaderValue;
use serde_json::Value;

/// A token response may be at most this long: real ones are 1-4 KiB, and a hostile server must
/// not make the test read gigabytes.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// A token may be at most this long (it goes into every request header).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// `access` entries read from a JWT: a token for one repository has one.
const MAX_ACCESS_ENTRIES: usize = 256;

/// JWT parts: base64url, padded or not.
const JWT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A token the endpoint issued. Deliberately not `Debug`: it is a credential.
pub struct IssuedToken {
    value: String,
    /// The JWT's claims when the token is one; `None` for an opaque token.
    pub claims: Option<Claims>,
    /// `expires_in`, when given.
    pub expires_in: Option<u64>,
}

/// The claims of a JWT that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The `access` claim; `None` when the token has none (it then says nothing about scope).
    pub access: Option<Vec<Access>>,
}

/// One `access` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl IssuedToken {
    /// `Bearer TOKEN`, marked sensitive so that no HTTP layer logs it.
    pub fn authorization(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.value)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// Reads a token endpoint's 200 answer. `Err` says what is wrong in fixed words.
pub fn parse_response(body: &[u8]) -> Result<IssuedToken, &'static str> {
    let document: Value = serde_json::from_slice(body).map_err(|_| "is not JSON")?;
    let Value::Object(fields) = document else {
        return Err("is not a JSON object");
    };
    let pick = |name| fields.get(name).and_then(Value::as_str).filter(|token| !token.is_empty());
    let value =
        pick("token").or_else(|| pick("access_token")).ok_or("holds neither token nor access_token")?;
    if value.len() > MAX_TOKEN_BYTES {
        return Err("holds a token longer than 16 KiB");
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("holds a token with characters that cannot go in a header");
    }
    Ok(IssuedToken {
        value: value.to_owned(),
        claims: decode_jwt(value),
        expires_in: fields.get("expires_in").and_then(Value::as_u64),
    })
}

/// The claims of a JWT, unverified; `None` when `token` is not a JWT.
fn decode_jwt(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&JWT_BASE64.decode(header).ok()?).ok()?;
    header.get("alg")?.as_str()?;
    let payload: Value = serde_json::from_slice(&JWT_BASE64.decode(payload).ok()?).ok()?;
    let payload = payload.as_object()?;
    let access = match payload.get("access") {
        None | Some(Value::Null) => None,
        Some(Value::Array(entries)) => {
            Some(entries.iter().take(MAX_ACCESS_ENTRIES).filter_map(access_entry).collect())
        }
        // An `access` claim of another shape grants nothing that can be read.
        Some(_) => Some(Vec::new()),
    };
    Some(Claims { access })
}

fn access_entry(entry: &Value) -> Option<Access> {
    let text = |name| entry.get(name).and_then(Value::as_str).map(str::to_owned);
    let actions =
        entry.get("actions")?.as_array()?.iter().filter_map(Value::as_str).map(str::to_owned).collect();
    Some(Access { kind: text("type")?, name: text("name")?, actions })
}

/// The actions `access` grants on `repository` (`*` counts as every action).
pub fn actions_on<'a>(access: &'a [Access], repository: &str) -> Vec<&'a str> {
    let mut actions: Vec<&str> = access
        .iter()
        .filter(|a| a.kind == "repository" && a.name == repository)
        .flat_map(|a| a.actions.iter().map(String::as_str))
        .collect();
    actions.sort_unstable();
    actions.dedup();
    actions
}

/// Whether `access` grants pulling `repository`.
pub fn grants_pull(access: &[Access], repository: &str) -> bool {
    actions_on(access, repository).iter().any(|action| *action == "pull" || *action == "*")
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    fn jwt(claims: Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{claims}.c2lnbmF0dXJl")
    }

    #[test]
    fn token_or_access_token() {
        let token = parse_response(br#"{"token": "abc", "expires_in": 300}"#)
            .map_err(|e| e.to_owned())
            .expect("token");
        assert_eq!((token.value.as_str(), token.expires_in), ("abc", Some(300)));
        assert!(token.claims.is_none(), "an opaque token has no claims");
        let token =
            parse_response(br#"{"access_token": "xyz"}"#).map_err(|e| e.to_owned()).expect("access_token");
        assert_eq!(token.value, "xyz");
        let token = parse_response(br#"{"token": "", "access_token": "xyz"}"#)
            .map_err(|e| e.to_owned())
            .expect("fallback");
        assert_eq!(token.value, "xyz");
        let header = token.authorization().expect("header");
        assert!(header.is_sensitive());
    }

    #[test]
    fn malformed_answers() {
        for body in [
            &b""[..],
            b"<html>",
            b"[\"token\"]",
            b"{}",
            br#"{"token": 5}"#,
            br#"{"token": "a b"}"#,
            "{\"token\": \"caf\u{e9}\"}".as_bytes(),
            br#"{"token": "a\nb"}"#,
        ] {
            assert!(parse_response(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let long = format!(r#"{{"token": "{}"}}"#, "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(parse_response(long.as_bytes()).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_response(deep.as_bytes()).is_err(), "serde_json's recursion limit holds");
    }

    #[test]
    fn jwt_access_claims() {
        let value = jwt(json!({
            "iss": "issuer",
            "access": [
                {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]},
                {"type": "repository", "name": "acme/other", "actions": ["*"]},
                {"type": "registry", "name": "catalog", "actions": ["*"]},
                {"type": "repository", "name": "bad"},
            ],
        }));
        let token = parse_response(json!({ "token": value }).to_string().as_bytes())
            .map_err(|e| e.to_owned())
            .expect("token");
        let access = token.claims.expect("a JWT").access.expect("an access claim");
        assert_eq!(access.len(), 3, "the entry without actions is dropped");
        assert!(grants_pull(&access, "acme/app"));
        assert!(grants_pull(&access, "acme/other"));
        assert!(!grants_pull(&access, "acme"));
        assert!(!grants_pull(&access, "catalog"));
        assert_eq!(actions_on(&access, "acme/app"), ["pull", "push"]);
    }

    #[test]
    fn tokens_granting_nothing() {
        let none = jwt(json!({"access": []}));
        let claims = decode_jwt(&none).expect("JWT");
        assert_eq!(claims.access, Some(vec![]));
        let push_only = jwt(json!({"access": [{"type": "repository", "name": "a", "actions": ["push"]}]}));
        assert!(!grants_pull(&decode_jwt(&push_only).and_then(|c| c.access).expect("access"), "a"));
        let odd = jwt(json!({"access": "everything"}));
        assert_eq!(decode_jwt(&odd).expect("JWT").access, Some(vec![]));
        assert_eq!(decode_jwt(&jwt(json!({"sub": "x"}))).expect("JWT").access, None);
    }

    #[test]
    fn not_jwts() {
        for token in ["opaque", "a.b", "a.b.c.d", "!!.??.x", "e30.e30.x"] {
            assert!(decode_jwt(token).is_none(), "{token}");
        }
        // A header without alg is not a JWT header.
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT"}"#);
        assert!(decode_jwt(&format!("{header}.e30.x")).is_none());
    }
}
