//! `WWW-Authenticate` challenges (RFC 7235 §4.1), as a registry sends them with a 401 to
//! `GET /v2/`, and the one registry-gate answers: Bearer (a token from the realm) before Basic.
//!
//! The header comes from a server that has proved nothing yet, so parsing is bounded (length,
//! number of challenges and parameters, value length) and refuses control characters; errors
//! name what is wrong in fixed words, and a realm is shown only through [`shown`].
//!
//! The grammar, with what is lenient about it:
//!
//! ```text
//! challenges = challenge *( OWS "," OWS challenge )
//! challenge  = scheme [ 1*SP ( token68 / auth-param *( OWS "," OWS auth-param ) ) ]
//! auth-param = token OWS "=" OWS ( token / quoted-string )
//! ```
//!
//! Commas separate both parameters and challenges; after a comma, `name =` starts a parameter
//! and anything else a new challenge. An unquoted value may hold any visible character but `,`
//! and `"` (servers write `realm=https://host/token` unquoted, which strict `token` forbids).

use hyper::Uri;
use serde::Serialize;

use super::shown;

/// All `WWW-Authenticate` headers of one answer together may be at most this long: real ones
/// are under 300 bytes, and the answer's whole head is bounded before this by the HTTP client.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Challenges in all headers together: registries send one, sometimes two.
const MAX_CHALLENGES: usize = 16;
/// Parameters of one challenge: Bearer has three (realm, service, scope), plus an error or two.
const MAX_PARAMS: usize = 16;
/// A parameter value (a realm URL, a scope list) may be at most this long.
const MAX_VALUE_BYTES: usize = 2048;

/// One challenge: a scheme (lower case) and either parameters or a token68.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    /// Names in lower case (they are case-insensitive), values unquoted.
    pub params: Vec<(String, String)>,
    pub token68: Option<String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why no usable challenge was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// A 401 without any `WWW-Authenticate` header: the client cannot know how to log in.
    #[error("the 401 answer has no WWW-Authenticate header, so there is no way to know how to log in")]
    Missing,
    /// The headers together exceed [`MAX_HEADER_BYTES`].
    #[error("the WWW-Authenticate header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// A byte outside printable ASCII (a control character, or non-ASCII).
    #[error("the WWW-Authenticate header holds control characters or non-ASCII bytes")]
    NotPrintable,
    /// The header does not follow the grammar; the reason says where.
    #[error("the WWW-Authenticate header is malformed: {0}")]
    Malformed(&'static str),
    /// More than [`MAX_CHALLENGES`] challenges or [`MAX_PARAMS`] parameters in one.
    #[error("the WWW-Authenticate header has more challenges or parameters than any registry sends")]
    TooMany,
    /// The same parameter twice in one challenge (RFC 7235 forbids it; which one counts is
    /// anyone's guess).
    #[error("the WWW-Authenticate {scheme} challenge names parameter {param:?} twice")]
    Duplicate { scheme: String, param: String },
    /// Neither Basic nor Bearer is offered; `schemes` lists what is (shown, at most a few).
    #[error("the registry offers only {schemes} authentication; registries use Basic or Bearer")]
    Unsupported { schemes: String },
    /// A Bearer challenge without `realm`: there is no token endpoint to ask.
    #[error("the Bearer challenge has no realm, so there is no token endpoint to ask")]
    NoRealm,
    /// The realm is not an absolute URL this client may send credentials to; `reason` says why.
    #[error("the Bearer realm {realm} {reason}")]
    BadRealm { realm: String, reason: &'static str },
}

/// Which scheme the registry asks for, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    Basic,
    Bearer,
}

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Basic => "basic",
            AuthScheme::Bearer => "bearer",
        }
    }
}

/// The challenge registry-gate answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Basic(Challenge),
    Bearer(Bearer),
}

impl Auth {
    pub fn scheme(&self) -> AuthScheme {
        match self {
            Auth::Basic(_) => AuthScheme::Basic,
            Auth::Bearer(_) => AuthScheme::Bearer,
        }
    }
}

/// A Bearer challenge: where to get a token, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub realm: Realm,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// A token endpoint URL, checked: `https://` (or `http://` on loopback when plain HTTP is
/// allowed), a host, no user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm {
    pub https: bool,
    /// Without brackets for IPv6: what DNS, SNI and certificate checks take.
    pub host: String,
    pub port: u16,
    /// `/path?query`, as given.
    pub path_and_query: String,
    /// `scheme://host[:port]/path`, without the query, for messages.
    pub shown: String,
}

