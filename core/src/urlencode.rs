//! Percent-encoding for query strings and request paths.
//!
//! Owns [`encode_component`], [`decode_query_component`] and [`decode_path`].
//!
//! Key decision: a dozen lines instead of the `url`/`percent-encoding` crates (wasm
//! bundle size). Encoding keeps only RFC 3986 unreserved characters, which is safe in
//! any query or path position. Decoding is lenient, like Go's `net/http` and
//! browsers: a malformed `%` escape is kept literally and invalid UTF-8 is replaced,
//! so decoding never fails — the grammar checks that follow reject what matters.

/// Percent-encodes everything except `A-Z a-z 0-9 - . _ ~` (upper-case hex).
pub fn encode_component(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Decodes an `application/x-www-form-urlencoded` value: `+` is a space.
pub fn decode_query_component(s: &str) -> String {
    decode(s, true)
}

/// Decodes a URL path: `+` stays `+`.
pub fn decode_path(s: &str) -> String {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    if !(s.contains('%') || (plus_is_space && s.contains('+'))) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16)
                        .ok()
                        .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encode_table() {
        let cases = [
            ("registry.docker.io", "registry.docker.io"),
            (
                "repository:library/alpine:pull",
                "repository%3Alibrary%2Falpine%3Apull",
            ),
            ("a b+c&d=e", "a%20b%2Bc%26d%3De"),
            ("~_-.", "~_-."),
            ("é", "%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(encode_component(input), want);
        }
    }

    #[test]
    fn decode_table() {
        let cases = [
            ("a%3Ab", "a:b", "a:b"),
            ("a+b", "a b", "a+b"),
            ("%2f%2F", "//", "//"),
            ("100%", "100%", "100%"),
            ("%zz%4", "%zz%4", "%zz%4"),
            ("%+1", "% 1", "%+1"),
            ("%C3%A9", "é", "é"),
            ("%FF", "\u{FFFD}", "\u{FFFD}"),
        ];
        for (input, query, path) in cases {
            assert_eq!(decode_query_component(input), query, "{input}");
            assert_eq!(decode_path(input), path, "{input}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(s in "\\PC*") {
            prop_assert_eq!(decode_query_component(&encode_component(&s)), s.clone());
            prop_assert_eq!(decode_path(&encode_component(&s)), s);
        }

        #[test]
        fn decode_never_panics(s in "\\PC*") {
            let _ = decode_query_component(&s);
            let _ = decode_path(&s);
        }
    }
}
