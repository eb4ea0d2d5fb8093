//! Building responses: the one constructor every handler, cache tier and
//! error path uses, and the OCI error response.
//!
//! Key decision: building a response cannot fail. A header the runtime
//! refuses is dropped rather than turned into an error, because every header
//! set here is one the edge itself wrote (names are constants, values are
//! digests, URLs and numbers).

use worker::{Headers, Response, ResponseBuilder};

use crate::error::Error;

/// Builds a response that cannot fail: status, headers, body.
pub fn response(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let h = Headers::new();
    for (k, v) in headers {
        let _ = h.set(k, v);
    }
    let builder = ResponseBuilder::new().with_status(status).with_headers(h);
    if body.is_empty() {
        builder.empty()
    } else {
        builder.fixed(body)
    }
}

/// The OCI error response for `e`: `{"errors":[{code, message}]}` with the
/// public message (the log line has the full cause), the status, a
/// challenge when the client should authenticate, `Retry-After` when it must
/// wait.
pub fn error_response(e: &Error) -> Response {
    let body = wharf_core::render_error(e.code(), &e.public_message(), None);
    let challenge = e.challenge();
    let retry_after = e.retry_after().map(|s| s.to_string());
    let mut headers = vec![("Content-Type", "application/json; charset=utf-8")];
    if let Some(c) = &challenge {
        headers.push(("WWW-Authenticate", c.as_str()));
    }
    if let Some(s) = &retry_after {
        headers.push(("Retry-After", s.as_str()));
    }
    response(e.status(), &headers, body.into_bytes())
}
