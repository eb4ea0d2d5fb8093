//! The Worker's one error type. Every failure on a request path becomes an
//! [`Error`]; `lib.rs` turns it into an OCI error response once, with
//! [`wharf_core::render_error`] and the code's status (plus a
//! `WWW-Authenticate` challenge where the client should authenticate).

use wharf_core::sigv4::SigV4Error;
use wharf_core::token::TokenError;
use wharf_core::{ApiError, Digest, ErrorCode, RuleError};

use crate::config::ConfigError;

/// Everything that can go wrong while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The method or path is not a registry pull API request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No cache rule serves the name.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// No bearer token: authenticate at the realm in `challenge`.
    #[error("authentication required: get a token from the realm in the WWW-Authenticate header")]
    Unauthenticated {
        /// The `WWW-Authenticate` value.
        challenge: String,
    },
    /// A bearer token that is refused (expired, forged, wrong scope, …).
    #[error("{source}")]
    Token {
        /// Why.
        source: TokenError,
        /// The `WWW-Authenticate` value.
        challenge: String,
    },
    /// Basic credentials at `/token` that do not match a user.
    #[error("invalid username or password for user `{user}`")]
    BadCredentials {
        /// The user name sent.
        user: String,
    },
    /// A `/token` request the edge does not serve (e.g. a refresh-token grant).
    #[error("{0}")]
    TokenRequest(String),
    /// The edge's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The region's origin could not be reached (or timed out).
    #[error("the origin of region `{region}` is unreachable: {cause}")]
    OriginUnreachable {
        /// Region name.
        region: String,
        /// What failed.
        cause: String,
    },
    /// A regional hostname's region is down: no failover, say where to go.
    #[error(
        "region `{region}` is unavailable ({cause}); pull from `{global}` to be served by the nearest healthy region"
    )]
    RegionUnavailable {
        /// Region name.
        region: String,
        /// Why it is considered down.
        cause: String,
        /// The global hostname.
        global: String,
    },
    /// The origin answered with an error; passed on with its code.
    #[error("{message}")]
    Origin {
        /// The origin's HTTP status.
        status: u16,
        /// The origin's OCI code.
        code: ErrorCode,
        /// The origin's message.
        message: String,
    },
    /// The origin sent a manifest whose bytes do not match its digest.
    #[error("the origin sent a manifest that does not match {digest}; not cached, not served")]
    DigestMismatch {
        /// The expected digest.
        digest: Digest,
    },
    /// The origin sent a manifest larger than the edge serves.
    #[error("manifest is {0} bytes; manifests above 4 MiB are not served")]
    ManifestTooLarge(u64),
    /// A presigned URL could not be built (configuration).
    #[error("cannot presign the blob URL: {0}")]
    Presign(#[from] SigV4Error),
    /// The Workers runtime failed (KV, Cache API, fetch plumbing).
    #[error("Workers runtime: {0}")]
    Runtime(String),
}

impl From<worker::Error> for Error {
    fn from(e: worker::Error) -> Self {
        Error::Runtime(e.to_string())
    }
}

impl Error {
    /// The OCI code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Api(e) => e.code(),
            Error::Rule(e) => e.code(),
            Error::Unauthenticated { .. } | Error::BadCredentials { .. } => ErrorCode::Unauthorized,
            Error::Token { source, .. } => source.code(),
            Error::TokenRequest(_) => ErrorCode::Unsupported,
            Error::OriginUnreachable { .. }
            | Error::RegionUnavailable { .. }
            | Error::DigestMismatch { .. } => ErrorCode::Unavailable,
            Error::Origin { code, .. } => *code,
            Error::ManifestTooLarge(_) => ErrorCode::ManifestInvalid,
            Error::Config(_) | Error::Presign(_) | Error::Runtime(_) => ErrorCode::Unknown,
        }
    }

    /// The HTTP status: the code's, except that an origin's status is kept.
    pub fn status(&self) -> u16 {
        match self {
            Error::Origin { status, .. } => *status,
            other => other.code().status(),
        }
    }

    /// The `WWW-Authenticate` header, when the client should (re)authenticate.
    pub fn challenge(&self) -> Option<String> {
        match self {
            Error::Unauthenticated { challenge } | Error::Token { challenge, .. } => {
                Some(challenge.clone())
            }
            Error::BadCredentials { .. } => Some(r#"Basic realm="wharf""#.to_owned()),
            _ => None,
        }
    }

    /// A label for logs: `client` for the client's mistakes, `server` for ours
    /// or the origin's.
    pub fn blame(&self) -> &'static str {
        if self.status() >= 500 {
            "server"
        } else {
            "client"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases = [
            (
                Error::Unauthenticated {
                    challenge: "Bearer x".into(),
                },
                401,
                Some("Bearer x"),
            ),
            (
                Error::BadCredentials { user: "u".into() },
                401,
                Some(r#"Basic realm="wharf""#),
            ),
            (
                Error::Token {
                    source: TokenError::BadSignature,
                    challenge: "Bearer y".into(),
                },
                401,
                Some("Bearer y"),
            ),
            (
                Error::OriginUnreachable {
                    region: "eu".into(),
                    cause: "timeout".into(),
                },
                503,
                None,
            ),
            (
                Error::Origin {
                    status: 404,
                    code: ErrorCode::ManifestUnknown,
                    message: "m".into(),
                },
                404,
                None,
            ),
            (
                Error::Origin {
                    status: 502,
                    code: ErrorCode::Unavailable,
                    message: "m".into(),
                },
                502,
                None,
            ),
            (Error::Runtime("kv".into()), 500, None),
        ];
        for (e, status, challenge) in cases {
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.challenge().as_deref(), challenge, "{e}");
        }
    }
}
