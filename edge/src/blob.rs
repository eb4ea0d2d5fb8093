//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: always a `307`, never a byte of
//! the blob through the Worker.
//!
//! * In the region's bucket → `307` to a presigned SigV4 URL for the same
//!   method (`GET` or `HEAD`; the method is signed), valid for
//!   `WHARF_PRESIGN_TTL`. Computed here, no subrequest.
//! * Otherwise → `307` to `<origin>/v2/<canonical>/blobs/<digest>?wharf-ticket=…`
//!   with a ticket valid for `WHARF_TICKET_TTL`: the origin streams the blob
//!   while hydrating it, and the ticket stands in for the client's token.
//!
//! A blob is redirected to the bucket only when it is there **and** linked
//! to the requested repository (`links/<repo>/_/blobs/<digest>`, written by
//! the origin once that repository's upstream served or confirmed it; see
//! `wharf_core::access`): bytes stored for one repository are not handed to
//! another by digest. An unlinked blob goes to the origin, which confirms it
//! with the repository's upstream (then links it) or refuses it.
//!
//! Presence and link are learned with presigned `HEAD`s on the bucket (the
//! link first: an unlinked blob, the usual miss, costs one) and remembered by this location for `WHARF_PRESENCE_TTL`
//! (blobs are immutable, appear in the bucket only after verification, and
//! the origin's retention withdraws a blob's links one grace window —
//! longer than `WHARF_PRESENCE_TTL` — before it deletes the bytes), and by
//! this isolate for a
//! minute within that ([`crate::memo`]), so a warm blob request makes no
//! subrequest and reads nothing; absence is not remembered, so a blob is redirected to the
//! bucket as soon as its hydration commits. A store that errors or does not
//! answer in time counts as "absent": the origin can always serve.

use std::time::Duration;

use wharf_core::headers::{DOCKER_CONTENT_DIGEST, X_WHARF_CACHE, X_WHARF_REGION};
use wharf_core::keys::{blob_key, blob_link_key};
use wharf_core::sigv4::{PresignRequest, presign};
use wharf_core::{ApiMethod, Digest, RepositoryName, ticket};
use worker::{Method, Response};

use crate::config::{Region, S3Target};
use crate::ctx::{Ctx, Target};
use crate::error::Error;
use crate::failover::Route;
use crate::http::response;
use crate::origin;
use crate::{memo, store};

/// How long the presence `HEAD` on the bucket may take.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers a blob request for the authorized `target` with a redirect, in
/// the plan's first region (a redirect needs no origin request, so there is
/// nothing to fail over from).
pub async fn get(
    ctx: &Ctx<'_>,
    route: &Route<'_>,
    target: &Target,
    digest: &Digest,
) -> Result<Response, Error> {
    let canonical = &target.resolved.canonical;
    // The replica that owns the digest: concurrent misses from every
    // location meet in its one hydration.
    let hop = route.first(&digest.to_string())?;
    let region = hop.region;
    if let Some(s3) = &region.s3
        && present(ctx, &region.name, s3, canonical, digest).await?
    {
        let url = presigned(
            ctx,
            s3,
            ctx.method,
            digest,
            ctx.config.presign_ttl.as_secs(),
        )?;
        return Ok(redirect(region, &url, digest, "hit"));
    }
    let exp = ctx.now_secs() + ctx.config.ticket_ttl.as_secs();
    let t = ticket::issue(
        &ctx.config.key,
        target.ticket_rule(),
        canonical,
        digest,
        exp,
    );
    let url = ticket::blob_url(hop.origin, canonical, digest, &t);
    Ok(redirect(region, &url, digest, "miss"))
}

fn presigned(
    ctx: &Ctx<'_>,
    s3: &S3Target,
    method: ApiMethod,
    digest: &Digest,
    ttl_secs: u64,
) -> Result<String, Error> {
    presign_key(ctx, s3, method, &blob_key(digest), ttl_secs)
}

fn presign_key(
    ctx: &Ctx<'_>,
    s3: &S3Target,
    method: ApiMethod,
    key: &str,
    ttl_secs: u64,
) -> Result<String, Error> {
    Ok(presign(&PresignRequest {
        method,
        endpoint: &s3.endpoint,
        addressing: s3.addressing,
        bucket: &s3.bucket,
        key,
        region: &s3.region,
        credentials: &s3.credentials,
        now_unix_secs: ctx.now_secs(),
        expires_in_secs: ttl_secs,
    })?)
}

/// Whether `digest` is in the region's bucket and linked to `name`: this
/// isolate's memory, else this location's, else presigned `HEAD`s.
async fn present(
    ctx: &Ctx<'_>,
    region: &str,
    s3: &S3Target,
    name: &RepositoryName,
    digest: &Digest,
) -> Result<bool, Error> {
    let now = ctx.now_ms;
    let until = now + ctx.config.presence_ttl.as_millis() as u64;
    if memo::blob_present(region, name, digest, now) {
        return Ok(true);
    }
    if store::blob_known_present(region, name, digest).await {
        memo::remember_blob_present(region, name, digest, now, until);
        return Ok(true);
    }
    // The link first: a blob this repository never got (the usual miss) costs
    // one subrequest, not two.
    let link = presign_key(ctx, s3, ApiMethod::Head, &blob_link_key(name, digest), 60)?;
    if !head(region, &link, digest).await {
        return Ok(false);
    }
    let blob = presign_key(ctx, s3, ApiMethod::Head, &blob_key(digest), 60)?;
    let blob = head(region, &blob, digest).await;
    if blob {
        store::remember_blob_present(region, name, digest, ctx.config.presence_ttl.as_secs()).await;
        memo::remember_blob_present(region, name, digest, now, until);
    }
    Ok(blob)
}

/// One presigned `HEAD` on the region's bucket: true on 200.
async fn head(region: &str, url: &str, digest: &Digest) -> bool {
    match origin::send(region, Method::Head, url, &[], PRESENCE_TIMEOUT).await {
        Ok(r) if r.status_code() == 200 => true,
        Ok(r) if r.status_code() == 404 => false,
        Ok(r) => {
            // 403: wrong credentials or clock skew — the operator must know,
            // the client is still served through the origin.
            tracing::warn!(%digest, region, status = r.status_code(), "HEAD on the bucket failed; redirecting to the origin");
            false
        }
        Err(e) => {
            tracing::warn!(%digest, region, error = %e, "bucket unreachable; redirecting to the origin");
            false
        }
    }
}

fn redirect(region: &Region, location: &str, digest: &Digest, cache: &str) -> Response {
    // No console line per redirect: the platform logs every request, the
    // response says hit or miss (`X-Wharf-Cache`), and a line costs more CPU
    // than the redirect itself (measured: bench item 7).
    tracing::debug!(%digest, cache, region = %region.name, "blob redirect");
    let digest = digest.to_string();
    response(
        307,
        &[
            ("Location", location),
            (DOCKER_CONTENT_DIGEST, digest.as_str()),
            ("Cache-Control", "no-store"),
            (X_WHARF_CACHE, cache),
            (X_WHARF_REGION, region.name.as_str()),
        ],
        Vec::new(),
    )
}
