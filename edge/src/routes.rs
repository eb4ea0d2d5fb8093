//! Dispatch: builds the request context, lets the core parse the request
//! (parse, then apply), and hands it to one module per operation.
//!
//! Routes: `/token` (GET, POST), `/healthz`, and everything under `/v2`
//! through [`wharf_core::parse_request`]. Anything else is a `404
//! NAME_UNKNOWN` from the core's parser.

use wharf_core::headers::X_WHARF_REGION;
use wharf_core::{ApiMethod, ApiRequest, parse_request};
use worker::{Context, Env, Request, Response};

use crate::config::{Config, Region};
use crate::ctx::{Ctx, EnvSource, KV_BINDING};
use crate::error::Error;
use crate::http::response;
use crate::{blob, forward, health, manifest, region, token};

/// Answers one request.
pub async fn handle(req: Request, env: &Env, wctx: &Context) -> Result<Response, Error> {
    let url = req.url()?;
    let path = url.path().to_owned();
    let method = req.method().to_string();
    if path == "/healthz" {
        return Ok(response(
            200,
            &[("Content-Type", "text/plain")],
            b"ok\n".to_vec(),
        ));
    }
    let config = Config::cached(&EnvSource(env))?;
    if path == "/token" {
        let ctx = Ctx::new(&req, &url, config, env, wctx, ApiMethod::Get);
        return token::handle(&ctx, req, url.query()).await;
    }
    let (api_method, request, ns) = parse_request(&method, &path, url.query())?;
    let ctx = Ctx::new(&req, &url, config.clone(), env, wctx, api_method);
    if matches!(request, ApiRequest::Base) {
        return token::base(&ctx);
    }

    // Where to serve it: the pinned region, or the nearest routable ones.
    let now_ms = ctx.now_ms;
    let pin = region::pin(&config, &ctx.host);
    let health = health::load(ctx.kv.as_ref(), &config, now_ms).await;
    let order = match pin {
        region::Pin::Regional(i) => vec![i],
        region::Pin::Global => region::candidates(&config, &ctx.at, &health, now_ms),
    };
    let stale = health::stale(&config, &health, &order, now_ms);
    if !stale.is_empty() {
        let (kv, config) = (ctx.kv.clone(), config.clone());
        wctx.wait_until(async move { health::refresh(kv, config, stale, now_ms).await });
    }
    if let region::Pin::Regional(i) = pin
        && !region::routable(&config, &health, i, now_ms)
    {
        return Err(Error::RegionUnavailable {
            region: config.regions[i].name.clone(),
            cause: "its origin is failing its health checks".into(),
            global: config.global_host.clone(),
        });
    }
    let mut last = None;
    for (n, &i) in order.iter().enumerate() {
        let region = &config.regions[i];
        tracing::debug!(kind = request.kind(), region = %region.name, "request");
        match dispatch(&ctx, region, &request, ns.as_deref()).await {
            Err(e @ Error::OriginUnreachable { .. }) => {
                // The origin itself is down: count it, and (global hostname
                // only) let the next region serve this very request.
                health::record(ctx.kv.as_ref(), &config, i, false, now_ms, false).await;
                if let region::Pin::Regional(_) = pin {
                    return Err(Error::RegionUnavailable {
                        region: region.name.clone(),
                        cause: e.to_string(),
                        global: config.global_host.clone(),
                    });
                }
                if n + 1 < order.len() {
                    tracing::warn!(region = %region.name, error = %e, "failing over to the next region");
                }
                last = Some(e);
            }
            Ok(response) => {
                let _ = response.headers().set(X_WHARF_REGION, &region.name);
                return Ok(response);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Runtime("no region to serve the request".into())))
}

/// Applies a parsed request in `region`.
async fn dispatch(
    ctx: &Ctx<'_>,
    region: &Region,
    request: &ApiRequest,
    ns: Option<&str>,
) -> Result<Response, Error> {
    match request {
        ApiRequest::Base => token::base(ctx),
        ApiRequest::Manifest { name, reference } => {
            manifest::get(ctx, region, name, reference, ns).await
        }
        ApiRequest::Blob { name, digest } => blob::get(ctx, region, name, digest, ns).await,
        ApiRequest::TagsList { name, .. } | ApiRequest::Referrers { name, .. } => {
            forward::get(ctx, region, name, request, ns).await
        }
    }
}

/// The cron trigger: probe every region's origins and publish their health.
pub async fn scheduled(env: &Env) {
    let config = match Config::cached(&EnvSource(env)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "scheduled probe skipped: invalid configuration");
            return;
        }
    };
    let kv = env.kv(KV_BINDING).ok();
    health::probe_all(kv.as_ref(), &config, worker::Date::now().as_millis()).await;
}
