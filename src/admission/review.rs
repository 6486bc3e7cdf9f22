//! The `admission.k8s.io/v1` AdmissionReview wire format: a lean, borrowing view of the request
//! (only what a decision needs; the rest of the object is skipped unparsed) and the response.

use base64::Engine;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::workload::{ObjectOnly, ObjectView, Text, optional_object};

mod nesting;
// Public for `benches/review.rs`, which times the scan on its own.
pub use nesting::nests_at_most;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";
/// The deepest JSON nesting a review may have. A CronJob review nests about 15 levels and its
/// `managedFields` about 30; nothing the API server sends for the kinds reviewed here comes
/// near this. sonic-rs skips unknown fields recursively without a limit of its own, so an 18 KB
/// body of nested arrays would otherwise overflow the stack and abort the process.
pub const MAX_JSON_DEPTH: usize = 64;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(borrow)]
    api_version: Option<Text<'a>>,
    #[serde(borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    request: Option<Request<'a>>,
}

/// The parts of an AdmissionRequest that registry-gate reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    #[serde(borrow, default)]
    pub uid: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub kind: Option<GroupVersionKind<'a>>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub operation: Option<Text<'a>>,
    /// A dry run must have no side effects (no Events).
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub user_info: Option<UserInfo<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub object: Option<ObjectView<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    pub old_object: Option<ObjectView<'a>>,
}

/// The same envelope with the objects left unread: used only when the one-pass read failed, to
/// tell a broken envelope (400) from an object whose fields have the wrong shape (denied).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope<'a> {
    #[serde(borrow, default, deserialize_with = "optional_object")]
    request: Option<RawRequest<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest<'a> {
    #[serde(borrow, default)]
    uid: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "optional_object")]
    kind: Option<GroupVersionKind<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Text<'a>>,
    /// Read through (it must be JSON, and only one), not kept.
    #[serde(default)]
    #[allow(dead_code)]
    object: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    pub kind: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct UserInfo<'a> {
    #[serde(borrow, default)]
    pub username: Option<Text<'a>>,
}

/// A body that cannot be answered with an AdmissionReview: the server returns 400 with this
/// message, which the API server records and (with `failurePolicy: Fail`) turns into a denial.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON of the AdmissionReview shape.
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(String),
    /// The body nests deeper than any object the API server sends.
    #[error("the body nests JSON deeper than {MAX_JSON_DEPTH} levels; no AdmissionReview does")]
    TooDeep,
    /// The envelope names another API version or kind.
    #[error("the body is {found}; registry-gate answers {API_VERSION} {KIND}")]
    WrongType { found: String },
    /// No `request` to answer.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// A response must echo `request.uid`; without one no answer can be matched to the request.
    #[error("request.uid is missing; the API server always sends one")]
    NoUid,
    /// A well-formed review whose object has fields of the wrong shape: answered with a denial
    /// (fail closed), since its images cannot be seen.
    #[error("{kind} {name:?} in namespace {namespace:?} cannot be read: {detail}")]
    UnreadableObject { uid: String, kind: String, name: String, namespace: String, detail: String },
}

impl<'a> Request<'a> {
    /// Reads the request out of an AdmissionReview body.
    ///
    /// One JSON reader, sonic-rs, reads every review, its error path included: two readers could
    /// disagree about a body, and on this boundary a disagreement is a bypass. sonic-rs because
    /// reading the body is almost all of a review's cost, and its SIMD scanner took the typical
    /// review from 12.1 to 7.9 us against serde_json (`cargo bench --bench review`). What it is
    /// held to, so that it sees what the API server's Go decoder sees or refuses the body
    /// (tests/review_differential.rs runs the Go decoder on the same bodies):
    /// - **duplicate keys** among the fields read here are refused (serde's derived structs),
    ///   where Go would keep the last; duplicates among fields nobody reads change nothing;
    /// - **invalid UTF-8** anywhere is refused, where Go would read it as U+FFFD;
    /// - **nesting** deeper than [`MAX_JSON_DEPTH`] is refused before any reader recurses;
    /// - keys match **case-sensitively**, as the API server's decoder (sigs.k8s.io/json) does;
    /// - fields read here must have their API types: an object where an object belongs (never
    ///   an array of its fields), a string where a string belongs.
    pub fn parse(body: &'a [u8]) -> Result<Self, ReviewError> {
        if !nests_at_most(body, MAX_JSON_DEPTH) {
            return Err(ReviewError::TooDeep);
        }
        let envelope: Envelope<'a> = match sonic_rs::from_slice::<ObjectOnly<Envelope<'a>>>(body) {
            Ok(envelope) => envelope.0,
            Err(error) => return Err(Self::classify(body, &error)),
        };
        let api_version = envelope.api_version.as_deref().unwrap_or("");
        let kind = envelope.kind.as_deref().unwrap_or("");
        if api_version != API_VERSION || kind != KIND {
            return Err(ReviewError::WrongType { found: format!("{api_version:?} {kind:?}") });
        }
        let request = envelope.request.ok_or(ReviewError::NoRequest)?;
        if request.uid.as_deref().is_none_or(str::is_empty) {
            return Err(ReviewError::NoUid);
        }
        Ok(request)
    }

