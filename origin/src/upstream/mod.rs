//! Talking to upstream registries: one [`Upstream`] per cache rule.
//!
//! `client` owns requests (auth, redirects, timeouts, rate limits, health);
//! `auth` owns credentials and the token cache.

mod auth;
mod client;

pub use auth::Credentials;
pub use client::{Timeouts, Upstream, UpstreamError, UpstreamHealth};
