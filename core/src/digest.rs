//! Content digests: parsing, display and incremental verification.
//!
//! Owns [`Digest`] (an algorithm plus lowercase hex), [`DigestAlgorithm`] and
//! [`DigestVerifier`], the incremental hasher the origin feeds while a blob streams.
//!
//! Key decision: a [`Digest`] can only hold a *registered* algorithm (sha256, sha512)
//! with the exact hex length, in canonical lowercase. The OCI image-spec grammar
//! (`algorithm ":" encoded`) is checked first so that garbage gets a grammar error,
//! and a well-formed digest with an algorithm we cannot verify gets
//! [`DigestError::UnsupportedAlgorithm`]: a cache must never store bytes it cannot
//! verify, so there is no "opaque digest" escape hatch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm that Wharf can compute and verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256: 64 lowercase hex characters. The algorithm every registry uses.
    Sha256,
    /// SHA-512: 128 lowercase hex characters.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name as written before the `:` (`sha256`, `sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The exact number of hex characters in an encoded digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a usable digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The input was empty.
    #[error("digest is empty; expected `algorithm:hex`, e.g. `sha256:<64 lowercase hex>`")]
    Empty,
    /// No `:` between algorithm and encoded part.
    #[error(
        "digest `{input}` has no `:`; expected `algorithm:hex`, e.g. `sha256:<64 lowercase hex>`"
    )]
    MissingSeparator {
        /// The offending input (possibly shortened).
        input: String,
    },
    /// The algorithm part does not match `[a-z0-9]+([+._-][a-z0-9]+)*`.
    #[error(
        "digest algorithm `{algorithm}` is malformed; the OCI grammar is `[a-z0-9]+([+._-][a-z0-9]+)*`"
    )]
    InvalidAlgorithm {
        /// The algorithm part (possibly shortened).
        algorithm: String,
    },
    /// The encoded part is empty or does not match `[a-zA-Z0-9=_-]+`.
    #[error("digest encoded part `{encoded}` is malformed; the OCI grammar is `[a-zA-Z0-9=_-]+`")]
    InvalidEncoded {
        /// The encoded part (possibly shortened).
        encoded: String,
    },
    /// A well-formed digest whose algorithm Wharf cannot verify.
    #[error("digest algorithm `{algorithm}` is not supported; use sha256 or sha512")]
    UnsupportedAlgorithm {
        /// The algorithm part (possibly shortened).
        algorithm: String,
    },
    /// The hex part has the wrong length for its algorithm.
    #[error("{algorithm} digest must have exactly {expected} hex characters, got {actual}")]
    WrongLength {
        /// The digest's algorithm.
        algorithm: DigestAlgorithm,
        /// The required length.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// The hex part contains something other than `[0-9a-f]` (uppercase included).
    #[error(
        "{algorithm} digest has `{ch}` at hex position {index}; only lowercase hex `[0-9a-f]` is allowed"
    )]
    InvalidHex {
        /// The digest's algorithm.
        algorithm: DigestAlgorithm,
        /// The first offending character.
        ch: char,
        /// Its position within the hex part.
        index: usize,
    },
}

