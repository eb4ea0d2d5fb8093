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

impl FreshnessPolicy {
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
}
