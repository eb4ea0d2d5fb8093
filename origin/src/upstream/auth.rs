//! Upstream credentials and the bearer-token cache.
//!
//! The token dance (distribution's token spec): a request without a usable
//! token gets `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`;
//! we fetch a token from the realm for exactly the repository's pull scope
//! (with Basic credentials when the rule has a credential set), cache it until
//! shortly before it expires, and retry once. The last Bearer challenge is
//! remembered per upstream so that a new repository's first request fetches
//! its token up front instead of paying a `401` round trip each time.
//!
//! Credentials are never logged: [`Credentials`]'s `Debug` redacts them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bounded::ByteLru;

/// A username/password pair for one upstream (a rule's credential set).
#[derive(Clone)]
pub struct Credentials {
    /// The user name sent in Basic authentication.
    pub username: String,
    /// The password or access token sent in Basic authentication.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where and for whom tokens are issued, learned from a `Bearer` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerRealm {
    /// Token endpoint URL.
    pub realm: String,
    /// `service` parameter, if the challenge named one.
    pub service: Option<String>,
}

/// How an upstream wants to be authenticated, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Not challenged yet (or anonymous access works).
    Unknown,
    /// Bearer tokens from a realm.
    Bearer(BearerRealm),
    /// Plain Basic authentication on every request.
    Basic,
}

struct CachedToken {
    token: String,
    expires: Instant,
}

/// Memory the tokens of one upstream may take together. A token is a few
/// KiB at most (Docker Hub's are ~1.5 KiB): thousands of scopes fit, and an
/// upstream that hands out huge tokens evicts only its own.
const TOKEN_BUDGET_BYTES: usize = 8 << 20;
/// What one cached token costs beyond its bytes.
const PER_TOKEN_OVERHEAD: usize = 64;

/// Per-upstream authentication state: scheme and tokens by scope.
pub struct TokenCache {
    scheme: Mutex<Scheme>,
    tokens: Mutex<ByteLru<CachedToken>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            scheme: Mutex::new(Scheme::Unknown),
            tokens: Mutex::new(ByteLru::new(TOKEN_BUDGET_BYTES)),
        }
    }
}

impl TokenCache {
    /// The scheme last seen in a challenge.
    pub fn scheme(&self) -> Scheme {
        self.scheme
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Remembers the scheme from a challenge.
    pub fn set_scheme(&self, scheme: Scheme) {
        *self.scheme.lock().unwrap_or_else(|e| e.into_inner()) = scheme;
    }

    /// A cached, unexpired token for `scope`.
    pub fn token(&self, scope: &str, now: Instant) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.expires > now)
            .map(|t| t.token.clone())
    }

    /// Caches a token. It is considered expired a little early (10% of its
    /// lifetime, at least 5 s) so that it never expires in flight.
    pub fn put(&self, scope: &str, token: String, lifetime: Duration, now: Instant) {
        let margin = (lifetime / 10).max(Duration::from_secs(5));
        // `lifetime` is clamped by the caller, but an `Instant` overflow
        // panics: never add an upstream's number to a clock unchecked.
        let Some(expires) = now.checked_add(lifetime.saturating_sub(margin)) else {
            return;
        };
        let weight = token.len() + PER_TOKEN_OVERHEAD;
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.put(scope.to_owned(), CachedToken { token, expires }, weight);
    }

    /// Forgets the token for `scope` (the upstream refused it).
    pub fn forget(&self, scope: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_before_their_lifetime() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.put(
            "repository:a:pull",
            "t".into(),
            Duration::from_secs(60),
            now,
        );
        assert_eq!(cache.token("repository:a:pull", now).as_deref(), Some("t"));
        assert_eq!(
            cache.token("repository:a:pull", now + Duration::from_secs(55)),
            None
        );
        assert_eq!(cache.token("repository:b:pull", now), None);
    }

    #[test]
    fn tokens_are_bounded_in_bytes_however_many_scopes() {
        let cache = TokenCache::default();
        let now = Instant::now();
        let token = "t".repeat(64 << 10);
        for i in 0..1000 {
            let scope = format!("repository:r{i}:pull");
            cache.put(&scope, token.clone(), Duration::from_secs(300), now);
        }
        let tokens = cache.tokens.lock().unwrap();
        assert!(tokens.bytes() <= TOKEN_BUDGET_BYTES, "{}", tokens.bytes());
        assert!(tokens.len() < 1000 && !tokens.is_empty());
        drop(tokens);
        // The newest are kept.
        assert!(cache.token("repository:r999:pull", now).is_some());
        assert!(cache.token("repository:r0:pull", now).is_none());
    }

    #[test]
    fn absurd_lifetimes_do_not_overflow_the_clock() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.put("s", "t".into(), Duration::from_secs(u64::MAX), now);
        cache.put("s", "t".into(), Duration::MAX, now);
        // Not cached (it could not be dated), and no panic.
        assert_eq!(cache.token("s", now), None);
    }

    #[test]
    fn credentials_debug_redacts_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
