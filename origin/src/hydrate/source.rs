//! Where a leader's bytes come from: the nearest peer region's store when
//! one has the blob ([`crate::geo`]), else the rule's upstream. Both give a
//! [`Source`] that the leader reads through the same loop, so a
//! cross-region copy is verified exactly like an upstream fetch.

use std::io;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::HeaderMap;
use wharf_core::access::Held;

use super::{BlobRequest, Blobs};
use crate::error::{Error, PeerError};
use crate::links;
use crate::metrics;
use crate::store;
use crate::upstream::UpstreamError;

/// A source's body.
type BodyStream = std::pin::Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Where the bytes come from.
pub(super) enum Via {
    /// The rule's upstream (named by its rule prefix).
    Upstream(String),
    /// A peer region's store (named by its region).
    Peer(String),
}

/// An opened source: its announced length and its body.
pub(super) struct Source {
    pub(super) total: Option<u64>,
    pub(super) body: BodyStream,
    pub(super) from: Via,
}

impl Via {
    /// The error for a body that failed after `at` bytes.
    pub(super) fn body_error(&self, at: u64, e: io::Error) -> Error {
        match self {
            Via::Upstream(registry) => Error::Upstream {
                registry: registry.clone(),
                source: UpstreamError::Body(format!("after {at} bytes: {e}")),
            },
            Via::Peer(region) => Error::Peer {
                region: region.clone(),
                source: PeerError::Body { at, source: e },
            },
        }
    }
}

impl Blobs {
    /// Opens the nearest peer region's copy of the blob, else the
    /// upstream's.
    pub(super) async fn source(&self, request: &BlobRequest) -> Result<Source, Error> {
        let digest = &request.digest;
        let key = store::blob_key(digest);
        let peer = match &self.geo {
            Some(geo) => geo.find(&key, Some(digest)).await,
            None => None,
        };
        let Some((peer, meta)) = peer else {
            return self.upstream_source(request).await;
        };
        // A peer's copy is bytes held for some repository: readable through
        // this one if the peer links it, else after the upstream confirms.
        if !request.linked {
            let link = store::blob_link_key(&request.canonical, digest);
            if let Ok(Some(_)) = peer.store.head(&link).await {
                self.links.record(
                    links::Kind::Blob,
                    &request.canonical,
                    digest,
                    request.replicate,
                );
            } else {
                self.gate(request, Held::Stored).await?;
            }
        }
        match peer.store.get_stream(&key, None).await {
            Ok(Some((_, body))) => Ok(Source {
                total: Some(meta.len),
                body,
                from: Via::Peer(peer.name),
            }),
            found => {
                let source = match found {
                    Err(e) => PeerError::Store(e),
                    Ok(_) => PeerError::Vanished,
                };
                let region = peer.name;
                Err(Error::Peer { region, source })
            }
        }
    }

    /// `GET`s the blob from the rule's upstream.
    async fn upstream_source(&self, request: &BlobRequest) -> Result<Source, Error> {
        let digest = &request.digest;
        let registry = request.upstream.registry().to_owned();
        let response = request
            .upstream
            .send(
                Method::GET,
                &request.upstream_repo,
                &format!("blobs/{digest}"),
                HeaderMap::new(),
            )
            .await
            .map_err(|source| Error::Upstream {
                registry: registry.clone(),
                source,
            })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::BlobUnknown {
                name: request.canonical.to_string(),
                digest: digest.clone(),
                registry,
            });
        }
        let total = response.content_length();
        let counted = registry.clone();
        let stream = response.bytes_stream().map(move |r| {
            let chunk = r.map_err(io::Error::other)?;
            metrics::upstream_bytes(&counted, chunk.len() as u64);
            Ok(chunk)
        });
        Ok(Source {
            total,
            body: Box::pin(stream),
            from: Via::Upstream(registry),
        })
    }
}
