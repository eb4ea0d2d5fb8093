//! An upstream's rate-limit budget, as it advertises it, and when to spend
//! it (issue 16).
//!
//! Docker Hub sends `ratelimit-limit: 100;w=21600` and
//! `ratelimit-remaining: 76;w=21600` on manifest answers and counts
//! manifest `GET`s, not `HEAD`s; others (GHCR, Quay) send the plain form
//! `ratelimit-remaining: 76` when they send anything. When the budget runs
//! low, a cache should stop spending it on what it can do without:
//! fetching the new manifest of a moved tag still inside its stale window,
//! and prefetching. The `HEAD` that finds a tag moved or unchanged is
//! free, and its answer tells the budget again, so a cache that keeps
//! sending them learns at once when the window refills. Cold pulls
//! (nothing cached to serve) keep what is left.
//!
//! Pure: headers and time in, decisions out.

/// What an upstream advertised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Requests left in the window.
    pub remaining: u64,
    /// The window's size, when advertised (`w=` seconds).
    pub window_secs: Option<u64>,
    /// The limit, when advertised.
    pub limit: Option<u64>,
}

/// `N` or `N;w=SECONDS` (and other `;`-parameters, ignored): the number and
/// the window.
fn parse_value(v: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = v.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let w = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok());
    Some((n, w))
}

impl Budget {
    /// The budget in `ratelimit-remaining` (and `ratelimit-limit`), if the
    /// upstream sent one.
    pub fn from_headers(remaining: Option<&str>, limit: Option<&str>) -> Option<Budget> {
        let (remaining, window) = parse_value(remaining?)?;
        let limit = limit.and_then(parse_value);
        Some(Budget {
            remaining,
            window_secs: window.or(limit.and_then(|(_, w)| w)),
            limit: limit.map(|(n, _)| n),
        })
    }

    /// Whether a revalidation that can wait should wait: the budget
    /// measured at `measured_ms` is at or below `reserve`, and its window
    /// (or, not knowing it, a minute) has not passed since — after that
    /// the upstream has likely refilled it and one request finds out.
    pub fn postpone(&self, reserve: u64, measured_ms: u64, now_ms: u64) -> bool {
        !self.affords(0, reserve, measured_ms, now_ms)
    }

    /// Whether `requests` more can be spent on work that can wait (a
    /// prefetch) and still leave more than `reserve`: always once the
    /// window (or, not knowing it, a minute) has passed since `measured_ms`.
    pub fn affords(&self, requests: u64, reserve: u64, measured_ms: u64, now_ms: u64) -> bool {
        let valid_ms = self.window_secs.unwrap_or(60).saturating_mul(1000);
        now_ms.saturating_sub(measured_ms) >= valid_ms
            || self.remaining.saturating_sub(requests) > reserve
    }
}

/// A byte-rate cap shared by every download from one upstream: a token
/// bucket that may run into debt, so that each chunk is let through at once
/// and the *next* read waits until the debt is paid. Chunks are small (tens
/// of KiB), so the rate holds to within one chunk per stream.
#[derive(Clone, Debug)]
pub struct Bandwidth {
    /// Bytes per second.
    rate: u64,
    /// Bytes that may pass at once after a pause (one second's worth).
    burst: i64,
    /// Bytes that may pass now; negative: owed.
    tokens: i64,
    /// When `tokens` was last brought up to date (microseconds, any epoch).
    at_us: u64,
}

impl Bandwidth {
    /// A cap of `rate` bytes per second (at least 1), full at `now_us`.
    pub fn new(rate: u64, now_us: u64) -> Bandwidth {
        let rate = rate.max(1);
        let burst = i64::try_from(rate).unwrap_or(i64::MAX);
        Bandwidth {
            rate,
            burst,
            tokens: burst,
            at_us: now_us,
        }
    }

