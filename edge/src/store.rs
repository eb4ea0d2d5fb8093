//! The edge's two cache tiers.
//!
//! * **Cache API** (per location, no subrequest): manifests by digest, tag
//!   entries, and "this blob is in region R's bucket, linked to this
//!   repository" markers. Entries live
//!   under a synthetic origin ([`CACHE_ORIGIN`]) that no client can request,
//!   keyed with the object-store key layout of `wharf_core::keys`.
//! * **KV** (global, eventually consistent): manifests by digest and tag
//!   entries, so a location that never saw a manifest still avoids the origin.
//!
//! Manifests by digest are keyed per repository (the core's link key,
//! `links/<repo>/_/manifests/<digest>`), like everything else here: an entry
//! exists because the origin served that digest for that repository, and is
//! never an answer for another one (`wharf_core::access`).
//!
//! A tag entry holds the manifest bytes *and* its digest, media type and fetch
//! time, so one lookup answers a tag pull. Freshness is decided by the core's
//! policy from `fetched_at_ms`; the tiers' own expiry only bounds how long an
//! entry may be served at all (TTL + stale-if-error).

use serde::{Deserialize, Serialize};
use wharf_core::keys::{blob_link_key, manifest_link_key, tag_key};
use wharf_core::{Digest, RepositoryName, Tag};
use worker::{Cache, KvStore};

use crate::http::response;

/// The synthetic origin of the edge's Cache API keys.
pub const CACHE_ORIGIN: &str = "https://wharf-edge.cache.invalid";

/// A cached manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The exact bytes.
    pub body: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
    /// `Content-Type` to serve.
    pub media_type: String,
    /// Tags: when the upstream last confirmed it, unix milliseconds (the
    /// origin's reported age counted back; `wharf_core::freshness`).
    pub fetched_at_ms: u64,
}

/// Which tier answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// This location's Cache API.
    Location,
    /// KV.
    Global,
}

/// What is cached: a manifest by digest or a tag.
#[derive(Clone, Debug)]
pub enum Key<'a> {
    /// Immutable: `canonical name`, digest.
    Digest(&'a RepositoryName, &'a Digest),
    /// Mutable: `canonical name`, tag.
    Tag(&'a RepositoryName, &'a Tag),
}

impl Key<'_> {
    /// The object-store-style key: KV key and Cache API path.
    pub fn path(&self) -> String {
        match self {
            Key::Digest(name, d) => manifest_link_key(name, d),
            Key::Tag(name, tag) => tag_key(name, tag),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Meta {
    digest: String,
    media_type: String,
    fetched_at_ms: u64,
}

const H_DIGEST: &str = wharf_core::headers::X_WHARF_DIGEST;
const H_FETCHED: &str = wharf_core::headers::X_WHARF_FETCHED_AT;

/// Looks `key` up in this location's cache, then KV.
pub async fn get(kv: Option<&KvStore>, key: &Key<'_>) -> Option<(Entry, Tier)> {
    let url = format!("{CACHE_ORIGIN}/{}", key.path());
    if let Ok(Some(mut r)) = Cache::default().get(url.as_str(), false).await {
        let h = r.headers();
        let digest = h
            .get(H_DIGEST)
            .ok()
            .flatten()
            .and_then(|d| Digest::parse(&d).ok());
        let fetched = h.get(H_FETCHED).ok().flatten().and_then(|t| t.parse().ok());
        let media_type = h.get("Content-Type").ok().flatten();
        if let (Some(digest), Some(fetched_at_ms), Some(media_type)) = (digest, fetched, media_type)
            && let Ok(body) = r.bytes().await
        {
            return Some((
                Entry {
                    body,
                    digest,
                    media_type,
                    fetched_at_ms,
                },
                Tier::Location,
            ));
        }
    }
    let kv = kv?;
    match kv.get(&key.path()).bytes_with_metadata::<Meta>().await {
        Ok((Some(body), Some(meta))) => {
            let digest = Digest::parse(&meta.digest).ok()?;
            Some((
                Entry {
                    body,
                    digest,
                    media_type: meta.media_type,
                    fetched_at_ms: meta.fetched_at_ms,
                },
                Tier::Global,
            ))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(key = %key.path(), error = %e, "KV read failed; treating as a miss");
            None
        }
    }
}

/// Stores `entry` under `key` in this location's cache for `keep_secs`.
pub async fn put_location(key: &Key<'_>, entry: &Entry, keep_secs: u64) {
    let url = format!("{CACHE_ORIGIN}/{}", key.path());
    let cache_control = format!("public, max-age={}", keep_secs.max(1));
    let fetched = entry.fetched_at_ms.to_string();
    let r = response(
        200,
        &[
            ("Content-Type", entry.media_type.as_str()),
            (H_DIGEST, &entry.digest.to_string()),
            (H_FETCHED, &fetched),
            ("Cache-Control", &cache_control),
        ],
        entry.body.clone(),
    );
    if let Err(e) = Cache::default().put(url.as_str(), r).await {
        tracing::warn!(key = %key.path(), error = %e, "Cache API write failed");
    }
}

/// Stores `entry` under `path` ([`Key::path`]) in KV for `keep_secs` (KV's
/// minimum is 60 s).
pub async fn put_global(kv: Option<&KvStore>, path: &str, entry: &Entry, keep_secs: u64) {
    let Some(kv) = kv else { return };
    let meta = Meta {
        digest: entry.digest.to_string(),
        media_type: entry.media_type.clone(),
        fetched_at_ms: entry.fetched_at_ms,
    };
    let put = kv
        .put_bytes(path, &entry.body)
        .and_then(|b| b.metadata(meta));
    let result = match put {
        Ok(b) => b.expiration_ttl(keep_secs.max(60)).execute().await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        // KV allows one write per key per second; a lost revalidation write
        // only means another revalidation later.
        tracing::warn!(key = %path, error = %e, "KV write failed");
    }
}

fn presence_url(region: &str, name: &RepositoryName, digest: &Digest) -> String {
    format!(
        "{CACHE_ORIGIN}/presence/{region}/{}",
        blob_link_key(name, digest)
    )
}

/// True if this location remembers that `digest` is in `region`'s bucket
/// and linked to `name`.
pub async fn blob_known_present(region: &str, name: &RepositoryName, digest: &Digest) -> bool {
    matches!(
        Cache::default()
            .get(presence_url(region, name, digest).as_str(), false)
            .await,
        Ok(Some(_))
    )
}

/// Remembers for `keep_secs` that `digest` is in `region`'s bucket and
/// linked to `name`.
pub async fn remember_blob_present(
    region: &str,
    name: &RepositoryName,
    digest: &Digest,
    keep_secs: u64,
) {
    let cache_control = format!("public, max-age={}", keep_secs.max(1));
    let r = response(200, &[("Cache-Control", &cache_control)], b"1".to_vec());
    if let Err(e) = Cache::default()
        .put(presence_url(region, name, digest).as_str(), r)
        .await
    {
        tracing::warn!(%digest, error = %e, "Cache API write failed");
    }
}
