//! The one table of OCI error codes → HTTP status, and the one renderer of
//! `{"errors":[{"code","message","detail"}]}`.
//!
//! Owns [`ErrorCode`], [`render_error`], [`render_errors`] and [`parse_error_body`].
//!
//! Key decision: spellings and statuses follow Distribution
//! (`registry/api/errcode/register.go`, `registry/api/v2/errors.go`), which is what
//! Docker, containerd and podman were written against. Codes the OCI
//! distribution-spec defines are used as is; `UNAVAILABLE`, `RANGE_INVALID`,
//! `PAGINATION_NUMBER_INVALID` and `UNKNOWN` are Distribution's additions. `detail`
//! is omitted (not `null`) when there is none, as Distribution does.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An OCI / Distribution error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN` (404): blob unknown to registry.
    BlobUnknown,
    /// `BLOB_UPLOAD_INVALID` (404, as in Distribution): blob upload invalid.
    BlobUploadInvalid,
    /// `BLOB_UPLOAD_UNKNOWN` (404): blob upload unknown to registry.
    BlobUploadUnknown,
    /// `DIGEST_INVALID` (400): provided digest did not match uploaded content.
    DigestInvalid,
    /// `MANIFEST_BLOB_UNKNOWN` (400, as in Distribution): manifest references an unknown blob.
    ManifestBlobUnknown,
    /// `MANIFEST_INVALID` (400): manifest invalid.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN` (404): manifest unknown.
    ManifestUnknown,
    /// `NAME_INVALID` (400): invalid repository name.
    NameInvalid,
    /// `NAME_UNKNOWN` (404): repository name not known to registry.
    NameUnknown,
    /// `SIZE_INVALID` (400): provided length did not match content length.
    SizeInvalid,
    /// `UNAUTHORIZED` (401): authentication required.
    Unauthorized,
    /// `DENIED` (403): requested access to the resource is denied.
    Denied,
    /// `UNSUPPORTED` (405, as in Distribution): the operation is unsupported.
    Unsupported,
    /// `TOOMANYREQUESTS` (429): too many requests.
    TooManyRequests,
    /// `UNAVAILABLE` (503, Distribution): service unavailable.
    Unavailable,
    /// `RANGE_INVALID` (416, Distribution): invalid content range.
    RangeInvalid,
    /// `PAGINATION_NUMBER_INVALID` (400, Distribution): invalid number of results requested.
    PaginationNumberInvalid,
    /// `UNKNOWN` (500, Distribution): unknown error.
    Unknown,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::Unavailable,
        ErrorCode::RangeInvalid,
        ErrorCode::PaginationNumberInvalid,
        ErrorCode::Unknown,
    ];

    /// The wire spelling, e.g. `BLOB_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// The HTTP status this code is sent with.
    pub fn status(self) -> u16 {
        self.row().1
    }

    /// Distribution's generic message for this code.
    pub fn default_message(self) -> &'static str {
        self.row().2
    }

    /// The code for a wire spelling (exact, as upstreams send it).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The table: (spelling, status, message).
    fn row(self) -> (&'static str, u16, &'static str) {
        use ErrorCode::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", 404, "blob unknown to registry"),
            BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", 404, "blob upload invalid"),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                404,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                400,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => ("MANIFEST_BLOB_UNKNOWN", 400, "blob unknown to registry"),
            ManifestInvalid => ("MANIFEST_INVALID", 400, "manifest invalid"),
            ManifestUnknown => ("MANIFEST_UNKNOWN", 404, "manifest unknown"),
            NameInvalid => ("NAME_INVALID", 400, "invalid repository name"),
            NameUnknown => ("NAME_UNKNOWN", 404, "repository name not known to registry"),
            SizeInvalid => (
                "SIZE_INVALID",
                400,
                "provided length did not match content length",
            ),
            Unauthorized => ("UNAUTHORIZED", 401, "authentication required"),
            Denied => ("DENIED", 403, "requested access to the resource is denied"),
            Unsupported => ("UNSUPPORTED", 405, "The operation is unsupported."),
            TooManyRequests => ("TOOMANYREQUESTS", 429, "too many requests"),
            Unavailable => ("UNAVAILABLE", 503, "service unavailable"),
            RangeInvalid => ("RANGE_INVALID", 416, "invalid content range"),
            PaginationNumberInvalid => (
                "PAGINATION_NUMBER_INVALID",
                400,
                "invalid number of results requested",
            ),
            Unknown => ("UNKNOWN", 500, "unknown error"),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a Value>,
}

fn entry<'a>(code: ErrorCode, message: &'a str, detail: Option<&'a Value>) -> Entry<'a> {
    Entry {
        code: code.as_str(),
        // An empty message would tell the user nothing; fall back to the generic one.
        message: if message.is_empty() {
            code.default_message()
        } else {
            message
        },
        detail,
    }
}

