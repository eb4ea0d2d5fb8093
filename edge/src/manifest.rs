//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.
//!
//! * By digest: immutable. Served from the location's cache or KV, keyed per
//!   canonical repository (a digest the origin served for one repository is
//!   no answer for another); on a miss fetched from the region's origin
//!   (which serves it only to a repository linked to it), checked against
//!   the digest, cached "forever" (a year) in both tiers.
//! * By tag: the core's [`FreshnessPolicy`] on the entry's fetch time.
//!   `Fresh` → served, no origin request. `Revalidate` while still within
//!   stale-if-error → served at once (`X-Wharf-Cache: stale`) while a
//!   revalidation (`HEAD` at the origin, `GET` only if the tag moved) runs in
//!   `wait_until`; so a stale tag is served whether or not the origin is up.
//!   Beyond stale-if-error → fetched synchronously, and an unreachable origin
//!   is an error.
//! * Bytes are kept exact and accepted by the core's
//!   [`accept_manifest`](wharf_core::media::accept_manifest), as at the origin:
//!   `Docker-Content-Digest` is the digest of what is served, verified in the
//!   algorithm of the requested (or origin-claimed) digest, else sha256.
//!   The client's `Accept` is forwarded on a miss; a cached manifest whose
//!   media type the client does not accept is fetched again (and not stored
//!   under the tag, which keeps what other clients negotiated).

use std::rc::Rc;

use wharf_core::freshness::{Freshness, OnUpstreamError};
use wharf_core::headers::{DOCKER_CONTENT_DIGEST, X_WHARF_CACHE, X_WHARF_REGION};
use wharf_core::media::{
    Accepted, ManifestError, MediaType, accept_manifest, accepts, check_manifest_size,
};
use wharf_core::{Digest, Reference, RepositoryName, Resolved, Tag};
use worker::{KvStore, Method, Response};

use crate::config::{Config, Region};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::http::response;
use crate::origin;
use crate::store::{self, Entry, Key, Tier};
use crate::token::authorize;

/// How long digest-addressed manifests stay in the tiers.
const IMMUTABLE_SECS: u64 = 365 * 24 * 3600;
/// What the edge accepts when it revalidates on its own (no client Accept).
const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Answers a manifest request.
pub async fn get(
    ctx: &Ctx<'_>,
    region: &Region,
    name: &RepositoryName,
    reference: &Reference,
    ns: Option<&str>,
) -> Result<Response, Error> {
    let resolved = ctx.config.rules.resolve(name, ns)?;
    authorize(ctx, name, &resolved)?;
    // `Headers.get` joins repeated headers with `, ` (workerd's `getAll` only
    // serves Set-Cookie and throws for anything else).
    let accept = ctx.header("Accept");
    let accept: Vec<&str> = accept.as_deref().into_iter().collect();
    let kv = ctx.kv.as_ref();
    match reference {
        Reference::Digest(digest) => {
            let key = Key::Digest(&resolved.canonical, digest);
            if let Some((entry, tier)) = store::get(kv, &key).await {
                if tier == Tier::Global {
                    store::put_location(&key, &entry, IMMUTABLE_SECS).await;
                }
                return Ok(serve(ctx, region, &entry, "hit"));
            }
            let entry = fetch(ctx, region, &resolved, reference, &accept).await?;
            store_digest(ctx, &resolved.canonical, &entry).await;
            Ok(serve(ctx, region, &entry, "miss"))
        }
        Reference::Tag(tag) => get_tag(ctx, region, &resolved, tag, reference, &accept).await,
    }
}

