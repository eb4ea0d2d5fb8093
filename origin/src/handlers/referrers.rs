//! `GET /v2/<name>/referrers/<digest>`: passed through to the upstream; when
//! the upstream predates the referrers API (404), the distribution-spec
//! fallback tag `sha256-<hex>` is consulted, and an empty index is returned
//! when that does not exist either.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use reqwest::Method;
use wharf_core::Digest;

use crate::error::{Error, Result};
use crate::manifests::read_limited;
use crate::metrics;
use crate::state::Target;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MAX_REFERRERS_BYTES: usize = 4 << 20;

/// Answers a referrers request.
pub async fn get(
    head: bool,
    target: &Target,
    digest: &Digest,
    artifact_type: Option<String>,
) -> Result<Response> {
    let registry = target.upstream.registry().to_owned();
    let upstream_error = |source| Error::Upstream {
        registry: registry.clone(),
        source,
    };
    let mut tail = format!("referrers/{digest}");
    if let Some(t) = &artifact_type {
        tail.push_str(&format!(
            "?artifactType={}",
            wharf_core::urlencode::encode_component(t)
        ));
    }
    let accept = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static(OCI_INDEX),
        );
        h
    };
    let mut response = target.send(Method::GET, &tail, accept.clone()).await?;
    let mut fallback_filter = None;
    let mut filters_applied = response
        .headers()
        .get("oci-filters-applied")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        // Fallback tag schema: the referrers index is stored under a tag.
        let fallback = format!("manifests/{}-{}", digest.algorithm().as_str(), digest.hex());
        response = target.send(Method::GET, &fallback, accept).await?;
        fallback_filter = artifact_type.clone();
        filters_applied = None;
    }
    let mut body = if response.status() == reqwest::StatusCode::NOT_FOUND {
        bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#)
    } else {
        read_limited(response, MAX_REFERRERS_BYTES)
            .await
            .map_err(upstream_error)?
    };
    if let Some(wanted) = fallback_filter
        && let Ok(serde_json::Value::Object(mut index)) =
            serde_json::from_slice::<serde_json::Value>(&body)
    {
        // The fallback tag holds every referrer; apply the filter here, as
        // the referrers API would, and say so.
        if let Some(serde_json::Value::Array(list)) = index.get_mut("manifests") {
            list.retain(|m| {
                m.get("artifactType").and_then(|t| t.as_str()) == Some(wanted.as_str())
            });
        }
        if let Ok(filtered) = serde_json::to_vec(&index) {
            body = bytes::Bytes::from(filtered);
            filters_applied = Some("artifactType".to_owned());
        }
    }
    metrics::request("referrers", "miss");
    let len = body.len();
    let mut out = Response::new(if head {
        Body::empty()
    } else {
        Body::from(body)
    });
    *out.status_mut() = StatusCode::OK;
    let h = out.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(v) = filters_applied.and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert("oci-filters-applied", v);
    }
    Ok(out)
}
