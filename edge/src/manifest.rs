//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.
//!
//! * By digest: immutable. Served from the location's cache or KV, keyed per
//!   canonical repository (a digest the origin served for one repository is
//!   no answer for another); on a miss fetched from the region's origin
//!   (which serves it only to a repository linked to it), checked against
//!   the digest, cached "forever" (a year) in both tiers.
//! * By tag: the core's [`FreshnessPolicy`] on the time the *upstream* last
//!   confirmed the tag: the origin reports its confirmation's age
//!   (`X-Wharf-Tag-Age-Ms`) and is told the rule's ttl
//!   (`X-Wharf-Max-Tag-Age-Ms`) so it asks the upstream when its record is
//!   older; freshness does not compound (`wharf_core::freshness`).
//!   `Fresh` → served, no origin request. `Revalidate` while still within
//!   stale-if-error → served at once (`X-Wharf-Cache: stale`) while a
//!   revalidation (`HEAD` at the origin, `GET` only if the tag moved: the
//!   core's [`revalidate::decide`]) runs in `wait_until`; so a stale tag is
//!   served whether or not the origin is up.
//!   Beyond stale-if-error → fetched synchronously, and an unreachable origin
//!   is an error.
//! * Entries are also remembered by this isolate for a minute
//!   ([`crate::memo`], keyed like the tiers), so a warm request reads no
//!   tier; a tag is answered from there only while fresh.
//! * Bytes are kept exact and accepted by the core's
//!   [`accept_manifest`](wharf_core::media::accept_manifest), as at the origin:
//!   `Docker-Content-Digest` is the digest of what is served, verified in the
//!   algorithm of the requested (or origin-claimed) digest, else sha256.
//!   The client's `Accept` is forwarded on a miss; a cached manifest whose
//!   media type the client does not accept is fetched again (and not stored
//!   under the tag, which keeps what other clients negotiated).

use std::rc::Rc;

use wharf_core::freshness::{
    Freshness, FreshnessPolicy, OnUpstreamError, confirmed_at_ms, parse_ms,
};
use wharf_core::headers::{
    DOCKER_CONTENT_DIGEST, X_WHARF_CACHE, X_WHARF_MAX_TAG_AGE_MS, X_WHARF_REGION,
    X_WHARF_TAG_AGE_MS,
};
use wharf_core::media::{
    Accepted, ManifestError, MediaType, accept_manifest, accepts, check_manifest_size,
};
use wharf_core::region::Plan;
use wharf_core::revalidate::{self, HeadResult, Revalidation as Decision};
use wharf_core::{Digest, Reference, RepositoryName, Tag};
use worker::{KvStore, Method, Response};

use crate::config::{Config, Region};
use crate::ctx::{Ctx, Target};
use crate::error::Error;
use crate::failover::{Hop, Route};
use crate::http::response;
use crate::store::{self, Entry, Key, Tier};
use crate::{memo, origin};

/// How long a pull report to the origin may take.
const PULL_REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long digest-addressed manifests stay in the tiers.
const IMMUTABLE_SECS: u64 = 365 * 24 * 3600;
/// What the edge accepts when it revalidates on its own (no client Accept):
/// every type, as the origin asks its upstream.
const ALL_MANIFEST_TYPES: &str = wharf_core::media::MANIFEST_ACCEPT;

/// Answers a manifest request for the authorized `target`.
pub async fn get(
    ctx: &Ctx<'_>,
    route: &Route<'_>,
    target: &Target,
    reference: &Reference,
) -> Result<Response, Error> {
    // `Headers.get` joins repeated headers with `, ` (workerd's `getAll` only
    // serves Set-Cookie and throws for anything else).
    let accept = ctx.header("Accept");
    let accept: Vec<&str> = accept.as_deref().into_iter().collect();
    let kv = ctx.kv.as_ref();
    let canonical = &target.resolved.canonical;
    match reference {
        Reference::Digest(digest) => {
            let key = Key::Digest(canonical, digest);
            let path = key.path();
            if let Some(entry) = memo::manifest(&path, ctx.now_ms) {
                return serve_cached(ctx, route, target, &entry, "hit");
            }
            if let Some((entry, tier)) = store::get(kv, &key).await {
                if tier == Tier::Global {
                    keep_here(&key, &entry, IMMUTABLE_SECS, ctx.now_ms).await;
                } else {
                    memo::remember_manifest(&path, &entry, ctx.now_ms);
                }
                return serve_cached(ctx, route, target, &entry, "hit");
            }
            let (entry, hop) = fetch(ctx, route, target, reference, &accept).await?;
            store_digest(ctx, canonical, &entry).await;
            Ok(serve(ctx, hop.region, &entry, "miss"))
        }
        Reference::Tag(tag) => get_tag(ctx, route, target, tag, reference, &accept).await,
    }
}