async fn get_tag(
    ctx: &Ctx<'_>,
    region: &Region,
    resolved: &Resolved,
    tag: &Tag,
    reference: &Reference,
    accept: &[&str],
) -> Result<Response, Error> {
    let kv = ctx.kv.as_ref();
    let policy = ctx.config.rule(resolved.rule).freshness;
    let keep_secs = policy.stale_until_ms(0) / 1000;
    let key = Key::Tag(&resolved.canonical, tag);
    let cached = store::get(kv, &key).await;
    if let Some((entry, tier)) = &cached
        && accepts(accept, &MediaType::parse(&entry.media_type))
    {
        let now = ctx.now_ms;
        match policy.classify(entry.fetched_at_ms, now) {
            Freshness::Fresh => {
                if *tier == Tier::Global {
                    store::put_location(&key, entry, keep_secs).await;
                }
                return Ok(serve(ctx, region, entry, "hit"));
            }
            Freshness::Revalidate
                if policy.on_upstream_error(entry.fetched_at_ms, now)
                    == OnUpstreamError::ServeStale =>
            {
                let job = Revalidation {
                    config: ctx.config.clone(),
                    region: region.clone(),
                    kv: ctx.kv.clone(),
                    canonical: resolved.canonical.clone(),
                    private_rule: private_rule(ctx, resolved),
                    tag: tag.clone(),
                    cached: entry.clone(),
                    now_ms: now,
                    keep_secs,
                };
                ctx.wctx.wait_until(async move { job.run().await });
                return Ok(serve(ctx, region, entry, "stale"));
            }
            Freshness::Revalidate => {} // too old to serve even on error: fetch now
        }
    }
    let entry = fetch(ctx, region, resolved, reference, accept).await?;
    store_digest(ctx, &resolved.canonical, &entry).await;
    // A client that does not accept the cached media type (an old client and
    // an index) got its own negotiation: keep the tag entry for the others.
    let negotiated_down = cached
        .as_ref()
        .is_some_and(|(c, _)| !accepts(accept, &MediaType::parse(&c.media_type)));
    if !negotiated_down {
        store::put_location(&key, &entry, keep_secs).await;
        defer_global(ctx, &key, &entry, keep_secs);
    }
    Ok(serve(ctx, region, &entry, "miss"))
}

fn private_rule(ctx: &Ctx<'_>, resolved: &Resolved) -> Option<String> {
    ctx.config
        .rule(resolved.rule)
        .private
        .then(|| resolved.prefix.clone())
}

/// Caches a manifest by digest: this location now, KV after the response
/// (a KV write is a remote call; the client should not wait for it).
async fn store_digest(ctx: &Ctx<'_>, canonical: &RepositoryName, entry: &Entry) {
    let key = Key::Digest(canonical, &entry.digest);
    store::put_location(&key, entry, IMMUTABLE_SECS).await;
    defer_global(ctx, &key, entry, IMMUTABLE_SECS);
}

fn defer_global(ctx: &Ctx<'_>, key: &Key<'_>, entry: &Entry, keep_secs: u64) {
    let (kv, path, entry) = (ctx.kv.clone(), key.path(), entry.clone());
    ctx.wctx
        .wait_until(async move { store::put_global(kv.as_ref(), &path, &entry, keep_secs).await });
}

fn serve(ctx: &Ctx<'_>, region: &Region, entry: &Entry, cache: &str) -> Response {
    let digest = entry.digest.to_string();
    let len = entry.body.len().to_string();
    let etag = format!("\"{digest}\"");
    let headers = [
        ("Content-Type", entry.media_type.as_str()),
        (DOCKER_CONTENT_DIGEST, digest.as_str()),
        ("Content-Length", len.as_str()),
        ("ETag", etag.as_str()),
        (X_WHARF_CACHE, cache),
        (X_WHARF_REGION, region.name.as_str()),
    ];
    tracing::info!(digest = %digest, cache, region = %region.name, "manifest");
    let body = if ctx.method.is_head() {
        Vec::new()
    } else {
        entry.body.clone()
    };
    response(200, &headers, body)
}

/// `GET <origin>/v2/<canonical>/manifests/<reference>`, checked.
async fn fetch(
    ctx: &Ctx<'_>,
    region: &Region,
    resolved: &Resolved,
    reference: &Reference,
    accept: &[&str],
) -> Result<Entry, Error> {
    let accept = if accept.is_empty() {
        ALL_MANIFEST_TYPES.to_owned()
    } else {
        accept.join(", ")
    };
    fetch_from(
        &ctx.config,
        region,
        &resolved.canonical,
        private_rule(ctx, resolved).as_deref(),
        reference,
        &accept,
        ctx.now_ms,
    )
    .await
}

