//! `GET`/`HEAD /v2/<name>/blobs/<digest>`.
//!
//! A stored blob streams from the object store with `Range` support; a
//! missing one joins (or starts) its hydration and streams from the spool
//! as the bytes arrive. `HEAD` never starts a hydration: it answers from the
//! store, an in-flight download, or an upstream `HEAD`.
//!
//! Either way a digest is served for the requested repository only when the
//! repository is linked to it or its upstream confirms it
//! (`wharf_core::access`): bytes held for one repository are not readable
//! through another by knowing their digest.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use futures::TryStreamExt;
use reqwest::Method;
use wharf_core::headers::DOCKER_CONTENT_DIGEST;
use wharf_core::range::{ByteRange, RangeOutcome, parse_range};
use wharf_core::{Digest, RepositoryName};

use crate::cluster;
use crate::error::{Error, Result};
use crate::hydrate::{BlobSource, spool_stream};
use crate::links;
use crate::metrics;
use crate::state::{AppState, Target};
use crate::store;

/// Answers a blob request. `target` is the name resolved once for the
/// whole request, passed down to the blob service as it is.
pub async fn get(
    state: &AppState,
    head: bool,
    name: &RepositoryName,
    digest: Digest,
    target: Target,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response> {
    let linked = || {
        state
            .links
            .has(links::Kind::Blob, &target.canonical, &digest)
    };
    if head {
        let linked = linked().await;
        return head_blob(state, &target, name, digest, linked).await;
    }
    // The one store lookup of this request; what it found is passed down
    // (the leader of a miss re-checks its memory of recent commits, not the
    // store: see `hydrate::leader`).
    let stored = state.blobs.lookup(&digest).await;
    // Another replica of this region may own the miss (and checks the link
    // itself): look the link up only when this replica serves.
    if stored.is_none()
        && let Some(response) = cluster::forward_miss(state, &digest, uri, headers).await
    {
        return Ok(response);
    }
    let linked = linked().await;
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match open(
        state,
        &target,
        name,
        &digest,
        linked,
        stored,
        range_header.as_deref(),
    )
    .await?
    {
        Opened::Stored { meta, range, body } => {
            metrics::request("blob", "hit");
            let stream =
                body.inspect_ok(|chunk| metrics::served_bytes("store", chunk.len() as u64));
            let mut response = Response::new(Body::from_stream(stream));
            set_length(&mut response, range, Some(meta.len));
            blob_headers(response.headers_mut(), &digest);
            Ok(response)
        }
        // `open` answers a stored blob as `Opened::Stored`.
        Opened::Other(BlobSource::Store(_)) => Err(Error::Lost("stored blob not opened")),
        Opened::Other(BlobSource::Hydrating {
            hydration,
            progress,
            leader,
        }) => {
            metrics::request("blob", if leader { "miss" } else { "coalesced" });
            let total = progress.total;
            // Without an announced length a range cannot be checked: serve
            // the whole blob.
            let range = match total {
                Some(total) => requested_range(range_header.as_deref(), total)?,
                None => None,
            };
            let (start, end) = match range {
                Some(r) => (r.start, Some(r.end_inclusive + 1)),
                None => (0, total),
            };
            let stream = spool_stream(hydration, start, end)
                .inspect_ok(|chunk| metrics::served_bytes("upstream", chunk.len() as u64));
            let mut response = Response::new(Body::from_stream(stream));
            set_length(&mut response, range, total);
            blob_headers(response.headers_mut(), &digest);
            Ok(response)
        }
        // The whole blob, whatever the `Range` (RFC 9110 lets a server
        // ignore it): its bytes are verified as one stream.
        Opened::Other(BlobSource::PassThrough { total, body }) => {
            metrics::request("blob", "passthrough");
            let stream =
                body.inspect_ok(|chunk| metrics::served_bytes("upstream", chunk.len() as u64));
            let mut response = Response::new(Body::from_stream(stream));
            set_length(&mut response, None, total);
            blob_headers(response.headers_mut(), &digest);
            Ok(response)
        }
    }
}

/// What [`open`] found: a stored blob already opened for reading, or a
/// download to follow.
enum Opened {
    Stored {
        meta: store::ObjectMeta,
        range: Option<ByteRange>,
        body: store::BodyStream,
    },
    Other(BlobSource),
}

/// Opens the blob: from the store, else its hydration or a pass-through.
/// An object that vanished between the lookup and the read (a retention
/// pass deleted it; so did an operator) is a miss, fetched again — never
/// a `404` for a blob the upstream has.
async fn open(
    state: &AppState,
    target: &Target,
    name: &RepositoryName,
    digest: &Digest,
    linked: bool,
    mut stored: Option<store::ObjectMeta>,
    range_header: Option<&str>,
) -> Result<Opened> {
    for attempt in 0..2 {
        let source = state
            .blobs
            .open(target.blob_request(digest.clone(), linked), stored.take())
            .await?;
        let BlobSource::Store(meta) = source else {
            return Ok(Opened::Other(source));
        };
        let range = requested_range(range_header, meta.len)?;
        let key = store::blob_key(digest);
        match state
            .store
            .get_stream(&key, range.map(|r| (r.start, r.end_inclusive)))
            .await?
        {
            Some((_, body)) => return Ok(Opened::Stored { meta, range, body }),
            None if attempt == 0 => {
                tracing::info!(%digest, "blob left the store since it was looked up; fetching it again");
                state.blobs.forget_committed(digest);
            }
            None => break,
        }
    }
    Err(Error::BlobUnknown {
        name: name.to_string(),
        digest: digest.clone(),
        registry: target.upstream.registry().to_owned(),
    })
}

async fn head_blob(
    state: &AppState,
    target: &Target,
    name: &RepositoryName,
    digest: Digest,
    linked: bool,
) -> Result<Response> {
    let registry = target.upstream.registry().to_owned();
    // Unlinked: what is held does not count; the upstream `HEAD` below
    // decides (and links on 200).
    let held = match linked {
        true => state.store.head(&store::blob_key(&digest)).await,
        false => Ok(None),
    };
    let len = match held {
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
            .filter(|_| linked)
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
                if !response.status().is_success() {
                    return Err(Error::BlobUnknown {
                        name: name.to_string(),
                        digest,
                        registry,
                    });
                }
                state.links.record(
                    links::Kind::Blob,
                    &target.canonical,
                    &digest,
                    target.replicate,
                );
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

/// The part of a `total`-byte blob a `Range` header asks for (`None`: all).
fn requested_range(header: Option<&str>, total: u64) -> Result<Option<ByteRange>> {
    let Some(h) = header else { return Ok(None) };
    match parse_range(h, total).map_err(|e| Error::RangeInvalid(e.to_string()))? {
        RangeOutcome::Full => Ok(None),
        RangeOutcome::Partial(r) => Ok(Some(r)),
        RangeOutcome::Unsatisfiable => Err(Error::RangeNotSatisfiable {
            range: h.to_owned(),
            len: total,
        }),
    }
}

/// `206` with `Content-Length`/`Content-Range` for a range of a `total`-byte
/// blob, else `Content-Length: total` when it is known.
fn set_length(response: &mut Response, range: Option<ByteRange>, total: Option<u64>) {
    match (range, total) {
        (Some(r), Some(total)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len()));
            if let Ok(v) = HeaderValue::from_str(&r.content_range(total)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        (_, Some(total)) => {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        }
        (_, None) => {}
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert(DOCKER_CONTENT_DIGEST, v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert(header::ETAG, etag);
        }
    }
}
