//! Dispatch: builds the request context, lets the core parse the request
//! (parse, then apply), and hands it to one module per operation.
//!
//! Routes: `/token` (GET, POST), `/healthz`, and everything under `/v2`
//! through [`wharf_core::parse_request`]. Anything else is a `404
//! NAME_UNKNOWN` from the core's parser.

use wharf_core::region::{self, PlanInput};
use wharf_core::{ApiMethod, ApiRequest, parse_request};
use worker::{Context, Env, Request, Response};

use crate::config::Config;
use crate::ctx::{Ctx, EnvSource, KV_BINDING, Target};
use crate::error::Error;
use crate::failover::Route;
use crate::http::response;
use crate::{blob, forward, health, manifest, token};

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

    // Where to serve it: the core's plan over the hostname, the client's
    // location and the regions' health.
    let health = health::load(ctx.kv.as_ref(), &config, ctx.now_ms).await;
    let plan = region::plan(&PlanInput {
        regions: &config.specs,
        global_host: &config.global_host,
        host: &ctx.host,
        at: &ctx.at,
        health: &health,
        policy: &config.health,
        probe_interval_ms: config.probe_interval.as_millis() as u64,
        now_ms: ctx.now_ms,
    });
    if !plan.probe.is_empty() {
        let (kv, config, probe, now_ms) = (
            ctx.kv.clone(),
            config.clone(),
            plan.probe.clone(),
            ctx.now_ms,
        );
        wctx.wait_until(async move { health::refresh(kv, config, probe, now_ms).await });
    }
    if let Some(i) = plan.refuse {
        return Err(Error::RegionUnavailable {
            region: config.regions[i].name.clone(),
            cause: "its origin is failing its health checks".into(),
            global: config.global_host.clone(),
        });
    }
    // What it names: resolved and authorized once, whichever region serves.
    let Some(name) = request.name() else {
        return token::base(&ctx);
    };
    let resolved = config.rules.resolve(name, ns.as_deref())?;
    resolved.admit(&request)?;
    token::authorize(&ctx, name, &resolved)?;
    let target = Target {
        name: name.clone(),
        resolved,
    };
    let route = Route::of(&ctx, &plan);
    tracing::debug!(kind = request.kind(), regions = ?plan.regions, "request");
    match &request {
        ApiRequest::Base => token::base(&ctx),
        ApiRequest::Manifest { reference, .. } => {
            manifest::get(&ctx, &route, &target, reference).await
        }
        ApiRequest::Blob { digest, .. } => blob::get(&ctx, &route, &target, digest).await,
        ApiRequest::TagsList { .. } | ApiRequest::Referrers { .. } => {
            forward::get(&ctx, &route, &target, &request).await
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