/// Shortens user input quoted in error messages, so a megabyte of garbage in a
/// request path does not become a megabyte of error body.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A verified-format content digest such as `sha256:e3b0…b855`.
///
/// Ordering is by algorithm, then hex; equality is exact (the hex is always lowercase).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    /// Parses `algorithm:encoded` per the OCI image-spec, then requires a supported
    /// algorithm with exactly its number of lowercase hex characters.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        if s.is_empty() {
            return Err(DigestError::Empty);
        }
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(DigestError::MissingSeparator { input: excerpt(s) });
        };
        if !algorithm_grammar_ok(algorithm) {
            return Err(DigestError::InvalidAlgorithm {
                algorithm: excerpt(algorithm),
            });
        }
        let encoded_ok = !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
        if !encoded_ok {
            return Err(DigestError::InvalidEncoded {
                encoded: excerpt(encoded),
            });
        }
        let Some(alg) = DigestAlgorithm::from_name(algorithm) else {
            return Err(DigestError::UnsupportedAlgorithm {
                algorithm: excerpt(algorithm),
            });
        };
        if let Some((index, ch)) = encoded
            .char_indices()
            .find(|&(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(DigestError::InvalidHex {
                algorithm: alg,
                ch,
                index,
            });
        }
        if encoded.len() != alg.hex_len() {
            return Err(DigestError::WrongLength {
                algorithm: alg,
                expected: alg.hex_len(),
                actual: encoded.len(),
            });
        }
        Ok(Digest {
            algorithm: alg,
            hex: encoded.to_owned(),
        })
    }

    /// The digest's algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex part (no algorithm prefix).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut v = DigestVerifier::new(DigestAlgorithm::Sha256);
        v.update(bytes);
        v.finish()
    }

    /// A fresh incremental hasher for this digest's algorithm.
    pub fn verifier(&self) -> DigestVerifier {
        DigestVerifier::new(self.algorithm)
    }
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*`
fn algorithm_grammar_ok(s: &str) -> bool {
    let mut prev_sep = true; // at start, a separator is not allowed
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_sep = false,
            b'+' | b'.' | b'_' | b'-' if !prev_sep => prev_sep = true,
            _ => return false,
        }
    }
    !prev_sep
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

/// Incremental hasher for one [`DigestAlgorithm`]; feed chunks as they stream.
#[derive(Clone, Debug)]
pub struct DigestVerifier {
    inner: Hasher,
}

#[derive(Clone, Debug)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestVerifier {
    /// A hasher with no input yet.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        let inner = match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        };
        DigestVerifier { inner }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.inner {
            Hasher::Sha256(_) => DigestAlgorithm::Sha256,
            Hasher::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Feeds the next chunk of content.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.inner {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self.inner {
            Hasher::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// True if everything fed so far hashes to `expected` (false on algorithm mismatch).
    pub fn verify(self, expected: &Digest) -> bool {
        self.finish() == *expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The parsed (algorithm, hex), or a fragment of the error message.
    type Expected<'a> = Result<(DigestAlgorithm, &'a str), &'static str>;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        let h64 = "a".repeat(64);
        let h128 = "0".repeat(128);
        let cases: Vec<(String, Expected<'_>)> = vec![
            (format!("sha256:{h64}"), Ok((DigestAlgorithm::Sha256, &h64))),
            (
                format!("sha512:{h128}"),
                Ok((DigestAlgorithm::Sha512, &h128)),
            ),
            (String::new(), Err("empty")),
            (h64.clone(), Err("has no `:`")),
            (format!(":{h64}"), Err("algorithm `` is malformed")),
            (format!("SHA256:{h64}"), Err("malformed")),
            (format!("sha256+:{h64}"), Err("malformed")),
            (format!("sha+256:{h64}"), Err("not supported")),
            (format!("md5:{h64}"), Err("not supported")),
            ("sha256:".into(), Err("encoded part `` is malformed")),
            (format!("sha256:{h64}/"), Err("encoded part")),
            (
                format!("sha256:{}", "A".repeat(64)),
                Err("`A` at hex position 0"),
            ),
            (
                format!("sha256:{}", "a".repeat(63)),
                Err("exactly 64 hex characters, got 63"),
            ),
            (format!("sha256:{}", "a".repeat(65)), Err("got 65")),
            (format!("sha512:{h64}"), Err("exactly 128")),
            (format!("sha256:{h64}:x"), Err("encoded part")),
        ];
        for (input, want) in cases {
            let got = Digest::parse(&input);
            match (want, got) {
                (Ok((alg, hex)), Ok(d)) => {
                    assert_eq!(d.algorithm(), alg, "{input}");
                    assert_eq!(d.hex(), hex, "{input}");
                    assert_eq!(d.to_string(), input);
                }
                (Err(msg), Err(e)) => {
                    assert!(e.to_string().contains(msg), "{input}: `{e}` lacks `{msg}`")
                }
                (want, got) => panic!("{input}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn errors_quote_long_input_shortened() {
        let e = Digest::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn sha256_of_empty_is_well_known() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY_SHA256);
    }

    #[test]
    fn verifier_accepts_chunked_input_and_rejects_other_bytes() {
        let want = Digest::sha256_of(b"hello world");
        let mut v = want.verifier();
        v.update(b"hello ");
        v.update(b"world");
        assert!(v.verify(&want));
        let mut v = want.verifier();
        v.update(b"hello");
        assert!(!v.verify(&want));
        let mut v = DigestVerifier::new(DigestAlgorithm::Sha512);
        v.update(b"hello world");
        assert_eq!(v.algorithm(), DigestAlgorithm::Sha512);
        let d = v.finish();
        assert_eq!(d.hex().len(), 128);
        assert!(
            !d.verifier().verify(&want),
            "algorithm mismatch never verifies"
        );
    }

    #[test]
    fn serde_is_the_string_form() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY_SHA256}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Digest::parse(&s);
        }

        #[test]
        fn parse_display_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn sha512_round_trips(hex in "[0-9a-f]{128}") {
            let s = format!("sha512:{hex}");
            prop_assert_eq!(Digest::parse(&s).unwrap().to_string(), s);
        }
    }
}
