//! The stored form of a user's password (`WHARF_USERS`): PBKDF2-HMAC-SHA256,
//! salted and iterated, written `pbkdf2-sha256$<iterations>$<salt>$<hash>`
//! (salt and hash in unpadded standard base64, as in PHC strings).
//!
//! Owns [`StoredPassword`] (parse, format, constant-time check of a derived
//! key), [`derive`] (the native derivation, `pbkdf2` crate) and the cost
//! bounds. `wharf-origin hash-password` prints the stored form; the edge
//! derives with WebCrypto (`crypto.subtle.deriveBits`, native code in workerd,
//! far cheaper than the same loop in wasm) and compares here.
//!
//! Key decisions:
//! * **PBKDF2-SHA256**, not scrypt/Argon2: it is the one password KDF that
//!   WebCrypto offers, so the Worker runs it natively. Memory-hard KDFs in
//!   wasm would cost the Worker's CPU budget many times over.
//! * **100 000 iterations** ([`DEFAULT_ITERATIONS`] = [`MAX_ITERATIONS`]):
//!   workerd refuses PBKDF2 above 100 000 iterations ("iteration counts above
//!   100000 are not supported"), so a higher count could never be checked at
//!   the edge. Measured under `wrangler dev` on this project's 2-core
//!   machine (shared with builds): a `/token` with Basic auth takes 13–22 ms
//!   more wall time than an anonymous one (mean of 10, two runs;
//!   `tests/tests/edge_signin.rs` prints it).
//!   Cloudflare's paid plan allows 30 s of CPU per request, so this is
//!   cheap there; the free plan's 10 ms is exceeded, where a lower
//!   `--iterations` (≥ [`MIN_ITERATIONS`]) is the operator's trade-off.
//!   OWASP asks for 600 000 for PBKDF2-SHA256; the per-client throttle on
//!   `/token` ([`crate::signin`]) makes up for part of the gap online, and the
//!   salt defeats precomputed tables if the secret leaks.
//! * **Only this form is accepted.** Plain passwords and the unsalted
//!   `sha256:<hex>` of earlier versions are refused by the edge's
//!   configuration with a message naming the user and the command that
//!   prints the new form: a secret that leaks should not hand out the
//!   passwords (or a fast hash of them), and a silent fallback would keep
//!   them forever.
//! * Parsing bounds every number, so a crafted entry cannot ask the Worker
//!   for unbounded work; comparisons are constant-time.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// The algorithm tag at the start of the stored form.
pub const ALGORITHM: &str = "pbkdf2-sha256";
/// Iterations `wharf-origin hash-password` uses unless told otherwise.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
/// The most iterations accepted: workerd's WebCrypto limit.
pub const MAX_ITERATIONS: u32 = 100_000;
/// The fewest iterations accepted.
pub const MIN_ITERATIONS: u32 = 10_000;
/// Salt length `hash-password` generates (bytes).
pub const SALT_LEN: usize = 16;
/// Shortest salt accepted (bytes).
pub const MIN_SALT_LEN: usize = 8;
/// Longest salt accepted (bytes).
pub const MAX_SALT_LEN: usize = 64;
/// Derived key length (bytes): one SHA-256 block of output.
pub const HASH_LEN: usize = 32;

/// Why a stored password did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// A plain password or an unsalted `sha256:` hash (earlier versions).
    #[error(
        "is a plain password or an unsalted sha256: hash, which are no longer accepted; store the output of `wharf-origin hash-password` (`{ALGORITHM}$<iterations>$<salt>$<hash>`)"
    )]
    Retired,
    /// The form is not `pbkdf2-sha256$<iterations>$<salt>$<hash>`.
    #[error("is not `{ALGORITHM}$<iterations>$<salt b64>$<hash b64>`: {0}")]
    Malformed(&'static str),
    /// The iteration count is out of bounds.
    #[error("has {0} iterations; expected {MIN_ITERATIONS} to {MAX_ITERATIONS} (workerd's limit)")]
    Iterations(u64),
}

/// A parsed `pbkdf2-sha256$…` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPassword {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2-HMAC-SHA256(password, salt, iterations), 32 bytes.
    pub hash: [u8; HASH_LEN],
}

impl fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredPassword")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ALGORITHM}${}${}${}",
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(self.hash)
        )
    }
}

