//! Slowing down password guessing at `/token`: after a few failed sign-ins
//! from one client address or for one user name, further attempts are
//! refused with `429 TOOMANYREQUESTS` and a `Retry-After` that doubles with
//! each further failure, up to a cap.
//!
//! Owns [`ThrottlePolicy`], [`Failures`] (the small record the edge keeps per
//! key) and the two pure steps: [`check`] before a password is looked at,
//! [`Failures::record`] after it failed. The edge keeps one record per client
//! address (`CF-Connecting-IP`) and one per user name, and applies the
//! stricter answer.
//!
//! Key decisions:
//! * **Refused attempts are not checked**: while a key is delayed the
//!   password is not derived at all, so a guessing client costs the Worker
//!   no PBKDF2 work (see [`crate::password`]) and learns nothing.
//! * **Free failures, then exponential backoff**: the first
//!   [`ThrottlePolicy::free_failures`] failures cost nothing (typos, a client
//!   retrying with a stale password); after them the next attempt waits
//!   `base_delay`, and each further failure doubles the wait, up to
//!   `max_delay`. With the defaults (5 free, 1 s doubling, 5 min cap, 15 min
//!   memory) a guesser gets 5 tries at once, 9 more over the next 8.5
//!   minutes, then one per 5 minutes (~290 a day) per address and per name.
//! * **Forgetting is by silence**: a record is dropped once `window` has
//!   passed since its last failure (the store's TTL does it), so an honest
//!   user who mistyped is never penalised later. `max_delay < window`, so a
//!   delayed key is still remembered when its delay ends.
//! * A success clears the user name's record only: a client address that
//!   knows one valid account could otherwise wipe its own record between
//!   guesses at other accounts.
//! * Times are unix milliseconds passed in; a record from the future (clock
//!   skew between locations) counts as just now.

use serde::{Deserialize, Serialize};

/// How many failures are free and how the delay grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures before any delay.
    pub free_failures: u32,
    /// The delay after the first failure past the free ones (ms).
    pub base_delay_ms: u64,
    /// The longest delay (ms).
    pub max_delay_ms: u64,
    /// A record is forgotten this long after its last failure (ms).
    pub window_ms: u64,
}

impl Default for ThrottlePolicy {
    /// 5 free failures, then 1 s, 2 s, 4 s, … up to 5 min; forgotten after
    /// 15 min without a failure.
    fn default() -> Self {
        ThrottlePolicy {
            free_failures: 5,
            base_delay_ms: 1_000,
            max_delay_ms: 5 * 60 * 1_000,
            window_ms: 15 * 60 * 1_000,
        }
    }
}

/// Failed sign-ins for one key (client address or user name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Failures since the record was last forgotten.
    pub count: u32,
    /// Time of the last failure, unix ms.
    pub last_ms: u64,
}

/// Whether to look at the password now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check the credentials.
    Allow,
    /// Refuse without checking; retry after this many seconds (≥ 1).
    Delay {
        /// Seconds until an attempt is allowed again.
        retry_after_secs: u64,
    },
}

impl ThrottlePolicy {
    /// The wait after `count` failures: 0 while free, then `base_delay`,
    /// doubling per further failure, capped.
    pub fn delay_ms(&self, count: u32) -> u64 {
        let Some(over) = count.checked_sub(self.free_failures) else {
            return 0;
        };
        self.base_delay_ms
            .saturating_mul(1u64 << over.min(63))
            .min(self.max_delay_ms)
    }

    /// The record as it stands at `now_ms`: forgotten after `window` of
    /// silence.
    fn current(&self, record: Option<Failures>, now_ms: u64) -> Failures {
        match record {
            Some(r) if now_ms.saturating_sub(r.last_ms) < self.window_ms => r,
            _ => Failures::default(),
        }
    }
}