    /// Why a body failed the one-pass read: a broken envelope, or a readable review with an
    /// unreadable object. Only the error path pays for this second read.
    fn classify(body: &[u8], error: &sonic_rs::Error) -> ReviewError {
        let detail = describe(error);
        let Ok(ObjectOnly(RawEnvelope { request: Some(raw) })) = sonic_rs::from_slice(body) else {
            return ReviewError::Malformed(detail);
        };
        let text = |t: Option<Text<'_>>| t.map(|t| t.0.into_owned()).unwrap_or_default();
        match raw.uid {
            Some(uid) if !uid.is_empty() => ReviewError::UnreadableObject {
                uid: uid.0.into_owned(),
                kind: raw.kind.and_then(|k| k.kind).map(|k| k.0.into_owned()).unwrap_or_default(),
                name: text(raw.name),
                namespace: text(raw.namespace),
                detail,
            },
            _ => ReviewError::NoUid,
        }
    }

    pub fn uid(&self) -> &str {
        self.uid.as_deref().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.kind.as_ref().and_then(|k| k.kind.as_deref()).unwrap_or_default()
    }

    pub fn operation(&self) -> &str {
        self.operation.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    pub fn sub_resource(&self) -> &str {
        self.sub_resource.as_deref().unwrap_or_default()
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run.unwrap_or(false)
    }

    pub fn username(&self) -> &str {
        self.user_info.as_ref().and_then(|u| u.username.as_deref()).unwrap_or_default()
    }
}

/// A reader error as one line: what is wrong and where. sonic-rs's own message goes on to quote
/// the body around that position, on further lines; that quote is dropped, since denial
/// messages are logged and recorded, and the body can hold values (environment variables) that
/// belong in neither.
fn describe(error: &sonic_rs::Error) -> String {
    let message = error.to_string();
    match message.split_once('\n') {
        Some((first, _)) => first.trim_end().to_owned(),
        None => message,
    }
}

/// An AdmissionResponse, written back inside an AdmissionReview.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the JSON patch, as the API expects for a `[]byte` field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

/// Why a request was refused, as the client sees it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl Response {
    pub fn allow(uid: &str) -> Self {
        Response { uid: uid.to_owned(), allowed: true, ..Response::default() }
    }

    pub fn deny(uid: &str, message: String) -> Self {
        Response {
            uid: uid.to_owned(),
            allowed: false,
            status: Some(Status { code: 403, reason: "Forbidden", message }),
            ..Response::default()
        }
    }

    /// Attaches a JSON patch (RFC 6902) to apply to the object.
    pub fn with_patch(mut self, patch: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        self.patch_type = Some("JSONPatch");
        self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        self
    }

