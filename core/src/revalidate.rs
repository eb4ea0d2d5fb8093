//! What to do with a stale tag once its source has answered a `HEAD`.
//!
//! Owns [`HeadResult`] (what the `HEAD` said) and [`Revalidation`] (what to
//! do), and [`decide`], the one decision the origin (asking the upstream)
//! and the edge (asking the origin) both take.
//!
//! Key decisions:
//! * Revalidation is a `HEAD` compared by digest, never a blind `GET`: Docker
//!   Hub does not count `HEAD`s against its pull limit, and an unmoved tag
//!   then costs no body.
//! * Which answers are errors: 2xx is an answer (its digest is compared), 404
//!   says the tag is gone, anything else (unreachable, timeout, 401/403, 429,
//!   5xx, a refused redirect) is a failure of the source, for which the
//!   stale copy may stand in ([`FreshnessPolicy::on_upstream_error`]).
//! * A 2xx without a readable `Docker-Content-Digest` cannot confirm
//!   anything: the manifest is fetched ([`Revalidation::Fetch`]), and the
//!   `GET` verifies what it gets.

use crate::digest::Digest;
use crate::freshness::{FreshnessPolicy, OnUpstreamError};

/// What a `HEAD` of a stale tag returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadResult<'a> {
    /// A 2xx, with the digest its `Docker-Content-Digest` names, if any.
    Found(Option<&'a Digest>),
    /// 404: the source no longer has the tag.
    NotFound,
    /// No answer, or any other status.
    Failed,
}

impl<'a> HeadResult<'a> {
    /// Classifies an HTTP answer by its status.
    pub fn from_status(status: u16, digest: Option<&'a Digest>) -> HeadResult<'a> {
        match status {
            200..=299 => HeadResult::Found(digest),
            404 => HeadResult::NotFound,
            _ => HeadResult::Failed,
        }
    }
}

/// What to do with the stale tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revalidation {
    /// The tag still points at the cached manifest: serve it and restart the
    /// tag's clock (the source confirmed it now).
    Confirmed,
    /// The tag moved (or the answer named no digest): `GET` the manifest.
    Fetch,
    /// The tag is gone: forget it, answer `MANIFEST_UNKNOWN`.
    Gone,
    /// The source failed and the tag is within stale-if-error: serve the
    /// cached manifest, marked stale.
    ServeStale,
    /// The source failed and the tag is too old even for that: the error.
    Fail,
}

/// The decision for a stale tag whose cached manifest is `cached`, last
/// confirmed upstream at `confirmed_at_ms`, after `head` (all times unix
/// milliseconds).
pub fn decide(
    policy: &FreshnessPolicy,
    cached: &Digest,
    confirmed_at_ms: u64,
    now_ms: u64,
    head: HeadResult<'_>,
) -> Revalidation {
    match head {
        HeadResult::Found(Some(digest)) if digest == cached => Revalidation::Confirmed,
        HeadResult::Found(_) => Revalidation::Fetch,
        HeadResult::NotFound => Revalidation::Gone,
        HeadResult::Failed => match policy.on_upstream_error(confirmed_at_ms, now_ms) {
            OnUpstreamError::ServeStale => Revalidation::ServeStale,
            OnUpstreamError::Fail => Revalidation::Fail,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use HeadResult::*;
    use Revalidation::*;

    const T0: u64 = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn statuses_table() {
        let d = digest('a');
        let cases = [
            (200, Found(Some(&d))),
            (204, Found(Some(&d))),
            (404, NotFound),
            (304, Failed),
            (401, Failed),
            (403, Failed),
            (429, Failed),
            (500, Failed),
            (502, Failed),
            (503, Failed),
        ];
        for (status, want) in cases {
            assert_eq!(HeadResult::from_status(status, Some(&d)), want, "{status}");
        }
        assert_eq!(HeadResult::from_status(200, None), Found(None));
    }

    #[test]
    fn decide_table() {
        let policy = FreshnessPolicy {
            ttl: Duration::from_millis(5 * MIN),
            stale_if_error: Duration::from_millis(60 * MIN),
        };
        let (a, b) = (digest('a'), digest('b'));
        let fresh_enough = T0 + 10 * MIN; // stale, within stale-if-error
        let too_old = T0 + 65 * MIN;
        let cases = [
            (Found(Some(&a)), fresh_enough, Confirmed),
            (Found(Some(&a)), too_old, Confirmed),
            (Found(Some(&b)), fresh_enough, Fetch),
            (Found(None), fresh_enough, Fetch),
            (NotFound, fresh_enough, Gone),
            (NotFound, too_old, Gone),
            (Failed, fresh_enough, ServeStale),
            (Failed, T0 + 65 * MIN - 1, ServeStale),
            (Failed, too_old, Fail),
        ];
        for (head, now, want) in cases {
            assert_eq!(
                decide(&policy, &a, T0, now, head),
                want,
                "{head:?} at {now}"
            );
        }
    }
}
