//! UTC calendar formatting of unix timestamps, for SigV4 (`X-Amz-Date`) and
//! token responses (`issued_at`, RFC 3339).
//!
//! Owns [`UtcDateTime`]. Key decision: Howard Hinnant's `civil_from_days`
//! (exact for the proleptic Gregorian calendar, a dozen integer operations)
//! instead of `time`/`chrono` — the timestamp is always the caller's (no clock
//! here) and the wasm bundle stays small.

/// A UTC calendar date and time of day, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcDateTime {
    /// Year (e.g. 2013); always at least 1970.
    pub year: u64,
    /// Month, 1–12.
    pub month: u8,
    /// Day of the month, 1–31.
    pub day: u8,
    /// Hour, 0–23.
    pub hour: u8,
    /// Minute, 0–59.
    pub minute: u8,
    /// Second, 0–59.
    pub second: u8,
}

impl UtcDateTime {
    /// The calendar time of `unix_secs` seconds after 1970-01-01T00:00:00Z.
    pub fn from_unix(unix_secs: u64) -> UtcDateTime {
        let days = unix_secs / 86_400;
        let secs = unix_secs % 86_400;
        // civil_from_days, shifted so that eras start on 0000-03-01; all
        // quantities are non-negative because unix_secs is.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097; // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
        let mp = (5 * doy + 2) / 153; // [0, 11]
        let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
        let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
        let year = yoe + era * 400 + u64::from(month <= 2);
        UtcDateTime {
            year,
            // The ranges above make these casts lossless.
            month: month as u8,
            day: day as u8,
            hour: (secs / 3600) as u8,
            minute: (secs % 3600 / 60) as u8,
            second: (secs % 60) as u8,
        }
    }

    /// `YYYYMMDD`, the SigV4 credential-scope date.
    pub fn amz_date(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYYMMDDTHHMMSSZ`, the SigV4 `X-Amz-Date`.
    pub fn amz_datetime(&self) -> String {
        format!(
            "{}T{:02}{:02}{:02}Z",
            self.amz_date(),
            self.hour,
            self.minute,
            self.second
        )
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"), // leap day of a /400 year
            (1_369_353_600, "2013-05-24T00:00:00Z"), // the AWS SigV4 examples
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"), // 2100 is not a leap year
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(UtcDateTime::from_unix(secs).rfc3339(), want, "{secs}");
        }
        let t = UtcDateTime::from_unix(1_369_353_600);
        assert_eq!(t.amz_date(), "20130524");
        assert_eq!(t.amz_datetime(), "20130524T000000Z");
    }

    proptest! {
        #[test]
        fn fields_stay_in_range(secs in any::<u64>()) {
            let t = UtcDateTime::from_unix(secs);
            prop_assert!((1..=12).contains(&t.month));
            prop_assert!((1..=31).contains(&t.day));
            prop_assert!(t.hour < 24 && t.minute < 60 && t.second < 60);
        }

        #[test]
        fn consecutive_days_are_consecutive(day in 0u64..3_000_000) {
            let a = UtcDateTime::from_unix(day * 86_400);
            let b = UtcDateTime::from_unix((day + 1) * 86_400);
            let next = if a.day < 28 {
                (a.year, a.month, a.day + 1)
            } else if b.day == 1 {
                if a.month == 12 { (a.year + 1, 1, 1) } else { (a.year, a.month + 1, 1) }
            } else {
                (a.year, a.month, a.day + 1)
            };
            prop_assert_eq!((b.year, b.month, b.day), next);
        }
    }
}
