//! `GET /v2/<name>/tags/list` and `/v2/<name>/referrers/<digest>`: small
//! JSON answers the origin computes (and caches); the edge authorises the
//! request and passes the origin's answer on, status and body unchanged.

use wharf_core::{ApiRequest, RepositoryName};
use worker::{Method, Response};

use crate::config::Region;
use crate::ctx::Ctx;
use crate::error::Error;
use crate::http::response;
use crate::origin;
use crate::token::authorize;

/// Largest body passed on.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Forwards a tags-list or referrers request to the region's origin.
pub async fn get(
    ctx: &Ctx<'_>,
    region: &Region,
    name: &RepositoryName,
    request: &ApiRequest,
    ns: Option<&str>,
) -> Result<Response, Error> {
    let resolved = ctx.config.rules.resolve(name, ns)?;
    authorize(ctx, name, &resolved)?;
    let private = ctx
        .config
        .rule(resolved.rule)
        .private
        .then_some(resolved.prefix.as_str());
    let token = origin::edge_token(&ctx.config, &resolved.canonical, private, ctx.now_secs());
    let bearer = format!("Bearer {token}");
    let path = request.upstream_path(&resolved.canonical);
    let method = if ctx.method.is_head() {
        Method::Head
    } else {
        Method::Get
    };
    let accept = ctx
        .header("Accept")
        .unwrap_or_else(|| "application/json".into());
    let mut r = origin::send_to_region(
        region,
        resolved.canonical.as_str(),
        method,
        &path,
        &[("Authorization", &bearer), ("Accept", &accept)],
        ctx.config.origin_timeout,
    )
    .await?;
    if !(200..300).contains(&r.status_code()) {
        return Err(origin::error_from(r, &region.name).await);
    }
    let mut headers = Vec::new();
    for h in ["Content-Type", "Link", "OCI-Filters-Applied"] {
        if let Some(v) = r.headers().get(h).ok().flatten() {
            headers.push((h, v));
        }
    }
    let body = if ctx.method.is_head() {
        Vec::new()
    } else {
        r.bytes().await?
    };
    if body.len() > MAX_BODY {
        return Err(Error::Origin {
            status: 502,
            code: wharf_core::ErrorCode::Unavailable,
            message: format!("the origin's answer is larger than {MAX_BODY} bytes"),
        });
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(response(r.status_code(), &headers, body))
}
