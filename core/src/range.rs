//! HTTP `Range` requests on blobs (RFC 9110 §14).
//!
//! Owns [`ByteRange`], [`RangeOutcome`] and [`parse_range`].
//!
//! Key decisions:
//! * Only a single range is served as `206`. A multi-range request (`bytes=0-1,5-9`)
//!   is answered with the full blob (`Ok(RangeOutcome::Full)`), which RFC 9110
//!   allows ("a server MAY ignore the Range header field") and which spares the
//!   origin and the edge a `multipart/byteranges` encoder no registry client uses.
//! * Numbers are parsed saturating: a `last-pos` beyond `u64::MAX` is clamped like any
//!   other past-the-end position, a huge `first-pos` is unsatisfiable, a huge suffix
//!   selects the whole blob. Nothing overflows.
//! * Syntactically invalid headers are an error (the caller answers
//!   `416 RANGE_INVALID`, as Distribution does via Go's `http.ServeContent`); a
//!   well-formed range outside the blob is [`RangeOutcome::Unsatisfiable`] (also
//!   `416`, with `Content-Range: bytes */<total>` from [`unsatisfiable_content_range`]).

/// An inclusive byte range within a blob; `start <= end_inclusive` always.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset (inclusive).
    pub end_inclusive: u64,
}

impl ByteRange {
    /// Number of bytes in the range (saturating at `u64::MAX`).
    pub fn len(&self) -> u64 {
        (self.end_inclusive - self.start).saturating_add(1)
    }

    /// Always false: a `ByteRange` holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value of a `206` response, e.g. `bytes 0-99/1000`.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end_inclusive, total)
    }
}

/// The `Content-Range` value of a `416` response, e.g. `bytes */1000`.
pub fn unsatisfiable_content_range(total: u64) -> String {
    format!("bytes */{total}")
}

/// What to send for a request's `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Send the whole blob with `200` (multi-range requests land here too).
    Full,
    /// Send this part with `206`.
    Partial(ByteRange),
    /// Send `416` with `Content-Range: bytes */<total>`.
    Unsatisfiable,
}

/// A syntactically invalid `Range` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The unit is not `bytes`.
    #[error(
        "Range header `{header}` does not use the `bytes=` unit; expected `bytes=first-last`, `bytes=first-` or `bytes=-suffix`"
    )]
    UnsupportedUnit {
        /// The header (possibly shortened).
        header: String,
    },
    /// A range-spec that is not `a-b`, `a-` or `-n` with decimal digits.
    #[error(
        "Range header has malformed range `{spec}`; expected `first-last`, `first-` or `-suffix` with decimal byte offsets"
    )]
    Malformed {
        /// The offending range-spec (possibly shortened).
        spec: String,
    },
    /// `last-pos` is smaller than `first-pos`.
    #[error("Range header has `{first}-{last}` whose last byte is before its first")]
    Reversed {
        /// The first position.
        first: u64,
        /// The last position.
        last: u64,
    },
}

enum Spec {
    FromTo(u64, Option<u64>),
    Suffix(u64),
}

/// Decimal digits only, saturating at `u64::MAX`; `None` if empty or not digits.
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn parse_spec(raw: &str) -> Result<Spec, RangeError> {
    let spec = raw.trim();
    let malformed = || RangeError::Malformed {
        spec: crate::digest::excerpt(spec),
    };
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    if first.is_empty() {
        return parse_pos(last).map(Spec::Suffix).ok_or_else(malformed);
    }
    let first = parse_pos(first).ok_or_else(malformed)?;
    if last.is_empty() {
        return Ok(Spec::FromTo(first, None));
    }
    let last = parse_pos(last).ok_or_else(malformed)?;
    if last < first {
        return Err(RangeError::Reversed { first, last });
    }
    Ok(Spec::FromTo(first, Some(last)))
}

