//! `GET`/`HEAD /v2/<name>/blobs/<digest>`.
//!
//! A stored blob streams from the object store with `Range` support; a
//! missing one joins (or starts) its hydration and streams from the spool
//! as the bytes arrive. `HEAD` never starts a hydration: it answers from the
//! store, an in-flight download, or an upstream `HEAD`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt;
use reqwest::Method;
use tokio_util::io::ReaderStream;
use wharf_core::range::{RangeOutcome, parse_range};
use wharf_core::{Digest, RepositoryName};

use crate::error::{Error, Result};
use crate::hydrate::{BlobSource, spool_stream};
use crate::metrics;
use crate::state::AppState;
use crate::store;

/// Answers a blob request.
pub async fn get(
    state: &AppState,
    head: bool,
    name: &RepositoryName,
    digest: Digest,
    ns: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response> {
    let target = state.resolve(name, ns)?;
    if head {
        return head_blob(state, &target, name, digest).await;
    }
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match state
        .blobs
        .open(target.blob_request(digest.clone()))
        .await?
    {
        BlobSource::Store(meta) => {
            let range = match &range_header {
                Some(h) => match parse_range(h, meta.len)
                    .map_err(|e| Error::RangeInvalid(e.to_string()))?
                {
                    RangeOutcome::Full => None,
                    RangeOutcome::Partial(r) => Some(r),
                    RangeOutcome::Unsatisfiable => {
                        return Err(Error::RangeNotSatisfiable {
                            range: h.clone(),
                            len: meta.len,
                        });
                    }
                },
                None => None,
            };
            let key = store::blob_key(&digest);
            let (_, body) = state
                .store
                .get(&key, range.map(|r| (r.start, r.end_inclusive)))
                .await?
                .ok_or_else(|| Error::BlobUnknown {
                    name: name.to_string(),
                    digest: digest.clone(),
                    registry: target.upstream.registry().to_owned(),
                })?;
            metrics::request("blob", "hit");
            let stream = ReaderStream::with_capacity(body.into_async_read(), 256 * 1024)
                .inspect_ok(|chunk| metrics::served_bytes("store", chunk.len() as u64));
            let mut response = Response::new(Body::from_stream(stream));
            let h = response.headers_mut();
            match range {
                Some(r) => {
                    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                    let h = response.headers_mut();
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
                    if let Ok(v) = HeaderValue::from_str(&r.content_range(meta.len)) {
                        h.insert(header::CONTENT_RANGE, v);
                    }
                }
                None => {
                    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len));
                }
            }
            blob_headers(response.headers_mut(), &digest);
            Ok(response)
        }
        BlobSource::Hydrating {
            hydration,
            progress,
            leader,
        } => {
            metrics::request("blob", if leader { "miss" } else { "coalesced" });
            let total = progress.total;
            let range = match (&range_header, total) {
                (Some(h), Some(total)) => {
                    match parse_range(h, total).map_err(|e| Error::RangeInvalid(e.to_string()))? {
                        RangeOutcome::Full => None,
                        RangeOutcome::Partial(r) => Some(r),
                        RangeOutcome::Unsatisfiable => {
                            return Err(Error::RangeNotSatisfiable {
                                range: h.clone(),
                                len: total,
                            });
                        }
                    }
                }
                _ => None,
            };
            let (start, end) = match range {
                Some(r) => (r.start, Some(r.end_inclusive + 1)),
                None => (0, total),
            };
            let stream = spool_stream(hydration, start, end)
                .inspect_ok(|chunk| metrics::served_bytes("upstream", chunk.len() as u64));
            let mut response = Response::new(Body::from_stream(stream));
            if let (Some(r), Some(total)) = (range, total) {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = response.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
                if let Ok(v) = HeaderValue::from_str(&r.content_range(total)) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            } else if let Some(total) = total {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            blob_headers(response.headers_mut(), &digest);
            Ok(response)
        }
    }
}

async fn head_blob(
    state: &AppState,
    target: &crate::state::Target,
    name: &RepositoryName,
    digest: Digest,
) -> Result<Response> {
    let registry = target.upstream.registry().to_owned();
    let len = match state.store.head(&store::blob_key(&digest)).await {
        Ok(Some(meta)) => {
            metrics::request("blob", "hit");
            Some(meta.len)
        }
        Ok(None) | Err(_) => None,
    };
    let len = match len {
        Some(len) => len,
        None => match state
            .blobs
            .in_flight(&digest)
            .and_then(|h| h.progress().total)
        {
            Some(total) => {
                metrics::request("blob", "coalesced");
                total
            }
            None => {
                let response = target
                    .send(Method::HEAD, &format!("blobs/{digest}"), Default::default())
                    .await?;
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    return Err(Error::BlobUnknown {
                        name: name.to_string(),
                        digest,
                        registry,
                    });
                }
                metrics::request("blob", "miss");
                // Read the header: a HEAD response's body size hint is 0.
                response
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }
        },
    };
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    blob_headers(response.headers_mut(), &digest);
    Ok(response)
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
}
