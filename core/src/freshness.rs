//! Tag freshness: when a cached tag may be served as is, when it must be
//! revalidated, and whether a stale copy may stand in for a failing upstream.
//!
//! Owns [`FreshnessPolicy`], [`Freshness`] and [`OnUpstreamError`]. Digest
//! references never come here: they are immutable and cached forever.
//!
//! Key decisions:
//! * Pure functions of `(fetched_at_ms, now_ms)`, both unix milliseconds supplied by
//!   the caller — no clock here (`SystemTime::now` panics on wasm32), no timers per
//!   entry: a decision is made when a request arrives.
//! * A tag is fresh while `age < ttl`, so `ttl = 0` means "always revalidate".
//!   Revalidation is the caller's cheap `HEAD`, never a blind `GET`.
//! * On an upstream failure a stale tag is served while `age < ttl + stale_if_error`.
//! * Clock skew: a `fetched_at` in the future (another replica's clock ran ahead, or
//!   ours went backwards) counts as age 0, i.e. fresh — treating skew as staleness
//!   would send a revalidation per request. But a timestamp more than one `ttl`
//!   in the future is not skew, it is a bad record: that is [`Freshness::Revalidate`]
//!   (a single `HEAD` repairs it), so a corrupt timestamp cannot pin a tag forever.
//!
//! # Freshness does not compound (issue 13)
//!
//! Every timestamp here is the time the **upstream** last confirmed the tag,
//! never the time a cache fetched it from another cache. A cache that gets a
//! tag from another cache (the edge from the origin) learns that time from
//! the age its source reports ([`confirmed_at_ms`], header
//! [`X_WHARF_TAG_AGE_MS`](crate::headers::X_WHARF_TAG_AGE_MS)), and tells its
//! source the oldest confirmation it may still serve as fresh (its own ttl,
//! header [`X_WHARF_MAX_TAG_AGE_MS`](crate::headers::X_WHARF_MAX_TAG_AGE_MS));
//! the source answers from its record only while that record is younger than
//! both its own ttl and the asker's ([`FreshnessPolicy::at_most`]), else it
//! asks the upstream first. So a cache serves a tag as fresh for at most its
//! own ttl after the upstream confirmed it, however many caches sit in
//! between: not edge ttl + origin ttl. Ages are relative, so the two
//! machines' clocks need not agree; the time a request spends in flight makes
//! a received tag look younger by at most that time.

use std::time::Duration;

/// How long tags stay fresh, and how long past that a stale tag may be served
/// when the upstream fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreshnessPolicy {
    /// How long after fetching a tag is served without asking upstream.
    pub ttl: Duration,
    /// How long after `ttl` expires a stale tag may still be served when the
    /// upstream is down, rate limited or slow.
    pub stale_if_error: Duration,
}

