//! Secrets that must never be used: the placeholder values shipped in
//! `infra/` and `.dev.vars.example` (and the development values earlier
//! versions shipped there).
//!
//! Owns [`PLACEHOLDERS`], the one list, and [`is_placeholder`]. The origin
//! refuses to start (exit status 2) and the edge refuses its configuration
//! when the token key, a store key or any other secret is one of them: a
//! deployment that kept an example value is open to anyone who read the
//! repository. A test in the origin reads the shipped files and checks that
//! every secret value in them is listed here, so the list cannot fall behind.
//!
//! Key decision: exact matches plus one pattern (anything containing
//! `replace-me` or `changeme`, any case), so an operator who edits the
//! example's text a little (`REPLACE-ME-2`) is still caught, while real
//! random secrets never are.

/// Every placeholder secret value shipped now or before.
pub const PLACEHOLDERS: &[&str] = &[
    // infra/k8s/origin.yaml (Secret wharf-origin)
    "REPLACE-ME",
    "REPLACE-ME-WITH-32-OR-MORE-RANDOM-BYTES",
    // .dev.vars.example today
    "replace-me-with-32-or-more-random-bytes",
    "replace-me-read-only-access-key",
    "replace-me-read-only-secret-key",
    "replace-me-with-the-output-of-wharf-origin-hash-password",
    // .dev.vars.example before random development secrets (scripts/dev.sh
    // copied it to .dev.vars, so old checkouts still have these)
    "dev-only-token-key-0123456789abcdef0123456789",
    "wharfdev",
    "wharfdev-secret-key-0123456789",
];

/// True if `value` is a shipped placeholder (or looks like one).
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    if PLACEHOLDERS.contains(&v) {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    lower.contains("replace-me") || lower.contains("replace_me") || lower.contains("changeme")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        for p in PLACEHOLDERS {
            assert!(is_placeholder(p), "{p}");
        }
        for v in [
            " REPLACE-ME ",
            "replace-me-2",
            "ChangeMe123",
            "REPLACE_ME_TOO",
        ] {
            assert!(is_placeholder(v), "{v}");
        }
        for v in [
            "9f8b3c1d2e4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a",
            "wharfdev2",
            "GK1234567890abcdef",
            "",
        ] {
            assert!(!is_placeholder(v), "{v}");
        }
    }
}