/// Parses every `WWW-Authenticate` header of an answer, in order.
pub fn parse_headers<'h>(
    headers: impl IntoIterator<Item = &'h [u8]>,
) -> Result<Vec<Challenge>, ChallengeError> {
    let mut challenges = Vec::new();
    let mut total = 0;
    let mut any = false;
    for value in headers {
        any = true;
        total += value.len();
        if total > MAX_HEADER_BYTES {
            return Err(ChallengeError::TooLong);
        }
        let text = std::str::from_utf8(value).map_err(|_| ChallengeError::NotPrintable)?;
        challenges.extend(parse(text)?);
        if challenges.len() > MAX_CHALLENGES {
            return Err(ChallengeError::TooMany);
        }
    }
    if !any {
        return Err(ChallengeError::Missing);
    }
    Ok(challenges)
}

/// The challenge to answer: Bearer if offered (it is what registries that offer both prefer),
/// else Basic. `allow_http_realm` admits an `http://` realm on a loopback host (plain-HTTP
/// tests of a local registry); anywhere else credentials go over TLS only.
pub fn select(challenges: &[Challenge], allow_http_realm: bool) -> Result<Auth, ChallengeError> {
    if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
        let realm = bearer.param("realm").ok_or(ChallengeError::NoRealm)?;
        let realm = parse_realm(realm, allow_http_realm)?;
        return Ok(Auth::Bearer(Bearer {
            realm,
            service: bearer.param("service").map(str::to_owned),
            scope: bearer.param("scope").map(str::to_owned),
        }));
    }
    if let Some(basic) = challenges.iter().find(|c| c.scheme == "basic") {
        return Ok(Auth::Basic(basic.clone()));
    }
    if challenges.is_empty() {
        return Err(ChallengeError::Malformed("it holds no challenge"));
    }
    let schemes: Vec<String> = challenges.iter().take(4).map(|c| shown(&c.scheme)).collect();
    Err(ChallengeError::Unsupported { schemes: schemes.join(", ") })
}

