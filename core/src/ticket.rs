//! Blob tickets: short-lived HMAC capabilities with which the edge hands a blob
//! miss to the region's origin (`307` to
//! `<origin>/v2/<name>/blobs/<digest>?wharf-ticket=<ticket>`), so the origin can
//! stream it while hydrating without the client holding an origin token.
//!
//! Owns [`issue`], [`verify`], [`blob_url`], [`from_query`], [`TicketError`] and
//! [`QUERY_PARAM`].
//!
//! Key decisions:
//! * A ticket is `<exp>.<base64url(HMAC-SHA256)>` over
//!   `wharf-ticket-v1\n<name>\n<digest>\n<exp>`: it binds the repository name
//!   in the redirect path (the canonical `prefix/upstream-repo`, so the origin
//!   resolves it to the same rule without `?ns=`), the digest and the expiry.
//!   Changing any of them breaks the MAC. Only URL-safe characters, so it needs
//!   no encoding in a query string.
//! * Same [`SigningKey`] as tokens; the `wharf-ticket-v1` domain prefix keeps a
//!   ticket MAC from ever being a valid JWT MAC (a JWT signing input starts
//!   with `eyJ`) and vice versa.
//! * A ticket valid for more than [`MAX_LIFETIME_SECS`] is refused even with a
//!   good MAC: they are meant for one redirect.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;

use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::reference::RepositoryName;
use crate::token::{LEEWAY_SECS, SigningKey};
use crate::urlencode::decode_query_component;

/// The query parameter that carries a ticket.
pub const QUERY_PARAM: &str = "wharf-ticket";
/// The longest validity a ticket may claim, in seconds.
pub const MAX_LIFETIME_SECS: u64 = 3600;

/// Why a ticket is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not `<exp>.<mac>`, or valid for longer than [`MAX_LIFETIME_SECS`].
    #[error("blob ticket is malformed: {0}")]
    Malformed(String),
    /// The ticket's time is up.
    #[error(
        "blob ticket expired at {exp} (now {now}, unix seconds); request the blob from the edge again"
    )]
    Expired {
        /// The ticket's expiry.
        exp: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The MAC does not match this name, digest and expiry (or this key).
    #[error(
        "blob ticket is not valid for this repository and digest (forged, altered, or signed with another key)"
    )]
    BadSignature,
}

impl TicketError {
    /// `UNAUTHORIZED` for an expired ticket (asking the edge again fixes it),
    /// `DENIED` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            TicketError::Expired { .. } => ErrorCode::Unauthorized,
            TicketError::Malformed(_) | TicketError::BadSignature => ErrorCode::Denied,
        }
    }
}

fn mac(
    key: &SigningKey,
    name: &RepositoryName,
    digest: &Digest,
    exp: u64,
) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.mac();
    mac.update(format!("wharf-ticket-v1\n{name}\n{digest}\n{exp}").as_bytes());
    mac
}