async fn fetch_from(
    config: &Config,
    region: &Region,
    canonical: &RepositoryName,
    private_rule: Option<&str>,
    reference: &Reference,
    accept: &str,
    now_ms: u64,
) -> Result<Entry, Error> {
    let path = format!("/v2/{canonical}/manifests/{reference}");
    let token = origin::edge_token(config, canonical, private_rule, now_ms / 1000);
    let bearer = format!("Bearer {token}");
    let mut r = origin::send_to_region(
        region,
        &format!("{canonical}:{reference}"),
        Method::Get,
        &path,
        &[("Accept", accept), ("Authorization", &bearer)],
        config.origin_timeout,
    )
    .await?;
    if r.status_code() != 200 {
        return Err(origin::error_from(r, &region.name).await);
    }
    let declared_len = r
        .headers()
        .get("Content-Length")
        .ok()
        .flatten()
        .and_then(|l| l.parse::<u64>().ok());
    if let Some(len) = declared_len {
        check_manifest_size(len).map_err(manifest_error)?;
    }
    let body = r.bytes().await.map_err(|e| Error::OriginUnreachable {
        region: region.name.clone(),
        cause: format!("reading the manifest body: {e}"),
    })?;
    let header = |name: &str| r.headers().get(name).ok().flatten();
    let claimed = header(DOCKER_CONTENT_DIGEST).and_then(|d| Digest::parse(&d).ok());
    let content_type = header("Content-Type");
    let Accepted { digest, media_type } = accept_manifest(
        &body,
        content_type.as_deref(),
        reference.as_digest(),
        claimed.as_ref(),
    )
    .map_err(manifest_error)?;
    let media_type = media_type.as_str().to_owned();
    Ok(Entry {
        body,
        digest,
        media_type,
        fetched_at_ms: now_ms,
    })
}

/// The core's refusal as the edge's error (and OCI code).
fn manifest_error(e: ManifestError) -> Error {
    match e {
        ManifestError::TooLarge { size } => Error::ManifestTooLarge(size),
        ManifestError::DigestMismatch { expected, .. } => {
            Error::DigestMismatch { digest: expected }
        }
    }
}

/// A background revalidation of a stale tag.
struct Revalidation {
    config: Rc<Config>,
    region: Region,
    kv: Option<KvStore>,
    canonical: RepositoryName,
    private_rule: Option<String>,
    tag: Tag,
    cached: Entry,
    now_ms: u64,
    keep_secs: u64,
}

impl Revalidation {
    async fn run(self) {
        match self.check().await {
            Ok(moved) => {
                tracing::info!(name = %self.canonical, tag = %self.tag, moved, "tag revalidated")
            }
            Err(e) => {
                tracing::warn!(name = %self.canonical, tag = %self.tag, error = %e, "tag revalidation failed; the stale copy stays")
            }
        }
    }

    /// `HEAD` at the origin; `GET` only if the digest changed. Returns whether it moved.
    async fn check(&self) -> Result<bool, Error> {
        let path = format!("/v2/{}/manifests/{}", self.canonical, self.tag);
        let token = origin::edge_token(
            &self.config,
            &self.canonical,
            self.private_rule.as_deref(),
            self.now_ms / 1000,
        );
        let bearer = format!("Bearer {token}");
        let accept = self.cached.media_type.clone();
        let r = origin::send_to_region(
            &self.region,
            &format!("{}:{}", self.canonical, self.tag),
            Method::Head,
            &path,
            &[("Accept", ALL_MANIFEST_TYPES), ("Authorization", &bearer)],
            self.config.origin_timeout,
        )
        .await?;
        if r.status_code() != 200 {
            return Err(origin::error_from(r, &self.region.name).await);
        }
        let current = r
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .ok()
            .flatten()
            .and_then(|d| Digest::parse(&d).ok());
        let kv = self.kv.as_ref();
        let key = Key::Tag(&self.canonical, &self.tag);
        let entry = if current.as_ref() == Some(&self.cached.digest) {
            Entry {
                fetched_at_ms: self.now_ms,
                ..self.cached.clone()
            }
        } else {
            let reference = Reference::Tag(self.tag.clone());
            let entry = fetch_from(
                &self.config,
                &self.region,
                &self.canonical,
                self.private_rule.as_deref(),
                &reference,
                &format!("{accept}, {ALL_MANIFEST_TYPES}"),
                self.now_ms,
            )
            .await?;
            let key = Key::Digest(&self.canonical, &entry.digest);
            store::put_location(&key, &entry, IMMUTABLE_SECS).await;
            store::put_global(kv, &key.path(), &entry, IMMUTABLE_SECS).await;
            entry
        };
        let moved = entry.digest != self.cached.digest;
        store::put_location(&key, &entry, self.keep_secs).await;
        store::put_global(kv, &key.path(), &entry, self.keep_secs).await;
        Ok(moved)
    }
}