async fn get_tag(
    ctx: &Ctx<'_>,
    route: &Route<'_>,
    target: &Target,
    tag: &Tag,
    reference: &Reference,
    accept: &[&str],
) -> Result<Response, Error> {
    let kv = ctx.kv.as_ref();
    let policy = target.resolved.freshness;
    let keep_secs = keep_secs(&policy);
    let canonical = &target.resolved.canonical;
    let key = Key::Tag(canonical, tag);
    let path = key.path();
    let now = ctx.now_ms;
    // This isolate's copy answers only while fresh: the memo never stretches
    // the rule's freshness.
    if let Some(entry) = memo::manifest(&path, now)
        && accepts(accept, &MediaType::parse(&entry.media_type))
        && matches!(policy.classify(entry.fetched_at_ms, now), Freshness::Fresh)
    {
        return serve_cached(ctx, route, target, &entry, "hit");
    }
    let cached = store::get(kv, &key).await;
    if let Some((entry, tier)) = &cached
        && accepts(accept, &MediaType::parse(&entry.media_type))
    {
        let first = route.first(canonical.as_str())?;
        match policy.classify(entry.fetched_at_ms, now) {
            Freshness::Fresh => {
                if *tier == Tier::Global {
                    keep_here(&key, entry, keep_secs, now).await;
                } else {
                    memo::remember_manifest(&path, entry, now);
                }
                return serve_cached(ctx, route, target, entry, "hit");
            }
            Freshness::Revalidate
                if policy.on_upstream_error(entry.fetched_at_ms, now)
                    == OnUpstreamError::ServeStale =>
            {
                let job = Revalidation {
                    config: ctx.config.clone(),
                    region: first.index,
                    kv: ctx.kv.clone(),
                    canonical: canonical.clone(),
                    private_rule: target.private_rule().map(str::to_owned),
                    tag: tag.clone(),
                    cached: entry.clone(),
                    now_ms: now,
                    policy,
                };
                ctx.wctx.wait_until(async move { job.run().await });
                // The revalidation's `HEAD` reaches the origin: that is the
                // pull report.
                return Ok(serve(ctx, first.region, entry, "stale"));
            }
            Freshness::Revalidate => {} // too old to serve even on error: fetch now
        }
    }
    let (entry, hop) = fetch(ctx, route, target, reference, accept).await?;
    store_digest(ctx, canonical, &entry).await;
    // A client that does not accept the cached media type (an old client and
    // an index) got its own negotiation: keep the tag entry for the others.
    let negotiated_down = cached
        .as_ref()
        .is_some_and(|(c, _)| !accepts(accept, &MediaType::parse(&c.media_type)));
    if !negotiated_down {
        keep_here(&key, &entry, keep_secs, now).await;
        defer_global(ctx, &key, &entry, keep_secs);
    }
    Ok(serve(ctx, hop.region, &entry, "miss"))
}

/// Caches a manifest by digest: this location now, KV after the response
/// (a KV write is a remote call; the client should not wait for it).
async fn store_digest(ctx: &Ctx<'_>, canonical: &RepositoryName, entry: &Entry) {
    let key = Key::Digest(canonical, &entry.digest);
    keep_here(&key, entry, IMMUTABLE_SECS, ctx.now_ms).await;
    defer_global(ctx, &key, entry, IMMUTABLE_SECS);
}

/// Keeps `entry` at this location: the Cache API for `keep_secs`, and this
/// isolate's memory ([`memo`]).
async fn keep_here(key: &Key<'_>, entry: &Entry, keep_secs: u64, now_ms: u64) {
    store::put_location(key, entry, keep_secs).await;
    memo::remember_manifest(&key.path(), entry, now_ms);
}

fn defer_global(ctx: &Ctx<'_>, key: &Key<'_>, entry: &Entry, keep_secs: u64) {
    let (kv, path, entry) = (ctx.kv.clone(), key.path(), entry.clone());
    ctx.wctx
        .wait_until(async move { store::put_global(kv.as_ref(), &path, &entry, keep_secs).await });
}

