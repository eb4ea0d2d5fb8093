//! Talking to upstream registries: one [`Upstream`] per cache rule.
//!
//! `client` owns requests (held to the rule's caps on connections and
//! bandwidth by `caps`) (auth, redirects, timeouts, rate limits, health);
//! `auth` owns credentials and the token cache. Where a rule's traffic may
//! go (redirects, token realms, resolved addresses) is decided by
//! `wharf_core::egress` and enforced in `client`.

mod auth;
mod caps;
mod client;

pub use auth::Credentials;
pub use caps::Caps;
pub use client::{Timeouts, Upstream, UpstreamError, UpstreamHealth, read_limited};
