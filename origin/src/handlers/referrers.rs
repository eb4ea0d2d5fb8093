//! `GET /v2/<name>/referrers/<digest>` (see [`crate::referrers`]).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use wharf_core::Digest;
use wharf_core::headers::OCI_FILTERS_APPLIED;
use wharf_core::referrers::OCI_INDEX;

use crate::error::Result;
use crate::metrics;
use crate::referrers;
use crate::state::Target;

/// Answers a referrers request.
pub async fn get(
    head: bool,
    target: &Target,
    digest: &Digest,
    artifact_type: Option<String>,
) -> Result<Response> {
    let found = referrers::fetch(target, digest, artifact_type.as_deref()).await?;
    metrics::request("referrers", "miss");
    let len = found.body.len();
    let mut out = Response::new(if head {
        Body::empty()
    } else {
        Body::from(found.body)
    });
    *out.status_mut() = StatusCode::OK;
    let h = out.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(v) = found
        .filters_applied
        .and_then(|t| HeaderValue::from_str(&t).ok())
    {
        h.insert(OCI_FILTERS_APPLIED, v);
    }
    Ok(out)
}