/// A ticket for `name`/`digest` valid until `expires_at` (unix seconds).
pub fn issue(key: &SigningKey, name: &RepositoryName, digest: &Digest, expires_at: u64) -> String {
    let tag = mac(key, name, digest, expires_at).finalize().into_bytes();
    format!("{expires_at}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks `ticket` for `name`/`digest` at `now` (unix seconds).
pub fn verify(
    key: &SigningKey,
    ticket: &str,
    name: &RepositoryName,
    digest: &Digest,
    now: u64,
) -> Result<(), TicketError> {
    let (exp, tag) = ticket
        .split_once('.')
        .ok_or_else(|| TicketError::Malformed("expected `<expiry>.<mac>`".into()))?;
    let exp: u64 = exp
        .parse()
        .ok()
        .filter(|_| exp.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| TicketError::Malformed("expiry is not a unix time".into()))?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|e| TicketError::Malformed(format!("mac is not base64url: {e}")))?;
    mac(key, name, digest, exp)
        .verify_slice(&tag)
        .map_err(|_| TicketError::BadSignature)?;
    if exp > now.saturating_add(MAX_LIFETIME_SECS + LEEWAY_SECS) {
        return Err(TicketError::Malformed(format!(
            "valid until {exp}, more than {MAX_LIFETIME_SECS} s after now ({now})"
        )));
    }
    if now >= exp.saturating_add(LEEWAY_SECS) {
        return Err(TicketError::Expired { exp, now });
    }
    Ok(())
}

/// `<origin>/v2/<name>/blobs/<digest>?wharf-ticket=<ticket>`; `origin` is a
/// base URL without a trailing `/`.
pub fn blob_url(origin: &str, name: &RepositoryName, digest: &Digest, ticket: &str) -> String {
    format!(
        "{}/v2/{name}/blobs/{digest}?{QUERY_PARAM}={ticket}",
        origin.trim_end_matches('/')
    )
}

/// The ticket in a raw query string, if any (first occurrence, decoded).
pub fn from_query(query: Option<&str>) -> Option<String> {
    let raw = query?.strip_prefix('?').unwrap_or(query?);
    raw.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (decode_query_component(k) == QUERY_PARAM)
            .then(|| decode_query_component(v))
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn key() -> SigningKey {
        SigningKey::new(vec![42u8; 32]).unwrap()
    }
    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn tickets_bind_name_digest_and_expiry() {
        let (n, d) = (name("up/test/img"), Digest::sha256_of(b"layer"));
        let t = issue(&key(), &n, &d, NOW + 60);
        assert_eq!(verify(&key(), &t, &n, &d, NOW), Ok(()));
        let other = SigningKey::new(vec![1u8; 32]).unwrap();
        let (exp, tag) = t.split_once('.').unwrap();
        let cases: Vec<(&str, Result<(), TicketError>)> = vec![
            ("other name", verify(&key(), &t, &name("up/other"), &d, NOW)),
            (
                "other digest",
                verify(&key(), &t, &n, &Digest::sha256_of(b"x"), NOW),
            ),
            ("other key", verify(&other, &t, &n, &d, NOW)),
            (
                "later expiry",
                verify(&key(), &format!("{}.{tag}", NOW + 600), &n, &d, NOW),
            ),
        ];
        for (what, got) in cases {
            assert_eq!(got, Err(TicketError::BadSignature), "{what}");
        }
        assert_eq!(
            verify(&key(), &t, &n, &d, NOW + 60 + LEEWAY_SECS),
            Err(TicketError::Expired {
                exp: NOW + 60,
                now: NOW + 60 + LEEWAY_SECS
            })
        );
        let long = issue(&key(), &n, &d, NOW + 2 * MAX_LIFETIME_SECS);
        assert!(matches!(
            verify(&key(), &long, &n, &d, NOW),
            Err(TicketError::Malformed(_))
        ));
        for junk in ["", "x", "1.!!", "-1.AAAA", &format!("+{exp}.{tag}")] {
            assert!(
                matches!(
                    verify(&key(), junk, &n, &d, NOW),
                    Err(TicketError::Malformed(_))
                ),
                "{junk}"
            );
        }
        assert_eq!(TicketError::BadSignature.code(), ErrorCode::Denied);
        assert_eq!(
            TicketError::Expired { exp: 0, now: 1 }.code(),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn urls_and_queries() {
        let (n, d) = (name("up/img"), Digest::sha256_of(b"x"));
        let t = issue(&key(), &n, &d, NOW);
        let url = blob_url("http://127.0.0.1:5000/", &n, &d, &t);
        assert_eq!(
            url,
            format!("http://127.0.0.1:5000/v2/up/img/blobs/{d}?wharf-ticket={t}")
        );
        let (_, query) = url.split_once('?').unwrap();
        assert_eq!(from_query(Some(query)), Some(t.clone()));
        assert_eq!(
            from_query(Some(&format!("?ns=x&wharf-ticket={t}&wharf-ticket=y"))),
            Some(t)
        );
        assert_eq!(from_query(Some("wharf-ticket=")), None);
        assert_eq!(from_query(None), None);
    }

    proptest! {
        #[test]
        fn verify_never_panics(ticket in "\\PC{0,100}", now in any::<u64>()) {
            let _ = verify(&key(), &ticket, &name("a"), &Digest::sha256_of(b""), now);
            let _ = from_query(Some(&ticket));
        }
    }
}