impl Default for FreshnessPolicy {
    /// `ttl` 5 minutes, `stale_if_error` 7 days.
    fn default() -> Self {
        FreshnessPolicy {
            ttl: Duration::from_secs(5 * 60),
            stale_if_error: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// Whether a cached tag may be served without asking upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Serve from cache.
    Fresh,
    /// Ask upstream (`HEAD`) whether the tag still points at the cached digest.
    Revalidate,
}

/// What to do with a stale tag when revalidation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUpstreamError {
    /// Serve the cached tag, marked stale (header + metric).
    ServeStale,
    /// Too old: return the upstream error.
    Fail,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Age of an entry in milliseconds; 0 if `fetched_at_ms` is in the future.
pub fn age_ms(fetched_at_ms: u64, now_ms: u64) -> u64 {
    now_ms.saturating_sub(fetched_at_ms)
}

/// Age in whole seconds, for an `Age`-style response header; 0 if `fetched_at_ms`
/// is in the future.
pub fn age_secs(fetched_at_ms: u64, now_ms: u64) -> u64 {
    age_ms(fetched_at_ms, now_ms) / 1000
}

/// When the upstream last confirmed an entry that this cache received at
/// `received_at_ms` from another cache which reported it `reported_age_ms`
/// old (`None`: no report, e.g. straight from the upstream, so confirmed on
/// receipt).
pub fn confirmed_at_ms(received_at_ms: u64, reported_age_ms: Option<u64>) -> u64 {
    received_at_ms.saturating_sub(reported_age_ms.unwrap_or(0))
}

/// Parses a millisecond header value ([`X_WHARF_TAG_AGE_MS`](crate::headers::X_WHARF_TAG_AGE_MS),
/// [`X_WHARF_MAX_TAG_AGE_MS`](crate::headers::X_WHARF_MAX_TAG_AGE_MS)): ASCII
/// digits only, else `None` (the header is then ignored).
pub fn parse_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

impl FreshnessPolicy {
    /// This policy with `ttl` lowered to `max_age` when a downstream cache
    /// asks for confirmations no older than that (see the module docs);
    /// never raised. `stale_if_error` is unchanged.
    pub fn at_most(&self, max_age: Option<Duration>) -> FreshnessPolicy {
        match max_age {
            Some(max_age) if max_age < self.ttl => FreshnessPolicy {
                ttl: max_age,
                ..*self
            },
            _ => *self,
        }
    }

    /// The `ttl` in milliseconds, as sent in
    /// [`X_WHARF_MAX_TAG_AGE_MS`](crate::headers::X_WHARF_MAX_TAG_AGE_MS).
    pub fn ttl_ms(&self) -> u64 {
        millis(self.ttl)
    }

    /// Fresh while `age < ttl` (see the module docs for clock skew).
    pub fn classify(&self, fetched_at_ms: u64, now_ms: u64) -> Freshness {
        let ttl = millis(self.ttl);
        let future_by = fetched_at_ms.saturating_sub(now_ms);
        if future_by > ttl {
            return Freshness::Revalidate;
        }
        if age_ms(fetched_at_ms, now_ms) < ttl {
            Freshness::Fresh
        } else {
            Freshness::Revalidate
        }
    }

    /// Serve stale while `age < ttl + stale_if_error`, else fail.
    pub fn on_upstream_error(&self, fetched_at_ms: u64, now_ms: u64) -> OnUpstreamError {
        let limit = millis(self.ttl).saturating_add(millis(self.stale_if_error));
        if age_ms(fetched_at_ms, now_ms) < limit {
            OnUpstreamError::ServeStale
        } else {
            OnUpstreamError::Fail
        }
    }

    /// The same as the free function [`age_secs`].
    pub fn age_secs(fetched_at_ms: u64, now_ms: u64) -> u64 {
        age_secs(fetched_at_ms, now_ms)
    }

    /// Unix milliseconds at which an entry fetched at `fetched_at_ms` needs revalidation.
    pub fn fresh_until_ms(&self, fetched_at_ms: u64) -> u64 {
        fetched_at_ms.saturating_add(millis(self.ttl))
    }

    /// Unix milliseconds after which an entry may no longer be served on upstream error.
    pub fn stale_until_ms(&self, fetched_at_ms: u64) -> u64 {
        self.fresh_until_ms(fetched_at_ms)
            .saturating_add(millis(self.stale_if_error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Freshness::*;
    use OnUpstreamError::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_700_000_000_000;

    fn policy(ttl_min: u64, stale_min: u64) -> FreshnessPolicy {
        FreshnessPolicy {
            ttl: Duration::from_millis(ttl_min * MIN),
            stale_if_error: Duration::from_millis(stale_min * MIN),
        }
    }

    #[test]
    fn default_is_5_minutes_and_7_days() {
        let p = FreshnessPolicy::default();
        assert_eq!(p.ttl, Duration::from_secs(300));
        assert_eq!(p.stale_if_error, Duration::from_secs(604_800));
    }

    #[test]
    fn classify_table() {
        let p = policy(5, 60);
        let cases = [
            (T0, T0, Fresh),
            (T0, T0 + 5 * MIN - 1, Fresh),
            (T0, T0 + 5 * MIN, Revalidate),
            (T0, T0 + 10 * MIN, Revalidate),
            (T0 + MIN, T0, Fresh),              // small skew: fresh
            (T0 + 5 * MIN, T0, Fresh),          // skew up to one ttl: fresh
            (T0 + 5 * MIN + 1, T0, Revalidate), // beyond: bad record
            (u64::MAX, 0, Revalidate),
            (0, u64::MAX, Revalidate),
        ];
        for (fetched, now, want) in cases {
            assert_eq!(
                p.classify(fetched, now),
                want,
                "fetched {fetched} now {now}"
            );
        }
        assert_eq!(
            policy(0, 0).classify(T0, T0),
            Revalidate,
            "ttl 0 always revalidates"
        );
        let forever = FreshnessPolicy {
            ttl: Duration::MAX,
            stale_if_error: Duration::MAX,
        };
        assert_eq!(forever.classify(0, T0), Fresh);
        assert_eq!(forever.on_upstream_error(0, T0), ServeStale);
    }

    #[test]
    fn on_upstream_error_table() {
        let p = policy(5, 60);
        let cases = [
            (T0, T0, ServeStale),
            (T0, T0 + 64 * MIN, ServeStale),
            (T0, T0 + 65 * MIN - 1, ServeStale),
            (T0, T0 + 65 * MIN, Fail),
            (T0 + 999 * MIN, T0, ServeStale), // future timestamp: we still hold the data
        ];
        for (fetched, now, want) in cases {
            assert_eq!(
                p.on_upstream_error(fetched, now),
                want,
                "fetched {fetched} now {now}"
            );
        }
        assert_eq!(policy(5, 0).on_upstream_error(T0, T0 + 5 * MIN), Fail);
    }

    #[test]
    fn ages_and_deadlines() {
        assert_eq!(age_secs(T0, T0 + 1999), 1);
        assert_eq!(age_secs(T0 + 1, T0), 0);
        assert_eq!(FreshnessPolicy::age_secs(0, u64::MAX), u64::MAX / 1000);
        let p = policy(5, 60);
        assert_eq!(p.fresh_until_ms(T0), T0 + 5 * MIN);
        assert_eq!(p.stale_until_ms(T0), T0 + 65 * MIN);
        assert_eq!(p.stale_until_ms(u64::MAX), u64::MAX);
    }

    #[test]
    fn confirmation_time_counts_back_the_reported_age() {
        let cases = [
            (T0, None, T0),
            (T0, Some(0), T0),
            (T0, Some(1500), T0 - 1500),
            (T0, Some(u64::MAX), 0), // absurd age: as old as can be
            (0, Some(5), 0),
        ];
        for (received, age, want) in cases {
            assert_eq!(confirmed_at_ms(received, age), want, "{received} {age:?}");
        }
    }

    #[test]
    fn parse_ms_table() {
        let cases = [
            ("0", Some(0)),
            ("1500", Some(1500)),
            (" 42 ", Some(42)),
            ("", None),
            ("-1", None),
            ("+1", None),
            ("1.5", None),
            ("1e3", None),
            ("99999999999999999999999", None), // overflows u64
        ];
        for (value, want) in cases {
            assert_eq!(parse_ms(value), want, "{value:?}");
        }
    }

    #[test]
    fn a_downstream_max_age_only_ever_shortens_the_ttl() {
        let p = policy(5, 60);
        let cases = [
            (None, 5 * MIN),
            (Some(2 * MIN), 2 * MIN),
            (Some(5 * MIN), 5 * MIN),
            (Some(10 * MIN), 5 * MIN), // never longer than our own
            (Some(0), 0),
        ];
        for (max_age, want) in cases {
            let got = p.at_most(max_age.map(Duration::from_millis));
            assert_eq!(got.ttl_ms(), want, "{max_age:?}");
            assert_eq!(got.stale_if_error, p.stale_if_error);
        }
    }

    /// The end-to-end rule: an origin (ttl `o`) whose record the upstream
    /// confirmed at `c`, an edge (ttl `e`) that fetches from it at `f`. The
    /// edge serves the tag as fresh only until `c + e`, however late `f` is.
    #[test]
    fn freshness_does_not_compound_across_two_caches() {
        let (origin, edge) = (policy(5, 60), policy(2, 60));
        let c = T0;
        for f in [
            c,
            c + MIN,
            c + 2 * MIN - 1,
            c + 2 * MIN,
            c + 4 * MIN + MIN / 2,
        ] {
            // The origin answers from its record only while it is fresh for
            // both ttls; else it asks the upstream (confirmation moves to `f`).
            let record = match origin.at_most(Some(edge.ttl)).classify(c, f) {
                Fresh => c,
                Revalidate => f,
            };
            let want = if f - c < 2 * MIN { c } else { f };
            assert_eq!(record, want, "f = c + {}", f - c);
            // The edge counts from the origin's reported age: fresh until one
            // edge ttl after the confirmation, not after its own fetch.
            let received = confirmed_at_ms(f, Some(age_ms(record, f)));
            assert_eq!(received, record, "f = c + {}", f - c);
            assert_eq!(edge.fresh_until_ms(received), record + 2 * MIN);
        }
    }
}