/// Serves `entry` from this edge's caches, and tells the region's origin
/// (in the background, at most once per image per isolate per
/// [`memo::PULL_REPORT_TTL_MS`]) that the image was pulled: its retention
/// counts pulls the origin never saw. The report is a `HEAD` by digest,
/// which the origin records like any manifest it serves.
fn serve_cached(
    ctx: &Ctx<'_>,
    route: &Route<'_>,
    target: &Target,
    entry: &Entry,
    cache: &str,
) -> Result<Response, Error> {
    let canonical = &target.resolved.canonical;
    let hop = route.first(canonical.as_str())?;
    if memo::should_report_pull(&hop.region.name, canonical, &entry.digest, ctx.now_ms) {
        let url = format!("{}/v2/{canonical}/manifests/{}", hop.origin, entry.digest);
        let token = origin::edge_token(
            &ctx.config,
            canonical,
            target.private_rule(),
            ctx.now_ms / 1000,
        );
        let region = hop.region.name.clone();
        ctx.wctx.wait_until(async move {
            let bearer = format!("Bearer {token}");
            let sent = origin::send(
                &region,
                Method::Head,
                &url,
                &[("Authorization", bearer.as_str())],
                PULL_REPORT_TIMEOUT,
            )
            .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "pull report not delivered; the origin may evict the image early");
            }
        });
    }
    Ok(serve(ctx, hop.region, entry, cache))
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
    // As for blobs: no console line per answer (a stale answer is an event).
    if cache == "stale" {
        tracing::info!(digest = %digest, cache, region = %region.name, "manifest");
    } else {
        tracing::debug!(digest = %digest, cache, region = %region.name, "manifest");
    }
    let body = if ctx.method.is_head() {
        Vec::new()
    } else {
        entry.body.clone()
    };
    response(200, &headers, body)
}

/// `GET <origin>/v2/<canonical>/manifests/<reference>` along the route,
/// checked; the manifest and the hop that served it.
async fn fetch<'a>(
    ctx: &Ctx<'_>,
    route: &Route<'a>,
    target: &Target,
    reference: &Reference,
    accept: &[&str],
) -> Result<(Entry, Hop<'a>), Error> {
    let accept = if accept.is_empty() {
        ALL_MANIFEST_TYPES.to_owned()
    } else {
        accept.join(", ")
    };
    let want = Want {
        canonical: &target.resolved.canonical,
        private_rule: target.private_rule(),
        reference,
        accept: &accept,
        policy: &target.resolved.freshness,
    };
    fetch_from(route, &want, ctx.now_ms).await
}

/// What a manifest fetch asks the origin for.
struct Want<'a> {
    canonical: &'a RepositoryName,
    private_rule: Option<&'a str>,
    reference: &'a Reference,
    accept: &'a str,
    /// The rule's freshness: the origin is told its ttl.
    policy: &'a FreshnessPolicy,
}

/// The origin's age of its tag confirmation, counted back from `now_ms`:
/// when the upstream last confirmed the tag (`now_ms` if not reported).
fn confirmed_at(r: &Response, now_ms: u64) -> u64 {
    let age = r
        .headers()
        .get(X_WHARF_TAG_AGE_MS)
        .ok()
        .flatten()
        .and_then(|v| parse_ms(&v));
    confirmed_at_ms(now_ms, age)
}