    /// Takes `bytes` at `now_us`; returns how many microseconds to wait
    /// before reading more.
    pub fn take(&mut self, bytes: u64, now_us: u64) -> u64 {
        let elapsed = now_us.saturating_sub(self.at_us);
        self.at_us = self.at_us.max(now_us);
        let earned =
            (u128::from(elapsed) * u128::from(self.rate) / 1_000_000).min(i64::MAX as u128) as i64;
        self.tokens = self.tokens.saturating_add(earned).min(self.burst);
        self.tokens = self
            .tokens
            .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        if self.tokens >= 0 {
            return 0;
        }
        let owed = self.tokens.unsigned_abs();
        (u128::from(owed) * 1_000_000).div_ceil(u128::from(self.rate)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_and_plain_forms() {
        assert_eq!(
            Budget::from_headers(Some("76;w=21600"), Some("100;w=21600")),
            Some(Budget {
                remaining: 76,
                window_secs: Some(21600),
                limit: Some(100)
            })
        );
        assert_eq!(
            Budget::from_headers(Some("12"), None),
            Some(Budget {
                remaining: 12,
                window_secs: None,
                limit: None
            })
        );
        assert_eq!(
            Budget::from_headers(Some(" 5 ; w=60 ; comment=\"x\""), None)
                .map(|b| (b.remaining, b.window_secs)),
            Some((5, Some(60)))
        );
        for bad in ["", "many", "-1", ";w=60"] {
            assert_eq!(Budget::from_headers(Some(bad), None), None, "{bad}");
        }
        assert_eq!(Budget::from_headers(None, Some("100")), None);
    }

    #[test]
    fn revalidations_wait_while_the_budget_is_low_and_fresh() {
        let low = Budget::from_headers(Some("5;w=600"), None).unwrap();
        assert!(low.postpone(10, 1_000, 2_000));
        assert!(!low.postpone(4, 1_000, 2_000), "above the reserve");
        assert!(
            !low.postpone(10, 1_000, 1_000 + 600_000),
            "the window passed"
        );
        let plain = Budget::from_headers(Some("0"), None).unwrap();
        assert!(plain.postpone(0, 0, 59_999));
        assert!(!plain.postpone(0, 0, 60_000), "a minute without a window");
    }

    #[test]
    fn a_prefetch_spends_only_above_the_reserve() {
        let b = Budget::from_headers(Some("14;w=600"), None).unwrap();
        assert!(b.affords(3, 10, 0, 1_000), "14 - 3 = 11 > 10");
        assert!(!b.affords(4, 10, 0, 1_000), "14 - 4 = 10 is the reserve");
        assert!(b.affords(100, 10, 0, 600_000), "the window passed");
        assert_eq!(b.postpone(10, 0, 1_000), !b.affords(0, 10, 0, 1_000));
    }

    #[test]
    fn the_bandwidth_cap_holds_the_rate_over_time() {
        const MIB: u64 = 1 << 20;
        let mut cap = Bandwidth::new(MIB, 0);
        // A second's worth passes at once, then each 64 KiB waits 1/16 s.
        assert_eq!(cap.take(MIB, 0), 0);
        assert_eq!(cap.take(64 << 10, 0), 62_500);
        // Reading on schedule: every chunk waits its share.
        let (start, mut now, mut sent) = (62_500, 62_500, 0);
        for _ in 0..64 {
            now += cap.take(64 << 10, now);
            sent += 64 << 10;
        }
        let rate = sent as f64 / ((now - start) as f64 / 1e6);
        assert!((rate - MIB as f64).abs() / (MIB as f64) < 0.05, "{rate}");
        // A pause refills at most one second's worth.
        let later = now + 10_000_000;
        assert_eq!(cap.take(MIB, later), 0);
        assert!(cap.take(1, later) > 0);
        // Degenerate inputs do not panic.
        let mut zero = Bandwidth::new(0, u64::MAX);
        let _ = zero.take(u64::MAX, 0);
        let _ = zero.take(u64::MAX, u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn any_header_parses_without_panicking(r in ".{0,64}", l in ".{0,64}") {
            let _ = Budget::from_headers(Some(&r), Some(&l));
        }
    }
}
