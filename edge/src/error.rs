//! The Worker's one error type. Every failure on a request path becomes an
//! [`Error`]; `lib.rs` turns it into an OCI error response once, with
//! [`wharf_core::render_error`] and the code's status (plus a
//! `WWW-Authenticate` challenge where the client should authenticate).
//!
//! The body carries [`Error::public_message`], the log the full `Display`:
//! clients never read origin addresses, fetch errors, configuration details
//! or runtime error text, only what failed and what to do.

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
    /// Too many failed sign-ins from this client or for this user name
    /// ([`wharf_core::signin`]); the password was not checked.
    #[error("too many failed sign-ins; retry after {retry_after_secs} s")]
    SignInThrottled {
        /// Seconds until the next attempt is looked at.
        retry_after_secs: u64,
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
            Error::SignInThrottled { .. } => ErrorCode::TooManyRequests,
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

    /// `Retry-After` seconds, when the client must wait.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::SignInThrottled { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The message the client reads. Causes that name origins, carry fetch
    /// or runtime error text, or describe the configuration stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Error::OriginUnreachable { region, .. } => {
                format!("the origin of region `{region}` is unreachable; retry later")
            }
            Error::RegionUnavailable { region, global, .. } => format!(
                "region `{region}` is unavailable; pull from `{global}` to be served by the nearest healthy region"
            ),
            Error::Config(_) => {
                "the edge is misconfigured; its operator's logs name the setting to fix".to_owned()
            }
            Error::Presign(_) => {
                "the edge cannot build the blob's URL; its operator's logs say why".to_owned()
            }
            Error::Runtime(_) => "the edge failed to answer; retry later".to_owned(),
            other => other.to_string(),
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

    /// Public answers keep the cause out (issue 12); the log has it.
    #[test]
    fn public_messages_hide_causes() {
        let cases = [
            Error::OriginUnreachable {
                region: "eu".into(),
                cause: "connect ECONNREFUSED 10.1.2.3:5000".into(),
            },
            Error::RegionUnavailable {
                region: "eu".into(),
                cause: "the origin of region `eu` is unreachable: 10.1.2.3:5000".into(),
                global: "wharf.example.com".into(),
            },
            Error::Runtime("KV GET wharf-kv-namespace failed: 10.1.2.3".into()),
            Error::Config(ConfigError("WHARF_S3_SECRET_KEY 10.1.2.3".into())),
        ];
        for e in cases {
            let public = e.public_message();
            assert!(!public.contains("10.1.2.3"), "{public}");
            assert!(e.to_string().contains("10.1.2.3"), "{e}");
            assert!(
                public.contains("retry later")
                    || public.contains("pull from")
                    || public.contains("logs"),
                "{public}"
            );
        }
        let e = Error::SignInThrottled {
            retry_after_secs: 4,
        };
        assert_eq!((e.status(), e.retry_after()), (429, Some(4)));
        assert_eq!(e.code(), ErrorCode::TooManyRequests);
    }

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