/// Before checking a password: the stricter verdict of all `records` (one
/// per key; `None` = no record).
pub fn check(policy: &ThrottlePolicy, records: &[Option<Failures>], now_ms: u64) -> Verdict {
    let wait_ms = records
        .iter()
        .map(|r| {
            let r = policy.current(*r, now_ms);
            let last = r.last_ms.min(now_ms);
            (last.saturating_add(policy.delay_ms(r.count))).saturating_sub(now_ms)
        })
        .max()
        .unwrap_or(0);
    if wait_ms == 0 {
        Verdict::Allow
    } else {
        Verdict::Delay {
            retry_after_secs: wait_ms.div_ceil(1000).max(1),
        }
    }
}

impl Failures {
    /// The record after one more failure at `now_ms`.
    pub fn record(record: Option<Failures>, policy: &ThrottlePolicy, now_ms: u64) -> Failures {
        let r = policy.current(record, now_ms);
        Failures {
            count: r.count.saturating_add(1),
            last_ms: now_ms.max(r.last_ms),
        }
    }

    /// How long the store should keep this record (seconds, ≥ 1).
    pub fn keep_secs(policy: &ThrottlePolicy) -> u64 {
        policy.window_ms.div_ceil(1000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ThrottlePolicy = ThrottlePolicy {
        free_failures: 3,
        base_delay_ms: 1_000,
        max_delay_ms: 60_000,
        window_ms: 600_000,
    };

    fn f(count: u32, last_ms: u64) -> Option<Failures> {
        Some(Failures { count, last_ms })
    }

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_cap() {
        let got: Vec<u64> = (0..=11).map(|n| P.delay_ms(n)).collect();
        assert_eq!(
            got,
            [
                0, 0, 0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(P.delay_ms(u32::MAX), 60_000);
        let d = ThrottlePolicy::default();
        assert!(d.max_delay_ms < d.window_ms, "a delayed key is remembered");
    }

    #[test]
    fn verdicts() {
        let now = 10_000_000;
        let delay = |secs| Verdict::Delay {
            retry_after_secs: secs,
        };
        let cases: &[(&[Option<Failures>], Verdict)] = &[
            (&[], Verdict::Allow),
            (&[None, None], Verdict::Allow),
            (&[f(2, now)], Verdict::Allow),
            (&[f(3, now)], delay(1)),
            (&[f(3, now - 1_000)], Verdict::Allow),
            (&[f(5, now - 1_500)], delay(3)),
            (&[f(5, now - 3_999)], delay(1)),
            // The stricter key wins.
            (&[f(3, now), f(7, now - 10_000)], delay(6)),
            (&[f(40, now)], delay(60)),
            // Forgotten after the window of silence.
            (&[f(40, now - 600_000)], Verdict::Allow),
            // A failure "in the future" (skew) counts as now.
            (&[f(3, now + 50_000)], delay(1)),
        ];
        for (records, want) in cases {
            assert_eq!(check(&P, records, now), *want, "{records:?}");
        }
    }

    #[test]
    fn recording_counts_within_the_window_and_restarts_after_it() {
        let r = Failures::record(None, &P, 1_000);
        assert_eq!(
            r,
            Failures {
                count: 1,
                last_ms: 1_000
            }
        );
        let r = Failures::record(Some(r), &P, 2_000);
        assert_eq!(
            r,
            Failures {
                count: 2,
                last_ms: 2_000
            }
        );
        let r = Failures::record(Some(r), &P, 2_000 + 600_000);
        assert_eq!(
            r,
            Failures {
                count: 1,
                last_ms: 602_000
            }
        );
        let r = Failures::record(f(u32::MAX, 5), &P, 6);
        assert_eq!(r.count, u32::MAX);
        assert_eq!(Failures::keep_secs(&P), 600);
    }

    /// A client that retries exactly when told is refused between attempts
    /// and gets the doubling schedule.
    #[test]
    fn a_persistent_guesser_follows_the_schedule() {
        let mut now = 0u64;
        let mut rec = None;
        let mut allowed_at = Vec::new();
        for _ in 0..8 {
            loop {
                match check(&P, &[rec], now) {
                    Verdict::Allow => break,
                    Verdict::Delay { retry_after_secs } => now += retry_after_secs * 1000,
                }
            }
            allowed_at.push(now / 1000);
            rec = Some(Failures::record(rec, &P, now));
        }
        assert_eq!(allowed_at, [0, 0, 0, 1, 3, 7, 15, 31]);
    }
}
