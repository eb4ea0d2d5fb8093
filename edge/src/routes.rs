//! Dispatch: builds the request context, lets the core parse the request
//! (parse, then apply), and hands it to one module per operation.
//!
//! Routes: `/token` (GET, POST), `/healthz`, and everything under `/v2`
//! through [`wharf_core::parse_request`]. Anything else is a `404
//! NAME_UNKNOWN` from the core's parser.

use std::rc::Rc;

use wharf_core::{ApiMethod, ApiRequest, parse_request};
use worker::{Context, Env, Headers, KvStore, Request, Response, ResponseBuilder};

use crate::config::{Config, Region, Source};
use crate::error::Error;
use crate::{blob, forward, manifest, region, token};

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
    let config = Rc::new(Config::parse(&EnvSource(env))?);
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => config.global_host.clone(),
    };
    let continent = req.cf().and_then(|cf| cf.continent());
    let region = region::select(&config, &host, continent.as_deref()).clone();
    let mut ctx = Ctx {
        config,
        env,
        wctx,
        kv: env.kv(KV_BINDING).ok(),
        now_ms: worker::Date::now().as_millis(),
        scheme: url.scheme().to_owned(),
        host,
        region,
        headers: req.headers().clone(),
        method: ApiMethod::Get,
    };
    if path == "/token" {
        return token::handle(&ctx, req, url.query()).await;
    }
    let (api_method, request, ns) = parse_request(&method, &path, url.query())?;
    ctx.method = api_method;
    tracing::debug!(kind = request.kind(), region = %ctx.region.name, "request");
    match request {
        ApiRequest::Base => token::base(&ctx),
        ApiRequest::Manifest { name, reference } => {
            manifest::get(&ctx, &name, &reference, ns.as_deref()).await
        }
        ApiRequest::Blob { name, digest } => blob::get(&ctx, &name, &digest, ns.as_deref()).await,
        ApiRequest::TagsList { ref name, .. } | ApiRequest::Referrers { ref name, .. } => {
            forward::get(&ctx, name, &request, ns.as_deref()).await
        }
    }
}