fn b64(s: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl StoredPassword {
    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<StoredPassword, PasswordError> {
        let mut parts = s.split('$');
        if parts.next() != Some(ALGORITHM) {
            return Err(PasswordError::Retired);
        }
        let (Some(iterations), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PasswordError::Malformed(
                "expected four `$`-separated fields",
            ));
        };
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PasswordError::Malformed(
                "the iteration count is not a number",
            ));
        }
        let n: u64 = iterations
            .parse()
            .map_err(|_| PasswordError::Iterations(u64::MAX))?;
        if !(u64::from(MIN_ITERATIONS)..=u64::from(MAX_ITERATIONS)).contains(&n) {
            return Err(PasswordError::Iterations(n));
        }
        let salt = b64(salt).ok_or(PasswordError::Malformed("the salt is not base64"))?;
        if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt.len()) {
            return Err(PasswordError::Malformed("the salt must be 8 to 64 bytes"));
        }
        let hash: [u8; HASH_LEN] = b64(hash)
            .ok_or(PasswordError::Malformed("the hash is not base64"))?
            .try_into()
            .map_err(|_| PasswordError::Malformed("the hash must be 32 bytes"))?;
        Ok(StoredPassword {
            iterations: n as u32,
            salt,
            hash,
        })
    }

    /// The stored form of `password` with `salt` (the caller draws it at
    /// random: no RNG here) and `iterations`.
    pub fn new(password: &[u8], salt: &[u8], iterations: u32) -> StoredPassword {
        StoredPassword {
            iterations,
            salt: salt.to_vec(),
            hash: derive(password, salt, iterations),
        }
    }

    /// True if `derived` (PBKDF2 of the candidate with this salt and count)
    /// equals the stored hash; constant-time.
    pub fn matches_derived(&self, derived: &[u8]) -> bool {
        constant_time_eq(&self.hash, derived)
    }

    /// Derives natively and compares: for native callers and tests (the edge
    /// derives with WebCrypto and calls [`StoredPassword::matches_derived`]).
    pub fn verify(&self, password: &[u8]) -> bool {
        self.matches_derived(&derive(password, &self.salt, self.iterations))
    }
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output.
pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, HASH_LEN>(password, salt, iterations)
}

/// Equality that takes the same time wherever the first difference is
/// (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7914 §11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1, dkLen=64
    /// (the first 32 bytes), and P="Password", S="NaCl", c=80000.
    #[test]
    fn derivation_matches_rfc_7914_vectors() {
        assert_eq!(
            hex::encode(derive(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert_eq!(
            hex::encode(derive(b"Password", b"NaCl", 80_000)),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn stored_form_round_trips() {
        let p = StoredPassword::new(b"hunter2", b"0123456789abcdef", 10_000);
        let text = p.to_string();
        assert!(text.starts_with("pbkdf2-sha256$10000$MDEyMzQ1Njc4OWFiY2RlZg$"));
        let back = StoredPassword::parse(&text).unwrap();
        assert_eq!(back, p);
        assert!(back.verify(b"hunter2"));
        assert!(!back.verify(b"hunter3"));
        assert!(!back.verify(b""));
        // Padded base64 is accepted too.
        let padded = text.replacen("ZGVm$", "ZGVm==$", 1);
        assert_eq!(StoredPassword::parse(&padded).unwrap(), p);
        assert!(!format!("{p:?}").contains("hash"));
    }

    #[test]
    fn bad_forms_are_refused_with_the_reason() {
        let hash = STANDARD_NO_PAD.encode([7u8; 32]);
        let salt = STANDARD_NO_PAD.encode([1u8; 16]);
        let cases: &[(String, PasswordError)] = &[
            ("hunter2".into(), PasswordError::Retired),
            (
                format!("sha256:{}", "ab".repeat(32)),
                PasswordError::Retired,
            ),
            ("".into(), PasswordError::Retired),
            (
                format!("{ALGORITHM}$100000${salt}"),
                PasswordError::Malformed("expected four `$`-separated fields"),
            ),
            (
                format!("{ALGORITHM}$100000${salt}${hash}$x"),
                PasswordError::Malformed("expected four `$`-separated fields"),
            ),
            (
                format!("{ALGORITHM}$-1${salt}${hash}"),
                PasswordError::Malformed("the iteration count is not a number"),
            ),
            (
                format!("{ALGORITHM}$100001${salt}${hash}"),
                PasswordError::Iterations(100_001),
            ),
            (
                format!("{ALGORITHM}$9999${salt}${hash}"),
                PasswordError::Iterations(9_999),
            ),
            (
                format!("{ALGORITHM}$99999999999999999999999${salt}${hash}"),
                PasswordError::Iterations(u64::MAX),
            ),
            (
                format!("{ALGORITHM}$100000$!!${hash}"),
                PasswordError::Malformed("the salt is not base64"),
            ),
            (
                format!("{ALGORITHM}$100000$AAAA${hash}"),
                PasswordError::Malformed("the salt must be 8 to 64 bytes"),
            ),
            (
                format!("{ALGORITHM}$100000${salt}${salt}"),
                PasswordError::Malformed("the hash must be 32 bytes"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(StoredPassword::parse(input).as_ref(), Err(want), "{input}");
        }
    }

    #[test]
    fn constant_time_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
