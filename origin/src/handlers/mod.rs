//! HTTP handlers: one file per operation.
//!
//! Registry paths carry repository names with slashes, which route tables
//! handle poorly, so `/v2/…` goes to one [`registry`] handler that lets the
//! core parse method + path + query into a typed `ApiRequest` and then
//! dispatches to the operation ("parse, then apply").

pub mod base;
pub mod blob;
pub mod health;
pub mod manifest;
pub mod referrers;
pub mod tags;

use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use wharf_core::{ApiMethod, ApiRequest, api::parse_request};

use crate::error::Error;
use crate::metrics;
use crate::state::{AppState, Target};

/// Answers every request under `/v2/`.
pub async fn registry(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let parsed = parse_request(method.as_str(), uri.path(), uri.query());
    let (method, request, ns) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            metrics::request("invalid", "error");
            return Error::from(e).into_response();
        }
    };
    let kind = request.kind();
    let target = match authorize(&state, &request, ns.as_deref(), uri.query(), &headers) {
        Ok(target) => target,
        Err(e) => {
            metrics::request(kind, "denied");
            return e.into_response();
        }
    };
    let head = matches!(method, ApiMethod::Head);
    let result = match request {
        ApiRequest::Base => Ok(base::get()),
        ApiRequest::Manifest { name, reference } => {
            manifest::get(&state, head, &name, &reference, ns.as_deref(), &headers).await
        }
        ApiRequest::Blob { name, digest } => {
            // Resolved by `authorize` when the origin checks tokens.
            match target.map_or_else(|| state.resolve(&name, ns.as_deref()), Ok) {
                Ok(target) => blob::get(&state, head, &name, digest, target, &headers, &uri).await,
                Err(e) => Err(e),
            }
        }
        ApiRequest::TagsList { name, n, last } => {
            tags::get(&state, head, &name, n, last, ns.as_deref()).await
        }
        ApiRequest::Referrers {
            name,
            digest,
            artifact_type,
        } => referrers::get(&state, head, &name, &digest, artifact_type, ns.as_deref()).await,
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
/// decision is the core's, shared with the edge). Returns the name it
/// resolved to do so, for the handler to use rather than resolve again.
fn authorize(
    state: &AppState,
    request: &ApiRequest,
    ns: Option<&str>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<Target>, Error> {
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    let Some(name) = request.name() else {
        return auth.check_base(headers).map(|()| None);
    };
    let target = state.resolve(name, ns)?;
    let rule = wharf_core::ticket::TicketRule {
        prefix: &target.prefix,
        private: target.private,
    };
    auth.check(request, name, rule, ns.is_some(), query, headers)?;
    Ok(Some(target))
}