/// Interprets a `Range` header for a blob of `total_len` bytes.
pub fn parse_range(header: &str, total_len: u64) -> Result<RangeOutcome, RangeError> {
    let header = header.trim();
    let unit_ok = header.len() >= 6
        && header.is_char_boundary(6)
        && header[..6].eq_ignore_ascii_case("bytes=");
    if !unit_ok {
        return Err(RangeError::UnsupportedUnit {
            header: crate::digest::excerpt(header),
        });
    }
    let mut specs = header[6..]
        .split(',')
        .filter(|s| !s.trim().is_empty()) // RFC 9110 list syntax allows empty elements
        .map(parse_spec);
    let Some(first) = specs.next() else {
        return Err(RangeError::Malformed {
            spec: String::new(),
        });
    };
    let first = first?;
    let mut more = false;
    for spec in specs {
        spec?;
        more = true;
    }
    if more {
        return Ok(RangeOutcome::Full);
    }
    Ok(match first {
        // A zero-length suffix or an empty blob can satisfy nothing.
        Spec::Suffix(0) => RangeOutcome::Unsatisfiable,
        _ if total_len == 0 => RangeOutcome::Unsatisfiable,
        Spec::Suffix(n) => RangeOutcome::Partial(ByteRange {
            start: total_len.saturating_sub(n),
            end_inclusive: total_len - 1,
        }),
        Spec::FromTo(first, _) if first >= total_len => RangeOutcome::Unsatisfiable,
        Spec::FromTo(first, last) => RangeOutcome::Partial(ByteRange {
            start: first,
            end_inclusive: last.map_or(total_len - 1, |l| l.min(total_len - 1)),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(start: u64, end_inclusive: u64) -> RangeOutcome {
        RangeOutcome::Partial(ByteRange {
            start,
            end_inclusive,
        })
    }

    #[test]
    fn parse_table() {
        use RangeOutcome::*;
        let cases: &[(&str, u64, Result<RangeOutcome, &str>)] = &[
            ("bytes=0-99", 1000, Ok(part(0, 99))),
            ("bytes=0-0", 1000, Ok(part(0, 0))),
            ("  Bytes=10-  ", 1000, Ok(part(10, 999))),
            ("bytes=-100", 1000, Ok(part(900, 999))),
            ("bytes=-5000", 1000, Ok(part(0, 999))),
            ("bytes=990-5000", 1000, Ok(part(990, 999))),
            ("bytes=0-99999999999999999999999999", 10, Ok(part(0, 9))),
            ("bytes=-99999999999999999999999999", 10, Ok(part(0, 9))),
            ("bytes=99999999999999999999999999-", 10, Ok(Unsatisfiable)),
            ("bytes=1000-", 1000, Ok(Unsatisfiable)),
            ("bytes=1000-1001", 1000, Ok(Unsatisfiable)),
            ("bytes=-0", 1000, Ok(Unsatisfiable)),
            ("bytes=0-", 0, Ok(Unsatisfiable)),
            ("bytes=-1", 0, Ok(Unsatisfiable)),
            ("bytes=0-1,5-9", 1000, Ok(Full)),
            ("bytes= 0-1 , ", 1000, Ok(part(0, 1))),
            ("bytes=0-1,x", 1000, Err("malformed range `x`")),
            ("items=0-1", 1000, Err("`bytes=` unit")),
            ("", 1000, Err("`bytes=` unit")),
            ("bytes=", 1000, Err("malformed")),
            (
                "bytes=5-1",
                1000,
                Err("`5-1` whose last byte is before its first"),
            ),
            ("bytes=a-b", 1000, Err("malformed")),
            ("bytes=-", 1000, Err("malformed")),
            ("bytes=+1-2", 1000, Err("malformed")),
            ("bytes=1-2-3", 1000, Err("malformed")),
            ("bytés=1-2", 1000, Err("unit")),
        ];
        for (header, total, want) in cases {
            match (parse_range(header, *total), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{header}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{header}: {e}"),
                (got, want) => panic!("{header}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn content_range_formats() {
        let r = ByteRange {
            start: 0,
            end_inclusive: 99,
        };
        assert_eq!(r.content_range(1000), "bytes 0-99/1000");
        assert_eq!(r.len(), 100);
        assert!(!r.is_empty());
        assert_eq!(unsatisfiable_content_range(1000), "bytes */1000");
        let all = ByteRange {
            start: 0,
            end_inclusive: u64::MAX,
        };
        assert_eq!(all.len(), u64::MAX);
    }

    proptest! {
        #[test]
        fn never_panics(header in "\\PC*", total in any::<u64>()) {
            let _ = parse_range(&header, total);
        }

        #[test]
        fn partial_ranges_are_within_total(
            a in proptest::option::of(any::<u64>()),
            b in proptest::option::of(any::<u64>()),
            total in prop_oneof![0u64..2000, any::<u64>()],
        ) {
            let header = format!(
                "bytes={}-{}",
                a.map(|v| v.to_string()).unwrap_or_default(),
                b.map(|v| v.to_string()).unwrap_or_default()
            );
            if let Ok(RangeOutcome::Partial(r)) = parse_range(&header, total) {
                prop_assert!(r.start <= r.end_inclusive);
                prop_assert!(r.end_inclusive < total);
                prop_assert!(r.len() <= total);
            }
        }
    }
}