    /// The full AdmissionReview body. serde_json writes it (and the patch): writing has no
    /// ambiguity to disagree about, and the answer is small; no JSON is read with it here.
    pub fn to_review_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ResponseEnvelope<'r> {
            api_version: &'static str,
            kind: &'static str,
            response: &'r Response,
        }
        serde_json::to_vec(&ResponseEnvelope { api_version: API_VERSION, kind: KIND, response: self })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_is_read_without_copying_its_strings() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"705ab4f5","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"shop",
            "operation":"CREATE","userInfo":{"username":"alice"},"object":{"spec":{}},"oldObject":null}}"#;
        let request = Request::parse(body).expect("valid review");
        assert_eq!((request.uid(), request.kind(), request.namespace()), ("705ab4f5", "Pod", "shop"));
        assert!(matches!(request.uid, Some(Text(std::borrow::Cow::Borrowed(_)))));
        assert!(request.old_object.is_none(), "null reads as no object");
        assert!(request.object.is_some());
    }

    #[test]
    fn escaped_and_unicode_strings_read_as_serde_json_reads_them() {
        let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"\u0031-\u00e9","kind":{"kind":"Pod"},"operation":"CREATE","namespace":"caf\u00e9",
            "object":{"spec":{"containers":[{"image":"ghcr.io\/acme\/x:1"},{"image":"ñ"}]}}}}"#;
        let fast = Request::parse(body.as_bytes()).expect("valid review");
        let slow: Envelope<'_> = serde_json::from_str(body).expect("valid for serde_json");
        let slow = slow.request.expect("request");
        assert_eq!((fast.uid(), fast.namespace()), (slow.uid(), slow.namespace()));
        assert_eq!((fast.uid(), fast.namespace()), ("1-é", "café"));
        let images = |request: Request<'_>| -> Vec<String> {
            let spec = super::super::workload::WorkloadKind::Pod.pod_spec(request.object.expect("object"));
            spec.images("spec").map(|(_, image)| image.to_owned()).collect()
        };
        assert_eq!(images(fast), ["ghcr.io/acme/x:1", "ñ"]);
        assert_eq!(images(slow), ["ghcr.io/acme/x:1", "ñ"]);
    }

    #[test]
    fn deep_nesting_is_refused_before_any_reader_recurses() {
        let envelope = |object: &str| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"1","kind":{{"kind":"Pod"}},"operation":"CREATE","object":{object}}}}}"#
            )
        };
        // 18,000 nested arrays aborted the process through a stack overflow.
        for depth in [MAX_JSON_DEPTH, 18_000, 1_000_000] {
            let object = format!(r#"{{"spec":{{"x":{}{}}}}}"#, "[".repeat(depth), "]".repeat(depth));
            assert!(
                matches!(Request::parse(envelope(&object).as_bytes()), Err(ReviewError::TooDeep)),
                "{depth}"
            );
            // Unclosed nesting is refused the same way.
            let unclosed = envelope(&"[".repeat(depth));
            assert!(matches!(Request::parse(unclosed.as_bytes()), Err(ReviewError::TooDeep)), "{depth}");
        }
        // Brackets inside strings are text, however many there are.
        let quoted = format!(
            r#"{{"metadata":{{"annotations":{{"a":"{}\"{}"}}}},"spec":{{}}}}"#,
            "[".repeat(5000),
            "{".repeat(5000)
        );
        assert!(Request::parse(envelope(&quoted).as_bytes()).is_ok());
        // The deepest nesting allowed still reads (the envelope takes 3 levels, the object's
        // spec and x one each), on a thread with the 2 MiB stack of a tokio worker. Unoptimized
        // builds use about 30 times more stack per level, so tests built that way get more.
        let depth = MAX_JSON_DEPTH - 5;
        let object = format!(r#"{{"spec":{{"x":{}{}}}}}"#, "[".repeat(depth), "]".repeat(depth));
        let body = envelope(&object);
        let stack = if cfg!(debug_assertions) { 32 } else { 2 } * 1024 * 1024;
        let reader = std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || Request::parse(body.as_bytes()).is_ok())
            .expect("thread");
        assert!(reader.join().expect("no stack overflow"));
    }

    #[test]
    fn reader_errors_are_one_line_and_quote_nothing_of_the_body() {
        let review = |object: &str| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"1","kind":{{"kind":"Pod"}},"operation":"CREATE","object":{object}}}}}"#
            )
        };
        let bodies = [
            review(r#"{"spec":{"containers":[{"env":[{"value":"s3cr3t-value"}],"image":7}]}}"#),
            review(r#"{"spec":{"containers":[{"env":[{"value":"s3cr3t-value"}],"image":"a","image":"b"}]}}"#),
            review(r#"{"spec":{"containers":[{"env":[{"value":"s3cr3t-value"}] "image":"a"}]}}"#),
            r#"{"request":{"env":"s3cr3t-value"},"#.to_owned(),
        ];
        for body in bodies {
            let error = Request::parse(body.as_bytes()).expect_err("refused").to_string();
            assert!(!error.contains("s3cr3t"), "{error}");
            assert!(!error.contains('\n') && error.contains("at line 1 column"), "{error}");
        }
    }

    #[test]
    fn malformed_reviews_get_precise_errors() {
        let cases: [(&[u8], &str); 4] = [
            (b"{not json", "not an AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"1"}}"#, "v1beta1"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#, "uid is missing"),
        ];
        for (body, expected) in cases {
            let error = Request::parse(body).expect_err("refused").to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
