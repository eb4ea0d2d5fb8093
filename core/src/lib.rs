//! `wharf-core`: the pure, I/O-free registry-protocol and cache-policy logic shared
//! by the Wharf origin (tokio/axum) and edge (Cloudflare Worker, wasm32).
//!
//! # Layout
//!
//! * [`api`] — parse, then apply: method + path + query → typed [`ApiRequest`].
//! * [`mod@reference`], [`mod@digest`] — repository names, tags, references and digests
//!   (distribution-spec / image-spec grammars), incremental digest verification.
//! * [`media`] — manifest media types, `Accept` negotiation, body sniffing, and
//!   [`media::accept_manifest`], the one decision whether fetched manifest bytes are kept.
//! * [`range`] — `Range` header on blobs.
//! * [`tags`] — tag-list pagination (`n`, `last`, `Link`) over the upstream's whole list.
//! * [`referrers`] — the referrers API's fallback tag and `artifactType` filter.
//! * [`headers`] — names of the registry and Wharf headers both deployables use.
//! * [`error`] — the one OCI error-code table and the one error-body renderer.
//! * [`rules`] — cache rules: downstream prefix → upstream registry, canonical names.
//! * [`freshness`] — when a cached tag is fresh (counted from the upstream's confirmation,
//!   so it does not compound across caches), and when stale may be served.
//! * [`revalidate`] — what to do with a stale tag after a `HEAD` (confirmed, moved, gone, stale, fail).
//! * [`auth`] — the pure parts of the upstream token dance.
//! * [`ratelimit`] — an upstream's advertised rate-limit budget, and when revalidations wait for it.
//! * [`prefetch`] — tag-change prefetch: which tags are hot, when one is revalidated ahead of its clients, which platforms of a moved tag to hydrate.
//! * [`breaker`] — the circuit breaker per upstream (closed, open, half-open probes).
//! * [`egress`] — where a rule's upstream traffic may go: redirects, resolved addresses, token realms.
//! * [`urlencode`] — percent-encoding helpers.
//! * [`sigv4`] — SigV4 query-string presigning of S3 object URLs (the edge's blob redirects).
//! * [`token`] — Wharf's own registry bearer tokens (HS256 JWTs), challenges, `Authorization` parsing.
//! * [`ticket`] — short-lived HMAC tickets that hand a blob miss from the edge to the origin.
//! * [`pull_auth`] — the one ticket-or-token decision for a pull request (edge and origin).
//! * [`access`] — whether a digest may be served through a repository (links, upstream confirmation).
//! * [`keys`] — the object-store key layout (blobs, manifests, tags, repository links).
//! * [`peer`] — the signed header with which one origin replica forwards a request to another.
//! * [`utc`] — UTC calendar formatting of unix timestamps.
//! * [`region`] — the region list, nearest-region ranking, health with hysteresis, rendezvous hashing of replicas.
//! * [`retention`] — what an image is, which images leave the store (keep windows, quota watermarks) and which blobs GC may delete.
//! * [`admin`] — the admin API's documents (warm jobs, purge, GC reports), shared by the origin and the `wharf` command.
//! * [`status`] — a region's figures (hit ratio, bytes and requests saved, budgets, circuits, storage) read from its Prometheus text.
//! * [`password`] — the stored form of users' passwords (PBKDF2-SHA256) and its constant-time check.
//! * [`signin`] — throttling repeated failed sign-ins (exponential backoff per client and user).
//! * [`placeholder`] — the shipped placeholder secrets that must never be used.
//!
//! # Key decision
//!
//! Nothing here does I/O or reads a clock or the environment: time is passed in as
//! unix milliseconds or [`std::time::Duration`] (`SystemTime::now` panics on
//! wasm32), so every decision is a pure function that both deployables apply
//! identically and that table tests pin down. Dependencies are kept to
//! serde/serde_json/sha2/hex/thiserror/hmac/base64/pbkdf2 because this crate ships in the Worker's wasm
//! bundle; grammars and URL handling are hand-written instead of pulling in
//! `regex` or `url`.

#![deny(missing_docs)]

pub mod access;
pub mod admin;
pub mod api;
pub mod auth;
pub mod breaker;
pub mod digest;
pub mod egress;
pub mod error;
pub mod freshness;
pub mod headers;
pub mod keys;
pub mod media;
pub mod password;
pub mod peer;
pub mod placeholder;
pub mod prefetch;
pub mod pull_auth;
pub mod range;
pub mod ratelimit;
pub mod reference;
pub mod referrers;
pub mod region;
pub mod retention;
pub mod revalidate;
pub mod rules;
pub mod signin;
pub mod sigv4;
pub mod status;
pub mod tags;
pub mod ticket;
pub mod token;
pub mod urlencode;
pub mod utc;

pub use api::{ApiError, ApiMethod, ApiRequest, parse_request};
pub use auth::{AuthError, Challenge, TokenResponse};
pub use digest::{Digest, DigestAlgorithm, DigestError, DigestVerifier};
pub use error::{ErrorCode, render_error, render_errors};
pub use freshness::{Freshness, FreshnessPolicy, OnUpstreamError};
pub use media::MediaType;
pub use range::{ByteRange, RangeError, RangeOutcome};
pub use reference::{ImageRef, Reference, ReferenceError, RepositoryName, Tag};
pub use rules::{CacheRules, Resolved, RuleError, RuleSpec};
