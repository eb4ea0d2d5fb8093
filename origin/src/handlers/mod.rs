//! HTTP handlers: one file per operation.
//!
//! Registry paths carry repository names with slashes, which route tables
//! handle poorly, so every `/v2/…` request goes through [`admit`], a layer
//! that lets the core parse method + path + query into a typed
//! `ApiRequest`, resolves the repository against the cache rules once and
//! checks the token, then to one [`registry`] handler that dispatches to the
//! operation with the resolved [`Target`] ("parse, then apply"). `admit` ends by
//! running the rest within the request kind's limit ([`crate::limits`]).

pub mod admin;
pub mod base;
pub mod blob;
pub mod health;
pub mod manifest;
pub mod referrers;
pub mod status_page;
pub mod tags;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use wharf_core::{ApiMethod, ApiRequest, api::parse_request};

use crate::error::Error;
use crate::limits;
use crate::metrics;
use crate::state::{AppState, Target};

/// A `/v2/` request that [`admit`] let through: parsed, its repository
/// resolved (absent for `/v2/` itself), its token checked.
#[derive(Clone)]
pub struct Admitted {
    /// GET or HEAD.
    pub method: ApiMethod,
    /// The operation.
    pub request: ApiRequest,
    /// `?ns=` as sent.
    pub ns: Option<String>,
    /// The repository's rule, upstream and names.
    pub target: Option<Target>,
}

/// The admission layer of `/v2/…`: parse, resolve, authorize; refusals are
/// answered here, counted by request kind.
pub async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let uri = request.uri();
    let (method, api, ns) = match parse_request(request.method().as_str(), uri.path(), uri.query())
    {
        Ok(parsed) => parsed,
        Err(e) => {
            metrics::request("invalid", "error");
            return Error::from(e).into_response();
        }
    };
    let kind = api.kind();
    let target = match api
        .name()
        .map(|name| state.resolve_for(name, ns.as_deref(), Some(&api)))
    {
        None => None,
        Some(Ok(target)) => Some(target),
        Some(Err(e)) => {
            metrics::request(
                kind,
                if state.auth.is_some() {
                    "denied"
                } else {
                    "error"
                },
            );
            return e.into_response();
        }
    };
    if let Err(e) = authorize(
        &state,
        &api,
        target.as_ref(),
        ns.is_some(),
        uri.query(),
        request.headers(),
    ) {
        metrics::request(kind, "denied");
        return e.into_response();
    }
    let class = limits::Class::of(&api);
    request.extensions_mut().insert(Admitted {
        method,
        request: api,
        ns,
        target,
    });
    state.limits.run(class, request, next).await
}

/// Answers every request under `/v2/` that [`admit`] let through.
pub async fn registry(State(state): State<AppState>, request: Request) -> Response {
    // Taken, not cloned (an extractor would clone its names).
    let (parts, _) = request.into_parts();
    let (uri, headers, mut extensions) = (parts.uri, parts.headers, parts.extensions);
    let Some(Admitted {
        method,
        request,
        ns: _,
        target,
    }) = extensions.remove::<Admitted>()
    else {
        return Error::Denied("request not admitted".into()).into_response();
    };
    let kind = request.kind();
    let head = matches!(method, ApiMethod::Head);
    let result = match (request, target) {
        (ApiRequest::Base, _) => Ok(base::get()),
        (ApiRequest::Manifest { reference, .. }, Some(target)) => {
            manifest::get(&state, head, &target, &reference, &headers).await
        }
        (ApiRequest::Blob { name, digest }, Some(target)) => {
            blob::get(&state, head, &name, digest, target, &headers, &uri).await
        }
        (ApiRequest::TagsList { name, n, last }, Some(target)) => {
            tags::get(&state, head, &target, &name, n, last).await
        }
        (
            ApiRequest::Referrers {
                digest,
                artifact_type,
                ..
            },
            Some(target),
        ) => referrers::get(head, &target, &digest, artifact_type).await,
        // `admit` resolves every request that names a repository.
        (_, None) => Err(Error::Denied(
            "request without a resolved repository".into(),
        )),
    };
    match result {
        Ok(response) => response,
        Err(e) => {
            metrics::request(kind, "error");
            e.into_response()
        }
    }
}

/// Checks the request's token or ticket when the origin has a key (the
/// decision is the core's, shared with the edge).
fn authorize(
    state: &AppState,
    request: &ApiRequest,
    target: Option<&Target>,
    with_ns: bool,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(), Error> {
    let Some(auth) = &state.auth else {
        return Ok(());
    };
    let (Some(name), Some(target)) = (request.name(), target) else {
        return auth.check_base(headers);
    };
    let rule = wharf_core::ticket::TicketRule {
        prefix: &target.prefix,
        private: target.private,
    };
    auth.check(request, name, rule, with_ns, query, headers)
        .map(drop)
}
