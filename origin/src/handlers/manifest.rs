//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.
//!
//! Bodies are served byte-exact as stored, so the digest of what the client
//! receives equals `Docker-Content-Digest`. A client whose `Accept` header
//! excludes the manifest's media type gets `MANIFEST_UNKNOWN` naming the type
//! (as Distribution does for OCI indexes), never a body it cannot parse.
//!
//! By tag, the request's `X-Wharf-Max-Tag-Age-Ms` (the edge's ttl) shortens
//! the rule's freshness, and the answer's `X-Wharf-Tag-Age-Ms` says how long
//! ago the upstream confirmed the tag, so that freshness does not compound
//! (`wharf_core::freshness`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use std::time::Duration;

use wharf_core::Reference;
use wharf_core::freshness::parse_ms;
use wharf_core::headers::{
    DOCKER_CONTENT_DIGEST, X_WHARF_CACHE, X_WHARF_MAX_TAG_AGE_MS, X_WHARF_STALE_REASON,
    X_WHARF_TAG_AGE_MS,
};
use wharf_core::media::accepts;

use crate::error::{Error, Result};
use crate::metrics;
use crate::state::{AppState, Target};

/// Answers a manifest request.
pub async fn get(
    state: &AppState,
    head: bool,
    target: &Target,
    reference: &Reference,
    headers: &HeaderMap,
) -> Result<Response> {
    let request = target.manifest_request();
    let (manifest, status) = match reference {
        Reference::Tag(tag) => {
            let max_age = headers
                .get(X_WHARF_MAX_TAG_AGE_MS)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_ms)
                .map(Duration::from_millis);
            state.manifests.by_tag(&request, tag, max_age).await?
        }
        Reference::Digest(digest) => state.manifests.by_digest(&request, digest).await?,
    };
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !accepts(&accept, &manifest.media) {
        return Err(Error::NotAcceptable {
            reference: reference.to_string(),
            media_type: manifest.media_type.clone(),
        });
    }
    metrics::request("manifest", status.as_str());
    state
        .retention
        .pulls
        .record(&target.canonical, &manifest.digest);
    match reference {
        Reference::Tag(tag) => state.prefetch.tag_pulled(target, tag),
        Reference::Digest(digest) => state.prefetch.digest_pulled(target, digest),
    }
    let tag_age_ms = manifest.tag_age_ms();
    let len = manifest.body.len();
    let body = if head {
        Body::empty()
    } else {
        let source = if status == crate::manifests::CacheStatus::Miss {
            "upstream"
        } else {
            "store"
        };
        metrics::served_bytes(source, len as u64);
        Body::from(manifest.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    if let Some(v) = &manifest.content_type {
        h.insert(header::CONTENT_TYPE, v.clone());
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let (Some(digest), Some(etag)) = (&manifest.digest_header, &manifest.etag) {
        h.insert(DOCKER_CONTENT_DIGEST, digest.clone());
        h.insert(header::ETAG, etag.clone());
    }
    h.insert(X_WHARF_CACHE, HeaderValue::from_static(status.as_str()));
    if status == crate::manifests::CacheStatus::Postponed {
        h.insert(
            X_WHARF_STALE_REASON,
            HeaderValue::from_static("ratelimit-budget"),
        );
    }
    if let Some(age) = tag_age_ms {
        h.insert(X_WHARF_TAG_AGE_MS, HeaderValue::from(age));
    }
    Ok(response)
}
