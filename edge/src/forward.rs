//! `GET /v2/<name>/tags/list` and `/v2/<name>/referrers/<digest>`: small
//! JSON answers the origin computes (and caches); the edge authorises the
//! request and passes the origin's answer on, status and body unchanged.

use wharf_core::ApiRequest;
use wharf_core::headers::X_WHARF_REGION;
use worker::{Method, Response};

use crate::ctx::{Ctx, Target};
use crate::error::Error;
use crate::failover::{Hop, Route};
use crate::http::response;
use crate::origin;

/// Largest body passed on.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Forwards a tags-list or referrers request for the authorized `target`
/// to the origin, along the route.
pub async fn get(
    ctx: &Ctx<'_>,
    route: &Route<'_>,
    target: &Target,
    request: &ApiRequest,
) -> Result<Response, Error> {
    let canonical = &target.resolved.canonical;
    let token = origin::edge_token(
        &ctx.config,
        canonical,
        target.private_rule(),
        ctx.now_secs(),
    );
    let bearer = format!("Bearer {token}");
    let path = request.upstream_path(canonical);
    let method = if ctx.method.is_head() {
        Method::Head
    } else {
        Method::Get
    };
    let accept = ctx
        .header("Accept")
        .unwrap_or_else(|| "application/json".into());
    let read = async |mut r: Response, hop: Hop<'_>| {
        if !(200..300).contains(&r.status_code()) {
            return Err(origin::error_from(r, &hop.region.name).await);
        }
        let mut headers = vec![(X_WHARF_REGION, hop.region.name.clone())];
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
    };
    let (response, _) = route
        .send(
            canonical.as_str(),
            method,
            &path,
            &[("Authorization", &bearer), ("Accept", &accept)],
            ctx.config.origin_timeout,
            read,
        )
        .await?;
    Ok(response)
}