fn render(body: &Body<'_>) -> String {
    // Serialising strings and `Value`s cannot fail; the fallback keeps request
    // paths free of unwrap.
    serde_json::to_string(body)
        .unwrap_or_else(|_| r#"{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}"#.into())
}

/// Renders `{"errors":[{"code":…,"message":…,"detail":…}]}`; `detail` is omitted
/// when `None`, and an empty `message` is replaced by the code's default message.
pub fn render_error(code: ErrorCode, message: &str, detail: Option<&Value>) -> String {
    render(&Body {
        errors: vec![entry(code, message, detail)],
    })
}

/// Renders several errors in one body (the HTTP status is the caller's choice;
/// conventionally the first error's).
pub fn render_errors(errors: &[(ErrorCode, String, Option<Value>)]) -> String {
    render(&Body {
        errors: errors
            .iter()
            .map(|(c, m, d)| entry(*c, m, d.as_ref()))
            .collect(),
    })
}

#[derive(Deserialize)]
struct UpstreamBody {
    errors: Vec<UpstreamEntry>,
}

#[derive(Deserialize)]
struct UpstreamEntry {
    code: String,
    #[serde(default)]
    message: Option<Value>,
}

/// Reads the first `(code, message)` of an upstream's OCI error body. The message is
/// `""` when the upstream sent none (or a non-string); `None` if the body is not an
/// OCI error body at all (HTML from a proxy, empty body, …).
pub fn parse_error_body(body: &[u8]) -> Option<(String, String)> {
    let parsed: UpstreamBody = serde_json::from_slice(body).ok()?;
    let first = parsed.errors.into_iter().next()?;
    let message = first.message.as_ref().and_then(Value::as_str).unwrap_or("");
    Some((first.code, message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCode::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rendered_bodies_parse_back(code_idx in 0..ErrorCode::ALL.len(), message in "\\PC+") {
            let code = ErrorCode::ALL[code_idx];
            let body = render_error(code, &message, None);
            prop_assert_eq!(
                parse_error_body(body.as_bytes()),
                Some((code.as_str().to_owned(), message))
            );
        }

        #[test]
        fn parse_error_body_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_error_body(&bytes);
        }
    }

    #[test]
    fn table_matches_distribution() {
        let cases = [
            (BlobUnknown, "BLOB_UNKNOWN", 404),
            (BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 404),
            (BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404),
            (DigestInvalid, "DIGEST_INVALID", 400),
            (ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", 400),
            (ManifestInvalid, "MANIFEST_INVALID", 400),
            (ManifestUnknown, "MANIFEST_UNKNOWN", 404),
            (NameInvalid, "NAME_INVALID", 400),
            (NameUnknown, "NAME_UNKNOWN", 404),
            (SizeInvalid, "SIZE_INVALID", 400),
            (Unauthorized, "UNAUTHORIZED", 401),
            (Denied, "DENIED", 403),
            (Unsupported, "UNSUPPORTED", 405),
            (TooManyRequests, "TOOMANYREQUESTS", 429),
            (Unavailable, "UNAVAILABLE", 503),
            (RangeInvalid, "RANGE_INVALID", 416),
            (PaginationNumberInvalid, "PAGINATION_NUMBER_INVALID", 400),
            (Unknown, "UNKNOWN", 500),
        ];
        assert_eq!(cases.len(), ErrorCode::ALL.len());
        for (code, s, status) in cases {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.status(), status, "{s}");
            assert_eq!(ErrorCode::parse(s), Some(code));
            assert!(!code.default_message().is_empty());
        }
        assert_eq!(ErrorCode::parse("blob_unknown"), None);
    }

    #[test]
    fn render_table() {
        let detail = serde_json::json!({"digest": "sha256:x"});
        let cases = [
            (
                render_error(BlobUnknown, "blob x is not cached", None),
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob x is not cached"}]}"#,
            ),
            (
                render_error(ManifestUnknown, "", Some(&detail)),
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"digest":"sha256:x"}}]}"#,
            ),
            (
                render_error(NameInvalid, "quote \" and \\ and \n", None),
                r#"{"errors":[{"code":"NAME_INVALID","message":"quote \" and \\ and \n"}]}"#,
            ),
            (
                render_errors(&[
                    (Denied, "no".into(), None),
                    (Unauthorized, "login".into(), Some(serde_json::json!([1]))),
                ]),
                r#"{"errors":[{"code":"DENIED","message":"no"},{"code":"UNAUTHORIZED","message":"login","detail":[1]}]}"#,
            ),
            (render_errors(&[]), r#"{"errors":[]}"#),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn parse_error_body_table() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#,
                Some(("TOOMANYREQUESTS", "You have reached your pull rate limit.")),
            ),
            (
                r#"{"errors":[{"code":"DENIED","message":7},{"code":"X","message":"y"}]}"#,
                Some(("DENIED", "")),
            ),
            (r#"{"errors":[]}"#, None),
            (r#"{"errors":[{"message":"no code"}]}"#, None),
            ("<html>502 Bad Gateway</html>", None),
            ("", None),
        ];
        for (body, want) in cases {
            let got = parse_error_body(body.as_bytes());
            let want = want.map(|(c, m)| (c.to_owned(), m.to_owned()));
            assert_eq!(got, want, "{body}");
        }
        // Round trip through our own renderer.
        let body = render_error(Unavailable, "upstream down", None);
        assert_eq!(
            parse_error_body(body.as_bytes()),
            Some(("UNAVAILABLE".into(), "upstream down".into()))
        );
    }
}
