//! Dispatch: builds the request context, lets the core parse the request
//! (parse, then apply), and hands it to one module per operation.
//!
//! Routes: `/token` (GET, POST), `/healthz`, and everything under `/v2`
//! through [`wharf_core::parse_request`]. Anything else is a `404
//! NAME_UNKNOWN` from the core's parser.

use std::rc::Rc;

use wharf_core::headers::X_WHARF_REGION;
use wharf_core::{ApiMethod, ApiRequest, parse_request};
use worker::{Context, Env, Headers, KvStore, Request, Response, ResponseBuilder};

use crate::config::{Config, Region, Source};
use crate::error::Error;
use crate::{blob, forward, health, manifest, region, token};

/// The KV namespace binding.
pub const KV_BINDING: &str = "WHARF_KV";

/// Everything a handler needs about the request and the deployment.
pub struct Ctx<'a> {
    /// The validated configuration.
    pub config: Rc<Config>,
    /// The Worker's bindings.
    pub env: &'a Env,
    /// For `wait_until`.
    pub wctx: &'a Context,
    /// KV, when bound.
    pub kv: Option<KvStore>,
    /// Request time, unix milliseconds.
    pub now_ms: u64,
    /// `http` or `https`, as the client used.
    pub scheme: String,
    /// `host[:port]` as the client used.
    pub host: String,
    /// The region serving this request.
    pub region: Region,
    /// The request's headers.
    pub headers: Headers,
    /// `GET` or `HEAD` (API routes).
    pub method: ApiMethod,
}

impl Ctx<'_> {
    /// Request time in unix seconds.
    pub fn now_secs(&self) -> u64 {
        self.now_ms / 1000
    }

    /// `<scheme>://<host the client used>/token`.
    pub fn realm(&self) -> String {
        format!("{}://{}/token", self.scheme, self.host)
    }

    /// A request header, if present and readable.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).ok().flatten()
    }
}

/// Reads vars and secrets from the Worker's `env`.
struct EnvSource<'a>(&'a Env);

impl Source for EnvSource<'_> {
    fn text(&self, name: &str) -> Option<String> {
        let v = worker::js_sys::Reflect::get(self.0, &name.into()).ok()?;
        v.as_string()
    }

    fn json(&self, name: &str) -> Option<String> {
        let v = worker::js_sys::Reflect::get(self.0, &name.into()).ok()?;
        if v.is_undefined() || v.is_null() {
            return None;
        }
        if let Some(s) = v.as_string() {
            return Some(s);
        }
        // A TOML table/array in `[vars]` arrives as a JS object.
        let value: serde_json::Value = serde_wasm_bindgen::from_value(v).ok()?;
        Some(value.to_string())
    }
}

/// Builds a response that cannot fail: status, headers, body.
pub fn response(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let h = Headers::new();
    for (k, v) in headers {
        let _ = h.set(k, v);
    }
    let builder = ResponseBuilder::new().with_status(status).with_headers(h);
    if body.is_empty() {
        builder.empty()
    } else {
        builder.fixed(body)
    }
}

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
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => config.global_host.clone(),
    };
    let cf = req.cf();
    let override_value = config
        .test_location_header
        .as_deref()
        .and_then(|h| req.headers().get(h).ok().flatten());
    let at = region::location(
        override_value.as_deref(),
        cf.as_ref().and_then(|c| c.continent()),
        cf.as_ref().and_then(|c| c.country()),
        cf.as_ref().and_then(|c| c.coordinates()),
    );
    let now_ms = worker::Date::now().as_millis();
    let kv = env.kv(KV_BINDING).ok();
    let pin = region::pin(&config, &host);
    let mut ctx = Ctx {
        config: config.clone(),
        env,
        wctx,
        kv,
        now_ms,
        scheme: url.scheme().to_owned(),
        host,
        region: config.regions[0].clone(),
        headers: req.headers().clone(),
        method: ApiMethod::Get,
    };
    if path == "/token" {
        return token::handle(&ctx, req, url.query()).await;
    }
    let (api_method, request, ns) = parse_request(&method, &path, url.query())?;
    ctx.method = api_method;
    if matches!(request, ApiRequest::Base) {
        return token::base(&ctx);
    }

    // Where to serve it: the pinned region, or the nearest routable ones.
    let health = health::load(ctx.kv.as_ref(), &config, now_ms).await;
    let order = match pin {
        region::Pin::Regional(i) => vec![i],
        region::Pin::Global => region::candidates(&config, &at, &health, now_ms),
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
        ctx.region = config.regions[i].clone();
        tracing::debug!(kind = request.kind(), region = %ctx.region.name, "request");
        match dispatch(&ctx, &request, ns.as_deref()).await {
            Err(e @ Error::OriginUnreachable { .. }) => {
                // The origin itself is down: count it, and (global hostname
                // only) let the next region serve this very request.
                health::record(ctx.kv.as_ref(), &config, i, false, now_ms, false).await;
                if let region::Pin::Regional(_) = pin {
                    return Err(Error::RegionUnavailable {
                        region: ctx.region.name.clone(),
                        cause: e.to_string(),
                        global: config.global_host.clone(),
                    });
                }
                if n + 1 < order.len() {
                    tracing::warn!(region = %ctx.region.name, error = %e, "failing over to the next region");
                }
                last = Some(e);
            }
            Ok(response) => {
                let _ = response.headers().set(X_WHARF_REGION, &ctx.region.name);
                return Ok(response);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Runtime("no region to serve the request".into())))
}

/// Applies a parsed request in the region chosen in `ctx`.
async fn dispatch(
    ctx: &Ctx<'_>,
    request: &ApiRequest,
    ns: Option<&str>,
) -> Result<Response, Error> {
    match request {
        ApiRequest::Base => token::base(ctx),
        ApiRequest::Manifest { name, reference } => manifest::get(ctx, name, reference, ns).await,
        ApiRequest::Blob { name, digest } => blob::get(ctx, name, digest, ns).await,
        ApiRequest::TagsList { name, .. } | ApiRequest::Referrers { name, .. } => {
            forward::get(ctx, name, request, ns).await
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
