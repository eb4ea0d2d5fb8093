//! Wharf's own pull tokens, minted in tests as the edge mints them, for
//! talking to origins that check them (`auth.token_key`).

use std::time::{SystemTime, UNIX_EPOCH};

use wharf_core::token::{Access, Claims, SigningKey, issue};

/// Now, unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The signing key for `secret` (at least 32 bytes, as the edge requires).
pub fn key(secret: &str) -> SigningKey {
    SigningKey::new(secret.as_bytes().to_vec()).expect("test keys are long enough")
}

/// A token for `service` granting `pull` on `names` and the private rules
/// `private_rules` (a signed-in user's, `alice`, when there are any), valid
/// for `ttl_secs` from now.
pub fn pull_token(
    secret: &str,
    service: &str,
    names: &[&str],
    private_rules: &[&str],
    ttl_secs: u64,
) -> String {
    let now = now();
    issue(
        &key(secret),
        &Claims {
            iss: service.into(),
            sub: if private_rules.is_empty() {
                String::new()
            } else {
                "alice".into()
            },
            aud: service.into(),
            exp: now + ttl_secs,
            nbf: now.saturating_sub(60),
            iat: now,
            access: names
                .iter()
                .map(|n| Access {
                    resource_type: "repository".into(),
                    name: (*n).into(),
                    actions: vec!["pull".into()],
                })
                .collect(),
            private_rules: private_rules.iter().map(|r| (*r).to_owned()).collect(),
        },
    )
}
