//! An upstream's rate-limit budget, as it advertises it, and when to spend
//! it (issue 16).
//!
//! Docker Hub sends `ratelimit-limit: 100;w=21600` and
//! `ratelimit-remaining: 76;w=21600` on manifest answers and counts
//! manifest `GET`s, not `HEAD`s; others (GHCR, Quay) send the plain form
//! `ratelimit-remaining: 76` when they send anything. When the budget runs
//! low, a cache should stop spending it on what it can do without:
//! revalidating tags that are still inside their stale window. Cold pulls
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
        let valid_ms = self.window_secs.unwrap_or(60).saturating_mul(1000);
        self.remaining <= reserve && now_ms.saturating_sub(measured_ms) < valid_ms
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

    proptest::proptest! {
        #[test]
        fn any_header_parses_without_panicking(r in ".{0,64}", l in ".{0,64}") {
            let _ = Budget::from_headers(Some(&r), Some(&l));
        }
    }
}
