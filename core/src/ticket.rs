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
//!   `wharf-ticket-v2\n<rule>\n<private>\n<name>\n<digest>\n<exp>`: it binds
//!   the rule the edge resolved the request to ([`TicketRule`]: its prefix and
//!   whether it is private), the repository name in the redirect path (the
//!   canonical `prefix/upstream-repo`), the digest and the expiry. Changing
//!   any of them breaks the MAC, so a ticket is refused on another rule, and
//!   on a rule the verifier considers private when the issuer did not (the
//!   private-rule check applies to tickets as it does to tokens: the edge
//!   issues a private rule's ticket only to a token that grants the rule).
//!   Only URL-safe characters, so it needs no encoding in a query string.
//! * A ticketed request never carries `?ns=` (the redirect has none, and the
//!   canonical name resolves without it): [`crate::pull_auth`] refuses one
//!   that does, so `ns` cannot change the rule a ticket was checked against.
//! * Same [`SigningKey`] as tokens; the `wharf-ticket-v2` domain prefix keeps a
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
    /// The MAC does not match this rule, name, digest and expiry (or this key).
    #[error(
        "blob ticket is not valid for this rule, repository and digest (forged, altered, replayed elsewhere, or signed with another key)"
    )]
    BadSignature,
    /// A ticket on a request that also carries `?ns=`.
    #[error("a blob ticket cannot be combined with `?ns=`; follow the redirect's URL as it is")]
    WithNamespace,
}

/// The rule a ticket is issued for, as the issuer resolved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TicketRule<'a> {
    /// The rule's prefix.
    pub prefix: &'a str,
    /// Whether the rule is private.
    pub private: bool,
}

impl TicketError {
    /// `UNAUTHORIZED` for an expired ticket (asking the edge again fixes it),
    /// `DENIED` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            TicketError::Expired { .. } => ErrorCode::Unauthorized,
            TicketError::Malformed(_) | TicketError::BadSignature | TicketError::WithNamespace => {
                ErrorCode::Denied
            }
        }
    }
}

fn mac(
    key: &SigningKey,
    rule: TicketRule<'_>,
    name: &RepositoryName,
    digest: &Digest,
    exp: u64,
) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.mac();
    // Prefixes and names cannot contain `\n`, so the fields cannot run into
    // each other.
    let private = u8::from(rule.private);
    mac.update(
        format!(
            "wharf-ticket-v2\n{}\n{private}\n{name}\n{digest}\n{exp}",
            rule.prefix
        )
        .as_bytes(),
    );
    mac
}

/// A ticket for `name`/`digest` under `rule`, valid until `expires_at` (unix
/// seconds).
pub fn issue(
    key: &SigningKey,
    rule: TicketRule<'_>,
    name: &RepositoryName,
    digest: &Digest,
    expires_at: u64,
) -> String {
    let tag = mac(key, rule, name, digest, expires_at)
        .finalize()
        .into_bytes();
    format!("{expires_at}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks `ticket` for `name`/`digest` under `rule` (as the verifier resolved
/// it) at `now` (unix seconds).
pub fn verify(
    key: &SigningKey,
    ticket: &str,
    rule: TicketRule<'_>,
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
    mac(key, rule, name, digest, exp)
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
    const PUB: TicketRule<'static> = TicketRule {
        prefix: "up",
        private: false,
    };

    #[test]
    fn tickets_bind_rule_name_digest_and_expiry() {
        let (n, d) = (name("up/test/img"), Digest::sha256_of(b"layer"));
        let t = issue(&key(), PUB, &n, &d, NOW + 60);
        assert_eq!(verify(&key(), &t, PUB, &n, &d, NOW), Ok(()));
        let other = SigningKey::new(vec![1u8; 32]).unwrap();
        let (exp, tag) = t.split_once('.').unwrap();
        let cases: Vec<(&str, Result<(), TicketError>)> = vec![
            (
                "other name",
                verify(&key(), &t, PUB, &name("up/other"), &d, NOW),
            ),
            (
                "other digest",
                verify(&key(), &t, PUB, &n, &Digest::sha256_of(b"x"), NOW),
            ),
            ("other key", verify(&other, &t, PUB, &n, &d, NOW)),
            (
                "later expiry",
                verify(&key(), &format!("{}.{tag}", NOW + 600), PUB, &n, &d, NOW),
            ),
            (
                "other rule",
                verify(
                    &key(),
                    &t,
                    TicketRule {
                        prefix: "up/test",
                        private: false,
                    },
                    &n,
                    &d,
                    NOW,
                ),
            ),
            (
                "rule private to the verifier, public to the issuer",
                verify(
                    &key(),
                    &t,
                    TicketRule {
                        private: true,
                        ..PUB
                    },
                    &n,
                    &d,
                    NOW,
                ),
            ),
        ];
        for (what, got) in cases {
            assert_eq!(got, Err(TicketError::BadSignature), "{what}");
        }
        let private = TicketRule {
            private: true,
            ..PUB
        };
        let pt = issue(&key(), private, &n, &d, NOW + 60);
        assert_eq!(verify(&key(), &pt, private, &n, &d, NOW), Ok(()));
        assert_eq!(
            verify(&key(), &pt, PUB, &n, &d, NOW),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            verify(&key(), &t, PUB, &n, &d, NOW + 60 + LEEWAY_SECS),
            Err(TicketError::Expired {
                exp: NOW + 60,
                now: NOW + 60 + LEEWAY_SECS
            })
        );
        let long = issue(&key(), PUB, &n, &d, NOW + 2 * MAX_LIFETIME_SECS);
        assert!(matches!(
            verify(&key(), &long, PUB, &n, &d, NOW),
            Err(TicketError::Malformed(_))
        ));
        for junk in ["", "x", "1.!!", "-1.AAAA", &format!("+{exp}.{tag}")] {
            assert!(
                matches!(
                    verify(&key(), junk, PUB, &n, &d, NOW),
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
        let t = issue(&key(), PUB, &n, &d, NOW);
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
            let _ = verify(&key(), &ticket, PUB, &name("a"), &Digest::sha256_of(b""), now);
            let _ = from_query(Some(&ticket));
        }
    }
}