/// Checks a realm URL; see [`Realm`].
fn parse_realm(text: &str, allow_http: bool) -> Result<Realm, ChallengeError> {
    let bad = |reason| ChallengeError::BadRealm { realm: shown(text), reason };
    let uri: Uri = text.parse().map_err(|_| bad("is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(_) => return Err(bad("is neither https:// nor http://")),
        None => return Err(bad("is not an absolute URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("has user info; credentials are never sent to such a URL"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let plain_allowed = allow_http && is_loopback_host(&host);
    if !https && !plain_allowed {
        return Err(bad(
            "is plain http://; credentials go to a token endpoint over https:// only (http:// is accepted on loopback with --plain-http)",
        ));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let scheme = if https { "https" } else { "http" };
    let shown_url = shown(&format!("{scheme}://{}{}", authority.as_str(), uri.path()));
    Ok(Realm { https, host, port, path_and_query, shown: shown_url })
}

/// `localhost` or a loopback IP literal.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses one header value into its challenges.
pub fn parse(text: &str) -> Result<Vec<Challenge>, ChallengeError> {
    if text.len() > MAX_HEADER_BYTES {
        return Err(ChallengeError::TooLong);
    }
    if text.bytes().any(|b| !(b == b'\t' || (0x20..0x7f).contains(&b))) {
        return Err(ChallengeError::NotPrintable);
    }
    let mut cursor = Cursor { bytes: text.as_bytes(), at: 0 };
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        cursor.skip_list_separators();
        if cursor.done() {
            break;
        }
        let scheme = cursor
            .token()
            .ok_or(ChallengeError::Malformed("a challenge does not start with a scheme name"))?;
        let mut challenge =
            Challenge { scheme: scheme.to_ascii_lowercase(), params: Vec::new(), token68: None };
        let spaced = cursor.skip_spaces();
        let mut first = true;
        loop {
            if cursor.done() {
                break;
            }
            if cursor.peek() == Some(b',') {
                // A parameter follows if `name =` does; otherwise the next challenge starts here.
                let mark = cursor.at;
                cursor.skip_list_separators();
                if cursor.done() {
                    break;
                }
                if !cursor.starts_param() {
                    cursor.at = mark;
                    break;
                }
            } else if !first {
                return Err(ChallengeError::Malformed("parameters must be separated by commas"));
            } else if !spaced {
                return Err(ChallengeError::Malformed("a scheme name must be followed by a space"));
            }
            if first && let Some(token68) = cursor.token68() {
                challenge.token68 = Some(token68.to_owned());
                cursor.skip_spaces();
                if !cursor.done() && cursor.peek() != Some(b',') {
                    return Err(ChallengeError::Malformed("unexpected text after a token68"));
                }
                break;
            }
            first = false;
            let (name, value) = cursor.param()?;
            if challenge.params.iter().any(|(n, _)| *n == name) {
                return Err(ChallengeError::Duplicate {
                    scheme: shown(&challenge.scheme),
                    param: shown(&name),
                });
            }
            if challenge.params.len() == MAX_PARAMS {
                return Err(ChallengeError::TooMany);
            }
            challenge.params.push((name, value));
            cursor.skip_spaces();
        }
        if challenges.len() == MAX_CHALLENGES {
            return Err(ChallengeError::TooMany);
        }
        challenges.push(challenge);
    }
    Ok(challenges)
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 7235 `token68` characters before its trailing `=`s.
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

struct Cursor<'t> {
    bytes: &'t [u8],
    at: usize,
}

impl<'t> Cursor<'t> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.at + offset).copied()
    }

    /// Skips spaces and tabs; whether there were any.
    fn skip_spaces(&mut self) -> bool {
        let start = self.at;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
        self.at > start
    }

    /// Skips `OWS` and commas (empty list elements are allowed).
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.at += 1;
        }
    }

    fn text(&self, start: usize, end: usize) -> &'t str {
        // Printable ASCII was checked before the cursor was made.
        std::str::from_utf8(&self.bytes[start..end]).unwrap_or_default()
    }

    fn token(&mut self) -> Option<&'t str> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        (self.at > start).then(|| self.text(start, self.at))
    }

    /// Whether `token OWS =` starts here (without moving).
    fn starts_param(&self) -> bool {
        let mut i = self.at;
        while self.bytes.get(i).copied().is_some_and(is_tchar) {
            i += 1;
        }
        if i == self.at {
            return false;
        }
        while matches!(self.bytes.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        self.bytes.get(i) == Some(&b'=')
    }

    /// A token68 here: its characters then `=`s, ending the challenge (end, comma or spaces
    /// then end or comma). Does not move unless it matches.
    fn token68(&mut self) -> Option<&'t str> {
        let start = self.at;
        let mut i = 0;
        while self.peek_at(i).is_some_and(is_token68_char) {
            i += 1;
        }
        if i == 0 {
            return None;
        }
        while self.peek_at(i) == Some(b'=') {
            i += 1;
        }
        // `name=value` is a parameter: text follows the `=`.
        let mut j = i;
        while matches!(self.peek_at(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if !matches!(self.peek_at(j), None | Some(b',')) {
            return None;
        }
        self.at += i;
        Some(self.text(start, self.at))
    }

    /// `token OWS "=" OWS ( token / quoted-string )`.
    fn param(&mut self) -> Result<(String, String), ChallengeError> {
        let name = self.token().ok_or(ChallengeError::Malformed("a parameter does not start with a name"))?;
        self.skip_spaces();
        if self.peek() != Some(b'=') {
            return Err(ChallengeError::Malformed("a parameter name is not followed by ="));
        }
        self.at += 1;
        self.skip_spaces();
        let value = if self.peek() == Some(b'"') { self.quoted()? } else { self.bare_value()? };
        Ok((name.to_ascii_lowercase(), value))
    }

    fn quoted(&mut self) -> Result<String, ChallengeError> {
        self.at += 1;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ChallengeError::Malformed("a quoted value is not closed")),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = self
                        .peek_at(1)
                        .ok_or(ChallengeError::Malformed("a quoted value ends in a backslash"))?;
                    value.push(escaped);
                    self.at += 2;
                }
                Some(b) => {
                    value.push(b);
                    self.at += 1;
                }
            }
            if value.len() > MAX_VALUE_BYTES {
                return Err(ChallengeError::Malformed("a parameter value is longer than 2048 bytes"));
            }
        }
        // Printable ASCII in, printable ASCII out.
        Ok(String::from_utf8(value).unwrap_or_default())
    }

    fn bare_value(&mut self) -> Result<String, ChallengeError> {
        let start = self.at;
        while self.peek().is_some_and(|b| !matches!(b, b',' | b' ' | b'\t' | b'"')) {
            self.at += 1;
        }
        if self.at == start {
            return Err(ChallengeError::Malformed("a parameter has no value"));
        }
        if self.at - start > MAX_VALUE_BYTES {
            return Err(ChallengeError::Malformed("a parameter value is longer than 2048 bytes"));
        }
        Ok(self.text(start, self.at).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Challenge {
        let mut all = parse(text).expect("parses");
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[test]
    fn bearer_as_registries_send_it() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/nginx:pull"));
        let Auth::Bearer(bearer) = select(&[c], false).expect("selected") else { panic!("not Bearer") };
        assert_eq!(bearer.realm.host, "auth.docker.io");
        assert_eq!(bearer.realm.port, 443);
        assert_eq!(bearer.realm.path_and_query, "/token");
    }

    #[test]
    fn basic_with_and_without_parameters() {
        let c = one(r#"Basic realm="Registry Realm""#);
        assert_eq!((c.scheme.as_str(), c.param("realm")), ("basic", Some("Registry Realm")));
        // ECR's: a realm and a service.
        let c = one(
            r#"Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com""#,
        );
        assert_eq!(c.param("service"), Some("ecr.amazonaws.com"));
        assert_eq!(one("Basic").params, vec![]);
        assert!(matches!(select(&[one("Basic")], false), Ok(Auth::Basic(_))));
    }

    #[test]
    fn names_are_case_insensitive_and_spacing_is_lenient() {
        let c = one(r#"BEARER Realm = "https://h/t" ,  SERVICE=svc"#);
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://h/t"));
        assert_eq!(c.param("service"), Some("svc"));
    }

    #[test]
    fn unquoted_urls_and_escapes() {
        let c = one("Bearer realm=https://h:8443/token?x=1,service=svc");
        assert_eq!(c.param("realm"), Some("https://h:8443/token?x=1"));
        let c = one(r#"Basic realm="say \"hi\" \\ there""#);
        assert_eq!(c.param("realm"), Some(r#"say "hi" \ there"#));
    }

    #[test]
    fn several_challenges_in_one_header_and_bearer_wins() {
        let all = parse(r#"Basic realm="r", Bearer realm="https://t/token", service="s", Negotiate"#)
            .expect("parses");
        let schemes: Vec<&str> = all.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(all[1].param("service"), Some("s"));
        assert_eq!(select(&all, false).expect("selected").scheme(), AuthScheme::Bearer);
    }

    #[test]
    fn token68_is_kept_apart_from_parameters() {
        let all = parse("Negotiate dXNlcg==, Basic realm=x").expect("parses");
        assert_eq!(all[0].token68.as_deref(), Some("dXNlcg=="));
        assert_eq!(all[1].param("realm"), Some("x"));
        assert_eq!(one("NTLM abc").token68.as_deref(), Some("abc"));
    }

    #[test]
    fn several_headers() {
        let all =
            parse_headers([&b"Basic realm=a"[..], &b"Bearer realm=\"https://b/\""[..]]).expect("parses");
        assert_eq!(all.len(), 2);
        assert_eq!(parse_headers(std::iter::empty()), Err(ChallengeError::Missing));
    }

    #[test]
    fn unsupported_schemes_are_named() {
        let err = select(&parse("Negotiate, NTLM").expect("parses"), false).expect_err("unsupported");
        assert_eq!(err, ChallengeError::Unsupported { schemes: "negotiate, ntlm".into() });
        assert!(matches!(select(&[], false), Err(ChallengeError::Malformed(_))));
    }

    #[test]
    fn realms_must_be_absolute_https_without_user_info() {
        let realm = |value: &str, http| {
            select(
                &[Challenge {
                    scheme: "bearer".into(),
                    params: vec![("realm".into(), value.into())],
                    token68: None,
                }],
                http,
            )
        };
        assert!(matches!(realm("/token", false), Err(ChallengeError::BadRealm { .. })));
        assert!(matches!(realm("ftp://h/token", false), Err(ChallengeError::BadRealm { .. })));
        assert!(matches!(realm("https://u:p@h/token", false), Err(ChallengeError::BadRealm { .. })));
        assert!(matches!(realm("http://auth.example/token", false), Err(ChallengeError::BadRealm { .. })));
        assert!(matches!(realm("http://auth.example/token", true), Err(ChallengeError::BadRealm { .. })));
        assert!(matches!(realm("http://127.0.0.1:9/token", false), Err(ChallengeError::BadRealm { .. })));
        let Ok(Auth::Bearer(bearer)) = realm("http://127.0.0.1:9/token", true) else {
            panic!("loopback http")
        };
        assert_eq!((bearer.realm.https, bearer.realm.port), (false, 9));
        let Ok(Auth::Bearer(bearer)) = realm("https://[::1]:8443/t?a=b", false) else { panic!("IPv6") };
        assert_eq!((bearer.realm.host.as_str(), bearer.realm.path_and_query.as_str()), ("::1", "/t?a=b"));
        assert_eq!(bearer.realm.shown, "https://[::1]:8443/t");
        let no_realm = Challenge { scheme: "bearer".into(), params: vec![], token68: None };
        assert_eq!(select(&[no_realm], false), Err(ChallengeError::NoRealm));
    }

    #[test]
    fn hostile_inputs_are_refused_in_fixed_words() {
        for (text, why) in [
            ("", "empty"),
            (",,, ,", "only separators"),
            ("Bearer realm=\"https://h/t", "unclosed quote"),
            ("Bearer realm=\"x\\", "trailing backslash"),
            ("Bearer realm=", "no value"),
            ("Bearer realm", "name without ="),
            ("Bearer realm=\"a\" service=\"b\"", "no comma"),
            ("Bearer=x", "no scheme"),
            ("=x", "no scheme"),
            ("Bearer realm=a, realm=b", "duplicate"),
            ("\"Bearer\"", "quoted scheme"),
            ("Bearer realm=\"a\"junk", "junk after quote"),
            ("Bearer realm=a,=b", "param without name"),
        ] {
            let result = parse(text).and_then(|all| select(&all, false).map(|_| ()));
            assert!(result.is_err(), "{why}: {text:?} was accepted");
        }
        assert_eq!(parse("Bearer realm=\"a\u{1b}[31m\""), Err(ChallengeError::NotPrintable));
        assert_eq!(parse("Bearer realm=\"caf\u{e9}\""), Err(ChallengeError::NotPrintable));
        assert_eq!(parse("Bearer realm=\"a\r\nSet-Cookie: x\""), Err(ChallengeError::NotPrintable));
        assert_eq!(parse_headers([&[0xff_u8, 0xfe][..]]), Err(ChallengeError::NotPrintable));
    }

    #[test]
    fn hostile_sizes_are_bounded() {
        let long = format!("Bearer realm=\"{}\"", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(parse(&long), Err(ChallengeError::TooLong));
        let long_value = format!("Bearer realm=\"{}\"", "a".repeat(MAX_VALUE_BYTES + 1));
        assert!(matches!(parse(&long_value), Err(ChallengeError::Malformed(_))));
        let many_params: String = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(parse(&format!("Bearer {many_params}")), Err(ChallengeError::TooMany));
        let many_challenges = vec!["Basic"; MAX_CHALLENGES + 1].join(", ");
        assert_eq!(parse(&many_challenges), Err(ChallengeError::TooMany));
        let split: Vec<Vec<u8>> =
            (0..5).map(|_| format!("Basic realm=\"{}\"", "b".repeat(2000)).into_bytes()).collect();
        assert_eq!(parse_headers(split.iter().map(Vec::as_slice)), Err(ChallengeError::TooLong));
    }

    #[test]
    fn deep_or_repetitive_input_stays_linear() {
        // Nothing nests, so depth cannot blow a stack; a long run of one character is scanned once.
        let commas = ",".repeat(MAX_HEADER_BYTES - 10);
        assert_eq!(parse(&format!("Basic{commas}")).map(|c| c.len()), Ok(1));
        let equals = format!("Negotiate a{}", "=".repeat(4000));
        assert_eq!(one(&equals).token68.map(|t| t.len()), Some(4001));
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.3.2.1", "::1", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["localhost.example", "10.0.0.1", "::2", "example.com"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
