//! Requests between the replicas of one region: the signed
//! `X-Wharf-Forwarded` header that marks a blob miss one replica forwarded
//! to the replica that owns it.
//!
//! Owns [`HEADER`], [`sign`], [`verify`] and [`PeerError`].
//!
//! Key decisions:
//! * The header changes routing (a forwarded request is served where it
//!   lands and never forwarded again), so it is accepted only with a valid
//!   HMAC under the region's shared key — never from an address guess. A
//!   client that sends its own value gets no peer treatment: the receiving
//!   replica ignores it and routes the request as any other.
//! * The value is `v1 <exp> <base64url mac> <sender>`; the MAC covers a
//!   domain prefix, the sender, the method, the path with its query (which
//!   carries a ticket, if any) and the expiry, so a signature cannot be
//!   moved to another request. The key is the token key, domain-separated
//!   (`wharf-peer-v1`), so a peer MAC is never a valid token or ticket MAC.
//! * Valid for [`LIFETIME_SECS`]: replicas forward at once; a replay of the
//!   same request within that time only repeats what the peer asked for.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;

use crate::token::{LEEWAY_SECS, SigningKey};

/// The header's name (lowercase, as HTTP/2 and `http` spell it).
pub const HEADER: &str = "x-wharf-forwarded";
/// How long a signature is valid, in seconds.
pub const LIFETIME_SECS: u64 = 60;

/// Why a forwarded-request header is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Not `v1 <exp> <mac> <sender>`.
    #[error("forwarded-request header is malformed")]
    Malformed,
    /// Expired, or valid for too long.
    #[error("forwarded-request header is expired or not yet valid")]
    Expired,
    /// The MAC does not match (another key, request or sender).
    #[error("forwarded-request header has a bad signature")]
    BadSignature,
}

fn mac(
    key: &SigningKey,
    sender: &str,
    method: &str,
    path: &str,
    exp: u64,
) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.mac();
    mac.update(format!("wharf-peer-v1\n{sender}\n{method}\n{path}\n{exp}").as_bytes());
    mac
}

/// The header value with which replica `sender` forwards `method` `path`
/// (path and query) at `now` (unix seconds).
pub fn sign(key: &SigningKey, sender: &str, method: &str, path: &str, now: u64) -> String {
    let exp = now.saturating_add(LIFETIME_SECS);
    let tag = mac(key, sender, method, path, exp).finalize().into_bytes();
    format!("v1 {exp} {} {sender}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks a header `value` for `method` `path` at `now`; returns the sender.
pub fn verify<'v>(
    key: &SigningKey,
    value: &'v str,
    method: &str,
    path: &str,
    now: u64,
) -> Result<&'v str, PeerError> {
    let mut parts = value.splitn(4, ' ');
    let (Some("v1"), Some(exp), Some(tag), Some(sender)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PeerError::Malformed);
    };
    if sender.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PeerError::Malformed);
    }
    let exp: u64 = exp.parse().map_err(|_| PeerError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| PeerError::Malformed)?;
    mac(key, sender, method, path, exp)
        .verify_slice(&tag)
        .map_err(|_| PeerError::BadSignature)?;
    if exp > now.saturating_add(LIFETIME_SECS + LEEWAY_SECS)
        || now >= exp.saturating_add(LEEWAY_SECS)
    {
        return Err(PeerError::Expired);
    }
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;
    const PATH: &str = "/v2/up/app/blobs/sha256:ab?wharf-ticket=1.x";

    fn key(b: u8) -> SigningKey {
        SigningKey::new(vec![b; 32]).unwrap()
    }

    #[test]
    fn signatures_bind_sender_request_and_time() {
        let v = sign(&key(1), "http://eu-1:5000", "GET", PATH, NOW);
        assert_eq!(
            verify(&key(1), &v, "GET", PATH, NOW + 5),
            Ok("http://eu-1:5000")
        );
        let forged = v.replace("eu-1", "eu-2");
        let cases = [
            (
                verify(&key(2), &v, "GET", PATH, NOW),
                PeerError::BadSignature,
            ),
            (
                verify(&key(1), &v, "HEAD", PATH, NOW),
                PeerError::BadSignature,
            ),
            (
                verify(&key(1), &v, "GET", "/v2/up/other/blobs/sha256:ab", NOW),
                PeerError::BadSignature,
            ),
            (
                verify(&key(1), &forged, "GET", PATH, NOW),
                PeerError::BadSignature,
            ),
            (
                verify(&key(1), &v, "GET", PATH, NOW + LIFETIME_SECS + LEEWAY_SECS),
                PeerError::Expired,
            ),
            (
                verify(&key(1), &v, "GET", PATH, NOW - 2 * LIFETIME_SECS),
                PeerError::Expired,
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, Err(want), "case {i}");
        }
        for junk in [
            "",
            "1",
            "v1 x y z",
            "v2 1 AAAA s",
            "v1 1 !! s",
            "v1 +1 AAAA s",
            "v1 1 AAAA",
        ] {
            assert_eq!(
                verify(&key(1), junk, "GET", PATH, NOW),
                Err(PeerError::Malformed),
                "{junk}"
            );
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics(value in "\\PC{0,120}", now in any::<u64>()) {
            let _ = verify(&key(1), &value, "GET", PATH, now);
        }
    }
}
