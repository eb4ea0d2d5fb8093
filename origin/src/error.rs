//! The origin's one error type and its OCI shape.
//!
//! Every failure on a request path becomes an [`Error`] variant that keeps its
//! cause and names an OCI [`ErrorCode`]; the code decides the HTTP status via
//! the single table in `wharf_core::error`. `IntoResponse` renders the
//! `{"errors":[…]}` body and stashes a copy of the error's text in a response
//! extension so the trace layer logs it inside the request span.
//!
//! Errors that happen after the first body byte cannot be rendered (the status
//! line is gone): streaming bodies abort the connection instead, never append
//! JSON to a half-sent blob.
//!
//! What a client reads ([`Error::public_message`]) is not what the log reads
//! (`Display`): the body never carries the object store's bucket, keys or
//! endpoint, an upstream's URL or address, or text an upstream or the store
//! sent. It says what failed, in the client's terms (the rule prefix it
//! pulled through), and what to do; the full cause goes to the request's log
//! line through [`LoggedError`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_core::{ApiError, Digest, ErrorCode, RuleError, render_error};

use crate::store;
use crate::upstream::UpstreamError;

/// Result alias for request-path code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while answering a registry request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The method/path/query did not parse as a pull-API request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No cache rule maps the requested repository to an upstream, or the
    /// name would alias another rule's (its own code: `NAME_UNKNOWN`,
    /// `NAME_INVALID` or `DENIED`, as at the edge).
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The upstream (and the cache) do not know this manifest.
    #[error("manifest {reference} of {name} is not known upstream ({registry})")]
    ManifestUnknown {
        /// Repository as the client named it.
        name: String,
        /// Tag or digest.
        reference: String,
        /// Rule prefix of the upstream that answered.
        registry: String,
    },
    /// The upstream (and the cache) do not know this blob.
    #[error("blob {digest} of {name} is not known upstream ({registry})")]
    BlobUnknown {
        /// Repository as the client named it.
        name: String,
        /// The requested digest.
        digest: Digest,
        /// Rule prefix of the upstream that answered.
        registry: String,
    },
    /// The upstream does not know this repository.
    #[error("repository {name} is not known upstream ({registry})")]
    RepositoryUnknown {
        /// Repository as the client named it.
        name: String,
        /// Rule prefix of the upstream that answered.
        registry: String,
    },
    /// The stored manifest is of a type the client's `Accept` excludes.
    #[error(
        "manifest {reference} is a {media_type}, which the request's Accept header does not list; add it to Accept"
    )]
    NotAcceptable {
        /// Tag or digest.
        reference: String,
        /// Media type of the stored manifest.
        media_type: String,
    },
    /// The upstream could not be used (unreachable, timed out, 5xx, bad auth…).
    #[error("upstream {registry} failed: {source}")]
    Upstream {
        /// Rule prefix of the upstream.
        registry: String,
        /// What went wrong.
        #[source]
        source: UpstreamError,
    },
    /// What the upstream sent does not match the digest it was asked for.
    #[error("upstream {registry} sent {got} for {want}; nothing was cached, retry later")]
    DigestMismatch {
        /// Rule prefix of the upstream.
        registry: String,
        /// The digest asked for.
        want: Digest,
        /// What the bytes hashed to (or a description of the truncation).
        got: String,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    Store(#[from] store::Error),
    /// The spool file a hydration writes the blob to failed.
    #[error("spool file: {0}")]
    Spool(#[source] std::io::Error),
    /// A peer region's copy could not be read (it vanished after its
    /// `HEAD`, or its body failed part way).
    #[error("peer region {region}: {source}")]
    Peer {
        /// The peer region.
        region: String,
        /// What failed.
        #[source]
        source: PeerError,
    },
    /// A detached task (a blob's leader, a manifest flight) ended without a
    /// result: it panicked or was aborted.
    #[error("the {0} task ended without a result; retry")]
    Lost(&'static str),
    /// A `Range` header that cannot be served.
    #[error("range {range} is not satisfiable for a blob of {len} bytes")]
    RangeNotSatisfiable {
        /// The header as sent.
        range: String,
        /// The blob's length.
        len: u64,
    },
    /// A malformed `Range` header.
    #[error("bad Range header: {0}")]
    RangeInvalid(String),
    /// A failure of an in-flight download this request had joined.
    #[error("{0}")]
    Joined(std::sync::Arc<Error>),
    /// No usable credentials; the challenge tells the client where to get a token.
    #[error("{reason}")]
    Unauthorized {
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// What was wrong.
        reason: String,
    },
    /// Valid credentials that do not allow this request.
    #[error("{0}")]
    Denied(String),
    /// The origin is shutting down and no longer starts new work.
    #[error("origin is shutting down; retry on another replica")]
    ShuttingDown,
    /// More requests of this kind are in progress than the origin's limit
    /// (`[limits]`); refused at once rather than queued.
    #[error(
        "the cache is serving as many {what} requests as it is configured for; retry in a second"
    )]
    Overloaded {
        /// The request kind (manifest, blob, …).
        what: &'static str,
    },
    /// An admin request named something badly (an image reference).
    #[error("{0}")]
    Invalid(String),
    /// An admin request named something this origin does not have (a job).
    #[error("{0}")]
    NotFound(String),
    /// Another replica is running the retention pass (it holds the lease).
    #[error("{0}")]
    Collecting(String),
    /// The answer took longer than the origin's limit (`[limits]`); the
    /// work behind it goes on, and a retry joins it.
    #[error("the {what} request took longer than {}s; retry: the fetch behind it goes on", after.as_secs())]
    TimedOut {
        /// The request kind.
        what: &'static str,
        /// The configured limit.
        after: std::time::Duration,
    },
}

impl From<crate::retention::GcError> for Error {
    fn from(e: crate::retention::GcError) -> Self {
        match e {
            crate::retention::GcError::Store(e) => Error::Store(e),
            busy => Error::Collecting(busy.to_string()),
        }
    }
}

impl Error {
    /// The OCI error code (and so the HTTP status) this error answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Api(e) => e.code(),
            // The core's table: NAME_UNKNOWN, NAME_INVALID, or DENIED for
            // a name that would alias another rule's (same as the edge).
            Error::Rule(e) => e.code(),
            Error::RepositoryUnknown { .. } | Error::NotFound(_) => ErrorCode::NameUnknown,
            Error::Invalid(_) => ErrorCode::NameInvalid,
            Error::ManifestUnknown { .. } | Error::NotAcceptable { .. } => {
                ErrorCode::ManifestUnknown
            }
            Error::BlobUnknown { .. } => ErrorCode::BlobUnknown,
            Error::Upstream { source, .. } => source.code(),
            Error::Joined(inner) => inner.code(),
            Error::DigestMismatch { .. }
            | Error::Store(_)
            | Error::Spool(_)
            | Error::Peer { .. }
            | Error::Lost(_)
            | Error::ShuttingDown
            | Error::Overloaded { .. }
            | Error::Collecting(_)
            | Error::TimedOut { .. } => ErrorCode::Unavailable,
            Error::RangeNotSatisfiable { .. } | Error::RangeInvalid(_) => ErrorCode::RangeInvalid,
            Error::Unauthorized { .. } => ErrorCode::Unauthorized,
            Error::Denied(_) => ErrorCode::Denied,
        }
    }

    /// The message a client reads: actionable, and free of the store's and
    /// upstreams' details (bucket, keys, endpoints, addresses, their error
    /// text), which only the log gets.
    pub fn public_message(&self) -> String {
        match self {
            Error::Upstream { registry, source } => match source {
                UpstreamError::Unreachable { .. } => {
                    format!("upstream {registry} is unreachable; retry later")
                }
                UpstreamError::Timeout { .. } => {
                    format!("no response from upstream {registry} in time; retry later")
                }
                UpstreamError::RateLimited { retry_after } => format!(
                    "upstream {registry} is rate limiting the cache; retry after {retry_after} s"
                ),
                UpstreamError::CircuitOpen { retry_after } => format!(
                    "upstream {registry} failed repeatedly and is skipped for now; retry after {retry_after} s"
                ),
                UpstreamError::Unauthorized { status, .. } => format!(
                    "upstream {registry} refused access ({status}); the cache's operator should check the rule's credentials"
                ),
                UpstreamError::Status { status, .. } => {
                    format!("upstream {registry} answered HTTP {status}; retry later")
                }
                _ => format!("upstream {registry} failed; retry later"),
            },
            Error::DigestMismatch { registry, want, .. } => format!(
                "upstream {registry} sent content that does not match {want}; nothing was cached, retry later"
            ),
            // The cache's own storage, whichever part of it failed.
            Error::Store(_) | Error::Spool(_) | Error::Peer { .. } | Error::Lost(_) => {
                "the object store is unavailable; retry later".to_owned()
            }
            Error::Joined(inner) => inner.public_message(),
            other => other.to_string(),
        }
    }

    /// Seconds the client should wait before retrying, when known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Upstream { source, .. } => source.retry_after(),
            Error::Joined(inner) => inner.retry_after(),
            Error::Overloaded { .. } | Error::TimedOut { .. } => Some(1),
            Error::Collecting(_) => Some(60),
            _ => None,
        }
    }
}

/// Why a peer region's copy could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Its store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Its `GET` found nothing after its `HEAD` had found the object.
    #[error("the copy vanished between HEAD and GET; retry")]
    Vanished,
    /// Its body failed after this many bytes.
    #[error("after {at} bytes: {source}")]
    Body {
        /// Bytes received before the failure.
        at: u64,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The rendered error's text, kept on the response for the logging layer.
#[derive(Clone, Debug)]
pub struct LoggedError(pub String);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = self.to_string();
        let body = render_error(code, &self.public_message(), None);
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Error::Unauthorized { challenge, .. } = &self
            && let Ok(v) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        if let Error::RangeNotSatisfiable { len, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}"))
        {
            headers.insert(header::CONTENT_RANGE, v);
        }
        response.extensions_mut().insert(LoggedError(message));
        response
    }
}
