//! The request context: what every handler needs to know about one request
//! and the deployment, resolved once when the request arrives.
//!
//! * [`Ctx`] — immutable for the whole request: configuration, bindings,
//!   the time, how the client reached the edge (scheme, host, location) and
//!   its headers. Handlers borrow it; nothing in it changes while the edge
//!   tries one region or replica after another: what changes per try is
//!   passed beside it (a [`Region`](crate::config::Region) or an attempt of
//!   the region plan).
//! * [`Target`] — the repository a request names, resolved by the rules and
//!   authorized once, before the first region is tried.
//! * [`EnvSource`] — the Worker's `env` as a configuration source.
//!
//! This module depends on nothing else of the edge's request path, so every
//! handler can depend on it without a cycle.

use std::rc::Rc;

use wharf_core::region::Location;
use wharf_core::ticket::TicketRule;
use wharf_core::{ApiMethod, RepositoryName, Resolved};
use worker::{Context, Env, Headers, KvStore, Request, Url};

use crate::config::{Config, Source};

/// The KV namespace binding.
pub const KV_BINDING: &str = "WHARF_KV";

/// Everything a handler needs about the request and the deployment.
pub struct Ctx<'a> {
    /// The validated configuration.
    pub config: Rc<Config>,
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
    /// Where the client is (the test override, else Cloudflare's `cf`).
    pub at: Location,
    /// The request's headers.
    pub headers: Headers,
    /// `GET` or `HEAD` (API routes; `GET` for `/token`).
    pub method: ApiMethod,
}

impl<'a> Ctx<'a> {
    /// The context of `req` (whose URL is `url`).
    pub fn new(
        req: &Request,
        url: &Url,
        config: Rc<Config>,
        env: &Env,
        wctx: &'a Context,
        method: ApiMethod,
    ) -> Self {
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
        let at = location(
            override_value.as_deref(),
            cf.as_ref().and_then(|c| c.continent()),
            cf.as_ref().and_then(|c| c.country()),
            cf.as_ref().and_then(|c| c.coordinates()),
        );
        Ctx {
            config,
            wctx,
            kv: env.kv(KV_BINDING).ok(),
            now_ms: worker::Date::now().as_millis(),
            scheme: url.scheme().to_owned(),
            host,
            at,
            headers: req.headers().clone(),
            method,
        }
    }

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

/// The repository of an API request, resolved and authorized (once per
/// request: it does not depend on the region that serves it).
#[derive(Debug, Clone)]
pub struct Target {
    /// The name as the client spelled it.
    pub name: RepositoryName,
    /// What the rules made of it (canonical name, rule, prefix, options).
    pub resolved: Resolved,
}

impl Target {
    /// The rule's prefix when the rule is private (for the edge's token).
    pub fn private_rule(&self) -> Option<&str> {
        self.resolved
            .private
            .then_some(self.resolved.prefix.as_str())
    }

    /// The rule, as a ticket names it.
    pub fn ticket_rule(&self) -> TicketRule<'_> {
        TicketRule {
            prefix: &self.resolved.prefix,
            private: self.resolved.private,
        }
    }
}

/// The client's location: the test override when the configuration allows
/// it and the request carries it, else Cloudflare's `cf` fields.
pub fn location(
    override_value: Option<&str>,
    continent: Option<String>,
    country: Option<String>,
    coords: Option<(f32, f32)>,
) -> Location {
    if let Some(loc) = override_value.and_then(Location::parse) {
        return loc;
    }
    Location {
        continent,
        country,
        coords: coords.map(|(a, b)| (f64::from(a), f64::from(b))),
    }
}

/// Reads vars and secrets from the Worker's `env`.
pub struct EnvSource<'a>(pub &'a Env);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_override_wins_only_when_parsable() {
        let l = location(Some("AS/JP"), Some("EU".into()), None, Some((50.0, 8.0)));
        assert_eq!(l.continent.as_deref(), Some("AS"));
        assert_eq!(l.country.as_deref(), Some("JP"));
        let l = location(Some("garbage!"), Some("EU".into()), None, Some((50.0, 8.0)));
        assert_eq!(l.continent.as_deref(), Some("EU"));
        assert_eq!(l.coords, Some((50.0, 8.0)));
    }
}