async fn fetch_from<'a>(
    route: &Route<'a>,
    want: &Want<'_>,
    now_ms: u64,
) -> Result<(Entry, Hop<'a>), Error> {
    let Want {
        canonical,
        reference,
        ..
    } = *want;
    let config = route.config;
    let path = format!("/v2/{canonical}/manifests/{reference}");
    let token = origin::edge_token(config, canonical, want.private_rule, now_ms / 1000);
    let bearer = format!("Bearer {token}");
    let max_age = want.policy.ttl_ms().to_string();
    let read = async |mut r: Response, hop: Hop<'a>| -> Result<Entry, Error> {
        if r.status_code() != 200 {
            return Err(origin::error_from(r, &hop.region.name).await);
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
            region: hop.region.name.clone(),
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
        Ok(Entry {
            body,
            digest,
            media_type: media_type.as_str().to_owned(),
            fetched_at_ms: confirmed_at(&r, now_ms),
        })
    };
    route
        .send(
            &format!("{canonical}:{reference}"),
            Method::Get,
            &path,
            &[
                ("Accept", want.accept),
                ("Authorization", &bearer),
                (X_WHARF_MAX_TAG_AGE_MS, &max_age),
            ],
            config.origin_timeout,
            read,
        )
        .await
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
    /// The region the stale copy was served for (index into `Config::regions`).
    region: usize,
    kv: Option<KvStore>,
    canonical: RepositoryName,
    private_rule: Option<String>,
    tag: Tag,
    cached: Entry,
    now_ms: u64,
    policy: FreshnessPolicy,
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

    /// `HEAD` at the origin; `GET` only if the digest changed (the core's
    /// decision). Returns whether it moved.
    async fn check(&self) -> Result<bool, Error> {
        // The region that served the stale copy, its replicas in turn; not
        // another region, and a failure is not recorded in its health.
        let plan = Plan {
            regions: vec![self.region],
            failover: true,
            refuse: None,
            probe: Vec::new(),
        };
        let route = Route {
            config: &self.config,
            plan: &plan,
            kv: self.kv.as_ref(),
            record: false,
            now_ms: self.now_ms,
        };
        let path = format!("/v2/{}/manifests/{}", self.canonical, self.tag);
        let token = origin::edge_token(
            &self.config,
            &self.canonical,
            self.private_rule.as_deref(),
            self.now_ms / 1000,
        );
        let bearer = format!("Bearer {token}");
        let accept = self.cached.media_type.clone();
        let max_age = self.policy.ttl_ms().to_string();
        // The answer to the HEAD, as the core's decision and, when the tag
        // is still there, when the upstream confirmed it.
        let head = async |r: Response, hop: Hop<'_>| {
            let current = r
                .headers()
                .get(DOCKER_CONTENT_DIGEST)
                .ok()
                .flatten()
                .and_then(|d| Digest::parse(&d).ok());
            let head = HeadResult::from_status(r.status_code(), current.as_ref());
            match revalidate::decide(
                &self.policy,
                &self.cached.digest,
                self.cached.fetched_at_ms,
                self.now_ms,
                head,
            ) {
                Decision::Confirmed => Ok(Some(confirmed_at(&r, self.now_ms))),
                Decision::Fetch => Ok(None),
                // The stale copy was served already; it stays until its
                // stale-if-error ends (a gone tag included: the client that
                // asks once it expired gets the origin's answer).
                Decision::Gone | Decision::ServeStale | Decision::Fail => {
                    Err(origin::error_from(r, &hop.region.name).await)
                }
            }
        };
        let (confirmed, _) = route
            .send(
                &format!("{}:{}", self.canonical, self.tag),
                Method::Head,
                &path,
                &[
                    ("Accept", ALL_MANIFEST_TYPES),
                    ("Authorization", &bearer),
                    (X_WHARF_MAX_TAG_AGE_MS, &max_age),
                ],
                self.config.origin_timeout,
                head,
            )
            .await?;
        let kv = self.kv.as_ref();
        let key = Key::Tag(&self.canonical, &self.tag);
        let entry = match confirmed {
            Some(at) => Entry {
                fetched_at_ms: at,
                ..self.cached.clone()
            },
            None => {
                let reference = Reference::Tag(self.tag.clone());
                let want = Want {
                    canonical: &self.canonical,
                    private_rule: self.private_rule.as_deref(),
                    reference: &reference,
                    accept: &format!("{accept}, {ALL_MANIFEST_TYPES}"),
                    policy: &self.policy,
                };
                let (entry, _) = fetch_from(&route, &want, self.now_ms).await?;
                let key = Key::Digest(&self.canonical, &entry.digest);
                keep_here(&key, &entry, IMMUTABLE_SECS, self.now_ms).await;
                store::put_global(kv, &key.path(), &entry, IMMUTABLE_SECS).await;
                entry
            }
        };
        let moved = entry.digest != self.cached.digest;
        let keep_secs = keep_secs(&self.policy);
        keep_here(&key, &entry, keep_secs, self.now_ms).await;
        store::put_global(kv, &key.path(), &entry, keep_secs).await;
        Ok(moved)
    }
}

/// How long a tag entry is kept in the tiers: ttl + stale-if-error.
fn keep_secs(policy: &FreshnessPolicy) -> u64 {
    policy.stale_until_ms(0) / 1000
}
